//! The seam for vhost-user ports: a data-plane worker's handle on one connection, taking TX
//! batches from the guest's rings and writing frames into its RX rings (through `dma_engine`).
//!
//! Each worker keeps its own `VhostIo` per attached port: the guest memory map and the rings
//! mapped from it (remapped when the handler changes a queue or the memory table), and, when
//! busy-polling, the avail index each TX ring was last left at, so an idle ring costs one load.

use super::port::Connection;
use super::Vring;
use crate::dma_engine::rx::{RxFill, RxScratch, UsedShadow};
use crate::dma_engine::tx::{walk_tx, TxChainError};
use crate::dma_engine::{
    vnet_hdr_len, FrameView, GuestMap, GuestMemAtomic, LogView, RingAddrs, SplitRing,
};
use crate::port::{QueueFault, RxBatch, RxDrop, RxQueues, TxFrame, TxPop, TxQueues, Unsent};
use crate::rss::EnabledQueues;
use crate::wire::{write_rarp_announce, MacAddr, ETH_HEADER_LEN, RARP_FRAME_LEN};
use std::sync::{Arc, RwLockWriteGuard};
use vhost_user_backend::{VringState, VringT};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;

/// Room for VLAN tags on top of the MTU and the Ethernet header.
const FRAME_OVERHEAD: usize = ETH_HEADER_LEN + 8;
/// Most chains one `pop` takes (the pipeline's batch is at most this long).
const MAX_POP: usize = 64;

/// One guest's memory map and its mapped rings.
struct GuestRings {
    map: Option<GuestMap>,
    /// Indexed like the vrings: RX of pair q at 2q, TX at 2q + 1.
    rings: Box<[Option<SplitRing>]>,
    /// Per TX vring, busy-poll only: the `next_avail` last left in the queue. An avail index
    /// still equal to it means nothing new, seen without taking the vring lock. Forgotten on
    /// every `refresh`, so a queue the handler reset is looked at under the lock again soon.
    seen_avail: Box<[Option<u16>]>,
}

impl GuestRings {
    fn new(vrings: usize) -> Self {
        GuestRings {
            map: None,
            rings: (0..vrings).map(|_| None).collect(),
            seen_avail: vec![None; vrings].into_boxed_slice(),
        }
    }

    /// Under the vring's lock: the guest map and the ring of vring `index` as `q` describes
    /// it now, remapped if the memory table or the queue changed. The flag is true when the
    /// ring was (re)mapped by this call. `None` if the ring is not in guest memory.
    fn get(
        &mut self,
        mem: &GuestMemAtomic,
        index: usize,
        q: &Queue,
    ) -> Option<(&GuestMap, &SplitRing, bool)> {
        let mem = mem.memory();
        if self.map.as_ref().is_none_or(|m| !m.is_of(&mem)) {
            self.map = Some(GuestMap::new(mem.into_inner()));
            self.rings.iter_mut().for_each(|r| *r = None);
        }
        let map = self.map.as_ref()?;
        let slot = self.rings.get_mut(index)?;
        let mut fresh = false;
        if slot.as_ref().is_none_or(|r| !r.is_of(q)) {
            *slot = SplitRing::map(q, map);
            fresh = true;
        }
        Some((map, slot.as_ref()?, fresh))
    }
}

/// A worker's handle on one vhost-user connection.
pub struct VhostIo {
    conn: Arc<Connection>,
    rings: GuestRings,
    /// Busy-poll mode: guest TX kicks stay off.
    poll: bool,
    /// Largest frame accepted from the guest (MTU + Ethernet header + two VLAN tags).
    max_frame: usize,
    queue_pairs: usize,
    /// The dirty log as of this worker's last batch on the connection.
    log: LogView,
    /// The RARP sent from the port on SEND_RARP (a host buffer the pipeline reads until the
    /// batch completes; boxed so its address stays put).
    announce: Box<[u8; RARP_FRAME_LEN]>,
    /// The port's name, for logs.
    port: Arc<str>,
    /// Used elements of the RX group being written, before they go into the guest's ring.
    rx_shadow: UsedShadow,
    /// A malformed TX chain was logged on this connection (each is counted; one is logged).
    warned: bool,
}

/// Logs the first malformed TX chain of a connection: a guest that writes one usually writes
/// many, and each is counted in `drop_malformed` anyway.
#[cold]
fn warn_malformed(warned: &mut bool, port: &str, qp: usize, head: u16, e: TxChainError) {
    if !*warned {
        *warned = true;
        tracing::warn!(
            port,
            "TX queue {qp}: chain {head} malformed: {e}; dropped and counted in drop_malformed \
             (further ones on this connection are counted, not logged)"
        );
    }
}

impl VhostIo {
    pub fn new(
        conn: Arc<Connection>,
        port: Arc<str>,
        mtu: u16,
        queue_pairs: u16,
        poll: bool,
    ) -> Self {
        VhostIo {
            port,
            rx_shadow: UsedShadow::default(),
            warned: false,
            rings: GuestRings::new(conn.num_queues()),
            conn,
            poll,
            max_frame: usize::from(mtu) + FRAME_OVERHEAD,
            queue_pairs: usize::from(queue_pairs),
            log: LogView::default(),
            announce: Box::new([0; RARP_FRAME_LEN]),
        }
    }

