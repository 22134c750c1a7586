//! The XDP lock-down, userspace side: load the program, pin it, attach it,
//! fill its tables, read its counters.
//!
//! Lifecycle. [`Filter::load`] loads the embedded object with every map
//! pinned under the pin directory, reusing maps that are already pinned, so
//! a restarted daemon adopts the tables and counters of the one before it.
//! [`Filter::configure`] and [`Filter::apply_ranges`] write the tables;
//! [`Filter::attach`] then pins one XDP link per interface (or, when a link is
//! already pinned, swaps the program inside it atomically with
//! `bpf_link_update`). The daemon keeps no link open: the pins alone hold the
//! attachment, so a crash, SIGKILL or restart leaves the filter enforcing, and
//! [`detach`] (removing the pins) is the only way to take it down.
//!
//! Range updates are double-buffered: the tables hold two generations, a
//! new set is written into the one not in use, and a single write of
//! [`Settings::generation`] switches every CPU from one complete set to the
//! other, with no moment where relay traffic is dropped or outsiders pass.
//!
//! # Layout
//! - [`ranges`]: range sets and their compilation into tables (pure).
//! - [`sources`]: inline, file and URL sources and their trust rules.
//! - `mmap`: shared mappings of the mmapable arrays.
//! - [`stats`]: counters and drop records, read from the pins.
//! - [`audit`]: drop records into audit events, and a full audit queue.

pub mod audit;
mod mmap;
pub mod ranges;
pub mod sources;
pub mod stats;

use std::{
    collections::BTreeSet,
    io,
    path::Path,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError},
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use gateway_common::{
    BUCKET_WORDS, BucketKey, PORTS_MAX, PROGRAM_NAME, PrefixKey, Settings, class, lengths_index,
    maps, port_index,
};
use tracing::{info, warn};

use self::{mmap::MmapArray, ranges::RangeSet};
use crate::{
    config::{AttachMode, FilterMode, XdpConfig},
    paths::PinLayout,
};

/// The XDP object, built from `gateway-ebpf` by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp"));

/// The benchmark's programs (`xdp_drop_floor`, `bench_random_v4`,
/// `bench_random_v6`, `bench_tx`; see `gateway-ebpf/src/bench.rs`), built
/// from the same sources with the same flags as [`OBJECT`].
#[cfg(feature = "bench-programs")]
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gateway-xdp-bench"));

/// Everything that can go wrong on the kernel side.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binary was built without the eBPF toolchain.
    #[error(
        "this gateway binary was built without its XDP program (bpf-linker was missing at build time); run `cargo xtask setup` and rebuild"
    )]
    NoProgram,
    /// Not root, or missing CAP_BPF / CAP_NET_ADMIN / CAP_PERFMON.
    #[error(
        "permission denied while {action}: the XDP filter needs root or CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON"
    )]
    Permission {
        /// What was being done.
        action: String,
    },
    /// The interface does not exist.
    #[error("interface `{name}` does not exist")]
    UnknownInterface {
        /// Its name.
        name: String,
    },
    /// bpffs missing and not mountable, or the pin directory unusable.
    #[error("cannot prepare the pin directory {path}")]
    PinDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Loading the object (maps, verifier).
    #[error(
        "cannot load the XDP program (if maps from an older version are pinned, run `gateway xdp detach` first)"
    )]
    Load(#[source] EbpfError),
    /// A program operation (load, attach, link update).
    #[error("{action} failed")]
    Program {
        /// What was being done.
        action: String,
        /// Why.
        #[source]
        source: ProgramError,
    },
    /// Attaching to an interface whose driver has no native XDP.
    #[error(
        "interface `{interface}` does not support native XDP; set xdp.attach = \"auto\" or \"generic\""
    )]
    NativeUnsupported {
        /// The interface.
        interface: String,
        /// The kernel's answer.
        #[source]
        source: ProgramError,
    },
    /// A link operation (pin, adopt).
    #[error("{action} failed")]
    Link {
        /// What was being done.
        action: String,
        /// Why.
        #[source]
        source: LinkError,
    },
    /// A map operation.
    #[error("map {map}: {action} failed")]
    Map {
        /// The map name.
        map: &'static str,
        /// What was being done.
        action: &'static str,
        /// Why.
        #[source]
        source: MapError,
    },
    /// Plain I/O (pins, mmap).
    #[error("{action} failed")]
    Io {
        /// What was being done.
        action: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No filter is pinned at the given directory.
    #[error("no XDP filter is pinned under {0}")]
    NotPinned(String),
}

