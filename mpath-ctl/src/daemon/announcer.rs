//! Telling the peers where an address is reached now: a gratuitous ARP (IPv4) or an
//! unsolicited neighbour advertisement (IPv6) at once, then repeated, since a peer may miss
//! one.

use std::{net::IpAddr, time::Instant};

use crate::net::announce::{ANNOUNCE_INTERVAL, ARP_ANNOUNCEMENTS, NA_ANNOUNCEMENTS};

/// One announcement: `addr` is reached at `mac` on `ifindex`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Announcement {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub addr: IpAddr,
}

/// The repeats still to send; the daemon sends what [`Announcer::announce`] and
/// [`Announcer::due`] hand it.
#[derive(Default)]
pub(super) struct Announcer {
    repeats: Vec<Repeat>,
}

struct Repeat {
    announcement: Announcement,
    remaining: u32,
    next: Instant,
}

impl Announcer {
    /// Schedules the repeats of a new announcement and returns it, to be sent at once. An
    /// earlier announcement of the same address still repeating is replaced: the address
    /// moved again.
    pub(super) fn announce(&mut self, announcement: Announcement, now: Instant) -> Announcement {
        let total = match announcement.addr {
            IpAddr::V4(_) => ARP_ANNOUNCEMENTS,
            IpAddr::V6(_) => NA_ANNOUNCEMENTS,
        };
        self.repeats
            .retain(|r| r.announcement.addr != announcement.addr);
        if total > 1 {
            self.repeats.push(Repeat {
                announcement,
                remaining: total - 1,
                next: now + ANNOUNCE_INTERVAL,
            });
        }
        announcement
    }

    /// The repeats due at `now`, to be sent.
    pub(super) fn due(&mut self, now: Instant) -> Vec<Announcement> {
        let mut due = Vec::new();
        for r in self.repeats.iter_mut().filter(|r| r.next <= now) {
            due.push(r.announcement);
            r.remaining -= 1;
            r.next = now + ANNOUNCE_INTERVAL;
        }
        self.repeats.retain(|r| r.remaining > 0);
        due
    }

    /// When the next repeat is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.repeats.iter().map(|r| r.next).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    fn on(ifindex: u32, addr: IpAddr) -> Announcement {
        Announcement {
            ifindex,
            mac: [2, 0, 0, 0, 0, ifindex as u8],
            addr,
        }
    }

    /// Sends everything due from `start` until nothing is left, stepping by the interval.
    fn run(announcer: &mut Announcer, start: Instant) -> Vec<(Duration, Announcement)> {
        let mut sent = Vec::new();
        while let Some(next) = announcer.next_due() {
            assert!(next - start <= Duration::from_secs(60), "repeats never end");
            sent.extend(announcer.due(next).into_iter().map(|a| (next - start, a)));
        }
        sent
    }

    #[test]
    fn an_announcement_is_repeated_the_family_s_number_of_times_an_interval_apart() {
        let now = Instant::now();
        let v4 = on(1, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20)));
        let v6 = on(
            1,
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 20)),
        );
        let mut announcer = Announcer::default();
        assert_eq!(
            announcer.announce(v4, now),
            v4,
            "the first goes out at once"
        );
        announcer.announce(v6, now);
        assert!(announcer.due(now).is_empty(), "nothing repeated at once");
        let sent = run(&mut announcer, now);
        let times = |a: Announcement| -> Vec<Duration> {
            sent.iter()
                .filter(|(_, s)| *s == a)
                .map(|(t, _)| *t)
                .collect()
        };
        let expected =
            |total: u32| -> Vec<Duration> { (1..total).map(|i| ANNOUNCE_INTERVAL * i).collect() };
        assert_eq!(times(v4), expected(ARP_ANNOUNCEMENTS));
        assert_eq!(times(v6), expected(NA_ANNOUNCEMENTS));
    }

    #[test]
    fn an_address_that_moves_again_is_announced_from_its_new_nic_only() {
        let now = Instant::now();
        let addr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20));
        let mut announcer = Announcer::default();
        announcer.announce(on(1, addr), now);
        let later = now + ANNOUNCE_INTERVAL / 2;
        announcer.announce(on(2, addr), later);
        let sent = run(&mut announcer, later);
        assert!(sent.iter().all(|(_, a)| a.ifindex == 2));
        assert_eq!(sent.len() as u32, ARP_ANNOUNCEMENTS - 1);
    }
}
