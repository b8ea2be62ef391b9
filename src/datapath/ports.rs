//! Every kind of port the pipeline serves, behind one enum: static dispatch, no `dyn` call per
//! frame. A new kind (a TAP device, a UDP tunnel) is a new variant here and an implementation of
//! `port::TxQueues` / `port::RxQueues` in its own module.

use crate::port::{
    FrameView, QueueFault, RxBatch, RxDrop, RxQueues, RxScratch, TxFrame, TxPop, TxQueues,
};
use crate::rss::EnabledQueues;
use crate::vf::{VhostIo, VhostRx};

/// A worker's handle on one attached port.
pub enum PortIo {
    /// A VF or PV port's vhost-user connection.
    Vhost(VhostIo),
}

/// A popped TX batch, to complete.
pub enum PortBatch {
    Vhost(<VhostIo as TxQueues>::Batch),
}

/// An RX queue open for a group of frames.
pub enum PortRx<'a> {
    Vhost(VhostRx<'a>),
}

impl PortIo {
    /// Forgets state that may have changed behind the worker's back (memory table, avail
    /// indices last seen when polling).
    pub fn refresh(&mut self) {
        match self {
            PortIo::Vhost(v) => v.refresh(),
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
        }
    }

    #[inline]
    fn complete(&mut self, qp: usize, frames: &[TxFrame], batch: PortBatch) {
        match (self, batch) {
            (PortIo::Vhost(v), PortBatch::Vhost(b)) => v.complete(qp, frames, b),
        }
    }
}

impl RxBatch for PortRx<'_> {
    #[inline]
    fn push(&mut self, frame: &FrameView<'_>, scratch: &mut RxScratch) -> Result<(), RxDrop> {
        match self {
            PortRx::Vhost(r) => r.push(frame, scratch),
        }
    }

    #[inline]
    fn close(self) {
        match self {
            PortRx::Vhost(r) => r.close(),
        }
    }
}

impl RxQueues for PortIo {
    type Open<'a> = PortRx<'a>;

    fn enabled(&self) -> EnabledQueues {
        match self {
            PortIo::Vhost(v) => v.enabled(),
        }
    }

    #[inline]
    fn open(&mut self, queue: usize, expected: usize) -> Result<Option<PortRx<'_>>, QueueFault> {
        match self {
            PortIo::Vhost(v) => Ok(v.open(queue, expected)?.map(PortRx::Vhost)),
        }
    }
}
