//! mpathd and mpathctl: the userspace half of mpath.
pub mod config;
pub mod datapath;
pub mod maps;
pub mod spread;
