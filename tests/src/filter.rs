//! A real filter, loaded into the kernel with its pins in a directory of its
//! own, and taken down (links, program, maps) when dropped.

use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicUsize, Ordering},
};

use aya::programs::{TestRun as _, TestRunOptions};
use gateway::{
    config::FilterMode,
    paths::PinLayout,
    xdp::{Filter, FilterSettings, ranges::RangeSet, stats},
};
use gateway_common::Reason;

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;

/// A unique pin directory under /sys/fs/bpf for this process and call.
pub fn unique_pin_dir(label: &str) -> PinLayout {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    PinLayout::new(format!(
        "/sys/fs/bpf/gateway-test-{}-{label}-{n}",
        std::process::id()
    ))
}

/// Removes the pins under a layout when dropped, so a failing test leaves
/// nothing attached or pinned behind.
pub struct PinGuard(pub PinLayout);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = gateway::xdp::detach(&self.0);
    }
}

/// Settings for tests: mode, monitor and port lists.
pub fn settings(
    mode: FilterMode,
    monitor: bool,
    protected: &[u16],
    management: &[u16],
) -> FilterSettings {
    FilterSettings {
        mode,
        monitor,
        protected_ports: protected.iter().copied().collect::<BTreeSet<_>>(),
        management_ports: management.iter().copied().collect::<BTreeSet<_>>(),
    }
}

/// A loaded filter in its own pin directory.
pub struct TestFilter {
    /// The filter.
    pub filter: Filter,
    /// Its pins.
    pub layout: PinLayout,
}

impl TestFilter {
    /// Loads the program and writes `settings` and `set`.
    pub fn new(label: &str, settings: &FilterSettings, set: &RangeSet) -> Self {
        crate::require_root();
        let layout = unique_pin_dir(label);
        // Until `Self` exists (and its Drop takes over), a panic below must
        // still remove the pins.
        let guard = PinGuard(layout.clone());
        let mut filter = Filter::load(&layout).unwrap_or_else(|e| {
            panic!(
                "loading the XDP program failed: {}",
                gateway::error_chain(&e)
            )
        });
        filter.configure(settings).expect("configure");
        filter.apply_ranges(set).expect("apply ranges");
        std::mem::forget(guard);
        Self { filter, layout }
    }

    /// Runs the program once on `frame` and returns its action.
    pub fn run(&mut self, frame: &[u8]) -> u32 {
        self.run_repeat(frame, 1).0
    }

    /// Runs the program `repeat` times; returns the action and the kernel's
    /// average nanoseconds per run.
    pub fn run_repeat(&mut self, frame: &[u8], repeat: u32) -> (u32, u64) {
        let program = self.filter.program().expect("program");
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let result = program
            .test_run(opts)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN failed: {}", gateway::error_chain(&e)));
        (result.return_value, result.duration.as_nanos() as u64)
    }

    /// Packets counted per (reason, monitor) so far.
    pub fn counts(&self) -> Vec<(Reason, bool, u64)> {
        stats::read_counters(&self.layout)
            .expect("read counters")
            .iter()
            .map(|row| {
                let reason = *Reason::ALL
                    .iter()
                    .find(|r| r.name() == row.reason)
                    .expect("known reason");
                (reason, row.monitor, row.packets)
            })
            .collect()
    }

    /// Runs `frame` once and returns the action and the single counter that
    /// moved (asserting that exactly one packet was counted).
    pub fn verdict(&mut self, frame: &[u8]) -> (u32, Reason, bool) {
        let before = self.counts();
        let action = self.run(frame);
        let after = self.counts();
        let moved: Vec<_> = after
            .iter()
            .filter_map(|&(reason, monitor, n)| {
                let old = before
                    .iter()
                    .find(|(r, m, _)| *r == reason && *m == monitor)
                    .map_or(0, |e| e.2);
                (n != old).then_some((reason, monitor, n - old))
            })
            .collect();
        assert_eq!(
            moved.len(),
            1,
            "exactly one counter must move, got {moved:?}"
        );
        assert_eq!(moved[0].2, 1, "by exactly one packet: {moved:?}");
        (action, moved[0].0, moved[0].1)
    }
}

impl Drop for TestFilter {
    fn drop(&mut self) {
        if let Err(e) = gateway::xdp::detach(&self.layout) {
            eprintln!(
                "cleanup of {}: {}",
                self.layout.root().display(),
                gateway::error_chain(&e)
            );
        }
    }
}
