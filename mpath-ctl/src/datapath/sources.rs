//! The source hook in the kernel (see `mpath_common::sources` and [`crate::core::sources`]):
//! its maps, and its four programs attached to a cgroup through links pinned as
//! `links/source-{connect,sendmsg}{4,6}`, so that the hook outlives mpathd like the rest of
//! the datapath.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    Pod,
    maps::{Array, Map, MapData, MapError, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
    sys::SyscallError,
};
use mpath_common::{
    MAX_GROUPS, map_names, program_names,
    sources::{MAX_SOURCE_ROUTES, SourceClass, SourceCounters, SourceRoute, SourceSet, set_index},
};

use super::{
    Datapath, DatapathError, detach_pinned_link,
    maps::{MapsError, typed},
    pin,
};
use crate::{core::sources, net::address::IpCidr};

/// The hook's programs, each with the name of its link's pin.
const HOOKS: [(&str, &str); 4] = [
    (program_names::SOURCE_CONNECT6, "source-connect6"),
    (program_names::SOURCE_SENDMSG6, "source-sendmsg6"),
    (program_names::SOURCE_CONNECT4, "source-connect4"),
    (program_names::SOURCE_SENDMSG4, "source-sendmsg4"),
];

/// The hook's maps.
pub struct SourceMaps {
    routes: RouteMap<[u8; 16]>,
    routes4: RouteMap<[u8; 4]>,
    sets: Array<MapData, SourceSet>,
    counters: PerCpuArray<MapData, SourceCounters>,
}

/// How much of mpathd's table one route map serves, after a rewrite.
#[derive(Debug)]
pub struct Served {
    pub map: &'static str,
    /// The map's `max_entries`.
    pub limit: u32,
    /// Prefixes of the table of the map's family.
    pub wanted: usize,
    /// Those the map holds as the table has them; the kernel picks the sources for the
    /// destinations of the rest.
    pub served: usize,
    /// Why some are left to the kernel: ENOSPC past the limit, else what the kernel answered.
    pub error: Option<io::Error>,
}

/// The key bytes of one family's route map.
trait Octets: Pod {
    fn of(addr: IpAddr) -> Option<Self>;
    fn addr(self) -> IpAddr;
}

impl Octets for [u8; 16] {
    fn of(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V6(a) => Some(a.octets()),
            IpAddr::V4(_) => None,
        }
    }

    fn addr(self) -> IpAddr {
        IpAddr::V6(Ipv6Addr::from(self))
    }
}

impl Octets for [u8; 4] {
    fn of(addr: IpAddr) -> Option<Self> {
        match addr {
            IpAddr::V4(a) => Some(a.octets()),
            IpAddr::V6(_) => None,
        }
    }

    fn addr(self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self))
    }
}

/// One family's route map.
struct RouteMap<K> {
    name: &'static str,
    trie: LpmTrie<MapData, K, SourceRoute>,
    limit: u32,
    /// The destinations as this process last wrote them (read from the map before its first
    /// write, which so removes whatever an earlier run left): only mpathd writes the map, so
    /// a rewrite compares with this instead of reading every entry back.
    written: Option<BTreeMap<IpCidr, Option<u32>>>,
    /// The last rewrite left some prefixes to the kernel.
    short: bool,
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

/// The kernel's answer in a failed map operation.
fn io_error(error: MapError) -> io::Error {
    match error {
        MapError::SyscallError(SyscallError { io_error, .. }) => io_error,
        other => io::Error::other(other),
    }
}

/// `max_entries` of a map, as the kernel has it.
fn limit_of(name: &'static str, map: &MapData) -> Result<u32, MapsError> {
    Ok(map.info().map_err(map_error(name))?.max_entries())
}

impl<K: Octets> RouteMap<K> {
    fn new(name: &'static str, map: Map) -> Result<Self, MapsError> {
        let Map::LpmTrie(data) = &map else {
            return Err(MapsError::UnexpectedType { name });
        };
        Ok(RouteMap {
            name,
            limit: limit_of(name, data)?,
            trie: typed(name, map)?,
            written: None,
            short: false,
        })
    }

