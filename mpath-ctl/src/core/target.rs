//! Probe targets of one NIC and address family: which hosts to probe, and what to do with a
//! target that stops answering.
//!
//! The order is in.mpathd's: targets the administrator configured, else the on-link routers
//! the routing table names (host routes the administrator pinned come first), else hosts that
//! answered an echo to the all-hosts group. A list holds one kind only, but for stand-ins:
//! when every target of the group went silent at once, hosts that answer the all-hosts echo
//! stand in for the configured targets or routers until one of those answers again. At most
//! [`MAX_PROBE_TARGETS`] are probed at a time; the rest wait as spares.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::core::probe::NUM_PROBE_FAILS;
use crate::net::address::IpCidr;

/// One next hop of a unicast route in the main table: where probe targets come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteEntry {
    /// The destination prefix; a default route is `0.0.0.0/0` or `::/0`.
    pub destination: IpCidr,
    /// `None` for a directly connected (on-link) destination.
    pub gateway: Option<IpAddr>,
    /// Outgoing interface index.
    pub oif: u32,
}

/// More targets add probe traffic without making failure detection more reliable.
pub const MAX_PROBE_TARGETS: usize = 5;

/// With fewer active targets there is too little evidence to call one of them slow, and
/// this many are brought back at once when none is left active.
pub(crate) const MIN_PROBE_TARGETS: usize = 3;

/// How long a router set aside stays at each recovery step (dead, then slow) before it is
/// probed again, so a flapping router does not keep costing probes.
const RECOVERY_STEP: Duration = Duration::from_secs(60);
/// A family that has one host to probe keeps looking for more with the all-hosts echo, but
/// no more often than this: at the shortest FDT a probe leaves every 14 ms, and every host
/// on the link answers each echo. With no host at all it asks with every probe.
const STANDING_DISCOVERY_PERIOD: Duration = Duration::from_secs(1);

/// An IP address family: of a prober (shown as ipmpstat shows it), a route or a nexthop.
/// Ordered, for keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressFamily {
    Inet,
    Inet6,
}

impl AddressFamily {
    pub fn of(addr: IpAddr) -> Self {
        match addr {
            IpAddr::V4(_) => Self::Inet,
            IpAddr::V6(_) => Self::Inet6,
        }
    }

    /// How messages for administrators name it.
    pub fn ip_version(self) -> &'static str {
        match self {
            Self::Inet => "IPv4",
            Self::Inet6 => "IPv6",
        }
    }

    /// The other family.
    pub fn other(self) -> Self {
        match self {
            Self::Inet => Self::Inet6,
            Self::Inet6 => Self::Inet,
        }
    }

    /// Where discovery echoes go when no router is known: every host on the link answers.
    pub(crate) fn all_nodes(self) -> IpAddr {
        match self {
            Self::Inet => IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
            Self::Inet6 => IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
        }
    }
}

impl fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Inet => "inet",
            Self::Inet6 => "inet6",
        })
    }
}

/// Where a target came from; one list holds one kind only, stand-ins aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSource {
    Configured,
    Router,
    Discovered,
    /// A host that answered the all-hosts echo while the configured targets or routers
    /// were silent.
    StandIn,
}

named!(pub TargetSource {
    Configured => "configured",
    Router => "router",
    Discovered => "discovered",
    StandIn => "stand-in",
});

/// A target's standing, as the status views show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetState {
    /// Probed in turn.
    Active,
    /// Known but not probed, because [`MAX_PROBE_TARGETS`] others are.
    Spare,
    /// Answers far slower than the others; probed again after a while.
    Slow,
    /// Stopped answering while the others answered; probed again after a while.
    Dead,
}

named!(pub TargetState {
    Active => "active",
    Spare => "spare",
    Slow => "slow",
    Dead => "dead",
});

/// How a NIC finds what it probes (ipmpstat -t MODE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetMode {
    /// Configured targets, or routers from the routing table.
    Routes,
    /// Hosts found by multicast echo (with no target known, mpathd is discovering).
    Multicast,
    /// No probing: link-based detection only.
    Disabled,
}

named!(pub TargetMode {
    Routes => "routes",
    Multicast => "multicast",
    Disabled => "disabled",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct TargetView {
    pub address: IpAddr,
    pub source: TargetSource,
    pub state: TargetState,
}

/// Why a target was taken out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetAsideReason {
    /// Lost its last [`NUM_PROBE_FAILS`] probes while the NIC's other targets answered.
    Unresponsive,
    /// Its RTT bound exceeds the probe interval while every other target is fast.
    Slow,
}

/// What happens to a target that was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetAction {
    /// A discovered host is dropped and discovery looks for another.
    Replaced,
    /// A router or configured target is probed again after at least this long.
    RetryAfter(Duration),
}

/// Changes the daemon logs or acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TargetEvent {
    SetAside {
        target: IpAddr,
        reason: SetAsideReason,
        action: TargetAction,
    },
}

impl std::fmt::Display for TargetEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let TargetEvent::SetAside {
            target,
            reason,
            action,
        } = self;
        let why = match reason {
            SetAsideReason::Unresponsive => "stopped answering while the other targets answer",
            SetAsideReason::Slow => {
                "answers too slowly for the probe interval while the other targets are fast"
            }
        };
        match action {
            TargetAction::Replaced => write!(f, "probe target {target} {why}: replaced"),
            TargetAction::RetryAfter(after) => write!(
                f,
                "probe target {target} {why}: set aside, probed again in {} s",
                after.as_secs()
            ),
        }
    }
}

