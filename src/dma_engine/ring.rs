//! A split virtqueue (virtio 1.x, 2.6) read and written through host pointers.
//!
//! The vhost-user handler keeps each ring's configuration in a virtio-queue `Queue` (addresses,
//! size, EVENT_IDX, and the device's `next_avail` / `next_used`). The data plane maps the three
//! rings once into a `SplitRing` and then touches them directly: an avail index load, a ring
//! entry and 16-byte descriptor reads, used element writes and one index store per batch, with
//! no address translation or bounds check per access beyond the index masks. The indices stay
//! in the `Queue`, read and written back under the vring lock, so GET_VRING_BASE sees them.
//!
//! Guest memory is shared with a running guest: every read of a ring field is a single volatile
//! or atomic access, and every value read is validated before use (indices masked or checked,
//! descriptor ranges translated through the `GuestMap`).

use super::dirty_log::LogArea;
use super::guest_map::{GuestMap, GuestMem};
use super::segments::{ChainError, Direction, Segments};
use std::sync::atomic::{fence, AtomicU16, Ordering};
use std::sync::Arc;
use virtio_queue::{Queue, QueueT};

const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Bytes of one descriptor.
const DESC_SIZE: u64 = 16;
/// Most descriptors in an indirect table (the largest ring size).
const MAX_INDIRECT: u64 = 32768;

/// One descriptor as read from guest memory.
#[derive(Debug, Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

/// The guest-physical identity of a ring, to notice when the handler reconfigures it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingAddrs {
    desc: u64,
    avail: u64,
    used: u64,
    size: u16,
    event_idx: bool,
}

impl RingAddrs {
    pub fn of(q: &Queue) -> Self {
        RingAddrs {
            desc: q.desc_table(),
            avail: q.avail_ring(),
            used: q.used_ring(),
            size: q.size(),
            event_idx: q.event_idx_enabled(),
        }
    }
}

/// A mapped split ring. It holds the guest memory it was mapped in, so its three rings stay
/// mapped as long as it lives; the data plane remaps it when the queue or the memory table
/// changes (`is_of`, `GuestMap::is_of`), as the guest then uses other addresses.
#[derive(Debug)]
pub struct SplitRing {
    addrs: RingAddrs,
    desc: usize,
    avail: usize,
    used: usize,
    mask: u16,
    /// Keeps `desc`, `avail` and `used` mapped.
    _mem: Arc<GuestMem>,
}

impl SplitRing {
    /// Maps the rings of `q`; `None` if the size is not a power of two, a ring is not
    /// mapped, contiguous and aligned in `map`, or two rings overlap (the device would write
    /// used elements over what it reads next).
    pub fn map(q: &Queue, map: &GuestMap) -> Option<Self> {
        let addrs = RingAddrs::of(q);
        let size = u64::from(addrs.size);
        if size == 0 || !size.is_power_of_two() {
            return None;
        }
        // Without EVENT_IDX the rings end before used_event / avail_event (virtio 1.2, 2.7).
        let event = if addrs.event_idx { 2 } else { 0 };
        let ranges = [
            (addrs.desc, DESC_SIZE * size),
            (addrs.avail, 4 + 2 * size + event),
            (addrs.used, 4 + 8 * size + event),
        ];
        if overlap(ranges[0], ranges[1])
            || overlap(ranges[0], ranges[2])
            || overlap(ranges[1], ranges[2])
        {
            return None;
        }
        let desc = map.contiguous(addrs.desc, DESC_SIZE * size)?;
        // flags, idx, ring[size], used_event
        let avail = map.contiguous(addrs.avail, 6 + 2 * size)?;
        // flags, idx, ring[size] of (id u32, len u32), avail_event
        let used = map.contiguous(addrs.used, 6 + 8 * size)?;
        if !desc.is_multiple_of(16) || !avail.is_multiple_of(2) || !used.is_multiple_of(4) {
            return None;
        }
        Some(SplitRing {
            addrs,
            desc,
            avail,
            used,
            mask: addrs.size - 1,
            _mem: map.mem().clone(),
        })
    }

