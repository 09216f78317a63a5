//! The tc programs as classic tc filters, for kernels without tcx (before 6.6): a
//! direct-action cls_bpf filter on each hook of the NIC's clsact qdisc (the spreading program
//! on egress, the probe matcher on ingress), at a fixed priority and handle.
//!
//! Such a filter is no BPF link: it cannot be pinned, and it stays in the qdisc until someone
//! deletes it. mpathd leaves it there when it exits (a restart replaces the program in place,
//! by priority and handle) and finds its own again by dumping the NIC's filters: a filter is
//! mpathd's when it sits at [`PRIORITY`] and [`HANDLE`], is of kind `bpf` and runs the
//! program of its hook ([`Hook::program`]). Other filters are never touched.
//!
//! Requests go over a blocking rtnetlink socket: the datapath is synchronous, and a filter
//! dump is one short exchange.

use std::{ffi::CStr, io};

use mpath_common::program_names;
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::packet_route::tc::{
    TcAttribute, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use rtnetlink::sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The priority of mpathd's filter (0x6d70, "mp"): fixed, so that a restarted mpathd finds
/// and replaces its filter rather than adding a second one.
pub const PRIORITY: u16 = 0x6d70;
/// The handle of mpathd's filter at [`PRIORITY`].
pub const HANDLE: u32 = 0x6d70;

/// A hook of the clsact qdisc, and the program of mpathd's that runs there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `mpath_spread`.
    Egress,
    /// `mpath_probe_rx`.
    Ingress,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hook::Egress => "egress",
            Hook::Ingress => "ingress",
        })
    }
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Egress, Hook::Ingress];

    /// The program mpathd attaches here.
    pub fn program(self) -> &'static str {
        match self {
            Hook::Egress => program_names::SPREAD,
            Hook::Ingress => program_names::PROBE_RX,
        }
    }

    fn parent(self) -> TcHandle {
        TcHandle {
            major: u16::MAX,
            minor: match self {
                Hook::Egress => TcHandle::MIN_EGRESS,
                Hook::Ingress => TcHandle::MIN_INGRESS,
            },
        }
    }
}
/// `ETH_P_ALL`, the protocol aya attaches with, in network order as tcm_info carries it.
const ETH_P_ALL_BE: u16 = 0x0003u16.to_be();

/// A cls_bpf filter found on a hook of a NIC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    pub kind: String,
    /// The program name the filter was attached with (TCA_BPF_NAME), if any.
    pub name: Option<String>,
    /// The id of the program it runs (TCA_BPF_ID): a replaced program has a new one.
    pub program_id: Option<u32>,
}

impl Filter {
    /// Whether this is mpathd's filter on `hook`: its place and the name of its program.
    pub fn is_mpathd(&self, hook: Hook) -> bool {
        self.priority == PRIORITY
            && self.handle == HANDLE
            && self.kind == "bpf"
            && self.name.as_deref() == Some(hook.program())
    }

    /// Whether the filter occupies mpathd's place (priority and handle), whoever made it.
    pub fn holds_mpathd_place(&self) -> bool {
        self.priority == PRIORITY && self.handle == HANDLE
    }
}

/// The filters on `hook` of NIC `ifindex` (none when it has no clsact qdisc or is gone),
/// without the per-priority chain entries the kernel reports besides them.
pub fn filters(ifindex: u32, hook: Hook) -> io::Result<Vec<Filter>> {
    let mut message = TcMessage::with_index(ifindex_i32(ifindex)?);
    message.header.parent = hook.parent();
    let replies = exchange(
        RouteNetlinkMessage::GetTrafficFilter(message),
        NLM_F_REQUEST | NLM_F_DUMP,
    )?;
    Ok(replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficFilter(m) => filter_of(&m),
            _ => None,
        })
        .collect())
}

