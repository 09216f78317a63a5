//! The validator: turns the raw file into a [`Config`] or refuses it with the place and the
//! reason, so a bad file never reaches the host.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mpath_common::{MAX_GROUPS, MAX_NICS};
use toml::Spanned;

use super::error::{ConfigError, Problem, Source};
use super::raw::{RawConfig, RawDaemon, RawGroup, RawInterface, RawRoute};
use super::solaris::SolarisDefaults;
use super::{
    Config, DEFAULT_ROUTE_RULE_PRIORITY, DaemonConfig, GroupConfig, InterfaceConfig,
    MAX_CARRIER_POLL_MS, MAX_FAILURE_DETECTION_TIME_MS, MAX_GROUP_NAME_LEN, MAX_INTERFACE_NAME_LEN,
    MIN_FAILURE_DETECTION_TIME_MS, ProbeRx, RouteConfig,
};
use crate::net::address::{IpCidr, Ipv4Cidr};

pub(super) fn failure_detection_time(millis: i64) -> Result<Duration, Problem> {
    if millis < MIN_FAILURE_DETECTION_TIME_MS {
        Err(Problem::FailureDetectionTimeTooSmall(millis))
    } else if millis > MAX_FAILURE_DETECTION_TIME_MS {
        Err(Problem::FailureDetectionTimeTooLarge(millis))
    } else {
        Ok(Duration::from_millis(millis.unsigned_abs()))
    }
}

/// The kernel's own tables: a route mpathd put there would mix with routes it does not own.
fn route_table(value: i64) -> Result<u32, Problem> {
    let reason = match value {
        0 => "it is RT_TABLE_UNSPEC, which the kernel reads as no table",
        253 => "it is the kernel's default table (RT_TABLE_DEFAULT)",
        254 => "it is the kernel's main table (RT_TABLE_MAIN)",
        255 => "it is the kernel's local table (RT_TABLE_LOCAL)",
        _ => match u32::try_from(value) {
            Ok(table) => return Ok(table),
            Err(_) => "routing tables are numbered 1 to 4294967295",
        },
    };
    Err(Problem::BadRouteTable { value, reason })
}

/// 0 turns polling off; past [`MAX_CARRIER_POLL_MS`] it would hardly beat the kernel.
fn carrier_poll(millis: i64) -> Result<Option<Duration>, Problem> {
    match millis {
        0 => Ok(None),
        1..=MAX_CARRIER_POLL_MS => Ok(Some(Duration::from_millis(millis.unsigned_abs()))),
        _ => Err(Problem::BadCarrierPoll(millis)),
    }
}

/// Priority 0 is the local rule and 32766 the main rule; mpathd's rule must come between.
fn route_rule_priority(value: i64) -> Result<u32, Problem> {
    match u32::try_from(value) {
        Ok(priority) if (1..=DEFAULT_ROUTE_RULE_PRIORITY).contains(&priority) => Ok(priority),
        _ => Err(Problem::BadRouteRulePriority(value)),
    }
}

/// A Unix socket's path lives in `sun_path`, 108 bytes with the terminating NUL: a longer
/// one cannot be bound.
const MAX_SOCKET_PATH_LEN: usize = 107;

/// Who already uses a name or address, for "first on line N" messages.
struct Owner {
    name: String,
    line: usize,
}

/// Checks the raw file in file order, remembering what earlier items claimed so that a
/// conflict is reported at its second occurrence, naming the first.
pub(super) struct Validator<'a> {
    source: Source<'a>,
    /// Group name → line of its name.
    groups: HashMap<String, usize>,
    /// Interface name → its group and line.
    interfaces: HashMap<String, Owner>,
    /// Test address → interface and line.
    test_addresses: HashMap<IpAddr, Owner>,
    /// Data address → interface and line.
    data_addresses: HashMap<IpAddr, Owner>,
    /// Every group's targets, checked against all local addresses once those are known.
    targets: Vec<(IpAddr, Range<usize>)>,
    /// Every data address with its prefix, for the subnets a gateway must be a host of.
    data_subnets: Vec<IpCidr>,
    /// (destination, metric) → group and line: the kernel's identity of a route in a table.
    routes: HashMap<(IpCidr, u32), Owner>,
    /// Every route's gateway, checked against all local addresses once those are known.
    vias: Vec<(IpAddr, Range<usize>)>,
    /// Every route's destination, checked against all local addresses once those are known.
    destinations: Vec<(IpCidr, Range<usize>)>,
    /// What the file holds that mpathd accepts but cannot use, with file and line.
    warnings: Vec<String>,
}

impl<'a> Validator<'a> {
    pub(super) fn new(source: Source<'a>) -> Self {
        Validator {
            source,
            groups: HashMap::new(),
            interfaces: HashMap::new(),
            test_addresses: HashMap::new(),
            data_addresses: HashMap::new(),
            targets: Vec::new(),
            data_subnets: Vec::new(),
            routes: HashMap::new(),
            vias: Vec::new(),
            destinations: Vec::new(),
            warnings: Vec::new(),
        }
    }

    pub(super) fn config(
        mut self,
        raw: RawConfig,
        defaults: SolarisDefaults,
    ) -> Result<Config, ConfigError> {
        let mut warnings = defaults.warnings.clone();
        let daemon = self.daemon(raw.daemon, defaults)?;
        let mut groups = Vec::with_capacity(raw.groups.len());
        for raw_group in raw.groups {
            groups.push(self.group(raw_group.span(), raw_group.into_inner(), daemon.probe_rx)?);
        }
        for (target, span) in &self.targets {
            self.target_not_local(*target, span)?;
        }
        for (via, span) in &self.vias {
            self.via_not_local(*via, span)?;
        }
        for (to, span) in &self.destinations {
            self.destination_not_local(*to, span)?;
        }
        warnings.append(&mut self.warnings);
        Ok(Config {
            daemon,
            groups,
            warnings,
        })
    }

    fn daemon(
        &self,
        raw: Option<RawDaemon>,
        defaults: SolarisDefaults,
    ) -> Result<DaemonConfig, ConfigError> {
        let builtin = DaemonConfig::default();
        let raw = raw.unwrap_or_default();
        let failure_detection_time = match raw.failure_detection_time_ms {
            Some(millis) => failure_detection_time(*millis.get_ref())
                .map_err(|problem| self.source.error(&millis.span(), problem))?,
            None => defaults
                .failure_detection_time
                .unwrap_or(builtin.failure_detection_time),
        };
        let metrics_listen = match raw.metrics_listen {
            Some(text) => text.get_ref().parse().map_err(|_not_an_address| {
                self.source.error(
                    &text.span(),
                    Problem::BadListenAddress(text.get_ref().clone()),
                )
            })?,
            None => builtin.metrics_listen,
        };
        Ok(DaemonConfig {
            failure_detection_time,
            failback: raw
                .failback
                .or(defaults.failback)
                .unwrap_or(builtin.failback),
            track_interfaces_only_with_groups: raw
                .track_interfaces_only_with_groups
                .or(defaults.track_interfaces_only_with_groups)
                .unwrap_or(builtin.track_interfaces_only_with_groups),
            metrics_listen,
            socket: self.socket_path(raw.socket, builtin.socket)?,
            bpf_pin_dir: self.absolute_path("bpf_pin_dir", raw.bpf_pin_dir, builtin.bpf_pin_dir)?,
            route_table: self.number(raw.route_table, route_table, builtin.route_table)?,
            route_rule_priority: self.number(
                raw.route_rule_priority,
                route_rule_priority,
                builtin.route_rule_priority,
            )?,
            tc_attach: raw.tc_attach.unwrap_or(builtin.tc_attach),
            sources: raw.sources.unwrap_or(builtin.sources),
            probe_rx: raw.probe_rx.unwrap_or(builtin.probe_rx),
            carrier_hook: raw.carrier_hook.unwrap_or(builtin.carrier_hook),
            carrier_poll: match raw.carrier_poll_ms {
                Some(value) => carrier_poll(*value.get_ref())
                    .map_err(|p| self.source.error(&value.span(), p))?,
                None => builtin.carrier_poll,
            },
            isolate_arp: raw.isolate_arp.unwrap_or(builtin.isolate_arp),
        })
    }