impl Error {
    fn io(action: impl Into<String>, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::PermissionDenied {
            return Error::Permission {
                action: action.into(),
            };
        }
        Error::Io {
            action: action.into(),
            source,
        }
    }

    fn map(map: &'static str, action: &'static str) -> impl FnOnce(MapError) -> Self {
        move |source| Error::Map {
            map,
            action,
            source,
        }
    }
}

/// How the filter treats ports and drops, as written into the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilterSettings {
    /// Ports or strict mode.
    pub mode: FilterMode,
    /// Count, never drop.
    pub monitor: bool,
    /// Ports reachable from relay and management sources only.
    pub protected_ports: BTreeSet<u16>,
    /// Ports reachable from management sources only.
    pub management_ports: BTreeSet<u16>,
}

impl FilterSettings {
    /// The settings of an `[xdp]` section, with extra protected ports (the
    /// gateway's own listeners).
    pub fn from_config(config: &XdpConfig, extra_protected: impl IntoIterator<Item = u16>) -> Self {
        let mut protected_ports = config.protected_ports.clone();
        protected_ports.extend(extra_protected);
        Self {
            mode: config.mode,
            monitor: config.monitor,
            protected_ports,
            management_ports: config.management_ports.clone(),
        }
    }
}

/// How an interface ended up attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attached {
    /// A new link, in native (driver) mode.
    Native,
    /// A new link, in generic (skb) mode.
    Generic,
    /// A link pinned by an earlier run, now running this program.
    Adopted,
}

/// Sizes of the set that was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    /// Generation now in use.
    pub generation: u32,
    /// Relay prefixes after aggregation.
    pub relay_prefixes: usize,
    /// Management prefixes after aggregation.
    pub management_prefixes: usize,
    /// Entries in the long-prefix table for this generation.
    pub long_prefixes: usize,
}

/// A loaded filter program and its maps.
pub struct Filter {
    ebpf: Ebpf,
    layout: PinLayout,
    /// When the generation last switched: the old generation is not written
    /// again until programs that read the old index have surely finished.
    last_switch: Option<Instant>,
}

/// How long after a switch the previous generation may be rewritten. An XDP
/// program run lasts microseconds (the verifier bounds it), so a program that
/// read the old index before the switch is long finished by then.
const GENERATION_QUIESCE: Duration = Duration::from_millis(10);

impl Filter {
    /// Loads the program, creating its maps or adopting pinned ones.
    pub fn load(layout: &PinLayout) -> Result<Self, Error> {
        if OBJECT.is_empty() {
            return Err(Error::NoProgram);
        }
        raise_memlock_limit();
        ensure_pin_dir(layout)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(layout.maps())
            .load(OBJECT)
            .map_err(|e| match e {
                EbpfError::MapError(MapError::CreateError { ref io_error, .. })
                    if io_error.raw_os_error() == Some(libc::EPERM) =>
                {
                    Error::Permission {
                        action: "creating BPF maps".into(),
                    }
                }
                e => Error::Load(e),
            })?;
        let program = xdp_program(&mut ebpf)?;
        program
            .load()
            .map_err(|source| program_error("loading the XDP program", source))?;
        let program_pin = layout.program();
        remove_file(&program_pin)?;
        program.pin(&program_pin).map_err(|e| Error::Io {
            action: format!("pinning the program at {}", program_pin.display()),
            source: io::Error::other(e),
        })?;
        Ok(Self {
            ebpf,
            layout: layout.clone(),
            last_switch: None,
        })
    }

