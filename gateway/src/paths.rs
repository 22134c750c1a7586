//! Every filesystem location the gateway uses, in one place.
//!
//! The pin directory lives on bpffs: what is pinned there outlives the
//! daemon, which is how the filter keeps enforcing across a crash, a restart
//! or an upgrade.

use std::path::{Path, PathBuf};

/// Where bpffs is normally mounted.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Default root of the gateway's pinned objects.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/gateway";

/// Default service-token store.
pub const DEFAULT_TOKEN_STORE: &str = "/var/lib/gateway/tokens.json";

/// Default directory of the gateway's session signing keys.
pub const DEFAULT_KEY_DIR: &str = "/var/lib/gateway/keys";
/// Default root of the audit log (Parquet files and write-ahead segments).
pub const DEFAULT_AUDIT_DIR: &str = analytics::store::DEFAULT_DIR;

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/gateway/gateway.toml";

/// Map directories are `maps-v<layout version>`.
const MAPS_DIR_PREFIX: &str = "maps-v";

/// The layout under a pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    /// A layout rooted at `root` (normally [`DEFAULT_PIN_DIR`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of the pinned maps of the current layout version, one file
    /// per map name.
    pub fn maps(&self) -> PathBuf {
        self.root.join(format!(
            "{MAPS_DIR_PREFIX}{}",
            gateway_common::MAPS_LAYOUT_VERSION
        ))
    }

    /// Map directories of other layout versions (left by an earlier version
    /// of the gateway).
    pub fn stale_map_dirs(&self) -> Vec<PathBuf> {
        let current = self.maps();
        std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        *p != current
                            && p.file_name()
                                .and_then(|n| n.to_str())
                                .is_some_and(|n| n.starts_with(MAPS_DIR_PREFIX))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One pinned map.
    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// The pinned program.
    pub fn program(&self) -> PathBuf {
        self.root.join("program")
    }

    /// Directory of the pinned XDP links, one per interface.
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    /// The pinned link attaching the program to `interface`.
    pub fn link(&self, interface: &str) -> PathBuf {
        self.links().join(interface)
    }
}

impl Default for PinLayout {
    fn default() -> Self {
        Self::new(DEFAULT_PIN_DIR)
    }
}
