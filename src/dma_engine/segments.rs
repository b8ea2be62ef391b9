//! Descriptor chains validated into a fixed-size list of guest memory segments.

use std::ops::Deref;
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemoryBackend};

/// Most descriptors accepted in one chain (Linux uses at most MAX_SKB_FRAGS + 2).
pub const MAX_SEGMENTS: usize = 64;

/// Which way the device uses a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// TX: the device reads; every descriptor must be device-readable.
    Read,
    /// RX: the device writes; every descriptor must be device-writable.
    Write,
}

/// What is wrong with a chain the guest posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("descriptor with the wrong direction for this queue")]
    WrongDirection,
    #[error("chain longer than {MAX_SEGMENTS} descriptors")]
    TooManySegments,
    #[error("descriptor outside guest memory")]
    OutOfBounds,
    #[error("chain length overflows")]
    Overflow,
}

/// One contiguous guest buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Segment {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A validated chain: its head index and segments, with no allocation.
#[derive(Debug, Clone)]
pub struct Segments {
    pub head: u16,
    segs: [Segment; MAX_SEGMENTS],
    n: usize,
    total: usize,
}

impl Default for Segments {
    fn default() -> Self {
        Segments {
            head: 0,
            segs: [Segment::default(); MAX_SEGMENTS],
            n: 0,
            total: 0,
        }
    }
}

impl Segments {
    /// Walks `chain` (direct or indirect) into `self`, checking direction, bounds and length.
    /// `self.head` is set even on error, so the chain can be returned to the guest.
    pub fn fill<M, G>(
        &mut self,
        chain: DescriptorChain<M>,
        dir: Direction,
        mem: &G,
    ) -> Result<(), ChainError>
    where
        M: Deref,
        M::Target: vm_memory::GuestMemory,
        G: GuestMemoryBackend,
    {
        self.head = chain.head_index();
        self.n = 0;
        self.total = 0;
        for desc in chain {
            if desc.is_write_only() != (dir == Direction::Write) {
                return Err(ChainError::WrongDirection);
            }
            if desc.len() == 0 {
                continue;
            }
            if self.n == MAX_SEGMENTS {
                return Err(ChainError::TooManySegments);
            }
            let len = usize::try_from(desc.len()).map_err(|_| ChainError::Overflow)?;
            if !mem.check_range(desc.addr(), len) {
                return Err(ChainError::OutOfBounds);
            }
            self.total = self.total.checked_add(len).ok_or(ChainError::Overflow)?;
            self.segs[self.n] = Segment {
                addr: desc.addr(),
                len: desc.len(),
            };
            self.n += 1;
        }
        Ok(())
    }

    /// Total bytes in the chain.
    #[inline]
    pub fn total(&self) -> usize {
        self.total
    }

    #[inline]
    pub fn as_slice(&self) -> &[Segment] {
        &self.segs[..self.n]
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}