    /// True if `q` still describes this ring.
    #[inline]
    pub fn is_of(&self, q: &Queue) -> bool {
        self.addrs == RingAddrs::of(q)
    }

    /// The queue configuration this ring was mapped from.
    #[inline]
    pub fn addrs(&self) -> RingAddrs {
        self.addrs
    }

    #[inline]
    pub fn size(&self) -> u16 {
        self.addrs.size
    }

    /// Marks the used ring (flags, idx, entries, avail_event) in the dirty log: every field
    /// the device writes in a ring is in it.
    #[inline]
    pub fn mark_used(&self, log: &LogArea) {
        log.mark(self.addrs.used, 6 + 8 * u64::from(self.addrs.size));
    }

    /// The 16-bit field at `host`, which must be one of the avail ring's (flags, idx,
    /// ring[i], used_event) or the used ring's (flags, idx, avail_event): the callers below
    /// are the only ones, and debug builds check it.
    #[inline]
    fn u16_at(&self, host: usize) -> &AtomicU16 {
        let size = usize::from(self.addrs.size);
        debug_assert!(
            (host >= self.avail && host + 2 <= self.avail + 6 + 2 * size)
                || host == self.used
                || host == self.used + 2
                || host == self.used + 4 + 8 * size,
            "{host:#x} is not a 16-bit ring field"
        );
        // SAFETY: `host` is a field of the avail or used ring (see above): inside a range
        // `map` found mapped in one piece, which `self._mem` keeps mapped while `self` and so
        // the returned reference live, and 2-aligned (both rings' bases are checked at least
        // 2-aligned and every field is at an even offset). The guest writes these fields
        // concurrently, so they are only accessed atomically.
        unsafe { &*(host as *const AtomicU16) }
    }

    /// The driver's avail index (acquire: the entries before it are visible).
    #[inline]
    pub fn avail_idx(&self) -> u16 {
        u16::from_le(self.u16_at(self.avail + 2).load(Ordering::Acquire))
    }

    #[inline]
    fn avail_flags(&self) -> u16 {
        u16::from_le(self.u16_at(self.avail).load(Ordering::Relaxed))
    }

    /// The head index at avail position `pos`.
    #[inline]
    pub fn avail_entry(&self, pos: u16) -> u16 {
        let at = self.avail + 4 + 2 * usize::from(pos & self.mask);
        u16::from_le(self.u16_at(at).load(Ordering::Relaxed))
    }

    #[inline]
    fn used_event(&self) -> u16 {
        let at = self.avail + 4 + 2 * usize::from(self.addrs.size);
        u16::from_le(self.u16_at(at).load(Ordering::Relaxed))
    }

    /// Writes used element `pos`: chain `head` with `len` bytes written.
    #[inline]
    pub fn write_used(&self, pos: u16, head: u16, len: u32) {
        let at = self.used + 4 + 8 * usize::from(pos & self.mask);
        let v = u64::from(head) | (u64::from(len) << 32);
        // SAFETY: `pos & mask` < size, so the element's 8 bytes at 4 + 8 * (pos & mask) lie in
        // the used ring's 6 + 8 * size bytes, which `map` found mapped in one piece (guest
        // memory is mapped writable) and `self._mem` keeps mapped; the ring's base is checked
        // 4-aligned and the offset is a multiple of 4, as a [u32; 2] needs. A volatile write:
        // the guest may read the ring concurrently (it only looks once the index is published).
        unsafe { std::ptr::write_volatile(at as *mut [u32; 2], [v as u32, (v >> 32) as u32]) };
    }

    /// Publishes the used elements before `idx` (release: their contents first).
    #[inline]
    pub fn publish_used(&self, idx: u16) {
        self.u16_at(self.used + 2)
            .store(idx.to_le(), Ordering::Release);
    }

