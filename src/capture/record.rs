//! One captured frame as the data plane hands it to a capture's writer: a slot of fixed size
//! taken from the capture's pool (nothing is allocated on the data path), with the frame's
//! bytes up to the snap length and what the switch decided about it.

use crate::rss::Steering;
use std::fmt::{self, Write as _};

/// Egress ports a record names one by one; a flood to more says how many more.
pub const MAX_EGRESS: usize = 8;

/// Which way the frame crossed the interface it is captured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Into the switch (a port's TX: what its guest, or the wire, sent).
    Inbound,
    /// Out of the switch (into a port's RX queue, or onto the wire).
    Outbound,
}

impl Direction {
    /// The EPB flags word's direction bits (pcapng: 01 inbound, 10 outbound).
    pub fn epb_flags(self) -> u32 {
        match self {
            Direction::Inbound => 0b01,
            Direction::Outbound => 0b10,
        }
    }
}

/// What the switch did with the frame's VLAN tag on the way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum VlanAction {
    #[default]
    None,
    /// The sender's port VLAN was inserted (`qos` priority, 802.1Q or 802.1ad).
    Insert { vid: u16, tpid: u16 },
    /// The destination's port VLAN was stripped.
    Strip { vid: u16 },
}

/// The switch's decision about one frame, as its capture comment says it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    /// The port (index in the port table) and TX queue it came from.
    pub ingress: u16,
    pub ingress_queue: u16,
    /// Where it went: (port, queue) pairs; for the uplink the queue is the remote's index.
    pub egress: [(u16, u16); MAX_EGRESS],
    pub egress_len: u8,
    /// Destinations past `MAX_EGRESS` (a flood to many ports).
    pub egress_more: u16,
    pub vlan: VlanAction,
    /// The RSS hash computed for the frame, if any was.
    pub rss_hash: Option<u32>,
    /// What chose the destination queue (for a single destination).
    pub steering: Option<Steering>,
    /// Why it was dropped: the name of the drop counter that counted it.
    pub drop: Option<&'static str>,
}

impl Decision {
    /// Adds a destination.
    pub fn push_egress(&mut self, port: u16, queue: u16) {
        match self.egress.get_mut(usize::from(self.egress_len)) {
            Some(slot) => {
                *slot = (port, queue);
                self.egress_len += 1;
            }
            None => self.egress_more = self.egress_more.saturating_add(1),
        }
    }

    /// The destinations named one by one.
    pub fn egress(&self) -> &[(u16, u16)] {
        &self.egress[..usize::from(self.egress_len)]
    }

    /// Appends the comment text to `s`: `in vf0 q0; out vf1 q1; steered by rss, hash
    /// 0x1a2b3c4d; vlan insert 100`, or `in vf0 q0; dropped: drop_spoofchk`. `name(port, s)`
    /// appends a port's name (the writer keeps the names, so a record costs no allocation).
    pub fn write_comment(&self, s: &mut String, name: &dyn Fn(u16, &mut String)) {
        s.push_str("in ");
        name(self.ingress, s);
        let _ = write!(s, " q{}", self.ingress_queue);
        if let Some(reason) = self.drop {
            let _ = write!(s, "; dropped: {reason}");
            return;
        }
        for (i, &(p, q)) in self.egress().iter().enumerate() {
            s.push_str(if i == 0 { "; out " } else { ", " });
            name(p, s);
            let _ = write!(s, " q{q}");
        }
        if self.egress_more > 0 {
            let _ = write!(s, " and {} more", self.egress_more);
        }
        if let Some(by) = self.steering {
            let _ = write!(s, "; steered by {}", SteeringName(by));
        }
        if let Some(h) = self.rss_hash {
            let _ = write!(s, ", hash {h:#010x}");
        }
        match self.vlan {
            VlanAction::None => {}
            VlanAction::Insert { vid, tpid } => {
                let _ = write!(s, "; vlan insert {vid} (tpid {tpid:#06x})");
            }
            VlanAction::Strip { vid } => {
                let _ = write!(s, "; vlan strip {vid}");
            }
        }
    }
}