    /// The map's destinations: the group id serving each, `None` for a throw.
    fn entries(&self) -> Result<BTreeMap<IpCidr, Option<u32>>, MapsError> {
        let mut routes = BTreeMap::new();
        for entry in self.trie.iter() {
            let (key, route) = entry.map_err(map_error(self.name))?;
            // The kernel refuses prefixes longer than the key's bits.
            if let Ok(prefix) = IpCidr::new(key.data().addr(), key.prefix_len() as u8) {
                routes.insert(prefix, route.group());
            }
        }
        Ok(routes)
    }

    fn key(prefix: &IpCidr) -> Option<Key<K>> {
        K::of(prefix.addr()).map(|data| Key::new(u32::from(prefix.prefix_len()), data))
    }

    fn insert(&mut self, prefix: &IpCidr, group: Option<u32>) -> Result<(), MapError> {
        match Self::key(prefix) {
            Some(key) => self.trie.insert(&key, SourceRoute::new(group), 0),
            None => Ok(()),
        }
    }

    /// Removes `prefix`'s entry: one that is not there (ENOENT) is not an error.
    fn remove(&mut self, prefix: &IpCidr) -> Result<(), MapError> {
        let Some(key) = Self::key(prefix) else {
            return Ok(());
        };
        match self.trie.remove(&key) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {
                Ok(())
            }
            result => result,
        }
    }

    /// Makes the map's destinations those of its family in `wanted`, as far as the map holds
    /// them: see [`sources::left_out`], which is told of one entry fewer than the limit, as
    /// older kernels (6.1 among them) refuse even to change an entry of a full trie in place.
    /// Stale entries go first, to make room, then the changed ones, most specific first, so
    /// that none meets a prefix holding it that is not its own. An entry the kernel refuses
    /// does not stop the others; the prefixes holding it are taken out too, and the next
    /// rewrite tries it again. A failed removal is returned after the rest.
    fn rewrite(&mut self, wanted: &BTreeMap<IpCidr, Option<u32>>) -> Result<Served, MapsError> {
        let mut current = match self.written.take() {
            Some(written) => written,
            None => self.entries()?,
        };
        let ours = |prefix: &IpCidr| K::of(prefix.addr()).is_some();
        let prefixes: Vec<IpCidr> = wanted.keys().copied().filter(ours).collect();
        let capacity = self.limit.saturating_sub(1) as usize;
        let left_out = sources::left_out(&prefixes, capacity);
        let mut error = (!left_out.is_empty()).then(|| io::Error::from_raw_os_error(libc::ENOSPC));
        let mut failed_removal = None;
        let stale: Vec<IpCidr> = current
            .keys()
            .filter(|p| !wanted.contains_key(p) || left_out.contains(p))
            .copied()
            .collect();
        for prefix in stale {
            self.remove_entry(&prefix, &mut current, &mut failed_removal);
        }
        let mut changed: Vec<(IpCidr, Option<u32>)> = wanted
            .iter()
            .filter(|(p, g)| ours(p) && !left_out.contains(p) && current.get(p) != Some(g))
            .map(|(p, g)| (*p, *g))
            .collect();
        changed.sort_by_key(|(prefix, _)| Reverse(prefix.prefix_len()));
        // Holders of a prefix the kernel refused, which must not stay either.
        let mut refused = BTreeSet::new();
        for (prefix, group) in changed {
            if refused.contains(&prefix) {
                continue;
            }
            match self.insert(&prefix, group) {
                Ok(()) => {
                    current.insert(prefix, group);
                }
                Err(e) => {
                    error = Some(io_error(e));
                    refused.extend(sources::holders(prefix));
                    // Its old group serves it no more.
                    self.remove_entry(&prefix, &mut current, &mut failed_removal);
                }
            }
        }
        for holder in refused {
            if current.contains_key(&holder) {
                self.remove_entry(&holder, &mut current, &mut failed_removal);
            }
        }
        let served = current
            .iter()
            .filter(|(p, g)| wanted.get(p) == Some(g))
            .count();
        self.written = Some(current);
        self.short = served < prefixes.len();
        if let Some(source) = failed_removal {
            return Err(MapsError::Map {
                name: self.name,
                source,
            });
        }
        Ok(Served {
            map: self.name,
            limit: self.limit,
            wanted: prefixes.len(),
            served,
            error: error.filter(|_| served < prefixes.len()),
        })
    }

