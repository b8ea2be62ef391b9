//! A frame taken from a port's TX queue, as the pipeline carries it.

use crate::dma_engine::frame::MAX_HEAD;
use crate::dma_engine::{FrameView, Segments};
use crate::wire::HEADER_COPY_LEN;

/// One frame popped from a TX queue: where it is, its length, and its first bytes copied out
/// once. Every decision is made on `head` and every destination receives `head` as it is
/// then (with a VLAN tag inserted or stripped), so a guest rewriting its buffer after the pop
/// cannot bypass a policy.
pub struct TxFrame {
    /// Where the frame is (guest memory, or a host buffer of the port's).
    pub segs: Segments,
    /// The port can complete this frame's buffer (its id is valid for the queue).
    pub returnable: bool,
    /// The frame is well-formed: its length and head are valid.
    pub ok: bool,
    /// Frame length as switched (without the virtio-net header; with an inserted tag).
    pub len: usize,
    /// The frame's first bytes (room for one inserted VLAN tag).
    pub head: [u8; MAX_HEAD],
    pub head_len: usize,
    /// Offset in `segs` where the part not in `head` starts.
    pub tail_base: usize,
    /// Where behind the port the frame came from (the VXLAN remote that sent it; 0 for a
    /// vhost-user port): learned with its source MAC.
    pub from: u16,
}

impl Default for TxFrame {
    fn default() -> Self {
        TxFrame {
            segs: Segments::default(),
            returnable: false,
            ok: false,
            len: 0,
            head: [0; MAX_HEAD],
            head_len: 0,
            tail_base: 0,
            from: 0,
        }
    }
}

impl TxFrame {
    /// Starts a frame of `len` bytes whose bytes begin at offset `base` of `segs` (after the
    /// port's own header), copying its first bytes into `head`. False (and `ok` false) if the
    /// bytes are not all there.
    ///
    /// # Safety
    /// `self.segs` must be valid for reads for the call (`dma_engine::tx::read_head`).
    pub unsafe fn take_head(&mut self, base: usize, len: usize) -> bool {
        let want = len.min(HEADER_COPY_LEN);
        // SAFETY: `self.segs` are readable (the caller's contract); `self.head` is a field of
        // ours, not guest memory or a port's buffer.
        self.ok =
            unsafe { crate::dma_engine::tx::read_head(&self.segs, base, &mut self.head[..want]) };
        self.len = len;
        self.head_len = want;
        self.tail_base = base + want;
        self.ok
    }

    /// The frame's first bytes.
    #[inline]
    pub fn head(&self) -> &[u8] {
        &self.head[..self.head_len]
    }

    /// The frame as sent (after any edit of `head`).
    ///
    /// # Safety
    /// `self.segs` must stay valid for reads while the view lives: the frame belongs to the
    /// batch its port popped last and has not completed yet (the port keeps the guest memory
    /// it walked the chains in until `TxQueues::complete`).
    #[inline]
    pub unsafe fn view(&self) -> FrameView<'_> {
        // SAFETY: the caller's contract is `FrameView::new`'s.
        unsafe { FrameView::new(self.head(), self.tail_base, self.len, &self.segs) }
    }
}
