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

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    const MEM: u64 = 0x10_0000;

    fn desc(addr: u64, len: u32, flags: u32, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, next))
    }

    /// Builds one chain from `descs` and walks it with `fill`.
    fn walk(descs: &[RawDescriptor], dir: Direction) -> (Result<(), ChainError>, Segments) {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap();
        let vq = MockSplitQueue::new(&mem, 16);
        // Written as given (next fields included), so a test can build a loop.
        for (i, d) in descs.iter().enumerate() {
            vq.desc_table().store(i as u16, *d).unwrap();
        }
        vq.avail().ring().ref_at(0).unwrap().store(0);
        vq.avail().idx().store(1);
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(&mem).unwrap().next().unwrap();
        let mut segs = Segments::default();
        let r = segs.fill(chain, dir, &mem);
        (r, segs)
    }

    #[test]
    fn readable_chain_with_header_and_data() {
        let (r, s) = walk(
            &[
                desc(0x1000, 12, VRING_DESC_F_NEXT, 1),
                desc(0x2000, 1500, 0, 0),
            ],
            Direction::Read,
        );
        assert_eq!(r, Ok(()));
        assert_eq!(s.total(), 1512);
        assert_eq!(s.as_slice().len(), 2);
    }

    #[test]
    fn write_only_descriptor_on_tx_is_refused() {
        let (r, _) = walk(&[desc(0x1000, 100, VRING_DESC_F_WRITE, 0)], Direction::Read);
        assert_eq!(r, Err(ChainError::WrongDirection));
    }

    #[test]
    fn readable_descriptor_on_rx_is_refused() {
        let (r, _) = walk(&[desc(0x1000, 100, 0, 0)], Direction::Write);
        assert_eq!(r, Err(ChainError::WrongDirection));
    }

    #[test]
    fn region_past_the_end_of_memory_is_refused() {
        let (r, _) = walk(
            &[desc(MEM - 10, 100, VRING_DESC_F_WRITE, 0)],
            Direction::Write,
        );
        assert_eq!(r, Err(ChainError::OutOfBounds));
    }

    #[test]
    fn looped_chain_ends_and_empty_descriptors_are_skipped() {
        // 0 -> 1 -> 0 -> ... : the walk stops after queue-size descriptors.
        let (r, s) = walk(
            &[
                desc(0x1000, 0, VRING_DESC_F_NEXT, 1),
                desc(0x2000, 10, VRING_DESC_F_NEXT, 0),
            ],
            Direction::Read,
        );
        assert_eq!(r, Ok(()));
        assert!(s.as_slice().len() <= 16);
        assert!(s.as_slice().iter().all(|seg| seg.len == 10));
    }
}
