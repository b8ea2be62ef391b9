//! The data-plane workers.
//!
//! Each worker thread owns the TX queues assigned to it (`Waker::owner`: queue pair q of port p
//! goes to worker (p + q) mod N) and delivers what they send into any port's RX queues.
//! vhost-user handler threads only mark a TX queue as kicked and wake its worker through an
//! eventfd. For each TX queue a worker:
//!
//! 1. pops a batch of chains under that ring's lock, copying each frame's first bytes once;
//! 2. makes every switch decision on those copies (one switch lock per batch), producing a list
//!    of deliveries (frame, destination port, RX queue);
//! 3. delivers them grouped by destination RX ring: one ring lock, one used-index update and
//!    at most one notification per group, one guest-to-guest copy per frame;
//! 4. returns the TX chains under the TX ring's lock, notifying the guest if it asked.
//!
//! Rings are read and written through host pointers (`ring.rs`); counters are summed per
//! batch or group and added once. Only one ring lock is held at a time.

use super::copy::{copy_segments, copy_short, read_segments, write_segments, CopyError};
use super::guest_map::GuestMap;
use super::net_hdr::{rx_header, vnet_hdr_len, VNET_HDR_MAX};
use super::ring::{RingAddrs, SplitRing};
use super::segments::{Direction, Segments};
use crate::datapath::groups::{Group, Groups};
use crate::events::EventBus;
use crate::pf::PortKind;
use crate::rss::{EnabledQueues, FlowTuple, Learn, Steering, SteeringSnapshot};
use crate::stats::{PortCounters, PortTotals};
use crate::switch::{policy, Egress, Ingress, Learned, PolicyDrop, Switch, TokenBucket, Verdict};
use crate::vf::{Connection, GuestMemAtomic, Port, PortTable, VfSettings, Vring};
use crate::wire::{FrameHeader, MacAddr, ETH_HEADER_LEN, HEADER_COPY_LEN};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLockWriteGuard};
use std::time::{Duration, Instant};
use vhost_user_backend::{VringState, VringT};
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Chains popped from a TX ring per lock hold.
const TX_BATCH: usize = 64;
/// Frames taken from one TX queue per pass before other queues get their turn.
const TX_BUDGET: usize = 256;
/// `Delivery::queue` of a delivery still to be steered under the destination's RSS lock.
const STEER_PENDING: u16 = u16::MAX;
/// RX descriptors prefetched when a group opens.
const RX_PREFETCH: usize = 32;
/// Most RX chains one (mergeable) frame may span.
const MAX_RX_CHAINS: usize = 64;
/// Room for VLAN tags on top of the MTU and the Ethernet header.
const FRAME_OVERHEAD: usize = ETH_HEADER_LEN + 8;
/// How long a worker sleeps without a kick (worker 0 then ages the FDB).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Busy-poll rounds between looks at control-side changes (a few microseconds).
const POLL_SYNC_ROUNDS: u64 = 256;

/// Wakes the workers: one eventfd per worker, written by the vhost-user threads on a kick.
#[derive(Debug)]
pub struct Waker {
    efds: Box<[EventFd]>,
}

impl Waker {
    /// Wakers for `workers` data-plane workers (at least one).
    pub fn new(workers: usize) -> io::Result<Self> {
        let efds = (0..workers.max(1))
            .map(|_| EventFd::new(EFD_NONBLOCK))
            .collect::<io::Result<_>>()?;
        Ok(Waker { efds })
    }

    pub fn workers(&self) -> usize {
        self.efds.len()
    }

    /// The worker that owns TX queue pair `qp` of the port with index `port`.
    #[inline]
    pub fn owner(&self, port: usize, qp: usize) -> usize {
        (port + qp) % self.efds.len()
    }

    /// Wakes the worker that owns TX queue pair `qp` of port `port`.
    pub fn wake_tx(&self, port: usize, qp: usize) {
        self.wake_worker(self.owner(port, qp));
    }

    /// Wakes every worker (ports or connections changed).
    pub fn wake(&self) {
        for w in 0..self.efds.len() {
            self.wake_worker(w);
        }
    }

    fn wake_worker(&self, w: usize) {
        // EAGAIN means the counter is saturated: the worker is awake anyway.
        let _ = self.efds[w].write(1);
    }

    /// Sleeps until woken or `timeout` passes, and resets the eventfd.
    fn wait(&self, w: usize, timeout: Duration) {
        let efd = &self.efds[w];
        let mut pfd = libc::pollfd {
            fd: efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is a valid pollfd for the duration of the call, and nfds is 1.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let _ = efd.read();
    }
}

/// Bytes of an 802.1Q/802.1ad tag.
const VLAN_TAG_LEN: usize = 4;

/// One popped TX chain and what was read from it.
struct TxFrame {
    segs: Segments,
    /// The head index is inside the ring: the chain goes back on the used ring.
    returnable: bool,
    /// Frame length as switched (without the virtio-net header; with an inserted tag).
    len: usize,
    /// The first bytes of the frame, copied once: every decision is made on this copy and the
    /// destination receives these bytes, so a guest rewriting its buffer cannot bypass policy.
    /// A port VLAN tag is inserted here.
    head: [u8; HEADER_COPY_LEN + VLAN_TAG_LEN],
    head_len: usize,
    /// Offset in the chain (virtio-net header included) where the part not in `head` starts.
    tail_base: usize,
    /// Passed the sender's edge policy: its flow may be learned (flow learning on).
    learn: bool,
    /// The RSS / flow steering view of the frame, parsed from `head` when first needed
    /// (one enabled queue and no rules need only `is_ip`).
    tuple: Option<FlowTuple>,
    ok: bool,
}

impl Default for TxFrame {
    fn default() -> Self {
        TxFrame {
            segs: Segments::default(),
            returnable: false,
            len: 0,
            head: [0; HEADER_COPY_LEN + VLAN_TAG_LEN],
            head_len: 0,
            tail_base: 0,
            learn: false,
            tuple: None,
            ok: false,
        }
    }
}

impl TxFrame {
    /// Walks chain `head` and checks its length; starts loading the frame's first bytes.
    fn walk(
        &mut self,
        ring: &SplitRing,
        map: &GuestMap,
        head: u16,
        hdr_len: usize,
        max_frame: usize,
    ) {
        self.ok = false;
        self.learn = false;
        self.len = 0;
        self.returnable = head < ring.size();
        if ring
            .walk(map, head, Direction::Read, &mut self.segs)
            .is_err()
        {
            return;
        }
        let total = self.segs.total();
        if total < hdr_len + ETH_HEADER_LEN || total - hdr_len > max_frame {
            return;
        }
        self.len = total - hdr_len;
        self.ok = true;
        let mut off = hdr_len;
        for s in self.segs.as_slice() {
            if (s.len as usize) > off {
                super::ring::prefetch(s.host + off);
                break;
            }
            off -= s.len as usize;
        }
    }

