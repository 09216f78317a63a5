//! Typed access to the datapath's maps, whether mpathd loaded them or they are only pinned
//! (`mpathctl maps` reads them with no daemon running).

use std::{
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, RingBuf};
use mpath_common::{
    BUCKETS_PER_GROUP, Bucket, EGRESS_F_NO_CARRIER, EGRESS_F_PRESENT, EGRESS_F_ROUTED, EgressNic,
    GroupTests, MAX_GROUPS, MAX_IFINDEX, MAX_TEST_ADDRESSES_PER_GROUP, NicCounters, NicInfo,
    ProbeReply, ReplyBudget, Settings, TestOwner, map_names,
};

use tokio::io::unix::AsyncFd;

use crate::{core::spread::Table, datapath::sources::SourceMaps};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("BPF map {name} is missing from the eBPF object")]
    Missing { name: &'static str },
    #[error("cannot open pinned BPF map {path} (is mpathd's datapath loaded?)")]
    Pin { path: PathBuf, source: MapError },
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("BPF map {name} has been taken by its reader already")]
    Taken { name: &'static str },
    #[error("BPF map {name} is of a type mpathd does not expect")]
    UnexpectedType { name: &'static str },
    #[error("pinning BPF map {path} again: {source}")]
    Repin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("group id {0} is out of range (at most {MAX_GROUPS} groups)")]
    GroupOutOfRange(u32),
    #[error(
        "ifindex {0} is too large for the datapath (group NICs need an ifindex below \
         {MAX_IFINDEX}; recreating the NIC or a reboot gives it a small one)"
    )]
    IfindexTooLarge(u32),
    #[error("ifindex {0} is not a group NIC of the datapath")]
    UnknownNic(u32),
    #[error("group {0} has more than {MAX_TEST_ADDRESSES_PER_GROUP} IPv4 test addresses")]
    TooManyTestAddresses(u32),
    #[error(
        "group {0} has more than {max} IPv6 data addresses of one kind for the source hook",
        max = mpath_common::sources::MAX_SOURCES
    )]
    TooManySources(u32),
}

/// The maps shared with the programs (see mpath-ebpf's `maps` module for what each holds).
pub struct Maps {
    nics: HashMap<MapData, u32, NicInfo>,
    egress_nics: Array<MapData, EgressNic>,
    group_tests: Array<MapData, GroupTests>,
    buckets: Array<MapData, Bucket>,
    counters: PerCpuArray<MapData, NicCounters>,
    settings: Array<MapData, Settings>,
    last_reply: Array<MapData, ProbeReply>,
    reply_budgets: PerCpuArray<MapData, ReplyBudget>,
    /// Taken by the daemon's reply reader; `None` once taken.
    probe_replies: Option<RingBuf<MapData>>,
    /// The source hook's.
    pub sources: SourceMaps,
    /// A second descriptor of every map, by name, to pin the maps again after someone
    /// removed their pins (the typed maps above keep theirs to themselves).
    handles: Vec<(&'static str, MapData)>,
}

pub(super) fn typed<T>(name: &'static str, map: Map) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    T::try_from(map).map_err(|source| MapsError::Map { name, source })
}

/// Another descriptor of `map`: a duplicate of its descriptor (opening it by id would need
/// CAP_SYS_ADMIN, which the unit does not grant).
fn second_handle(name: &'static str, map: &Map) -> Result<MapData, MapsError> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::PerCpuArray(d)
        | Map::RingBuf(d)
        | Map::LpmTrie(d) => d,
        _ => return Err(MapsError::UnexpectedType { name }),
    };
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(MapError::from)
        .and_then(MapData::from_fd)
        .map_err(|source| MapsError::Map { name, source })
}

