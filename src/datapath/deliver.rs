//! A batch's deliveries written into the destinations' RX rings, grouped by ring: one lock, one
//! used-index store and at most one notification per ring, frames in order, counters added
//! once per group.

use super::groups::{Group, Groups};
use super::ports::PortIo;
use super::tap::Tap;
use super::views::Views;
use super::TX_BATCH;
use crate::capture::Direction;
use crate::dma_engine::frame::MAX_HEAD;
use crate::port::{QueueFault, RxBatch, RxDrop, RxQueues, RxScratch, TxFrame};
use crate::rss::Steering;
use crate::stats::PortCounters;
use crate::switch::vlan;

/// One frame for one destination RX queue, decided in the switch phase.
#[derive(Clone, Copy)]
pub struct Delivery {
    /// Index of the frame in the batch.
    pub frame: u16,
    /// Destination port slot.
    pub dst: u16,
    pub queue: u16,
    /// Deliver without the outer VLAN tag (the destination's port VLAN).
    pub strip: bool,
    pub by: Steering,
    pub fell_back: bool,
}

/// Counts of one delivery group, added to the port's counters once.
#[derive(Default)]
struct RxTally {
    packets: u64,
    bytes: u64,
    no_buffer: u64,
    oversize: u64,
    mtu: u64,
    steer: [u64; 4],
    fallback: u64,
    faults: u64,
    bad_buffers: u64,
    stalled: u64,
}

impl RxTally {
    fn flush(&self, c: &PortCounters, q: usize) {
        let t = &c.totals;
        let add = |ctr: &crate::stats::Counter, n: u64| {
            if n > 0 {
                ctr.add(n)
            }
        };
        add(&t.rx_packets, self.packets);
        add(&t.rx_bytes, self.bytes);
        if let Some(qc) = c.queue(q) {
            add(&qc.rx_packets, self.packets);
            add(&qc.rx_bytes, self.bytes);
        }
        add(&t.drop_no_rx_buffer, self.no_buffer);
        add(&t.drop_oversize_rx, self.oversize);
        add(&t.drop_mtu, self.mtu);
        add(&t.rx_steer_rss, self.steer[0]);
        add(&t.rx_steer_flow_rule, self.steer[1]);
        add(&t.rx_steer_flow_learned, self.steer[2]);
        add(&t.rx_steer_non_ip, self.steer[3]);
        add(&t.rx_steer_fallback, self.fallback);
        add(&t.queue_faults, self.faults);
        add(&t.rx_malformed_buffers, self.bad_buffers);
        add(&t.fault_stall_rx, self.stalled);
    }

    fn steered(&mut self, by: Steering, fell_back: bool) {
        let i = match by {
            Steering::Rss => 0,
            Steering::FlowRule => 1,
            Steering::FlowLearned => 2,
            Steering::NonIp => 3,
        };
        self.steer[i] += 1;
        self.fallback += u64::from(fell_back);
    }
}

/// A batch's deliveries, grouped by ring when written.
pub struct Deliveries {
    pub list: Vec<Delivery>,
    groups: Groups,
    scratch: Box<RxScratch>,
}

impl Deliveries {
    pub fn new() -> Self {
        Deliveries {
            list: Vec::with_capacity(TX_BATCH * 4),
            groups: Groups::new(crate::pf::PORT_SLOTS),
            scratch: Box::default(),
        }
    }

