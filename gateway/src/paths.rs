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

/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/gateway/gateway.toml";

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

    /// Directory of the pinned maps, one file per map name.
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
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
