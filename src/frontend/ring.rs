//! The driver side of a split virtqueue, in the frontend's own memory.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const DESC_SIZE: u64 = 16;
const VIRTQ_DESC_F_NEXT: u16 = 1;
const VIRTQ_DESC_F_WRITE: u16 = 2;
const VIRTQ_DESC_F_INDIRECT: u16 = 4;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// Longest chain `add` builds.
pub const MAX_CHAIN: usize = 8;

/// Guest-physical layout of one split ring.
#[derive(Debug, Clone, Copy)]
pub struct RingLayout {
    pub desc: u64,
    pub avail: u64,
    pub used: u64,
    pub size: u16,
}

impl RingLayout {
    /// Bytes the three parts need from `base` (page aligned used ring).
    pub fn bytes(size: u16) -> u64 {
        let n = u64::from(size);
        let avail_end = n * DESC_SIZE + 6 + 2 * n;
        avail_end.next_multiple_of(4096) + 6 + 8 * n
    }

    pub fn at(base: u64, size: u16) -> RingLayout {
        let n = u64::from(size);
        let desc = base;
        let avail = desc + n * DESC_SIZE;
        let used = (avail + 6 + 2 * n).next_multiple_of(4096);
        RingLayout {
            desc,
            avail,
            used,
            size,
        }
    }
}

/// One used element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    pub head: u16,
    pub len: u32,
}

/// The driver's state of one queue.
#[derive(Debug)]
pub struct DriverRing {
    pub layout: RingLayout,
    free: Vec<u16>,
    avail_idx: u16,
    last_used: u16,
    event_idx: bool,
    /// `avail_idx` at the last kick, for EVENT_IDX's kick suppression.
    kicked_at: u16,
    /// Heads in the order they were made available, to check that the device uses them in
    /// that order (what a driver that acked VIRTIO_F_IN_ORDER relies on).
    posted: VecDeque<u16>,
    /// Used elements whose head was not the oldest one posted.
    out_of_order: u64,
}

/// A descriptor to add: guest address, length, device-writable.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A descriptor exactly as written in a table: any address, length, flags and next index.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl RawDesc {
    /// `VIRTQ_DESC_F_NEXT`
    pub const NEXT: u16 = VIRTQ_DESC_F_NEXT;
    /// `VIRTQ_DESC_F_WRITE`
    pub const WRITE: u16 = VIRTQ_DESC_F_WRITE;
    /// `VIRTQ_DESC_F_INDIRECT`
    pub const INDIRECT: u16 = VIRTQ_DESC_F_INDIRECT;

    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        RawDesc {
            addr,
            len,
            flags,
            next,
        }
    }

    /// The 16 bytes of the descriptor, little endian.
    pub fn to_bytes(self) -> [u8; 16] {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.addr.to_le_bytes());
        raw[8..12].copy_from_slice(&self.len.to_le_bytes());
        raw[12..14].copy_from_slice(&self.flags.to_le_bytes());
        raw[14..16].copy_from_slice(&self.next.to_le_bytes());
        raw
    }
}

impl DriverRing {
    pub fn new(mem: &GuestMemoryMmap, layout: RingLayout, event_idx: bool) -> Self {
        // Zero the ring so a reconnect starts clean.
        let zeros = vec![0u8; RingLayout::bytes(layout.size) as usize];
        let _ = mem.write_slice(&zeros, GuestAddress(layout.desc));
        DriverRing {
            layout,
            free: (0..layout.size).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            event_idx,
            kicked_at: 0,
            posted: VecDeque::with_capacity(usize::from(layout.size)),
            out_of_order: 0,
        }
    }

    /// Used elements so far whose head was not the oldest chain still posted: 0 for a device
    /// that uses chains in ring order.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// The head index the next `add` will use.
    pub fn peek_next_free(&self) -> Option<u16> {
        self.free.last().copied()
    }

    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// Chains in flight (added and not yet returned).
    pub fn in_flight(&self) -> usize {
        usize::from(self.layout.size) - self.free.len()
    }

    /// Writes a chain and publishes it; returns its head, or `None` without enough descriptors.
    pub fn add(&mut self, mem: &GuestMemoryMmap, descs: &[Desc]) -> Option<u16> {
        if descs.is_empty() || descs.len() > MAX_CHAIN || self.free.len() < descs.len() {
            return None;
        }
        let mut ids = [0u16; MAX_CHAIN];
        for id in ids.iter_mut().take(descs.len()) {
            *id = self.free.pop()?;
        }
        for (i, d) in descs.iter().enumerate() {
            let mut flags = if d.write { VIRTQ_DESC_F_WRITE } else { 0 };
            let next = if i + 1 < descs.len() {
                flags |= VIRTQ_DESC_F_NEXT;
                ids[i + 1]
            } else {
                0
            };
            let at = self.layout.desc + u64::from(ids[i]) * DESC_SIZE;
            let _ = mem.write_obj(d.addr.to_le(), GuestAddress(at));
            let _ = mem.write_obj(d.len.to_le(), GuestAddress(at + 8));
            let _ = mem.write_obj(flags.to_le(), GuestAddress(at + 12));
            let _ = mem.write_obj(next.to_le(), GuestAddress(at + 14));
        }
        self.publish(mem, ids[0]);
        Some(ids[0])
    }

