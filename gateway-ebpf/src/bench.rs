//! Programs for `cargo xtask bench xdp` only; never loaded by the gateway.
//!
//! - `xdp_drop_floor`: returns XDP_DROP and nothing else, the floor every
//!   filter is compared against.
//! - `bench_random_v4` / `bench_random_v6`: overwrite the source address of
//!   an untagged IPv4/IPv6 frame with random bits, then tail-call slot 0 of
//!   `BENCH_TARGET` (the filter under test, or the floor). BPF_PROG_TEST_RUN
//!   keeps the frame between repetitions, so every repetition sees a new
//!   source drawn over the whole address space: the lookup structure gets no
//!   help from a hot key.
//! - `bench_tx`: returns XDP_TX. Run with BPF_PROG_TEST_RUN in live-frames
//!   mode on one end of a veth pair, it transmits the test frame to the peer
//!   as fast as the kernel can: the flood generator (the role
//!   xdp-trafficgen plays, which fails to load on recent kernels).
// Only the bpfel-unknown-none build is the XDP object; a host build (as in
// `cargo clippy --workspace`) is an empty program, so the code still gets
// checked.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::ProgramArray,
    programs::XdpContext,
};

#[map(name = "BENCH_TARGET")]
static BENCH_TARGET: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_drop_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_random_v4(ctx: XdpContext) -> u32 {
    randomize::<4>(&ctx, 14 + 12)
}

#[xdp]
pub fn bench_random_v6(ctx: XdpContext) -> u32 {
    randomize::<16>(&ctx, 14 + 8)
}

#[inline(always)]
fn randomize<const N: usize>(ctx: &XdpContext, offset: usize) -> u32 {
    let start = ctx.data();
    if start + offset + N > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let address = (start + offset) as *mut u8;
    let mut i = 0;
    while i < N {
        // SAFETY: within the bounds checked above.
        let random = unsafe { bpf_get_prandom_u32() }.to_ne_bytes();
        unsafe { core::ptr::copy_nonoverlapping(random.as_ptr(), address.add(i), 4) };
        i += 4;
    }
    // SAFETY: a tail call into the program userspace put in slot 0.
    unsafe { BENCH_TARGET.tail_call(ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
