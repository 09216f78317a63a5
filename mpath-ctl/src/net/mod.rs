//! Kernel IO for the network: rtnetlink (links, addresses, routes, nexthop objects),
//! per-interface sysctls, the raw probe sockets and address announcements.
pub mod announce;
pub mod netconf;
pub mod netlink;
pub mod nexthop;
pub mod probe_socket;