impl Maps {
    /// Takes the maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Self::build(|name| ebpf.take_map(name).ok_or(MapsError::Missing { name }))
    }

    /// Opens the maps pinned in `maps_dir`.
    pub fn open_pinned(maps_dir: &Path) -> Result<Self, MapsError> {
        Self::build(|name| {
            let path = maps_dir.join(name);
            MapData::from_pin(&path)
                .and_then(Map::from_map_data)
                .map_err(|source| MapsError::Pin { path, source })
        })
    }

    fn build(
        mut get_map: impl FnMut(&'static str) -> Result<Map, MapsError>,
    ) -> Result<Self, MapsError> {
        use map_names::*;
        let mut handles = Vec::new();
        let mut get = |name| {
            let map = get_map(name)?;
            handles.push((name, second_handle(name, &map)?));
            Ok::<_, MapsError>(map)
        };
        Ok(Maps {
            nics: typed(NICS, get(NICS)?)?,
            egress_nics: typed(EGRESS_NICS, get(EGRESS_NICS)?)?,
            group_tests: typed(GROUP_TESTS, get(GROUP_TESTS)?)?,
            buckets: typed(BUCKETS, get(BUCKETS)?)?,
            counters: typed(COUNTERS, get(COUNTERS)?)?,
            settings: typed(SETTINGS, get(SETTINGS)?)?,
            last_reply: typed(LAST_REPLY, get(LAST_REPLY)?)?,
            reply_budgets: typed(REPLY_BUDGETS, get(REPLY_BUDGETS)?)?,
            probe_replies: Some(typed(PROBE_REPLIES, get(PROBE_REPLIES)?)?),
            sources: SourceMaps::build(&mut get)?,
            handles,
        })
    }

    /// Pins every map under `maps_dir` whose pin is missing there.
    pub(crate) fn pin_missing(&self, maps_dir: &Path) -> Result<(), MapsError> {
        for (name, map) in &self.handles {
            let path = maps_dir.join(name);
            if !path.exists() {
                map.pin(&path)
                    .map_err(|source| MapsError::Repin { path, source })?;
            }
        }
        Ok(())
    }

    /// Group NICs known to the datapath, by ifindex.
    pub fn nics(&self) -> Result<Vec<(u32, NicInfo)>, MapsError> {
        let mut all = self
            .nics
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| MapsError::Map {
                name: map_names::NICS,
                source,
            })?;
        all.sort_by_key(|(ifindex, _)| *ifindex);
        Ok(all)
    }

    /// What the datapath knows of the group NIC `ifindex`.
    pub fn nic(&self, ifindex: u32) -> Result<NicInfo, MapsError> {
        self.nics
            .get(&ifindex, 0)
            .map_err(|_not_found| MapsError::UnknownNic(ifindex))
    }

    /// Changes what the datapath knows of the group NIC `ifindex` through `edit`.
    pub fn update_nic(
        &mut self,
        ifindex: u32,
        edit: impl FnOnce(&mut NicInfo),
    ) -> Result<(), MapsError> {
        let mut info = self.nic(ifindex)?;
        edit(&mut info);
        self.set_nic(ifindex, info)
    }

    /// The ring buffer of matched probe replies, for the one reader there is.
    pub(crate) fn take_probe_replies(&mut self) -> Result<ProbeReplies, MapsError> {
        let ring = self.probe_replies.take().ok_or(MapsError::Taken {
            name: map_names::PROBE_REPLIES,
        })?;
        ProbeReplies::new(ring).map_err(|source| MapsError::Map {
            name: map_names::PROBE_REPLIES,
            source: MapError::IoError(source),
        })
    }

    #[cfg(any(test, feature = "testing"))]
    /// Takes the replies queued now, while no reader has taken the ring buffer (to look at the
    /// XDP program's work without a daemon).
    pub fn queued_probe_replies(&mut self) -> Result<Vec<ProbeReply>, MapsError> {
        let ring = self.probe_replies.as_mut().ok_or(MapsError::Taken {
            name: map_names::PROBE_REPLIES,
        })?;
        Ok(drain(ring))
    }

    /// Makes `ifindex` a group NIC for both programs. A NIC already there keeps its
    /// `EGRESS_F_ROUTED` bit (whether routes carry its flows is [`Maps::set_routed`]'s call)
    /// and the carrier hook's `EGRESS_F_NO_CARRIER`.
    pub fn set_nic(&mut self, ifindex: u32, info: NicInfo) -> Result<(), MapsError> {
        if ifindex >= MAX_IFINDEX {
            return Err(MapsError::IfindexTooLarge(ifindex));
        }
        let group =
            u16::try_from(info.group).map_err(|_too_big| MapsError::GroupOutOfRange(info.group))?;
        let kept = self.egress_nic(ifindex)?.flags & (EGRESS_F_ROUTED | EGRESS_F_NO_CARRIER);
        let egress = EgressNic {
            flags: EGRESS_F_PRESENT | kept,
            group,
            slot: info.slot as u16,
            _pad: 0,
        };
        self.nics
            .insert(ifindex, info, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::NICS,
                source,
            })?;
        self.egress_nics
            .set(ifindex, egress, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::EGRESS_NICS,
                source,
            })
    }

    /// Marks the group NIC `ifindex` as placed by the routes (`EGRESS_F_ROUTED`: its packets
    /// stay on it) or not (they go to their flow's bucket NIC). Only that bit changes.
    pub fn set_routed(&mut self, ifindex: u32, routed: bool) -> Result<(), MapsError> {
        let mut nic = self.egress_nic(ifindex)?;
        if !nic.is_present() {
            return Err(MapsError::UnknownNic(ifindex));
        }
        if nic.is_routed() == routed {
            return Ok(());
        }
        nic.flags ^= EGRESS_F_ROUTED;
        self.egress_nics
            .set(ifindex, nic, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::EGRESS_NICS,
                source,
            })
    }

    /// Clears the carrier hook's `EGRESS_F_NO_CARRIER` marks of every group NIC: they are
    /// stale when a new mpathd starts (no hook saw a carrier come back while none ran), and
    /// the kernel's link state, which mpathd reads next, says which NICs lack a carrier.
    pub fn clear_carrier_marks(&mut self) -> Result<(), MapsError> {
        for (ifindex, _) in self.nics()? {
            let mut nic = self.egress_nic(ifindex)?;
            if nic.has_carrier() {
                continue;
            }
            nic.flags &= !EGRESS_F_NO_CARRIER;
            self.egress_nics
                .set(ifindex, nic, 0)
                .map_err(|source| MapsError::Map {
                    name: map_names::EGRESS_NICS,
                    source,
                })?;
        }
        Ok(())
    }

    /// What the egress program knows of `ifindex` (all zero when it is not a group NIC).
    pub fn egress_nic(&self, ifindex: u32) -> Result<EgressNic, MapsError> {
        if ifindex >= MAX_IFINDEX {
            return Err(MapsError::IfindexTooLarge(ifindex));
        }
        self.egress_nics
            .get(&ifindex, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::EGRESS_NICS,
                source,
            })
    }

    /// Forgets a NIC (and its test addresses); a NIC that was not there is not an error.
    pub fn remove_nic(&mut self, ifindex: u32) -> Result<(), MapsError> {
        if ifindex < MAX_IFINDEX {
            self.egress_nics
                .set(ifindex, EgressNic::default(), 0)
                .map_err(|source| MapsError::Map {
                    name: map_names::EGRESS_NICS,
                    source,
                })?;
        }
        for group in 0..MAX_GROUPS {
            self.edit_tests(group, |tests| {
                tests.retain(|(_, owner)| owner.ifindex != ifindex)
            })?;
        }
        absent_is_ok(self.nics.remove(&ifindex), map_names::NICS)
    }

    /// Keeps packets from `addr` on the group NIC `ifindex`, whatever the spreading says.
    pub fn set_test_address(&mut self, addr: Ipv4Addr, ifindex: u32) -> Result<(), MapsError> {
        let info = self.nic(ifindex)?;
        let owner = TestOwner {
            ifindex,
            mac: info.mac,
            _pad: [0; 2],
        };
        self.edit_tests(info.group, |tests| {
            tests.retain(|(a, _)| *a != addr.octets());
            tests.push((addr.octets(), owner));
        })
    }

    pub(crate) fn remove_test_address(&mut self, addr: Ipv4Addr) -> Result<(), MapsError> {
        for group in 0..MAX_GROUPS {
            self.edit_tests(group, |tests| tests.retain(|(a, _)| *a != addr.octets()))?;
        }
        Ok(())
    }

    /// Rewrites a group's test address list through `edit`, only when it changes.
    fn edit_tests(
        &mut self,
        group: u32,
        edit: impl FnOnce(&mut Vec<([u8; 4], TestOwner)>),
    ) -> Result<(), MapsError> {
        let map_err = |source| MapsError::Map {
            name: map_names::GROUP_TESTS,
            source,
        };
        if group >= MAX_GROUPS {
            return Err(MapsError::GroupOutOfRange(group));
        }
        let current = self.group_tests.get(&group, 0).map_err(map_err)?;
        let mut list: Vec<([u8; 4], TestOwner)> = current
            .addrs
            .iter()
            .copied()
            .zip(current.owners.iter().copied())
            .take(current.count as usize)
            .collect();
        let before = list.clone();
        edit(&mut list);
        if list == before {
            return Ok(());
        }
        if list.len() > MAX_TEST_ADDRESSES_PER_GROUP {
            return Err(MapsError::TooManyTestAddresses(group));
        }
        let mut tests = GroupTests {
            count: list.len() as u32,
            ..Default::default()
        };
        for (i, (addr, owner)) in list.into_iter().enumerate() {
            tests.addrs[i] = addr;
            tests.owners[i] = owner;
        }
        self.group_tests.set(group, tests, 0).map_err(map_err)
    }

    /// Reads a group's spreading table.
    pub fn table(&self, group: u32) -> Result<Table, MapsError> {
        let first = first_bucket(group)?;
        let mut table = [0u32; BUCKETS_PER_GROUP as usize];
        for (i, slot) in table.iter_mut().enumerate() {
            *slot = self
                .buckets
                .get(&(first + i as u32), 0)
                .map_err(|source| MapsError::Map {
                    name: map_names::BUCKETS,
                    source,
                })?
                .ifindex;
        }
        Ok(table)
    }

    /// Writes a group's spreading table, touching only buckets whose owner changes, so flows
    /// on the other buckets never see a transient value.
    pub fn write_table(
        &mut self,
        group: u32,
        table: &Table,
        mac_of: impl Fn(u32) -> [u8; 6],
    ) -> Result<usize, MapsError> {
        let first = first_bucket(group)?;
        let current = self.table(group)?;
        let mut written = 0;
        for (i, (&old, &new)) in current.iter().zip(table).enumerate() {
            if old == new {
                continue;
            }
            let bucket = Bucket {
                ifindex: new,
                mac: if new == 0 { [0; 6] } else { mac_of(new) },
                _pad: [0; 2],
            };
            self.buckets
                .set(first + i as u32, bucket, 0)
                .map_err(|source| MapsError::Map {
                    name: map_names::BUCKETS,
                    source,
                })?;
            written += 1;
        }
        Ok(written)
    }

    /// A NIC's counters, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<NicCounters, MapsError> {
        let per_cpu = self
            .counters
            .get(&slot, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::COUNTERS,
                source,
            })?;
        Ok(NicCounters::sum(per_cpu.iter()))
    }

    /// Matched replies of a NIC dropped over its reply budgets (see
    /// [`mpath_common::PROBE_REPLY_BUDGET`] and
    /// [`mpath_common::PROBE_DISCOVERY_REPLY_BUDGET`]), summed over CPUs.
    pub fn replies_over_budget(&self, slot: u32) -> Result<u64, MapsError> {
        let per_cpu = self
            .reply_budgets
            .get(&slot, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::REPLY_BUDGETS,
                source,
            })?;
        Ok(per_cpu.iter().map(|b| b.dropped).sum())
    }

    /// Zeroes a NIC slot's counters and reply budget, so the next NIC given the slot starts
    /// from zero.
    pub fn clear_counters(&mut self, slot: u32) -> Result<(), MapsError> {
        let map_err = |name| move |source| MapsError::Map { name, source };
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, e)| map_err(map_names::COUNTERS)(MapError::IoError(e)))?;
        let zeros = PerCpuValues::try_from(vec![NicCounters::default(); cpus])
            .map_err(|e| map_err(map_names::COUNTERS)(MapError::IoError(e)))?;
        self.counters
            .set(slot, zeros, 0)
            .map_err(map_err(map_names::COUNTERS))?;
        let fresh = PerCpuValues::try_from(vec![ReplyBudget::default(); cpus])
            .map_err(|e| map_err(map_names::REPLY_BUDGETS)(MapError::IoError(e)))?;
        self.reply_budgets
            .set(slot, fresh, 0)
            .map_err(map_err(map_names::REPLY_BUDGETS))
    }

    pub fn set_settings(&mut self, settings: Settings) -> Result<(), MapsError> {
        self.settings
            .set(0, settings, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::SETTINGS,
                source,
            })
    }

    /// The last matched probe reply of a NIC; `None` before its first.
    pub fn last_reply(&self, slot: u32) -> Result<Option<ProbeReply>, MapsError> {
        let reply = self
            .last_reply
            .get(&slot, 0)
            .map_err(|source| MapsError::Map {
                name: map_names::LAST_REPLY,
                source,
            })?;
        Ok((reply.ifindex != 0).then_some(reply))
    }
}