    /// A number key checked by `check`, or `default` when the key is absent.
    fn number(
        &self,
        raw: Option<Spanned<i64>>,
        check: fn(i64) -> Result<u32, Problem>,
        default: u32,
    ) -> Result<u32, ConfigError> {
        match raw {
            Some(value) => check(*value.get_ref()).map_err(|p| self.source.error(&value.span(), p)),
            None => Ok(default),
        }
    }

    /// The daemon runs with `/` as its working directory, so a relative path is a mistake.
    fn absolute_path(
        &self,
        key: &'static str,
        raw: Option<Spanned<String>>,
        default: PathBuf,
    ) -> Result<PathBuf, ConfigError> {
        let Some(raw) = raw else {
            return Ok(default);
        };
        let path = PathBuf::from(raw.get_ref());
        if path.is_absolute() {
            Ok(path)
        } else {
            Err(self.source.error(
                &raw.span(),
                Problem::RelativePath {
                    key,
                    path: raw.into_inner(),
                },
            ))
        }
    }

    /// The control socket's path: absolute, and not something else than a socket, which
    /// mpathd would otherwise have to delete to bind there.
    fn socket_path(
        &self,
        raw: Option<Spanned<String>>,
        default: PathBuf,
    ) -> Result<PathBuf, ConfigError> {
        let span = raw.as_ref().map_or(0..0, Spanned::span);
        let path = self.absolute_path("socket", raw, default)?;
        let len = path.as_os_str().len();
        if len > MAX_SOCKET_PATH_LEN {
            return Err(self.source.error(
                &span,
                Problem::SocketPathTooLong {
                    path: path.display().to_string(),
                    len,
                    max: MAX_SOCKET_PATH_LEN,
                },
            ));
        }
        match socket_path_problem(&path) {
            Some(kind) => Err(self.source.error(
                &span,
                Problem::SocketPathTaken {
                    path: path.display().to_string(),
                    kind,
                },
            )),
            None => Ok(path),
        }
    }

