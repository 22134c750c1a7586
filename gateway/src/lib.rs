//! The origin gateway: locks a host down to its edge relay at the driver
//! (XDP), checks identity on every request, and records every decision.
//!
//! # Layout
//! - [`config`]: the TOML model, validated before any side effect.
//! - [`paths`]: every filesystem location (bpffs pins, config).
//! - [`xdp`]: the XDP filter's userspace side: load, pin, attach, range
//!   sets, counters.
//! - [`credentials`]: where a request's token and service token are, strictly.
//! - [`fetch`]: bounded HTTPS GETs over rustls.
//! - [`jwt`]: relay-signed tokens: key sets from certs documents, validation.
//! - [`policy`]: access policies, a pure model with table-driven tests.
//! - [`preflight`]: `check-config`'s checks of the files a config names.
//! - [`tokens`]: the service-token store (hashes only, constant-time checks).
//! - [`sessions`]: the gateway's own signed session tokens and their keys.
//! - [`oidc`]: browser sign-in with OpenID Connect providers.
//! - [`proxy`]: the identity gateway: listeners, request phases, upstream.
//! - [`status`]: what the running daemon reports about itself.
//! - [`metrics`]: Prometheus metrics, recorded and read from the status.
//! - [`admin`]: the loopback endpoint serving metrics, health and status.
//! - [`daemon`]: `gateway run`, the long-running process.
//! - [`cli`]: the command line; `main.rs` only tunes the allocator and
//!   calls [`cli::main`].
//! - [`allocator`]: how the process allocator returns memory to the OS.

pub mod admin;
pub mod allocator;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod fetch;
pub mod jwt;
pub mod metrics;
pub mod oidc;
pub mod paths;
pub mod policy;
pub mod preflight;
pub mod proxy;
pub mod sessions;
pub mod status;
pub mod tokens;
pub mod xdp;

/// An error with its causes joined by ": ", for one log line or one
/// message (shared with the audit writer's logs).
pub use analytics::error_chain;

/// Seconds since the Unix epoch (0 if the clock is before it), the unit of
/// token lifetimes and JWT claims.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `bytes` random bytes, base64url: state, nonce, PKCE verifiers, session
/// ids.
pub fn random_token(bytes: usize) -> String {
    use aws_lc_rs::rand::SecureRandom as _;
    use base64::Engine as _;
    let mut buffer = vec![0u8; bytes];
    // The system generator failing leaves nothing safe to do.
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut buffer)
        .expect("the system random generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(buffer)
}