    /// Whether the driver wants an interrupt after the used index moved from `old` to `new`.
    pub fn needs_notification(&self, old: u16, new: u16) -> bool {
        if old == new {
            return false;
        }
        // The used index store must be visible before the driver's event field is read.
        fence(Ordering::SeqCst);
        if self.addrs.event_idx {
            let event = self.used_event();
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            self.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT == 0
        }
    }

    /// Asks the driver not to kick for new buffers. With EVENT_IDX that is the default once
    /// `avail_event` is left behind, so nothing is written.
    pub fn disable_notification(&self) {
        if !self.addrs.event_idx {
            self.u16_at(self.used)
                .store(VRING_USED_F_NO_NOTIFY.to_le(), Ordering::Relaxed);
        }
    }

    /// Asks the driver to kick for buffers after `next_avail`; returns true if some are
    /// already there (the caller keeps going instead of sleeping).
    pub fn enable_notification(&self, next_avail: u16) -> bool {
        if self.addrs.event_idx {
            let at = self.used + 4 + 8 * usize::from(self.addrs.size);
            self.u16_at(at).store(next_avail.to_le(), Ordering::Relaxed);
        } else {
            self.u16_at(self.used).store(0, Ordering::Relaxed);
        }
        fence(Ordering::SeqCst);
        self.avail_idx() != next_avail
    }

    /// Starts loading the descriptor `head` refers to (the walk follows a batch later).
    #[inline]
    pub fn prefetch_desc(&self, head: u16) {
        if head < self.addrs.size {
            prefetch(self.desc + 16 * usize::from(head));
        }
    }

    /// Starts loading the buffer of chain `head` (its first descriptor, if direct and in
    /// guest memory): the `hdr_len` bytes of virtio-net header for reading (they are written
    /// only if they differ, `copy::write_unless_equal`), the frame's first two lines after it
    /// for writing. Write intent, because those lines are usually dirty in the guest's cache
    /// (its driver last read or rewrote a frame in them): a read prefetch would fetch them
    /// shared and the store would still wait for ownership.
    #[inline]
    pub fn prefetch_buffer(&self, map: &GuestMap, head: u16, hdr_len: usize) {
        if head >= self.addrs.size {
            return;
        }
        // SAFETY: the ring's own table: `size` descriptors, mapped, 16-aligned and kept mapped
        // by `self._mem`; `head < size` is checked above.
        let d = unsafe { Self::read_desc(self.desc, head) };
        if d.flags & VRING_DESC_F_INDIRECT == 0 {
            if let Some((host, n)) = map.translate(d.addr, 192) {
                let data = host + hdr_len;
                if (host ^ data) & !63 != 0 {
                    // The header has a line of its own (or a part of one).
                    prefetch(host);
                }
                if n > hdr_len as u64 {
                    prefetch_write(data);
                }
                if n > hdr_len as u64 + 64 {
                    prefetch_write(data + 64);
                }
            }
        }
    }

    /// Descriptor `i` of the table at host address `table`.
    ///
    /// # Safety
    /// `table` must be 8-aligned and the start of at least `i + 1` descriptors (16 bytes each)
    /// of mapped memory that stays mapped for the call.
    #[inline]
    unsafe fn read_desc(table: usize, i: u16) -> Desc {
        // SAFETY: descriptor `i` is inside the table and 8-aligned (16 * i from an 8-aligned
        // base), per the contract. A volatile read: the guest may be rewriting it, and every
        // field read is validated before use.
        let raw =
            unsafe { std::ptr::read_volatile((table + 16 * usize::from(i)) as *const [u64; 2]) };
        let (w0, w1) = (u64::from_le(raw[0]), u64::from_le(raw[1]));
        Desc {
            addr: w0,
            len: w1 as u32,
            flags: (w1 >> 32) as u16,
            next: (w1 >> 48) as u16,
        }
    }

