//! Group NICs: setting them up and tearing them down as they come and go, resynchronising
//! with the kernel, adopting what an earlier mpathd left, and IPv6 probing as link-local
//! addresses come and go.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Instant,
};

use mpath_common::NicInfo;

use crate::{
    config::GroupConfig,
    core::identity::NicSlot,
    core::reconcile,
    core::state::{Action, Event, IfState},
    core::target::AddressFamily,
    daemon::{
        Daemon,
        announcer::Announcement,
        group::{GroupRuntime, NicAt},
        host_io::HostIo,
        link_local_of,
        reconcile::Dirty,
        reload::carry_states,
    },
    net::address::IpCidr,
    net::netconf::{InterfaceNetconf, answers_arp_only_for_its_own},
    net::netlink::{AddressOptions, Link, NetlinkError, Origin},
};

impl<H: HostIo> Daemon<H> {
    /// Detaches the datapath from NICs an earlier mpathd served that are no group's NIC now
    /// (removed while no daemon ran, or taken out of the configuration).
    pub(super) fn prune_stale_pins(&mut self) {
        let current = self.groups.ifindexes();
        match self.host.pinned_nics() {
            Ok(pinned) => {
                for ifindex in pinned.into_iter().filter(|i| !current.contains(i)) {
                    tracing::info!(
                        "detaching the datapath from ifindex {ifindex}: in no group now"
                    );
                    self.host.forget(ifindex);
                }
            }
            Err(e) => tracing::warn!("listing pinned links: {e}"),
        }
    }

    /// Builds the runtime of a configured group; the kernel side is set up by the next
    /// resync.
    pub(super) fn add_group(&mut self, g: &GroupConfig) -> anyhow::Result<()> {
        let daemon = &self.config.daemon;
        self.groups.add(
            g,
            daemon.failback,
            daemon.failure_detection_time,
            self.restarted,
        )
    }