    /// Makes `f` the RARP that announces `mac` from the port, written into `buf` (host memory,
    /// no guest buffer to return).
    fn announce_frame(buf: &mut [u8; RARP_FRAME_LEN], mac: MacAddr, f: &mut TxFrame) {
        write_rarp_announce(mac, buf);
        f.segs.reset(0);
        f.returnable = false;
        f.from = 0;
        // SAFETY: `buf` (`VhostIo::announce`) is a live heap buffer of RARP_FRAME_LEN bytes, not freed or
        // written again before this batch completes (only a pop rewrites it, and the pipeline
        // completes a batch before the next pop).
        f.ok = unsafe { f.segs.push_host(buf.as_ptr() as usize, RARP_FRAME_LEN) }.is_ok()
            // SAFETY: the segment just pushed is readable (above).
            && unsafe { f.take_head(0, RARP_FRAME_LEN) };
    }

    /// Forgets what may have changed behind the worker's back: the memory table, and (when
    /// polling) the avail indices last seen.
    pub fn refresh(&mut self) {
        let stale = self
            .rings
            .map
            .as_ref()
            .is_some_and(|m| !m.is_of(&self.conn.mem.memory()));
        if stale {
            self.rings.map = None;
            self.rings.rings.iter_mut().for_each(|r| *r = None);
        }
        self.rings.seen_avail.iter_mut().for_each(|s| *s = None);
    }
}

impl TxQueues for VhostIo {
    type Batch = RingAddrs;

    fn pop(&mut self, qp: usize, frames: &mut [TxFrame]) -> TxPop<RingAddrs> {
        let index = 2 * qp + 1;
        let poll = self.poll;
        // SEND_RARP after a migration: sent before the guest's own frames, from TX pair 0.
        let announce = qp == 0 && self.conn.announce_pending();
        if poll && !announce {
            if let (Some(Some(ring)), Some(Some(seen))) = (
                self.rings.rings.get(index),
                self.rings.seen_avail.get(index),
            ) {
                if ring.avail_idx() == *seen {
                    // The common busy-poll answer: no lock, no memory-table lookup.
                    return TxPop::Empty;
                }
            }
        }
        let Some(vring) = self.conn.vring(index) else {
            return TxPop::Empty;
        };
        let hdr_len = vnet_hdr_len(self.conn.acked_features());
        let mut st = vring.get_mut();
        if !st.is_enabled() || !st.get_queue().ready() {
            return TxPop::Empty;
        }
        let q = st.get_queue_mut();
        self.log.sync(&self.conn.log);
        let log = self.log.get();
        let Some((map, ring, fresh)) = self.rings.get(&self.conn.mem, index, q) else {
            return TxPop::Fault(QueueFault::RingUnmapped);
        };
        if announce && !frames.is_empty() {
            if let Some(mac) = self.conn.take_announce() {
                let addrs = ring.addrs();
                Self::announce_frame(&mut self.announce, mac, &mut frames[0]);
                self.conn.tx_begin(qp);
                return TxPop::Batch(1, addrs);
            }
        }
        if fresh && poll {
            ring.disable_notification();
            log.inspect(|l| ring.mark_used(l));
        }
        let mut next = q.next_avail();
        let mut avail = ring.avail_idx();
        if avail == next {
            if poll {
                self.rings.seen_avail[index] = Some(next);
                return TxPop::Empty;
            }
            let armed = ring.enable_notification(next);
            log.inspect(|l| ring.mark_used(l));
            if !armed {
                return TxPop::Empty;
            }
            avail = ring.avail_idx();
        } else if !poll {
            ring.disable_notification();
            log.inspect(|l| ring.mark_used(l));
        }
        let pending = avail.wrapping_sub(next);
        if pending > ring.size() {
            return TxPop::Fault(QueueFault::AvailOverrun);
        }
        let n = usize::from(pending).min(frames.len()).min(MAX_POP);
        // In stages, so the cache misses of one frame overlap those of the others: heads
        // (prefetching their descriptors), chain walks (prefetching frame data), then the
        // header copies.
        let mut heads = [0u16; MAX_POP];
        for h in &mut heads[..n] {
            *h = ring.avail_entry(next);
            ring.prefetch_desc(*h);
            next = next.wrapping_add(1);
        }
        for (f, &h) in frames[..n].iter_mut().zip(&heads[..n]) {
            f.returnable = h < ring.size();
            match walk_tx(ring, map, h, hdr_len, self.max_frame, &mut f.segs) {
                Ok(len) => {
                    f.ok = true;
                    f.len = len;
                }
                Err(e) => {
                    f.ok = false;
                    f.len = 0;
                    warn_malformed(&mut self.warned, &self.port, qp, h, e);
                }
            }
        }
        for f in &mut frames[..n] {
            if f.ok {
                // SAFETY: `f.segs` were walked just above with `map`, which `self.rings` holds
                // (and so keeps mapped) for this whole call.
                unsafe { f.take_head(hdr_len, f.len) };
            }
        }
        let addrs = ring.addrs();
        q.set_next_avail(next);
        if poll {
            self.rings.seen_avail[index] = Some(next);
        }
        // Until `complete`, GET_VRING_BASE waits for this batch (`Connection::wait_tx_idle`).
        self.conn.tx_begin(qp);
        TxPop::Batch(n, addrs)
    }