    /// A group; `probe_rx` is the daemon's, for a group that does not name its own.
    fn group(
        &mut self,
        span: Range<usize>,
        raw: RawGroup,
        probe_rx: ProbeRx,
    ) -> Result<GroupConfig, ConfigError> {
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        if self.groups.len() >= MAX_GROUPS as usize {
            let problem = Problem::TooManyGroups { max: MAX_GROUPS };
            return Err(self.source.error(&name_span, problem));
        }
        if let Some(reason) = group_name_problem(&name) {
            return Err(self
                .source
                .error(&name_span, Problem::BadGroupName { name, reason }));
        }
        if let Some(&first_line) = self.groups.get(&name) {
            return Err(self
                .source
                .error(&name_span, Problem::DuplicateGroup { name, first_line }));
        }
        self.groups
            .insert(name.clone(), self.source.line(&name_span));

        let mut targets = Vec::with_capacity(raw.targets.len());
        for target in &raw.targets {
            let addr = self.target(target)?;
            if targets.contains(&addr) {
                return Err(self
                    .source
                    .error(&target.span(), Problem::DuplicateTarget(addr)));
            }
            targets.push(addr);
            self.targets.push((addr, target.span()));
        }

        if raw.interfaces.is_empty() {
            return Err(self.source.error(&span, Problem::EmptyGroup(name)));
        }
        let mut interfaces = Vec::with_capacity(raw.interfaces.len());
        for interface in raw.interfaces {
            interfaces.push(self.interface(&name, interface.into_inner())?);
        }
        if interfaces.iter().all(|interface| interface.standby) {
            return Err(self.source.error(&span, Problem::AllStandby(name)));
        }
        // The probers skip a target off the link; say so here, where `--check` sees it. A
        // warning, not a refusal: a file an older mpathd ran must still start this one.
        for (target, raw) in targets.iter().zip(&raw.targets) {
            let problem = match target {
                IpAddr::V6(v6) if !v6.is_unicast_link_local() => {
                    Some(Problem::Ipv6TargetNotLinkLocal(*target))
                }
                IpAddr::V6(_) => None,
                IpAddr::V4(_) => interfaces.iter().find_map(|interface| {
                    let test = IpCidr::from(interface.test_address?);
                    (!test.contains(*target)).then(|| Problem::TargetOffLink {
                        target: *target,
                        interface: interface.name.clone(),
                        test_address: test,
                    })
                }),
            };
            if let Some(problem) = problem {
                let located = self.source.error(&raw.span(), problem);
                self.warnings
                    .push(format!("{located}; the probers skip it"));
            }
        }
        let tested = interfaces
            .iter()
            .filter(|i| i.test_address.is_some())
            .count();
        if tested > mpath_common::MAX_TEST_ADDRESSES_PER_GROUP {
            let problem = Problem::TooManyTestAddresses {
                group: name,
                count: tested,
                max: mpath_common::MAX_TEST_ADDRESSES_PER_GROUP,
            };
            return Err(self.source.error(&span, problem));
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        for route in raw.routes {
            routes.push(self.route(&name, route.into_inner())?);
        }
        Ok(GroupConfig {
            name,
            targets,
            interfaces,
            spread: raw.spread,
            routes,
            probe_rx: raw.probe_rx.unwrap_or(probe_rx),
        })
    }

    fn route(&mut self, group: &str, raw: RawRoute) -> Result<RouteConfig, ConfigError> {
        let to_span = raw.to.span();
        // `None`: "default", whose family only `via` can tell.
        let to = match raw.to.get_ref().as_str() {
            "default" => None,
            _ => Some(self.route_destination(&raw.to)?),
        };
        let via = match &raw.via {
            Some(raw_via) => Some(self.via(raw_via)?),
            None => None,
        };
        let to = match (to, via) {
            (None, Some(via)) => {
                let any = match via {
                    IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                };
                IpCidr::new(any, 0).expect("/0 is valid for both families")
            }
            (Some(to), Some(via)) if to.addr().is_ipv4() != via.is_ipv4() => {
                let span = raw.via.as_ref().map_or(to_span.clone(), |v| v.span());
                return Err(self
                    .source
                    .error(&span, Problem::ViaFamilyMismatch { to, via }));
            }
            (Some(to), _) if via.is_some() || to.prefix_len() > 0 => to,
            // On-link means every destination is a neighbour on the group's link; for a
            // default route that is never true, so it needs a gateway.
            _ => {
                return Err(self.source.error(&to_span, Problem::DefaultRouteWithoutVia));
            }
        };
        let metric = match raw.metric {
            Some(metric) => u32::try_from(*metric.get_ref()).map_err(|_too_big| {
                self.source
                    .error(&metric.span(), Problem::BadRouteMetric(*metric.get_ref()))
            })?,
            None => 0,
        };
        if let Some(owner) = self.routes.get(&(to, metric)) {
            let problem = if owner.name == group {
                Problem::DuplicateRoute {
                    to,
                    metric,
                    group: group.to_string(),
                    first_line: owner.line,
                }
            } else {
                Problem::RouteInTwoGroups {
                    to,
                    metric,
                    other_group: owner.name.clone(),
                    first_line: owner.line,
                }
            };
            return Err(self.source.error(&to_span, problem));
        }
        self.routes.insert(
            (to, metric),
            Owner {
                name: group.to_string(),
                line: self.source.line(&to_span),
            },
        );
        if let (Some(via), Some(raw_via)) = (via, &raw.via) {
            self.vias.push((via, raw_via.span()));
        }
        self.destinations.push((to, to_span));
        Ok(RouteConfig { to, via, metric })
    }

    /// A network: the kernel refuses a destination with host bits set, and a typo such as
    /// `/24` for `/32` would route a whole subnet.
    fn route_destination(&self, raw: &Spanned<String>) -> Result<IpCidr, ConfigError> {
        let to: IpCidr = raw.get_ref().parse().map_err(|reason| {
            self.source.error(
                &raw.span(),
                Problem::BadRouteDestination {
                    value: raw.get_ref().clone(),
                    reason,
                },
            )
        })?;
        let network = to.network();
        if network != to {
            return Err(self
                .source
                .error(&raw.span(), Problem::RouteHostBits { to, network }));
        }
        Ok(to)
    }

    fn via(&self, raw: &Spanned<String>) -> Result<IpAddr, ConfigError> {
        let via: IpAddr = raw.get_ref().parse().map_err(|_not_an_address| {
            self.source.error(
                &raw.span(),
                Problem::BadVia {
                    value: raw.get_ref().clone(),
                },
            )
        })?;
        match unusable_address(via) {
            Some(why) => Err(self.source.error(
                &raw.span(),
                Problem::UnusableVia {
                    via,
                    why: why.to_string(),
                },
            )),
            None => Ok(via),
        }
    }

    /// A gateway is a neighbour: one of our own addresses, or the network or broadcast
    /// address of a subnet we are on, forwards nowhere.
    fn via_not_local(&self, via: IpAddr, span: &Range<usize>) -> Result<(), ConfigError> {
        let owner = self
            .test_addresses
            .get(&via)
            .or_else(|| self.data_addresses.get(&via));
        if let Some(owner) = owner {
            return Err(self.source.error(
                span,
                Problem::ViaIsLocal {
                    via,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        for data in &self.data_subnets {
            let Ok(as_host) = IpCidr::new(via, data.prefix_len()) else {
                continue; // an IPv4 gateway and an IPv6 subnet
            };
            if data.addr().is_ipv4() != via.is_ipv4() || as_host.network() != data.network() {
                continue;
            }
            if let Some(role) = subnet_role(as_host) {
                return Err(self.source.error(
                    span,
                    Problem::ViaIsSubnetAddress {
                        via,
                        role,
                        addr: *data,
                    },
                ));
            }
        }
        Ok(())
    }

    /// A host route to one of our own addresses is never used: the kernel's local table,
    /// consulted first, answers for them.
    fn destination_not_local(&self, to: IpCidr, span: &Range<usize>) -> Result<(), ConfigError> {
        if to != to.host() {
            return Ok(());
        }
        let owner = self
            .test_addresses
            .get(&to.addr())
            .or_else(|| self.data_addresses.get(&to.addr()));
        match owner {
            Some(owner) => Err(self.source.error(
                span,
                Problem::RouteToLocalAddress {
                    to,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            )),
            None => Ok(()),
        }
    }

    fn target(&self, raw: &Spanned<String>) -> Result<IpAddr, ConfigError> {
        let addr: IpAddr = raw.get_ref().parse().map_err(|_not_an_address| {
            self.source.error(
                &raw.span(),
                Problem::BadTarget {
                    value: raw.get_ref().clone(),
                },
            )
        })?;
        match unusable_address(addr) {
            Some(why) => Err(self.source.error(
                &raw.span(),
                Problem::UnusableAddress {
                    addr: addr.to_string(),
                    why: why.to_string(),
                },
            )),
            None => Ok(addr),
        }
    }

    /// Probing one of our own addresses would test nothing but the local stack.
    fn target_not_local(&self, target: IpAddr, span: &Range<usize>) -> Result<(), ConfigError> {
        let owner = self
            .test_addresses
            .get(&target)
            .or_else(|| self.data_addresses.get(&target));
        match owner {
            Some(owner) => Err(self.source.error(
                span,
                Problem::TargetIsLocal {
                    target,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            )),
            None => Ok(()),
        }
    }

    fn interface(
        &mut self,
        group: &str,
        raw: RawInterface,
    ) -> Result<InterfaceConfig, ConfigError> {
        let name_span = raw.name.span();
        let name = raw.name.into_inner();
        if let Some(reason) = interface_name_problem(&name) {
            return Err(self
                .source
                .error(&name_span, Problem::BadInterfaceName { name, reason }));
        }
        if self.interfaces.len() >= MAX_NICS as usize {
            let problem = Problem::TooManyInterfaces { max: MAX_NICS };
            return Err(self.source.error(&name_span, problem));
        }
        if let Some(owner) = self.interfaces.get(&name) {
            let problem = if owner.name == group {
                Problem::DuplicateInterface {
                    name,
                    group: group.to_string(),
                    first_line: owner.line,
                }
            } else {
                Problem::InterfaceInTwoGroups {
                    name,
                    other_group: owner.name.clone(),
                    first_line: owner.line,
                }
            };
            return Err(self.source.error(&name_span, problem));
        }
        self.interfaces.insert(
            name.clone(),
            Owner {
                name: group.to_string(),
                line: self.source.line(&name_span),
            },
        );

        let test_address = match raw.test_address {
            Some(raw_test) => Some(self.test_address(&name, &raw_test)?),
            None => None,
        };
        let mut data_addresses = Vec::with_capacity(raw.data_addresses.len());
        for raw_data in &raw.data_addresses {
            data_addresses.push(self.data_address(&name, raw.standby, raw_data)?);
        }
        Ok(InterfaceConfig {
            name,
            test_address,
            data_addresses,
            standby: raw.standby,
        })
    }

    fn test_address(
        &mut self,
        interface: &str,
        raw: &Spanned<String>,
    ) -> Result<Ipv4Cidr, ConfigError> {
        let span = raw.span();
        let cidr = self.host_cidr(raw)?;
        let IpAddr::V4(addr) = cidr.addr() else {
            return Err(self.source.error(&span, Problem::Ipv6TestAddress(cidr)));
        };
        if let Some(owner) = self.test_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::DuplicateTestAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        if let Some(owner) = self.data_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::TestAddressIsDataAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        self.test_addresses.insert(
            cidr.addr(),
            Owner {
                name: interface.to_string(),
                line: self.source.line(&span),
            },
        );
        Ok(Ipv4Cidr::new(addr, cidr.prefix_len()).expect("IpCidr checked the prefix length"))
    }

    fn data_address(
        &mut self,
        interface: &str,
        standby: bool,
        raw: &Spanned<String>,
    ) -> Result<IpCidr, ConfigError> {
        let span = raw.span();
        let cidr = self.host_cidr(raw)?;
        if is_ipv6_link_local(cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::UnusableAddress {
                    addr: cidr.to_string(),
                    why: "an IPv6 link-local address, which belongs to one link and cannot fail \
                          over"
                        .to_string(),
                },
            ));
        }
        if let Some(owner) = self.data_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::DuplicateDataAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        if let Some(owner) = self.test_addresses.get(&cidr.addr()) {
            return Err(self.source.error(
                &span,
                Problem::DataAddressIsTestAddress {
                    addr: cidr,
                    interface: owner.name.clone(),
                    line: owner.line,
                },
            ));
        }
        if standby {
            return Err(self.source.error(
                &span,
                Problem::DataAddressOnStandby {
                    addr: cidr,
                    interface: interface.to_string(),
                },
            ));
        }
        self.data_subnets.push(cidr);
        self.data_addresses.insert(
            cidr.addr(),
            Owner {
                name: interface.to_string(),
                line: self.source.line(&span),
            },
        );
        Ok(cidr)
    }

    /// Parses an interface address and refuses ones no host can own.
    fn host_cidr(&self, raw: &Spanned<String>) -> Result<IpCidr, ConfigError> {
        let cidr: IpCidr = raw.get_ref().parse().map_err(|reason| {
            self.source.error(
                &raw.span(),
                Problem::BadAddress {
                    value: raw.get_ref().clone(),
                    reason,
                },
            )
        })?;
        match unusable_address(cidr.addr())
            .map(str::to_string)
            .or_else(|| subnet_role(cidr))
        {
            Some(why) => Err(self.source.error(
                &raw.span(),
                Problem::UnusableAddress {
                    addr: cidr.to_string(),
                    why,
                },
            )),
            None => Ok(cidr),
        }
    }
}

pub(super) fn group_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.chars().count() > MAX_GROUP_NAME_LEN {
        Some("it is longer than 31 characters")
    } else if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        Some("only letters, digits, '_', '.' and '-' are allowed")
    } else {
        None
    }
}

/// The rules of the kernel's `dev_valid_name`, so a name that passes can exist on Linux.
pub(super) fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_INTERFACE_NAME_LEN {
        Some("Linux interface names are at most 15 bytes")
    } else if name == "." || name == ".." {
        Some("\".\" and \"..\" are not interface names")
    } else if name.contains('/') {
        Some("'/' is not allowed in an interface name")
    } else if name.contains(':') {
        Some("':' is not allowed: Linux has no logical interfaces such as h0:1")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("whitespace and control characters are not allowed in an interface name")
    } else if name.chars().any(is_bidi_control) {
        Some("bidirectional text controls are not allowed: they make a name print as another")
    } else {
        None
    }
}

/// Unicode's bidirectional formatting characters (marks, embeddings, overrides, isolates).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// What is at a control socket path that mpathd could not bind to without deleting
/// something that is not a socket.
pub(crate) fn socket_path_problem(path: &Path) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt as _;
    let kind = std::fs::symlink_metadata(path).ok()?.file_type();
    if kind.is_socket() {
        None
    } else if kind.is_dir() {
        Some("directory")
    } else if kind.is_symlink() {
        Some("symbolic link")
    } else if kind.is_file() {
        Some("regular file")
    } else {
        Some("special file")
    }
}

/// Addresses that can be neither a probe target nor an interface address.
fn unusable_address(addr: IpAddr) -> Option<&'static str> {
    if addr.is_unspecified() {
        Some("the unspecified address")
    } else if addr.is_multicast() {
        Some("a multicast address")
    } else if addr.is_loopback() {
        Some("a loopback address")
    } else if addr == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the limited broadcast address")
    } else if matches!(addr, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) {
        // The kernel would add it as an IPv6 address that no IPv4 peer can reach.
        Some(
            "an IPv4-mapped IPv6 address (::ffff:0:0/96), which stands for an IPv4 address \
             in IPv6 sockets and is never a NIC's; write the IPv4 address",
        )
    } else {
        None
    }
}