    /// Reads links, addresses and routes from the kernel and brings every group up to date:
    /// at start, on reload, and after the kernel dropped netlink events. The groups named in
    /// `adopt` are new to this daemon: what the host shows of an earlier one's decisions is
    /// adopted (see [`reconcile::found_failures`]); those in `carry` replay the states their
    /// NICs had before a reload.
    pub(super) async fn resync(
        &mut self,
        adopt: &BTreeSet<String>,
        carry: &BTreeMap<String, Vec<(String, IfState)>>,
    ) -> anyhow::Result<()> {
        let links = self.host.links().await?;
        self.strays
            .retain(|name, _| self.groups.nic_named(name).is_none());
        for link in &links {
            if self.groups.nic_named(&link.name).is_none() {
                self.guard_stray(link);
                self.track_ungrouped(link);
            }
        }
        // The log names NICs; an address may sit on a NIC deleted since the links were read.
        let nic_name = |ifindex: u32| {
            links
                .iter()
                .find(|l| l.ifindex == ifindex)
                .map_or_else(|| format!("ifindex {ifindex}"), |l| l.name.clone())
        };
        let addresses = self.host.addresses().await?;
        let by_origin = self.host.addresses_by_origin().await?;
        let of_origin = |wanted: Origin| -> Vec<(u32, IpCidr)> {
            by_origin
                .iter()
                .filter(|(_, _, origin)| *origin == wanted)
                .map(|(ifindex, cidr, _)| (*ifindex, *cidr))
                .collect()
        };
        let main = self.host.main_routes().await?;
        self.routing.main.replace_all(main);
        self.routing.reread_installed();
        self.addresses = addresses.clone();
        let now = self.host.now();
        for id in self.groups.ids() {
            let mut present = Vec::new();
            let mut macs = Vec::new();
            let slots: Vec<NicSlot> = self.groups[id].nics.iter().map(|n| n.slot).collect();
            for slot in slots {
                let at = NicAt {
                    group: id,
                    nic: slot,
                };
                let name = &self.groups.nic(at).name;
                match links.iter().find(|l| l.name == *name) {
                    Some(link) => {
                        self.groups.nic_mut(at).carrier = link.usable();
                        self.groups.nic_mut(at).admin_up = link.up;
                        self.host.arm_carrier(link.ifindex, link.usable());
                        self.set_up_nic(at, link, now).await;
                        if let Some(mac) = link.mac {
                            macs.push(Event::HardwareAddress { nic: slot, mac });
                        }
                        present.push((slot, link.usable()));
                    }
                    None => self.forget_nic(at),
                }
            }
            self.adopt_addresses(&of_origin(Origin::Other));
            let group = &mut self.groups[id];
            let placements = reconcile::placements(&group.holdings(), &addresses);
            for (address, placed) in group.addresses.iter_mut().zip(placements) {
                if placed.is_some() {
                    group.placed.insert(address.cidr);
                }
                address.current = placed;
            }
            // The MACs first: a NIC that duplicates another's never carries traffic.
            let mut actions = Vec::new();
            for event in macs.into_iter().chain([Event::Snapshot { present }]) {
                actions.extend(group.fsm.handle(event, now)?);
            }
            if let Some(states) = carry.get(group.name()) {
                actions.extend(carry_states(group, states, now));
            } else if adopt.contains(group.name()) {
                actions.extend(adopt_offline(group, &self.host, now));
                if self.config.daemon.failback {
                    actions.extend(adopt_failures(group, now));
                }
            }
            // The kernel may disagree with mpathd: everything is brought in line.
            self.groups[id].dirty.mark(Dirty::ALL);
            self.apply(id, actions);
        }
        // mpathd's routes and nexthops are read again by the plan below: until then the
        // re-forms leave the kernel alone, and the plan finds every group's NICs set up.
        self.reconcile().await;
        for id in self.groups.ids() {
            // Compared with the placements the moves brought.
            let copies = reconcile::extra_copies(
                &self.groups[id].holdings(),
                &addresses,
                &self.groups.ifindexes(),
                &of_origin(Origin::Mpathd),
            );
            for (ifindex, cidr) in copies.remove {
                let nic = nic_name(ifindex);
                tracing::warn!(
                    group = self.groups[id].name(),
                    interface = %nic,
                    "removing a second copy of data address {cidr} from {nic}"
                );
                self.delete_address(ifindex, cidr).await;
            }
            for (ifindex, cidr) in copies.outside {
                let nic = nic_name(ifindex);
                tracing::warn!(
                    group = self.groups[id].name(),
                    interface = %nic,
                    "data address {cidr} of group {} is also on {nic}, which is in no group: \
                     mpathd leaves it there (it never takes an address off a NIC outside its \
                     groups), and both NICs answer for it until someone takes it off {nic}",
                    self.groups[id].name()
                );
            }
        }
        let unconfigured =
            reconcile::unconfigured(&self.groups.holdings(), &of_origin(Origin::Mpathd));
        for (ifindex, cidr) in unconfigured {
            let nic = nic_name(ifindex);
            tracing::info!(
                interface = %nic,
                "removing {cidr} from {nic}: an earlier mpathd put it there and the configuration no longer has it"
            );
            self.delete_address(ifindex, cidr).await;
        }
        self.replan().await;
        Ok(())
    }

