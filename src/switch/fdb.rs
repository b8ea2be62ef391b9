//! Forwarding database: MAC -> port, learned from source addresses, aged out.

use super::PortId;
use crate::wire::MacAddr;
// hashbrown's default hasher (foldhash, seeded per map) instead of SipHash: the FDB lookup is
// on every frame's path (34 ns -> see docs/benchmarks.md), and the seed keeps a guest from
// choosing colliding source MACs.
use hashbrown::HashMap;

/// One FDB entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: PortId,
    /// Seconds (data-plane clock) when the MAC was last seen as a source.
    pub last_seen: u64,
    /// Set by the host (a VF's MAC): never aged, never moved by learning.
    pub is_static: bool,
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Not a learnable address (multicast or zero).
    Ignored,
    /// A new entry.
    New,
    /// The entry existed on this port; its age was reset.
    Refreshed,
    /// The MAC moved from another port.
    Moved { from: PortId },
    /// A static entry owns this MAC on another port; nothing was learned.
    Static,
}

/// The forwarding database.
#[derive(Debug)]
pub struct Fdb {
    entries: HashMap<MacAddr, FdbEntry>,
    aging_secs: u64,
    /// Where MACs were before their port went down or their static entry was withdrawn, so
    /// that learning them elsewhere next is reported as a move.
    departed: HashMap<MacAddr, PortId>,
}

/// Most remembered departures.
const MAX_DEPARTED: usize = 4096;

impl Fdb {
    pub fn new(aging_secs: u64) -> Self {
        Fdb {
            entries: HashMap::with_capacity(1024),
            aging_secs,
            departed: HashMap::new(),
        }
    }

    pub fn aging_secs(&self) -> u64 {
        self.aging_secs
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Learns `mac` on `port` at time `now`.
    pub fn learn(&mut self, mac: MacAddr, port: PortId, now: u64) -> Learned {
        match self.entries.get_mut(&mac) {
            Some(e) if e.port == port => {
                e.last_seen = now;
                Learned::Refreshed
            }
            Some(e) if e.is_static => Learned::Static,
            Some(e) => {
                let from = e.port;
                *e = FdbEntry {
                    port,
                    last_seen: now,
                    is_static: false,
                };
                Learned::Moved { from }
            }
            None => {
                let from = self.departed.remove(&mac).filter(|p| *p != port);
                self.entries.insert(
                    mac,
                    FdbEntry {
                        port,
                        last_seen: now,
                        is_static: false,
                    },
                );
                match from {
                    Some(from) => Learned::Moved { from },
                    None => Learned::New,
                }
            }
        }
    }

    fn remember_departure(&mut self, mac: MacAddr, port: PortId) {
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.clear();
        }
        self.departed.insert(mac, port);
    }

    /// Adds (or replaces) a static entry.
    pub fn add_static(&mut self, mac: MacAddr, port: PortId) {
        self.entries.insert(
            mac,
            FdbEntry {
                port,
                last_seen: 0,
                is_static: true,
            },
        );
    }

    /// Removes every static entry of `port` (remembered as departures); returns how many.
    pub fn remove_statics_of(&mut self, port: PortId) -> usize {
        let gone: Vec<MacAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| e.is_static && e.port == port)
            .map(|(m, _)| *m)
            .collect();
        for m in &gone {
            self.entries.remove(m);
            self.remember_departure(*m, port);
        }
        gone.len()
    }

    /// The port for `mac`, if known and not aged out at `now`.
    pub fn lookup(&self, mac: MacAddr, now: u64) -> Option<PortId> {
        let e = self.entries.get(&mac)?;
        if e.is_static || now.saturating_sub(e.last_seen) < self.aging_secs {
            Some(e.port)
        } else {
            None
        }
    }

    /// Removes the learned (not static) entries of `port`.
    pub fn flush_port(&mut self, port: PortId) {
        let gone: Vec<MacAddr> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.is_static && e.port == port)
            .map(|(m, _)| *m)
            .collect();
        for m in gone {
            self.entries.remove(&m);
            self.remember_departure(m, port);
        }
    }

    /// Removes every learned entry.
    pub fn flush(&mut self) {
        self.entries.retain(|_, e| e.is_static);
    }

    /// Removes learned entries not seen for the aging time; returns how many.
    pub fn age(&mut self, now: u64) -> usize {
        let before = self.entries.len();
        let aging = self.aging_secs;
        self.entries
            .retain(|_, e| e.is_static || now.saturating_sub(e.last_seen) < aging);
        before - self.entries.len()
    }

    /// All entries, sorted by port then MAC.
    pub fn entries(&self) -> Vec<(MacAddr, FdbEntry)> {
        let mut v: Vec<_> = self.entries.iter().map(|(m, e)| (*m, *e)).collect();
        v.sort_by_key(|(m, e)| (e.port, *m));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, i, 1])
    }

    #[test]
    fn learn_refresh_move() {
        let mut f = Fdb::new(300);
        assert_eq!(f.learn(mac(1), PortId(0), 0), Learned::New);
        assert_eq!(f.learn(mac(1), PortId(0), 5), Learned::Refreshed);
        assert_eq!(
            f.learn(mac(1), PortId(2), 6),
            Learned::Moved { from: PortId(0) }
        );
        assert_eq!(f.lookup(mac(1), 6), Some(PortId(2)));
    }

    #[test]
    fn entries_age_out() {
        let mut f = Fdb::new(10);
        f.learn(mac(1), PortId(0), 0);
        f.add_static(mac(2), PortId(1));
        assert_eq!(f.lookup(mac(1), 9), Some(PortId(0)));
        assert_eq!(f.lookup(mac(1), 10), None);
        assert_eq!(f.age(10), 1);
        assert_eq!(f.lookup(mac(2), 1_000_000), Some(PortId(1)));
    }

    #[test]
    fn a_withdrawn_mac_learned_elsewhere_is_a_move() {
        let mut f = Fdb::new(300);
        f.add_static(mac(1), PortId(0));
        assert_eq!(f.remove_statics_of(PortId(0)), 1);
        assert_eq!(
            f.learn(mac(1), PortId(254), 1),
            Learned::Moved { from: PortId(0) }
        );
        f.learn(mac(2), PortId(3), 1);
        f.flush_port(PortId(3));
        assert_eq!(
            f.learn(mac(2), PortId(3), 2),
            Learned::New,
            "back on the same port"
        );
    }

    #[test]
    fn static_entries_do_not_move() {
        let mut f = Fdb::new(300);
        f.add_static(mac(1), PortId(0));
        assert_eq!(f.learn(mac(1), PortId(4), 1), Learned::Static);
        assert_eq!(f.lookup(mac(1), 1), Some(PortId(0)));
        assert_eq!(f.remove_statics_of(PortId(0)), 1);
        assert_eq!(f.lookup(mac(1), 1), None);
    }
}
