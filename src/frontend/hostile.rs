//! The frontend as a buggy or hostile guest: chains written by hand (any address, length,
//! flags and next index, direct or indirect), an avail index the driver never reached,
//! GET_VRING_BASE in the middle of traffic, and the raw addresses a test needs to aim at the
//! frontend's own memory or just past it. A well-behaved driver (`mod.rs`) never does these;
//! tests/hostile.rs and tests/switching.rs use them to check the device contains the damage.

use super::{proto, Desc, FrontendError, Result, VirtioNetFrontend};
use vhost::VhostBackend;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

impl VirtioNetFrontend {
    /// Posts a hand-made chain on TX queue pair `qp` and kicks: for tests of how the device
    /// treats chains a buggy or hostile guest writes. Addresses are guest-physical; use
    /// `tx_buffer` for memory that belongs to the frontend.
    pub fn send_raw(&mut self, qp: usize, descs: &[Desc]) -> Result<u16> {
        if qp >= self.cfg.queue_pairs {
            return Err(FrontendError::NoSuchQueue(qp));
        }
        self.reclaim_tx(qp);
        let q = 2 * qp + 1;
        let head = self.rings[q]
            .add(&self.mem, descs)
            .ok_or(FrontendError::QueueFull(qp))?;
        self.kick(q);
        Ok(head)
    }

    /// Posts a chain of one indirect descriptor on TX queue pair `qp` whose table holds
    /// `descs` as given: (guest address, length, flags, next). The table is written into the
    /// scratch buffer of the second-to-last descriptor. For tests of hostile chains.
    pub fn send_indirect_raw(&mut self, qp: usize, descs: &[(u64, u32, u16, u16)]) -> Result<u16> {
        if qp >= self.cfg.queue_pairs {
            return Err(FrontendError::NoSuchQueue(qp));
        }
        let q = 2 * qp + 1;
        let (_, size) = self.bufs[q];
        let table = self.buf_addr(q, self.cfg.queue_size - 2);
        let bytes = descs.len() * 16;
        if bytes > size as usize {
            return Err(FrontendError::FrameTooLong(bytes));
        }
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let at = GuestAddress(table + 16 * i as u64);
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..16].copy_from_slice(&next.to_le_bytes());
            let _ = self.mem.write_slice(&raw, at);
        }
        self.reclaim_tx(qp);
        let head = self.rings[q]
            .add_indirect(&self.mem, table, bytes as u32)
            .ok_or(FrontendError::QueueFull(qp))?;
        self.kick(q);
        Ok(head)
    }

    /// Writes `idx` as queue `q`'s avail index (q: 2 * pair for RX, 2 * pair + 1 for TX) and
    /// kicks: a hostile or broken driver. `restore_avail_idx` puts the real one back.
    pub fn set_avail_idx_raw(&mut self, q: usize, idx: u16) {
        self.rings[q].store_avail_idx(&self.mem, idx);
        self.kick(q);
    }

    /// Writes queue `q`'s real avail index back and kicks.
    pub fn restore_avail_idx(&mut self, q: usize) {
        let idx = self.rings[q].avail_idx();
        self.rings[q].store_avail_idx(&self.mem, idx);
        self.kick(q);
    }

    /// Queue `q`'s avail index as the driver keeps it and the used index the device published.
    pub fn ring_indices(&self, q: usize) -> (u16, u16) {
        (self.rings[q].avail_idx(), self.rings[q].used_idx(&self.mem))
    }

    /// GET_VRING_BASE for queue `q`, as QEMU sends it to stop a ring (migration, device stop):
    /// the device stops the ring and reports the next avail index it would have used.
    pub fn get_vring_base(&mut self, q: usize) -> Result<u16> {
        let base = self.fe.get_vring_base(q).map_err(proto("GET_VRING_BASE"))?;
        Ok(base as u16)
    }

    /// Guest-physical address and size of a scratch TX buffer (the last descriptor's), and
    /// writes `data` at its start.
    pub fn tx_buffer(&mut self, qp: usize, data: &[u8]) -> (u64, u32) {
        let q = 2 * qp + 1;
        let (_, size) = self.bufs[q];
        let addr = self.buf_addr(q, self.cfg.queue_size - 1);
        let _ = self
            .mem
            .write_slice(&data[..data.len().min(size as usize)], GuestAddress(addr));
        (addr, size)
    }

    /// Size of the frontend's guest memory.
    pub fn mem_size(&self) -> u64 {
        self.mem.iter().map(|r| r.len()).sum()
    }

    /// The frontend's memory base address in this process (for tests of raw descriptors).
    pub fn host_base(&self) -> u64 {
        self.host_base
    }
}