    /// A group NIC's link changed, or it appeared.
    pub(super) async fn link_changed(&mut self, at: NicAt, link: &Link, now: Instant) {
        let known = self.groups.nic(at).ifindex == Some(link.ifindex);
        if known && let Some(mac) = link.mac {
            self.change_mac(at, mac);
        }
        let carrier = std::mem::replace(&mut self.groups.nic_mut(at).carrier, link.usable());
        let admin_up = std::mem::replace(&mut self.groups.nic_mut(at).admin_up, link.up);
        if admin_up != link.up {
            // Link routes follow it (the kernel deleted IPv4's when it went down).
            self.routing.main_changed(now);
        }
        if known {
            self.host.arm_carrier(link.ifindex, link.usable());
        }
        if known && !carrier && link.usable() {
            for p in &mut self.groups.nic_mut(at).probing {
                p.prober.link_came_up(now);
            }
        }
        self.set_up_nic(at, link, now).await;
        // A change of the NIC (its MTU, its features, its link) may be what lets the
        // programs attach.
        if known && self.groups.nic(at).datapath_error.is_some() {
            self.bring_in(at, link.ifindex, now).await;
        }
        let nic = at.nic;
        // Before an appearance, so that a NIC that duplicates another's MAC never carries
        // traffic; a MAC that did not change changes nothing.
        if let Some(mac) = link.mac {
            let event = Event::HardwareAddress { nic, mac };
            self.handle(at.group, event, now);
        }
        let event = if known {
            Event::Link {
                nic,
                up: link.usable(),
            }
        } else {
            Event::Appeared {
                nic,
                link_up: link.usable(),
            }
        };
        self.handle(at.group, event, now);
        // With carrier back, nexthops through the NIC can be made again (the kernel deleted
        // them when it went).
        if carrier != link.usable() {
            self.groups[at.group].dirty.routes = true;
        }
    }

    /// A group NIC was renamed. The configuration names NICs, so it leaves the group as if
    /// removed: mpathd takes off it what it put there (data addresses, which fail over,
    /// its test address and the programs) and leaves the NIC to whoever renamed it. A NIC that
    /// takes the configured name (this one renamed back) joins as a new one.
    pub(super) async fn link_renamed(&mut self, at: NicAt, link: &Link, now: Instant) {
        let nic = self.groups.nic(at);
        let (old, test) = (nic.name.clone(), nic.test_address);
        let group = &self.groups[at.group];
        tracing::warn!(
            group = group.name(),
            interface = %old,
            "NIC {old} of group {} was renamed {}: it leaves the group, whose configuration names {old}",
            group.name(),
            link.name
        );
        let on_it: Vec<IpCidr> = group
            .addresses
            .iter()
            .filter(|a| a.current == Some(at.nic))
            .map(|a| a.cidr)
            .collect();
        self.link_removed(&old, link.ifindex, now);
        // The addresses fail over first, as ever: on their new NIC before they leave this one.
        let group = &mut self.groups[at.group];
        group
            .left_behind
            .extend(on_it.into_iter().map(|cidr| (link.ifindex, cidr)));
        group.dirty.mark(Dirty::ADDRESSES);
        if let Some(test) = test {
            self.delete_address(link.ifindex, test.host()).await;
        }
        if let Some(IpAddr::V4(v4)) = test.map(|t| t.addr())
            && let Err(e) = self.host.remove_test_address(v4)
        {
            tracing::warn!("{e}");
        }
    }

    /// A NIC was removed from the system.
    pub(super) fn link_removed(&mut self, name: &str, ifindex: u32, now: Instant) {
        if self.ungrouped.remove(name).is_some() {
            tracing::info!(interface = %name, "NIC {name} has been removed from the system");
        }
        self.strays.remove(name);
        // By ifindex too: a late removal of an older NIC of that name is no news.
        let Some(at) = self
            .groups
            .nic_named(name)
            .filter(|at| self.groups.nic(*at).ifindex == Some(ifindex))
        else {
            return;
        };
        let group = &mut self.groups[at.group];
        self.routing
            .departed
            .push((ifindex, group.name().to_string()));
        for a in &mut group.addresses {
            if a.current == Some(at.nic) {
                a.current = None;
            }
        }
        self.forget_nic(at);
        let event = Event::Disappeared { nic: at.nic };
        self.handle(at.group, event, now);
    }

