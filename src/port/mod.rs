//! The seam between the pipeline and the ports: what the pipeline needs to take frames from a
//! port and to give frames to it, whatever the port is (a vhost-user VF or PV port today; a TAP
//! device or a UDP tunnel endpoint next).
//!
//! - `frame.rs`: `TxFrame`, a frame taken from a TX queue with its head copied out once.
//! - `waker.rs`: how a port wakes the data-plane worker that serves one of its queues.
//!
//! A port kind implements `TxQueues` and `RxQueues`; the pipeline reaches every kind through
//! one enum (`datapath::ports::PortIo`), so the hot path has no `dyn` call per frame. A frame
//! to deliver is a `FrameView` (`dma_engine::frame`): a copied head and the rest where the
//! sender left it, guest memory or a host buffer, read only by the copy functions.

mod frame;
mod waker;

pub use crate::dma_engine::rx::{RxDrop, RxScratch};
pub use crate::dma_engine::FrameView;
pub use frame::TxFrame;
pub use waker::{TxPending, WaitFd, Waker};

use crate::rss::EnabledQueues;

/// Most frames the pipeline asks one `TxQueues::pop` for (its batch, `datapath::TX_BATCH`).
pub const MAX_BATCH: usize = 64;

/// A queue the guest (or whoever is behind the port) left in a state the device cannot use:
/// an index past the ring, a ring outside its memory. The queue is skipped and the fault
/// counted; the port keeps working once it is repaired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QueueFault {
    #[error("the rings are unusable (outside guest memory, misaligned or overlapping)")]
    RingUnmapped,
    #[error("the avail index ran more than the ring size ahead")]
    AvailOverrun,
}

/// What a TX queue gave.
pub enum TxPop<B> {
    /// Nothing to send (notifications are re-armed where the port uses them).
    Empty,
    /// `n` frames were filled in, to be completed with the batch token.
    Batch(usize, B),
    /// The queue cannot be used now.
    Fault(QueueFault),
}

/// Taking frames from a port's TX queues.
pub trait TxQueues {
    /// What `complete` needs to return a popped batch's buffers.
    type Batch;

    /// Fills up to `frames.len()` frames from TX queue pair `qp`.
    fn pop(&mut self, qp: usize, frames: &mut [TxFrame]) -> TxPop<Self::Batch>;

    /// Returns the buffers of the batch's first `sent` frames (the port may notify); the rest
    /// (`frames[sent..]`, held back by a rate) stay in the queue, to be popped again.
    fn complete(&mut self, qp: usize, frames: &[TxFrame], batch: Self::Batch, sent: usize);
}

/// Writing frames into one of a port's RX queues, a group at a time.
pub trait RxBatch {
    /// Writes one frame; on error the frame is not delivered (the caller counts it).
    fn push(&mut self, frame: &FrameView<'_>, scratch: &mut RxScratch) -> Result<(), RxDrop>;

    /// Publishes what was written and notifies if asked. Returns what `push` accepted but the
    /// port could not send after all (an uplink's socket full when the batch went out).
    fn close(self) -> Unsent;
}

/// Frames a port accepted into an RX batch and then could not send.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Unsent {
    pub frames: u64,
    pub bytes: u64,
    /// Buffers the receiver posted broken (not writable, outside its memory, too short for a
    /// header), handed back empty: the frames went to the next buffers or were not delivered
    /// (and counted so).
    pub bad_buffers: u64,
}

/// Giving frames to a port.
pub trait RxQueues {
    type Open<'a>: RxBatch
    where
        Self: 'a;

    /// The RX queues that can take frames now.
    fn enabled(&self) -> EnabledQueues;

    /// Opens RX queue `queue` for a group of about `expected` frames. `Ok(None)`: the queue
    /// cannot take frames now (not ready, no memory yet).
    fn open(&mut self, queue: usize, expected: usize)
        -> Result<Option<Self::Open<'_>>, QueueFault>;
}
