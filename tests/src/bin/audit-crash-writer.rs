//! A process the audit crash test kills with SIGKILL: it opens an audit
//! store (recovering whatever the last killed run left), then feeds
//! numbered events through the real channel and writer as fast as the
//! writer takes them, printing `durable N` whenever the writer reports more
//! events fsynced. Every event numbered below the last N printed must
//! survive the kill.
//!
//! Usage: `audit-crash-writer DIR RUN ROLL_EVENTS`. Events carry
//! `request_id = "RUN-SEQ"`.

use std::{io::Write as _, path::Path, time::Duration};

use analytics::{Event, Overflow, StoreConfig};
use gateway_tests::audit;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, run, roll_events] = &args[..] else {
        panic!("usage: audit-crash-writer DIR RUN ROLL_EVENTS");
    };
    let config = StoreConfig {
        roll_events: roll_events.parse().expect("ROLL_EVENTS"),
        ..audit::store_config(Path::new(dir))
    };
    let audit::Writer {
        sender,
        writer: _writer,
        status,
        recovery,
    } = audit::Writer::start(config, 4096, Duration::from_millis(10));
    let mut out = std::io::stdout().lock();
    writeln!(out, "recovered {}", recovery.events).unwrap();

    // Bounded even if nobody kills it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut reported = 0;
    for seq in 0u64.. {
        if std::time::Instant::now() > deadline {
            break;
        }
        let event = Event {
            time_us: Event::now_us(),
            reason: "policy".into(),
            request_id: Some(format!("{run}-{seq}")),
            ..Event::default()
        };
        // A full channel refuses; the same event is offered again, so the
        // numbering has no gaps.
        while sender.send(event.clone(), Overflow::FailClosed).is_err() {
            std::thread::sleep(Duration::from_micros(200));
        }
        let durable = status.durable_events();
        if durable != reported {
            writeln!(out, "durable {durable}").unwrap();
            out.flush().unwrap();
            reported = durable;
        }
    }
}