/// The probe replies the XDP program queues in `PROBE_REPLIES`, as they arrive.
pub(crate) struct ProbeReplies {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl ProbeReplies {
    fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its descriptor, which stays open and the same for as
        // long as the AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        Ok(ProbeReplies { ring })
    }

    /// The replies queued now, without waiting.
    pub(crate) fn ready(&mut self) -> Vec<ProbeReply> {
        drain(self.ring.get_mut())
    }

    /// Waits until replies are queued and returns them all.
    pub(crate) async fn next_batch(&mut self) -> std::io::Result<Vec<ProbeReply>> {
        let mut guard = self.ring.readable_mut().await?;
        let batch = drain(guard.get_inner_mut());
        guard.clear_ready();
        Ok(batch)
    }
}

/// Every reply queued in `ring`; a record of another size (none is) is skipped.
fn drain(ring: &mut RingBuf<MapData>) -> Vec<ProbeReply> {
    let mut replies = Vec::new();
    while let Some(record) = ring.next() {
        replies.extend(ProbeReply::from_record(&record));
    }
    replies
}

/// Deleting a key that is not there (ENOENT) leaves the map as wanted.
fn absent_is_ok(result: Result<(), MapError>, name: &'static str) -> Result<(), MapsError> {
    match result {
        Ok(()) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(source) => Err(MapsError::Map { name, source }),
    }
}

fn first_bucket(group: u32) -> Result<u32, MapsError> {
    if group >= MAX_GROUPS {
        return Err(MapsError::GroupOutOfRange(group));
    }
    Ok(group * BUCKETS_PER_GROUP)
}
