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

pub use fdb::{Fdb, FdbEntry, Learned};
pub use forward::{fan_out, FdbMove};
pub use policy::{EdgePolicy, Egress, Ingress, PolicyDrop};
pub use rate::TokenBucket;

use crate::wire::{FrameHeader, MacAddr};
use std::fmt;

/// Default FDB aging time, as in Linux bridges and most switches.
pub const DEFAULT_AGING_SECS: u64 = 300;

/// A switch port: VFs first (0..numvfs), PV ports after them.
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

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// To one known port.
    Unicast(PortId),
    /// To every attached port except the ingress one (broadcast, multicast, unknown unicast).
    Flood,
    /// The destination is on the ingress port: a bridge never sends a frame back.
    SamePort,
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

    /// Learns the source and decides the destination of one frame at time `now` (seconds).
    /// Returns the verdict and what learning did (for move events).
    pub fn forward(&mut self, ingress: PortId, hdr: &FrameHeader, now: u64) -> (Verdict, Learned) {
        let learned = if hdr.src.is_assignable() {
            self.fdb.learn(hdr.src, ingress, now)
        } else {
            Learned::Ignored
        };
        let verdict = if hdr.dst.is_multicast() {
            Verdict::Flood
        } else {
            match self.fdb.lookup(hdr.dst, now) {
                Some(p) if p == ingress => Verdict::SamePort,
                Some(p) => Verdict::Unicast(p),
                None => Verdict::Flood,
            }
        };
        (verdict, learned)
    }

    /// A port's frontend attached: a VF's MAC (`vf_mac`) is pinned to it from now on. Called
    /// before the attach is visible to anyone else, so no frame to that MAC floods meanwhile.
    pub fn port_attached(&mut self, port: PortId, vf_mac: Option<MacAddr>) {
        self.fdb.remove_statics_of(port);
        if let Some(m) = vf_mac {
            self.fdb.add_static(m, port);
        }
    }

    /// A port's frontend left: its pinned MAC is withdrawn (learning it elsewhere next is
    /// reported as a move: the plug-in model's failover) and what was learned on it forgotten.
    pub fn port_detached(&mut self, port: PortId) {
        self.fdb.remove_statics_of(port);
        self.fdb.flush_port(port);
    }

    /// A VF's MAC changed: if the port has a pinned MAC (it is attached or attaching), `mac`
    /// replaces it.
    pub fn vf_mac_changed(&mut self, port: PortId, mac: MacAddr) {
        if self.fdb.remove_statics_of(port) > 0 {
            self.fdb.add_static(mac, port);
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

    #[test]
    fn unknown_unicast_floods_until_learned() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let (a, b) = ("02:00:00:00:00:01", "02:00:00:00:01:01");
        assert_eq!(sw.forward(PortId(0), &hdr(b, a), 0).0, Verdict::Flood);
        assert_eq!(
            sw.forward(PortId(1), &hdr(a, b), 0).0,
            Verdict::Unicast(PortId(0))
        );
        assert_eq!(
            sw.forward(PortId(0), &hdr(b, a), 0).0,
            Verdict::Unicast(PortId(1))
        );
    }

    #[test]
    fn broadcast_always_floods_and_same_port_is_filtered() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let a = "02:00:00:00:00:01";
        assert_eq!(
            sw.forward(PortId(0), &hdr("ff:ff:ff:ff:ff:ff", a), 0).0,
            Verdict::Flood
        );
        assert_eq!(sw.forward(PortId(0), &hdr(a, a), 0).0, Verdict::SamePort);
    }

    #[test]
    fn an_attached_vf_mac_is_pinned_until_detach_then_moves() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let (vf, pv) = (PortId(1), PortId(254));
        let m: MacAddr = "02:00:00:00:00:02".parse().unwrap();
        sw.port_attached(vf, Some(m));
        // The pinned MAC neither floods nor moves when another port sends with it.
        let to_vf = hdr("02:00:00:00:00:02", "02:00:00:00:00:09");
        assert_eq!(sw.forward(PortId(0), &to_vf, 0).0, Verdict::Unicast(vf));
        let from_pv = hdr("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:02");
        assert_eq!(sw.forward(pv, &from_pv, 0).1, Learned::Static);
        // A new MAC replaces the pinned one.
        let m2: MacAddr = "02:00:00:00:00:22".parse().unwrap();
        sw.vf_mac_changed(vf, m2);
        assert_eq!(sw.fdb().lookup(m2, 0), Some(vf));
        assert_eq!(sw.fdb().lookup(m, 0), None);
        // Detached: the PV port sending with the VF's MAC is a move (failover).
        sw.port_detached(vf);
        assert_eq!(
            sw.forward(pv, &hdr("ff:ff:ff:ff:ff:ff", "02:00:00:00:00:22"), 1)
                .1,
            Learned::Moved { from: vf }
        );
        // A detached VF's MAC change pins nothing.
        sw.vf_mac_changed(vf, m);
        assert_eq!(sw.fdb().lookup(m, 1), None);
    }

    #[test]
    fn multicast_sources_are_not_learned() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        let (_, l) = sw.forward(PortId(0), &hdr("ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01"), 0);
        assert_eq!(l, Learned::Ignored);
        assert!(sw
            .fdb()
            .lookup("01:00:5e:00:00:01".parse::<MacAddr>().unwrap(), 0)
            .is_none());
    }

    #[test]
    fn a_detached_port_forgets_its_macs() {
        let mut sw = Switch::new(DEFAULT_AGING_SECS);
        sw.forward(PortId(3), &hdr("ff:ff:ff:ff:ff:ff", "02:00:00:00:03:01"), 0);
        sw.port_detached(PortId(3));
        assert_eq!(
            sw.forward(PortId(0), &hdr("02:00:00:00:03:01", "02:00:00:00:00:01"), 0)
                .0,
            Verdict::Flood
        );
    }
}