    /// Sets up a NIC that is present under a new ifindex (it appeared, or was re-created
    /// under the same name): the datapath, the NIC's settings, its test address, its probers.
    pub(super) async fn set_up_nic(&mut self, at: NicAt, link: &Link, now: Instant) {
        let nic = self.groups.nic(at);
        if nic.ifindex == Some(link.ifindex) {
            return;
        }
        // A late event about an older NIC of this name: the current one is set up by its own.
        if self.host.ifindex_of(&nic.name) != Some(link.ifindex) {
            return;
        }
        // The NIC was re-created under the same name: the old one's datapath state goes.
        self.forget_nic(at);
        let nic = self.groups.nic_mut(at);
        nic.ifindex = Some(link.ifindex);
        nic.mac = link.mac.unwrap_or_default();
        nic.datapath_error = None;
        self.bring_in(at, link.ifindex, now).await;
    }

    /// Attaches the programs to a present NIC and, once they are on, gives it its test
    /// address, its place in the maps and its probers; tells the state machine either way
    /// (a NIC without the programs is offline until they attach).
    async fn bring_in(&mut self, at: NicAt, ifindex: u32, now: Instant) {
        let attached = self.attach_datapath(at);
        if attached {
            self.place_test_address(at, ifindex).await;
            self.describe_to_datapath(at, ifindex);
            self.start_probers(at, now);
            self.watch_carrier(at, ifindex);
        }
        let event = Event::Datapath {
            nic: at.nic,
            attached,
        };
        self.handle(at.group, event, now);
    }

    /// Attaches the programs to a NIC and gives it a group member's settings; false when the
    /// programs cannot be attached, with the reason kept for the views and logged once.
    fn attach_datapath(&mut self, at: NicAt) -> bool {
        let probe_rx = self.groups[at.group].config.probe_rx;
        let nic = self.groups.nic_mut(at);
        match self.host.attach(&nic.name, probe_rx) {
            Ok(attached) => {
                if let Some(native) = attached.native_xdp_refused {
                    tracing::warn!(
                        interface = %nic.name,
                        "{}: the driver refused native XDP ({native}); its probe replies are \
                         matched by generic XDP, which costs every received packet more",
                        nic.name
                    );
                }
                if nic.datapath_error.take().is_some() {
                    tracing::info!(
                        interface = %nic.name,
                        "mpathd's programs are attached to {} now",
                        nic.name
                    );
                }
            }
            Err(e) => {
                let error = e.to_string();
                if nic.datapath_error.as_ref() != Some(&error) {
                    tracing::error!(
                        interface = %nic.name,
                        "cannot attach mpathd's programs to {}: {error}",
                        nic.name
                    );
                }
                nic.datapath_error = Some(error);
                return false;
            }
        }
        if let Err(e) = self
            .host
            .netconf()
            .write(&nic.name, InterfaceNetconf::GROUP_MEMBER)
        {
            tracing::warn!(interface = %nic.name, "{}: {e}", nic.name);
        }
        true
    }

    /// Has the carrier watch ([`crate::net::carrier::CarrierWatch`]) read the NIC's
    /// carrier; a NIC whose carrier cannot be read is left to the kernel's link events, and
    /// the log says so.
    fn watch_carrier(&mut self, at: NicAt, ifindex: u32) {
        if self.carrier_hook {
            return;
        }
        let nic = self.groups.nic(at);
        if let Err(e) = self.host.watch_carrier(&nic.name, ifindex, nic.carrier) {
            tracing::warn!(
                interface = %nic.name,
                "the carrier of {} cannot be read ({e}): its carrier loss is seen through the \
                 kernel's link events only, up to a second late on a physical NIC",
                nic.name
            );
        }
    }

    /// Has the carrier watch read every attached NIC's carrier: when the hook stopped.
    pub(super) fn watch_every_carrier(&mut self) {
        for at in self.groups.nics() {
            let nic = self.groups.nic(at);
            if let Some(ifindex) = nic.ifindex.filter(|_| nic.attached()) {
                self.watch_carrier(at, ifindex);
            }
        }
    }

