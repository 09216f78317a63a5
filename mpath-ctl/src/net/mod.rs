//! Kernel IO for the network and the addresses it deals in: rtnetlink (links, addresses,
//! routes, nexthop objects), kernel settings, the raw probe sockets, address
//! announcements, multicast memberships and the carrier as the driver reports it.
pub mod address;
pub mod announce;
pub mod carrier;
pub mod multicast;
pub mod netconf;
pub mod netlink;
pub mod nexthop;
pub mod probe_socket;
