//! A NIC's carrier as its driver reports it now, read from sysfs the way bonding's miimon
//! reads it (`netif_carrier_ok`). The kernel's link events (RTM_NEWLINK, and the nexthop
//! flush that follows) wait for linkwatch, which handles a physical NIC's carrier change at
//! most once a second; the attribute changes the moment the driver calls
//! `netif_carrier_off`.
//!
//! sysfs shows the network namespace it was mounted in, which need not be mpathd's (a daemon
//! entered into a namespace without its own /sys): a reader is made only when the NIC's
//! ifindex there is the one mpathd knows.

use std::{
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

/// Where sysfs lists the network interfaces.
const SYS_CLASS_NET: &str = "/sys/class/net";

/// The open `carrier` attribute of one NIC, read again in place each time.
#[derive(Debug)]
pub struct CarrierReader {
    file: File,
}

impl CarrierReader {
    /// The reader of NIC `ifname`, which must have `ifindex` in the sysfs at hand.
    pub fn open(ifname: &str, ifindex: u32) -> io::Result<CarrierReader> {
        Self::open_in(Path::new(SYS_CLASS_NET), ifname, ifindex)
    }

    fn open_in(class_net: &Path, ifname: &str, ifindex: u32) -> io::Result<CarrierReader> {
        let dir = nic_dir(class_net, ifname)?;
        let shown = std::fs::read_to_string(dir.join("ifindex"))?;
        if shown.trim().parse::<u32>().ok() != Some(ifindex) {
            return Err(io::Error::other(format!(
                "{} shows ifindex {} for {ifname}, not {ifindex}: /sys belongs to another \
                 network namespace",
                dir.display(),
                shown.trim()
            )));
        }
        Ok(CarrierReader {
            file: File::open(dir.join("carrier"))?,
        })
    }

    /// Whether the driver reports carrier. A NIC that is administratively down has none to
    /// report (the kernel answers EINVAL): no carrier.
    pub fn carrier(&self) -> io::Result<bool> {
        let mut text = [0u8; 4];
        match self.file.read_at(&mut text, 0) {
            Ok(n) => parse(&text[..n]),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// The sysfs directory of `ifname`, refusing names that would leave it.
fn nic_dir(class_net: &Path, ifname: &str) -> io::Result<PathBuf> {
    if ifname.is_empty() || ifname.contains('/') || ifname == "." || ifname == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{ifname:?} is no interface name"),
        ));
    }
    Ok(class_net.join(ifname))
}

fn parse(text: &[u8]) -> io::Result<bool> {
    match text {
        b"1\n" | b"1" => Ok(true),
        b"0\n" | b"0" => Ok(false),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "carrier reads {:?}, not 0 or 1",
                String::from_utf8_lossy(other)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake /sys/class/net with one NIC.
    fn class_net(ifindex: &str, carrier: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let nic = dir.path().join("eth0");
        std::fs::create_dir_all(&nic).unwrap();
        std::fs::write(nic.join("ifindex"), ifindex).unwrap();
        std::fs::write(nic.join("carrier"), carrier).unwrap();
        dir
    }

    #[test]
    fn reads_the_carrier_again_each_time() {
        let dir = class_net("7\n", "1\n");
        let reader = CarrierReader::open_in(dir.path(), "eth0", 7).unwrap();
        assert!(reader.carrier().unwrap());
        std::fs::write(dir.path().join("eth0/carrier"), "0\n").unwrap();
        assert!(!reader.carrier().unwrap());
    }

    #[test]
    fn refuses_a_nic_another_namespace_shows_and_names_that_leave_sysfs() {
        let dir = class_net("3\n", "1\n");
        let error = CarrierReader::open_in(dir.path(), "eth0", 7).unwrap_err();
        assert!(
            error.to_string().contains("another network namespace"),
            "{error}"
        );
        for name in ["", "..", "a/b"] {
            let error = CarrierReader::open_in(dir.path(), name, 7).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn anything_but_0_or_1_is_an_error() {
        assert!(parse(b"1\n").unwrap());
        assert!(!parse(b"0\n").unwrap());
        assert_eq!(
            parse(b"2\n").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(parse(b"").unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
