//! Counters, with `ethtool -S` names.
//!
//! One `PortCounters` per port (VF or PV), holding port totals, drops by reason and one
//! `QueueCounters` per queue pair. Names are from the guest's point of view, like `ethtool -S`
//! on the VF: `tx_*` are frames the guest sent, `rx_*` frames delivered to the guest.
//!
//! Accounting rule: every frame the guest sends is counted in `tx_packets` and then exactly one
//! of `tx_forwarded` (handed to the switch for at least one destination) or an ingress drop
//! (`drop_malformed`, `drop_link_down`, `drop_spoofchk`, `drop_vlan_filter`,
//! `drop_no_destination`, `drop_same_port`). Every copy the switch tries to deliver to a port is
//! counted at that port in exactly one of `rx_packets` or an egress drop (`drop_link_down`,
//! `drop_vlan_filter`, `drop_no_rx_buffer`, `drop_oversize_rx`, `drop_mtu`).

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter. Written by the data plane, read by anyone.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Declares a counter struct whose fields are listed once, so `snapshot` never misses one.
macro_rules! counters {
    ($(#[$meta:meta])* $name:ident { $($(#[doc = $doc:literal])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default)]
        pub struct $name {
            $($(#[doc = $doc])* pub $field: Counter,)*
        }

        impl $name {
            /// Every counter with its name, in declaration order.
            pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
                $(f(stringify!($field), self.$field.get());)*
            }
        }
    };
}

pub(crate) use counters;

counters! {
    /// Port totals and drops by reason.
    PortTotals {
        /// Frames taken from the guest's TX queues.
        tx_packets,
        /// Bytes of those frames (without the virtio-net header).
        tx_bytes,
        /// Frames handed to the switch for delivery to at least one port.
        tx_forwarded,
        /// Frames delivered into the guest's RX buffers.
        rx_packets,
        /// Bytes of those frames.
        rx_bytes,
        /// TX: the descriptor chain or the frame in it is invalid (too short, too long,
        /// wrong direction, outside guest memory).
        drop_malformed,
        /// TX: no other attached port to deliver the frame to.
        drop_no_destination,
        /// TX: the destination MAC lives on the port the frame came from.
        drop_same_port,
        /// TX: spoof checking: a source MAC (or a VLAN tag) the VF may not use.
        drop_spoofchk,
        /// TX or RX: the VF's link is down (link-state disable).
        drop_link_down,
        /// TX: a tag under a port VLAN with spoofchk off; RX: not the VF's port VLAN.
        drop_vlan_filter,
        /// RX: the guest had no (enabled, ready) RX buffer for the frame.
        drop_no_rx_buffer,
        /// RX: the frame does not fit the guest's RX buffers (no mergeable buffers).
        drop_oversize_rx,
        /// RX: buffers the guest posted broken (device-readable, outside its memory, shorter
        /// than the virtio-net header), handed back empty; the frame went to the next buffer,
        /// or was counted in `drop_no_rx_buffer` if there was none.
        rx_malformed_buffers,
        /// RX (the uplink): the frame does not fit the wire's MTU after encapsulation; it is
        /// never fragmented.
        drop_mtu,
        /// RX queue decisions made by the RSS hash and indirection table.
        rx_steer_rss,
        /// RX queue decisions made by an explicit flow steering rule.
        rx_steer_flow_rule,
        /// RX queue decisions made by a flow learned from the VF's transmit queue.
        rx_steer_flow_learned,
        /// Non-IP frames, steered to queue 0.
        rx_steer_non_ip,
        /// Decisions whose queue was disabled, replaced by an enabled one.
        rx_steer_fallback,
        /// Flows learned from transmitted frames (new entries).
        flow_learned,
        /// Learned flows evicted (least recently used) to make room.
        flow_evictions,
        /// Source MACs from this port the FDB did not learn: it held its maximum of learned
        /// entries (`switch::fdb::MAX_LEARNED`). The frames are forwarded; frames to those
        /// MACs flood as unknown unicast.
        fdb_learn_refused,
        /// TX: times the port's TX queues were held back by a rate (its max_tx_rate, or the
        /// wire's line rate beyond its min_tx_rate share). A rate never drops a frame: the
        /// frames wait in the guest's ring, as on a NIC's TX scheduler.
        tx_throttled,
        /// TX: frames dropped by an injected `drop` fault (`fault-set`).
        fault_drop,
        /// TX: frames taken into the delay line by an injected `delay` fault; each is sent
        /// later and counted in `fault_injected` then.
        fault_delay,
        /// TX: frames copied by an injected `duplicate` fault; each copy is sent later and
        /// counted in `fault_injected`.
        fault_duplicate,
        /// TX: frames with a bit flipped by an injected `corrupt` fault (after the Ethernet
        /// header and one tag: they still go where they were going).
        fault_corrupt,
        /// TX: delayed frames and duplicates sent from the delay line. A port's accounting
        /// with faults: tx_packets + fault_injected = tx_forwarded + its drops.
        fault_injected,
        /// RX: frames not written because the RX queue was stalled by an injected `stall`.
        fault_stall_rx,
        /// TX: times a TX queue with frames waiting was held back by an injected `stall` (not
        /// a frame count: the frames wait in the guest's ring).
        fault_stall_tx,
        /// Times an injected `link-flap` took the link down.
        fault_link_flap,
        /// Management commands on the VF refused "busy, try again" by an injected `busy`.
        fault_busy,
        /// A queue the guest left unusable (an avail index more than the ring size ahead, a
        /// ring outside its memory), found while sending or delivering; the queue is skipped
        /// while it lasts and the frames for it count as `drop_no_rx_buffer`.
        queue_faults,
        /// vhost-user connections ended by a message the back-end refused (malformed,
        /// truncated, unknown, out of range or out of order); the port closes the connection
        /// and accepts the next frontend. Not a frame count.
        protocol_errors,
    }
}

counters! {
    /// One queue pair's counters.
    QueueCounters {
        rx_packets,
        rx_bytes,
        tx_packets,
        tx_bytes,
    }
}

/// All counters of one port.
#[derive(Debug)]
pub struct PortCounters {
    pub totals: PortTotals,
    pub queues: Box<[QueueCounters]>,
}

impl PortCounters {
    pub fn new(queue_pairs: usize) -> Self {
        PortCounters {
            totals: PortTotals::default(),
            queues: (0..queue_pairs).map(|_| QueueCounters::default()).collect(),
        }
    }

    /// Queue counters for `q`, or `None` past the port's queue pairs.
    #[inline]
    pub fn queue(&self, q: usize) -> Option<&QueueCounters> {
        self.queues.get(q)
    }

    /// Every counter with its `ethtool -S` name (`rx_queue_3_packets`, ...).
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        self.totals.for_each(|n, v| out.push((n.to_string(), v)));
        for (i, q) in self.queues.iter().enumerate() {
            q.for_each(|n, v| {
                let (dir, what) = n.split_once('_').unwrap_or((n, ""));
                out.push((format!("{dir}_queue_{i}_{what}"), v));
            });
        }
        out
    }

    /// The value of one counter by name; `None` for an unknown name.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_follow_ethtool() {
        let c = PortCounters::new(2);
        c.totals.rx_packets.add(3);
        c.queues[1].tx_bytes.add(64);
        assert_eq!(c.get("rx_packets"), Some(3));
        assert_eq!(c.get("tx_queue_1_bytes"), Some(64));
        assert_eq!(c.get("rx_queue_0_packets"), Some(0));
        assert_eq!(c.get("rx_queue_2_packets"), None);
        assert!(c.snapshot().iter().any(|(n, _)| n == "drop_no_rx_buffer"));
    }
}