    /// The loaded program, for `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self) -> Result<&mut Xdp, Error> {
        xdp_program(&mut self.ebpf)
    }

    /// Writes the port table and the mode flags.
    pub fn configure(&mut self, settings: &FilterSettings) -> Result<(), Error> {
        let ports = self.mmap(maps::PORTS)?;
        for port in 0..=u16::MAX {
            for udp in [false, true] {
                let classes = if settings.management_ports.contains(&port) {
                    class::MANAGEMENT
                } else if settings.protected_ports.contains(&port) {
                    class::ANY
                } else {
                    0
                };
                ports.store(port_index(udp, port) as usize, u64::from(classes));
            }
        }
        debug_assert_eq!(ports.len(), PORTS_MAX as usize);
        let mut current = self.settings()?;
        current.flags &= Settings::ENFORCING;
        if settings.mode == FilterMode::Strict {
            current.flags |= Settings::STRICT;
        }
        if settings.monitor {
            current.flags |= Settings::MONITOR;
        }
        self.write_settings(current)
    }

    /// Writes `set` into the generation not in use, then switches to it.
    pub fn apply_ranges(&mut self, set: &RangeSet) -> Result<Applied, Error> {
        let compiled = set.compile();
        if let Some(switched) = self.last_switch {
            let since = switched.elapsed();
            if since < GENERATION_QUIESCE {
                std::thread::sleep(GENERATION_QUIESCE - since);
            }
        }
        let current = self.settings()?;
        let enforcing = current.flags & Settings::ENFORCING != 0;
        // Before the first set, write generation 0 and enable enforcement.
        let next = if enforcing {
            1 - current.generation.min(1)
        } else {
            0
        };

        // Long prefixes and per-bucket lengths: drop the old entries of
        // `next`, write the new ones.
        let generation = next as u8;
        let mut long_prefixes = Vec::new();
        let mut bucket_lengths = Vec::new();
        for table in [&compiled.v4, &compiled.v6] {
            long_prefixes.extend(table.long.iter().map(|&(len, addr, classes)| {
                let key = PrefixKey {
                    generation,
                    family: table.family,
                    len,
                    pad: 0,
                    addr,
                };
                (key, u32::from(classes))
            }));
            bucket_lengths.extend(table.bucket_lengths.iter().map(|&(bucket, lens)| {
                let key = BucketKey {
                    generation,
                    family: table.family,
                    pad: [0; 2],
                    bucket,
                };
                (key, lens)
            }));
        }
        let long_prefix_count = long_prefixes.len();
        replace_generation(
            &mut self.ebpf,
            maps::PREFIXES,
            generation,
            |key: &PrefixKey| key.generation,
            long_prefixes,
        )?;
        replace_generation(
            &mut self.ebpf,
            maps::BUCKET_LENGTHS,
            generation,
            |key: &BucketKey| key.generation,
            bucket_lengths,
        )?;
        let mut lengths: Array<&mut MapData, gateway_common::LengthList> = Array::try_from(
            self.ebpf
                .map_mut(maps::LENGTHS)
                .ok_or(Error::NotPinned(maps::LENGTHS.into()))?,
        )
        .map_err(Error::map(maps::LENGTHS, "opening"))?;
        for table in [&compiled.v4, &compiled.v6] {
            lengths
                .set(lengths_index(next, table.family), table.lengths, 0)
                .map_err(Error::map(maps::LENGTHS, "writing"))?;
        }
        for (name, table) in [
            (maps::BUCKETS_V4, &compiled.v4),
            (maps::BUCKETS_V6, &compiled.v6),
        ] {
            let buckets = self.mmap(name)?;
            let base = (next * BUCKET_WORDS) as usize;
            for (i, word) in table.buckets.iter().enumerate() {
                buckets.store(base + i, *word);
            }
        }
        // The switch: one write, every CPU sees either the old complete set
        // or the new complete set.
        let mut settings = self.settings()?;
        settings.generation = next;
        settings.flags |= Settings::ENFORCING;
        self.write_settings(settings)?;
        self.last_switch = Some(Instant::now());
        Ok(Applied {
            generation: next,
            relay_prefixes: set.relay().len(),
            management_prefixes: set.management().len(),
            long_prefixes: long_prefix_count,
        })
    }

    /// Attaches to `interface`, or adopts the link an earlier run pinned for
    /// it by swapping this program in atomically.
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<Attached, Error> {
        let if_index = interface_index(interface)?;
        let link_pin = self.layout.link(interface);
        std::fs::create_dir_all(self.layout.links())
            .map_err(|e| Error::io(format!("creating {}", self.layout.links().display()), e))?;
        let program = xdp_program(&mut self.ebpf)?;
        if link_pin.exists() {
            match adopt_link(program, &link_pin) {
                Ok(()) => return Ok(Attached::Adopted),
                Err(e) => {
                    warn!(interface, error = %crate::error_chain(&e), "pinned XDP link is stale, attaching anew");
                    remove_file(&link_pin)?;
                }
            }
        }
        let (link_id, attached) = match mode {
            AttachMode::Native => (
                program
                    .attach_to_if_index(if_index, XdpMode::Driver)
                    .map_err(|source| Error::NativeUnsupported {
                        interface: interface.into(),
                        source,
                    })?,
                Attached::Native,
            ),
            AttachMode::Generic => (
                program
                    .attach_to_if_index(if_index, XdpMode::Skb)
                    .map_err(|source| program_error(format!("attaching to {interface}"), source))?,
                Attached::Generic,
            ),
            AttachMode::Auto => {
                match program.attach_to_if_index(if_index, XdpMode::Driver) {
                    Ok(id) => (id, Attached::Native),
                    Err(native) => {
                        warn!(interface, error = %crate::error_chain(&native), "native XDP unavailable, falling back to generic (skb) mode");
                        let id = program.attach_to_if_index(if_index, XdpMode::Skb).map_err(
                            |source| program_error(format!("attaching to {interface}"), source),
                        )?;
                        (id, Attached::Generic)
                    }
                }
            }
        };
        let link = program
            .take_link(link_id)
            .map_err(|source| program_error("taking the XDP link", source))?;
        let fd_link: FdLink = link.try_into().map_err(|source| Error::Link {
            action: format!("converting the link on {interface} (the kernel must support bpf_link for XDP, 5.9+)"),
            source,
        })?;
        // Dropping the pinned link closes our fd; the pin holds the attachment.
        fd_link.pin(&link_pin).map_err(|e| Error::Io {
            action: format!("pinning the link at {}", link_pin.display()),
            source: io::Error::other(e),
        })?;
        Ok(attached)
    }

    fn settings(&self) -> Result<Settings, Error> {
        let array: Array<&MapData, Settings> = Array::try_from(
            self.ebpf
                .map(maps::SETTINGS)
                .ok_or(Error::NotPinned(maps::SETTINGS.into()))?,
        )
        .map_err(Error::map(maps::SETTINGS, "opening"))?;
        array
            .get(&0, 0)
            .map_err(Error::map(maps::SETTINGS, "reading"))
    }

    fn write_settings(&mut self, settings: Settings) -> Result<(), Error> {
        let mut array: Array<&mut MapData, Settings> = Array::try_from(
            self.ebpf
                .map_mut(maps::SETTINGS)
                .ok_or(Error::NotPinned(maps::SETTINGS.into()))?,
        )
        .map_err(Error::map(maps::SETTINGS, "opening"))?;
        array
            .set(0, settings, 0)
            .map_err(Error::map(maps::SETTINGS, "writing"))
    }

    fn mmap(&self, name: &'static str) -> Result<MmapArray, Error> {
        let map = self.ebpf.map(name).ok_or(Error::NotPinned(name.into()))?;
        let data = match map {
            aya::maps::Map::Array(data) => data,
            _ => {
                return Err(Error::Map {
                    map: name,
                    action: "mapping",
                    source: MapError::InvalidMapType { map_type: 0 },
                });
            }
        };
        MmapArray::new(data, name)
    }
}

