//! Fault injection for users' own tests: what real adapters do rarely and failover, retry and
//! watchdog code must survive. Set on a port through the control socket (`fault-set`) or the
//! config file (`[[fault]]`); every fault that happens is counted under its own name on the
//! port (`fault_*`), so a test can assert it did.
//!
//! - `spec.rs`: a fault as a user writes it, checked.
//! - `frames.rs`: the frame faults (drop, delay, duplicate, corrupt a share of the frames a
//!   port sends): seeded decisions, the same frames for the same seed, and the delay line.
//! - this file: a port's fault state as the data path and the control plane see it: the frame
//!   faults, stalled queues, a flapping link, a busy window for management commands.
//!
//! The data path pays one relaxed load per batch while a port has no fault.

mod frames;
mod spec;

pub use frames::{corrupt_offset, FrameFault, FrameFaults, FrameKind, Held, Verdict, MAX_HELD};
pub use spec::{Fault, FaultError, FaultKind, FaultSpec, QueueRef};

use crate::switch::now_ns;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One port's faults.
#[derive(Debug)]
pub struct PortFaults {
    /// Some fault is set: the data path looks at the rest.
    on: AtomicBool,
    /// The frame faults, swapped whole.
    frames: Mutex<Option<Arc<FrameFaults>>>,
    /// Per queue pair: until when (ns, `switch::now_ns`) its RX / TX queue is stalled; 0: not.
    stall_rx: Box<[AtomicU64]>,
    stall_tx: Box<[AtomicU64]>,
    /// Per TX queue pair: its current stall has held frames back (counted once).
    stall_tx_counted: Box<[AtomicBool]>,
    /// Management commands on the port are refused until then (ns); 0: not.
    busy_until: AtomicU64,
    /// The link is held down by a flap.
    link_down: AtomicBool,
    /// Stops the running flap (its thread polls it).
    flap_stop: Mutex<Option<Arc<AtomicBool>>>,
}

impl PortFaults {
    pub fn new(queue_pairs: usize) -> Self {
        let zeros = || (0..queue_pairs).map(|_| AtomicU64::new(0)).collect();
        PortFaults {
            on: AtomicBool::new(false),
            frames: Mutex::new(None),
            stall_rx: zeros(),
            stall_tx: zeros(),
            stall_tx_counted: (0..queue_pairs).map(|_| AtomicBool::new(false)).collect(),
            busy_until: AtomicU64::new(0),
            link_down: AtomicBool::new(false),
            flap_stop: Mutex::new(None),
        }
    }

    /// Whether any fault is set (one relaxed load: the data path's question per batch).
    #[inline]
    pub fn any(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Recomputes whether any fault is set: the data path calls it when it finds none left
    /// (a stall run out, a delay line emptied after its fault was cleared), so the port is
    /// back to one relaxed load per batch.
    pub fn refresh_on(&self) {
        let now = now_ns();
        let on = self
            .frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|f| f.is_active() || f.held() > 0)
            || self
                .stall_rx
                .iter()
                .any(|s| s.load(Ordering::Acquire) > now)
            || self
                .stall_tx
                .iter()
                .any(|s| s.load(Ordering::Acquire) > now)
            || self.link_down.load(Ordering::Acquire)
            || self
                .flap_stop
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some();
        self.on.store(on, Ordering::Release);
    }

    /// The frame faults now.
    pub fn frames(&self) -> Option<Arc<FrameFaults>> {
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds (or replaces) one frame fault, keeping the others and the frames they hold.
    pub fn set_frame_fault(&self, fault: FrameFault) {
        let mut g = self.frames.lock().unwrap_or_else(|e| e.into_inner());
        let next = match g.as_ref() {
            Some(f) => f.with(fault),
            None => FrameFaults::default().with(fault),
        };
        *g = Some(Arc::new(next));
        drop(g);
        self.on.store(true, Ordering::Release);
    }

    /// Stalls RX or TX queue pair `q` for `ns` nanoseconds from now. False if there is no such
    /// queue pair.
    pub fn stall(&self, queue: QueueRef, ns: u64) -> bool {
        let (list, q) = match queue {
            QueueRef::Rx(q) => (&self.stall_rx, q),
            QueueRef::Tx(q) => (&self.stall_tx, q),
        };
        let Some(slot) = list.get(usize::from(q)) else {
            return false;
        };
        if let (QueueRef::Tx(_), Some(c)) = (queue, self.stall_tx_counted.get(usize::from(q))) {
            c.store(false, Ordering::Release);
        }
        slot.store(now_ns().saturating_add(ns), Ordering::Release);
        self.on.store(true, Ordering::Release);
        true
    }

    /// Until when RX queue `q` is stalled, if it is at `now`.
    #[inline]
    pub fn rx_stalled(&self, q: usize, now: u64) -> Option<u64> {
        let until = self.stall_rx.get(q)?.load(Ordering::Acquire);
        (until > now).then_some(until)
    }

    /// Until when TX queue pair `q` is stalled, if it is at `now`.
    #[inline]
    pub fn tx_stalled(&self, q: usize, now: u64) -> Option<u64> {
        let until = self.stall_tx.get(q)?.load(Ordering::Acquire);
        (until > now).then_some(until)
    }

    /// True the first time the current stall of TX queue pair `q` holds frames back.
    pub fn first_tx_hold(&self, q: usize) -> bool {
        self.stall_tx_counted
            .get(q)
            .is_some_and(|c| !c.swap(true, Ordering::AcqRel))
    }

    /// Refuses management commands for `ns` nanoseconds from now.
    pub fn set_busy(&self, ns: u64) {
        self.busy_until
            .store(now_ns().saturating_add(ns), Ordering::Release);
    }

    /// Whether management commands are refused now; for how many more milliseconds.
    pub fn busy_ms(&self) -> Option<u64> {
        let (until, now) = (self.busy_until.load(Ordering::Acquire), now_ns());
        (until > now).then(|| (until - now).div_ceil(1_000_000))
    }

    /// Whether a flap holds the link down now.
    #[inline]
    pub fn link_held_down(&self) -> bool {
        self.link_down.load(Ordering::Acquire)
    }

    /// A flap takes the link down or brings it back.
    pub fn hold_link_down(&self, down: bool) {
        self.link_down.store(down, Ordering::Release);
        if down {
            self.on.store(true, Ordering::Release);
        }
    }

    /// Registers a new flap, stopping the one running; its stop flag.
    pub fn start_flap(&self) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        let old = self
            .flap_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(stop.clone());
        if let Some(old) = old {
            old.store(true, Ordering::Release);
        }
        self.on.store(true, Ordering::Release);
        stop
    }

