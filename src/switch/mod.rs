//! The embedded L2 switch (VEB): every forwarding decision, on frame header copies.
//!
//! - this file: `Switch` (the FDB and its upkeep: learning, static VF MACs pinned at attach,
//!   withdrawn at detach, aging) and the per-frame `forward` verdict.
//! - `fdb.rs`: the forwarding database: learning, aging, static entries, moves.
//! - `forward.rs`: fan-out of a verdict to ports (unicast, flood), FDB moves announced.
//! - `policy.rs`: per-port edge policy: link state, spoofchk, trust, port VLANs, rate limits.
//! - `vlan.rs`: port VLAN tags inserted into and stripped from head copies.
//! - `rate.rs`: the token bucket behind `max_tx_rate`.
//!
//! The switch never touches guest memory and imports no transport: the pipeline (`datapath`)
//! gives it a parsed `FrameHeader`, a head copy and port ids, and gets back verdicts, edits and
//! drop reasons.

mod fdb;
pub mod forward;
pub mod policy;
mod rate;
pub mod vlan;

pub use fdb::{Fdb, FdbEntry, FdbKey, Learned, Remote, MAX_LEARNED};
pub use forward::{fan_out, FdbMove, ALL_REMOTES};
pub use policy::{EdgePolicy, Egress, Ingress, PolicyDrop};
pub use rate::TokenBucket;

use crate::wire::{FrameHeader, MacAddr};
use std::fmt;

/// Default FDB aging time, as in Linux bridges and most switches.
pub const DEFAULT_AGING_SECS: u64 = 300;

/// A switch port: VFs first (0..numvfs), PV ports after them, the uplink last.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PortId(pub u16);

impl PortId {
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "port{}", self.0)
    }
}

/// What a port is to the embedded bridge (VEB): which floods reach it and whether it learns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRole {
    /// A VF: its MAC is a static entry; it gets unknown unicast only when promiscuous (a
    /// trusted VF the host put in promiscuous mode).
    Vf { promisc: bool },
    /// A PV port: the PF's software side (the host's vSwitch); learns, gets unknown unicast.
    Pv,
    /// The wire: learns, gets unknown unicast from the VFs and PV ports.
    Uplink,
}

impl PortRole {
    /// Source MACs of frames from this port are learned (VF MACs are static entries).
    pub fn learns(self) -> bool {
        !matches!(self, PortRole::Vf { .. })
    }

    /// Unknown unicast is flooded to this port.
    pub fn takes_unknown_unicast(self) -> bool {
        !matches!(self, PortRole::Vf { promisc: false })
    }
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To one known port (at `remote` behind it).
    Unicast(PortId, Remote),
    /// Broadcast or multicast: to every attached port except the ingress one.
    Flood,
    /// Unknown unicast: to the ports that take it (`PortRole::takes_unknown_unicast`).
    Unknown,
    /// The destination is on the ingress port: a bridge never sends a frame back.
    SamePort,
}

/// Where a frame entered the switch, as the FDB needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FromPort {
    pub port: PortId,
    pub role: PortRole,
    /// Where behind the port it came from (a VXLAN remote), learned with its source MAC.
    pub remote: Remote,
    /// The frame's VLAN in the switch (its outer tag after any port VLAN; 0 = untagged).
    pub vlan: u16,
}

/// The switch state: the FDB plus the aging clock.
#[derive(Debug)]
pub struct Switch {
    fdb: Fdb,
}

impl Switch {
    pub fn new(aging_secs: u64) -> Self {
        Switch {
            fdb: Fdb::new(aging_secs),
        }
    }

    pub fn fdb(&self) -> &Fdb {
        &self.fdb
    }

