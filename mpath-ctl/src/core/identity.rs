//! Typed identities the core and the daemon share, so that a group is never confused with a
//! position in a list that a reload reorders.

/// A running group: the index of its bucket table in the datapath, which it keeps across
/// reloads (by name) while its place among the groups may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);
