//! Forwarding database: (VLAN, MAC) -> port (and where behind the port: a VXLAN remote),
//! learned from source addresses on the ports that learn, aged out; static entries for the
//! VFs' MACs.

use super::PortId;
use crate::wire::MacAddr;
// hashbrown's default hasher (foldhash, seeded per map) instead of SipHash: the FDB lookup is
// on every frame's path (34 ns -> see docs/benchmarks.md), and the seed keeps a guest from
// choosing colliding source MACs.
use hashbrown::HashMap;

/// What the FDB is keyed by: a MAC in a VLAN (0 = untagged), as on the NICs' embedded bridges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbKey {
    pub vlan: u16,
    pub mac: MacAddr,
}

impl FdbKey {
    pub fn new(vlan: u16, mac: MacAddr) -> Self {
        FdbKey { vlan, mac }
    }
}

/// Where behind a port a MAC lives: the index of the VXLAN remote it came from; 0 for ports
/// with nothing behind them to choose between.
pub type Remote = u16;

/// One FDB entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdbEntry {
    pub port: PortId,
    pub remote: Remote,
    /// Seconds (data-plane clock) when the MAC was last seen as a source.
    pub last_seen: u64,
    /// Set by the host (a VF's MAC): never aged, never moved by learning.
    pub is_static: bool,
    /// A static entry of a VF without a port VLAN (its guest may tag, VGT): it also matches
    /// the MAC in VLANs that have no entry of their own.
    pub any_vlan: bool,
}

/// What learning a source address did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learned {
    /// Not a learnable address (multicast or zero), or the port does not learn.
    Ignored,
    /// A new entry.
    New,
    /// The entry existed on this port; its age was reset (and its remote updated).
    Refreshed,
    /// The MAC moved from another port.
    Moved { from: PortId },
    /// A static entry owns this MAC on another port; nothing was learned.
    Static,
    /// The FDB holds `MAX_LEARNED` learned entries: a new MAC is not learned (frames to it
    /// flood as unknown unicast, as before it was learned).
    Full,
}

/// The forwarding database.
#[derive(Debug)]
pub struct Fdb {
    entries: HashMap<FdbKey, FdbEntry>,
    aging_secs: u64,
    /// Where MACs were before their port went down or their static entry was withdrawn, so
    /// that learning them elsewhere next is reported as a move.
    departed: HashMap<FdbKey, PortId>,
    /// Static entries among `entries` (the rest are learned).
    statics: usize,
    max_learned: usize,
}

/// Most remembered departures.
const MAX_DEPARTED: usize = 4096;

/// Most learned entries (static ones, at most one per VF, come on top). Like a NIC's or a
/// bridge's (`fdb_max_learned`) limit: a sender of endless source MACs cannot grow the table;
/// what is not learned is counted (`fdb_learn_refused`) and floods as unknown unicast.
pub const MAX_LEARNED: usize = 32 * 1024;

impl Fdb {
    pub fn new(aging_secs: u64) -> Self {
        Self::with_limit(aging_secs, MAX_LEARNED)
    }

    /// An FDB that learns at most `max_learned` entries.
    pub fn with_limit(aging_secs: u64, max_learned: usize) -> Self {
        Fdb {
            entries: HashMap::with_capacity(1024),
            aging_secs,
            departed: HashMap::new(),
            statics: 0,
            max_learned,
        }
    }

