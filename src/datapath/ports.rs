//! Every kind of port the pipeline serves, behind one enum: static dispatch, no `dyn` call per
//! frame. A new kind (a TAP device, a UDP tunnel) is a new variant here and an implementation of
//! `port::TxQueues` / `port::RxQueues` in its own module.

use crate::port::{
    FrameView, QueueFault, RxBatch, RxDrop, RxQueues, RxScratch, TxFrame, TxPop, TxQueues, Unsent,
};
use crate::rss::EnabledQueues;
use crate::uplink::{UplinkIo, UplinkRx};
use crate::vf::{VhostIo, VhostRx};

/// A worker's handle on one attached port.
pub enum PortIo {
    /// A VF or PV port's vhost-user connection.
    Vhost(VhostIo),
    /// The PF's wire.
    Uplink(UplinkIo),
}

/// A popped TX batch, to complete.
pub enum PortBatch {
    Vhost(<VhostIo as TxQueues>::Batch),
    Uplink(<UplinkIo as TxQueues>::Batch),
}

/// An RX queue open for a group of frames.
pub enum PortRx<'a> {
    Vhost(VhostRx<'a>),
    Uplink(UplinkRx<'a>),
}

impl PortIo {
    /// Forgets state that may have changed behind the worker's back (memory table, avail
    /// indices last seen when polling).
    pub fn refresh(&mut self) {
        match self {
            PortIo::Vhost(v) => v.refresh(),
            PortIo::Uplink(_) => {}
        }
    }
}

impl TxQueues for PortIo {
    type Batch = PortBatch;

    #[inline]
    fn pop(&mut self, qp: usize, frames: &mut [TxFrame]) -> TxPop<PortBatch> {
        match self {
            PortIo::Vhost(v) => match v.pop(qp, frames) {
                TxPop::Batch(n, b) => TxPop::Batch(n, PortBatch::Vhost(b)),
                TxPop::Empty => TxPop::Empty,
                TxPop::Fault(f) => TxPop::Fault(f),
            },
            PortIo::Uplink(u) => match u.pop(qp, frames) {
                TxPop::Batch(n, b) => TxPop::Batch(n, PortBatch::Uplink(b)),
                TxPop::Empty => TxPop::Empty,
                TxPop::Fault(f) => TxPop::Fault(f),
            },
        }
    }

    #[inline]
    fn complete(&mut self, qp: usize, frames: &[TxFrame], batch: PortBatch, sent: usize) {
        match (self, batch) {
            (PortIo::Vhost(v), PortBatch::Vhost(b)) => v.complete(qp, frames, b, sent),
            (PortIo::Uplink(u), PortBatch::Uplink(b)) => u.complete(qp, frames, b, sent),
            // A batch goes back to the port that gave it (`Pipeline::process_tx`).
            _ => {}
        }
    }
}

impl RxBatch for PortRx<'_> {
    #[inline]
    fn push(&mut self, frame: &FrameView<'_>, scratch: &mut RxScratch) -> Result<(), RxDrop> {
        match self {
            PortRx::Vhost(r) => r.push(frame, scratch),
            PortRx::Uplink(r) => r.push(frame, scratch),
        }
    }

    #[inline]
    fn close(self) -> Unsent {
        match self {
            PortRx::Vhost(r) => r.close(),
            PortRx::Uplink(r) => r.close(),
        }
    }
}

impl RxQueues for PortIo {
    type Open<'a> = PortRx<'a>;

    fn enabled(&self) -> EnabledQueues {
        match self {
            PortIo::Vhost(v) => v.enabled(),
            PortIo::Uplink(u) => u.enabled(),
        }
    }

    #[inline]
    fn open(&mut self, queue: usize, expected: usize) -> Result<Option<PortRx<'_>>, QueueFault> {
        match self {
            PortIo::Vhost(v) => Ok(v.open(queue, expected)?.map(PortRx::Vhost)),
            PortIo::Uplink(u) => Ok(u.open(queue, expected)?.map(PortRx::Uplink)),
        }
    }
}