    /// Walks the chain at `head` (direct or one level of indirect) into `segs`, checking
    /// direction, bounds, loops and length. `segs.head` is set even on error, so the chain
    /// can be returned to the guest.
    pub fn walk(
        &self,
        map: &GuestMap,
        head: u16,
        dir: Direction,
        segs: &mut Segments,
    ) -> Result<(), ChainError> {
        segs.reset(head);
        if head >= self.addrs.size {
            return Err(ChainError::BadIndex);
        }
        let mut table = self.desc;
        let mut table_len = u32::from(self.addrs.size);
        let mut in_indirect = false;
        let mut idx = head;
        // Descriptors visited in the current table: more than its length means a loop.
        let mut visited = 0u32;
        // Descriptors of the whole chain, indirect ones included: a driver must not make a
        // chain longer than the queue (virtio 1.2, 2.7.5.3.1), however many are empty.
        let mut chain = 0u32;
        let max_chain = u32::from(self.addrs.size);
        loop {
            visited += 1;
            if visited > table_len {
                return Err(ChainError::Loop);
            }
            chain += 1;
            if chain > max_chain {
                return Err(ChainError::TooLong);
            }
            // SAFETY: `idx < table_len` (`head < size` above, `next` checked below, 0 in a
            // new indirect table of at least one descriptor). `table` is the ring's own table
            // (`table_len` = size descriptors, 16-aligned, kept mapped by `self._mem`) or an
            // indirect one (`table_len` descriptors found mapped in one piece in `map`, which
            // the caller's borrow keeps alive, and checked 8-aligned).
            let d = unsafe { Self::read_desc(table, idx) };
            if d.flags & VRING_DESC_F_INDIRECT != 0 {
                if in_indirect || d.flags & VRING_DESC_F_NEXT != 0 {
                    return Err(ChainError::BadIndirect);
                }
                let len = u64::from(d.len);
                if len == 0 || len % DESC_SIZE != 0 || len / DESC_SIZE > MAX_INDIRECT {
                    return Err(ChainError::BadIndirect);
                }
                table = map.contiguous(d.addr, len).ok_or(ChainError::OutOfBounds)?;
                if !table.is_multiple_of(8) {
                    return Err(ChainError::BadIndirect);
                }
                table_len = (len / DESC_SIZE) as u32;
                in_indirect = true;
                chain -= 1;
                idx = 0;
                visited = 0;
                continue;
            }
            if (d.flags & VRING_DESC_F_WRITE != 0) != (dir == Direction::Write) {
                return Err(ChainError::WrongDirection);
            }
            segs.push_guest(map, d.addr, d.len)?;
            if d.flags & VRING_DESC_F_NEXT == 0 {
                return Ok(());
            }
            idx = d.next;
            if u32::from(idx) >= table_len {
                return Err(ChainError::BadIndex);
            }
        }
    }
}

/// Whether guest ranges `(start, len)` `a` and `b` share a byte (ranges that wrap past the
/// top of the address space are not mapped anyway).
fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1)
}

/// Starts loading the cache line at host address `addr` (a hint: never faults).
#[inline]
pub fn prefetch(addr: usize) {
    prefetch_line::<false>(addr);
}

/// Starts loading the cache line at `addr` for writing (PREFETCHW: owned, not shared).
#[inline]
pub fn prefetch_write(addr: usize) {
    prefetch_line::<true>(addr);
}

#[inline]
fn prefetch_line<const WRITE: bool>(addr: usize) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint that never faults, whatever the address (a CPU without
    // PREFETCHW runs it as a NOP).
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_ET0, _MM_HINT_T0};
        if WRITE {
            _mm_prefetch::<_MM_HINT_ET0>(addr as *const i8)
        } else {
            _mm_prefetch::<_MM_HINT_T0>(addr as *const i8)
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

#[cfg(test)]
#[path = "ring_tests.rs"]
mod tests;