/// Replaces the entries of one generation in a hash map keyed by
/// generation: removes the old ones, inserts `entries`.
fn replace_generation<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
    generation: u8,
    generation_of: impl Fn(&K) -> u8,
    entries: Vec<(K, V)>,
) -> Result<(), Error> {
    let mut map: HashMap<&mut MapData, K, V> =
        HashMap::try_from(ebpf.map_mut(name).ok_or(Error::NotPinned(name.into()))?)
            .map_err(Error::map(name, "opening"))?;
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|key| generation_of(key) == generation)
        .collect();
    for key in stale {
        match map.remove(&key) {
            Ok(()) | Err(MapError::KeyNotFound) => {}
            Err(e) => return Err(Error::map(name, "removing an old entry")(e)),
        }
    }
    for (key, value) in entries {
        map.insert(key, value, 0)
            .map_err(Error::map(name, "inserting an entry"))?;
    }
    Ok(())
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, Error> {
    ebpf.program_mut(PROGRAM_NAME)
        .ok_or_else(|| Error::Program {
            action: format!("finding program {PROGRAM_NAME} in the object"),
            source: ProgramError::NotLoaded,
        })?
        .try_into()
        .map_err(|source| program_error("opening the XDP program", source))
}

fn adopt_link(program: &mut Xdp, pin: &Path) -> Result<(), Error> {
    let pinned = PinnedLink::from_pin(pin).map_err(|source| Error::Link {
        action: format!("opening {}", pin.display()),
        source,
    })?;
    let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|source| Error::Link {
        action: format!("opening {}", pin.display()),
        source,
    })?;
    let id = program
        .attach_to_link(link)
        .map_err(|source| program_error("replacing the program in the pinned link", source))?;
    // Close our copy of the link fd; the pin keeps the attachment.
    drop(
        program
            .take_link(id)
            .map_err(|source| program_error("releasing the link", source))?,
    );
    Ok(())
}