    /// Learns the source (on ports that learn) and decides the destination of one frame at
    /// time `now` (seconds). Returns the verdict and what learning did (for move events).
    pub fn forward(&mut self, at: &FromPort, hdr: &FrameHeader, now: u64) -> (Verdict, Learned) {
        let learned = if at.role.learns() && hdr.src.is_assignable() {
            self.fdb
                .learn(FdbKey::new(at.vlan, hdr.src), at.port, at.remote, now)
        } else {
            Learned::Ignored
        };
        let verdict = if hdr.dst.is_multicast() {
            Verdict::Flood
        } else {
            match self.fdb.lookup(FdbKey::new(at.vlan, hdr.dst), now) {
                Some((p, _)) if p == at.port => Verdict::SamePort,
                Some((p, r)) => Verdict::Unicast(p, r),
                None => Verdict::Unknown,
            }
        };
        (verdict, learned)
    }

    /// A port's frontend attached: a VF's MAC in its port VLAN (`vf`: MAC, VLAN) is pinned to
    /// it from now on. Called before the attach is visible to anyone else, so no frame to that
    /// MAC is lost meanwhile.
    pub fn port_attached(&mut self, port: PortId, vf: Option<(MacAddr, u16)>) {
        self.fdb.remove_statics_of(port);
        if let Some((m, vlan)) = vf {
            self.fdb.add_static(FdbKey::new(vlan, m), port);
        }
    }

    /// A port's frontend left: its pinned MAC is withdrawn (learning it elsewhere next is
    /// reported as a move: the plug-in model's failover) and what was learned on it forgotten.
    pub fn port_detached(&mut self, port: PortId) {
        self.fdb.remove_statics_of(port);
        self.fdb.flush_port(port);
    }

    /// Pins a VF's MAC (`mac` in `vlan`) to `port` now, unless another port has it learned and
    /// fresh: the plug-in model's guest is then using its PV NIC (or is behind the uplink), and
    /// the VF takes the MAC at its first frame instead (`take_mac`), when the guest's bond has
    /// moved to it. Returns whether it pinned.
    pub fn pin_or_defer(&mut self, port: PortId, mac: MacAddr, vlan: u16, now: u64) -> bool {
        match self.fdb.lookup(FdbKey::new(vlan, mac), now) {
            Some((p, _)) if p != port && !self.fdb.is_static(FdbKey::new(vlan, mac)) => {
                self.port_unpinned(port);
                false
            }
            _ => {
                self.port_attached(port, Some((mac, vlan)));
                true
            }
        }
    }

    /// A VF whose pin was deferred sent its first frame: its MAC is pinned to it, taken from
    /// the port that had it (returned, for the FDB_MOVE event).
    pub fn take_mac(&mut self, port: PortId, mac: MacAddr, vlan: u16, now: u64) -> Option<PortId> {
        let from = self
            .fdb
            .lookup(FdbKey::new(vlan, mac), now)
            .map(|(p, _)| p)
            .filter(|p| *p != port);
        self.port_attached(port, Some((mac, vlan)));
        from
    }

    /// A port's device stopped (its guest reset or released it) while its frontend stays
    /// connected: its pinned MAC is withdrawn, so frames to it reach the PV ports meanwhile and
    /// the guest's next frame elsewhere moves it (the plug-in model's failover on unplug).
    pub fn port_unpinned(&mut self, port: PortId) {
        self.fdb.remove_statics_of(port);
    }

    /// A VF's MAC or port VLAN changed: if the port has a pinned MAC (it is attached or
    /// attaching), (`mac`, `vlan`) replaces it.
    pub fn vf_address_changed(&mut self, port: PortId, mac: MacAddr, vlan: u16) {
        if self.fdb.remove_statics_of(port) > 0 {
            self.fdb.add_static(FdbKey::new(vlan, mac), port);
        }
    }

    /// Forgets every learned entry (static ones stay).
    pub fn flush(&mut self) {
        self.fdb.flush();
    }

    /// Drops entries older than the aging time.
    pub fn age(&mut self, now: u64) -> usize {
        self.fdb.age(now)
    }
}