    /// The carrier hook or watch found NIC `ifindex` without carrier: acted on at once, as
    /// if the kernel's link event had come (it follows up to a second later on a physical
    /// NIC, when linkwatch gets to it). A carrier that returns waits for the link event, which
    /// also brings the operational state the NIC needs to be usable. Returns the NIC's name
    /// when the loss was confirmed.
    pub(super) async fn carrier_lost(&mut self, ifindex: u32, now: Instant) -> Option<String> {
        let at = self.groups.nic_at(ifindex)?;
        // The link event came first after all.
        if !self.groups.nic(at).carrier {
            return None;
        }
        // The report may be stale (the carrier came back since) or, from the hook, which
        // sees every network namespace, about another namespace's NIC of the same ifindex:
        // the kernel's view of this namespace's NIC decides.
        let name = self.groups.nic(at).name.clone();
        match self.host.link(&name).await {
            Ok(Some(link)) if link.ifindex == ifindex && !link.lower_up => {}
            Ok(_) => {
                self.host.arm_carrier(ifindex, true);
                return None;
            }
            Err(e) => {
                tracing::debug!("confirming the carrier loss of {name}: {e}");
                self.host.arm_carrier(ifindex, true);
                return None;
            }
        }
        self.groups.nic_mut(at).carrier = false;
        tracing::info!(
            group = self.groups[at.group].name(),
            interface = %name,
            "{name} has no carrier (seen ahead of the kernel's link event)"
        );
        let event = Event::Link {
            nic: at.nic,
            up: false,
        };
        self.handle(at.group, event, now);
        self.groups[at.group].dirty.routes = true;
        Some(name)
    }