    /// Learned (not static) entries.
    pub fn learned_len(&self) -> usize {
        self.entries.len() - self.statics
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

    /// Learns `key` on `port` (behind it at `remote`) at time `now`.
    pub fn learn(&mut self, key: FdbKey, port: PortId, remote: Remote, now: u64) -> Learned {
        let full = self.learned_len() >= self.max_learned;
        match self.entries.get_mut(&key) {
            Some(e) if e.port == port => {
                e.last_seen = now;
                e.remote = remote;
                Learned::Refreshed
            }
            Some(e) if e.is_static => Learned::Static,
            Some(e) => {
                let from = e.port;
                *e = FdbEntry::learned(port, remote, now);
                Learned::Moved { from }
            }
            None if full => Learned::Full,
            None => {
                let from = self.departed.remove(&key).filter(|p| *p != port);
                self.entries
                    .insert(key, FdbEntry::learned(port, remote, now));
                match from {
                    Some(from) => Learned::Moved { from },
                    None => Learned::New,
                }
            }
        }
    }

    fn remember_departure(&mut self, key: FdbKey, port: PortId) {
        if self.departed.len() >= MAX_DEPARTED {
            self.departed.clear();
        }
        self.departed.insert(key, port);
    }

    /// Adds (or replaces) the static entry of a VF's MAC in its port VLAN (`key.vlan` 0: no
    /// port VLAN, the entry matches in every VLAN without an entry of its own).
    pub fn add_static(&mut self, key: FdbKey, port: PortId) {
        let old = self.entries.insert(
            key,
            FdbEntry {
                port,
                remote: 0,
                last_seen: 0,
                is_static: true,
                any_vlan: key.vlan == 0,
            },
        );
        if !old.is_some_and(|e| e.is_static) {
            self.statics += 1;
        }
    }

    /// Removes every static entry of `port` (remembered as departures); returns how many.
    pub fn remove_statics_of(&mut self, port: PortId) -> usize {
        let gone: Vec<FdbKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.is_static && e.port == port)
            .map(|(k, _)| *k)
            .collect();
        for k in &gone {
            self.entries.remove(k);
            self.remember_departure(*k, port);
        }
        self.statics -= gone.len();
        gone.len()
    }

    /// The port (and remote) for `key`, if known and not aged out at `now`.
    #[inline]
    pub fn lookup(&self, key: FdbKey, now: u64) -> Option<(PortId, Remote)> {
        match self.entries.get(&key) {
            Some(e) if e.is_static || now.saturating_sub(e.last_seen) < self.aging_secs => {
                Some((e.port, e.remote))
            }
            Some(_) => None,
            None if key.vlan != 0 => self
                .entries
                .get(&FdbKey::new(0, key.mac))
                .filter(|e| e.any_vlan)
                .map(|e| (e.port, e.remote)),
            None => None,
        }
    }

    /// Whether `key` has a static entry.
    pub fn is_static(&self, key: FdbKey) -> bool {
        self.entries.get(&key).is_some_and(|e| e.is_static)
    }

    /// Removes the learned (not static) entries of `port`.
    pub fn flush_port(&mut self, port: PortId) {
        let gone: Vec<FdbKey> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.is_static && e.port == port)
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            self.entries.remove(&k);
            self.remember_departure(k, port);
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

    /// All entries, sorted by port, VLAN then MAC.
    pub fn entries(&self) -> Vec<(FdbKey, FdbEntry)> {
        let mut v: Vec<_> = self.entries.iter().map(|(k, e)| (*k, *e)).collect();
        v.sort_by_key(|(k, e)| (e.port, *k));
        v
    }
}

impl FdbEntry {
    fn learned(port: PortId, remote: Remote, now: u64) -> Self {
        FdbEntry {
            port,
            remote,
            last_seen: now,
            is_static: false,
            any_vlan: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(i: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, i, 1])
    }

    fn k(i: u8) -> FdbKey {
        FdbKey::new(0, mac(i))
    }

    #[test]
    fn learn_refresh_move() {
        let mut f = Fdb::new(300);
        assert_eq!(f.learn(k(1), PortId(0), 0, 0), Learned::New);
        assert_eq!(f.learn(k(1), PortId(0), 3, 5), Learned::Refreshed);
        assert_eq!(
            f.lookup(k(1), 5),
            Some((PortId(0), 3)),
            "the remote follows"
        );
        assert_eq!(
            f.learn(k(1), PortId(2), 0, 6),
            Learned::Moved { from: PortId(0) }
        );
        assert_eq!(f.lookup(k(1), 6), Some((PortId(2), 0)));
    }

