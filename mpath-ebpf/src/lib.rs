//! Empty: the programs are the binary (`src/main.rs`). The library target exists because
//! mpath-ctl names this crate as a build dependency, so that cargo rebuilds the eBPF object
//! when it changes; the pure helpers the programs use live in mpath-common.
#![no_std]
