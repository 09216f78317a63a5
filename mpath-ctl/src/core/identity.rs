//! Typed identities the core and the daemon share, so that a group is never confused with a
//! position in a list that a reload reorders.

/// A running group: the index of its bucket table in the datapath, which it keeps across
/// reloads (by name) while its place among the groups may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u32);

/// A group NIC: the index of its counters in the datapath, which it keeps across reloads (by
/// name) while its place among its group's NICs may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NicSlot(pub u32);

/// The slot tests give a NIC: the number its name ends with ("h1" is in slot 1).
#[cfg(test)]
pub(crate) fn test_slot(name: &str) -> NicSlot {
    let digits = name.trim_start_matches(|c: char| !c.is_ascii_digit());
    NicSlot(
        digits
            .parse()
            .expect("a test NIC's name ends with its slot"),
    )
}