    /// Copies the first bytes of a walked frame and parses its flow tuple.
    fn read_head(&mut self, hdr_len: usize) {
        if !self.ok {
            return;
        }
        self.ok = false;
        let want = self.len.min(HEADER_COPY_LEN);
        // SAFETY: the segments were translated with the sender's map, alive for the batch.
        let n = unsafe { read_segments(self.segs.as_slice(), hdr_len, &mut self.head[..want]) };
        if n != want {
            return;
        }
        self.head_len = n;
        self.tail_base = hdr_len + n;
        self.tuple = None;
        self.ok = true;
    }

    /// The frame's flow tuple (parsed on first use).
    fn tuple(&mut self) -> &FlowTuple {
        self.tuple
            .get_or_insert_with(|| FlowTuple::parse(&self.head[..self.head_len]))
    }

    fn is_ip(&self) -> bool {
        match &self.tuple {
            Some(t) => t.is_ip(),
            None => FlowTuple::is_ip_frame(&self.head[..self.head_len]),
        }
    }

    /// Inserts a VLAN tag after the MAC addresses (the frame's port VLAN).
    fn insert_tag(&mut self, tpid: u16, tci: u16) {
        self.head.copy_within(12..self.head_len, 12 + VLAN_TAG_LEN);
        self.head[12..14].copy_from_slice(&tpid.to_be_bytes());
        self.head[14..16].copy_from_slice(&tci.to_be_bytes());
        self.head_len += VLAN_TAG_LEN;
        self.len += VLAN_TAG_LEN;
    }
}

/// A frame as one destination receives it: `head` from the stack copy (maybe with the outer
/// tag stripped), the rest from the sender's memory at `tail_base`.
struct FrameView<'a> {
    head: &'a [u8],
    tail_base: usize,
    len: usize,
    segs: &'a Segments,
}

impl<'a> FrameView<'a> {
    /// The frame as sent, or without its outer VLAN tag.
    fn of(f: &'a TxFrame, strip: bool, buf: &'a mut [u8; HEADER_COPY_LEN + VLAN_TAG_LEN]) -> Self {
        let head = &f.head[..f.head_len];
        if !strip {
            return FrameView {
                head,
                tail_base: f.tail_base,
                len: f.len,
                segs: &f.segs,
            };
        }
        let n = head.len() - VLAN_TAG_LEN;
        buf[..12].copy_from_slice(&head[..12]);
        buf[12..n].copy_from_slice(&head[12 + VLAN_TAG_LEN..]);
        FrameView {
            head: &buf[..n],
            tail_base: f.tail_base,
            len: f.len - VLAN_TAG_LEN,
            segs: &f.segs,
        }
    }
}

/// One guest's memory map and its mapped rings, kept by a worker per attached port.
struct GuestRings {
    map: Option<GuestMap>,
    /// Indexed like the vrings: RX of pair q at 2q, TX at 2q + 1.
    rings: Box<[Option<SplitRing>]>,
    /// Per TX vring, busy-poll only: the `next_avail` this worker last left in the queue. An
    /// avail index still equal to it means nothing new, seen without taking the vring lock.
    /// Forgotten on every refresh, so a queue the handler reset is looked at under the lock
    /// again within `POLL_SYNC_ROUNDS`.
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

    /// Forgets the map and rings if SET_MEM_TABLE replaced the guest memory table.
    fn drop_if_stale(&mut self, conn: &Connection) {
        if self
            .map
            .as_ref()
            .is_some_and(|m| !m.is_of(&conn.mem.memory()))
        {
            self.map = None;
            self.rings.iter_mut().for_each(|r| *r = None);
        }
        self.seen_avail.iter_mut().for_each(|s| *s = None);
    }

