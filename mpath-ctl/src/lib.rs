//! mpathd and mpathctl: the userspace half of mpath.
pub mod announce;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod evidence;
pub mod failover;
pub mod maps;
pub mod metrics;
pub mod netconf;
pub mod netlink;
pub mod probe;
pub mod probe_socket;
pub mod spread;
pub mod state;
pub mod target;
pub mod views;