fn filter_of(message: &TcMessage) -> Option<Filter> {
    let TcHeader { handle, info, .. } = message.header;
    let handle = u32::from(handle);
    // A priority's chain entry has handle 0: it is no filter of its own.
    if handle == 0 {
        return None;
    }
    let mut kind = String::new();
    let mut name = None;
    let mut program_id = None;
    for attribute in &message.attributes {
        match attribute {
            TcAttribute::Kind(k) => kind = k.clone(),
            TcAttribute::Options(options) => {
                for option in options {
                    match option {
                        TcOption::Bpf(TcFilterBpfOption::ProgName(n)) => name = Some(n.clone()),
                        TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => program_id = Some(*id),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Filter {
        priority: (info >> 16) as u16,
        handle,
        kind,
        name,
        program_id,
    })
}

/// Whether NIC `ifindex` has mpathd's filter on `hook`.
pub fn has_mpathd_filter(ifindex: u32, hook: Hook) -> io::Result<bool> {
    Ok(filters(ifindex, hook)?.iter().any(|f| f.is_mpathd(hook)))
}

/// Deletes mpathd's filter on `hook` from NIC `ifindex`; `false` when there was none (or no
/// NIC). Checks first that the filter at mpathd's place is mpathd's: another program's filter
/// there is left alone.
pub fn delete_mpathd_filter(ifindex: u32, hook: Hook) -> io::Result<bool> {
    if !has_mpathd_filter(ifindex, hook)? {
        return Ok(false);
    }
    let mut message = TcMessage::with_index(ifindex_i32(ifindex)?);
    message.header.parent = hook.parent();
    message.header.handle = TcHandle::from(HANDLE);
    message.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL_BE);
    message.attributes.push(TcAttribute::Kind("bpf".into()));
    match exchange(
        RouteNetlinkMessage::DelTrafficFilter(message),
        NLM_F_REQUEST | NLM_F_ACK,
    ) {
        Ok(_) => Ok(true),
        // Gone meanwhile, with its NIC or its qdisc.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// ifindexes of the NICs of this network namespace that carry a filter of mpathd's.
pub fn nics_with_mpathd_filter() -> io::Result<Vec<u32>> {
    let mut nics = Vec::new();
    for (ifindex, _) in interfaces()? {
        if has_mpathd_filter(ifindex, Hook::Egress)? || has_mpathd_filter(ifindex, Hook::Ingress)? {
            nics.push(ifindex);
        }
    }
    nics.sort_unstable();
    Ok(nics)
}

/// Every interface of this thread's network namespace as (ifindex, name).
pub fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array ending in a zeroed entry, or NULL on failure;
    // it is freed below, after the names are copied.
    unsafe {
        let first = libc::if_nameindex();
        if first.is_null() {
            return Err(io::Error::last_os_error());
        }
        let mut all = Vec::new();
        let mut entry = first;
        while (*entry).if_index != 0 {
            let name = CStr::from_ptr((*entry).if_name)
                .to_string_lossy()
                .into_owned();
            all.push(((*entry).if_index, name));
            entry = entry.add(1);
        }
        libc::if_freenameindex(first);
        Ok(all)
    }
}

fn ifindex_i32(ifindex: u32) -> io::Result<i32> {
    i32::try_from(ifindex).map_err(|_too_big| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("ifindex {ifindex}"))
    })
}

/// Sends one request and gathers the replies until NLMSG_DONE or the kernel's ack; a
/// netlink error becomes the io::Error of its errno.
fn exchange(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = 1;
    let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    request.finalize();
    let mut buffer = vec![0; request.buffer_len()];
    request.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut replies = Vec::new();
    loop {
        let (bytes, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < bytes.len() {
            let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let length = reply.header.length as usize;
            match reply.payload {
                NetlinkPayload::InnerMessage(m) => replies.push(m),
                NetlinkPayload::Error(e) => match e.code {
                    Some(_) => return Err(e.to_io()),
                    None => return Ok(replies),
                },
                NetlinkPayload::Done(_) => return Ok(replies),
                _ => {}
            }
            if length == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a netlink reply of length 0",
                ));
            }
            offset += length.next_multiple_of(4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(priority: u16, handle: u32, kind: &str, name: Option<&str>) -> Filter {
        Filter {
            priority,
            handle,
            kind: kind.into(),
            name: name.map(Into::into),
            program_id: None,
        }
    }

    #[test]
    fn only_the_hook_s_program_at_mpathds_place_is_mpathds() {
        let spread = filter(PRIORITY, HANDLE, "bpf", Some(program_names::SPREAD));
        assert!(spread.is_mpathd(Hook::Egress));
        assert!(!spread.is_mpathd(Hook::Ingress));
        let probe_rx = filter(PRIORITY, HANDLE, "bpf", Some(program_names::PROBE_RX));
        assert!(probe_rx.is_mpathd(Hook::Ingress));
        assert!(!probe_rx.is_mpathd(Hook::Egress));
        // Another program, another kind, another place: someone else's.
        for hook in Hook::ALL {
            assert!(!filter(PRIORITY, HANDLE, "bpf", Some("other")).is_mpathd(hook));
            assert!(!filter(PRIORITY, HANDLE, "u32", None).is_mpathd(hook));
            assert!(!filter(PRIORITY, HANDLE + 1, "bpf", Some(hook.program())).is_mpathd(hook));
            assert!(!filter(1, HANDLE, "bpf", Some(hook.program())).is_mpathd(hook));
        }
        assert!(filter(PRIORITY, HANDLE, "u32", None).holds_mpathd_place());
    }

    #[test]
    fn reads_priority_handle_kind_and_name_from_a_dump_reply() {
        let mut message = TcMessage::with_index(3);
        message.header.handle = TcHandle::from(HANDLE);
        message.header.info = (u32::from(PRIORITY) << 16) | u32::from(ETH_P_ALL_BE);
        message.attributes = vec![
            TcAttribute::Kind("bpf".into()),
            TcAttribute::Options(vec![
                TcOption::Bpf(TcFilterBpfOption::ProgName(program_names::SPREAD.into())),
                TcOption::Bpf(TcFilterBpfOption::ProgId(42)),
            ]),
        ];
        assert_eq!(
            filter_of(&message),
            Some(Filter {
                program_id: Some(42),
                ..filter(PRIORITY, HANDLE, "bpf", Some(program_names::SPREAD))
            })
        );
        // The chain entry of a priority.
        message.header.handle = TcHandle::from(0);
        assert_eq!(filter_of(&message), None);
    }
}
