//! Rebuild the eBPF object when the linker changes: a new bpf-linker (or one
//! built against another LLVM) can change the emitted object even though no
//! source file did. This is imperfect (an in-place reinstall keeps the path),
//! which is why xtask forces a rebuild after it installs bpf-linker.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