/// A target or test address that can never work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TargetError {
    #[error(
        "IPv6 test address {0} is not link-local: IPv6 probes go out from the NIC's link-local address"
    )]
    TestAddressNotLinkLocal(Ipv6Addr),
    #[error("probe target {target} is not an {family} address")]
    WrongFamily {
        target: IpAddr,
        family: AddressFamily,
    },
    #[error("probe target {0} is not a unicast address")]
    NotUnicast(IpAddr),
    #[error("probe target {0} is the NIC's own test address")]
    OwnTestAddress(IpAddr),
    #[error(
        "IPv6 probe target {0} is not link-local: probes have hop limit 1 and only reach the link"
    )]
    TargetNotLinkLocal(Ipv6Addr),
    #[error(
        "probe target {target} is outside the test address's subnet {test_address}: probes have TTL 1 and cannot reach it"
    )]
    OffLink {
        target: IpAddr,
        test_address: IpCidr,
    },
}

/// A target's place in the rotation; routers and configured targets climb back from
/// `Dead` to `Slow` to `Spare` to `Active` one step per [`RECOVERY_STEP`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Active,
    Spare,
    Slow { since: Instant },
    Dead { since: Instant },
}

impl Status {
    fn state(self) -> TargetState {
        match self {
            Status::Active => TargetState::Active,
            Status::Spare => TargetState::Spare,
            Status::Slow { .. } => TargetState::Slow,
            Status::Dead { .. } => TargetState::Dead,
        }
    }
}

#[derive(Debug, Clone)]
struct Target {
    address: IpAddr,
    source: TargetSource,
    status: Status,
    consecutive_losses: u32,
}

/// The probe targets of one NIC in one address family, with their health.
#[derive(Debug, Clone)]
pub(crate) struct TargetSet {
    ifindex: u32,
    test_address: IpCidr,
    configured: Vec<IpAddr>,
    routers: Vec<IpAddr>,
    targets: Vec<Target>,
    /// Index where the round-robin search for the next probe target starts.
    next: usize,
    /// Losses in a row across all targets: while it stays below [`NUM_PROBE_FAILS`] the
    /// other targets answered, so a target that lost that many alone is to blame.
    nic_consecutive_losses: u32,
    discovery_requested: bool,
    /// When the last discovery echo was asked for.
    last_discovery: Option<Instant>,
    /// Every target of the group went silent at once while configured targets or routers
    /// were probed: hosts that answer the all-hosts echo stand in for them until one of
    /// them answers again ("in.mpathd will then ping the multicast-to-all address and choose
    /// a host from those that respond"), so a dead router does not keep the group failed.
    stand_ins_wanted: bool,
}

impl TargetSet {
    /// Targets for the NIC with interface index `ifindex` probing from `test_address` (for
    /// IPv6, the NIC's link-local address).
    pub(crate) fn new(ifindex: u32, test_address: IpCidr) -> Result<Self, TargetError> {
        if let IpAddr::V6(addr) = test_address.addr()
            && !addr.is_unicast_link_local()
        {
            return Err(TargetError::TestAddressNotLinkLocal(addr));
        }
        Ok(Self {
            ifindex,
            test_address,
            configured: Vec::new(),
            routers: Vec::new(),
            targets: Vec::new(),
            next: 0,
            nic_consecutive_losses: 0,
            discovery_requested: false,
            last_discovery: None,
            stand_ins_wanted: false,
        })
    }

    pub(crate) fn family(&self) -> AddressFamily {
        AddressFamily::of(self.test_address.addr())
    }

    pub(crate) fn test_address(&self) -> IpCidr {
        self.test_address
    }

    /// Sets the administrator's targets; they replace routers and discovered hosts while
    /// the list is not empty. Targets of the other address family are skipped, since one
    /// group-level list serves both probers of a NIC; so is each target this NIC cannot
    /// probe, whose reason is returned, while the others are kept (one bad entry must not
    /// silence the rest of the list).
    pub(crate) fn set_configured(&mut self, targets: &[IpAddr]) -> Vec<TargetError> {
        let mut configured = Vec::new();
        let mut skipped = Vec::new();
        for &target in targets {
            if AddressFamily::of(target) != self.family() {
                continue;
            }
            if let Err(e) = self.check_on_link(target) {
                skipped.push(e);
            } else if !configured.contains(&target) {
                configured.push(target);
            }
        }
        self.configured = configured;
        self.rebuild();
        skipped
    }

    /// Takes the routers from the routing table: host routes out of any NIC of the group
    /// (pinned by the administrator) first, then the on-link next hops of routes out of any
    /// NIC of the group: the group shares one link, so a router a route names on one NIC is
    /// a target for every NIC whose test subnet holds it. Entries that cannot be probed
    /// (off-link for this test address, wrong family, IPv6 not link-local, local addresses)
    /// are skipped.
    pub(crate) fn update_routes(
        &mut self,
        routes: &[RouteEntry],
        group_nics: &[u32],
        local: &[IpAddr],
    ) {
        let host_prefix = match self.family() {
            AddressFamily::Inet => 32,
            AddressFamily::Inet6 => 128,
        };
        let ours = routes
            .iter()
            .filter(|route| route.oif == self.ifindex || group_nics.contains(&route.oif));
        let pinned = ours
            .clone()
            .filter(|route| {
                route.destination.prefix_len() == host_prefix
                    && route
                        .gateway
                        .is_none_or(|gateway| gateway == route.destination.addr())
            })
            .map(|route| route.destination.addr());
        let gateways = ours.filter_map(|route| route.gateway);
        let mut routers = Vec::new();
        for candidate in pinned.chain(gateways) {
            if !local.contains(&candidate)
                && self.check_on_link(candidate).is_ok()
                && !routers.contains(&candidate)
            {
                routers.push(candidate);
            }
        }
        self.routers = routers;
        self.rebuild();
    }

