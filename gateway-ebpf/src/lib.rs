//! Exists so that `gateway/build.rs` can list this crate as a build
//! dependency: cargo then rebuilds the XDP object when `gateway-common`
//! changes. The program itself is the `gateway-xdp` binary (`src/main.rs`).
#![no_std]
