//! The frontend as a buggy or hostile guest: chains written by hand (any address, length,
//! flags and next index, direct or indirect), an avail index the driver never reached,
//! GET_VRING_BASE in the middle of traffic, and the raw addresses a test needs to aim at the
//! frontend's own memory or just past it. A well-behaved driver (`mod.rs`) never does these;
//! tests/hostile.rs and tests/switching.rs use them to check the device contains the damage.

use super::{proto, Desc, FrontendError, RawDesc, Result, VirtioNetFrontend};
use vhost::{VhostBackend, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

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
    /// `descs` as given. The table is written into the scratch buffer of the second-to-last
    /// descriptor. For tests of hostile chains.
    pub fn send_indirect_raw(&mut self, qp: usize, descs: &[RawDesc]) -> Result<u16> {
        if qp >= self.cfg.queue_pairs {
            return Err(FrontendError::NoSuchQueue(qp));
        }
        let q = 2 * qp + 1;
        let table = self.indirect_table(qp, descs)?;
        self.reclaim_tx(qp);
        let head = self.rings[q]
            .add_indirect(&self.mem, table, (descs.len() * 16) as u32)
            .ok_or(FrontendError::QueueFull(qp))?;
        self.kick(q);
        Ok(head)
    }

    /// Writes `descs` as an indirect table into the scratch buffer of TX queue pair `qp`'s
    /// second-to-last descriptor; returns its guest address.
    pub fn indirect_table(&mut self, qp: usize, descs: &[RawDesc]) -> Result<u64> {
        let q = 2 * qp + 1;
        let (_, size) = self.bufs[q];
        let table = self.buf_addr(q, self.cfg.queue_size - 2);
        let bytes = descs.len() * 16;
        if bytes > size as usize {
            return Err(FrontendError::FrameTooLong(bytes));
        }
        let raw: Vec<u8> = descs.iter().flat_map(|d| d.to_bytes()).collect();
        let _ = self.mem.write_slice(&raw, GuestAddress(table));
        Ok(table)
    }

    /// Writes `descs` (index in the table, descriptor) into vring `q`'s descriptor table as
    /// given, publishes `head` in its avail ring and kicks: any chain, loop or index a hostile
    /// driver can write. The frontend's own bookkeeping is bypassed: after this, its ordinary
    /// sends and receives on `q` are not to be relied on.
    pub fn post_raw(&mut self, q: usize, descs: &[(u16, RawDesc)], head: u16) {
        for &(idx, d) in descs {
            self.rings[q].write_desc_raw(&self.mem, idx, d);
        }
        self.rings[q].publish_raw(&self.mem, head);
        self.kick(q);
    }

    /// Kicks vring `q` `n` times, nothing new posted: a kick storm.
    pub fn kick_storm(&self, q: usize, n: usize) {
        for _ in 0..n {
            self.kick(q);
        }
    }

    /// SET_VRING_ADDR for vring `q` with the three rings at the guest addresses given (any
    /// overlap or alignment), then a kick. The addresses must be in guest memory: the message
    /// carries them as this process's addresses.
    pub fn set_vring_addr_raw(&mut self, q: usize, desc: u64, avail: u64, used: u64) -> Result<()> {
        let qs = self.cfg.queue_size;
        let addr = VringConfigData {
            queue_max_size: qs,
            queue_size: qs,
            flags: 0,
            desc_table_addr: self.host_base + desc,
            used_ring_addr: self.host_base + used,
            avail_ring_addr: self.host_base + avail,
            log_addr: None,
        };
        self.fe
            .set_vring_addr(q, &addr)
            .map_err(proto("SET_VRING_ADDR"))?;
        self.kick(q);
        Ok(())
    }

    /// Guest-physical addresses of vring `q`'s descriptor table, avail ring and used ring.
    pub fn ring_gpas(&self, q: usize) -> (u64, u64, u64) {
        let l = self.rings[q].layout;
        (l.desc, l.avail, l.used)
    }

    /// Guest-physical start and length of each memory-table entry.
    pub fn memory_regions(&self) -> Vec<(u64, u64)> {
        self.mem
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }

    /// Writes `data` at guest-physical `gpa` (any of the frontend's memory).
    pub fn write_guest(&self, gpa: u64, data: &[u8]) {
        let _ = self.mem.write_slice(data, GuestAddress(gpa));
    }

    /// The guest memory, shared: for a test thread that rewrites it while the device reads
    /// (a guest's other vCPU).
    pub fn memory(&self) -> GuestMemoryMmap {
        self.mem.clone()
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
