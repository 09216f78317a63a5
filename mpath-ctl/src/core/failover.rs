//! Data-address placement: where each data address of a group should be, and the moves
//! that get it there.
//!
//! [`plan`] takes the members with their [`Role`] (from [`crate::core::state::Group::nic_roles`])
//! and every data address with its home NIC and where it is now, and returns a [`Plan`].
//! Rules, applied to each address in a fixed order (home NIC in configuration order, then
//! address), so the same input always gives the same plan:
//!
//! 1. **Failback**: if the home NIC is active and reclaims its addresses (`FAILBACK=yes`, or
//!    it was onlined), the address goes home.
//! 2. **Stay**: otherwise an address on an active NIC stays where it is. Nothing moves that
//!    does not have to: no rebalancing, so `FAILBACK=no` leaves a repaired NIC without its
//!    addresses.
//! 3. **Failover**: an address on a NIC that is failed, offline, missing or inactive, on a
//!    NIC outside the group, or on no NIC at all, must move. It goes to its home NIC if that
//!    is active. The others move together, per NIC they are on, to the active NIC with the
//!    fewest data addresses at that point (non-standby before standby on a tie, then
//!    configuration order), which spreads them across the group. A standby takes addresses
//!    once the state machine has activated it, which it does as soon as an active NIC fails;
//!    being empty, it is then the natural destination.
//! 4. **Group failure**: with no active NIC nothing moves; addresses stay where they are.
//!    As the group comes back, a NIC answering again ([`Role::Recovering`]) keeps the
//!    addresses it has: the first NIC to be repaired does not take them.
//!
//! Which NICs are active is decided by [`crate::core::state`] alone, never here.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use thiserror::Error;

use crate::core::identity::NicSlot;
use crate::core::state::{NicRole, Role};
use crate::net::address::IpCidr;

/// A configured data address: its home NIC and the NIC it is on now (`None` when it is on
/// no NIC, e.g. its NIC disappeared with it or someone deleted it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataAddress {
    pub cidr: IpCidr,
    pub home: NicSlot,
    pub current: Option<NicSlot>,
}

/// Whether a data address is reachable (ipmpstat -a STATE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressState {
    /// On a NIC.
    Up,
    /// On no NIC: the group failed with nowhere to put it.
    Down,
}

named!(pub AddressState {
    Up => "up",
    Down => "down",
});

/// Why an address moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum MoveKind {
    /// Away from a NIC that cannot hold it.
    Failover,
    /// Back to its home NIC.
    Failback,
    /// It was on no NIC; it is added.
    Restore,
    /// A restore of an address that has not been on a NIC since its group started (a clean
    /// start, or an address the configuration added): the daemon tells it apart, as nothing
    /// went missing. [`plan`] never decides it.
    Place,
}

/// One address to move. `from` may name a NIC that no longer exists (removing the address
/// there is then a no-op); `None` means add only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Move {
    pub addr: IpCidr,
    pub from: Option<NicSlot>,
    pub to: NicSlot,
    pub kind: MoveKind,
}

/// The moves of one kind between one pair of NICs, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub kind: MoveKind,
    pub from: Option<NicSlot>,
    pub to: NicSlot,
    pub addresses: Vec<IpCidr>,
}

impl Transfer {
    /// The NIC the transfer is about, for the log's INTERFACE= field: the one left for a
    /// failover (`journalctl INTERFACE=h1` finds h1's failover), else the one that gains.
    pub(crate) fn interface(&self) -> NicSlot {
        match (self.kind, self.from) {
            (MoveKind::Failover, Some(from)) => from,
            _ => self.to,
        }
    }

    /// in.mpathd's wording, with the NICs' names given by `name`; log it once the moves
    /// are done.
    pub(crate) fn log_line<N: fmt::Display>(&self, name: impl Fn(NicSlot) -> N) -> String {
        let to = name(self.to);
        match (self.kind, self.from) {
            (MoveKind::Failover, Some(from)) => format!(
                "Successfully failed over from NIC {} to NIC {to}",
                name(from)
            ),
            (MoveKind::Failback, _) => format!("Successfully failed back to NIC {to}"),
            (MoveKind::Restore, _) | (MoveKind::Failover, None) => {
                format!("Restored missing data addresses on NIC {to}")
            }
            (MoveKind::Place, _) => {
                let addresses: Vec<String> = self.addresses.iter().map(|a| a.to_string()).collect();
                format!("Data addresses {} are on NIC {to}", addresses.join(", "))
            }
        }
    }
}

