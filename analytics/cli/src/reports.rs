//! The built-in reports: the questions operators ask most, as SQL over the
//! `decisions` table. `analytics report NAME --sql` prints the query, so a
//! report is also a starting point for one's own.

use chrono::{DateTime, Utc};

/// A built-in report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Report {
    /// HTTP denials per application and hour.
    Denials,
    /// The identities refused most often (email, service token or address).
    Refused,
    /// The sources the XDP filter dropped most.
    Dropped,
    /// Service tokens: requests, refusals and last use.
    Tokens,
    /// Decisions per hour by layer and decision.
    Timeline,
}

impl Report {
    /// The report's query, over the decisions at or after `since` (all of
    /// them without).
    pub fn sql(self, since: Option<DateTime<Utc>>) -> String {
        let decisions = match since {
            // The `date` condition lets the scan skip older partitions.
            Some(t) => format!(
                "(SELECT * FROM decisions WHERE date >= '{}' AND event_time >= '{}')",
                t.format("%Y-%m-%d"),
                t.format(crate::output::TIME_FORMAT)
            ),
            None => "decisions".to_owned(),
        };
        let query = match self {
            Report::Denials => {
                "SELECT app, date_trunc('hour', event_time) AS hour_start, \
                        count(*) AS denials, count(DISTINCT client_ip) AS clients \
                 FROM {decisions} \
                 WHERE layer = 'http' AND decision = 'deny' \
                 GROUP BY app, date_trunc('hour', event_time) \
                 ORDER BY hour_start, app"
            }
            Report::Refused => {
                "SELECT coalesce(email, 'token:' || token_name, 'ip:' || client_ip) AS identity, \
                        count(*) AS refusals, \
                        array_to_string(array_sort(array_agg(DISTINCT reason)), ', ') AS reasons, \
                        min(event_time) AS first_seen, max(event_time) AS last_seen \
                 FROM {decisions} \
                 WHERE layer = 'http' AND decision = 'deny' \
                 GROUP BY 1 \
                 ORDER BY refusals DESC, identity \
                 LIMIT 20"
            }
            Report::Dropped => {
                "SELECT coalesce(client_ip, '(sources not itemized)') AS source, \
                        sum(packets) AS packets, sum(bytes) AS bytes, \
                        array_to_string(array_sort(array_agg(DISTINCT dst_port)), ', ') AS ports, \
                        min(event_time) AS first_seen, max(event_time) AS last_seen \
                 FROM {decisions} \
                 WHERE layer = 'xdp' \
                 GROUP BY 1 \
                 ORDER BY packets DESC, source \
                 LIMIT 20"
            }
            Report::Tokens => {
                "SELECT token_name, token_client_id, count(*) AS requests, \
                        sum(CASE WHEN decision = 'deny' THEN 1 ELSE 0 END) AS refused, \
                        max(event_time) AS last_used \
                 FROM {decisions} \
                 WHERE token_client_id IS NOT NULL \
                 GROUP BY token_name, token_client_id \
                 ORDER BY last_used DESC"
            }
            Report::Timeline => {
                "SELECT date_trunc('hour', event_time) AS hour_start, layer, decision, \
                        count(*) AS decisions \
                 FROM {decisions} \
                 GROUP BY 1, 2, 3 \
                 ORDER BY 1, 2, 3"
            }
        };
        query.replace("{decisions}", &decisions)
    }
}
