//! A NIC's carrier as its driver reports it now, read from sysfs the way bonding's miimon
//! reads it (`netif_carrier_ok`). The kernel's link events (RTM_NEWLINK, and the nexthop
//! flush that follows) wait for linkwatch, which handles a physical NIC's carrier change at
//! most once a second; the attribute changes the moment the driver calls
//! `netif_carrier_off`.
//!
//! sysfs shows the network namespace it was mounted in, which need not be mpathd's (a daemon
//! entered into a namespace without its own /sys): a reader is made only when the NIC's
//! ifindex there is the one mpathd knows.
//!
//! [`CarrierWatch`] reads on a thread of its own: waking the daemon's event loop a hundred
//! times a second cost an idle mpathd about 20 times its own CPU (measured, see
//! BENCHMARKS.md), a sleeping thread's reads a small part of that.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
    thread,
    time::Duration,
};

use tokio::sync::mpsc;

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

/// The NICs whose carrier a [`CarrierWatch`] reads, by ifindex.
#[derive(Debug, Default)]
struct Watched {
    /// `None` stops the reads.
    period: Option<Duration>,
    nics: BTreeMap<u32, WatchedNic>,
}

#[derive(Debug)]
struct WatchedNic {
    reader: CarrierReader,
    /// Read only while the daemon counts the NIC's carrier as up: a loss is reported once,
    /// and a returning carrier is the kernel's link event's to report.
    armed: bool,
}

/// Reads the carrier of the NICs it is given every `period` on its own thread and reports
/// each NIC whose carrier went, once, until it is armed again.
#[derive(Debug)]
pub struct CarrierWatch {
    watched: Arc<Mutex<Watched>>,
    losses: Option<mpsc::UnboundedReceiver<u32>>,
    /// The reading thread, parked while reading is off.
    reader: thread::Thread,
}

impl CarrierWatch {
    /// Starts the reading thread, which ends when the watch is dropped.
    pub fn start(period: Option<Duration>) -> io::Result<CarrierWatch> {
        let watched = Arc::new(Mutex::new(Watched {
            period,
            nics: BTreeMap::new(),
        }));
        let (report, losses) = mpsc::unbounded_channel();
        let weak = Arc::downgrade(&watched);
        let reader = thread::Builder::new()
            .name("mpathd-carrier".into())
            .spawn(move || read_until_dropped(&weak, &report))?
            .thread()
            .clone();
        Ok(CarrierWatch {
            watched,
            losses: Some(losses),
            reader,
        })
    }

    /// The NICs whose carrier went, for the one reader there is.
    pub fn take_losses(&mut self) -> Option<mpsc::UnboundedReceiver<u32>> {
        self.losses.take()
    }

    /// How often to read; `None`: never.
    pub fn set_period(&self, period: Option<Duration>) {
        self.lock().period = period;
        self.reader.unpark();
    }

    /// Reads NIC `ifindex`'s carrier through `reader` from now on, while armed.
    pub fn watch(&self, ifindex: u32, reader: CarrierReader, armed: bool) {
        self.lock()
            .nics
            .insert(ifindex, WatchedNic { reader, armed });
    }

    /// Whether NIC `ifindex`'s carrier is to be read: while the daemon counts it as up.
    pub fn arm(&self, ifindex: u32, armed: bool) {
        if let Some(nic) = self.lock().nics.get_mut(&ifindex) {
            nic.armed = armed;
        }
    }

    /// Stops reading NIC `ifindex`'s carrier.
    pub fn forget(&self, ifindex: u32) {
        self.lock().nics.remove(&ifindex);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for CarrierWatch {
    /// Wakes a parked reader, which then finds the watch gone and ends.
    fn drop(&mut self) {
        self.reader.unpark();
    }
}

/// The reading thread: reads every armed NIC each period and reports the ones without
/// carrier, until the watch is dropped; parked while reading is off.
fn read_until_dropped(watched: &Weak<Mutex<Watched>>, report: &mpsc::UnboundedSender<u32>) {
    loop {
        let Some(period) = watched
            .upgrade()
            .map(|w| w.lock().unwrap_or_else(PoisonError::into_inner).period)
        else {
            return;
        };
        let Some(period) = period else {
            thread::park();
            continue;
        };
        thread::sleep(period);
        let Some(watched) = watched.upgrade() else {
            return;
        };
        let mut watched = watched.lock().unwrap_or_else(PoisonError::into_inner);
        for (ifindex, nic) in watched.nics.iter_mut().filter(|(_, nic)| nic.armed) {
            // An unreadable carrier says nothing; the kernel's link events still come.
            if let Ok(false) = nic.reader.carrier() {
                nic.armed = false;
                if report.send(*ifindex).is_err() {
                    return;
                }
            }
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

    #[tokio::test]
    async fn a_watch_reports_a_lost_carrier_once_until_armed_again() {
        let dir = class_net("7\n", "1\n");
        let mut watch = CarrierWatch::start(Some(Duration::from_millis(1))).unwrap();
        let mut losses = watch.take_losses().unwrap();
        let reader = CarrierReader::open_in(dir.path(), "eth0", 7).unwrap();
        watch.watch(7, reader, true);
        std::fs::write(dir.path().join("eth0/carrier"), "0\n").unwrap();
        assert_eq!(losses.recv().await, Some(7));
        // Disarmed by the loss: nothing more until the daemon arms it again.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(losses.try_recv().is_err());
        watch.arm(7, true);
        assert_eq!(losses.recv().await, Some(7));
        // Switched off and on again: reads again.
        watch.set_period(None);
        std::fs::write(dir.path().join("eth0/carrier"), "1\n").unwrap();
        watch.arm(7, true);
        tokio::time::sleep(Duration::from_millis(20)).await;
        std::fs::write(dir.path().join("eth0/carrier"), "0\n").unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(losses.try_recv().is_err(), "off: no reads");
        watch.set_period(Some(Duration::from_millis(1)));
        assert_eq!(losses.recv().await, Some(7));
        // Forgotten: no report.
        watch.arm(7, true);
        watch.forget(7);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(losses.try_recv().is_err());
        // Dropping the watch ends the thread, which closes the channel.
        drop(watch);
        assert_eq!(losses.recv().await, None);
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
