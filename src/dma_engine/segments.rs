//! Descriptor chains validated into a fixed-size list of host memory segments.

use super::guest_map::GuestMap;

/// Most segments accepted in one chain (Linux uses at most MAX_SKB_FRAGS + 2 descriptors; a
/// descriptor crossing a guest memory region boundary takes two).
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
    #[error("chain longer than {MAX_SEGMENTS} segments")]
    TooManySegments,
    #[error("descriptor outside guest memory")]
    OutOfBounds,
    #[error("chain length overflows")]
    Overflow,
    #[error("descriptor index outside the table")]
    BadIndex,
    #[error("descriptor chain loops")]
    Loop,
    #[error("malformed indirect descriptor")]
    BadIndirect,
    #[error("chain has more descriptors than the queue size")]
    TooLong,
}

/// One contiguous buffer, as a host address in a guest memory mapping.
#[derive(Debug, Clone, Copy, Default)]
pub struct Segment {
    pub host: usize,
    pub len: u32,
}

/// A validated chain: its head index and segments, with no allocation. The host addresses are
/// valid while the `GuestMap` they were translated with is alive.
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
    /// Empties the list for chain `head`.
    #[inline]
    pub fn reset(&mut self, head: u16) {
        self.head = head;
        self.n = 0;
        self.total = 0;
    }

    /// Appends the guest buffer `[gpa, gpa + len)`, split where guest memory regions end.
    #[inline]
    pub fn push_guest(&mut self, map: &GuestMap, gpa: u64, len: u32) -> Result<(), ChainError> {
        let mut gpa = gpa;
        let mut left = u64::from(len);
        while left > 0 {
            let (host, n) = map.translate(gpa, left).ok_or(ChainError::OutOfBounds)?;
            if self.n == MAX_SEGMENTS {
                return Err(ChainError::TooManySegments);
            }
            self.segs[self.n] = Segment {
                host,
                len: n as u32,
            };
            self.n += 1;
            self.total = self
                .total
                .checked_add(n as usize)
                .ok_or(ChainError::Overflow)?;
            gpa = gpa.checked_add(n).ok_or(ChainError::OutOfBounds)?;
            left -= n;
        }
        Ok(())
    }

    /// Appends a host buffer of the port's own (a frame read from a socket, for instance), so
    /// one segment list describes a frame wherever it is.
    ///
    /// # Safety
    /// For as long as the segments are used (by the copy functions, which access them through
    /// raw pointers), `[host, host + len)` must stay valid for reads, and for writes too if
    /// the segments are written into (an RX destination), and no Rust reference may point
    /// into it.
    pub unsafe fn push_host(&mut self, host: usize, len: usize) -> Result<(), ChainError> {
        if self.n == MAX_SEGMENTS {
            return Err(ChainError::TooManySegments);
        }
        let len32 = u32::try_from(len).map_err(|_| ChainError::Overflow)?;
        self.segs[self.n] = Segment { host, len: len32 };
        self.n += 1;
        self.total = self.total.checked_add(len).ok_or(ChainError::Overflow)?;
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
    use crate::dma_engine::GuestMem;
    use std::sync::Arc;
    use vm_memory::GuestAddress;

    #[test]
    fn a_buffer_across_two_regions_becomes_two_segments() {
        let mem =
            GuestMem::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x1000), 0x1000)])
                .unwrap();
        let map = GuestMap::new(Arc::new(mem));
        let mut s = Segments::default();
        s.reset(3);
        s.push_guest(&map, 0xf00, 0x200).unwrap();
        assert_eq!(s.as_slice().len(), 2);
        assert_eq!((s.as_slice()[0].len, s.as_slice()[1].len), (0x100, 0x100));
        assert_eq!(s.total(), 0x200);
        assert_eq!(
            s.push_guest(&map, 0x1f00, 0x200),
            Err(ChainError::OutOfBounds)
        );
    }

    #[test]
    fn too_many_segments_is_an_error() {
        let mem = GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let map = GuestMap::new(Arc::new(mem));
        let mut s = Segments::default();
        s.reset(0);
        for i in 0..MAX_SEGMENTS as u64 {
            s.push_guest(&map, i * 16, 8).unwrap();
        }
        assert_eq!(s.push_guest(&map, 0, 8), Err(ChainError::TooManySegments));
        s.reset(1);
        assert!(s.is_empty());
    }
}
