//! The guest lab with a real driver: a guest whose NICs are virtio_net devices, for the
//! `virtio` test binary (mpath-lab's `VirtioLab`). Their taps hang on a bridge in a network
//! namespace of this host that exists for the run (qemu runs inside it), so the host's own
//! network is not touched. Tests cut a NIC's carrier with QMP `set_link`, which they send
//! through a virtio-serial port; the relay here passes `set_link` on to qemu's QMP socket
//! and answers with qemu's reply.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use mpath_lab::{NAMESPACE_PREFIX, Netns, QMP_PORT, VIRTIO_NICS_ENV};
use serde_json::{Value, json};

/// The guest's virtio NICs by role (`r0` the lab router's, `h0`.. the host's) with extra
/// `-device` properties. h3 does not let the guest turn its receive offloads off, as some
/// hypervisors do not: virtio_net refuses native XDP there.
const NICS: &[(&str, &str)] = &[
    ("r0", ""),
    ("h0", ""),
    ("h1", ""),
    ("h2", ""),
    ("h3", "ctrl_guest_offloads=off"),
];

/// The bridge outside the guest that every NIC's tap is a port of.
const BRIDGE: &str = "br0";

/// Jumbo frames pass the bridge, so a lab may raise its NICs' MTU to 9000.
const MTU: &str = "9000";

/// The guest's virtio NICs, plugged into a bridge in a network namespace of this host, and
/// the sockets of qemu's QMP and of the virtio-serial port the guest's tests send it through.
/// The namespace (with qemu, if still running inside) and the sockets go on drop.
pub(crate) struct VirtioNet {
    switch: Netns,
    sockets: PathBuf,
}

impl VirtioNet {
    /// The namespace with the bridge and a multi-queue tap per NIC, up, which qemu attaches
    /// to by name.
    pub(crate) fn create() -> anyhow::Result<VirtioNet> {
        let switch = Netns::create(format!(
            "{NAMESPACE_PREFIX}{}-virtio-switch",
            std::process::id()
        ))?;
        let sockets = std::env::temp_dir().join(format!("mpath-xtask-{}", std::process::id()));
        let _: Result<_, _> = fs::remove_dir_all(&sockets);
        fs::create_dir_all(&sockets)?;
        let net = VirtioNet { switch, sockets };
        // A layer-2 device: nothing of its own on the lab's link (no router solicitations,
        // no MLD reports).
        net.switch.run(&[
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && \
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
        ])?;
        net.switch.ip(&[
            "link",
            "add",
            BRIDGE,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
            "mcast_snooping",
            "0",
        ])?;
        for (i, _) in NICS.iter().enumerate() {
            let tap = tap(i);
            net.switch
                .ip(&["tuntap", "add", "dev", &tap, "mode", "tap", "multi_queue"])?;
            net.switch.ip(&[
                "link", "set", "dev", &tap, "mtu", MTU, "master", BRIDGE, "up",
            ])?;
        }
        net.switch
            .ip(&["link", "set", "dev", BRIDGE, "mtu", MTU, "up"])?;
        Ok(net)
    }

    /// The namespace qemu runs in, to find the taps.
    pub(crate) fn netns(&self) -> &Netns {
        &self.switch
    }

    /// qemu's arguments for the NICs, the virtio-serial port and the QMP socket.
    pub(crate) fn qemu_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (i, (role, extra)) in NICS.iter().enumerate() {
            args.extend([
                "-netdev".to_string(),
                format!(
                    "tap,id={role},ifname={},script=no,downscript=no,queues=4",
                    tap(i)
                ),
            ]);
            // No iPXE ROM: it only slows the boot.
            let mut device = format!(
                "virtio-net-pci,netdev={role},mac={},mq=on,vectors=10,romfile=",
                mac(i)
            );
            if !extra.is_empty() {
                device.push_str(&format!(",{extra}"));
            }
            args.extend(["-device".to_string(), device]);
        }
        args.extend([
            "-qmp".to_string(),
            format!("unix:{},server=on,wait=off", self.qmp().display()),
            "-chardev".to_string(),
            format!(
                "socket,id=mpathqmp,path={},server=on,wait=off",
                self.port().display()
            ),
            "-device".to_string(),
            "virtio-serial-pci".to_string(),
            "-device".to_string(),
            format!("virtserialport,chardev=mpathqmp,name={QMP_PORT}"),
        ]);
        args
    }

    /// The environment variable that names the NICs to the guest's tests.
    pub(crate) fn guest_env() -> String {
        let nics: Vec<String> = NICS
            .iter()
            .enumerate()
            .map(|(i, (role, _))| format!("{role}={}", mac(i)))
            .collect();
        format!("{VIRTIO_NICS_ENV}={}", nics.join(","))
    }

    /// Relays the guest's QMP commands to qemu (just started) until qemu exits.
    pub(crate) fn start_relay(&self) {
        let (qmp, port) = (self.qmp(), self.port());
        std::thread::spawn(move || {
            if let Err(error) = relay(&qmp, &port) {
                eprintln!("xtask: QMP relay: {error:#}");
            }
        });
    }

    fn qmp(&self) -> PathBuf {
        self.sockets.join("qmp.sock")
    }

    fn port(&self) -> PathBuf {
        self.sockets.join("port.sock")
    }
}

impl Drop for VirtioNet {
    fn drop(&mut self) {
        let _: Result<_, _> = fs::remove_dir_all(&self.sockets);
    }
}

fn tap(i: usize) -> String {
    format!("vt{i}")
}

fn mac(i: usize) -> String {
    format!("52:54:00:6d:70:{i:02x}")
}

/// Passes each `set_link` line the guest writes to qemu's QMP and writes qemu's reply back
/// (events skipped); anything else is refused, so a test cannot stop or reconfigure the guest.
fn relay(qmp: &Path, port: &Path) -> anyhow::Result<()> {
    let qmp = connect(qmp)?;
    let guest = connect(port)?;
    let mut from_qmp = BufReader::new(qmp.try_clone()?);
    let mut to_qmp = qmp;
    let mut greeting = String::new();
    from_qmp.read_line(&mut greeting)?;
    writeln!(to_qmp, "{}", json!({"execute": "qmp_capabilities"}))?;
    reply(&mut from_qmp)?;
    let mut to_guest = guest.try_clone()?;
    for line in BufReader::new(guest).lines() {
        let Ok(command) = serde_json::from_str::<Value>(&line?) else {
            continue;
        };
        let answer = if command["execute"] == "set_link" {
            writeln!(to_qmp, "{command}")?;
            reply(&mut from_qmp)?
        } else {
            json!({
                "error": {"class": "GenericError", "desc": "the relay passes set_link only"},
                "id": command["id"],
            })
        };
        writeln!(to_guest, "{answer}")?;
    }
    Ok(())
}

/// The next reply (`return` or `error`) from QMP, events passed over.
fn reply(from_qmp: &mut impl std::io::BufRead) -> anyhow::Result<Value> {
    loop {
        let mut line = String::new();
        if from_qmp.read_line(&mut line)? == 0 {
            bail!("qemu closed its QMP socket");
        }
        let message: Value = serde_json::from_str(&line)
            .with_context(|| format!("QMP sent something else than JSON: {line:?}"))?;
        if message.get("return").is_some() || message.get("error").is_some() {
            return Ok(message);
        }
    }
}

/// Connects to a socket of qemu's, waiting for qemu to make it.
fn connect(path: &Path) -> anyhow::Result<UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(path) {
            Ok(stream) => return Ok(stream),
            Err(error) if Instant::now() > deadline => {
                return Err(error).with_context(|| format!("connecting to {}", path.display()));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