/// An IPv4 address that is its subnet's network or broadcast address (prefixes up to /30).
fn subnet_role(cidr: IpCidr) -> Option<String> {
    let IpAddr::V4(addr) = cidr.addr() else {
        return None;
    };
    if cidr.prefix_len() > 30 {
        return None;
    }
    let host_mask = u32::MAX >> cidr.prefix_len();
    let bits = u32::from(addr);
    let network = Ipv4Addr::from(bits & !host_mask);
    if bits & host_mask == 0 {
        Some(format!(
            "the network address of {network}/{}",
            cidr.prefix_len()
        ))
    } else if bits & host_mask == host_mask {
        Some(format!(
            "the broadcast address of {network}/{}",
            cidr.prefix_len()
        ))
    } else {
        None
    }
}

fn is_ipv6_link_local(addr: IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.is_unicast_link_local())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::Config;
    use crate::config::error::Problem;
    use crate::config::testing::*;
    use crate::net::address::CidrError;

    #[test]
    fn failure_detection_time_bounds() {
        let (line, column, problem, message) =
            refusal("\n[daemon]\nfailure_detection_time_ms = 99\n");
        assert_eq!((line, column), (3, 29));
        assert_eq!(problem, Problem::FailureDetectionTimeTooSmall(99));
        assert!(message.contains("minimum of 100 ms"), "{message}");

        let (_, _, problem, _) = refusal("[daemon]\nfailure_detection_time_ms = -5\n");
        assert_eq!(problem, Problem::FailureDetectionTimeTooSmall(-5));
        let (_, _, problem, _) = refusal("[daemon]\nfailure_detection_time_ms = 2147483648\n");
        assert_eq!(
            problem,
            Problem::FailureDetectionTimeTooLarge(2_147_483_648)
        );

        let config = parse("[daemon]\nfailure_detection_time_ms = 100\n").unwrap();
        assert_eq!(
            config.daemon.failure_detection_time,
            Duration::from_millis(100)
        );
    }

    #[test]
    fn bad_daemon_values() {
        let (line, _, problem, _) = refusal("[daemon]\nmetrics_listen = \"localhost:9798\"\n");
        assert_eq!(line, 2);
        assert_eq!(problem, Problem::BadListenAddress("localhost:9798".into()));
        let (line, _, problem, _) = refusal("[daemon]\n\nsocket = \"run/mpathd.sock\"\n");
        assert_eq!(line, 3);
        assert!(matches!(
            problem,
            Problem::RelativePath { key: "socket", .. }
        ));
        let (line, _, problem, _) = refusal("[daemon]\nbpf_pin_dir = \"\"\n");
        assert_eq!(line, 2);
        assert!(matches!(
            problem,
            Problem::RelativePath {
                key: "bpf_pin_dir",
                ..
            }
        ));
    }

    #[test]
    fn non_loopback_metrics_address_is_kept_when_written() {
        let config = parse("[daemon]\nmetrics_listen = \"192.0.2.5:9798\"\n").unwrap();
        assert_eq!(
            config.daemon.metrics_listen,
            "192.0.2.5:9798".parse().unwrap()
        );
    }

    #[test]
    fn bad_group_names() {
        for (name, reason_part) in [
            ("", "empty"),
            ("g 0", "only letters"),
            ("g/0", "only letters"),
            ("abcdefghijabcdefghijabcdefghij12", "31 characters"),
        ] {
            let text = format!("[[group]]\n\nname = \"{name}\"\n");
            let (line, column, problem, message) = refusal(&text);
            assert_eq!((line, column), (3, 8), "{name:?}");
            assert!(
                matches!(problem, Problem::BadGroupName { .. }),
                "{problem:?}"
            );
            assert!(message.contains(reason_part), "{message}");
        }
        let longest = "abcdefghijabcdefghijabcdefghij1";
        let config = parse(&format!(
            "[[group]]\nname = \"{longest}\"\n[[group.interface]]\nname = \"h0\"\n"
        ))
        .unwrap();
        assert_eq!(config.groups[0].name, longest);
    }

    #[test]
    fn duplicate_group() {
        let text = with_group("[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h1\"\n");
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 9);
        assert_eq!(
            problem,
            Problem::DuplicateGroup {
                name: "g0".into(),
                first_line: 2
            }
        );
    }

    #[test]
    fn group_without_interface() {
        let text = with_group("[[group]]\nname = \"g1\"\ntargets = [\"192.0.2.1\"]\n");
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (8, 1));
        assert_eq!(problem, Problem::EmptyGroup("g1".into()));
    }

    #[test]
    fn group_of_only_standbys() {
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\nstandby = true\n\
                    [[group.interface]]\nname = \"h1\"\nstandby = true\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 1);
        assert_eq!(problem, Problem::AllStandby("g0".into()));
    }

    #[test]
    fn bad_interface_names() {
        for (name, reason_part) in [
            ("", "empty"),
            ("abcdefghijklmnop", "15 bytes"),
            (".", "\".\""),
            ("..", "\".\""),
            ("h/0", "'/'"),
            ("h0:1", "logical"),
            ("h 0", "whitespace"),
            ("h\\t0", "whitespace"),
            ("h\\u00000", "control"),
            ("h0\\u202e1h", "bidirectional"),
            ("\\u2067h0", "bidirectional"),
            ("h\\u200f0", "bidirectional"),
        ] {
            let text = with_group(&format!("[[group.interface]]\nname = \"{name}\"\n"));
            let (line, column, problem, message) = refusal(&text);
            assert_eq!((line, column), (9, 8), "{name:?}");
            assert!(
                matches!(problem, Problem::BadInterfaceName { .. }),
                "{problem:?}"
            );
            assert!(message.contains(reason_part), "{name:?}: {message}");
        }
        for name in [
            "abcdefghijklmno",
            "eth0.100",
            "enp0s31f6",
            "br-lan_1",
            "wlö0",
        ] {
            let text = with_group(&format!("[[group.interface]]\nname = \"{name}\"\n"));
            parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn interface_twice_in_one_group() {
        let text = with_group("[[group.interface]]\nname = \"h0\"\n");
        let (line, _, problem, message) = refusal(&text);
        assert_eq!(line, 9);
        assert_eq!(
            problem,
            Problem::DuplicateInterface {
                name: "h0".into(),
                group: "g0".into(),
                first_line: 5
            }
        );
        assert!(message.contains("listed twice in group g0"), "{message}");
    }

    #[test]
    fn interface_in_two_groups() {
        let text = with_group(
            "[[group]]\nname = \"g1\"\n\n[[group.interface]]\nname = \"h1\"\n\
             [[group.interface]]\nname = \"h0\"\n",
        );
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (14, 8));
        assert_eq!(
            problem,
            Problem::InterfaceInTwoGroups {
                name: "h0".into(),
                other_group: "g0".into(),
                first_line: 5
            }
        );
    }

    #[test]
    fn bad_addresses_and_prefix_lengths() {
        for (value, expected) in [
            (
                "192.0.2.300/24",
                CidrError::BadAddress("192.0.2.300".into()),
            ),
            ("h0.example/24", CidrError::BadAddress("h0.example".into())),
            ("192.0.2.19", CidrError::MissingPrefixLen),
            (
                "192.0.2.19/33",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "33".into(),
                    max: 32,
                },
            ),
            (
                "2001:db8::19/129",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "129".into(),
                    max: 128,
                },
            ),
            (
                "192.0.2.19/",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "".into(),
                    max: 32,
                },
            ),
            (
                "192.0.2.19/+24",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "+24".into(),
                    max: 32,
                },
            ),
            (
                "192.0.2.19/999999",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "999999".into(),
                    max: 32,
                },
            ),
        ] {
            let text = with_group(&format!(
                "[[group.interface]]\nname = \"h1\"\n\ndata_addresses = [\"192.0.2.40/24\", \"{value}\"]\n"
            ));
            let (line, column, problem, _) = refusal(&text);
            assert_eq!((line, column), (11, 36), "{value}");
            assert_eq!(
                problem,
                Problem::BadAddress {
                    value: value.into(),
                    reason: expected
                }
            );
        }
    }

    #[test]
    fn bad_test_address_and_target() {
        let text =
            with_group("[[group.interface]]\nname = \"h1\"\ntest_address = \"192.0.2.x/24\"\n");
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (10, 16));
        assert!(matches!(problem, Problem::BadAddress { .. }), "{problem:?}");

        let text = "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"router\"]\n";
        let (line, column, problem, _) = refusal(text);
        assert_eq!((line, column), (3, 25));
        assert_eq!(
            problem,
            Problem::BadTarget {
                value: "router".into()
            }
        );
    }

    #[test]
    fn unusable_addresses() {
        for (value, why) in [
            ("0.0.0.0/24", "unspecified"),
            ("224.0.0.1/24", "multicast"),
            ("127.0.0.2/8", "loopback"),
            ("::1/128", "loopback"),
            ("192.0.2.0/24", "network address of 192.0.2.0/24"),
            ("192.0.2.255/24", "broadcast address of 192.0.2.0/24"),
            ("fe80::19/64", "link-local"),
        ] {
            let text = with_group(&format!(
                "[[group.interface]]\nname = \"h1\"\ndata_addresses = [\"{value}\"]\n"
            ));
            let (line, _, problem, message) = refusal(&text);
            assert_eq!(line, 10, "{value}");
            assert!(
                matches!(problem, Problem::UnusableAddress { .. }),
                "{problem:?}"
            );
            assert!(message.contains(why), "{message}");
        }
        // /31 and /32 have no network or broadcast address.
        for value in ["192.0.2.0/31", "192.0.2.255/32"] {
            let text = with_group(&format!(
                "[[group.interface]]\nname = \"h1\"\ndata_addresses = [\"{value}\"]\n"
            ));
            parse(&text).unwrap_or_else(|e| panic!("{value}: {e}"));
        }
        let (line, _, problem, _) = refusal("[[group]]\nname = \"g0\"\ntargets = [\"ff02::1\"]\n");
        assert_eq!(line, 3);
        assert!(matches!(problem, Problem::UnusableAddress { .. }));
    }

    /// Issue 24, item 4: `--check` passed `::ffff:192.0.2.20`, which the kernel then added
    /// as an IPv6 address.
    #[test]
    fn ipv4_mapped_ipv6_addresses_are_refused_everywhere() {
        let data = with_group(
            "[[group.interface]]\nname = \"h1\"\ndata_addresses = [\"::ffff:192.0.2.20/120\"]\n",
        );
        let target = "[[group]]\nname = \"g0\"\ntargets = [\"::ffff:192.0.2.1\"]\n".to_string();
        let via = with_route("to = \"default\"\nvia = \"::ffff:192.0.2.1\"\n");
        for (text, line) in [(data, 10), (target, 3), (via, 10)] {
            let (at, _, problem, message) = refusal(&text);
            assert_eq!(at, line, "{text}");
            assert!(
                matches!(
                    problem,
                    Problem::UnusableAddress { .. } | Problem::UnusableVia { .. }
                ),
                "{problem:?}"
            );
            assert!(message.contains("IPv4-mapped"), "{message}");
            assert!(message.contains("write the IPv4 address"), "{message}");
        }
    }

    #[test]
    fn ipv6_test_address_is_refused_with_explanation() {
        let text =
            with_group("[[group.interface]]\nname = \"h1\"\ntest_address = \"2001:db8::21/64\"\n");
        let (line, _, problem, message) = refusal(&text);
        assert_eq!(line, 10);
        assert_eq!(problem, Problem::Ipv6TestAddress(cidr("2001:db8::21/64")));
        assert!(message.contains("link-local"), "{message}");
    }

    #[test]
    fn duplicate_target() {
        let text = "[[group]]\nname = \"g0\"\ntargets = [\n  \"192.0.2.1\",\n  \"fe80::1\",\n  \"192.0.2.1\",\n]\n";
        let (line, column, problem, _) = refusal(text);
        assert_eq!((line, column), (6, 3));
        assert_eq!(problem, Problem::DuplicateTarget(ip("192.0.2.1")));
    }

    #[test]
    fn targets_off_the_link_are_accepted_with_a_warning_naming_the_line() {
        let text = "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"198.51.100.10\", \"2001:db8::1\"]\n\
                    [[group.interface]]\nname = \"h0\"\ntest_address = \"192.0.2.21/24\"\n";
        let config = parse(text).unwrap();
        assert_eq!(config.groups[0].targets.len(), 3);
        assert_eq!(
            config.warnings,
            [
                "/etc/mpath/mpathd.toml:3:25: target 198.51.100.10 is outside the subnet of \
                 interface h0's test address 192.0.2.21/24: probes leave with TTL 1 and reach \
                 only hosts on the link; the probers skip it",
                "/etc/mpath/mpathd.toml:3:42: IPv6 target 2001:db8::1 is not link-local: IPv6 \
                 probes leave from each interface's link-local address, so their targets are \
                 on-link routers' link-local addresses (fe80::/10); the probers skip it",
            ]
        );
        // On the link of every test address, and a link-local IPv6 router: no warning.
        let text = "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"fe80::1\"]\n\
                    [[group.interface]]\nname = \"h0\"\ntest_address = \"192.0.2.21/24\"\n\
                    [[group.interface]]\nname = \"h1\"\n";
        assert_eq!(parse(text).unwrap().warnings, Vec::<String>::new());
    }

    #[test]
    fn target_that_is_a_local_address() {
        let text = "[[group]]\nname = \"g0\"\ntargets = [\"192.0.2.1\", \"192.0.2.21\"]\n\
                    [[group.interface]]\nname = \"h0\"\ntest_address = \"192.0.2.21/24\"\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 3);
        assert_eq!(
            problem,
            Problem::TargetIsLocal {
                target: ip("192.0.2.21"),
                interface: "h0".into(),
                line: 6
            }
        );
    }

    #[test]
    fn same_data_address_twice_anywhere() {
        // Same interface, and a different prefix length is still the same address.
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\n\
                    data_addresses = [\"192.0.2.19/24\",\n  \"192.0.2.19/25\"]\n";
        let (line, column, problem, _) = refusal(text);
        assert_eq!((line, column), (6, 3));
        assert_eq!(
            problem,
            Problem::DuplicateDataAddress {
                addr: cidr("192.0.2.19/25"),
                interface: "h0".into(),
                line: 5
            }
        );
        // Another group.
        let text = with_group(
            "[[group]]\nname = \"g1\"\n[[group.interface]]\nname = \"h5\"\n\
             data_addresses = [\"192.0.2.19/24\"]\n",
        );
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 12);
        assert_eq!(
            problem,
            Problem::DuplicateDataAddress {
                addr: cidr("192.0.2.19/24"),
                interface: "h0".into(),
                line: 6
            }
        );
    }

    #[test]
    fn data_address_equal_to_a_test_address() {
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\n\
                    test_address = \"192.0.2.21/24\"\n[[group.interface]]\nname = \"h1\"\n\
                    data_addresses = [\"192.0.2.21/24\"]\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 8);
        assert_eq!(
            problem,
            Problem::DataAddressIsTestAddress {
                addr: cidr("192.0.2.21/24"),
                interface: "h0".into(),
                line: 5
            }
        );
        // The other order is refused at the test address.
        let text =
            with_group("[[group.interface]]\nname = \"h1\"\ntest_address = \"192.0.2.19/24\"\n");
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 10);
        assert_eq!(
            problem,
            Problem::TestAddressIsDataAddress {
                addr: cidr("192.0.2.19/24"),
                interface: "h0".into(),
                line: 6
            }
        );
    }

    #[test]
    fn same_test_address_on_two_interfaces() {
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\n\
                    test_address = \"192.0.2.21/24\"\n[[group.interface]]\nname = \"h1\"\n\
                    test_address = \"192.0.2.21/24\"\n";
        let (line, _, problem, _) = refusal(text);
        assert_eq!(line, 8);
        assert_eq!(
            problem,
            Problem::DuplicateTestAddress {
                addr: cidr("192.0.2.21/24"),
                interface: "h0".into(),
                line: 5
            }
        );
    }

    #[test]
    fn data_address_on_standby() {
        let text = with_group(
            "[[group.interface]]\nname = \"h2\"\nstandby = true\ntest_address = \"192.0.2.23/24\"\n\
             data_addresses = [\"2001:db8::20/64\"]\n",
        );
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (12, 19));
        assert_eq!(
            problem,
            Problem::DataAddressOnStandby {
                addr: cidr("2001:db8::20/64"),
                interface: "h2".into()
            }
        );
    }

    #[test]
    fn more_test_addresses_than_the_datapath_keeps_are_refused() {
        let mut text = String::from("[[group]]\nname = \"big\"\n");
        for i in 0..17 {
            text.push_str(&format!(
                "[[group.interface]]\nname = \"h{i}\"\ntest_address = \"192.0.2.{}/24\"\n",
                100 + i
            ));
        }
        let error = Config::parse(&text, "big.toml", None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "big.toml:1:1: group big has 17 interfaces with test addresses; the datapath keeps \
             at most 16 per group"
        );
        let sixteen = text[..text.rfind("[[group.interface]]").unwrap()].to_string();
        assert!(Config::parse(&sixteen, "ok.toml", None).is_ok());
    }

    #[test]
    fn more_groups_or_interfaces_than_the_datapath_holds_are_refused() {
        let groups = |count: usize| {
            (0..count)
                .map(|g| {
                    format!("[[group]]\nname = \"g{g}\"\n[[group.interface]]\nname = \"h{g}\"\n")
                })
                .collect::<String>()
        };
        assert!(parse(&groups(64)).is_ok());
        let (line, column, problem, message) = refusal(&groups(65));
        assert_eq!((line, column), (64 * 4 + 2, 8));
        assert_eq!(problem, Problem::TooManyGroups { max: 64 });
        assert_eq!(
            message,
            "/etc/mpath/mpathd.toml:258:8: more than 64 groups; the datapath holds at most 64"
        );

        let interfaces = |count: usize| {
            let mut text = String::from("[[group]]\nname = \"big\"\n");
            for i in 0..count {
                text.push_str(&format!("[[group.interface]]\nname = \"h{i}\"\n"));
            }
            text
        };
        assert!(parse(&interfaces(256)).is_ok());
        let (line, _, problem, _) = refusal(&interfaces(257));
        assert_eq!(line, 2 + 256 * 2 + 2);
        assert_eq!(problem, Problem::TooManyInterfaces { max: 256 });
    }

    #[test]
    fn a_socket_path_taken_by_something_else_is_refused() {
        let dir = std::env::temp_dir().join(format!("mpath-validate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("file");
        std::fs::write(&file, "").unwrap();
        for (path, kind) in [(&file, "regular file"), (&dir, "directory")] {
            let text = format!("[daemon]\nsocket = \"{}\"\n", path.display());
            let (line, _, problem, _) = refusal(&text);
            assert_eq!(line, 2);
            assert_eq!(
                problem,
                Problem::SocketPathTaken {
                    path: path.display().to_string(),
                    kind
                }
            );
        }
        let absent = format!("[daemon]\nsocket = \"{}\"\n", dir.join("absent").display());
        assert!(parse(&absent).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Issue 24, item 4: `--check` passed a socket path `bind` cannot take.
    #[test]
    fn a_socket_path_longer_than_a_unix_socket_holds_is_refused() {
        let fits = format!("/run/{}", "s".repeat(102));
        assert_eq!(fits.len(), 107);
        parse(&format!("[daemon]\nsocket = \"{fits}\"\n")).unwrap();
        let long = format!("{fits}x");
        let (line, column, problem, message) = refusal(&format!("[daemon]\nsocket = \"{long}\"\n"));
        assert_eq!((line, column), (2, 10));
        assert_eq!(
            problem,
            Problem::SocketPathTooLong {
                path: long,
                len: 108,
                max: 107
            }
        );
        assert!(message.contains("108 bytes long"), "{message}");
    }

    // --- group routes and mpathd's routing table ---

    use crate::config::{RouteConfig, SpreadMode};

    /// `with_group` plus one `[[group.route]]` of g0: `to` is on line 9, column 6, `via` on
    /// line 10, column 7, and `metric` follows.
    fn with_route(body: &str) -> String {
        with_group(&format!("[[group.route]]\n{body}"))
    }

    fn routes_of(text: &str) -> Vec<RouteConfig> {
        let config = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        config.groups[0].routes.clone()
    }

    fn route(to: &str, via: Option<&str>, metric: u32) -> RouteConfig {
        RouteConfig {
            to: cidr(to),
            via: via.map(ip),
            metric,
        }
    }

    #[test]
    fn route_table_refuses_the_kernel_tables() {
        for (value, reason_part) in [
            ("0", "RT_TABLE_UNSPEC"),
            ("253", "default table"),
            ("254", "main table"),
            ("255", "local table"),
            ("-1", "1 to 4294967295"),
            ("4294967296", "1 to 4294967295"),
        ] {
            let (line, column, problem, message) =
                refusal(&format!("[daemon]\nroute_table = {value}\n"));
            assert_eq!((line, column), (2, 15), "{value}");
            let Problem::BadRouteTable { value: got, .. } = problem else {
                panic!("{value}: {problem:?}");
            };
            assert_eq!(got.to_string(), value);
            assert!(message.contains(reason_part), "{message}");
            assert!(
                message.contains(&format!("route_table {value} cannot be mpathd's table")),
                "{message}"
            );
        }
        for value in [1, 252, 256, 28016, u32::MAX] {
            let config = parse(&format!("[daemon]\nroute_table = {value}\n")).unwrap();
            assert_eq!(config.daemon.route_table, value);
        }
        let (_, _, problem, _) = refusal("[daemon]\nroute_table = \"main\"\n");
        assert!(matches!(problem, Problem::Toml(m) if m.contains("invalid type")));
    }

    #[test]
    fn route_rule_priority_must_come_before_main() {
        for value in ["0", "32766", "32767", "-1", "4294967296"] {
            let (line, column, problem, message) =
                refusal(&format!("[daemon]\n\nroute_rule_priority = {value}\n"));
            assert_eq!((line, column), (3, 23), "{value}");
            assert_eq!(
                problem,
                Problem::BadRouteRulePriority(value.parse().unwrap())
            );
            assert!(message.contains("main rule (32766)"), "{message}");
        }
        for value in [1, 100, 32765] {
            let config = parse(&format!("[daemon]\nroute_rule_priority = {value}\n")).unwrap();
            assert_eq!(config.daemon.route_rule_priority, value);
        }
    }

    #[test]
    fn spread_modes() {
        assert_eq!(
            parse(&with_group("")).unwrap().groups[0].spread,
            SpreadMode::Routes
        );
        for mode in SpreadMode::ALL {
            let text = format!(
                "[[group]]\nname = \"g0\"\nspread = \"{mode}\"\n[[group.interface]]\nname = \"h0\"\n"
            );
            assert_eq!(parse(&text).unwrap().groups[0].spread, mode, "{text}");
        }
        for value in ["kernel", "Routes", ""] {
            let text = format!("[[group]]\nname = \"g0\"\nspread = \"{value}\"\n");
            let (line, column, problem, _) = refusal(&text);
            assert_eq!((line, column), (3, 10), "{value}");
            assert!(
                matches!(&problem, Problem::Toml(m) if m.contains("unknown variant")),
                "{problem:?}"
            );
        }
    }

    #[test]
    fn accepted_routes() {
        for (body, expected) in [
            (
                "to = \"default\"\nvia = \"192.0.2.1\"\n",
                route("0.0.0.0/0", Some("192.0.2.1"), 0),
            ),
            (
                "to = \"default\"\nvia = \"2001:db8::1\"\nmetric = 100\n",
                route("::/0", Some("2001:db8::1"), 100),
            ),
            // A router's link-local address is the usual IPv6 gateway.
            (
                "to = \"default\"\nvia = \"fe80::1\"\n",
                route("::/0", Some("fe80::1"), 0),
            ),
            (
                "to = \"0.0.0.0/0\"\nvia = \"192.0.2.1\"\n",
                route("0.0.0.0/0", Some("192.0.2.1"), 0),
            ),
            (
                "to = \"198.51.100.0/24\"\nvia = \"192.0.2.1\"\nmetric = 4294967295\n",
                route("198.51.100.0/24", Some("192.0.2.1"), u32::MAX),
            ),
            // On-link through the group's NICs.
            (
                "to = \"198.51.100.0/24\"\n",
                route("198.51.100.0/24", None, 0),
            ),
            (
                "to = \"2001:db8:1::/48\"\nmetric = 7\n",
                route("2001:db8:1::/48", None, 7),
            ),
            (
                "to = \"203.0.113.7/32\"\nvia = \"192.0.2.1\"\n",
                route("203.0.113.7/32", Some("192.0.2.1"), 0),
            ),
            (
                "to = \"2001:db8:2::7/128\"\nvia = \"2001:db8::1\"\n",
                route("2001:db8:2::7/128", Some("2001:db8::1"), 0),
            ),
        ] {
            assert_eq!(routes_of(&with_route(body)), vec![expected], "{body}");
        }
        // A route is named by destination and metric: another metric is another route.
        let text = with_route(
            "to = \"default\"\nvia = \"192.0.2.1\"\n[[group.route]]\nto = \"default\"\n\
             via = \"192.0.2.2\"\nmetric = 10\n[[group.route]]\nto = \"default\"\n\
             via = \"2001:db8::1\"\n",
        );
        assert_eq!(
            routes_of(&text),
            vec![
                route("0.0.0.0/0", Some("192.0.2.1"), 0),
                route("0.0.0.0/0", Some("192.0.2.2"), 10),
                route("::/0", Some("2001:db8::1"), 0),
            ]
        );
        // Only the subnet of a data address rules out its network and broadcast address.
        let text = "[[group]]\nname = \"g0\"\n[[group.interface]]\nname = \"h0\"\n\
                    data_addresses = [\"192.0.2.19/25\"]\n[[group.route]]\nto = \"default\"\n\
                    via = \"192.0.2.255\"\n";
        assert_eq!(
            routes_of(text),
            vec![route("0.0.0.0/0", Some("192.0.2.255"), 0)]
        );
        // The same destination in two groups, at different metrics.
        let text = with_route(
            "to = \"198.51.100.0/24\"\n[[group]]\nname = \"g1\"\n[[group.interface]]\n\
             name = \"h5\"\n[[group.route]]\nto = \"198.51.100.0/24\"\nmetric = 1\n",
        );
        let config = parse(&text).unwrap();
        assert_eq!(
            config.groups[1].routes,
            vec![route("198.51.100.0/24", None, 1)]
        );
        assert!(parse(&with_group("")).unwrap().groups[0].routes.is_empty());
    }

    #[test]
    fn route_destination_must_be_a_network() {
        let (line, column, problem, message) = refusal(&with_route("to = \"198.51.100.7/24\"\n"));
        assert_eq!((line, column), (9, 6));
        assert_eq!(
            problem,
            Problem::RouteHostBits {
                to: cidr("198.51.100.7/24"),
                network: cidr("198.51.100.0/24")
            }
        );
        assert!(
            message.ends_with("198.51.100.7/24 has host bits set; did you mean 198.51.100.0/24?"),
            "{message}"
        );
        let (_, _, problem, _) =
            refusal(&with_route("to = \"2001:db8::1/64\"\nvia = \"fe80::1\"\n"));
        assert_eq!(
            problem,
            Problem::RouteHostBits {
                to: cidr("2001:db8::1/64"),
                network: cidr("2001:db8::/64")
            }
        );
        for (value, reason) in [
            ("198.51.100.0", CidrError::MissingPrefixLen),
            ("gateway/24", CidrError::BadAddress("gateway".into())),
            ("Default", CidrError::MissingPrefixLen),
            (
                "198.51.100.0/33",
                CidrError::PrefixLenOutOfRange {
                    prefix_len: "33".into(),
                    max: 32,
                },
            ),
        ] {
            let (line, column, problem, message) =
                refusal(&with_route(&format!("to = \"{value}\"\n")));
            assert_eq!((line, column), (9, 6), "{value}");
            assert_eq!(
                problem,
                Problem::BadRouteDestination {
                    value: value.into(),
                    reason
                }
            );
            assert!(
                message.contains("\"default\" or NETWORK/LENGTH"),
                "{message}"
            );
        }
    }

    #[test]
    fn default_route_needs_a_via() {
        for to in ["default", "0.0.0.0/0", "::/0"] {
            let (line, column, problem, message) =
                refusal(&with_route(&format!("to = \"{to}\"\nmetric = 5\n")));
            assert_eq!((line, column), (9, 6), "{to}");
            assert_eq!(problem, Problem::DefaultRouteWithoutVia);
            assert!(message.contains("needs a via"), "{message}");
        }
    }

    #[test]
    fn bad_and_unusable_vias() {
        let (line, column, problem, _) =
            refusal(&with_route("to = \"default\"\nvia = \"router\"\n"));
        assert_eq!((line, column), (10, 7));
        assert_eq!(
            problem,
            Problem::BadVia {
                value: "router".into()
            }
        );
        for (via, why) in [
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("ff02::2", "multicast"),
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("255.255.255.255", "limited broadcast"),
        ] {
            let (line, column, problem, message) =
                refusal(&with_route(&format!("to = \"default\"\nvia = \"{via}\"\n")));
            assert_eq!((line, column), (10, 7), "{via}");
            assert!(
                matches!(&problem, Problem::UnusableVia { via: got, .. } if *got == ip(via)),
                "{problem:?}"
            );
            assert!(message.contains(why), "{message}");
        }
    }

    #[test]
    fn via_must_be_of_the_family_of_to() {
        for (to, via) in [
            ("198.51.100.0/24", "2001:db8::1"),
            ("198.51.100.0/24", "fe80::1"),
            ("2001:db8:1::/48", "192.0.2.1"),
        ] {
            let (line, column, problem, message) =
                refusal(&with_route(&format!("to = \"{to}\"\nvia = \"{via}\"\n")));
            assert_eq!((line, column), (10, 7), "{to} via {via}");
            let family = |a: &str| if a.contains(':') { "IPv6" } else { "IPv4" };
            assert!(
                message.ends_with(&format!(
                    "via {via} is {} but {to} is {}: a route's gateway is of its family",
                    family(via),
                    family(to)
                )),
                "{message}"
            );
            assert_eq!(
                problem,
                Problem::ViaFamilyMismatch {
                    to: cidr(to),
                    via: ip(via)
                }
            );
        }
    }

    #[test]
    fn via_that_is_a_local_address() {
        // A data address of the same group.
        let (line, column, problem, message) =
            refusal(&with_route("to = \"default\"\nvia = \"192.0.2.19\"\n"));
        assert_eq!((line, column), (10, 7));
        assert_eq!(
            problem,
            Problem::ViaIsLocal {
                via: ip("192.0.2.19"),
                interface: "h0".into(),
                line: 6
            }
        );
        assert!(message.contains("a gateway is another host"), "{message}");
        // A test address.
        let text = with_group(
            "[[group.interface]]\nname = \"h1\"\ntest_address = \"192.0.2.21/24\"\n\
             [[group.route]]\nto = \"default\"\nvia = \"192.0.2.21\"\n",
        );
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 13);
        assert_eq!(
            problem,
            Problem::ViaIsLocal {
                via: ip("192.0.2.21"),
                interface: "h1".into(),
                line: 10
            }
        );
        // A data address of a group further down the file.
        let text = with_route(
            "to = \"default\"\nvia = \"2001:db8::5\"\n[[group]]\nname = \"g1\"\n\
             [[group.interface]]\nname = \"h5\"\ndata_addresses = [\"2001:db8::5/64\"]\n",
        );
        let (line, _, problem, _) = refusal(&text);
        assert_eq!(line, 10);
        assert_eq!(
            problem,
            Problem::ViaIsLocal {
                via: ip("2001:db8::5"),
                interface: "h5".into(),
                line: 15
            }
        );
    }

    /// Issue 24, item 4: `--check` passed a host route to the group's own data address.
    #[test]
    fn a_host_route_to_a_local_address_is_refused() {
        {
            let to = "192.0.2.19/32";
            let text = with_route(&format!("to = \"{to}\"\nvia = \"192.0.2.1\"\n"));
            let (line, column, problem, message) = refusal(&text);
            assert_eq!((line, column), (9, 6), "{to}");
            assert_eq!(
                problem,
                Problem::RouteToLocalAddress {
                    to: cidr("192.0.2.19/32"),
                    interface: "h0".into(),
                    line: 6
                }
            );
            assert!(message.contains("would never be used"), "{message}");
        }
        // A test address of a group further down the file, on-link.
        let text = with_route(
            "to = \"192.0.2.30/32\"\n[[group]]\nname = \"g1\"\n\
             [[group.interface]]\nname = \"h5\"\ntest_address = \"192.0.2.30/24\"\n",
        );
        let (_, _, problem, _) = refusal(&text);
        assert!(
            matches!(&problem, Problem::RouteToLocalAddress { interface, .. } if interface == "h5"),
            "{problem:?}"
        );
        // The data address's subnet is a network, not the address: it stays allowed.
        routes_of(&with_route("to = \"192.0.2.0/24\"\n"));
    }

    #[test]
    fn via_that_is_the_network_or_broadcast_of_a_data_subnet() {
        for (via, role) in [
            ("192.0.2.0", "the network address of 192.0.2.0/24"),
            ("192.0.2.255", "the broadcast address of 192.0.2.0/24"),
        ] {
            let (line, column, problem, message) = refusal(&with_route(&format!(
                "to = \"198.51.100.0/24\"\nvia = \"{via}\"\n"
            )));
            assert_eq!((line, column), (10, 7), "{via}");
            assert_eq!(
                problem,
                Problem::ViaIsSubnetAddress {
                    via: ip(via),
                    role: role.into(),
                    addr: cidr("192.0.2.19/24"),
                }
            );
            assert!(
                message.contains("a gateway is a host of the subnet"),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_route_metrics() {
        for value in ["-1", "4294967296"] {
            let (line, column, problem, _) = refusal(&with_route(&format!(
                "to = \"198.51.100.0/24\"\n\nmetric = {value}\n"
            )));
            assert_eq!((line, column), (11, 10), "{value}");
            assert_eq!(problem, Problem::BadRouteMetric(value.parse().unwrap()));
        }
        let (_, _, problem, _) = refusal(&with_route("to = \"198.51.100.0/24\"\nmetric = \"5\"\n"));
        assert!(matches!(problem, Problem::Toml(m) if m.contains("invalid type")));
    }

    #[test]
    fn same_route_twice_in_a_group() {
        // Another via does not make another route; a written metric 0 is the default one.
        let text = with_route(
            "to = \"default\"\nvia = \"192.0.2.1\"\n[[group.route]]\nto = \"default\"\n\
             via = \"192.0.2.2\"\nmetric = 0\n",
        );
        let (line, column, problem, message) = refusal(&text);
        assert_eq!((line, column), (12, 6));
        assert_eq!(
            problem,
            Problem::DuplicateRoute {
                to: cidr("0.0.0.0/0"),
                metric: 0,
                group: "g0".into(),
                first_line: 9
            }
        );
        assert!(
            message.contains("configured twice in group g0"),
            "{message}"
        );
    }

    #[test]
    fn same_route_in_two_groups() {
        let text = with_route(
            "to = \"198.51.100.0/24\"\nmetric = 3\n[[group]]\nname = \"g1\"\n\
             [[group.interface]]\nname = \"h5\"\n[[group.route]]\nto = \"198.51.100.0/24\"\n\
             via = \"192.0.2.1\"\nmetric = 3\n",
        );
        let (line, column, problem, _) = refusal(&text);
        assert_eq!((line, column), (16, 6));
        assert_eq!(
            problem,
            Problem::RouteInTwoGroups {
                to: cidr("198.51.100.0/24"),
                metric: 3,
                other_group: "g0".into(),
                first_line: 9
            }
        );
    }

    #[test]
    fn route_table_keys_are_checked_by_the_parser() {
        for (body, part) in [
            (
                "to = \"default\"\ngateway = \"192.0.2.1\"\n",
                "unknown field",
            ),
            ("via = \"192.0.2.1\"\n", "missing field `to`"),
        ] {
            let (_, _, problem, _) = refusal(&with_route(body));
            assert!(
                matches!(&problem, Problem::Toml(m) if m.contains(part)),
                "{body}: {problem:?}"
            );
        }
    }
}