    /// Publishes one chain made of a single indirect descriptor pointing at a table of
    /// `table_len` bytes at `table` (the caller wrote the table); returns its head.
    pub fn add_indirect(
        &mut self,
        mem: &GuestMemoryMmap,
        table: u64,
        table_len: u32,
    ) -> Option<u16> {
        let id = self.free.pop()?;
        let at = self.layout.desc + u64::from(id) * DESC_SIZE;
        let _ = mem.write_obj(table.to_le(), GuestAddress(at));
        let _ = mem.write_obj(table_len.to_le(), GuestAddress(at + 8));
        let _ = mem.write_obj(VIRTQ_DESC_F_INDIRECT.to_le(), GuestAddress(at + 12));
        let _ = mem.write_obj(0u16, GuestAddress(at + 14));
        self.publish(mem, id);
        Some(id)
    }

    /// Writes descriptor `idx` of the table as given, whatever it says (a hostile driver's).
    pub fn write_desc_raw(&self, mem: &GuestMemoryMmap, idx: u16, d: RawDesc) {
        let at = self.layout.desc + u64::from(idx % self.layout.size) * DESC_SIZE;
        let _ = mem.write_slice(&d.to_bytes(), GuestAddress(at));
    }

    /// Publishes `head` in the avail ring without taking it from the free list (a hostile
    /// driver's head, or one it already posted).
    pub fn publish_raw(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.publish(mem, head);
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        self.posted.push_back(head);
        let slot = self.layout.avail + 4 + 2 * u64::from(self.avail_idx % self.layout.size);
        let _ = mem.write_obj(head.to_le(), GuestAddress(slot));
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.store_avail_idx(mem, self.avail_idx);
    }

    /// Writes `idx` as the avail index the device sees (a hostile driver's index when it is
    /// not the ring's own).
    pub fn store_avail_idx(&self, mem: &GuestMemoryMmap, idx: u16) {
        let _ = mem.store(
            idx.to_le(),
            GuestAddress(self.layout.avail + 2),
            Ordering::Release,
        );
    }

    /// The driver's own avail index.
    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// The used index the device published.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.load(GuestAddress(self.layout.used + 2), Ordering::Acquire)
            .unwrap_or(0)
    }

    /// Whether the device wants a kick for what was added since the last kick.
    pub fn needs_kick(&mut self, mem: &GuestMemoryMmap) -> bool {
        std::sync::atomic::fence(Ordering::SeqCst);
        let old = self.kicked_at;
        let new = self.avail_idx;
        self.kicked_at = new;
        if old == new {
            return false;
        }
        if self.event_idx {
            let at = self.layout.used + 4 + 8 * u64::from(self.layout.size);
            let event: u16 = mem.load(GuestAddress(at), Ordering::Acquire).unwrap_or(0);
            // vring_need_event(event, new, old)
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = mem
                .load(GuestAddress(self.layout.used), Ordering::Acquire)
                .unwrap_or(0);
            flags & VRING_USED_F_NO_NOTIFY == 0
        }
    }

    /// Takes the next used element, frees its descriptors, and asks for an interrupt on the
    /// next one (EVENT_IDX `used_event`).
    pub fn pop_used(&mut self, mem: &GuestMemoryMmap) -> Option<Used> {
        let idx: u16 = mem
            .load(GuestAddress(self.layout.used + 2), Ordering::Acquire)
            .ok()?;
        if idx == self.last_used {
            return None;
        }
        let at = self.layout.used + 4 + 8 * u64::from(self.last_used % self.layout.size);
        let head: u32 = mem.read_obj(GuestAddress(at)).ok()?;
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).ok()?;
        self.last_used = self.last_used.wrapping_add(1);
        let used_event = self.layout.avail + 4 + 2 * u64::from(self.layout.size);
        let _ = mem.store(
            self.last_used.to_le(),
            GuestAddress(used_event),
            Ordering::Release,
        );
        if u32::from(self.posted.pop_front().unwrap_or(u16::MAX)) != head {
            self.out_of_order += 1;
        }
        let head = u16::try_from(head).ok().filter(|h| *h < self.layout.size)?;
        self.free_chain(mem, head);
        Some(Used { head, len })
    }

    fn free_chain(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let mut id = head;
        for _ in 0..self.layout.size {
            self.free.push(id);
            let at = self.layout.desc + u64::from(id) * DESC_SIZE;
            let flags: u16 = mem.read_obj(GuestAddress(at + 12)).unwrap_or(0);
            if flags & VIRTQ_DESC_F_NEXT == 0 {
                break;
            }
            id = mem.read_obj(GuestAddress(at + 14)).unwrap_or(0);
        }
    }
}