    /// Under the vring's lock: the guest map and the ring of vring `index` as `q` describes
    /// it now, remapped if the memory table or the queue changed. The flag is true when the
    /// ring was (re)mapped by this call. `None` if the ring is not in guest memory.
    fn get(
        &mut self,
        conn: &Connection,
        index: usize,
        q: &Queue,
    ) -> Option<(&GuestMap, &SplitRing, bool)> {
        let mem = conn.mem.memory();
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

/// The data plane's view of one port.
struct PortView {
    port: Arc<Port>,
    generation: u64,
    conn: Option<Arc<Connection>>,
    rings: GuestRings,
    /// RX queues the guest has enabled, refreshed with the other views.
    enabled: EnabledQueues,
    /// A copy of the port's settings, re-read when their generation changes.
    settings: VfSettings,
    settings_gen: u64,
    /// max_tx_rate state.
    bucket: TokenBucket,
    is_vf: bool,
    /// The TX queue pairs this worker owns (bit q).
    own_tx: u64,
    /// Steering without the RSS lock (`VfRss::snapshot`: learning off), taken again when the
    /// port's RSS generation moves.
    rss_fast: Option<Box<SteeringSnapshot>>,
    rss_gen: u64,
    /// A broken ring was reported (once per connection).
    warned: bool,
}

impl PortView {
    fn new(port: Arc<Port>, own_tx: u64) -> Self {
        let settings = port.settings();
        PortView {
            generation: u64::MAX,
            conn: None,
            rings: GuestRings::new(0),
            enabled: EnabledQueues::NONE,
            settings_gen: port.settings_generation(),
            bucket: TokenBucket::new(settings.max_tx_rate),
            is_vf: matches!(port.spec.kind, PortKind::Vf(_)),
            settings,
            port,
            own_tx,
            warned: false,
            rss_fast: None,
            rss_gen: u64::MAX,
        }
    }

    /// The VF's link (no PF uplink yet: `auto` is up).
    fn link_up(&self) -> bool {
        self.settings.link_up(true)
    }

    /// Follows an attach or detach of the port's frontend: takes the current connection and
    /// forgets the old rings. False if nothing changed since the last look.
    fn sync_connection(&mut self) -> bool {
        let g = self.port.generation();
        if g == self.generation {
            return false;
        }
        self.generation = g;
        self.conn = self.port.connection();
        self.rings = GuestRings::new(self.conn.as_ref().map_or(0, |c| c.num_queues()));
        self.warned = false;
        if let Some(c) = &self.conn {
            // Frames may have been queued before this view saw the connection.
            c.mark_tx_pending_mask(self.own_tx);
        }
        self.refresh_enabled();
        true
    }

    /// Re-reads which RX queues the guest has enabled.
    fn refresh_enabled(&mut self) {
        let qp = usize::from(self.port.spec.queue_pairs);
        let mask = self.conn.as_ref().map_or(0, |c| c.enabled_rx_mask(qp));
        if mask != self.enabled.mask() {
            self.enabled = EnabledQueues::from_mask(mask);
        }
    }

    fn warn_broken_ring(&mut self, what: &str) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(port = %self.port.spec.name, "{what}; the queue is skipped");
        }
    }
}

/// Why a frame was not delivered to one destination.
enum RxDrop {
    NoBuffer,
    Oversize,
}

/// One frame for one destination RX queue, decided in the switch phase.
#[derive(Clone, Copy)]
struct Delivery {
    frame: u16,
    dst: u16,
    queue: u16,
    strip: bool,
    by: Steering,
    fell_back: bool,
}

/// Scratch space for RX chains, reused for every frame.
struct RxScratch {
    first: Segments,
    cur: Segments,
    used: [(u16, u32); MAX_RX_CHAINS],
}

/// The device's position in one RX ring while a group is delivered.
struct RxCursor {
    next_avail: u16,
    /// The driver's avail index as last read.
    avail_idx: u16,
    next_used: u16,
}

/// Counts of one delivery group, added to the port's counters once.
#[derive(Default)]
struct RxTally {
    packets: u64,
    bytes: u64,
    no_buffer: u64,
    oversize: u64,
    steer: [u64; 4],
    fallback: u64,
}

impl RxTally {
    fn flush(&self, c: &PortCounters, q: usize) {
        let t = &c.totals;
        let add = |ctr: &crate::stats::Counter, n: u64| {
            if n > 0 {
                ctr.add(n)
            }
        };
        add(&t.rx_packets, self.packets);
        add(&t.rx_bytes, self.bytes);
        if let Some(qc) = c.queue(q) {
            add(&qc.rx_packets, self.packets);
            add(&qc.rx_bytes, self.bytes);
        }
        add(&t.drop_no_rx_buffer, self.no_buffer);
        add(&t.drop_oversize_rx, self.oversize);
        add(&t.rx_steer_rss, self.steer[0]);
        add(&t.rx_steer_flow_rule, self.steer[1]);
        add(&t.rx_steer_flow_learned, self.steer[2]);
        add(&t.rx_steer_non_ip, self.steer[3]);
        add(&t.rx_steer_fallback, self.fallback);
    }

    fn steered(&mut self, by: Steering, fell_back: bool) {
        let i = match by {
            Steering::Rss => 0,
            Steering::FlowRule => 1,
            Steering::FlowLearned => 2,
            Steering::NonIp => 3,
        };
        self.steer[i] += 1;
        self.fallback += u64::from(fell_back);
    }
}

/// One data-plane worker's state.
pub struct DataPlane {
    /// This worker's index; worker 0 also ages the FDB.
    worker: usize,
    /// Busy-poll instead of sleeping on kicks.
    poll: bool,
    /// Pin the thread to this CPU.
    cpu: Option<usize>,
    table: Arc<PortTable>,
    events: Arc<EventBus>,
    table_generation: u64,
    /// One slot per port id, following `table`.
    views: Vec<Option<PortView>>,
    switch: Arc<Mutex<Switch>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    /// The attached ports with TX queues this worker owns: (view index, connection, owned
    /// queue pairs), rebuilt by `refresh_views` so a round clones no `Arc`.
    active: Vec<(usize, Arc<Connection>, u64)>,
    /// A view's connection or the table changed since `active` was built.
    active_stale: bool,
    frames: Box<[TxFrame]>,
    /// The last forwarding decision of this batch: (source MAC, destination MAC, second,
    /// verdict). A frame with the same addresses in the same second gets the same verdict
    /// and its learning would only refresh the entry already refreshed: both are skipped.
    last_forward: Option<(MacAddr, MacAddr, u64, Verdict)>,
    deliveries: Vec<Delivery>,
    /// `deliveries` grouped by destination RX ring (or by port, to steer under RSS locks).
    groups: Groups,
    rx: Box<RxScratch>,
    start: Instant,
    last_age: u64,
}

impl DataPlane {
    pub fn new(
        table: Arc<PortTable>,
        switch: Arc<Mutex<Switch>>,
        waker: Arc<Waker>,
        stop: Arc<AtomicBool>,
        events: Arc<EventBus>,
    ) -> Self {
        DataPlane {
            worker: 0,
            poll: false,
            cpu: None,
            table,
            events,
            table_generation: u64::MAX,
            views: Vec::new(),
            switch,
            waker,
            stop,
            active: Vec::new(),
            active_stale: true,
            frames: (0..TX_BATCH).map(|_| TxFrame::default()).collect(),
            last_forward: None,
            deliveries: Vec::with_capacity(TX_BATCH * 4),
            groups: Groups::new(crate::pf::PORT_SLOTS),
            rx: Box::new(RxScratch {
                first: Segments::default(),
                cur: Segments::default(),
                used: [(0, 0); MAX_RX_CHAINS],
            }),
            start: Instant::now(),
            last_age: 0,
        }
    }