    /// Attaches again where the programs are missing: on NICs they could not be attached to
    /// before (the cause may be gone: an MTU lowered, a foreign XDP program removed), on
    /// NICs someone detached them from behind mpathd's back (`bpftool link detach`, `tc
    /// filter del`), and the source hook likewise.
    pub(super) async fn check_datapath(&mut self, now: Instant) {
        if self.source_hook.attached {
            match self.host.source_hook_attached() {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        "the source hook was taken off behind mpathd's back: attaching it again"
                    );
                    self.set_up_source_hook();
                }
                Err(e) => tracing::warn!("the source hook: {e}"),
            }
        }
        for at in self.groups.nics() {
            let nic = self.groups.nic(at);
            let Some(ifindex) = nic.ifindex else { continue };
            if nic.datapath_error.is_some() {
                self.bring_in(at, ifindex, now).await;
                continue;
            }
            match self.host.still_attached(ifindex) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(
                        interface = %nic.name,
                        "mpathd's programs were taken off {} behind its back: attaching them again",
                        nic.name
                    );
                    if !self.attach_datapath(at) {
                        let event = Event::Datapath {
                            nic: at.nic,
                            attached: false,
                        };
                        self.handle(at.group, event, now);
                    }
                }
                Err(e) => tracing::warn!(interface = %nic.name, "{}: {e}", nic.name),
            }
        }
    }

    /// Puts a NIC's IPv4 test address on it.
    async fn place_test_address(&mut self, at: NicAt, ifindex: u32) {
        let nic = self.groups.nic(at);
        if let Some(test) = nic.test_address
            && let Err(e) = add_test_address(&self.host, ifindex, test).await
        {
            tracing::error!(interface = %nic.name, "cannot add test address {test} to {}: {e}", nic.name);
        }
    }

    /// Tells the programs about a NIC: its group, counter slot and MAC, and the test
    /// addresses its probe replies come to.
    fn describe_to_datapath(&mut self, at: NicAt, ifindex: u32) {
        let group = &self.groups[at.group];
        let nic = self.groups.nic(at);
        let mut info = NicInfo {
            slot: nic.slot.0,
            group: group.id.0,
            mac: nic.mac,
            ..Default::default()
        };
        // An operator's offline outlives mpathd in the pinned map (see `adopt_offline`).
        let was_offline = self.host.nic_info(ifindex).is_ok_and(|i| i.offline());
        info.set_offline(was_offline);
        let test_v4 = match nic.test_address.map(|t| t.addr()) {
            Some(IpAddr::V4(v4)) => Some(v4),
            _ => None,
        };
        info.set_ipv4_test(test_v4);
        if nic.probe_v6
            && let Some(IpAddr::V6(ll)) = link_local_of(&self.addresses, ifindex).map(|c| c.addr())
        {
            info.set_ipv6_test(Some(ll));
        }
        if let Err(e) = self.host.set_nic(ifindex, info) {
            tracing::error!(interface = %nic.name, "{}: {e}", nic.name);
        }
        // After set_nic: the test address list is per group, found through the NIC.
        if let Some(v4) = test_v4
            && let Err(e) = self.host.set_test_address(v4, ifindex)
        {
            tracing::error!(interface = %nic.name, "{}: {e}", nic.name);
        }
    }

    /// Starts the probers of a NIC that was just set up: from its IPv4 test address and,
    /// when its group probes over IPv6, from its link-local address.
    fn start_probers(&mut self, at: NicAt, now: Instant) {
        let nic = self.groups.nic(at);
        let Some(ifindex) = nic.ifindex else { return };
        let link_local = nic
            .probe_v6
            .then(|| link_local_of(&self.addresses, ifindex))
            .flatten();
        let tests: Vec<IpCidr> = nic.test_address.into_iter().chain(link_local).collect();
        let probing = tests
            .into_iter()
            .filter_map(|test| self.start_prober(at, test, now))
            .collect();
        self.groups.nic_mut(at).probing = probing;
    }

    /// Starts IPv6 probing on a NIC whose link-local address showed up (or finished DAD)
    /// after the NIC was set up.
    pub(super) fn start_v6(&mut self, ifindex: u32, link_local: IpCidr) {
        let Some(at) = self.groups.nic_at(ifindex) else {
            return;
        };
        let IpAddr::V6(ll) = link_local.addr() else {
            return;
        };
        let nic = self.groups.nic(at);
        let running = nic
            .probing
            .iter()
            .any(|p| p.prober.family() == AddressFamily::Inet6);
        // A NIC without its programs starts probing once they attach.
        if !nic.probe_v6 || running || !nic.attached() {
            return;
        }
        let Some(probing) = self.start_prober(at, link_local, self.host.now()) else {
            return;
        };
        let nic = self.groups.nic_mut(at);
        if let Err(e) = self
            .host
            .update_nic(ifindex, |info| info.set_ipv6_test(Some(ll)))
        {
            tracing::error!(interface = %nic.name, "{}: {e}", nic.name);
        }
        tracing::info!(interface = %nic.name, "{} probes over IPv6 from {ll}", nic.name);
        nic.probing.push(probing);
    }

    /// Stops IPv6 probing from a link-local address that went away (it starts again when the
    /// NIC gets one back); returns where the NIC is when a prober stopped.
    pub(super) fn stop_v6(&mut self, ifindex: u32, link_local: IpCidr) -> Option<NicAt> {
        let at = self.groups.nic_at(ifindex)?;
        let nic = self.groups.nic_mut(at);
        let before = nic.probing.len();
        nic.probing
            .retain(|p| p.prober.targets().test_address() != link_local);
        if nic.probing.len() == before {
            return None;
        }
        tracing::info!(
            interface = %nic.name,
            "{} stops probing over IPv6: {link_local} is gone",
            nic.name
        );
        if let Err(e) = self
            .host
            .update_nic(ifindex, |info| info.set_ipv6_test(None))
        {
            tracing::error!(interface = %nic.name, "{}: {e}", nic.name);
        }
        Some(at)
    }

    /// A NIC's hardware address changed under the same ifindex (`ip link set h2 address`):
    /// the datapath rewrites source MACs to it, and the peers must learn it for the addresses
    /// the NIC holds, or they keep sending to a MAC nobody has.
    fn change_mac(&mut self, at: NicAt, mac: [u8; 6]) {
        let nic = self.groups.nic_mut(at);
        let Some(ifindex) = nic.ifindex else { return };
        if nic.mac == mac {
            return;
        }
        nic.mac = mac;
        // A NIC without its programs holds no address yet: its next attach describes it.
        if !nic.attached() {
            return;
        }
        let name = nic.name.clone();
        tracing::info!(
            "the hardware address of {name} changed to {}; announcing its addresses with it",
            mac.map(|b| format!("{b:02x}")).join(":")
        );
        if let Err(e) = self.host.update_nic(ifindex, |info| info.mac = mac) {
            tracing::error!(interface = %name, "{name}: {e}");
        }
        let test = self.groups.nic(at).test_address.map(|t| t.addr());
        if let Some(IpAddr::V4(v4)) = test
            && let Err(e) = self.host.set_test_address(v4, ifindex)
        {
            tracing::error!(interface = %name, "{name}: {e}");
        }
        self.groups[at.group].dirty.table = true;
        // The probe targets must learn it for the test and link-local addresses too, or the
        // NIC's probes fail until their neighbour entries expire.
        let held: Vec<IpAddr> = self.groups[at.group]
            .addresses
            .iter()
            .filter(|a| a.current == Some(at.nic))
            .map(|a| a.cidr.addr())
            .chain(test)
            .chain(link_local_of(&self.addresses, ifindex).map(|c| c.addr()))
            .collect();
        for addr in held {
            self.announce(Announcement { ifindex, mac, addr }, &name);
        }
    }

    /// Puts back the test address of `nic` that someone deleted.
    pub(super) async fn restore_test_address(&mut self, nic: &str, ifindex: u32, test: IpCidr) {
        if let Err(e) = add_test_address(&self.host, ifindex, test).await {
            tracing::error!(interface = %nic, "cannot restore test address {test} on {nic}: {e}");
        }
    }

    /// Forgets the kernel side of a NIC: gone, or re-created under another ifindex.
    pub(super) fn forget_nic(&mut self, at: NicAt) {
        let nic = self.groups.nic_mut(at);
        nic.probing.clear();
        if let Some(ifindex) = nic.ifindex.take() {
            self.host.forget_carrier(ifindex);
            self.host.forget(ifindex);
            self.ipv6_off.remove(&ifindex);
            self.ipv6_off_warned.remove(&ifindex);
        }
    }

    /// Keeps a NIC outside the groups from answering ARP for the groups' addresses, once it
    /// has carrier: Linux answers ARP for any local address on any NIC, and on the groups'
    /// link the router would then send the replies to a test address to this NIC and fail
    /// healthy group NICs. Whether a NIC without addresses shares the link cannot be seen,
    /// so every Ethernet NIC outside the groups counts. With `isolate_arp = false` it is only
    /// named, in a warning and in the metrics.
    pub(super) fn guard_stray(&mut self, link: &Link) {
        // A rename shows as a link event under the new name.
        self.strays
            .retain(|name, (ifindex, _)| *ifindex != link.ifindex || *name == link.name);
        if self.groups.len() == 0 || link.mac.is_none() || !(link.up && link.lower_up) {
            // Without carrier it is on no link: no longer a stray (its settings stay).
            self.strays.remove(&link.name);
            return;
        }
        let netconf = self.host.netconf();
        let isolated = if self.config.daemon.isolate_arp {
            match netconf.isolate_arp(&link.name) {
                Ok(isolation) => {
                    if isolation.before != isolation.after {
                        tracing::warn!(
                            interface = %link.name,
                            "NIC {} is in no group and has carrier: arp_ignore {} -> {}, \
                             arp_announce {} -> {}, so that it answers ARP only for its own \
                             addresses, not for the groups' test and data addresses \
                             (isolate_arp = false leaves it alone)",
                            link.name,
                            isolation.before.0,
                            isolation.after.0,
                            isolation.before.1,
                            isolation.after.1
                        );
                    }
                    isolation.isolated()
                }
                Err(e) => {
                    tracing::warn!(interface = %link.name, "{}: {e}", link.name);
                    false
                }
            }
        } else {
            netconf
                .read(&link.name)
                .is_ok_and(|n| answers_arp_only_for_its_own(n.arp_ignore))
        };
        let was = self
            .strays
            .insert(link.name.clone(), (link.ifindex, isolated));
        if !isolated && was.is_none_or(|(_, isolated)| isolated) {
            tracing::warn!(
                interface = %link.name,
                "NIC {} is in no group, has carrier and answers ARP for every address of the \
                 host: if it is on a group's link, the replies to the test addresses can go to \
                 it and healthy NICs fail; give it arp_ignore=1 (isolate_arp = true does)",
                link.name
            );
        }
    }

    /// Follows the link of a NIC outside every group (TRACK_INTERFACES_ONLY_WITH_GROUPS=no),
    /// logging its failures and repairs as in.mpathd does.
    pub(super) fn track_ungrouped(&mut self, link: &Link) {
        if self.config.daemon.track_interfaces_only_with_groups || link.name == "lo" {
            return;
        }
        let up = link.usable();
        match self.ungrouped.insert(link.name.clone(), up) {
            Some(was) if was == up => {}
            Some(_) if up => {
                tracing::info!(interface = %link.name, "The link has come up on {}", link.name)
            }
            Some(_) => {
                tracing::warn!(interface = %link.name, "The link has gone down on {}", link.name)
            }
            None => tracing::debug!("tracking {} (in no group)", link.name),
        }
    }
}