    /// Adds hosts that answered a discovery echo, in the order they answered, until
    /// [`MAX_PROBE_TARGETS`] are known. Ignored while configured targets or routers exist,
    /// unless stand-ins are wanted: the first sets the silent ones aside. Returns how many
    /// were added.
    pub(crate) fn add_discovered(
        &mut self,
        responders: &[IpAddr],
        local: &[IpAddr],
        now: Instant,
    ) -> usize {
        let source = if self.uses_discovery() {
            TargetSource::Discovered
        } else if self.stand_ins_wanted {
            TargetSource::StandIn
        } else {
            return 0;
        };
        let standing_in = self.standing_in();
        let mut added = 0;
        for &responder in responders {
            if self.count(source) >= MAX_PROBE_TARGETS {
                break;
            }
            if local.contains(&responder)
                || self.check_on_link(responder).is_err()
                || self.contains(responder)
            {
                continue;
            }
            self.targets.push(Target {
                address: responder,
                source,
                status: Status::Active,
                consecutive_losses: 0,
            });
            added += 1;
        }
        if source == TargetSource::StandIn && added > 0 && !standing_in {
            // Silent since the group failed: probed again after their recovery steps, and
            // the first to answer ends the stand-ins. (Once: a router climbing back is not
            // knocked down again as stand-ins come and go.)
            for target in &mut self.targets {
                if target.source != TargetSource::StandIn && target.status == Status::Active {
                    target.status = Status::Dead { since: now };
                    target.consecutive_losses = 0;
                }
            }
        }
        added
    }

    /// Every target of the group stopped answering at once (a group failure): discovered
    /// hosts are forgotten and discovery starts over, as in.mpathd does. Routers and
    /// configured targets are kept, since they come from the administrator or the routing
    /// table, not from who answered; hosts that answer the all-hosts echo stand in for them
    /// (silent stand-ins are forgotten like discovered hosts).
    pub(crate) fn all_silent(&mut self) {
        if self.uses_discovery() {
            self.targets.clear();
            self.nic_consecutive_losses = 0;
        } else {
            self.stand_ins_wanted = true;
            self.targets.retain(|t| t.source != TargetSource::StandIn);
        }
        self.next = self.next.checked_rem(self.targets.len()).unwrap_or(0);
        self.discovery_requested = true;
    }

    /// Whether hosts stand in for silent configured targets or routers.
    pub(crate) fn standing_in(&self) -> bool {
        self.count(TargetSource::StandIn) > 0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }

    pub(crate) fn contains(&self, address: IpAddr) -> bool {
        self.targets.iter().any(|target| target.address == address)
    }

    /// Targets probed in turn.
    pub(crate) fn active(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.targets
            .iter()
            .filter(|target| target.status == Status::Active)
            .map(|target| target.address)
    }

    pub(crate) fn view(&self) -> Vec<TargetView> {
        self.targets
            .iter()
            .map(|target| TargetView {
                address: target.address,
                source: target.source,
                state: target.status.state(),
            })
            .collect()
    }

    /// The next target in round-robin order. Set-aside routers climb one recovery step when
    /// the rotation passes them; if nothing is active, the best few are brought back at once
    /// so probing never stops while targets are known.
    pub(crate) fn next_target(&mut self, now: Instant) -> Option<IpAddr> {
        if self.targets.is_empty() {
            return None;
        }
        if self.active_count() == 0 {
            self.activate_best();
        }
        let len = self.targets.len();
        for step in 0..len {
            let index = (self.next + step) % len;
            let room = self.active_count() < MAX_PROBE_TARGETS;
            let target = &mut self.targets[index];
            match target.status {
                Status::Spare if room => target.status = Status::Active,
                Status::Slow { since } if now >= since + RECOVERY_STEP => {
                    target.status = Status::Spare;
                }
                Status::Dead { since } if now >= since + RECOVERY_STEP => {
                    target.status = Status::Slow { since: now };
                }
                _ => {}
            }
            if target.status == Status::Active {
                self.next = (index + 1) % len;
                return Some(target.address);
            }
        }
        None
    }

    /// Whether the daemon should send a discovery echo with this probe: when the list is
    /// made of discovered hosts (or stand-ins are wanted) and a host was just dropped, or it
    /// holds none (every probe), or one, which gives no resilience (once a
    /// [`STANDING_DISCOVERY_PERIOD`]).
    pub(crate) fn take_discovery_request(&mut self, now: Instant) -> bool {
        let hosts = if self.uses_discovery() {
            Some(self.active_count())
        } else if self.stand_ins_wanted {
            Some(self.count(TargetSource::StandIn))
        } else {
            None
        };
        let due = self
            .last_discovery
            .is_none_or(|at| now.saturating_duration_since(at) >= STANDING_DISCOVERY_PERIOD);
        let wanted = match hosts {
            Some(0) => true,
            Some(1) => due || self.discovery_requested,
            Some(_) => self.discovery_requested,
            None => false,
        };
        self.discovery_requested = false;
        if wanted {
            self.last_discovery = Some(now);
        }
        wanted
    }