    /// Returns the chains of the first `sent` frames to the guest and notifies it if it asked;
    /// the others go back to the avail side (the next pop takes them again). This happens even
    /// if the handler stopped the queue meanwhile (GET_VRING_BASE waits for it), unless the
    /// stop gave up waiting or the ring was reconfigured: then the chains are gone with it.
    fn complete(&mut self, qp: usize, frames: &[TxFrame], addrs: RingAddrs, sent: usize) {
        let index = 2 * qp + 1;
        let Some(vring) = self.conn.vring(index) else {
            return;
        };
        let mut st = vring.get_mut();
        let wanted = self.conn.tx_end(qp);
        if !wanted || RingAddrs::of(st.get_queue()) != addrs {
            return;
        }
        let q = st.get_queue_mut();
        self.log.sync(&self.conn.log);
        let Some((_, ring, _)) = self.rings.get(&self.conn.mem, index, q) else {
            return;
        };
        let sent = sent.min(frames.len());
        if sent < frames.len() {
            // Held back: the pop moved past them, nothing was written for them.
            let back = u16::try_from(frames.len() - sent).unwrap_or(0);
            q.set_next_avail(q.next_avail().wrapping_sub(back));
        }
        let old = q.next_used();
        let mut used = old;
        for f in frames[..sent].iter().filter(|f| f.returnable) {
            ring.write_used(used, f.segs.head, 0);
            used = used.wrapping_add(1);
        }
        ring.publish_used(used);
        if let Some(log) = self.log.get() {
            ring.mark_used(log);
        }
        q.set_next_used(used);
        if ring.needs_notification(old, used) {
            let _ = st.signal_used_queue();
        }
        if sent < frames.len() {
            // Busy-poll must look at the ring again, not skip it as seen.
            if let Some(s) = self.rings.seen_avail.get_mut(index) {
                *s = None;
            }
        }
    }
}

/// An RX ring of a vhost-user connection, locked while a group of frames is written.
pub struct VhostRx<'a> {
    state: RwLockWriteGuard<'a, VringState<GuestMemAtomic>>,
    fill: RxFill<'a>,
}

impl RxBatch for VhostRx<'_> {
    #[inline]
    fn push(&mut self, frame: &FrameView<'_>, scratch: &mut RxScratch) -> Result<(), RxDrop> {
        self.fill.deliver(frame, scratch)
    }

    fn close(mut self) -> Unsent {
        let bad_buffers = u64::from(self.fill.bad_buffers());
        let (next_avail, next_used, notify) = self.fill.finish();
        let q = self.state.get_queue_mut();
        q.set_next_avail(next_avail);
        q.set_next_used(next_used);
        if notify {
            let _ = self.state.signal_used_queue();
        }
        // What was written is in the guest's ring.
        Unsent {
            bad_buffers,
            ..Unsent::default()
        }
    }
}

impl RxQueues for VhostIo {
    type Open<'a> = VhostRx<'a>;

    fn enabled(&self) -> EnabledQueues {
        EnabledQueues::from_mask(self.conn.enabled_rx_mask(self.queue_pairs))
    }

    fn open(&mut self, queue: usize, expected: usize) -> Result<Option<VhostRx<'_>>, QueueFault> {
        let index = 2 * queue;
        let Some(vring) = self.conn.vring(index) else {
            return Ok(None);
        };
        let features = self.conn.acked_features();
        let state = rx_lock(vring);
        if !state.is_enabled() || !state.get_queue().ready() {
            return Ok(None);
        }
        let q = state.get_queue();
        let (next_avail, next_used) = (q.next_avail(), q.next_used());
        self.log.sync(&self.conn.log);
        let log = self.log.get();
        let Some((map, ring, fresh)) = self.rings.get(&self.conn.mem, index, q) else {
            return Err(QueueFault::RingUnmapped);
        };
        if fresh {
            // Frames never wait for RX buffers, so the guest need not kick when it refills:
            // each RX kick would only wake a vhost-user thread for nothing.
            ring.disable_notification();
            log.inspect(|l| ring.mark_used(l));
        }
        let shadow = &mut self.rx_shadow;
        let fill = RxFill::open(map, ring, next_avail, next_used, features, expected, shadow)
            .map_err(|_| QueueFault::AvailOverrun)?
            .with_log(log);
        Ok(Some(VhostRx { state, fill }))
    }
}

fn rx_lock(vring: &Vring) -> RwLockWriteGuard<'_, VringState<GuestMemAtomic>> {
    vring.get_mut()
}
