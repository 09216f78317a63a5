//! mpathd and mpathctl: the userspace half of mpath.
//!
//! The folders follow the split between deciding and doing:
//! - [`core`]: the decisions, pure and kernel-free with time passed in: failure and repair
//!   state machines, address placement, bucket tables, probe timing, targets, evidence.
//! - [`config`]: the configuration file, the Solaris defaults file, validation and diffs.
//! - [`net`]: kernel IO over netlink, sysctls, raw sockets and announcements.
//! - [`datapath`]: the eBPF programs, their pins and maps.
//! - [`daemon`]: mpathd's event loop, which feeds `core` and carries out its decisions, and
//!   its life as a system service: journald logging, systemd readiness and watchdog.
//! - [`api`]: what operators and tools see: views, the control socket, metrics, manual pages.
pub mod api;
pub mod config;
pub mod core;
pub mod daemon;
pub mod datapath;
pub mod net;
