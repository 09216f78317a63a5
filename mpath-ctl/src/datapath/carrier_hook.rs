//! The carrier hook: `mpath_carrier_off` on `netif_carrier_off` (fentry), which marks a group
//! NIC `EGRESS_F_NO_CARRIER` (its outbound flows move in the egress program at once) and
//! reports its carrier loss the moment its driver does, where the kernel's link event waits
//! for linkwatch; `mpath_carrier_on` on `netif_carrier_on` clears the mark. It needs a kernel
//! that lets mpathd load tracing programs and publishes its BTF; elsewhere mpathd reads the
//! carrier instead ([`crate::net::carrier`]).
//!
//! The hook is not pinned: it lives as long as the mpathd that attached it, which alone reads
//! its ring buffer.

use aya::{
    Btf,
    maps::{MapData, RingBuf},
    programs::FEntry,
};
use mpath_common::{CarrierEvent, map_names, program_names};
use tokio::io::unix::AsyncFd;

use super::{Datapath, DatapathError, btf};

/// The programs and the kernel functions whose entry they run at.
const HOOKS: [(&str, &str); 2] = [
    (program_names::CARRIER_OFF, "netif_carrier_off"),
    (program_names::CARRIER_ON, "netif_carrier_on"),
];

impl Datapath {
    /// Loads and attaches the carrier hook; the error says why it cannot run here (no BTF,
    /// or a kernel that refuses tracing programs).
    pub(crate) fn attach_carrier_hook(&mut self) -> Result<CarrierEvents, DatapathError> {
        let hook_error = |reason: String| DatapathError::CarrierHook { reason };
        if self.netdev_ifindex_offset.is_none() {
            return Err(hook_error(format!(
                "{} does not say where struct net_device keeps its ifindex",
                btf::VMLINUX
            )));
        }
        let kernel_btf = Btf::from_sys_fs().map_err(|e| hook_error(e.to_string()))?;
        for (name, hooked) in HOOKS {
            let program = |source| DatapathError::Program { name, source };
            let prog: &mut FEntry = super::program(&mut self.ebpf, name)?;
            prog.load(hooked, &kernel_btf).map_err(program)?;
            prog.attach().map_err(program)?;
        }
        let ring = self
            .ebpf
            .take_map(map_names::CARRIER_EVENTS)
            .ok_or_else(|| hook_error(format!("no map {}", map_names::CARRIER_EVENTS)))?;
        let ring = RingBuf::try_from(ring).map_err(|e| hook_error(e.to_string()))?;
        CarrierEvents::new(ring).map_err(|e| hook_error(e.to_string()))
    }
}

/// The carrier losses the hook queues, for the one reader there is.
pub struct CarrierEvents {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl CarrierEvents {
    fn new(ring: RingBuf<MapData>) -> std::io::Result<Self> {
        // SAFETY: the ring buffer owns its descriptor, which stays open and the same for as
        // long as the AsyncFd owns the ring buffer.
        let ring = unsafe { AsyncFd::register(ring) }.map_err(|e| e.into_parts().1)?;
        Ok(CarrierEvents { ring })
    }

    /// Waits until losses are queued and returns them all.
    pub async fn next_batch(&mut self) -> std::io::Result<Vec<CarrierEvent>> {
        let mut guard = self.ring.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let mut events = Vec::new();
        while let Some(record) = ring.next() {
            events.extend(CarrierEvent::from_record(&record));
        }
        guard.clear_ready();
        Ok(events)
    }
}
