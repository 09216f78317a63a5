//! mpathd and mpathctl: the userspace half of mpath.
pub mod config;
pub mod control;
pub mod datapath;
pub mod failover;
pub mod maps;
pub mod probe;
pub mod spread;
pub mod state;
pub mod target;
pub mod views;
