//! A userspace vhost-user virtio-net driver: "a guest in a test".
//!
//! - `ring.rs`: the driver side of a split virtqueue.
//! - this file: `VirtioNetFrontend`, which does over the socket what QEMU does (features,
//!   protocol features with REPLY_ACK, memfd memory table, vrings, kicks and calls) and then
//!   sends and receives frames like a guest driver, including mergeable RX buffers.
//! - `hostile.rs`: what a well-behaved driver never does, for tests of the device against a
//!   buggy or hostile guest: hand-made and indirect chains, a forged avail index,
//!   GET_VRING_BASE, raw addresses into the frontend's memory.
//! - `raw.rs`: `RawFrontend`, a frontend that writes vhost-user messages by hand (any header,
//!   body and file descriptors), for tests of the back-end against malformed messages.

mod hostile;
pub mod raw;
mod ring;

pub use raw::{Answer, RawError, RawFrontend};
pub use ring::{Desc, DriverRing, RawDesc, RingLayout, Used};

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{
    VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::dma_engine::dirty_log::LOG_PAGE;
use crate::dma_engine::{vnet_hdr_len, LogArea};

/// vhost's "log all writes" feature bit (VHOST_F_LOG_ALL).
const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// Why the frontend failed.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    #[error("cannot connect to {path}")]
    Connect {
        path: String,
        #[source]
        source: vhost::Error,
    },
    #[error("no back-end connected to {path}")]
    Accept {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user {op} failed")]
    Protocol {
        op: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("cannot create the guest memory file ({op})")]
    Memfd {
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot map the guest memory")]
    Mmap(#[source] vm_memory::mmap::FromRangesError),
    #[error("the guest memory has no region")]
    NoRegion,
    #[error("cannot describe the guest memory region to the backend")]
    MemoryRegion(#[source] vhost::Error),
    #[error("the backend offers {offered} queues, {wanted} wanted")]
    QueueNum { offered: u64, wanted: usize },
    #[error("no free descriptor on TX queue pair {0}")]
    QueueFull(usize),
    #[error("frame of {0} bytes does not fit a TX buffer")]
    FrameTooLong(usize),
    #[error("queue pair {0} does not exist")]
    NoSuchQueue(usize),
    #[error("cannot create an eventfd")]
    EventFd(#[source] std::io::Error),
}

type Result<T> = std::result::Result<T, FrontendError>;

/// How the frontend sets up the device.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Queue pairs to set up (the backend must offer at least as many).
    pub queue_pairs: usize,
    /// Queue pairs enabled after setup (like a guest enabling min(pairs, vCPUs)).
    pub enabled_pairs: usize,
    pub queue_size: u16,
    /// Size of each RX buffer (with MRG_RXBUF a frame may span several).
    pub rx_buf_size: u32,
    /// Size of each TX buffer (virtio-net header + frame).
    pub tx_buf_size: u32,
    /// Feature bits the driver is willing to ack (intersected with the device's).
    pub driver_features: u64,
    /// Put the virtio-net header in its own TX descriptor (as legacy Linux drivers do).
    pub split_tx_header: bool,
    /// Memory-table entries the guest memory is described in: equal, 4 KiB aligned parts,
    /// contiguous in guest-physical space but mapped apart (a QEMU guest's RAM below and above
    /// the PCI hole, DIMMs). The rings stay in the first.
    pub memory_regions: usize,
    /// Post every RX buffer at setup, as a driver does (a hostile test posts its own).
    pub fill_rx: bool,
    /// Leave the rings without a call fd at setup (they are kicked and enabled, so the device
    /// uses them) until `send_calls`: QEMU's order for vhost-user, which sends SET_VRING_CALL
    /// after SET_VRING_KICK and SET_VRING_ENABLE when it (re)starts a device.
    pub late_call: bool,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            queue_pairs: 1,
            enabled_pairs: 1,
            queue_size: 256,
            rx_buf_size: 2048,
            tx_buf_size: 9216 + 64,
            driver_features: u64::MAX,
            split_tx_header: false,
            memory_regions: 1,
            fill_rx: true,
            late_call: false,
        }
    }
}

/// One connected virtio-net frontend.
pub struct VirtioNetFrontend {
    fe: Frontend,
    /// The back-end's socket (`reconnect`).
    path: PathBuf,
    mem: GuestMemoryMmap,
    host_base: u64,
    rings: Vec<DriverRing>,
    bufs: Vec<(u64, u32)>,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    features: u64,
    /// What SET_FEATURES acked (with PROTOCOL_FEATURES), without VHOST_F_LOG_ALL.
    acked: u64,
    hdr_len: usize,
    cfg: FrontendConfig,
}

/// The dirty log a frontend handed the backend (`start_dirty_log`), read as QEMU reads it.
pub struct DirtyLog {
    area: LogArea,
    /// Keeps the memfd open (the backend has its own mapping of it).
    _file: File,
}

impl DirtyLog {
    /// Whether the page holding guest-physical `gpa` is marked.
    pub fn is_dirty(&self, gpa: u64) -> bool {
        self.area.is_dirty(gpa)
    }

    /// Clears the log (QEMU clears what it took at each round).
    pub fn clear(&self) {
        self.area.clear();
    }

    /// The pages marked, as guest-physical page numbers, in order.
    pub fn dirty_pages(&self) -> Vec<u64> {
        (0..self.area.len() as u64 * 8)
            .filter(|p| self.area.is_dirty(p * LOG_PAGE))
            .collect()
    }
}

fn proto(op: &'static str) -> impl FnOnce(vhost::Error) -> FrontendError {
    move |source| FrontendError::Protocol { op, source }
}

/// A memfd of `size` bytes (guest memory, a dirty log).
pub fn memfd(size: u64) -> Result<File> {
    let name = c"sriov-emu-frontend";
    // SAFETY: `name` is a valid NUL-terminated string; the returned fd is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(FrontendError::Memfd {
            op: "memfd_create",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|source| FrontendError::Memfd {
        op: "set_len",
        source,
    })?;
    Ok(file)
}

/// Maps the guest memory file as `parts` memory-table entries (one if 0), contiguous in
/// guest-physical space; the first holds at least `first_min` bytes (the rings).
fn map_regions(
    file: File,
    total: u64,
    first_min: u64,
    parts: usize,
) -> Result<(GuestMemoryMmap, Vec<VhostUserMemoryRegionInfo>)> {
    let parts = parts.max(1) as u64;
    let part = (total / parts)
        .next_multiple_of(4096)
        .max(first_min.next_multiple_of(4096));
    let mut ranges = Vec::new();
    let mut start = 0;
    while start < total {
        let len = part.min(total - start);
        let f = file
            .try_clone()
            .map_err(|source| FrontendError::Memfd { op: "dup", source })?;
        ranges.push((
            GuestAddress(start),
            len as usize,
            Some(FileOffset::new(f, start)),
        ));
        start += len;
    }
    let mem = GuestMemoryMmap::from_ranges_with_files(ranges).map_err(FrontendError::Mmap)?;
    let infos = mem
        .iter()
        .map(VhostUserMemoryRegionInfo::from_guest_region)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(FrontendError::MemoryRegion)?;
    if infos.is_empty() {
        return Err(FrontendError::NoRegion);
    }
    Ok((mem, infos))
}

impl VirtioNetFrontend {
    /// Connects to `path` and brings the device up, like QEMU at guest driver load.
    pub fn connect(path: impl AsRef<Path>, cfg: FrontendConfig) -> Result<Self> {
        let path = path.as_ref();
        let fe = Self::open(path, &cfg)?;
        Self::start(fe, path, cfg)
    }

    /// Takes the back-end's connection on `listener` (QEMU's `server=on`: the back-end is the
    /// client, as in `sriov-emu run --vf-client-dir`) and brings the device up. Waits at most
    /// `timeout` for the back-end to connect.
    pub fn accept(
        listener: &std::os::unix::net::UnixListener,
        cfg: FrontendConfig,
        timeout: std::time::Duration,
    ) -> Result<Self> {
        let path = listener
            .local_addr()
            .ok()
            .and_then(|a| a.as_pathname().map(Path::to_path_buf))
            .unwrap_or_default();
        let accept_err = |source| FrontendError::Accept {
            path: path.display().to_string(),
            source,
        };
        listener.set_nonblocking(true).map_err(accept_err)?;
        let deadline = std::time::Instant::now() + timeout;
        let stream = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() >= deadline {
                        return Err(accept_err(e));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Err(e) => return Err(accept_err(e)),
            }
        };
        stream.set_nonblocking(false).map_err(accept_err)?;
        let fe = Frontend::from_stream(stream, 2 * cfg.queue_pairs as u64);
        Self::start(fe, &path, cfg)
    }

    /// Brings the device up on the connection `fe` (to the back-end at `path`).
    fn start(fe: Frontend, path: &Path, cfg: FrontendConfig) -> Result<Self> {
        let nq = 2 * cfg.queue_pairs;
        let (fe, features, acked) = Self::negotiate(fe, &cfg)?;
        let event_idx = features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;

        // Memory: rings first, then one buffer per descriptor of every queue.
        let qs = cfg.queue_size;
        let ring_bytes = RingLayout::bytes(qs).next_multiple_of(4096);
        let mut total = ring_bytes * nq as u64;
        let mut bufs = Vec::with_capacity(nq);
        for q in 0..nq {
            let size = if q % 2 == 0 {
                cfg.rx_buf_size
            } else {
                cfg.tx_buf_size
            };
            bufs.push((total, size));
            total += u64::from(size) * u64::from(qs);
        }
        let total = total.next_multiple_of(2 << 20);
        let file = memfd(total)?;
        let (mem, infos) = map_regions(file, total, ring_bytes * nq as u64, cfg.memory_regions)?;
        let host_base = infos[0].userspace_addr;

        let rings: Vec<DriverRing> = (0..nq)
            .map(|q| DriverRing::new(&mem, RingLayout::at(ring_bytes * q as u64, qs), event_idx))
            .collect();
        let mut kicks = Vec::with_capacity(nq);
        let mut calls = Vec::with_capacity(nq);
        for _ in 0..nq {
            kicks.push(EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?);
            calls.push(EventFd::new(EFD_NONBLOCK).map_err(FrontendError::EventFd)?);
        }
        let hdr_len = vnet_hdr_len(features);
        let mut me = VirtioNetFrontend {
            fe,
            path: path.to_path_buf(),
            mem,
            host_base,
            rings,
            bufs,
            kicks,
            calls,
            features,
            acked,
            hdr_len,
            cfg,
        };
        me.set_mem_table()?;
        me.set_up_rings()?;
        if me.cfg.fill_rx {
            for qp in 0..me.cfg.queue_pairs {
                me.fill_rx(qp);
            }
        }
        me.enable_pairs()?;
        Ok(me)
    }

    /// Hangs up without stopping the device (no GET_VRING_BASE: the socket just closes, as when
    /// the back-end process dies under QEMU) and connects again with the same guest memory,
    /// rings and buffers, as QEMU reattaches a back-end that came back: every ring resumes at
    /// the used index the device left in guest memory (QEMU restores its `last_avail_idx` from
    /// it), so a chain the device took and never returned is taken again, and none is lost.
    pub fn reconnect(mut self) -> Result<Self> {
        // The back-end serves one frontend at a time: it must see this one go first.
        // SAFETY: shutdown(2) on the socket `self.fe` owns and keeps open until it is replaced
        // below; it only ends the connection.
        unsafe { libc::shutdown(self.fe.as_raw_fd(), libc::SHUT_RDWR) };
        let fe = Self::open(&self.path, &self.cfg)?;
        (self.fe, self.features, self.acked) = Self::negotiate(fe, &self.cfg)?;
        self.set_mem_table()?;
        self.set_up_rings()?;
        self.enable_pairs()?;
        Ok(self)
    }

    /// Connects to the back-end at `path`.
    fn open(path: &Path, cfg: &FrontendConfig) -> Result<Frontend> {
        let nq = 2 * cfg.queue_pairs;
        Frontend::connect(path, nq as u64).map_err(|source| FrontendError::Connect {
            path: path.display().to_string(),
            source,
        })
    }

    /// Negotiates the features and protocol features (with REPLY_ACK) on `fe` as QEMU does;
    /// returns the connection, the virtio features acked for the driver, and what
    /// SET_FEATURES said (with PROTOCOL_FEATURES).
    fn negotiate(mut fe: Frontend, cfg: &FrontendConfig) -> Result<(Frontend, u64, u64)> {
        let nq = 2 * cfg.queue_pairs;

        fe.set_owner().map_err(proto("SET_OWNER"))?;
        let dev_features = fe.get_features().map_err(proto("GET_FEATURES"))?;
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        // The driver never acks VHOST_F_LOG_ALL at setup: `start_dirty_log` does, as QEMU
        // does when a migration starts.
        let features = dev_features & cfg.driver_features & !proto_bit & !VHOST_F_LOG_ALL;
        if dev_features & proto_bit != 0 {
            let pf = fe
                .get_protocol_features()
                .map_err(proto("GET_PROTOCOL_FEATURES"))?;
            let want = VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
                | VhostUserProtocolFeatures::LOG_SHMFD
                | VhostUserProtocolFeatures::RARP;
            let pf = pf & want;
            fe.set_protocol_features(pf)
                .map_err(proto("SET_PROTOCOL_FEATURES"))?;
            if pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            let offered = fe.get_queue_num().map_err(proto("GET_QUEUE_NUM"))?;
            if offered < nq as u64 {
                return Err(FrontendError::QueueNum {
                    offered,
                    wanted: nq,
                });
            }
        }
        let acked = features | (dev_features & proto_bit);
        fe.set_features(acked).map_err(proto("SET_FEATURES"))?;
        Ok((fe, features, acked))
    }

    /// SET_MEM_TABLE: the guest memory, one entry per mapped region.
    fn set_mem_table(&mut self) -> Result<()> {
        let infos = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(FrontendError::MemoryRegion)?;
        self.fe
            .set_mem_table(&infos)
            .map_err(proto("SET_MEM_TABLE"))?;
        Ok(())
    }

    /// Describes every ring to the back-end: size, base (the used index in guest memory: 0
    /// on a fresh ring), addresses, kick and call.
    fn set_up_rings(&mut self) -> Result<()> {
        let qs = self.cfg.queue_size;
        for (q, ring) in self.rings.iter().enumerate() {
            let layout = ring.layout;
            self.fe
                .set_vring_num(q, qs)
                .map_err(proto("SET_VRING_NUM"))?;
            self.fe
                .set_vring_base(q, ring.used_idx(&self.mem))
                .map_err(proto("SET_VRING_BASE"))?;
            let addr = VringConfigData {
                queue_max_size: qs,
                queue_size: qs,
                flags: 0,
                desc_table_addr: self.host_base + layout.desc,
                used_ring_addr: self.host_base + layout.used,
                avail_ring_addr: self.host_base + layout.avail,
                log_addr: None,
            };
            self.fe
                .set_vring_addr(q, &addr)
                .map_err(proto("SET_VRING_ADDR"))?;
            self.fe
                .set_vring_kick(q, &self.kicks[q])
                .map_err(proto("SET_VRING_KICK"))?;
        }
        if !self.cfg.late_call {
            self.send_calls()?;
        }
        Ok(())
    }

    /// SET_VRING_CALL for every ring (at setup unless `late_call`).
    pub fn send_calls(&mut self) -> Result<()> {
        for q in 0..self.calls.len() {
            self.fe
                .set_vring_call(q, &self.calls[q])
                .map_err(proto("SET_VRING_CALL"))?;
        }
        Ok(())
    }

    /// Whether ring `q`'s call fd is signalled within `timeout` (an interrupt); consumes it.
    pub fn interrupted(&self, q: usize, timeout: Duration) -> bool {
        let Some(call) = self.calls.get(q) else {
            return false;
        };
        let mut pfd = libc::pollfd {
            fd: call.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is valid for the call and nfds is 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n == 1 && call.read().is_ok()
    }

    /// Enables the first `enabled_pairs` queue pairs and disables the others.
    fn enable_pairs(&mut self) -> Result<()> {
        for qp in 0..self.cfg.queue_pairs {
            let on = qp < self.cfg.enabled_pairs;
            self.set_queue_pair_enabled(qp, on)?;
        }
        Ok(())
    }

    /// Negotiated virtio features.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Used elements, over every ring, that did not return the oldest chain still posted on
    /// their ring: 0 when the device kept the order VIRTIO_F_IN_ORDER promises.
    pub fn out_of_order_completions(&self) -> u64 {
        self.rings.iter().map(DriverRing::out_of_order).sum()
    }

    /// The virtio-net header length in use.
    pub fn hdr_len(&self) -> usize {
        self.hdr_len
    }

    pub fn queue_pairs(&self) -> usize {
        self.cfg.queue_pairs
    }

    /// Enables or disables both rings of a queue pair (SET_VRING_ENABLE, as QEMU does when the
    /// guest changes its channel count).
    pub fn set_queue_pair_enabled(&mut self, qp: usize, on: bool) -> Result<()> {
        if qp >= self.cfg.queue_pairs {
            return Err(FrontendError::NoSuchQueue(qp));
        }
        self.fe
            .set_vring_enable(2 * qp, on)
            .map_err(proto("SET_VRING_ENABLE"))?;
        self.fe
            .set_vring_enable(2 * qp + 1, on)
            .map_err(proto("SET_VRING_ENABLE"))?;
        if on {
            self.kick(2 * qp);
        }
        Ok(())
    }

    fn buf_addr(&self, q: usize, head: u16) -> u64 {
        let (base, size) = self.bufs[q];
        base + u64::from(head) * u64::from(size)
    }

    fn kick(&self, q: usize) {
        let _ = self.kicks[q].write(1);
    }

    /// Posts every free RX descriptor of queue pair `qp`.
    fn fill_rx(&mut self, qp: usize) {
        let q = 2 * qp;
        let size = self.bufs[q].1;
        let mut added = false;
        // Each buffer belongs to a head index: take the head `add` will use, and publish the
        // descriptor with its buffer's address already in it. (Fixing the address after `add`
        // raced with the device: it could take the buffer while it still said address 0, and
        // write the frame over this queue's descriptor table.)
        while let Some(head) = self.rings[q].peek_next_free() {
            let addr = self.buf_addr(q, head);
            let Some(got) = self.rings[q].add(
                &self.mem,
                &[Desc {
                    addr,
                    len: size,
                    write: true,
                }],
            ) else {
                break;
            };
            debug_assert_eq!(got, head);
            added = true;
        }
        if added && self.rings[q].needs_kick(&self.mem) {
            self.kick(q);
        }
    }

    /// Frees completed TX chains of queue pair `qp`.
    fn reclaim_tx(&mut self, qp: usize) {
        let q = 2 * qp + 1;
        while self.rings[q].pop_used(&self.mem).is_some() {}
    }

    /// Queues one frame on TX queue pair `qp` without kicking; `QueueFull` when no descriptor
    /// is free.
    fn queue_frame(&mut self, qp: usize, frame: &[u8]) -> Result<()> {
        if qp >= self.cfg.queue_pairs {
            return Err(FrontendError::NoSuchQueue(qp));
        }
        let q = 2 * qp + 1;
        let (_, size) = self.bufs[q];
        if self.hdr_len + frame.len() > size as usize {
            return Err(FrontendError::FrameTooLong(frame.len()));
        }
        if self.rings[q].free_descriptors() < 2 {
            self.reclaim_tx(qp);
        }
        let ring = &mut self.rings[q];
        let descs_needed = if self.cfg.split_tx_header { 2 } else { 1 };
        if ring.free_descriptors() < descs_needed {
            return Err(FrontendError::QueueFull(qp));
        }
        // Head index is only known after `add`; buffers are per head, so write the data at the
        // buffer of the head `add` will pick: the last free descriptor.
        let head = ring.peek_next_free().ok_or(FrontendError::QueueFull(qp))?;
        let base = self.buf_addr(q, head);
        let hdr = [0u8; 12];
        let _ = self
            .mem
            .write_slice(&hdr[..self.hdr_len], GuestAddress(base));
        let _ = self
            .mem
            .write_slice(frame, GuestAddress(base + self.hdr_len as u64));
        let total = (self.hdr_len + frame.len()) as u32;
        let ring = &mut self.rings[q];
        let added = if self.cfg.split_tx_header {
            ring.add(
                &self.mem,
                &[
                    Desc {
                        addr: base,
                        len: self.hdr_len as u32,
                        write: false,
                    },
                    Desc {
                        addr: base + self.hdr_len as u64,
                        len: frame.len() as u32,
                        write: false,
                    },
                ],
            )
        } else {
            ring.add(
                &self.mem,
                &[Desc {
                    addr: base,
                    len: total,
                    write: false,
                }],
            )
        };
        debug_assert_eq!(added, Some(head));
        added.map(|_| ()).ok_or(FrontendError::QueueFull(qp))
    }

    fn kick_tx(&mut self, qp: usize) {
        let q = 2 * qp + 1;
        if self.rings[q].needs_kick(&self.mem) {
            self.kick(q);
        }
    }

    /// Sends one frame on queue pair `qp`.
    pub fn send(&mut self, qp: usize, frame: &[u8]) -> Result<()> {
        self.queue_frame(qp, frame)?;
        self.kick_tx(qp);
        Ok(())
    }

    /// Sends as many of `frames` as fit, with one kick; returns how many were queued.
    pub fn send_batch<'a>(
        &mut self,
        qp: usize,
        frames: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<usize> {
        let mut n = 0;
        for f in frames {
            match self.queue_frame(qp, f) {
                Ok(()) => n += 1,
                Err(FrontendError::QueueFull(_)) => break,
                Err(e) => return Err(e),
            }
        }
        self.kick_tx(qp);
        Ok(n)
    }

    /// Sends a frame, waiting up to `timeout` for a free TX descriptor.
    pub fn send_wait(&mut self, qp: usize, frame: &[u8], timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        loop {
            match self.send(qp, frame) {
                Err(FrontendError::QueueFull(_)) if Instant::now() < end => {
                    self.wait_call(2 * qp + 1, Duration::from_millis(1));
                    self.reclaim_tx(qp);
                }
                r => return r,
            }
        }
    }

    /// TX chains of `qp` the device has not returned yet.
    pub fn tx_in_flight(&mut self, qp: usize) -> usize {
        self.reclaim_tx(qp);
        self.rings[2 * qp + 1].in_flight()
    }

    /// Takes one received frame from queue pair `qp`, if any.
    pub fn recv(&mut self, qp: usize) -> Option<Vec<u8>> {
        if qp >= self.cfg.queue_pairs {
            return None;
        }
        let q = 2 * qp;
        let first = self.rings[q].pop_used(&self.mem)?;
        let mut hdr = [0u8; 12];
        let base = self.buf_addr(q, first.head);
        let _ = self
            .mem
            .read_slice(&mut hdr[..self.hdr_len], GuestAddress(base));
        let mergeable = self.features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let num_buffers = if mergeable {
            u16::from_le_bytes([hdr[10], hdr[11]]).max(1)
        } else {
            1
        };
        let mut frame = Vec::with_capacity(first.len as usize);
        let first_len = (first.len as usize).saturating_sub(self.hdr_len);
        frame.resize(first_len, 0);
        let _ = self
            .mem
            .read_slice(&mut frame, GuestAddress(base + self.hdr_len as u64));
        for _ in 1..num_buffers {
            // The device publishes the used elements of one frame one by one: wait for them.
            let deadline = Instant::now() + Duration::from_secs(1);
            let u = loop {
                if let Some(u) = self.rings[q].pop_used(&self.mem) {
                    break Some(u);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::hint::spin_loop();
            };
            let Some(u) = u else { break };
            let at = frame.len();
            frame.resize(at + u.len as usize, 0);
            let _ = self
                .mem
                .read_slice(&mut frame[at..], GuestAddress(self.buf_addr(q, u.head)));
        }
        self.fill_rx(qp);
        Some(frame)
    }

    /// Waits up to `timeout` for a frame on queue pair `qp`.
    pub fn recv_timeout(&mut self, qp: usize, timeout: Duration) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(f) = self.recv(qp) {
                return Some(f);
            }
            let now = Instant::now();
            if now >= end {
                return None;
            }
            self.wait_call(2 * qp, (end - now).min(Duration::from_millis(20)));
        }
    }

    /// Waits up to `timeout` for a frame on any queue pair; returns the pair and the frame.
    pub fn recv_any(&mut self, timeout: Duration) -> Option<(usize, Vec<u8>)> {
        let end = Instant::now() + timeout;
        loop {
            for qp in 0..self.cfg.queue_pairs {
                if let Some(f) = self.recv(qp) {
                    return Some((qp, f));
                }
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Collects every frame that arrives on any queue until `quiet` passes with none.
    pub fn drain(&mut self, quiet: Duration) -> Vec<(usize, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(x) = self.recv_any(quiet) {
            out.push(x);
        }
        out
    }

    fn wait_call(&self, q: usize, timeout: Duration) {
        self.interrupted(q, timeout.max(Duration::from_millis(1)));
    }

    /// Starts dirty-page logging as QEMU does when a migration starts: SET_LOG_BASE with a
    /// memfd bitmap covering all of this frontend's memory, then SET_FEATURES with
    /// VHOST_F_LOG_ALL. The backend must have offered both (LOG_SHMFD and the feature).
    pub fn start_dirty_log(&mut self) -> Result<DirtyLog> {
        let pages = self
            .mem
            .iter()
            .map(vm_memory::GuestMemoryRegion::len)
            .sum::<u64>()
            .div_ceil(LOG_PAGE);
        let size = pages.div_ceil(8).next_multiple_of(8);
        let file = memfd(size)?;
        self.fe
            .set_log_base(
                0,
                Some(VhostUserDirtyLogRegion {
                    mmap_size: size,
                    mmap_offset: 0,
                    mmap_handle: file.as_raw_fd(),
                }),
            )
            .map_err(proto("SET_LOG_BASE"))?;
        self.fe
            .set_features(self.acked | VHOST_F_LOG_ALL)
            .map_err(proto("SET_FEATURES"))?;
        let area = LogArea::map(&file, 0, size).map_err(|e| FrontendError::Memfd {
            op: "mmap of the dirty log",
            source: std::io::Error::other(e),
        })?;
        Ok(DirtyLog { area, _file: file })
    }

    /// Asks the backend to announce `mac` (SEND_RARP), as QEMU does on a live migration's
    /// destination once the guest runs there.
    pub fn send_rarp(&mut self, mac: [u8; 6]) -> Result<()> {
        self.fe.send_rarp(mac).map_err(proto("SEND_RARP"))
    }

    /// Stops dirty-page logging (SET_FEATURES without VHOST_F_LOG_ALL).
    pub fn stop_dirty_log(&mut self) -> Result<()> {
        self.fe
            .set_features(self.acked)
            .map_err(proto("SET_FEATURES"))
    }

    /// The guest-physical address of the RX buffer of descriptor `head` of queue pair `qp`.
    pub fn rx_buffer_gpa(&self, qp: usize, head: u16) -> u64 {
        self.buf_addr(2 * qp, head)
    }

    /// The guest-physical address and length of the used ring of vring `q` (RX of pair p is
    /// 2p, TX 2p + 1).
    pub fn used_ring_gpa(&self, q: usize) -> (u64, u64) {
        let l = self.rings[q].layout;
        (l.used, 6 + 8 * u64::from(self.cfg.queue_size))
    }

    /// Hangs up: the backend sees the frontend disconnect.
    pub fn disconnect(self) {
        drop(self);
    }
}