    /// The flap with stop flag `stop` ended (if it is still the port's).
    pub fn flap_ended(&self, stop: &Arc<AtomicBool>) {
        let mut g = self.flap_stop.lock().unwrap_or_else(|e| e.into_inner());
        if g.as_ref().is_some_and(|s| Arc::ptr_eq(s, stop)) {
            *g = None;
        }
        drop(g);
        self.refresh_on();
    }

    /// Clears `kind` (every fault if `None`). A flap stops with the link up again; frames held
    /// by a delay are sent as they come due.
    pub fn clear(&self, kind: Option<FaultKind>) {
        use FaultKind as K;
        let all = kind.is_none();
        let is = |k: K| all || kind == Some(k);
        if let Some(k) = kind.and_then(FaultKind::frame_fault) {
            let mut g = self.frames.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(f) = g.as_ref() {
                *g = Some(Arc::new(f.without(k)));
            }
        } else if all {
            let mut g = self.frames.lock().unwrap_or_else(|e| e.into_inner());
            // Frames still held stay in the line until sent.
            if let Some(f) = g.as_ref() {
                *g = Some(Arc::new(f.none()));
            }
        }
        if is(K::Stall) {
            for s in self.stall_rx.iter().chain(self.stall_tx.iter()) {
                s.store(0, Ordering::Release);
            }
        }
        if is(K::Busy) {
            self.busy_until.store(0, Ordering::Release);
        }
        if is(K::LinkFlap) {
            if let Some(stop) = self
                .flap_stop
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                stop.store(true, Ordering::Release);
            }
        }
        // Frames a delay holds keep the port's faults on until they are sent.
        self.refresh_on();
    }

    /// What is set now, for `query-faults`.
    pub fn describe(&self) -> Vec<serde_json::Value> {
        use serde_json::json;
        let now = now_ns();
        let mut out = Vec::new();
        if let Some(f) = self.frames() {
            out.extend(f.describe());
        }
        for (dir, list) in [("rx", &self.stall_rx), ("tx", &self.stall_tx)] {
            for (q, s) in list.iter().enumerate() {
                let until = s.load(Ordering::Acquire);
                if until > now {
                    out.push(json!({"fault": "stall", "queue": format!("{dir}{q}"),
                                    "remaining-ms": (until - now).div_ceil(1_000_000)}));
                }
            }
        }
        if let Some(ms) = self.busy_ms() {
            out.push(json!({"fault": "busy", "remaining-ms": ms}));
        }
        if self
            .flap_stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            out.push(json!({"fault": "link-flap", "link-down": self.link_held_down()}));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stalls_busy_windows_and_clearing() {
        let f = PortFaults::new(2);
        assert!(!f.any());
        assert!(f.stall(QueueRef::Tx(1), 10_000_000_000));
        assert!(!f.stall(QueueRef::Rx(2), 1));
        assert!(f.any());
        let now = now_ns();
        assert!(f.tx_stalled(1, now).is_some());
        assert!(f.tx_stalled(0, now).is_none() && f.rx_stalled(1, now).is_none());
        f.set_busy(5_000_000_000);
        assert!(f.busy_ms().is_some_and(|ms| ms > 4000 && ms <= 5000));
        f.clear(Some(FaultKind::Busy));
        assert!(f.busy_ms().is_none());
        assert!(
            f.tx_stalled(1, now).is_some(),
            "a stall outlives clearing busy"
        );
        f.clear(None);
        assert!(f.tx_stalled(1, now).is_none());
        assert!(!f.any());
    }
}