    #[test]
    fn the_vlan_is_part_of_the_key() {
        let mut f = Fdb::new(300);
        f.learn(FdbKey::new(10, mac(1)), PortId(300), 0, 0);
        assert_eq!(
            f.learn(FdbKey::new(20, mac(1)), PortId(301), 0, 0),
            Learned::New
        );
        assert_eq!(f.lookup(FdbKey::new(10, mac(1)), 0), Some((PortId(300), 0)));
        assert_eq!(f.lookup(FdbKey::new(20, mac(1)), 0), Some((PortId(301), 0)));
        assert_eq!(f.lookup(FdbKey::new(30, mac(1)), 0), None);
        assert_eq!(f.lookup(k(1), 0), None);
    }

    #[test]
    fn a_vf_without_port_vlan_matches_in_other_vlans_unless_they_have_an_entry() {
        let mut f = Fdb::new(300);
        f.add_static(k(1), PortId(1));
        f.add_static(FdbKey::new(100, mac(2)), PortId(2));
        assert_eq!(f.lookup(FdbKey::new(7, mac(1)), 0), Some((PortId(1), 0)));
        assert_eq!(
            f.lookup(FdbKey::new(7, mac(2)), 0),
            None,
            "port VLAN 100 only"
        );
        assert_eq!(f.lookup(k(2), 0), None);
        f.learn(FdbKey::new(7, mac(1)), PortId(300), 0, 0);
        assert_eq!(f.lookup(FdbKey::new(7, mac(1)), 0), Some((PortId(300), 0)));
    }

    #[test]
    fn entries_age_out() {
        let mut f = Fdb::new(10);
        f.learn(k(1), PortId(0), 0, 0);
        f.add_static(k(2), PortId(1));
        assert_eq!(f.lookup(k(1), 9), Some((PortId(0), 0)));
        assert_eq!(f.lookup(k(1), 10), None);
        assert_eq!(f.age(10), 1);
        assert_eq!(f.lookup(k(2), 1_000_000), Some((PortId(1), 0)));
    }

    #[test]
    fn a_withdrawn_mac_learned_elsewhere_is_a_move() {
        let mut f = Fdb::new(300);
        f.add_static(k(1), PortId(0));
        assert_eq!(f.remove_statics_of(PortId(0)), 1);
        assert_eq!(
            f.learn(k(1), PortId(254), 0, 1),
            Learned::Moved { from: PortId(0) }
        );
        f.learn(k(2), PortId(3), 0, 1);
        f.flush_port(PortId(3));
        assert_eq!(
            f.learn(k(2), PortId(3), 0, 2),
            Learned::New,
            "back on the same port"
        );
    }

    #[test]
    fn static_entries_do_not_move() {
        let mut f = Fdb::new(300);
        f.add_static(k(1), PortId(0));
        assert_eq!(f.learn(k(1), PortId(4), 0, 1), Learned::Static);
        assert_eq!(f.lookup(k(1), 1), Some((PortId(0), 0)));
        assert_eq!(f.remove_statics_of(PortId(0)), 1);
        assert_eq!(f.lookup(k(1), 1), None);
    }

    #[test]
    fn learning_stops_at_the_limit_and_static_entries_do_not_count() {
        let mut f = Fdb::with_limit(300, 3);
        f.add_static(k(100), PortId(0));
        f.add_static(k(100), PortId(0));
        for i in 1..=3 {
            assert_eq!(f.learn(k(i), PortId(7), 0, 0), Learned::New);
        }
        assert_eq!(f.learn(k(4), PortId(7), 0, 0), Learned::Full);
        assert_eq!(f.lookup(k(4), 0), None);
        // Known MACs still refresh and move when full.
        assert_eq!(f.learn(k(1), PortId(7), 0, 1), Learned::Refreshed);
        assert_eq!(
            f.learn(k(2), PortId(8), 0, 1),
            Learned::Moved { from: PortId(7) }
        );
        assert_eq!((f.len(), f.learned_len()), (4, 3));
        // Room again once entries go, however they go.
        f.flush_port(PortId(8));
        assert_eq!(f.learn(k(4), PortId(7), 0, 2), Learned::New);
        f.remove_statics_of(PortId(0));
        assert_eq!((f.len(), f.learned_len()), (3, 3));
        assert_eq!(f.age(400), 3);
        assert_eq!(f.learned_len(), 0);
    }
}