/// The placement that [`plan`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Minimal moves, sorted by address.
    pub moves: Vec<Move>,
    /// Where every address will be once the moves are done (`None`: on no NIC, and no
    /// active NIC to put it on).
    pub placement: BTreeMap<IpCidr, Option<NicSlot>>,
}

impl Plan {
    /// The moves grouped for the log: failovers per (from, to), failbacks per home NIC
    /// (as in.mpathd logs one failback per repaired NIC), restores per NIC.
    pub(crate) fn transfers(&self) -> Vec<Transfer> {
        let mut transfers: Vec<Transfer> = Vec::new();
        for step in &self.moves {
            let from = match step.kind {
                MoveKind::Failover => step.from,
                MoveKind::Failback | MoveKind::Restore | MoveKind::Place => None,
            };
            let existing = transfers
                .iter_mut()
                .find(|t| t.kind == step.kind && t.from == from && t.to == step.to);
            match existing {
                Some(transfer) => transfer.addresses.push(step.addr),
                None => transfers.push(Transfer {
                    kind: step.kind,
                    from,
                    to: step.to,
                    addresses: vec![step.addr],
                }),
            }
        }
        transfers
    }
}

/// Input that cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum PlanError {
    #[error("interface {nic} is listed twice")]
    DuplicateInterface { nic: String },
    #[error("data address {first} is configured twice (also as {second})")]
    DuplicateAddress { first: IpCidr, second: IpCidr },
    #[error(
        "data address {addr} belongs to counter slot {}, which is no interface's of the group",
        home.0
    )]
    UnknownHome { addr: IpCidr, home: NicSlot },
}

/// Where a decided address ends up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    Stay,
    Nic(usize),
}

/// Compute the placement of a group's data addresses; see the module documentation.
pub(crate) fn plan(nics: &[NicRole], addresses: &[DataAddress]) -> Result<Plan, PlanError> {
    let index = nic_index(nics)?;
    let mut order: Vec<(usize, &DataAddress)> = Vec::with_capacity(addresses.len());
    for address in addresses {
        let Some(&home) = index.get(&address.home) else {
            return Err(PlanError::UnknownHome {
                addr: address.cidr,
                home: address.home,
            });
        };
        order.push((home, address));
    }
    order.sort_by_key(|(home, address)| (*home, address.cidr));
    // Sorted, one IP with two prefix lengths sits side by side.
    let mut cidrs: Vec<IpCidr> = addresses.iter().map(|address| address.cidr).collect();
    cidrs.sort();
    if let Some(pair) = cidrs
        .windows(2)
        .find(|pair| pair[0].addr() == pair[1].addr())
    {
        return Err(PlanError::DuplicateAddress {
            first: pair[0],
            second: pair[1],
        });
    }

    let is_active = |nic: usize| matches!(nics[nic].role, Role::Active { .. });
    let at = |slot: Option<NicSlot>| slot.and_then(|slot| index.get(&slot).copied());
    let active_at = |slot: Option<NicSlot>| at(slot).filter(|&nic| is_active(nic));
    let recovering_at =
        |slot: Option<NicSlot>| at(slot).is_some_and(|nic| nics[nic].role == Role::Recovering);
    let mut load = vec![0usize; nics.len()];
    for (_, address) in &order {
        if let Some(nic) = active_at(address.current) {
            load[nic] += 1;
        }
    }

    // Failbacks and stays first, so that forced moves see the load they leave behind.
    let mut destinations = vec![None; order.len()];
    for (slot, (home, address)) in order.iter().enumerate() {
        let current = active_at(address.current);
        let reclaims = matches!(
            nics[*home].role,
            Role::Active {
                reclaims_home: true
            }
        );
        if reclaims && current != Some(*home) {
            if let Some(nic) = current {
                load[nic] -= 1;
            }
            load[*home] += 1;
            destinations[slot] = Some(Destination::Nic(*home));
        } else if current.is_some() || recovering_at(address.current) {
            destinations[slot] = Some(Destination::Stay);
        } else if is_active(*home) {
            load[*home] += 1;
            destinations[slot] = Some(Destination::Nic(*home));
        }
    }

    // The rest leave their NIC together, to the least loaded active NIC.
    let mut sources: Vec<Option<NicSlot>> = Vec::new();
    for (slot, (_, address)) in order.iter().enumerate() {
        if destinations[slot].is_none() && !sources.contains(&address.current) {
            sources.push(address.current);
        }
    }
    sources.sort_by_key(|source| match source {
        Some(nic) => (0, index.get(nic).copied().unwrap_or(usize::MAX), *nic),
        None => (1, usize::MAX, NicSlot(u32::MAX)),
    });
    for source in sources {
        let target = (0..nics.len())
            .filter(|&nic| is_active(nic))
            .min_by_key(|&nic| (load[nic], nics[nic].standby, nic));
        for (slot, (_, address)) in order.iter().enumerate() {
            if destinations[slot].is_some() || address.current != source {
                continue;
            }
            destinations[slot] = Some(match target {
                Some(nic) => {
                    load[nic] += 1;
                    Destination::Nic(nic)
                }
                None => Destination::Stay,
            });
        }
    }

    let mut moves = Vec::new();
    let mut placement = BTreeMap::new();
    for ((home, address), destination) in order.iter().zip(destinations) {
        let to = match destination {
            Some(Destination::Nic(nic)) if address.current != Some(nics[nic].slot) => nic,
            _ => {
                placement.insert(address.cidr, address.current);
                continue;
            }
        };
        let kind = if address.current.is_none() {
            MoveKind::Restore
        } else if to == *home {
            MoveKind::Failback
        } else {
            MoveKind::Failover
        };
        placement.insert(address.cidr, Some(nics[to].slot));
        moves.push(Move {
            addr: address.cidr,
            from: address.current,
            to: nics[to].slot,
            kind,
        });
    }
    moves.sort_by_key(|step| step.addr);
    Ok(Plan { moves, placement })
}

