//! `gateway`: the daemon and its command line. See the `gateway` crate.

/// Request threads allocate what the audit writer's thread frees; mimalloc
/// handles frees from another thread without the lock traffic of glibc's
/// arenas (which took a quarter of the writer's time in `bench audit`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gateway::allocator::return_freed_memory_promptly();
    gateway::cli::main()
}
