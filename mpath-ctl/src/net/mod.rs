//! Kernel IO for the network and the addresses it deals in: rtnetlink (links, addresses,
//! routes, nexthop objects), kernel settings, the raw probe sockets, address
//! announcements and multicast memberships.
pub mod address;
pub mod announce;
pub mod multicast;
pub mod netconf;
pub mod netlink;
pub mod nexthop;
pub mod probe_socket;