    /// A reply from `address`; one from a configured target or router ends the stand-ins.
    pub(crate) fn record_answer(&mut self, address: IpAddr) {
        self.nic_consecutive_losses = 0;
        let Some(target) = self.find_mut(address) else {
            return;
        };
        target.consecutive_losses = 0;
        let source = target.source;
        if self.stand_ins_wanted
            && matches!(source, TargetSource::Configured | TargetSource::Router)
        {
            self.stand_ins_wanted = false;
            self.targets.retain(|t| t.source != TargetSource::StandIn);
            self.next = self.next.checked_rem(self.targets.len()).unwrap_or(0);
        }
    }

    /// Counts a lost probe; sets the target aside when it alone stopped answering. When
    /// every target stops answering no target is blamed: whether the NIC or the targets
    /// failed is the interface state machine's decision ([`crate::core::state`]).
    pub(crate) fn record_loss(&mut self, address: IpAddr, lost_at: Instant) -> Option<TargetEvent> {
        self.nic_consecutive_losses += 1;
        let target_losses = self.find_mut(address).map(|target| {
            target.consecutive_losses += 1;
            target.consecutive_losses
        })?;
        if self.nic_consecutive_losses < NUM_PROBE_FAILS && target_losses >= NUM_PROBE_FAILS {
            self.set_aside(address, SetAsideReason::Unresponsive, lost_at)
        } else {
            None
        }
    }

    /// Takes a target out of rotation: a discovered host is dropped and replaced, a router
    /// or configured target waits out its recovery steps.
    pub(crate) fn set_aside(
        &mut self,
        address: IpAddr,
        reason: SetAsideReason,
        now: Instant,
    ) -> Option<TargetEvent> {
        let index = self.targets.iter().position(|t| t.address == address)?;
        let replaced = matches!(
            self.targets[index].source,
            TargetSource::Discovered | TargetSource::StandIn
        );
        let action = if replaced {
            self.targets.remove(index);
            if index < self.next {
                self.next -= 1;
            }
            self.next = self.next.checked_rem(self.targets.len()).unwrap_or(0);
            self.discovery_requested = true;
            TargetAction::Replaced
        } else {
            let target = &mut self.targets[index];
            target.consecutive_losses = 0;
            let (status, wait) = match reason {
                SetAsideReason::Unresponsive => (Status::Dead { since: now }, 2 * RECOVERY_STEP),
                SetAsideReason::Slow => (Status::Slow { since: now }, RECOVERY_STEP),
            };
            target.status = status;
            TargetAction::RetryAfter(wait)
        };
        Some(TargetEvent::SetAside {
            target: address,
            reason,
            action,
        })
    }

    fn uses_discovery(&self) -> bool {
        self.configured.is_empty() && self.routers.is_empty()
    }

    fn active_count(&self) -> usize {
        self.active().count()
    }

    fn count(&self, source: TargetSource) -> usize {
        self.targets.iter().filter(|t| t.source == source).count()
    }

    fn find_mut(&mut self, address: IpAddr) -> Option<&mut Target> {
        self.targets
            .iter_mut()
            .find(|target| target.address == address)
    }

    /// Rebuilds the list from the highest-priority source that has targets, keeping the
    /// health of targets that stay.
    fn rebuild(&mut self) {
        let (source, wanted) = if !self.configured.is_empty() {
            (TargetSource::Configured, self.configured.clone())
        } else if !self.routers.is_empty() {
            (TargetSource::Router, self.routers.clone())
        } else {
            self.stand_ins_wanted = false;
            self.targets
                .retain(|target| target.source == TargetSource::Discovered);
            self.next = self.next.checked_rem(self.targets.len()).unwrap_or(0);
            return;
        };
        let mut previous = std::mem::take(&mut self.targets);
        self.targets = wanted
            .into_iter()
            .map(|address| {
                match previous
                    .iter()
                    .position(|t| t.address == address && t.source == source)
                {
                    Some(index) => previous.swap_remove(index),
                    None => Target {
                        address,
                        source,
                        status: Status::Spare,
                        consecutive_losses: 0,
                    },
                }
            })
            .collect();
        // Stand-ins stay until a configured target or router answers.
        self.targets.extend(
            previous
                .into_iter()
                .filter(|t| t.source == TargetSource::StandIn),
        );
        let mut active = self.active_count();
        for target in &mut self.targets {
            if active < MAX_PROBE_TARGETS && target.status == Status::Spare {
                target.status = Status::Active;
                active += 1;
            }
        }
        self.next = self.next.checked_rem(self.targets.len()).unwrap_or(0);
    }

    /// Brings back up to [`MIN_PROBE_TARGETS`] targets when none is active: spares first,
    /// then slow ones, then dead ones, longest set aside first.
    fn activate_best(&mut self) {
        let mut candidates: Vec<usize> = (0..self.targets.len()).collect();
        candidates.sort_by_key(|&index| match self.targets[index].status {
            Status::Active | Status::Spare => (0, None),
            Status::Slow { since } => (1, Some(since)),
            Status::Dead { since } => (2, Some(since)),
        });
        for index in candidates.into_iter().take(MIN_PROBE_TARGETS) {
            self.targets[index].status = Status::Active;
        }
    }

