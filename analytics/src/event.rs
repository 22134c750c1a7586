//! The audit record: one type for every decision of every layer, so a single
//! table answers "who reached what, who was refused, who hammered the
//! origin".
//!
//! Fields that do not apply to a layer are `None` (HTTP identity for an XDP
//! drop record, packet counts for an HTTP request). Names are stable,
//! lowercase and SQL-friendly: they are the column names of the stored logs.

use std::{borrow::Cow, net::IpAddr};

use serde::{Deserialize, Serialize};

/// The value of a low-cardinality field (a dictionary column): reasons,
/// methods, protocols, names from the configuration. Most are fixed
/// strings, which as `Cow::Borrowed` cost no allocation on the request path
/// and no free on the writer's thread.
pub type Label = Cow<'static, str>;

/// The layer that decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The XDP program (aggregated drop records).
    Xdp,
    /// The HTTP gateway (one record per request).
    Http,
}

impl Layer {
    /// The lowercase name used in logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Layer::Xdp => "xdp",
            Layer::Http => "http",
        }
    }
}

/// What was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    /// Let through after authentication and authorization.
    Allow,
    /// Let through without authentication by a Bypass policy (logged anyway).
    Bypass,
    /// Refused.
    Deny,
}

impl Decision {
    /// The lowercase name used in logs and tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Bypass => "bypass",
            Decision::Deny => "deny",
        }
    }
}

/// One decision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// When the decision was made, microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    /// Which layer decided.
    pub layer: Option<Layer>,
    /// What it decided.
    pub decision: Option<Decision>,
    /// Machine-readable reason, e.g. `policy`, `jwt_expired`, `no_credentials`,
    /// `dropped_not_allowed`.
    pub reason: Label,
    /// The application (HTTP).
    pub app: Option<Label>,
    /// The deciding policy, if one matched.
    pub policy: Option<Label>,
    /// Index of the include rule that matched in that policy.
    pub rule: Option<u32>,
    /// Verified email of the user.
    pub email: Option<String>,
    /// Verified subject of the user.
    pub subject: Option<String>,
    /// How the request authenticated: `jwt`, `cookie`, `service_token`,
    /// `gateway_session`.
    pub auth_method: Option<Label>,
    /// Service token client id (never its secret).
    pub token_client_id: Option<Label>,
    /// Service token name.
    pub token_name: Option<Label>,
    /// Country of the client (token claim or trusted relay header).
    pub country: Option<Label>,
    /// The client address (the relay's header only from a trusted relay).
    pub client_ip: Option<IpAddr>,
    /// The TCP peer's port.
    pub client_port: Option<u16>,
    /// `HTTP/1.1`, `HTTP/2`, or for XDP `tcp`, `udp`, ...
    pub protocol: Option<Label>,
    /// HTTP method.
    pub method: Option<Label>,
    /// The request's normalized host name (`host`, the column, is the
    /// machine that decided).
    pub hostname: Option<Label>,
    /// Normalized path (the one policies saw and the upstream got).
    pub path: Option<String>,
    /// HTTP status sent to the client.
    pub status: Option<u16>,
    /// Time from request to response headers, microseconds.
    pub latency_us: Option<u64>,
    /// Bytes (response body for HTTP, packet bytes for XDP).
    pub bytes: Option<u64>,
    /// The request id also sent to the client and the upstream.
    pub request_id: Option<String>,
    /// Issuer of the token that authenticated.
    pub token_issuer: Option<Label>,
    /// Key id that signed it.
    pub key_id: Option<Label>,
    /// XDP: destination port of the dropped packets.
    pub dst_port: Option<u16>,
    /// XDP: packets over the record's interval; `audit_overflow`: events
    /// lost.
    pub packets: Option<u64>,
    /// XDP: time from the record's first packet to its last, microseconds.
    pub interval_us: Option<u64>,
}

impl Event {
    /// The current time in the unit of [`Event::time_us`].
    pub fn now_us() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }
}