    /// This is worker `w` of `Waker::workers()`.
    pub fn worker(mut self, w: usize) -> Self {
        self.worker = w;
        self
    }

    /// Busy-polls (`--poll`) instead of sleeping until a kick.
    pub fn polling(mut self, on: bool) -> Self {
        self.poll = on;
        self
    }

    /// Pins the worker's thread to `cpu` (`--cpus`).
    pub fn on_cpu(mut self, cpu: Option<usize>) -> Self {
        self.cpu = cpu;
        self
    }

    /// Runs the worker on its own thread until `stop` is set (and the waker woken).
    pub fn spawn(self) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name(format!("dataplane{}", self.worker))
            .spawn(move || self.run())
    }

    fn manages_fdb(&self) -> bool {
        self.worker == 0
    }

    fn run(mut self) {
        if let Some(cpu) = self.cpu {
            pin_to_cpu(self.worker, cpu);
        }
        if self.poll {
            return self.run_polling();
        }
        while !self.stop.load(Ordering::Acquire) {
            self.waker.wait(self.worker, IDLE_WAIT);
            self.sync_table();
            self.refresh_views();
            self.age_fdb();
            while self.tx_round(false) {}
        }
    }

    /// Busy-poll mode: never sleeps, takes its attached ports' TX queues in turn and leaves the
    /// guests' TX notifications off (no kicks, no wake-ups, no eventfd syscalls).
    fn run_polling(mut self) {
        let mut iteration: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            iteration += 1;
            if iteration.is_multiple_of(POLL_SYNC_ROUNDS) {
                self.sync_table();
                self.refresh_views();
                if iteration.is_multiple_of(POLL_SYNC_ROUNDS * 1024) {
                    self.age_fdb();
                }
            }
            if !self.tx_round(true) {
                std::hint::spin_loop();
            }
        }
    }

    /// One pass over the TX queues this worker owns: every one when polling (kicks are off
    /// and pending bits are not looked at), else the kicked ones. True if any had frames.
    fn tx_round(&mut self, polling: bool) -> bool {
        let mut worked = false;
        let active = std::mem::take(&mut self.active);
        for (i, conn, own) in &active {
            let mut mask = if polling {
                *own
            } else {
                conn.take_tx_pending(*own)
            };
            while mask != 0 {
                let qp = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                worked |= self.process_tx(*i, conn, qp);
            }
        }
        self.active = active;
        worked
    }

    /// The TX queue pairs of `port` this worker owns.
    fn own_mask(&self, port: &Port) -> u64 {
        let qps = usize::from(port.spec.queue_pairs).min(64);
        let p = port.spec.id.index();
        (0..qps)
            .filter(|&q| self.waker.owner(p, q) == self.worker)
            .fold(0, |m, q| m | (1u64 << q))
    }

    /// Follows ports added, removed or replaced (numvfs and channel changes).
    fn sync_table(&mut self) {
        let g = self.table.generation();
        if g == self.table_generation {
            return;
        }
        self.table_generation = g;
        self.active_stale = true;
        let slots = self.table.snapshot();
        self.views.resize_with(slots.len(), || None);
        for (k, slot) in slots.into_iter().enumerate() {
            let same = match (&self.views[k], &slot) {
                (Some(v), Some(p)) => Arc::ptr_eq(&v.port, p),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            self.views[k] = slot.map(|p| {
                let own = self.own_mask(&p);
                PortView::new(p, own)
            });
        }
    }

    /// Picks up attach/detach of frontends, enabled RX queues and changed settings (the switch
    /// learns of attaches and detaches from the port servers, before they are visible).
    fn refresh_views(&mut self) {
        let mut stale = false;
        for v in self.views.iter_mut().flatten() {
            let rg = v.port.rss_generation();
            if rg != v.rss_gen {
                v.rss_gen = rg;
                v.rss_fast = v.port.rss_data_path().snapshot().map(Box::new);
            }
            let sg = v.port.settings_generation();
            if sg != v.settings_gen {
                v.settings_gen = sg;
                let new = v.port.settings();
                if new.max_tx_rate != v.settings.max_tx_rate {
                    v.bucket = TokenBucket::new(new.max_tx_rate);
                }
                v.settings = new;
            }
            if let Some(c) = &v.conn {
                v.rings.drop_if_stale(c);
            }
            stale |= v.sync_connection();
            v.refresh_enabled();
        }
        if std::mem::take(&mut self.active_stale) || stale {
            self.active.clear();
            for (i, v) in self.views.iter().enumerate() {
                if let Some(PortView {
                    conn: Some(c),
                    own_tx,
                    ..
                }) = v
                {
                    if *own_tx != 0 {
                        self.active.push((i, c.clone(), *own_tx));
                    }
                }
            }
        }
    }

    fn age_fdb(&mut self) {
        if !self.manages_fdb() {
            return;
        }
        let now = self.start.elapsed().as_secs();
        if now > self.last_age {
            self.last_age = now;
            self.switch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .age(now);
        }
    }

    /// Processes TX queue pair `qp` of port `src` for up to `TX_BUDGET` frames.
    fn process_tx(&mut self, src: usize, conn: &Arc<Connection>, qp: usize) -> bool {
        let Some(vring) = conn.vring(2 * qp + 1) else {
            return false;
        };
        let Some(mtu) = self.views[src].as_ref().map(|v| v.port.spec.mtu) else {
            return false;
        };
        let hdr_len = vnet_hdr_len(conn.acked_features());
        let max_frame = usize::from(mtu) + FRAME_OVERHEAD;
        let mut done = 0;
        while let Some((n, addrs)) = self.pop_tx_batch(src, conn, vring, qp, hdr_len, max_frame) {
            self.switch_batch(src, qp, n);
            self.deliver_batch();
            self.complete_tx(src, conn, vring, qp, n, addrs);
            done += n;
            if done >= TX_BUDGET {
                conn.mark_tx_pending(qp);
                break;
            }
        }
        done > 0
    }

    /// Pops up to `TX_BATCH` chains into `frames`; `None` when there is nothing (or the queue
    /// is not usable). In event mode an empty queue re-arms the guest's kicks.
    fn pop_tx_batch(
        &mut self,
        src: usize,
        conn: &Connection,
        vring: &Vring,
        qp: usize,
        hdr_len: usize,
        max_frame: usize,
    ) -> Option<(usize, RingAddrs)> {
        let poll = self.poll;
        let view = self.views[src].as_mut()?;
        let index = 2 * qp + 1;
        if poll {
            if let (Some(Some(ring)), Some(Some(seen))) = (
                view.rings.rings.get(index),
                view.rings.seen_avail.get(index),
            ) {
                if ring.avail_idx() == *seen {
                    // The common busy-poll answer: no lock, no memory-table lookup.
                    return None;
                }
            }
        }
        let mut st = vring.get_mut();
        if !st.is_enabled() || !st.get_queue().ready() {
            return None;
        }
        let q = st.get_queue_mut();
        let Some((map, ring, fresh)) = view.rings.get(conn, 2 * qp + 1, q) else {
            view.warn_broken_ring("a TX ring is outside guest memory");
            return None;
        };
        if fresh && poll {
            ring.disable_notification();
        }
        let mut next = q.next_avail();
        let mut avail = ring.avail_idx();
        if avail == next {
            if poll {
                view.rings.seen_avail[index] = Some(next);
                return None;
            }
            if !ring.enable_notification(next) {
                return None;
            }
            avail = ring.avail_idx();
        } else if !poll {
            ring.disable_notification();
        }
        let pending = avail.wrapping_sub(next);
        if pending > ring.size() {
            view.warn_broken_ring("a guest's TX avail index ran past its ring");
            return None;
        }
        let n = usize::from(pending).min(TX_BATCH);
        // In stages, so the cache misses of one frame overlap those of the others: heads
        // (prefetching their descriptors), chain walks (prefetching frame data), then the
        // header copies.
        let mut heads = [0u16; TX_BATCH];
        for h in &mut heads[..n] {
            *h = ring.avail_entry(next);
            ring.prefetch_desc(*h);
            next = next.wrapping_add(1);
        }
        for (f, &h) in self.frames[..n].iter_mut().zip(&heads[..n]) {
            f.walk(ring, map, h, hdr_len, max_frame);
        }
        for f in &mut self.frames[..n] {
            f.read_head(hdr_len);
        }
        let addrs = ring.addrs();
        q.set_next_avail(next);
        if poll {
            view.rings.seen_avail[index] = Some(next);
        }
        Some((n, addrs))
    }

    /// Makes the switch decisions for `n` popped frames of port `src`'s TX queue `qp`.
    fn switch_batch(&mut self, src: usize, qp: usize, n: usize) {
        // Cloned per batch, not per poll: an idle queue costs no reference count traffic.
        let Some(port) = self.views[src].as_ref().map(|v| v.port.clone()) else {
            return;
        };
        let port = &*port;
        let switch = self.switch.clone();
        let mut sw = switch.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = self.start.elapsed();
        let now = (
            elapsed.as_secs(),
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        );
        let mut bytes = 0u64;
        let mut forwarded = 0u64;
        // The FDB may have changed since the last batch (other workers, the control plane).
        self.last_forward = None;
        for k in 0..n {
            bytes += self.frames[k].len as u64;
            forwarded += u64::from(self.switch_frame(&mut sw, src, port, k, now));
        }
        drop(sw);
        self.learn_flows(port, qp, n);
        self.steer_pending();
        let c = &port.counters;
        c.totals.tx_packets.add(n as u64);
        c.totals.tx_bytes.add(bytes);
        if let Some(qc) = c.queue(qp) {
            qc.tx_packets.add(n as u64);
            qc.tx_bytes.add(bytes);
        }
        if forwarded > 0 {
            c.totals.tx_forwarded.add(forwarded);
        }
    }

    /// Flow learning (the sender's RSS state needs its lock): the flows of the batch's frames
    /// that passed the edge policy, under one lock.
    fn learn_flows(&mut self, port: &Port, qp: usize, n: usize) {
        if !self.frames[..n].iter().any(|f| f.learn) {
            return;
        }
        let c = &port.counters.totals;
        let mut rss = port.rss_data_path();
        for f in self.frames[..n].iter_mut().filter(|f| f.learn) {
            if !f.tuple().is_ip() {
                continue;
            }
            match rss.learn_tx(f.tuple(), qp as u16) {
                Some(Learn::Inserted) => c.flow_learned.inc(),
                Some(Learn::InsertedEvicting) => {
                    c.flow_learned.inc();
                    c.flow_evictions.inc();
                }
                _ => {}
            }
        }
    }

    /// Steers the deliveries left for the locked path (destinations with flow learning on):
    /// one lock per destination port and batch.
    fn steer_pending(&mut self) {
        if !self.deliveries.iter().any(|d| d.queue == STEER_PENDING) {
            return;
        }
        let DataPlane {
            groups,
            deliveries,
            views,
            frames,
            ..
        } = self;
        groups.clear();
        for d in deliveries.iter() {
            // Already steered ones go to no port's group.
            groups.add(
                if d.queue == STEER_PENDING {
                    d.dst
                } else {
                    u16::MAX
                },
                0,
            );
        }
        for g in groups.groups() {
            let Some(view) = views[usize::from(g.port)].as_ref() else {
                continue;
            };
            let mut rss = view.port.rss_data_path();
            for i in groups.members(g) {
                let d = &mut deliveries[i];
                let decision = rss.decide(frames[usize::from(d.frame)].tuple(), &view.enabled);
                d.queue = decision.queue;
                d.by = decision.by;
                d.fell_back = decision.fell_back;
            }
        }
        groups.clear();
    }

    /// Decides where frame `k` goes and queues its deliveries; true if it goes somewhere.
    fn switch_frame(
        &mut self,
        sw: &mut Switch,
        src: usize,
        port: &Port,
        k: usize,
        (now, now_ns): (u64, u64),
    ) -> bool {
        let c = &port.counters;
        let f = &mut self.frames[k];
        let hdr = match (f.ok, FrameHeader::parse(&f.head[..f.head_len], f.len)) {
            (true, Ok(h)) => h,
            _ => {
                c.totals.drop_malformed.inc();
                return false;
            }
        };
        let Some(view) = self.views[src].as_mut() else {
            return false;
        };
        let bits = f.len as u64 * 8;
        let link_up = view.link_up();
        match policy::ingress(
            &view.settings,
            view.is_vf,
            link_up,
            &hdr,
            &mut view.bucket,
            bits,
            now_ns,
        ) {
            Err(d) => {
                count_policy_drop(&c.totals, d);
                return false;
            }
            Ok(Ingress::InsertTag(tpid, tci)) => f.insert_tag(tpid, tci),
            Ok(Ingress::Pass) => {}
        }
        // Learned after the batch's decisions, under one lock (`learn_flows`).
        f.learn = view.rss_fast.is_none();
        let verdict = match self.last_forward {
            Some((s, d, t, v)) if s == hdr.src && d == hdr.dst && t == now => v,
            _ => {
                let (verdict, learned) = sw.forward(port.spec.id, &hdr, now);
                if let Learned::Moved { from } = learned {
                    self.report_move(hdr.src, from, port);
                }
                self.last_forward = Some((hdr.src, hdr.dst, now, verdict));
                verdict
            }
        };
        match verdict {
            Verdict::SamePort => {
                c.totals.drop_same_port.inc();
                false
            }
            Verdict::Unicast(dst) => {
                let d = dst.index();
                if d != src && self.attached(d) {
                    self.queue_delivery(k, d);
                    true
                } else {
                    c.totals.drop_no_destination.inc();
                    false
                }
            }
            Verdict::Flood => {
                let mut any = false;
                for j in 0..self.views.len() {
                    if j == src || !self.attached(j) {
                        continue;
                    }
                    any = true;
                    self.queue_delivery(k, j);
                }
                if !any {
                    c.totals.drop_no_destination.inc();
                }
                any
            }
        }
    }

    /// Whether destination `d` has a frontend. A view that looks detached is checked against
    /// the port first: a frontend that attached since the last refresh (which the control
    /// plane and the guest already see) must not lose frames to a stale view.
    fn attached(&mut self, d: usize) -> bool {
        let Some(v) = self.views.get_mut(d).and_then(Option::as_mut) else {
            return false;
        };
        if v.conn.is_none() && v.sync_connection() {
            self.active_stale = true;
        }
        v.conn.is_some()
    }

    fn report_move(&self, mac: MacAddr, from: crate::switch::PortId, port: &Port) {
        let from_name = self
            .views
            .get(from.index())
            .and_then(Option::as_ref)
            .map(|v| v.port.spec.name.clone());
        tracing::info!(mac = %mac, from = %from, to = %port.spec.name, "FDB move");
        self.events.emit(
            "FDB_MOVE",
            serde_json::json!({
                "mac": mac.to_string(),
                "from": from_name.unwrap_or_else(|| from.to_string()),
                "to": port.spec.name,
            }),
        );
    }

    /// Applies `dst`'s egress policy (link, port VLAN) and steering to frame `k` and queues
    /// the delivery; drops are counted on `dst`.
    fn queue_delivery(&mut self, k: usize, dst: usize) {
        let f = &mut self.frames[k];
        let Some(view) = self.views[dst].as_mut() else {
            return;
        };
        if view.enabled.is_empty() {
            // Views are refreshed once per pass (every POLL_SYNC_ROUNDS when polling): look
            // again before dropping, the guest may have just enabled its first queue.
            view.refresh_enabled();
        }
        let c = &view.port.counters.totals;
        let strip = match policy::egress(
            &view.settings,
            view.is_vf,
            view.link_up(),
            &f.head[..f.head_len],
        ) {
            Err(d) => {
                count_policy_drop(c, d);
                return;
            }
            Ok(Egress::Pass) => false,
            Ok(Egress::StripTag) => true,
        };
        if view.enabled.is_empty() {
            c.drop_no_rx_buffer.inc();
            return;
        }
        let (queue, by, fell_back) = match &view.rss_fast {
            // One queue and no rules or table: every IP frame goes there, no need for its tuple.
            Some(snap) if snap.is_plain() && view.enabled.len() == 1 && f.is_ip() => {
                (u16::from(view.enabled.as_slice()[0]), Steering::Rss, false)
            }
            Some(snap) => snap.steer(f.tuple(), &view.enabled),
            // Decided after the batch's switching, one lock per destination (`steer_pending`).
            None => (STEER_PENDING, Steering::Rss, false),
        };
        self.deliveries.push(Delivery {
            frame: k as u16,
            dst: dst as u16,
            queue,
            strip,
            by,
            fell_back,
        });
    }

    /// Delivers the queued deliveries, one lock per destination RX ring.
    fn deliver_batch(&mut self) {
        for d in &self.deliveries {
            self.groups.add(d.dst, d.queue);
        }
        for gi in 0..self.groups.groups().len() {
            let g = self.groups.groups()[gi];
            self.deliver_group(&g);
        }
        self.groups.clear();
        self.deliveries.clear();
    }

    /// Delivers, in order, the deliveries of group `g` (one destination RX ring).
    fn deliver_group(&mut self, g: &Group) {
        let (dst, qi) = (usize::from(g.port), usize::from(g.queue));
        let mut tally = RxTally::default();
        let Some(view) = self.views[dst].as_mut() else {
            return;
        };
        let PortView {
            port, conn, rings, ..
        } = view;
        let mut group = RxGroup::open(conn.as_deref(), rings, qi, g.len as usize);
        for i in self.groups.members(g) {
            let d = &self.deliveries[i];
            let f = &self.frames[usize::from(d.frame)];
            let mut stripped = [0u8; HEADER_COPY_LEN + VLAN_TAG_LEN];
            let fv = FrameView::of(f, d.strip, &mut stripped);
            let result = match group.as_mut() {
                Some(g) => g.deliver(&fv, &mut self.rx),
                None => Err(RxDrop::NoBuffer),
            };
            match result {
                Ok(()) => {
                    tally.packets += 1;
                    tally.bytes += fv.len as u64;
                    tally.steered(d.by, d.fell_back);
                }
                Err(RxDrop::NoBuffer) => tally.no_buffer += 1,
                Err(RxDrop::Oversize) => tally.oversize += 1,
            }
        }
        if let Some(g) = group {
            g.close();
        }
        tally.flush(&port.counters, qi);
    }

    /// Returns the `n` TX chains to the guest and notifies it if it asked. Nothing is returned
    /// if the ring was reset or reconfigured since the pop: the chains are gone with it.
    fn complete_tx(
        &mut self,
        src: usize,
        conn: &Connection,
        vring: &Vring,
        qp: usize,
        n: usize,
        addrs: RingAddrs,
    ) {
        let Some(view) = self.views[src].as_mut() else {
            return;
        };
        let mut st = vring.get_mut();
        if !st.is_enabled() || !st.get_queue().ready() || RingAddrs::of(st.get_queue()) != addrs {
            return;
        }
        let q = st.get_queue_mut();
        let Some((_, ring, _)) = view.rings.get(conn, 2 * qp + 1, q) else {
            return;
        };
        let old = q.next_used();
        let mut used = old;
        for f in self.frames[..n].iter().filter(|f| f.returnable) {
            ring.write_used(used, f.segs.head, 0);
            used = used.wrapping_add(1);
        }
        ring.publish_used(used);
        q.set_next_used(used);
        if ring.needs_notification(old, used) {
            let _ = st.signal_used_queue();
        }
    }
}