fn nic_index(nics: &[NicRole]) -> Result<HashMap<NicSlot, usize>, PlanError> {
    let mut index = HashMap::with_capacity(nics.len());
    for (position, nic) in nics.iter().enumerate() {
        if index.insert(nic.slot, position).is_some() {
            return Err(PlanError::DuplicateInterface {
                nic: nic.name.clone(),
            });
        }
    }
    Ok(index)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::core::identity::test_slot as slot;
    use crate::core::probe::{NUM_PROBE_FAILS, NUM_PROBE_REPAIRS, ProbeOutcome};
    use crate::core::state::test_outcomes::{ANSWERED, LOST};
    use crate::core::state::{
        Action, Event, Group, GroupState, InterfaceConfig, LINK_UPS_PER_MINUTE, Policy,
        ProbeFamilies,
    };
    use crate::core::target::AddressFamily;

    fn cidr(text: &str) -> IpCidr {
        text.parse().unwrap()
    }

    fn role(name: &str, standby: bool, role: Role) -> NicRole {
        NicRole {
            slot: slot(name),
            name: name.to_owned(),
            standby,
            role,
        }
    }

    const ACTIVE: Role = Role::Active {
        reclaims_home: true,
    };
    const ACTIVE_KEEPS: Role = Role::Active {
        reclaims_home: false,
    };

    fn address(text: &str, home: &str, current: Option<&str>) -> DataAddress {
        DataAddress {
            cidr: cidr(text),
            home: slot(home),
            current: current.map(slot),
        }
    }

    /// The name of test NIC `slot`, as [`slot`] reads it.
    fn name(slot: NicSlot) -> String {
        format!("h{}", slot.0)
    }

    /// The log lines of `transfers`.
    fn lines(transfers: &[Transfer]) -> Vec<String> {
        transfers.iter().map(|t| t.log_line(name)).collect()
    }

    fn step(text: &str, from: Option<&str>, to: &str, kind: MoveKind) -> Move {
        Move {
            addr: cidr(text),
            from: from.map(slot),
            to: slot(to),
            kind,
        }
    }

    #[test]
    fn a_recovering_nic_keeps_its_addresses_and_takes_none() {
        let nics = [
            role("h0", false, ACTIVE),
            role("h1", false, Role::Recovering),
            role("h2", false, Role::Unusable),
        ];
        let addresses = [
            address("192.0.2.10/24", "h0", Some("h0")),
            address("192.0.2.11/24", "h1", Some("h1")),
            address("192.0.2.12/24", "h2", Some("h2")),
            // h1's own address that went to h0 earlier stays there.
            address("192.0.2.13/24", "h1", Some("h0")),
        ];
        let plan = plan(&nics, &addresses).unwrap();
        assert_eq!(
            plan.moves,
            [step("192.0.2.12/24", Some("h2"), "h0", MoveKind::Failover)]
        );
        assert_eq!(plan.placement[&cidr("192.0.2.11/24")], Some(slot("h1")));
        assert_eq!(plan.placement[&cidr("192.0.2.13/24")], Some(slot("h0")));
    }

    #[test]
    fn addresses_of_a_failed_nic_move_together_to_the_least_loaded_active_nic() {
        let nics = [
            role("h0", false, Role::Unusable),
            role("h1", false, ACTIVE),
            role("h2", false, ACTIVE),
        ];
        let addresses = [
            address("192.0.2.19/24", "h0", Some("h0")),
            address("2001:db8::19/64", "h0", Some("h0")),
            address("192.0.2.20/24", "h1", Some("h1")),
            address("192.0.2.21/24", "h1", Some("h1")),
            address("192.0.2.22/24", "h2", Some("h2")),
        ];
        let plan = plan(&nics, &addresses).unwrap();
        assert_eq!(
            plan.moves,
            [
                step("192.0.2.19/24", Some("h0"), "h2", MoveKind::Failover),
                step("2001:db8::19/64", Some("h0"), "h2", MoveKind::Failover),
            ]
        );
        assert_eq!(plan.placement[&cidr("192.0.2.20/24")], Some(slot("h1")));
        let lines: Vec<String> = lines(&plan.transfers());
        assert_eq!(lines, ["Successfully failed over from NIC h0 to NIC h2"]);
    }

    #[test]
    fn each_failed_nic_picks_its_destination_after_the_previous_ones_moved() {
        let nics = [
            role("h0", false, Role::Unusable),
            role("h1", false, Role::Unusable),
            role("h2", false, ACTIVE),
            role("h3", false, ACTIVE),
        ];
        let addresses = [
            address("192.0.2.10/24", "h0", Some("h0")),
            address("192.0.2.11/24", "h1", Some("h1")),
        ];
        let plan = plan(&nics, &addresses).unwrap();
        assert_eq!(
            plan.moves,
            [
                step("192.0.2.10/24", Some("h0"), "h2", MoveKind::Failover),
                step("192.0.2.11/24", Some("h1"), "h3", MoveKind::Failover),
            ]
        );
    }

    #[test]
    fn an_active_nic_with_fewer_addresses_wins_over_the_standby_and_a_tie_goes_to_the_non_standby()
    {
        let addresses = [
            address("192.0.2.10/24", "h0", Some("h0")),
            address("192.0.2.11/24", "h0", Some("s2")),
        ];
        let nics = [
            role("h0", false, Role::Unusable),
            role("h1", false, ACTIVE),
            role("s2", true, ACTIVE),
        ];
        // s2 already holds one address, h1 none.
        let plan_a = plan(&nics, &addresses).unwrap();
        assert_eq!(plan_a.placement[&cidr("192.0.2.10/24")], Some(slot("h1")));
        // Equal load: the non-standby is preferred even though it comes later.
        let nics = [
            role("h0", false, Role::Unusable),
            role("s1", true, ACTIVE),
            role("h2", false, ACTIVE),
        ];
        let plan_b = plan(&nics, &addresses[..1]).unwrap();
        assert_eq!(plan_b.placement[&cidr("192.0.2.10/24")], Some(slot("h2")));
    }

    #[test]
    fn failback_returns_addresses_home_and_moves_nothing_else() {
        let nics = [
            role("h0", false, ACTIVE),
            role("h1", false, ACTIVE),
            role("h2", false, Role::Unusable),
        ];
        let addresses = [
            address("192.0.2.10/24", "h0", Some("h1")),
            address("192.0.2.11/24", "h1", Some("h1")),
            // Its home is down: it stays on the active NIC it is on.
            address("192.0.2.12/24", "h2", Some("h0")),
        ];
        let plan = plan(&nics, &addresses).unwrap();
        assert_eq!(
            plan.moves,
            [step("192.0.2.10/24", Some("h1"), "h0", MoveKind::Failback)]
        );
        let lines: Vec<String> = lines(&plan.transfers());
        assert_eq!(lines, ["Successfully failed back to NIC h0"]);
    }

    #[test]
    fn failback_off_leaves_the_addresses_where_they_are() {
        let nics = [role("h0", false, ACTIVE_KEEPS), role("h1", false, ACTIVE)];
        let addresses = [address("192.0.2.10/24", "h0", Some("h1"))];
        assert!(plan(&nics, &addresses).unwrap().moves.is_empty());
    }

    #[test]
    fn a_forced_move_prefers_the_home_nic_even_without_failback() {
        let nics = [
            role("h0", false, ACTIVE_KEEPS),
            role("h1", false, ACTIVE),
            role("h2", false, Role::Unusable),
        ];
        let addresses = [
            address("192.0.2.10/24", "h0", Some("h2")),
            address("192.0.2.20/24", "h2", Some("h2")),
        ];
        let plan = plan(&nics, &addresses).unwrap();
        assert_eq!(
            plan.moves,
            [
                step("192.0.2.10/24", Some("h2"), "h0", MoveKind::Failback),
                step("192.0.2.20/24", Some("h2"), "h1", MoveKind::Failover),
            ]
        );
    }

    #[test]
    fn addresses_leave_an_inactive_nic() {
        let nics = [role("h0", false, ACTIVE), role("s1", true, Role::Inactive)];
        let addresses = [address("192.0.2.10/24", "h0", Some("s1"))];
        let plan = plan(&nics, &addresses).unwrap();
        assert_eq!(
            plan.moves,
            [step("192.0.2.10/24", Some("s1"), "h0", MoveKind::Failback)]
        );
    }

    #[test]
    fn nothing_moves_when_no_nic_is_active() {
        let nics = [
            role("h0", false, Role::Unusable),
            role("h1", false, Role::Unusable),
            role("s2", true, Role::Inactive),
        ];
        let addresses = [
            address("192.0.2.10/24", "h0", Some("h1")),
            address("192.0.2.11/24", "h1", None),
        ];
        let plan = plan(&nics, &addresses).unwrap();
        assert!(plan.moves.is_empty());
        assert_eq!(plan.placement[&cidr("192.0.2.10/24")], Some(slot("h1")));
        assert_eq!(plan.placement[&cidr("192.0.2.11/24")], None);
    }

    #[test]
    /// h7 is a NIC of no group.
    fn an_address_on_no_nic_or_a_foreign_nic_is_put_back() {
        let nics = [role("h0", false, ACTIVE), role("h1", false, Role::Unusable)];
        let addresses = [
            address("192.0.2.10/24", "h0", None),
            address("192.0.2.11/24", "h1", None),
            address("192.0.2.12/24", "h1", Some("h7")),
        ];
        let plan = plan(&nics, &addresses).unwrap();
        assert_eq!(
            plan.moves,
            [
                step("192.0.2.10/24", None, "h0", MoveKind::Restore),
                step("192.0.2.11/24", None, "h0", MoveKind::Restore),
                step("192.0.2.12/24", Some("h7"), "h0", MoveKind::Failover),
            ]
        );
        let lines: Vec<String> = lines(&plan.transfers());
        assert_eq!(
            lines,
            [
                "Restored missing data addresses on NIC h0",
                "Successfully failed over from NIC h7 to NIC h0"
            ]
        );
        let mut first = plan.transfers().remove(0);
        first.kind = MoveKind::Place;
        assert_eq!(
            first.log_line(name),
            "Data addresses 192.0.2.10/24, 192.0.2.11/24 are on NIC h0"
        );
    }

    #[test]
    fn the_plan_does_not_depend_on_input_order() {
        let nics = [
            role("h0", false, Role::Unusable),
            role("h1", false, ACTIVE),
            role("h2", false, ACTIVE),
            role("h3", false, Role::Unusable),
        ];
        let mut addresses = vec![
            address("192.0.2.10/24", "h0", Some("h0")),
            address("192.0.2.11/24", "h0", Some("h0")),
            address("192.0.2.30/24", "h3", Some("h3")),
            address("2001:db8::30/64", "h3", Some("h3")),
            address("192.0.2.20/24", "h1", Some("h2")),
        ];
        let first = plan(&nics, &addresses).unwrap();
        addresses.reverse();
        assert_eq!(plan(&nics, &addresses).unwrap(), first);
        addresses.swap(0, 3);
        assert_eq!(plan(&nics, &addresses).unwrap(), first);
    }

    #[test]
    fn bad_input_is_refused_with_a_clear_error() {
        let nics = [role("h0", false, ACTIVE)];
        assert_eq!(
            plan(&nics, &[address("192.0.2.10/24", "h9", None)])
                .unwrap_err()
                .to_string(),
            "data address 192.0.2.10/24 belongs to counter slot 9, which is no interface's of the \
             group"
        );
        assert_eq!(
            plan(
                &nics,
                &[
                    address("192.0.2.10/24", "h0", None),
                    address("192.0.2.10/25", "h0", None)
                ]
            )
            .unwrap_err()
            .to_string(),
            "data address 192.0.2.10/24 is configured twice (also as 192.0.2.10/25)"
        );
        assert_eq!(
            plan(&[role("h0", false, ACTIVE), role("h0", true, ACTIVE)], &[])
                .unwrap_err()
                .to_string(),
            "interface h0 is listed twice"
        );
    }

    /// A host: a group's state machine plus where its addresses are, with each plan applied
    /// when the state machine asks for it, as the daemon will do.
    struct Host {
        group: Group,
        addresses: Vec<DataAddress>,
        now: Instant,
        moves: Vec<Move>,
        log: Vec<String>,
    }

    const PROBE_INTERVAL: Duration = Duration::from_millis(1428);

    impl Host {
        fn new(policy: Policy, members: &[(&str, bool, ProbeFamilies, &[&str])]) -> Host {
            let configs = members
                .iter()
                .map(|(name, standby, probe, _)| InterfaceConfig {
                    slot: slot(name),
                    name: (*name).to_owned(),
                    standby: *standby,
                    probe: *probe,
                })
                .collect();
            let addresses = members
                .iter()
                .flat_map(|(name, _, _, addresses)| {
                    addresses.iter().map(|text| address(text, name, Some(name)))
                })
                .collect();
            let present = members.iter().map(|m| (slot(m.0), true)).collect();
            let mut host = Host {
                group: Group::new("g0", policy, configs).unwrap(),
                addresses,
                now: Instant::now(),
                moves: Vec::new(),
                log: Vec::new(),
            };
            host.send(Event::Snapshot { present });
            host
        }

        fn send(&mut self, event: Event) -> Vec<Action> {
            if let Event::Disappeared { nic } = &event {
                // The kernel deletes the addresses of a NIC that goes away.
                for address in &mut self.addresses {
                    if address.current == Some(*nic) {
                        address.current = None;
                    }
                }
            }
            let actions = self.group.handle(event, self.now).unwrap();
            self.log
                .extend(actions.iter().filter_map(|a| a.log_line(&self.group)));
            if actions.contains(&Action::UsableSetChanged) {
                let plan = plan(&self.group.nic_roles(), &self.addresses).unwrap();
                for step in &plan.moves {
                    let address = self.addresses.iter_mut().find(|a| a.cidr == step.addr);
                    address.unwrap().current = Some(step.to);
                }
                self.log.extend(
                    plan.transfers()
                        .iter()
                        .map(|t| t.log_line(|slot| self.group.nic_name(slot))),
                );
                self.moves.extend(plan.moves);
            }
            actions
        }

        fn link(&mut self, nic: &str, up: bool) {
            self.send(Event::Link { nic: slot(nic), up });
        }

        /// Probe rounds: one interval passes, then each listed NIC reports an IPv4 probe.
        fn rounds(&mut self, count: u32, outcomes: &[(&str, ProbeOutcome)]) {
            for _ in 0..count {
                self.now += PROBE_INTERVAL;
                for (nic, outcome) in outcomes {
                    self.send(Event::Probe {
                        nic: slot(nic),
                        family: AddressFamily::Inet,
                        outcome: *outcome,
                    });
                }
            }
        }

        fn on(&self, nic: &str) -> Vec<String> {
            let mut here: Vec<String> = self
                .addresses
                .iter()
                .filter(|a| a.current == Some(slot(nic)))
                .map(|a| a.cidr.to_string())
                .collect();
            here.sort();
            here
        }

        /// Log lines since the last call.
        fn take_log(&mut self) -> Vec<String> {
            std::mem::take(&mut self.log)
        }
    }

    fn no_quiet(failback: bool) -> Policy {
        Policy {
            failback,
            startup_quiet: Duration::ZERO,
        }
    }

    /// Seeds 002's worked example (hme0/hme1 with test addresses), with a standby added:
    /// h0 and h1 active with data addresses, h2 a standby with only a test address.
    fn worked_example(failback: bool) -> Host {
        Host::new(
            no_quiet(failback),
            &[
                (
                    "h0",
                    false,
                    ProbeFamilies::BOTH,
                    &["192.0.2.19/24", "2001:db8::19/64"],
                ),
                ("h1", false, ProbeFamilies::BOTH, &["192.0.2.20/24"]),
                ("h2", true, ProbeFamilies::BOTH, &[]),
            ],
        )
    }

    #[test]
    fn worked_example_two_active_one_standby() {
        let mut host = worked_example(true);
        // Before: each active NIC hosts its own addresses; the standby is inactive and empty.
        assert!(host.moves.is_empty());
        assert_eq!(host.group.usable_interfaces(), ["h0", "h1"]);
        assert_eq!(host.group.view().inactive, ["h2"]);
        assert_eq!(host.on("h0"), ["192.0.2.19/24", "2001:db8::19/64"]);
        host.take_log();

        // h0 stops answering (its carrier stays up); the others keep answering.
        host.rounds(
            NUM_PROBE_FAILS - 1,
            &[("h1", ANSWERED), ("h2", ANSWERED), ("h0", LOST)],
        );
        assert!(host.take_log().is_empty(), "four losses are not a failure");
        // IPv6 probes from the link-local test address fail as well.
        for _ in 0..NUM_PROBE_FAILS {
            host.send(Event::Probe {
                nic: slot("h0"),
                family: AddressFamily::Inet6,
                outcome: LOST,
            });
        }
        assert_eq!(
            host.group.state(),
            GroupState::Ok,
            "IPv4 has not failed yet"
        );
        host.rounds(1, &[("h1", ANSWERED), ("h2", ANSWERED), ("h0", LOST)]);
        assert_eq!(
            host.take_log(),
            [
                "NIC failure detected on h0 of group g0",
                "NIC h2 of group g0 is now active",
                "Successfully failed over from NIC h0 to NIC h2",
            ]
        );
        assert!(host.on("h0").is_empty());
        assert_eq!(host.on("h1"), ["192.0.2.20/24"]);
        assert_eq!(host.on("h2"), ["192.0.2.19/24", "2001:db8::19/64"]);
        assert_eq!(host.group.usable_interfaces(), ["h1", "h2"]);
        assert_eq!(host.group.state(), GroupState::Degraded);
        assert_eq!(host.group.view().unusable, ["h0"]);

        // Replies come back: 9 are not enough, the 10th repairs and fails back.
        host.rounds(
            NUM_PROBE_REPAIRS - 1,
            &[("h0", ANSWERED), ("h1", ANSWERED), ("h2", ANSWERED)],
        );
        assert!(host.take_log().is_empty());
        host.rounds(1, &[("h0", ANSWERED), ("h1", ANSWERED), ("h2", ANSWERED)]);
        assert_eq!(
            host.take_log(),
            [
                "NIC repair detected on h0 of group g0",
                "NIC h2 of group g0 is now inactive",
                "Successfully failed back to NIC h0",
            ]
        );
        // After: the original configuration is restored; h1's address never moved.
        assert_eq!(host.on("h0"), ["192.0.2.19/24", "2001:db8::19/64"]);
        assert!(host.on("h2").is_empty());
        assert_eq!(host.group.view().inactive, ["h2"]);
        assert_eq!(host.group.state(), GroupState::Ok);
        assert_eq!(host.moves.len(), 4);
        assert!(host.moves.iter().all(|m| m.addr != cidr("192.0.2.20/24")));
    }

    #[test]
    fn second_failure_while_the_standby_serves_goes_to_the_least_loaded_nic() {
        let mut host = worked_example(true);
        host.link("h0", false);
        assert_eq!(host.on("h2"), ["192.0.2.19/24", "2001:db8::19/64"]);
        host.link("h1", false);
        assert_eq!(
            host.on("h2"),
            ["192.0.2.19/24", "192.0.2.20/24", "2001:db8::19/64"]
        );
        // h1 comes back: it takes its own address back, the standby keeps serving h0's.
        host.link("h1", true);
        host.rounds(NUM_PROBE_REPAIRS, &[("h1", ANSWERED)]);
        assert_eq!(host.on("h1"), ["192.0.2.20/24"]);
        assert_eq!(host.on("h2"), ["192.0.2.19/24", "2001:db8::19/64"]);
        assert_eq!(host.group.usable_interfaces(), ["h1", "h2"]);
    }

    #[test]
    fn failback_off_keeps_addresses_on_the_standby_after_repair() {
        let mut host = worked_example(false);
        host.link("h0", false);
        host.link("h0", true);
        host.rounds(NUM_PROBE_REPAIRS, &[("h0", ANSWERED)]);
        assert_eq!(host.group.view().inactive, ["h0"]);
        assert_eq!(host.on("h2"), ["192.0.2.19/24", "2001:db8::19/64"]);
        assert!(host.on("h0").is_empty());
        assert_eq!(host.moves.len(), 2, "only the failover");
    }

    #[test]
    fn failback_off_without_standby_leaves_the_repaired_nic_active_and_empty() {
        let mut host = Host::new(
            no_quiet(false),
            &[
                ("h0", false, ProbeFamilies::NONE, &["192.0.2.10/24"]),
                ("h1", false, ProbeFamilies::NONE, &["192.0.2.11/24"]),
            ],
        );
        host.link("h0", false);
        host.now += Duration::from_secs(5);
        host.link("h0", true);
        assert_eq!(host.group.usable_interfaces(), ["h0", "h1"]);
        assert!(host.on("h0").is_empty());
        assert_eq!(host.on("h1"), ["192.0.2.10/24", "192.0.2.11/24"]);
    }

    #[test]
    fn flapping_link_causes_bounded_moves_and_no_ping_pong_once_damped() {
        let mut host = Host::new(
            no_quiet(true),
            &[
                ("h0", false, ProbeFamilies::NONE, &["192.0.2.10/24"]),
                ("h1", false, ProbeFamilies::NONE, &["192.0.2.11/24"]),
            ],
        );
        let start = host.now;
        for _ in 0..25 {
            host.now += Duration::from_secs(1);
            host.link("h0", false);
            host.now += Duration::from_millis(200);
            host.link("h0", true);
        }
        assert!(host.now < start + Duration::from_secs(60));
        // Fail over, fail back twice (the two link-ups tolerated per minute), fail over for
        // good: one failover per repair plus the first.
        let bound = 2 * LINK_UPS_PER_MINUTE + 1;
        assert_eq!(host.moves.len(), bound, "{:?}", host.moves);
        assert_eq!(host.on("h1"), ["192.0.2.10/24", "192.0.2.11/24"]);
        // Once stable for long enough, one failback.
        let wake = host.group.next_wakeup().unwrap();
        host.now = wake;
        host.send(Event::Tick);
        assert_eq!(host.on("h0"), ["192.0.2.10/24"]);
        assert_eq!(host.moves.len(), bound + 1);
    }

    #[test]
    fn group_failure_moves_nothing_and_the_first_repaired_nic_gets_all_addresses() {
        let mut host = Host::new(
            no_quiet(true),
            &[
                ("h0", false, ProbeFamilies::NONE, &["192.0.2.10/24"]),
                ("h1", false, ProbeFamilies::NONE, &["192.0.2.11/24"]),
                ("h2", false, ProbeFamilies::NONE, &["192.0.2.12/24"]),
            ],
        );
        host.link("h0", false);
        host.link("h1", false);
        let before_last = host.moves.len();
        host.link("h2", false);
        assert_eq!(host.group.state(), GroupState::Failed);
        assert_eq!(
            host.moves.len(),
            before_last,
            "nothing moves on group failure"
        );
        assert!(
            host.take_log()
                .contains(&"All Interfaces in group g0 have failed".to_owned())
        );

        host.now += Duration::from_secs(3);
        host.link("h1", true);
        assert_eq!(
            host.on("h1"),
            ["192.0.2.10/24", "192.0.2.11/24", "192.0.2.12/24"]
        );
        assert!(
            host.take_log()
                .contains(&"At least 1 interface (h1) in group g0 is now usable".to_owned())
        );
        host.link("h2", true);
        assert_eq!(host.on("h2"), ["192.0.2.12/24"]);
        host.link("h0", true);
        assert_eq!(host.on("h0"), ["192.0.2.10/24"]);
        assert_eq!(host.on("h1"), ["192.0.2.11/24"]);
    }

    #[test]
    fn target_failure_moves_nothing() {
        let mut host = worked_example(true);
        host.rounds(NUM_PROBE_FAILS, &[("h0", LOST), ("h1", LOST), ("h2", LOST)]);
        assert_eq!(host.group.state(), GroupState::Failed);
        assert!(host.moves.is_empty());
        assert_eq!(host.on("h0"), ["192.0.2.19/24", "2001:db8::19/64"]);
    }

    #[test]
    fn nic_that_disappears_fails_over_and_takes_its_addresses_back_when_it_reappears() {
        let mut host = Host::new(
            no_quiet(true),
            &[
                ("h0", false, ProbeFamilies::NONE, &["192.0.2.10/24"]),
                ("h1", false, ProbeFamilies::NONE, &["192.0.2.11/24"]),
            ],
        );
        host.send(Event::Disappeared { nic: slot("h0") });
        assert_eq!(host.on("h1"), ["192.0.2.10/24", "192.0.2.11/24"]);
        assert_eq!(
            host.moves[0].from, None,
            "the kernel deleted it with the NIC"
        );
        host.send(Event::Appeared {
            nic: slot("h0"),
            link_up: true,
        });
        assert_eq!(host.on("h0"), ["192.0.2.10/24"]);
        assert_eq!(host.on("h1"), ["192.0.2.11/24"]);
    }

    #[test]
    fn offline_moves_addresses_away_and_online_brings_them_back() {
        let mut host = worked_example(false);
        host.send(Event::Offline { nic: slot("h0") });
        assert_eq!(host.on("h2"), ["192.0.2.19/24", "2001:db8::19/64"]);
        let refused = host
            .group
            .handle(Event::Offline { nic: slot("h1") }, host.now);
        assert!(refused.is_ok(), "h2 still works");
        let refused = host
            .group
            .handle(Event::Offline { nic: slot("h2") }, host.now);
        assert!(refused.is_err(), "h2 is the last usable NIC");
        host.send(Event::Online { nic: slot("h1") });
        host.send(Event::Online { nic: slot("h0") });
        // Onlining fails back even with FAILBACK=no, and the standby steps back.
        assert_eq!(host.on("h0"), ["192.0.2.19/24", "2001:db8::19/64"]);
        assert_eq!(host.on("h1"), ["192.0.2.20/24"]);
        assert!(host.on("h2").is_empty());
        assert_eq!(host.group.view().inactive, ["h2"]);
    }
}