fn program_error(action: impl Into<String>, source: ProgramError) -> Error {
    let action = action.into();
    let denied = match &source {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::EPERM),
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error() == Some(libc::EPERM),
        _ => false,
    };
    if denied {
        return Error::Permission { action };
    }
    Error::Program { action, source }
}

fn interface_index(name: &str) -> Result<u32, Error> {
    let c_name =
        std::ffi::CString::new(name).map_err(|_| Error::UnknownInterface { name: name.into() })?;
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(Error::UnknownInterface { name: name.into() });
    }
    Ok(index)
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK; raising it is
/// harmless on later ones, which charge the memory cgroup instead
/// (https://lwn.net/Articles/837122/), so a refusal only matters there.
fn raise_memlock_limit() {
    let limit = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) } != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK; only kernels before 5.11 need it for BPF maps"
        );
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at /sys/fs/bpf when nothing is mounted there, and creates the
/// pin directory, which must be on bpffs.
fn ensure_pin_dir(layout: &PinLayout) -> Result<(), Error> {
    let pin_error = |source| Error::PinDir {
        path: layout.root().display().to_string(),
        source,
    };
    let bpffs = Path::new(crate::paths::BPFFS);
    if layout.root().starts_with(bpffs) && !is_bpffs(bpffs) {
        info!("mounting bpffs at {}", bpffs.display());
        let target = std::ffi::CString::new(crate::paths::BPFFS).expect("no NUL");
        // SAFETY: valid NUL-terminated strings, no data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(pin_error(io::Error::last_os_error()));
        }
    }
    std::fs::create_dir_all(layout.maps()).map_err(pin_error)?;
    if !is_bpffs(layout.root()) {
        return Err(pin_error(io::Error::other("not on a bpf filesystem")));
    }
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid path.
    unsafe {
        let mut stat: libc::statfs = std::mem::zeroed();
        libc::statfs(c_path.as_ptr(), &mut stat) == 0 && stat.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Removes a pin; one already gone is fine.
fn remove_file(path: &Path) -> Result<(), Error> {
    ignore_missing(path, std::fs::remove_file(path))
}

/// Removes an empty directory; one already gone is fine.
fn remove_dir(path: &Path) -> Result<(), Error> {
    ignore_missing(path, std::fs::remove_dir(path))
}

fn ignore_missing(path: &Path, result: io::Result<()>) -> Result<(), Error> {
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(Error::io(format!("removing {}", path.display()), e))
        }
        _ => Ok(()),
    }
}

/// Removes a directory of pinned maps: every pin in it, then the directory.
fn remove_map_dir(dir: &Path) -> Result<(), Error> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            remove_file(&entry.path())?;
        }
    }
    remove_dir(dir)
}

/// Removes map directories of other layout versions once every interface
/// runs the current program: nothing references those maps any more.
pub fn remove_stale_maps(layout: &PinLayout) -> Result<(), Error> {
    for dir in layout.stale_map_dirs() {
        info!(dir = %dir.display(), "removing maps of an older layout version");
        remove_map_dir(&dir)?;
    }
    Ok(())
}

/// What [`detach`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detached {
    /// Interfaces whose link pin was removed.
    pub interfaces: Vec<String>,
}

/// Takes the filter down on purpose: removes the link pins (detaching the
/// program), the program pin and the map pins.
pub fn detach(layout: &PinLayout) -> Result<Detached, Error> {
    if !layout.root().exists() {
        return Err(Error::NotPinned(layout.root().display().to_string()));
    }
    let mut detached = Detached::default();
    if let Ok(entries) = std::fs::read_dir(layout.links()) {
        for entry in entries.flatten() {
            remove_file(&entry.path())?;
            detached
                .interfaces
                .push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    detached.interfaces.sort();
    remove_file(&layout.program())?;
    for dir in layout.stale_map_dirs().into_iter().chain([layout.maps()]) {
        remove_map_dir(&dir)?;
    }
    remove_dir(&layout.links())?;
    remove_dir(layout.root())?;
    Ok(detached)
}
