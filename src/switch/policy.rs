//! Per-port policy at the switch's edge: link state, spoof checking, port VLANs and rate
//! limits. Pure decisions on a frame's header copy; the pipeline applies them.

use crate::wire::{FrameHeader, MacAddr};

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;

/// What the switch enforces at one port's edge: the VF knobs as the switch sees them (the
/// management plane's settings are turned into this by the port's owner).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EdgePolicy {
    /// The VF knobs apply (a PV port has none: any source MAC, no port VLAN).
    pub is_vf: bool,
    pub link_up: bool,
    /// The VF's MAC, for spoof checking.
    pub mac: MacAddr,
    pub spoofchk: bool,
    pub trust: bool,
    /// Receives unknown unicast (trusted VFs only).
    pub promisc: bool,
    /// Port VLAN id; 0 = none.
    pub vlan: u16,
    pub qos: u8,
    /// TPID of the port VLAN's tag (802.1Q or 802.1ad).
    pub tpid: u16,
    /// Mbit/s; 0 = unlimited (shaped by the pipeline, never a drop).
    pub max_tx_rate: u32,
    /// Mbit/s of the wire guaranteed to the port when ports compete for it; 0 = none.
    pub min_tx_rate: u32,
}

impl EdgePolicy {
    /// A port with no knobs and its link up (a PV port).
    pub const OPEN: EdgePolicy = EdgePolicy {
        is_vf: false,
        link_up: true,
        mac: MacAddr::ZERO,
        spoofchk: false,
        trust: false,
        promisc: false,
        vlan: 0,
        qos: 0,
        tpid: TPID_8021Q,
        max_tx_rate: 0,
        min_tx_rate: 0,
    };
}

/// Why the edge policy dropped a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyDrop {
    LinkDown,
    SpoofChk,
    VlanFilter,
}

/// What to do with a frame entering the switch from a VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    Pass,
    /// Insert this tag (TPID, TCI) after the MAC addresses.
    InsertTag(u16, u16),
}

/// What to do with a frame leaving the switch towards a VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Egress {
    Pass,
    /// Remove the outer tag (the VF's port VLAN).
    StripTag,
}

fn is_tagged(ethertype: u16) -> bool {
    ethertype == TPID_8021Q || ethertype == TPID_8021AD
}

/// The outer tag of a frame's header bytes: (TPID, VLAN id).
pub fn outer_tag(head: &[u8]) -> Option<(u16, u16)> {
    let tpid = u16::from_be_bytes([*head.get(12)?, *head.get(13)?]);
    if !is_tagged(tpid) {
        return None;
    }
    let tci = u16::from_be_bytes([*head.get(14)?, *head.get(15)?]);
    Some((tpid, tci & 0x0fff))
}

/// Checks a frame entering the switch from a port with policy `p`. (Rates are not checked
/// here: the pipeline shapes a port's TX queues, which never drops a frame.)
pub fn ingress(p: &EdgePolicy, hdr: &FrameHeader) -> Result<Ingress, PolicyDrop> {
    if !p.link_up {
        return Err(PolicyDrop::LinkDown);
    }
    if !p.is_vf {
        return Ok(Ingress::Pass);
    }
    // With trust the VF may use another MAC (a guest changing its address).
    if p.spoofchk && !p.trust && hdr.src != p.mac {
        return Err(PolicyDrop::SpoofChk);
    }
    if p.vlan != 0 && is_tagged(hdr.ethertype) {
        // Port VLAN (VST): the guest must not tag.
        return Err(if p.spoofchk {
            PolicyDrop::SpoofChk
        } else {
            PolicyDrop::VlanFilter
        });
    }
    if p.vlan != 0 {
        let tci = (u16::from(p.qos) << 13) | p.vlan;
        return Ok(Ingress::InsertTag(p.tpid, tci));
    }
    Ok(Ingress::Pass)
}

/// Checks a frame (its header bytes, after any ingress tag) leaving the switch towards a port
/// with policy `p`.
pub fn egress(p: &EdgePolicy, head: &[u8]) -> Result<Egress, PolicyDrop> {
    if !p.link_up {
        return Err(PolicyDrop::LinkDown);
    }
    if !p.is_vf || p.vlan == 0 {
        return Ok(Egress::Pass);
    }
    match outer_tag(head) {
        Some((t, vid)) if t == p.tpid && vid == p.vlan => Ok(Egress::StripTag),
        _ => Err(PolicyDrop::VlanFilter),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vf() -> EdgePolicy {
        EdgePolicy {
            is_vf: true,
            mac: "02:00:00:00:00:01".parse().unwrap(),
            spoofchk: true,
            ..EdgePolicy::OPEN
        }
    }

    fn hdr(src: &str, ethertype: u16) -> FrameHeader {
        FrameHeader {
            dst: MacAddr::BROADCAST,
            src: src.parse().unwrap(),
            ethertype,
        }
    }

    #[test]
    fn spoof_checking_and_trust() {
        let mut s = vf();
        let own = hdr("02:00:00:00:00:01", 0x0800);
        let other = hdr("02:00:00:00:99:01", 0x0800);
        assert_eq!(ingress(&s, &own), Ok(Ingress::Pass));
        assert_eq!(ingress(&s, &other), Err(PolicyDrop::SpoofChk));
        assert_eq!(
            ingress(&EdgePolicy::OPEN, &other),
            Ok(Ingress::Pass),
            "PV ports have no knobs"
        );
        s.trust = true;
        assert_eq!(ingress(&s, &other), Ok(Ingress::Pass));
        s.trust = false;
        s.spoofchk = false;
        assert_eq!(ingress(&s, &other), Ok(Ingress::Pass));
    }

    #[test]
    fn port_vlan_tags_on_ingress_and_strips_on_egress() {
        let mut s = vf();
        s.vlan = 100;
        s.qos = 5;
        s.tpid = TPID_8021AD;
        let own = hdr("02:00:00:00:00:01", 0x0800);
        assert_eq!(
            ingress(&s, &own),
            Ok(Ingress::InsertTag(0x88a8, (5 << 13) | 100))
        );
        let tagged = hdr("02:00:00:00:00:01", 0x8100);
        assert_eq!(ingress(&s, &tagged), Err(PolicyDrop::SpoofChk));
        let mut head = [0u8; 18];
        head[12..14].copy_from_slice(&0x88a8u16.to_be_bytes());
        head[14..16].copy_from_slice(&((5u16 << 13) | 100).to_be_bytes());
        assert_eq!(egress(&s, &head), Ok(Egress::StripTag));
        head[15] = 101;
        assert_eq!(egress(&s, &head), Err(PolicyDrop::VlanFilter));
        head[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(
            egress(&s, &head),
            Err(PolicyDrop::VlanFilter),
            "untagged to a VLAN VF"
        );
        assert_eq!(egress(&vf(), &head), Ok(Egress::Pass));
    }

    #[test]
    fn link_down_drops_both_ways() {
        let mut s = vf();
        s.link_up = false;
        assert_eq!(
            ingress(&s, &hdr("02:00:00:00:00:01", 0x0800)),
            Err(PolicyDrop::LinkDown)
        );
        assert_eq!(egress(&s, &[0u8; 14]), Err(PolicyDrop::LinkDown));
    }
}
