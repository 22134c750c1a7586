//! Shared mappings of `BPF_F_MMAPABLE` array maps: a whole generation of
//! buckets is written with plain stores instead of a syscall per entry.

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd as _},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::MapData;

use super::Error;

/// A mapped array of 64-bit values. Stores are atomic so the XDP program,
/// which reads the same memory on every CPU, never sees a torn word.
pub(crate) struct MmapArray {
    base: NonNull<AtomicU64>,
    len: usize,
    bytes: usize,
}

impl MmapArray {
    /// Maps the array `map` read-write.
    pub(crate) fn new(map: &MapData, name: &'static str) -> Result<Self, Error> {
        let fd = map.fd().as_fd();
        let info = map.info().map_err(|source| Error::Map {
            map: name,
            action: "reading map info",
            source,
        })?;
        if info.value_size() != 8 {
            return Err(Error::io(
                format!("mapping {name}"),
                io::Error::other("value size is not 8 bytes"),
            ));
        }
        let len = info.max_entries() as usize;
        let bytes = len * 8;
        // SAFETY: a fresh shared mapping of a BPF array fd of `bytes` bytes;
        // the kernel rejects it unless the map was created mmapable.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                format!("mapping {name}"),
                io::Error::last_os_error(),
            ));
        }
        let base = NonNull::new(ptr.cast::<AtomicU64>()).expect("mmap returned NULL");
        Ok(Self { base, len, bytes })
    }

    /// Entries in the array.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Stores `value` at `index` (panics past the end, like a slice).
    pub(crate) fn store(&self, index: usize, value: u64) {
        assert!(index < self.len, "index {index} past {} entries", self.len);
        // SAFETY: in bounds of a live mapping; AtomicU64 has the layout of u64
        // and array entries are 8-byte aligned.
        unsafe { self.base.as_ptr().add(index).as_ref() }
            .expect("non-null")
            .store(value, Ordering::Relaxed);
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}