    /// Changes this family's entries of `patch` (`None`: no entry) and nothing else, when
    /// the map holds the result as it is: a table change then costs what it changes. Returns
    /// false when the map must be rewritten whole instead: not yet written by this process,
    /// leaving prefixes to the kernel, too full for the additions, or refusing a change (what
    /// it holds is then read again by the rewrite).
    fn patch(&mut self, patch: &BTreeMap<IpCidr, Option<Option<u32>>>) -> bool {
        let Some(mut current) = self.written.take() else {
            return false;
        };
        let ours = || {
            patch
                .iter()
                .filter(|(prefix, _)| K::of(prefix.addr()).is_some())
        };
        let added = ours()
            .filter(|(prefix, group)| group.is_some() && !current.contains_key(prefix))
            .count();
        if self.short || current.len() + added > self.limit.saturating_sub(1) as usize {
            self.written = Some(current);
            return false;
        }
        let gone: Vec<IpCidr> = ours()
            .filter(|(prefix, group)| group.is_none() && current.contains_key(prefix))
            .map(|(prefix, _)| *prefix)
            .collect();
        for prefix in gone {
            if self.remove(&prefix).is_err() {
                return false;
            }
            current.remove(&prefix);
        }
        let mut changed: Vec<(IpCidr, Option<u32>)> = ours()
            .filter_map(|(prefix, group)| Some((*prefix, (*group)?)))
            .filter(|(prefix, group)| current.get(prefix) != Some(group))
            .collect();
        // Most specific first, as in a rewrite.
        changed.sort_by_key(|(prefix, _)| Reverse(prefix.prefix_len()));
        for (prefix, group) in changed {
            if self.insert(&prefix, group).is_err() {
                return false;
            }
            current.insert(prefix, group);
        }
        self.written = Some(current);
        true
    }

