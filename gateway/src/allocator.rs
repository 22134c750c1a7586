//! The process allocator's settings. `main.rs` makes mimalloc the global
//! allocator; this module tunes it before the daemon starts. `bench audit`
//! applies the same settings, so its writer runs as the daemon's does.

use std::ffi::c_long;

use libmimalloc_sys::mi_option_t;

/// mimalloc's `mi_option_purge_delay` (index 15 in both its v2 and v3
/// headers; the Rust bindings leave it out as not yet stable).
const PURGE_DELAY: mi_option_t = 15;

/// How long a freed page stays resident before it goes back to the OS.
/// mimalloc v2's default; v3's is 1000 ms.
const PURGE_DELAY_MS: c_long = 10;

/// The purge delay while audit events stream: v3's default. The audit
/// writer frees and allocates megabytes a row group at a time, tens of
/// milliseconds apart; with the short delay it faulted all of it in again
/// (`bench audit` ingest about 15% slower).
const BUSY_PURGE_DELAY_MS: c_long = 1000;

/// What the audit writer tells the allocator: keep freed memory while
/// decisions stream, give it back once they stop.
pub const AUDIT_WRITER_HOOKS: analytics::MemoryHooks = analytics::MemoryHooks {
    busy: keep_freed_memory,
    quiet: return_free_pages,
};

/// Freed memory goes back to the OS within milliseconds, unless
/// `MIMALLOC_PURGE_DELAY` says otherwise.
///
/// mimalloc runs delayed purges only from within later allocations. With
/// v3's one-second delay, a gateway that goes quiet after a burst keeps
/// what the burst freed: 10,000 keep-alive connections parking at once free
/// some 50 MiB of hyper buffers, and with nothing allocating afterwards, none
/// of it was returned (a fresh gateway holding 10k parked connections:
/// 103 to 115 MiB resident, 52 MiB with this delay).
pub fn return_freed_memory_promptly() {
    set_purge_delay(PURGE_DELAY_MS);
}

/// Freed memory stays a second for reuse, unless `MIMALLOC_PURGE_DELAY`
/// says otherwise. For while the process is busy: [`return_free_pages`]
/// goes back to prompt returns.
pub fn keep_freed_memory() {
    set_purge_delay(BUSY_PURGE_DELAY_MS);
}

fn set_purge_delay(ms: c_long) {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's option words; any value is valid.
        unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, ms) };
    }
}

/// Goes back to returning freed memory promptly, and hands back to the OS
/// at once what the process holds free: the pages the calling thread's
/// heap holds free, and every page any thread has given back to the
/// allocator's arenas, however recently (a forced collection ignores the
/// delay).
///
/// A thread that goes quiet right after freeing a lot makes no later
/// allocation to run mimalloc's delayed returns in. The audit writer
/// calls this when it has let go of its row group after a burst: in the
/// gateway benchmark, 10k idle connections after the load went from 80 to
/// 73 MiB.
pub fn return_free_pages() {
    return_freed_memory_promptly();
    // SAFETY: asks mimalloc to collect the calling thread's heap and purge
    // what is free; no memory in use is touched.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

/// Opts the process out of transparent huge pages. The allocator reserves
/// large aligned regions (and asks for huge pages on them); with THP each
/// first touch of a small per-connection allocation can fault in 2 MiB:
/// 10,000 idle connections held 324 MiB with THP, 196 MiB without.
pub fn disable_transparent_huge_pages() -> std::io::Result<()> {
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use libmimalloc_sys::mi_option_get;

    use super::*;

    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        assert!(
            std::env::var_os("MIMALLOC_PURGE_DELAY").is_none(),
            "unset MIMALLOC_PURGE_DELAY: this test reads mimalloc's default"
        );
        // v3's default for the purge delay, and no other option's: the
        // index names that option.
        // SAFETY: reads an option word.
        assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, 1000);
        return_freed_memory_promptly();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, PURGE_DELAY_MS);
        // The audit writer's hooks switch between the two.
        (AUDIT_WRITER_HOOKS.busy)();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, BUSY_PURGE_DELAY_MS);
        (AUDIT_WRITER_HOOKS.quiet)();
        // SAFETY: as above.
        assert_eq!(unsafe { mi_option_get(PURGE_DELAY) }, PURGE_DELAY_MS);
    }
}
