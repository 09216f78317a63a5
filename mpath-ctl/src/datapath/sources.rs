//! The source hook in the kernel (see `mpath_common::sources` and [`crate::core::sources`]):
//! its maps, and its four programs attached to a cgroup through links pinned as
//! `links/source-{connect,sendmsg}{4,6}`, so that the hook outlives mpathd like the rest of
//! the datapath.

use std::{
    collections::BTreeMap,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, MapError, PerCpuArray, lpm_trie::Key, lpm_trie::LpmTrie},
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use mpath_common::{
    MAX_GROUPS, map_names, program_names,
    sources::{SourceClass, SourceCounters, SourceRoute, SourceSet, set_index},
};

use super::{
    Datapath, DatapathError, detach_pinned_link,
    maps::{MapsError, typed},
    pin,
};
use crate::net::address::IpCidr;

/// The hook's programs, each with the name of its link's pin.
const HOOKS: [(&str, &str); 4] = [
    (program_names::SOURCE_CONNECT6, "source-connect6"),
    (program_names::SOURCE_SENDMSG6, "source-sendmsg6"),
    (program_names::SOURCE_CONNECT4, "source-connect4"),
    (program_names::SOURCE_SENDMSG4, "source-sendmsg4"),
];

/// The hook's maps.
pub struct SourceMaps {
    routes: LpmTrie<MapData, [u8; 16], SourceRoute>,
    routes4: LpmTrie<MapData, [u8; 4], SourceRoute>,
    sets: Array<MapData, SourceSet>,
    counters: PerCpuArray<MapData, SourceCounters>,
    /// The destinations as this process last wrote them (read from the map before its first
    /// write): only mpathd writes the map, so a rewrite compares with this instead of
    /// reading every entry back.
    routes_written: Option<BTreeMap<IpCidr, Option<u32>>>,
}

fn map_error(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Map { name, source }
}

impl SourceMaps {
    pub(super) fn build(
        mut get: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        use map_names::*;
        Ok(SourceMaps {
            routes: typed(SOURCE_ROUTES, get(SOURCE_ROUTES)?)?,
            routes4: typed(SOURCE_ROUTES4, get(SOURCE_ROUTES4)?)?,
            sets: typed(SOURCES, get(SOURCES)?)?,
            counters: typed(SOURCE_COUNTERS, get(SOURCE_COUNTERS)?)?,
            routes_written: None,
        })
    }

    /// The destinations the hook knows: the group id serving each, `None` for a throw.
    pub fn routes(&self) -> Result<BTreeMap<IpCidr, Option<u32>>, MapsError> {
        let mut routes = BTreeMap::new();
        for entry in self.routes.iter() {
            let (key, route) = entry.map_err(map_error(map_names::SOURCE_ROUTES))?;
            let addr = IpAddr::V6(Ipv6Addr::from(key.data()));
            // The kernel refuses prefixes longer than the key's 128 bits.
            if let Ok(prefix) = IpCidr::new(addr, key.prefix_len() as u8) {
                routes.insert(prefix, route.group());
            }
        }
        for entry in self.routes4.iter() {
            let (key, route) = entry.map_err(map_error(map_names::SOURCE_ROUTES4))?;
            let addr = IpAddr::V4(Ipv4Addr::from(key.data()));
            if let Ok(prefix) = IpCidr::new(addr, key.prefix_len() as u8) {
                routes.insert(prefix, route.group());
            }
        }
        Ok(routes)
    }

    /// Makes the hook's destinations `wanted`, changing only the entries that differ: a
    /// destination being rewritten never misses its entry.
    pub fn write_routes(
        &mut self,
        wanted: &BTreeMap<IpCidr, Option<u32>>,
    ) -> Result<(), MapsError> {
        let mut current = match self.routes_written.take() {
            Some(written) => written,
            None => self.routes()?,
        };
        let result = self.rewrite_routes(&mut current, wanted);
        self.routes_written = Some(current);
        result
    }

    /// Brings the map from `current` to `wanted`, keeping `current` what the map holds.
    fn rewrite_routes(
        &mut self,
        current: &mut BTreeMap<IpCidr, Option<u32>>,
        wanted: &BTreeMap<IpCidr, Option<u32>>,
    ) -> Result<(), MapsError> {
        let bits = |prefix: &IpCidr| u32::from(prefix.prefix_len());
        for (prefix, group) in wanted {
            if current.get(prefix) == Some(group) {
                continue;
            }
            match prefix.addr() {
                IpAddr::V6(a) => self
                    .routes
                    .insert(
                        &Key::new(bits(prefix), a.octets()),
                        SourceRoute::new(*group),
                        0,
                    )
                    .map_err(map_error(map_names::SOURCE_ROUTES))?,
                IpAddr::V4(a) => self
                    .routes4
                    .insert(
                        &Key::new(bits(prefix), a.octets()),
                        SourceRoute::new(*group),
                        0,
                    )
                    .map_err(map_error(map_names::SOURCE_ROUTES4))?,
            }
            current.insert(*prefix, *group);
        }
        let stale: Vec<IpCidr> = current
            .keys()
            .filter(|p| !wanted.contains_key(p))
            .copied()
            .collect();
        for prefix in stale {
            match prefix.addr() {
                IpAddr::V6(a) => self
                    .routes
                    .remove(&Key::new(bits(&prefix), a.octets()))
                    .map_err(map_error(map_names::SOURCE_ROUTES))?,
                IpAddr::V4(a) => self
                    .routes4
                    .remove(&Key::new(bits(&prefix), a.octets()))
                    .map_err(map_error(map_names::SOURCE_ROUTES4))?,
            }
            current.remove(&prefix);
        }
        Ok(())
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
            let link = FdLink::try_from(prog.take_link(id).map_err(program)?).map_err(|_| {
                DatapathError::MissingFeature {
                    feature: "BPF links for cgroup programs",
                    since: "5.7",
                }
            })?;
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