/// Puts a NIC's test address on it. A test address must never steer routing nor be chosen
/// as a source: it goes on as a host address (/32) without a prefix route. Otherwise it would
/// be the primary address of its subnet and the data addresses secondaries, which get no route
/// of their own.
async fn add_test_address(
    host: &impl HostIo,
    ifindex: u32,
    test: IpCidr,
) -> Result<(), NetlinkError> {
    let options = AddressOptions {
        noprefixroute: true,
        mpathds: true,
        ..Default::default()
    };
    host.add_address(ifindex, test.host(), options).await
}

/// Takes the NICs an operator had taken offline under an earlier mpathd offline again: the
/// pinned map keeps the mark ([`mpath_common::NIC_F_OFFLINE`]), so a restart does not put an
/// offlined NIC back into use.
fn adopt_offline(group: &mut GroupRuntime, host: &impl HostIo, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for nic in &group.nics {
        let Some(ifindex) = nic.ifindex else { continue };
        if !host.nic_info(ifindex).is_ok_and(|info| info.offline()) {
            continue;
        }
        let event = Event::Offline { nic: nic.slot };
        match group.fsm.handle(event, now) {
            Ok(offlined) => {
                tracing::info!(
                    group = %group.config.name,
                    interface = %nic.name,
                    "{} stays offline, as an operator left it",
                    nic.name
                );
                actions.extend(offlined);
            }
            Err(e) => tracing::warn!(
                group = %group.config.name,
                interface = %nic.name,
                "{} was offline before the restart: {e}",
                nic.name
            ),
        }
    }
    actions
}

/// Adopts what an earlier mpathd decided (see [`reconcile::found_failures`]): each such NIC
/// stays failed until its probes repair it.
fn adopt_failures(group: &mut GroupRuntime, now: Instant) -> Vec<Action> {
    let mut actions = Vec::new();
    for found in reconcile::found_failures(&group.holdings()) {
        let Ok(adopted) = group.fsm.handle(Event::Adopt { nic: found.nic }, now) else {
            continue;
        };
        // Action::StillFailed says it at info level; this is the evidence.
        if adopted
            .iter()
            .any(|a| matches!(a, Action::StillFailed { .. }))
        {
            let (nic, on) = (group.fsm.nic_name(found.nic), group.fsm.nic_name(found.on));
            tracing::debug!(
                "{} of {nic} is on {on}: {nic} was failed by the mpathd before this one",
                found.address,
            );
        }
        actions.extend(adopted);
    }
    actions
}
