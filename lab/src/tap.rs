//! A tap NIC in a lab namespace, whose carrier the test switches. The kernel treats a tap's
//! carrier like a physical NIC's: linkwatch reports a change at most once a second, so
//! within a second of another link event RTM_NEWLINK comes up to a second late, while the
//! driver's carrier (sysfs `carrier`) changes at once. A veth's changes are always reported
//! at once and cannot show this.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// `TUNSETIFF`: attach this file to the tap device named in the request.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETCARRIER`: switch the tap's carrier (no link event of its own: linkwatch reports it).
const TUNSETCARRIER: libc::c_ulong = 0x4004_54e2;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// A persistent tap NIC, up, with carrier while this handle holds its queue; it goes with its
/// namespace.
#[derive(Debug)]
pub struct Tap {
    name: String,
    queue: File,
}

impl Tap {
    /// Creates tap `name` in `ns`, brings it up and attaches a queue, which gives it carrier.
    pub(crate) fn create(ns: &Netns, name: &str) -> Result<Tap> {
        if name.len() >= libc::IFNAMSIZ {
            bail!("tap name {name:?} is too long");
        }
        ns.ip(&["tuntap", "add", "dev", name, "mode", "tap"])?;
        ns.ip(&["link", "set", name, "up"])?;
        // The tun device is found in the namespace of the thread that opens the file.
        let _inside = ns.enter()?;
        let queue = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        // struct ifreq: the name, then the flags as a short.
        let mut request = [0u8; 40];
        request[..name.len()].copy_from_slice(name.as_bytes());
        request[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI).to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which `request` is large enough for.
        if unsafe { libc::ioctl(queue.as_raw_fd(), TUNSETIFF, request.as_mut_ptr()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("attaching to tap {name}"));
        }
        Ok(Tap {
            name: name.to_owned(),
            queue,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Switches the carrier, as a driver does when the cable is pulled or plugged.
    pub fn set_carrier(&self, on: bool) -> Result<()> {
        let value = libc::c_int::from(on);
        // SAFETY: TUNSETCARRIER reads one int through the pointer.
        if unsafe { libc::ioctl(self.queue.as_raw_fd(), TUNSETCARRIER, &value) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("switching the carrier of tap {}", self.name));
        }
        Ok(())
    }
}