    /// Writes the deliveries of `frames` into the destinations' RX rings, one lock per ring,
    /// and empties the list; `tap` records them when a capture runs.
    pub fn write(&mut self, frames: &[TxFrame], views: &mut Views, tap: &Tap) {
        for d in &self.list {
            self.groups.add(d.dst, d.queue);
        }
        for gi in 0..self.groups.groups().len() {
            let g = self.groups.groups()[gi];
            let Some(view) = views.get_mut(usize::from(g.port)) else {
                continue;
            };
            let mut tally = RxTally::default();
            // An injected stall of this RX queue (`fault-set`): its frames are not written.
            let stalled = view.port.faults.any()
                && view
                    .port
                    .faults
                    .rx_stalled(usize::from(g.queue), super::now_ns())
                    .is_some();
            let fault = match view.io.as_mut() {
                Some(io) => write_group(io, &g, self, frames, &mut tally, tap, stalled),
                None => {
                    tally.no_buffer += u64::from(g.len);
                    None
                }
            };
            tally.faults = u64::from(fault.is_some());
            tally.flush(&view.port.counters, usize::from(g.queue));
            if let Some(f) = fault {
                view.warn_broken_queue(&format_args!("RX queue {}: {f}", g.queue));
            }
        }
        self.groups.clear();
        self.list.clear();
    }
}

/// Writes group `g`'s frames into `io`'s RX queue, in order, counting into `tally`.
fn write_group(
    io: &mut PortIo,
    g: &Group,
    p: &mut Deliveries,
    frames: &[TxFrame],
    tally: &mut RxTally,
    tap: &Tap,
    stalled: bool,
) -> Option<QueueFault> {
    let (mut rx, fault) = match stalled {
        true => (None, None),
        false => match io.open(usize::from(g.queue), g.len as usize) {
            Ok(rx) => (rx, None),
            Err(f) => (None, Some(f)),
        },
    };
    // Zeroed once per group, not per frame: most frames never use it.
    let mut stripped = [0u8; MAX_HEAD];
    for i in p.groups.members(g) {
        let d = &p.list[i];
        let f = &frames[usize::from(d.frame)];
        // SAFETY: `f` was popped by the sender's `TxQueues::pop` in the batch being delivered
        // (`Pipeline::process_tx`), whose `complete` comes after this delivery; until then the
        // sender's port keeps the guest memory the frame is in. Nothing here can make it let
        // go: a frame is never delivered to the port it came from (`switch::fan_out` skips
        // the ingress port), so `open` below never remaps the sender's memory.
        let mut fv = unsafe { f.view() };
        if d.strip {
            // Egress accepted the tag, so the head holds one: stripping cannot fail.
            let n = vlan::strip_outer_tag(f.head(), &mut stripped).unwrap_or(0);
            fv = fv.with_head(&stripped[..n], f.len - vlan::TAG_LEN);
        }
        if stalled {
            tally.stalled += 1;
            if tap.on {
                let k = usize::from(d.frame);
                tap.record(k, None, Direction::Outbound, &fv, Some("fault_stall_rx"));
            }
            continue;
        }
        let result = match rx.as_mut() {
            Some(rx) => rx.push(&fv, &mut p.scratch),
            None => Err(RxDrop::NoBuffer),
        };
        if tap.on {
            let k = usize::from(d.frame);
            match result {
                Ok(()) => tap.record(k, Some(d.dst), Direction::Outbound, &fv, None),
                Err(e) => tap.record(k, None, Direction::Outbound, &fv, Some(rx_drop_name(e))),
            }
        }
        match result {
            Ok(()) => {
                tally.packets += 1;
                tally.bytes += fv.len as u64;
                tally.steered(d.by, d.fell_back);
            }
            Err(RxDrop::NoBuffer) => tally.no_buffer += 1,
            Err(RxDrop::Oversize) => tally.oversize += 1,
            Err(RxDrop::Mtu) => tally.mtu += 1,
        }
    }
    if let Some(rx) = rx {
        // Frames the port took but could not send after all (a full socket at the end).
        let lost = rx.close();
        tally.packets = tally.packets.saturating_sub(lost.frames);
        tally.bytes = tally.bytes.saturating_sub(lost.bytes);
        tally.no_buffer += lost.frames;
        tally.bad_buffers += lost.bad_buffers;
    }
    fault
}

/// The drop counter an RX refusal is counted in.
fn rx_drop_name(e: RxDrop) -> &'static str {
    match e {
        RxDrop::NoBuffer => "drop_no_rx_buffer",
        RxDrop::Oversize => "drop_oversize_rx",
        RxDrop::Mtu => "drop_mtu",
    }
}