/// Nanoseconds on the data plane's clock, one for every worker and for the vhost-user threads
/// (the rate buckets are shared by the workers serving one port's queues, and the FDB's ages
/// are compared by both).
#[inline]
pub fn now_ns() -> u64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    u64::try_from(EPOCH.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(dst: &str, src: &str) -> FrameHeader {
        FrameHeader {
            dst: dst.parse().unwrap(),
            src: src.parse().unwrap(),
            ethertype: 0x0800,
        }
    }

    const VF: PortRole = PortRole::Vf { promisc: false };

    fn at(port: u16, role: PortRole) -> FromPort {
        FromPort {
            port: PortId(port),
            role,
            remote: 0,
            vlan: 0,
        }
    }

    #[test]
    fn pv_and_uplink_learn_vfs_do_not() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let (a, b, c) = (
            "02:00:00:00:00:01",
            "02:00:00:00:01:01",
            "02:00:00:00:02:01",
        );
        assert_eq!(
            sw.forward(&at(0, VF), &hdr(b, a), 0),
            (Verdict::Unknown, Learned::Ignored)
        );
        assert_eq!(
            sw.forward(&at(254, PortRole::Pv), &hdr(a, b), 0).1,
            Learned::New
        );
        assert_eq!(
            sw.forward(&at(0, VF), &hdr(b, a), 0).0,
            Verdict::Unicast(PortId(254), 0)
        );
        let mut up = at(318, PortRole::Uplink);
        up.remote = 2;
        assert_eq!(sw.forward(&up, &hdr(b, c), 0).1, Learned::New);
        assert_eq!(
            sw.forward(&at(0, VF), &hdr(c, a), 0).0,
            Verdict::Unicast(PortId(318), 2)
        );
        assert_eq!(
            sw.forward(&at(254, PortRole::Pv), &hdr(a, b), 0).0,
            Verdict::Unknown,
            "a VF's MAC is known only through its static entry"
        );
    }

    #[test]
    fn broadcast_always_floods_and_same_port_is_filtered() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let a = "02:00:00:00:00:01";
        let pv = at(254, PortRole::Pv);
        assert_eq!(
            sw.forward(&pv, &hdr("ff:ff:ff:ff:ff:ff", a), 0).0,
            Verdict::Flood
        );
        assert_eq!(
            sw.forward(&pv, &hdr("33:33:00:00:00:01", a), 0).0,
            Verdict::Flood
        );
        assert_eq!(sw.forward(&pv, &hdr(a, a), 0).0, Verdict::SamePort);
    }

    #[test]
    fn learning_is_per_vlan() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let (a, b) = ("02:00:00:00:00:01", "02:00:00:00:01:01");
        let mut pv = at(254, PortRole::Pv);
        pv.vlan = 10;
        sw.forward(&pv, &hdr("ff:ff:ff:ff:ff:ff", b), 0);
        let mut from = at(318, PortRole::Uplink);
        from.vlan = 10;
        assert_eq!(
            sw.forward(&from, &hdr(b, a), 0).0,
            Verdict::Unicast(PortId(254), 0)
        );
        from.vlan = 11;
        assert_eq!(sw.forward(&from, &hdr(b, a), 0).0, Verdict::Unknown);
    }

    #[test]
    fn a_vf_plugged_while_its_mac_is_on_pv_takes_it_at_its_first_frame() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let (vf, pv) = (PortId(1), at(254, PortRole::Pv));
        let (g, peer) = ("02:00:00:00:00:02", "02:00:00:00:09:09");
        let m: MacAddr = g.parse().unwrap();
        // A fresh MAC: pinned at once, frames to it go to the VF.
        assert!(sw.pin_or_defer(vf, m, 0, 0));
        assert_eq!(sw.forward(&pv, &hdr(g, peer), 0).0, Verdict::Unicast(vf, 0));
        // The device stops (unplug): frames to it reach the PV side; the guest's next frame
        // there moves it.
        sw.port_unpinned(vf);
        assert_eq!(sw.forward(&pv, &hdr(g, peer), 0).0, Verdict::Unknown);
        assert_eq!(
            sw.forward(&pv, &hdr(peer, g), 0).1,
            Learned::Moved { from: vf }
        );
        // Plugged again while the guest is on PV: no pin yet, frames still go to PV.
        assert!(!sw.pin_or_defer(vf, m, 0, 1));
        let peer_at = at(2, VF);
        assert_eq!(
            sw.forward(&peer_at, &hdr(g, peer), 1).0,
            Verdict::Unicast(PortId(254), 0)
        );
        // The VF's first frame takes it (from the PV port), and the VF has it from then on.
        assert_eq!(sw.take_mac(vf, m, 0, 1), Some(PortId(254)));
        assert_eq!(
            sw.forward(&peer_at, &hdr(g, peer), 1).0,
            Verdict::Unicast(vf, 0)
        );
        // An aged-out entry elsewhere does not defer.
        sw.port_unpinned(vf);
        sw.forward(&pv, &hdr(peer, g), 2);
        assert!(sw.pin_or_defer(vf, m, 0, 2 + DEFAULT_AGING_SECS));
    }

    #[test]
    fn an_attached_vf_mac_is_pinned_until_detach_then_moves() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let (vf, pv) = (PortId(1), at(254, PortRole::Pv));
        let m: MacAddr = "02:00:00:00:00:02".parse().unwrap();
        sw.port_attached(vf, Some((m, 0)));
        // The pinned MAC neither floods nor moves when another port sends with it.
        let to_vf = hdr("02:00:00:00:00:02", "02:00:00:00:00:09");
        assert_eq!(sw.forward(&at(0, VF), &to_vf, 0).0, Verdict::Unicast(vf, 0));
        let from_pv = hdr("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:02");
        assert_eq!(sw.forward(&pv, &from_pv, 0).1, Learned::Static);
        // A new MAC (and a port VLAN) replaces the pinned one.
        let m2: MacAddr = "02:00:00:00:00:22".parse().unwrap();
        sw.vf_address_changed(vf, m2, 5);
        assert_eq!(sw.fdb().lookup(FdbKey::new(5, m2), 0), Some((vf, 0)));
        assert_eq!(sw.fdb().lookup(FdbKey::new(0, m2), 0), None);
        assert_eq!(sw.fdb().lookup(FdbKey::new(0, m), 0), None);
        // Detached: the PV port sending with the VF's MAC is a move (failover).
        sw.port_detached(vf);
        let mut pv5 = pv;
        pv5.vlan = 5;
        assert_eq!(
            sw.forward(&pv5, &hdr("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:22"), 1)
                .1,
            Learned::Moved { from: vf }
        );
        // A detached VF's address change pins nothing.
        sw.vf_address_changed(vf, m, 0);
        assert_eq!(sw.fdb().lookup(FdbKey::new(0, m), 1), None);
    }

    #[test]
    fn multicast_sources_are_not_learned() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let pv = at(254, PortRole::Pv);
        let (_, l) = sw.forward(&pv, &hdr("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"), 0);
        assert_eq!(l, Learned::Ignored);
        let m: MacAddr = "01:00:5e:00:00:01".parse().unwrap();
        assert!(sw.fdb().lookup(FdbKey::new(0, m), 0).is_none());
    }

    #[test]
    fn a_detached_port_forgets_its_macs() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let pv = at(255, PortRole::Pv);
        sw.forward(&pv, &hdr("ff:ff:ff:ff:ff:ff", "02:00:00:00:03:01"), 0);
        sw.port_detached(PortId(255));
        assert_eq!(
            sw.forward(
                &at(0, VF),
                &hdr("02:00:00:00:03:01", "02:00:00:00:00:01"),
                0
            )
            .0,
            Verdict::Unknown
        );
    }
}
