//! `cargo xtask package`: Debian packages built with cargo-deb.
//!
//! - `gateway`: the daemon, its systemd unit (`gateway/debian/`), the
//!   example configuration and the README;
//! - `gateway-analytics`: the `analytics` query tool (DataFusion), apart so
//!   hosts that only ship their logs elsewhere do not carry the SQL engine
//!   (and because its release build takes about 20 minutes on two cores).
//!
//! The `.deb` files go to `target/debian/`; cargo-deb prints each one's
//! path on stdout.

use std::path::Path;

use anyhow::Context as _;

use crate::util::{cargo, exec};

/// Builds the packages (the daemon's only, with `daemon_only`) into
/// `root/target/debian`.
pub fn run(root: &Path, daemon_only: bool) -> anyhow::Result<()> {
    let out_dir = root.join("target/debian");
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    // (crate, profile): the daemon optimized as one program (see `dist`
    // in Cargo.toml), the query tool as `release` builds it.
    let crates: &[(&str, &str)] = if daemon_only {
        &[("gateway", "dist")]
    } else {
        &[("gateway", "dist"), ("analytics-cli", "release")]
    };
    for (krate, profile) in crates {
        exec(
            cargo()
                .current_dir(root)
                .args(["deb", "--locked", "--profile", profile, "-p", krate])
                .arg("--output")
                .arg(&out_dir),
        )
        .with_context(|| format!("cargo deb -p {krate} failed"))?;
    }
    Ok(())
}
