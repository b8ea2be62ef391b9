//! The remote VTEPs of a VXLAN uplink: their addresses, what was sent to and received from
//! each, and when each was last heard from (for `carrier=peer`).

use crate::stats::Counter;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Most remotes one uplink floods to (head-end replication); remote indices stay below the
/// pipeline's own marks (`switch::ALL_REMOTES` and the one before it).
pub const MAX_REMOTES: usize = 1024;

/// One remote's counters, in datagrams and inner-frame bytes.
#[derive(Debug, Default)]
pub struct RemoteCounters {
    /// Frames received from the remote and handed to the switch.
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    /// Datagrams the kernel accepted for the remote.
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
}

/// One remote VTEP.
#[derive(Debug)]
pub struct Remote {
    pub addr: SocketAddr,
    pub counters: RemoteCounters,
    /// Milliseconds since the table was made when a datagram last came from it, plus 1 (0:
    /// never).
    last_heard: AtomicU64,
    /// No other remote has this IP: a datagram from it with another source port is this
    /// remote's (Linux's vxlan sends from a port hashed from the inner flow).
    ip_unique: bool,
}

/// The remotes, in the order the user gave them; a remote's index is its place.
#[derive(Debug)]
pub struct Remotes {
    list: Box<[Remote]>,
    start: Instant,
}

impl Remotes {
    /// The table for `addrs` (at most `MAX_REMOTES`: the spec parser refuses more).
    pub fn new(addrs: &[SocketAddr]) -> Self {
        let list = addrs
            .iter()
            .take(MAX_REMOTES)
            .map(|a| Remote {
                addr: *a,
                counters: RemoteCounters::default(),
                last_heard: AtomicU64::new(0),
                ip_unique: addrs.iter().filter(|b| b.ip() == a.ip()).count() == 1,
            })
            .collect();
        Remotes {
            list,
            start: Instant::now(),
        }
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&Remote> {
        self.list.get(i)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Remote> {
        self.list.iter()
    }

    /// The remote a datagram from `src` came from: the one with that address and port, else
    /// the only one with that IP. `None`: not a remote of ours (the datagram is dropped).
    #[inline]
    pub fn classify(&self, src: SocketAddr) -> Option<u16> {
        let exact = self.list.iter().position(|r| r.addr == src);
        let i = exact.or_else(|| {
            self.list
                .iter()
                .position(|r| r.ip_unique && r.addr.ip() == src.ip())
        })?;
        u16::try_from(i).ok()
    }

    /// Remote `i` was heard from just now.
    #[inline]
    pub fn heard(&self, i: usize) {
        if let Some(r) = self.list.get(i) {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            r.last_heard.store(ms.saturating_add(1), Ordering::Relaxed);
        }
    }

    /// Whether some remote was heard from within `timeout`.
    pub fn any_heard_within(&self, timeout: Duration) -> bool {
        let now = self.start.elapsed();
        self.list
            .iter()
            .any(|r| match r.last_heard.load(Ordering::Relaxed) {
                0 => false,
                t => now.saturating_sub(Duration::from_millis(t - 1)) < timeout,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn datagrams_are_matched_to_remotes_by_address_then_by_unique_ip() {
        let r = Remotes::new(&[
            a("127.0.0.1:4790"),
            a("127.0.0.1:4791"),
            a("198.18.0.2:4789"),
        ]);
        assert_eq!(r.classify(a("127.0.0.1:4791")), Some(1));
        assert_eq!(
            r.classify(a("127.0.0.1:5555")),
            None,
            "two remotes share the IP"
        );
        assert_eq!(
            r.classify(a("198.18.0.2:38013")),
            Some(2),
            "Linux's hashed port"
        );
        assert_eq!(r.classify(a("198.18.0.3:4789")), None);
    }

    #[test]
    fn heard_within_follows_the_last_datagram() {
        let r = Remotes::new(&[a("127.0.0.1:4790")]);
        assert!(!r.any_heard_within(Duration::from_secs(3)), "never heard");
        r.heard(0);
        assert!(r.any_heard_within(Duration::from_secs(3)));
        std::thread::sleep(Duration::from_millis(30));
        assert!(!r.any_heard_within(Duration::from_millis(10)));
    }
}
