//! What runs on a lab NIC's hooks, read from the kernel: the programs on tc ingress and
//! egress (tcx links and cls_bpf filters alike) and whether an XDP program is attached.

use aya::programs::{SchedClassifier, TcAttachType};
use mpath_ctl::datapath::legacy_tc::{self, Hook};
use mpath_lab::Netns;

/// The programs on one NIC's hooks.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Program names on tc ingress, tcx first (the kernel keeps 15 characters of a name).
    pub ingress: Vec<String>,
    /// Program names on tc egress.
    pub egress: Vec<String>,
    /// An XDP program is attached (`ip link` shows it).
    pub xdp: bool,
}

impl Hooks {
    /// Whether mpathd's tc programs are on the NIC: the spreader on egress and the probe
    /// matcher on ingress.
    pub fn has_tc_programs(&self) -> bool {
        self.egress.iter().any(|n| n == "mpath_spread")
            && self.ingress.iter().any(|n| n == "mpath_probe_rx")
    }

    /// Whether any program of mpathd's is on the NIC.
    pub fn has_any_mpath_program(&self) -> bool {
        self.xdp
            || self
                .ingress
                .iter()
                .chain(&self.egress)
                .any(|n| n.starts_with("mpath_"))
    }
}

/// What runs on `nic`'s hooks in `host`.
pub fn hooks(host: &Netns, nic: &str) -> Hooks {
    let xdp = host
        .ip(&["link", "show", "dev", nic])
        .expect("ip link show")
        .contains("xdp");
    let ifindex = host.ifindex(nic).expect("the NIC's ifindex");
    let _inside = host.enter().expect("enter the lab host");
    let names = |hook: Hook, attach: TcAttachType| -> Vec<String> {
        // A kernel without tcx refuses the query: only filters can be there.
        let tcx = SchedClassifier::query_tcx(nic, attach).map_or_else(
            |_| Vec::new(),
            |(_, programs)| {
                programs
                    .iter()
                    .filter_map(|p| p.name_as_str().map(str::to_owned))
                    .collect()
            },
        );
        let filters = legacy_tc::filters(ifindex, hook)
            .expect("dump the NIC's filters")
            .into_iter()
            .filter_map(|f| f.name);
        tcx.into_iter().chain(filters).collect()
    };
    Hooks {
        ingress: names(Hook::Ingress, TcAttachType::Ingress),
        egress: names(Hook::Egress, TcAttachType::Egress),
        xdp,
    }
}
