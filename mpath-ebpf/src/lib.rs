//! Pure helpers of mpath's eBPF programs, kept apart from the programs so they build and are
//! unit-tested on the host too.
#![cfg_attr(not(test), no_std)]

pub mod flow_hash;