    /// Removes `prefix`'s entry and forgets it in `current`; a failure is kept in `failed`
    /// (the first one) and leaves the entry known.
    fn remove_entry(
        &mut self,
        prefix: &IpCidr,
        current: &mut BTreeMap<IpCidr, Option<u32>>,
        failed: &mut Option<MapError>,
    ) {
        match self.remove(prefix) {
            Ok(()) => {
                current.remove(prefix);
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }

    /// Copies every entry of `old` into this map; returns how many.
    fn copy_from(&mut self, old: Map) -> Result<usize, MapsError> {
        let old: LpmTrie<MapData, K, SourceRoute> = typed(self.name, old)?;
        let mut copied = 0;
        for entry in old.iter() {
            let (key, route) = entry.map_err(map_error(self.name))?;
            self.trie
                .insert(&key, route, 0)
                .map_err(map_error(self.name))?;
            copied += 1;
        }
        Ok(copied)
    }
}

/// The route maps pinned in `maps_dir` that hold fewer prefixes than this release's (an
/// earlier release's held 16,384), their pins removed so that the loader makes this
/// release's in their place: it would adopt them as they are, and keep the old limit until a
/// teardown. [`SourceMaps::take_over`] copies their entries; meanwhile an earlier mpathd's
/// hook keeps serving from them until this one's links replace its own.
pub(super) fn unpin_outgrown_routes(
    maps_dir: &Path,
) -> Result<Vec<(&'static str, MapData)>, DatapathError> {
    let mut outgrown = Vec::new();
    for name in [map_names::SOURCE_ROUTES, map_names::SOURCE_ROUTES4] {
        let path = maps_dir.join(name);
        if !path.exists() {
            continue;
        }
        let map = MapData::from_pin(&path).map_err(|source| MapsError::Pin {
            path: path.clone(),
            source,
        })?;
        if limit_of(name, &map)? < MAX_SOURCE_ROUTES {
            super::remove_pin(&path)?;
            outgrown.push((name, map));
        }
    }
    Ok(outgrown)
}

impl SourceMaps {
    pub(super) fn build(
        mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        use map_names::*;
        Ok(SourceMaps {
            routes: RouteMap::new(SOURCE_ROUTES, get(SOURCE_ROUTES)?)?,
            routes4: RouteMap::new(SOURCE_ROUTES4, get(SOURCE_ROUTES4)?)?,
            sets: typed(SOURCES, get(SOURCES)?)?,
            counters: typed(SOURCE_COUNTERS, get(SOURCE_COUNTERS)?)?,
        })
    }

    /// Fills this load's route maps with the entries of those [`unpin_outgrown_routes`] took
    /// away, before the hook runs this load's programs: the destinations it served stay
    /// served through the upgrade.
    pub(super) fn take_over(
        &mut self,
        outgrown: Vec<(&'static str, MapData)>,
    ) -> Result<(), MapsError> {
        for (name, old) in outgrown {
            let old_limit = limit_of(name, &old)?;
            let old = Map::from_map_data(old).map_err(map_error(name))?;
            let (copied, limit) = if name == map_names::SOURCE_ROUTES {
                (self.routes.copy_from(old)?, self.routes.limit)
            } else {
                (self.routes4.copy_from(old)?, self.routes4.limit)
            };
            tracing::info!(
                "the source hook's {name} held at most {old_limit} prefixes (an earlier release's): replaced by one of {limit}, its {copied} entries copied"
            );
        }
        Ok(())
    }

    /// The destinations the hook knows: the group id serving each, `None` for a throw.
    pub fn routes(&self) -> Result<BTreeMap<IpCidr, Option<u32>>, MapsError> {
        let mut routes = self.routes.entries()?;
        routes.append(&mut self.routes4.entries()?);
        Ok(routes)
    }

    /// Makes the hook's destinations `wanted`, as far as its maps hold them, changing only
    /// the entries that differ: a destination being rewritten never misses its entry. The
    /// first write also removes what an earlier run left. Returns how much each map serves,
    /// IPv6 first.
    pub fn write_routes(
        &mut self,
        wanted: &BTreeMap<IpCidr, Option<u32>>,
    ) -> Result<[Served; 2], MapsError> {
        let served = self.routes.rewrite(wanted);
        let served4 = self.routes4.rewrite(wanted);
        Ok([served?, served4?])
    }

    /// Changes the destinations of `patch` alone (`None`: no entry), when the maps take that
    /// as they are; false when they must be rewritten whole ([`Self::write_routes`]).
    pub fn patch_routes(&mut self, patch: &BTreeMap<IpCidr, Option<Option<u32>>>) -> bool {
        // Both are tried: the one patched need not be rewritten.
        let patched = self.routes.patch(patch);
        self.routes4.patch(patch) && patched
    }

    /// The sources of group `group` for destinations of `class`.
    pub fn sources(&self, group: u32, class: SourceClass) -> Result<Vec<IpAddr>, MapsError> {
        Ok(self.set(group, class)?.addresses().collect())
    }

    fn set(&self, group: u32, class: SourceClass) -> Result<SourceSet, MapsError> {
        if group >= MAX_GROUPS {
            return Err(MapsError::GroupOutOfRange(group));
        }
        self.sets
            .get(&set_index(group, class), 0)
            .map_err(map_error(map_names::SOURCES))
    }

    /// Writes a group's sources of `class` (addresses with their prefixes) when they differ;
    /// true when they did.
    pub fn write_sources(
        &mut self,
        group: u32,
        class: SourceClass,
        addrs: &[IpCidr],
    ) -> Result<bool, MapsError> {
        let with_prefixes: Vec<(IpAddr, u8)> =
            addrs.iter().map(|c| (c.addr(), c.prefix_len())).collect();
        let set = SourceSet::new(&with_prefixes).ok_or(MapsError::TooManySources(group))?;
        if self.set(group, class)? == set {
            return Ok(false);
        }
        self.sets
            .set(set_index(group, class), set, 0)
            .map_err(map_error(map_names::SOURCES))?;
        Ok(true)
    }

    /// Empties the sources of every group id not in `groups`, so that a retired group's
    /// addresses are never chosen again.
    pub fn clear_other_groups(&mut self, groups: &[u32]) -> Result<(), MapsError> {
        for group in (0..MAX_GROUPS).filter(|g| !groups.contains(g)) {
            for class in SourceClass::ALL {
                self.write_sources(group, class, &[])?;
            }
        }
        Ok(())
    }

    /// What the hook did in group `group`, summed over CPUs.
    pub fn counters(&self, group: u32) -> Result<SourceCounters, MapsError> {
        let per_cpu = self
            .counters
            .get(&group, 0)
            .map_err(map_error(map_names::SOURCE_COUNTERS))?;
        Ok(per_cpu
            .iter()
            .fold(SourceCounters::default(), |sum, c| SourceCounters {
                chosen: sum.chosen + c.chosen,
                bind_failed: sum.bind_failed + c.bind_failed,
            }))
    }
}

impl Datapath {
    /// Attaches the source hook to the cgroup `cgroup` (and so to every process below it), for
    /// sockets of this network namespace. A hook an earlier mpathd pinned is replaced by
    /// this one's programs: the new links are attached before the old ones go, so no socket
    /// misses the hook.
    pub fn attach_source_hook(&mut self, cgroup: &Path) -> Result<(), DatapathError> {
        if self.netns_cookie.is_none() {
            return Err(DatapathError::MissingFeature {
                feature: "SO_NETNS_COOKIE (the network namespace cookie the source hook checks)",
                since: "5.14",
            });
        }
        self.restore_layout()?;
        let dir = fs::File::open(cgroup).map_err(|source| DatapathError::Io {
            path: cgroup.to_owned(),
            source,
        })?;
        for (name, pin_name) in HOOKS {
            let program = |source| DatapathError::Program { name, source };
            let prog: &mut CgroupSockAddr = super::program(&mut self.ebpf, name)?;
            if prog.fd().is_err() {
                prog.load().map_err(program)?;
            }
            // Through a link (5.7) the mode is not the kernel's to take (`Single` sends no
            // flags): links to a cgroup always run beside every other program there.
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(program)?;
            let link = FdLink::try_from(prog.take_link(id).map_err(program)?).map_err(
                |_not_a_bpf_link| DatapathError::MissingFeature {
                    feature: "BPF links for cgroup programs",
                    since: "5.7",
                },
            )?;
            pin(link, &self.pins.links().join(pin_name))?;
        }
        Ok(())
    }

    /// Whether every link of the source hook is pinned and attached to its cgroup: `false`
    /// once someone detached one (`bpftool link detach`) or removed its pin.
    pub fn source_hook_attached(&self) -> Result<bool, DatapathError> {
        for (_, pin_name) in HOOKS {
            match super::link_target(&self.pins.links().join(pin_name))? {
                Some(cgroup) if cgroup != 0 => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Detaches the source hook (an earlier mpathd's too): the kernel chooses the sources
    /// again.
    pub fn detach_source_hook(&mut self) -> Result<(), DatapathError> {
        for (_, pin_name) in HOOKS {
            detach_pinned_link(&self.pins.links().join(pin_name))?;
        }
        Ok(())
    }
}

/// The cookie of this thread's network namespace, which the hook compares with its socket's
/// (SO_NETNS_COOKIE, Linux 5.14).
pub(super) fn netns_cookie() -> io::Result<u64> {
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::DGRAM, None)?;
    let mut cookie = 0u64;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `cookie`, which has that many.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Where the cgroup v2 hierarchy is mounted, from `/proc/self/mountinfo`: its root for
/// mpathd, and so the cgroup every process of the host is in or below. Of several mounts the
/// last one that is visible wins: a later mount over `/sys` hides the earlier ones.
pub fn cgroup2_root() -> io::Result<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    cgroup2_mounts(&mountinfo)
        .into_iter()
        .rev()
        .find(|point| point.join("cgroup.procs").exists())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup2 filesystem is mounted (mount one with `mount -t cgroup2 none /sys/fs/cgroup`)",
            )
        })
}

/// The mount points of the cgroup2 mounts in a mountinfo text, in its order.
fn cgroup2_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            if fs.split(' ').next()? != "cgroup2" {
                return None;
            }
            let point = mount.split(' ').nth(4)?;
            Some(PathBuf::from(unescape_mountinfo(point)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\040`).
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::new();
    let mut rest = field;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest.get(i + 1..i + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_points_are_found_in_mountinfo() {
        let mountinfo = "\
22 28 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
26 22 0:23 / /sys/fs/cgroup/unified\\040v2 rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate
27 22 0:24 / /sys/fs/cgroup/systemd rw shared:10 - cgroup cgroup rw,name=systemd
90 88 0:23 / /sys/fs/cgroup rw master:9 - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mounts(mountinfo),
            [
                PathBuf::from("/sys/fs/cgroup/unified v2"),
                PathBuf::from("/sys/fs/cgroup")
            ]
        );
        assert!(cgroup2_mounts("22 28 0:21 / /sys rw shared:7 - sysfs sysfs rw\n").is_empty());
        assert_eq!(unescape_mountinfo("a\\134b\\x"), "a\\b\\x");
    }

    #[test]
    fn this_namespace_has_a_cookie() {
        // Linux 5.14 and later; the namespace this test runs in is the host's or a sandbox's.
        assert_ne!(netns_cookie().unwrap(), 0);
    }
}
