//! The capture hook on the pipeline (`capture`): a worker's view of the running captures and
//! the decisions of the batch being switched, turned into capture records at three points:
//! a frame taken from a port's TX queue (inbound, with what the switch decided; a frame dropped
//! at the sender's edge also goes to `drops`), a frame dropped at a destination's edge (to
//! `drops`), and a frame written into a destination's RX queue (outbound) or refused there (to
//! `drops`). So the frames on a port's interface are its `tx_packets` and `rx_packets`, and
//! every `drop_*` counter's frames are on `drops`, each with its counter's name.
//!
//! While no capture runs, `begin` is one relaxed load per batch and nothing else here runs.

use crate::capture::{CaptureHub, Decision, Direction, HubView};
use crate::port::FrameView;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A frame dropped at a destination's edge, recorded when the batch's captures are written.
#[derive(Clone, Copy)]
struct EgressDrop {
    frame: u16,
    dst: u16,
    reason: &'static str,
}

pub struct Tap {
    hub: Arc<CaptureHub>,
    view: HubView,
    /// The batch being switched is captured.
    pub on: bool,
    /// Each frame's decision (valid for the batch's frames while `on`).
    decisions: Box<[Decision]>,
    egress_drops: Vec<EgressDrop>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

impl Tap {
    pub fn new(hub: Arc<CaptureHub>, batch: usize) -> Self {
        Tap {
            hub,
            view: HubView::default(),
            on: false,
            decisions: (0..batch).map(|_| Decision::default()).collect(),
            egress_drops: Vec::with_capacity(batch * 4),
        }
    }

    /// Whether this batch is captured (one relaxed load while no capture runs).
    #[inline]
    pub fn begin(&mut self) -> bool {
        self.on = self.hub.active();
        if self.on {
            self.hub.sync(&mut self.view);
            self.egress_drops.clear();
        } else if !self.view.sessions.is_empty() {
            // The last capture stopped: let go of it.
            self.hub.sync(&mut self.view);
        }
        self.on
    }

    /// Frame `k`'s decision, to fill in.
    pub fn decision_mut(&mut self, k: usize) -> Option<&mut Decision> {
        self.decisions.get_mut(k)
    }

    /// Notes frame `k` dropped at port `dst`'s edge (`reason`: the drop counter's name).
    #[inline]
    pub fn egress_drop(&mut self, k: usize, dst: usize, reason: &'static str) {
        if self.on {
            self.egress_drops.push(EgressDrop {
                frame: k as u16,
                dst: dst as u16,
                reason,
            });
        }
    }

    /// The egress drops noted for the batch: (frame, destination port, reason).
    pub fn egress_drops(&self) -> impl Iterator<Item = (usize, u16, &'static str)> + '_ {
        self.egress_drops
            .iter()
            .map(|e| (usize::from(e.frame), e.dst, e.reason))
    }

    /// Records frame `k` (`frame` as it is at this point) on `port`'s interface, or on `drops`
    /// with `drop`, in every capture that takes it.
    pub fn record(
        &self,
        k: usize,
        port: Option<u16>,
        dir: Direction,
        frame: &FrameView<'_>,
        drop: Option<&'static str>,
    ) {
        let Some(decision) = self.decisions.get(k) else {
            return;
        };
        let mut ts = 0;
        for s in &self.view.sessions {
            let takes = match port {
                Some(p) => s.ports.has(p),
                None => s.ports.drops,
            };
            if !takes {
                continue;
            }
            let Some(mut r) = s.slot() else {
                continue;
            };
            if ts == 0 {
                ts = now_ns();
            }
            r.ts_ns = ts;
            r.port = port;
            r.dir = dir;
            r.cap_len = frame.copy_prefix(&mut r.data) as u32;
            r.orig_len = u32::try_from(frame.len).unwrap_or(u32::MAX);
            r.decision.clone_from(decision);
            if drop.is_some() {
                r.decision.drop = drop;
            }
            s.submit(r);
        }
    }

    /// Wakes the writers of the batch's captures.
    pub fn end(&self) {
        if self.on {
            for s in &self.view.sessions {
                s.wake();
            }
        }
    }
}