    /// Whether probes with TTL / hop limit 1 from the test address can reach `candidate`.
    fn check_on_link(&self, candidate: IpAddr) -> Result<(), TargetError> {
        if candidate == self.test_address.addr() {
            return Err(TargetError::OwnTestAddress(candidate));
        }
        match (self.test_address.addr(), candidate) {
            (IpAddr::V4(test), IpAddr::V4(ip)) => {
                if ip.is_unspecified() || ip.is_multicast() || ip.is_broadcast() || ip.is_loopback()
                {
                    return Err(TargetError::NotUnicast(candidate));
                }
                if !same_prefix(test, ip, self.test_address.prefix_len()) {
                    return Err(TargetError::OffLink {
                        target: candidate,
                        test_address: self.test_address,
                    });
                }
                Ok(())
            }
            (IpAddr::V6(_), IpAddr::V6(ip)) => {
                if ip.is_unspecified() || ip.is_multicast() {
                    Err(TargetError::NotUnicast(candidate))
                } else if !ip.is_unicast_link_local() {
                    Err(TargetError::TargetNotLinkLocal(ip))
                } else {
                    Ok(())
                }
            }
            _ => Err(TargetError::WrongFamily {
                target: candidate,
                family: self.family(),
            }),
        }
    }
}

fn same_prefix(a: Ipv4Addr, b: Ipv4Addr, prefix_len: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_targets_are_logged_in_words() {
        let target: IpAddr = "192.0.2.2".parse().unwrap();
        let dead = TargetEvent::SetAside {
            target,
            reason: SetAsideReason::Unresponsive,
            action: TargetAction::RetryAfter(Duration::from_secs(120)),
        };
        assert_eq!(
            dead.to_string(),
            "probe target 192.0.2.2 stopped answering while the other targets answer: set aside, probed again in 120 s"
        );
        let slow = TargetEvent::SetAside {
            target,
            reason: SetAsideReason::Slow,
            action: TargetAction::Replaced,
        };
        assert!(slow.to_string().ends_with(
            "too slowly for the probe interval while the other targets are fast: replaced"
        ));
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn ips(texts: &[&str]) -> Vec<IpAddr> {
        texts.iter().map(|text| ip(text)).collect()
    }

    fn cidr(text: &str, prefix_len: u8) -> IpCidr {
        IpCidr::new(ip(text), prefix_len).unwrap()
    }

    const IFINDEX: u32 = 7;

    fn v4_set() -> TargetSet {
        TargetSet::new(IFINDEX, cidr("192.0.2.21", 24)).unwrap()
    }

    fn v6_set() -> TargetSet {
        TargetSet::new(IFINDEX, cidr("fe80::21", 64)).unwrap()
    }

    fn route(destination: &str, prefix_len: u8, gateway: Option<&str>, oif: u32) -> RouteEntry {
        RouteEntry {
            destination: cidr(destination, prefix_len),
            gateway: gateway.map(ip),
            oif,
        }
    }

    fn active(set: &TargetSet) -> Vec<IpAddr> {
        set.active().collect()
    }

    fn state_of(set: &TargetSet, address: &str) -> Option<TargetState> {
        set.view()
            .into_iter()
            .find(|view| view.address == ip(address))
            .map(|view| view.state)
    }

    fn rotation(set: &mut TargetSet, now: Instant, probes: usize) -> Vec<IpAddr> {
        (0..probes).filter_map(|_| set.next_target(now)).collect()
    }

    #[test]
    fn ipv6_test_address_must_be_link_local() {
        assert_eq!(
            TargetSet::new(IFINDEX, cidr("2001:db8::21", 64)).unwrap_err(),
            TargetError::TestAddressNotLinkLocal("2001:db8::21".parse().unwrap())
        );
    }

    #[test]
    fn cidr_refuses_prefix_longer_than_address() {
        assert!(IpCidr::new(ip("192.0.2.1"), 33).is_err());
        assert!(IpCidr::new(ip("fe80::1"), 129).is_err());
        assert_eq!(cidr("192.0.2.21", 24).to_string(), "192.0.2.21/24");
    }

    #[test]
    fn configured_targets_beat_routers_which_beat_discovered_hosts() {
        let mut set = v4_set();
        assert_eq!(
            set.add_discovered(&ips(&["192.0.2.50"]), &[], Instant::now()),
            1
        );
        assert_eq!(active(&set), ips(&["192.0.2.50"]));

        set.update_routes(&[route("0.0.0.0", 0, Some("192.0.2.1"), IFINDEX)], &[], &[]);
        assert_eq!(active(&set), ips(&["192.0.2.1"]), "routers replace hosts");
        assert_eq!(set.view()[0].source, TargetSource::Router);
        assert_eq!(
            set.add_discovered(&ips(&["192.0.2.51"]), &[], Instant::now()),
            0
        );

        assert!(
            set.set_configured(&ips(&["192.0.2.9", "2001:db8::9"]))
                .is_empty()
        );
        assert_eq!(
            active(&set),
            ips(&["192.0.2.9"]),
            "configured replace routers"
        );
        assert_eq!(set.view()[0].source, TargetSource::Configured);

        assert!(set.set_configured(&[]).is_empty());
        assert_eq!(active(&set), ips(&["192.0.2.1"]), "routers return");
        set.update_routes(&[], &[], &[]);
        assert!(
            set.is_empty(),
            "discovered hosts were dropped for the routers"
        );
    }

    #[test]
    fn routes_give_pinned_host_routes_then_on_link_gateways_of_the_group_s_nics() {
        let mut set = v4_set();
        let routes = [
            route("0.0.0.0", 0, Some("192.0.2.1"), IFINDEX),
            route("198.51.100.0", 24, Some("192.0.2.2"), IFINDEX),
            route("198.51.100.0", 24, Some("192.0.2.1"), IFINDEX),
            route("203.0.113.0", 24, Some("192.0.2.3"), IFINDEX + 1),
            route("203.0.113.0", 24, Some("192.0.2.4"), IFINDEX + 2),
            route("203.0.113.0", 24, Some("198.51.100.1"), IFINDEX),
            route("192.0.2.0", 24, None, IFINDEX),
            route("192.0.2.40", 32, None, IFINDEX),
            route("192.0.2.41", 32, Some("192.0.2.41"), IFINDEX),
            route("192.0.2.19", 32, None, IFINDEX),
        ];
        set.update_routes(
            &routes,
            &[IFINDEX, IFINDEX + 1],
            &ips(&["192.0.2.19", "192.0.2.21"]),
        );
        assert_eq!(
            active(&set),
            ips(&[
                "192.0.2.40",
                "192.0.2.41",
                "192.0.2.1",
                "192.0.2.2",
                "192.0.2.3"
            ]),
            "pinned first, deduplicated, another NIC of the group's router taken, NICs of no group, off-link gateways and local addresses skipped"
        );
    }

    #[test]
    fn ipv6_routers_must_be_link_local() {
        let mut set = v6_set();
        set.update_routes(
            &[
                route("::", 0, Some("fe80::1"), IFINDEX),
                route("2001:db8:1::", 48, Some("2001:db8::1"), IFINDEX),
                route("0.0.0.0", 0, Some("192.0.2.1"), IFINDEX),
            ],
            &[],
            &[],
        );
        assert_eq!(active(&set), ips(&["fe80::1"]));
    }

    #[test]
    fn at_most_five_targets_are_probed_and_the_rest_are_spares() {
        let mut set = v4_set();
        let routes: Vec<RouteEntry> = (1..=7)
            .map(|n| route(&format!("192.0.2.{}", 100 + n), 32, None, IFINDEX))
            .collect();
        set.update_routes(&routes, &[], &[]);
        assert_eq!(set.active().count(), MAX_PROBE_TARGETS);
        assert_eq!(state_of(&set, "192.0.2.106"), Some(TargetState::Spare));
        let now = Instant::now();
        let probed = rotation(&mut set, now, 10);
        assert!(!probed.contains(&ip("192.0.2.106")));
        assert_eq!(&probed[..5], &probed[5..], "round robin over the five");
    }

    #[test]
    fn discovery_keeps_first_responders_skips_local_and_caps_at_five() {
        let mut set = v4_set();
        let responders = ips(&[
            "192.0.2.19",
            "192.0.2.60",
            "192.0.2.61",
            "192.0.2.60",
            "198.51.100.7",
            "192.0.2.21",
            "192.0.2.62",
            "192.0.2.63",
            "192.0.2.64",
            "192.0.2.65",
        ]);
        assert_eq!(
            set.add_discovered(&responders, &ips(&["192.0.2.19"]), Instant::now()),
            5
        );
        assert_eq!(
            active(&set),
            ips(&[
                "192.0.2.60",
                "192.0.2.61",
                "192.0.2.62",
                "192.0.2.63",
                "192.0.2.64"
            ])
        );
    }

    #[test]
    fn configured_targets_a_nic_cannot_probe_are_skipped_with_the_reason_and_the_rest_kept() {
        let mut set = v4_set();
        let skipped = set.set_configured(&ips(&[
            "198.51.100.1",
            "192.0.2.50",
            "192.0.2.21",
            "224.0.0.1",
            "192.0.2.51",
        ]));
        assert_eq!(
            skipped,
            [
                TargetError::OffLink {
                    target: ip("198.51.100.1"),
                    test_address: cidr("192.0.2.21", 24)
                },
                TargetError::OwnTestAddress(ip("192.0.2.21")),
                TargetError::NotUnicast(ip("224.0.0.1")),
            ]
        );
        assert_eq!(active(&set), ips(&["192.0.2.50", "192.0.2.51"]));
        let mut set = v6_set();
        let skipped = set.set_configured(&ips(&["2001:db8::1"]));
        assert_eq!(
            skipped,
            [TargetError::TargetNotLinkLocal(
                "2001:db8::1".parse().unwrap()
            )]
        );
        assert!(skipped[0].to_string().contains("not link-local"));
        assert!(set.is_empty(), "nothing left to probe");
    }

    #[test]
    fn discovery_is_requested_only_while_hosts_give_no_resilience() {
        let start = Instant::now();
        let mut set = v4_set();
        assert!(set.take_discovery_request(start), "no targets at all");
        assert!(
            set.take_discovery_request(start),
            "with every probe while none answered"
        );
        set.add_discovered(&ips(&["192.0.2.60"]), &[], start);
        assert!(
            !set.take_discovery_request(start),
            "a single host, asked just now"
        );
        let later = start + STANDING_DISCOVERY_PERIOD;
        assert!(
            set.take_discovery_request(later),
            "a single host, once a period"
        );
        assert!(!set.take_discovery_request(later + Duration::from_millis(14)));
        set.add_discovered(&ips(&["192.0.2.61"]), &[], start);
        assert!(!set.take_discovery_request(later + STANDING_DISCOVERY_PERIOD));
        set.update_routes(&[route("0.0.0.0", 0, Some("192.0.2.1"), IFINDEX)], &[], &[]);
        assert!(
            !set.take_discovery_request(later + 2 * STANDING_DISCOVERY_PERIOD),
            "never with routers"
        );
    }

    #[test]
    fn dead_discovered_host_is_replaced_while_others_answer() {
        let mut set = v4_set();
        set.add_discovered(
            &ips(&["192.0.2.60", "192.0.2.61", "192.0.2.62"]),
            &[],
            Instant::now(),
        );
        let now = Instant::now();
        let _: bool = set.take_discovery_request(now);
        for round in 1..NUM_PROBE_FAILS {
            assert_eq!(set.record_loss(ip("192.0.2.60"), now), None, "loss {round}");
            set.record_answer(ip("192.0.2.61"));
        }
        assert_eq!(
            set.record_loss(ip("192.0.2.60"), now),
            Some(TargetEvent::SetAside {
                target: ip("192.0.2.60"),
                reason: SetAsideReason::Unresponsive,
                action: TargetAction::Replaced,
            })
        );
        assert_eq!(active(&set), ips(&["192.0.2.61", "192.0.2.62"]));
        assert!(
            set.take_discovery_request(now),
            "a replacement is looked for"
        );
    }

    #[test]
    fn dead_router_is_retried_step_by_step() {
        let mut set = v4_set();
        let routes = [
            route("192.0.2.1", 32, None, IFINDEX),
            route("192.0.2.2", 32, None, IFINDEX),
        ];
        set.update_routes(&routes, &[], &[]);
        let start = Instant::now();
        let mut event = None;
        for _ in 0..NUM_PROBE_FAILS {
            event = set.record_loss(ip("192.0.2.1"), start);
            set.record_answer(ip("192.0.2.2"));
        }
        assert_eq!(
            event,
            Some(TargetEvent::SetAside {
                target: ip("192.0.2.1"),
                reason: SetAsideReason::Unresponsive,
                action: TargetAction::RetryAfter(Duration::from_secs(120)),
            })
        );
        assert_eq!(state_of(&set, "192.0.2.1"), Some(TargetState::Dead));
        let only_two = ips(&["192.0.2.2"; 4]);
        assert_eq!(
            rotation(&mut set, start + Duration::from_secs(59), 4),
            only_two
        );
        let slow_at = start + Duration::from_secs(60);
        assert_eq!(rotation(&mut set, slow_at, 4), only_two);
        assert_eq!(state_of(&set, "192.0.2.1"), Some(TargetState::Slow));
        assert_eq!(
            rotation(&mut set, slow_at + Duration::from_secs(59), 4),
            only_two
        );
        let back = rotation(&mut set, slow_at + Duration::from_secs(60), 4);
        assert!(back.contains(&ip("192.0.2.1")), "probed again: {back:?}");
        assert_eq!(state_of(&set, "192.0.2.1"), Some(TargetState::Active));
    }

    #[test]
    fn slow_router_waits_one_step_and_slow_host_is_replaced() {
        let now = Instant::now();
        let mut set = v4_set();
        set.update_routes(&[route("192.0.2.1", 32, None, IFINDEX)], &[], &[]);
        assert_eq!(
            set.set_aside(ip("192.0.2.1"), SetAsideReason::Slow, now),
            Some(TargetEvent::SetAside {
                target: ip("192.0.2.1"),
                reason: SetAsideReason::Slow,
                action: TargetAction::RetryAfter(Duration::from_secs(60)),
            })
        );
        assert_eq!(state_of(&set, "192.0.2.1"), Some(TargetState::Slow));

        let mut set = v4_set();
        set.add_discovered(&ips(&["192.0.2.60", "192.0.2.61"]), &[], Instant::now());
        let event = set.set_aside(ip("192.0.2.60"), SetAsideReason::Slow, now);
        assert!(matches!(
            event,
            Some(TargetEvent::SetAside {
                action: TargetAction::Replaced,
                ..
            })
        ));
        assert!(!set.contains(ip("192.0.2.60")));
    }

    #[test]
    fn nothing_active_brings_the_best_targets_back_at_once() {
        let start = Instant::now();
        let mut set = v4_set();
        set.update_routes(
            &[
                route("192.0.2.1", 32, None, IFINDEX),
                route("192.0.2.2", 32, None, IFINDEX),
            ],
            &[],
            &[],
        );
        set.set_aside(ip("192.0.2.1"), SetAsideReason::Unresponsive, start);
        set.set_aside(ip("192.0.2.2"), SetAsideReason::Slow, start);
        assert_eq!(set.active().count(), 0);
        let probed = rotation(&mut set, start + Duration::from_secs(1), 2);
        assert_eq!(probed.len(), 2, "probing goes on: {probed:?}");
        assert_eq!(set.active().count(), 2);
    }

    #[test]
    fn no_target_is_blamed_when_every_target_stops_answering() {
        let mut set = v4_set();
        set.add_discovered(
            &ips(&["192.0.2.60", "192.0.2.61", "192.0.2.62"]),
            &[],
            Instant::now(),
        );
        let start = Instant::now();
        let order = ips(&["192.0.2.60", "192.0.2.61", "192.0.2.62"]);
        // Each target loses more than NUM_PROBE_FAILS probes, but never alone.
        let events: Vec<_> = (0..3 * NUM_PROBE_FAILS as usize)
            .filter_map(|n| {
                let at = start + Duration::from_secs(n as u64);
                set.record_loss(order[n % order.len()], at)
            })
            .collect();
        assert_eq!(
            events,
            [],
            "the NIC or all targets failed: not for this set to say"
        );
        assert_eq!(set.active().count(), 3);
    }

    #[test]
    fn all_silent_forgets_discovered_hosts_but_not_routers() {
        let mut set = v4_set();
        let now = Instant::now();
        set.add_discovered(&ips(&["192.0.2.60", "192.0.2.61"]), &[], now);
        let _: bool = set.take_discovery_request(now);
        set.all_silent();
        assert!(set.is_empty());
        assert!(set.take_discovery_request(now));

        set.update_routes(&[route("0.0.0.0", 0, Some("192.0.2.1"), IFINDEX)], &[], &[]);
        set.all_silent();
        assert_eq!(active(&set), ips(&["192.0.2.1"]));
    }

    #[test]
    fn hosts_stand_in_for_a_silent_router_until_it_answers_again() {
        let start = Instant::now();
        let mut set = v4_set();
        let routes = [route("0.0.0.0", 0, Some("192.0.2.1"), IFINDEX)];
        set.update_routes(&routes, &[], &[]);
        // Routers known: no discovery, and no host is taken.
        assert!(!set.take_discovery_request(start));
        assert_eq!(set.add_discovered(&ips(&["192.0.2.60"]), &[], start), 0);

        set.all_silent();
        assert!(set.take_discovery_request(start));
        assert_eq!(
            active(&set),
            ips(&["192.0.2.1"]),
            "kept until a host answers"
        );
        assert_eq!(set.add_discovered(&ips(&["192.0.2.60"]), &[], start), 1);
        assert!(set.standing_in());
        assert_eq!(active(&set), ips(&["192.0.2.60"]));
        assert_eq!(state_of(&set, "192.0.2.1"), Some(TargetState::Dead));
        assert!(
            set.take_discovery_request(start + STANDING_DISCOVERY_PERIOD),
            "one stand-in gives no resilience"
        );
        set.add_discovered(&ips(&["192.0.2.61"]), &[], start);
        assert!(!set.take_discovery_request(start + 2 * STANDING_DISCOVERY_PERIOD));
        assert_eq!(
            rotation(&mut set, start, 4),
            ips(&["192.0.2.60", "192.0.2.61", "192.0.2.60", "192.0.2.61"])
        );
        // A route change keeps them.
        set.update_routes(&routes, &[], &[]);
        assert!(set.standing_in());
        let views = set.view();
        assert!(
            views
                .iter()
                .any(|v| v.address == ip("192.0.2.60") && v.source == TargetSource::StandIn),
            "{views:?}"
        );

        // The router climbs back (dead, slow, spare, active) and its answer ends the stand-ins.
        let later = start + 2 * RECOVERY_STEP;
        let probed = rotation(&mut set, start + RECOVERY_STEP, 3)
            .into_iter()
            .chain(rotation(&mut set, later, 6))
            .collect::<Vec<_>>();
        assert!(probed.contains(&ip("192.0.2.1")), "{probed:?}");
        set.record_answer(ip("192.0.2.1"));
        assert!(!set.standing_in());
        assert_eq!(active(&set), ips(&["192.0.2.1"]));
        assert!(!set.take_discovery_request(later));
    }

    #[test]
    fn a_second_group_failure_forgets_the_silent_stand_ins_for_new_ones() {
        let now = Instant::now();
        let mut set = v4_set();
        set.set_configured(&ips(&["192.0.2.9"]));
        set.all_silent();
        let first = ips(&[
            "192.0.2.60",
            "192.0.2.61",
            "192.0.2.62",
            "192.0.2.63",
            "192.0.2.64",
        ]);
        assert_eq!(set.add_discovered(&first, &[], now), 5);
        set.all_silent();
        assert!(!set.standing_in());
        assert_eq!(set.add_discovered(&ips(&["192.0.2.70"]), &[], now), 1);
        assert_eq!(active(&set), ips(&["192.0.2.70"]));
    }

    #[test]
    fn silent_stand_ins_are_replaced_and_no_responder_leaves_the_routers_probed() {
        let now = Instant::now();
        let mut set = v4_set();
        set.set_configured(&ips(&["192.0.2.9"]));
        set.all_silent();
        // Nobody answered the echo: the configured target is still probed.
        assert_eq!(rotation(&mut set, now, 2), ips(&["192.0.2.9", "192.0.2.9"]));
        set.add_discovered(&ips(&["192.0.2.60", "192.0.2.61"]), &[], now);
        assert_eq!(state_of(&set, "192.0.2.9"), Some(TargetState::Dead));
        let mut event = None;
        for _ in 0..NUM_PROBE_FAILS {
            set.record_answer(ip("192.0.2.61"));
            event = set.record_loss(ip("192.0.2.60"), now);
        }
        assert!(
            matches!(
                event,
                Some(TargetEvent::SetAside {
                    action: TargetAction::Replaced,
                    ..
                })
            ),
            "{event:?}"
        );
        assert!(!set.contains(ip("192.0.2.60")));
        assert!(set.take_discovery_request(now));
    }

    #[test]
    fn route_refresh_keeps_the_health_of_known_routers() {
        let now = Instant::now();
        let mut set = v4_set();
        let routes = [
            route("192.0.2.1", 32, None, IFINDEX),
            route("192.0.2.2", 32, None, IFINDEX),
        ];
        set.update_routes(&routes, &[], &[]);
        set.set_aside(ip("192.0.2.1"), SetAsideReason::Unresponsive, now);
        set.update_routes(&routes, &[], &[]);
        assert_eq!(state_of(&set, "192.0.2.1"), Some(TargetState::Dead));
    }

    #[test]
    fn all_nodes_addresses() {
        assert_eq!(AddressFamily::Inet.all_nodes(), ip("224.0.0.1"));
        assert_eq!(AddressFamily::Inet6.all_nodes(), ip("ff02::1"));
        assert_eq!(AddressFamily::Inet6.to_string(), "inet6");
    }
}