/// Steering named as the `rx_steer_*` counters name it.
struct SteeringName(Steering);

impl fmt::Display for SteeringName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            Steering::Rss => "rss",
            Steering::FlowRule => "flow_rule",
            Steering::FlowLearned => "flow_learned",
            Steering::NonIp => "non_ip",
        })
    }
}

/// One captured frame.
pub struct Record {
    /// Wall-clock time, ns since the Unix epoch.
    pub ts_ns: u64,
    /// The interface it is captured on: a port index, or `None` for the `drops` interface.
    pub port: Option<u16>,
    pub dir: Direction,
    /// The frame's length on the wire.
    pub orig_len: u32,
    /// How many of its bytes `data` holds (up to the capture's snap length).
    pub cap_len: u32,
    /// Room for the snap length, allocated once with the slot.
    pub data: Box<[u8]>,
    pub decision: Decision,
}

impl Record {
    /// An empty slot for frames of up to `snaplen` bytes.
    pub fn slot(snaplen: usize) -> Record {
        Record {
            ts_ns: 0,
            port: None,
            dir: Direction::Inbound,
            orig_len: 0,
            cap_len: 0,
            data: vec![0; snaplen].into_boxed_slice(),
            decision: Decision::default(),
        }
    }

    /// Copies `frame`'s first bytes (up to the snap length) into the slot.
    pub fn set_frame(&mut self, frame: &[u8], orig_len: usize) {
        let n = frame.len().min(self.data.len());
        self.data[..n].copy_from_slice(&frame[..n]);
        self.cap_len = n as u32;
        self.orig_len = u32::try_from(orig_len).unwrap_or(u32::MAX);
    }

    /// The captured bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.cap_len as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The comment with names from `name`.
    fn comment(d: &Decision, name: &dyn Fn(u16) -> String) -> String {
        let mut s = String::new();
        d.write_comment(&mut s, &|p, out| out.push_str(&name(p)));
        s
    }

    fn names(p: u16) -> String {
        match p {
            0..=253 => format!("vf{p}"),
            254 => "pv0".into(),
            _ => "uplink".into(),
        }
    }

    #[test]
    fn a_forwarded_frame_says_where_it_went_and_why() {
        let mut d = Decision {
            ingress: 0,
            ingress_queue: 1,
            rss_hash: Some(0x1a2b_3c4d),
            steering: Some(Steering::Rss),
            vlan: VlanAction::Strip { vid: 100 },
            ..Decision::default()
        };
        d.push_egress(1, 3);
        assert_eq!(
            comment(&d, &names),
            "in vf0 q1; out vf1 q3; steered by rss, hash 0x1a2b3c4d; vlan strip 100"
        );
    }

    #[test]
    fn a_flood_names_eight_ports_and_counts_the_rest() {
        let mut d = Decision {
            ingress: 254,
            vlan: VlanAction::Insert {
                vid: 7,
                tpid: 0x88a8,
            },
            ..Decision::default()
        };
        for p in 0..11 {
            d.push_egress(p, 0);
        }
        assert_eq!(
            comment(&d, &names),
            "in pv0 q0; out vf0 q0, vf1 q0, vf2 q0, vf3 q0, vf4 q0, vf5 q0, vf6 q0, vf7 q0 and 3 \
             more; vlan insert 7 (tpid 0x88a8)"
        );
    }

    #[test]
    fn a_dropped_frame_names_its_drop_counter() {
        let d = Decision {
            ingress: 2,
            drop: Some("drop_spoofchk"),
            ..Decision::default()
        };
        assert_eq!(comment(&d, &names), "in vf2 q0; dropped: drop_spoofchk");
    }

    #[test]
    fn a_slot_keeps_the_snap_length() {
        let mut r = Record::slot(4);
        r.set_frame(&[1, 2, 3, 4, 5, 6], 6);
        assert_eq!((r.bytes(), r.orig_len), (&[1, 2, 3, 4][..], 6));
        r.set_frame(&[9], 1);
        assert_eq!(r.bytes(), &[9]);
    }
}