/// One destination RX ring, locked while a group of frames is written into it.
struct RxGroup<'a> {
    state: RwLockWriteGuard<'a, VringState<GuestMemAtomic>>,
    map: &'a GuestMap,
    ring: &'a SplitRing,
    cur: RxCursor,
    old_used: u16,
    hdr_len: usize,
    mergeable: bool,
}

impl<'a> RxGroup<'a> {
    /// Locks RX queue `qi` of `conn`; `None` if the queue cannot take frames now.
    fn open(
        conn: Option<&'a Connection>,
        rings: &'a mut GuestRings,
        qi: usize,
        expected: usize,
    ) -> Option<Self> {
        let conn = conn?;
        let vring = conn.vring(2 * qi)?;
        let features = conn.acked_features();
        let state = vring.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            return None;
        }
        let q = state.get_queue();
        let (map, ring, fresh) = rings.get(conn, 2 * qi, q)?;
        if fresh {
            // Frames never wait for RX buffers, so the guest need not kick when it refills:
            // each RX kick would only wake a vhost-user thread for nothing.
            ring.disable_notification();
        }
        let cur = RxCursor {
            next_avail: q.next_avail(),
            avail_idx: ring.avail_idx(),
            next_used: q.next_used(),
        };
        // The descriptors of the buffers the group will take, loading while frames are copied.
        let ahead = usize::from(cur.avail_idx.wrapping_sub(cur.next_avail))
            .min(expected)
            .min(RX_PREFETCH);
        for i in 0..ahead as u16 {
            ring.prefetch_desc(ring.avail_entry(cur.next_avail.wrapping_add(i)));
        }
        Some(RxGroup {
            old_used: cur.next_used,
            cur,
            state,
            map,
            ring,
            hdr_len: vnet_hdr_len(features),
            mergeable: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        })
    }

    /// The next chain the driver made available, if any.
    #[inline]
    fn pop(&mut self) -> Option<u16> {
        if self.cur.next_avail == self.cur.avail_idx {
            let idx = self.ring.avail_idx();
            // An index further ahead than the ring is a broken driver: take nothing.
            if idx.wrapping_sub(self.cur.next_avail) > self.ring.size() {
                return None;
            }
            self.cur.avail_idx = idx;
            if idx == self.cur.next_avail {
                return None;
            }
        }
        let head = self.ring.avail_entry(self.cur.next_avail);
        self.cur.next_avail = self.cur.next_avail.wrapping_add(1);
        Some(head)
    }

    #[inline]
    fn push_used(&mut self, head: u16, len: u32) {
        self.ring.write_used(self.cur.next_used, head, len);
        self.cur.next_used = self.cur.next_used.wrapping_add(1);
    }

    /// Writes one frame into the ring: its buffers (several with mergeable RX buffers) get
    /// the virtio-net header and the frame.
    fn deliver(&mut self, f: &FrameView<'_>, rx: &mut RxScratch) -> Result<(), RxDrop> {
        let hdr_len = self.hdr_len;
        let need = hdr_len + f.len;
        let size = self.ring.size();
        let mut nused = 0;
        let mut written = 0;
        // Chains completed with length 0 because the guest posted them broken: once one is in
        // the frame, the popped chains cannot be put back and are completed empty instead.
        let mut poisoned = false;
        let result = loop {
            if written == need {
                break Ok(());
            }
            if nused == MAX_RX_CHAINS {
                break Err(RxDrop::NoBuffer);
            }
            let Some(head) = self.pop() else {
                break Err(RxDrop::NoBuffer);
            };
            let segs = if nused == 0 {
                &mut rx.first
            } else {
                &mut rx.cur
            };
            let walk_ok = self
                .ring
                .walk(self.map, head, Direction::Write, segs)
                .is_ok();
            let cap = segs.total();
            if !walk_ok || (nused == 0 && cap < hdr_len) || cap == 0 {
                if head < size {
                    self.push_used(head, 0);
                }
                poisoned = true;
                continue;
            }
            if !self.mergeable && cap < need {
                rx.used[nused] = (head, 0);
                nused += 1;
                break Err(RxDrop::Oversize);
            }
            let take = cap.min(need - written);
            let to = written + take - hdr_len;
            // SAFETY: `segs` were translated with `self.map` and the frame's with the sender's
            // map, both alive for this batch.
            let copied = if nused == 0 {
                // The next frame's buffer starts loading while this one is written.
                if self.cur.next_avail != self.cur.avail_idx {
                    let next = self.ring.avail_entry(self.cur.next_avail);
                    self.ring.prefetch_buffer(self.map, next);
                }
                unsafe { copy_first_chain(f, to, segs, hdr_len) }
            } else {
                unsafe { copy_frame_range(f, written - hdr_len, to, segs, 0) }
            };
            if copied.is_err() {
                rx.used[nused] = (head, 0);
                nused += 1;
                break Err(RxDrop::NoBuffer);
            }
            rx.used[nused] = (head, take as u32);
            nused += 1;
            written += take;
        };
        match result {
            Ok(()) => {
                // The first chain got a header for one buffer; more need the real count.
                let hdr_ok = nused == 1 || {
                    let hdr = rx_header(nused as u16);
                    // SAFETY: as above.
                    unsafe { write_segments(rx.first.as_slice(), 0, &hdr[..hdr_len]) }.is_ok()
                };
                for &(head, len) in &rx.used[..nused] {
                    // Without a valid header the frame is unusable: hand the buffers back empty.
                    self.push_used(head, if hdr_ok { len } else { 0 });
                }
                if hdr_ok {
                    Ok(())
                } else {
                    Err(RxDrop::NoBuffer)
                }
            }
            Err(e) => {
                if poisoned {
                    for &(head, _) in &rx.used[..nused] {
                        self.push_used(head, 0);
                    }
                } else {
                    // Put the chains back for the next frame.
                    self.cur.next_avail = self.cur.next_avail.wrapping_sub(nused as u16);
                }
                Err(e)
            }
        }
    }

    /// Publishes the used buffers, stores the indices back in the queue, notifies the guest
    /// if it asked, and unlocks.
    fn close(mut self) {
        let used = self.cur.next_used;
        if used != self.old_used {
            self.ring.publish_used(used);
        }
        let q = self.state.get_queue_mut();
        q.set_next_avail(self.cur.next_avail);
        q.set_next_used(used);
        if self.ring.needs_notification(self.old_used, used) {
            let _ = self.state.signal_used_queue();
        }
    }
}

/// Pins the calling thread to one CPU; a failure is logged, not fatal.
fn pin_to_cpu(worker: usize, cpu: usize) {
    // SAFETY: cpu_set_t is plain data, zeroed is a valid empty set; CPU_SET and
    // sched_setaffinity(0 = this thread) only read and write that set.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        tracing::warn!(
            worker,
            cpu,
            "cannot pin the data-plane worker: {}",
            io::Error::last_os_error()
        );
    } else {
        tracing::info!(worker, cpu, "data-plane worker pinned");
    }
}

fn count_policy_drop(c: &PortTotals, d: PolicyDrop) {
    match d {
        PolicyDrop::LinkDown => c.drop_link_down.inc(),
        PolicyDrop::SpoofChk => c.drop_spoofchk.inc(),
        PolicyDrop::VlanFilter => c.drop_vlan_filter.inc(),
        PolicyDrop::RateLimit => c.drop_rate_limit.inc(),
    }
}

/// Writes the virtio-net header (for one buffer) and frame bytes `[0, to)` into the first RX
/// chain `dst`: header and copied frame head in one write, the rest guest to guest.
///
/// # Safety
/// As for `copy_frame_range`.
unsafe fn copy_first_chain(
    f: &FrameView<'_>,
    to: usize,
    dst: &Segments,
    hdr_len: usize,
) -> Result<(), CopyError> {
    let mut buf = [0u8; VNET_HDR_MAX + HEADER_COPY_LEN + VLAN_TAG_LEN];
    // Fixed-size header copy, then the head over whatever of it is not part of this layout:
    // no memcpy calls for these few bytes.
    buf[..VNET_HDR_MAX].copy_from_slice(&rx_header(1));
    let split = f.head.len().min(to);
    let room = &mut buf[hdr_len..hdr_len + split];
    // SAFETY: `room` and `f.head[..split]` are both `split` bytes of distinct Rust buffers.
    unsafe { copy_short(f.head.as_ptr(), room.as_mut_ptr(), split) };
    // SAFETY: the caller's contract.
    unsafe { write_segments(dst.as_slice(), 0, &buf[..hdr_len + split])? };
    if split < to {
        // SAFETY: the caller's contract.
        unsafe { copy_frame_range(f, split, to, dst, hdr_len + split) }
    } else {
        Ok(())
    }
}

/// Copies frame bytes `[from, to)` into `dst` at `dst_off`: the part covered by the header
/// copy from that copy, the rest guest to guest.
///
/// # Safety
/// `dst` and the frame's segments must be translated with guest maps that are still alive.
unsafe fn copy_frame_range(
    f: &FrameView<'_>,
    from: usize,
    to: usize,
    dst: &Segments,
    dst_off: usize,
) -> Result<(), CopyError> {
    let split = f.head.len().clamp(from, to);
    if from < split {
        // SAFETY: the caller's contract.
        unsafe { write_segments(dst.as_slice(), dst_off, &f.head[from..split])? };
    }
    if split < to {
        // SAFETY: the caller's contract.
        unsafe {
            copy_segments(
                f.segs.as_slice(),
                f.tail_base + (split - f.head.len()),
                dst.as_slice(),
                dst_off + (split - from),
                to - split,
            )?
        };
    }
    Ok(())
}
