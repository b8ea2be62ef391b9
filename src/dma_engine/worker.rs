//! The data-plane thread.
//!
//! One thread owns the processing of every port's rings. vhost-user handler threads only mark
//! a TX queue as kicked and wake it through an eventfd. A pass takes each kicked TX queue, pops
//! a batch of chains (holding only that ring's lock), makes every switch decision on a copy of
//! the frame headers, delivers each frame with one guest-to-guest copy into the destination's
//! RX buffers (holding only that ring's lock), returns the TX chains, and signals each touched
//! queue once per pass, subject to EVENT_IDX.

use super::copy::{copy_segments, read_segments, write_segments};
use super::net_hdr::{rx_header, vnet_hdr_len};
use super::segments::{Direction, Segments};
use crate::events::EventBus;
use crate::pf::PortKind;
use crate::rss::{EnabledQueues, FlowTuple, Learn, Steering};
use crate::stats::{PortCounters, PortTotals};
use crate::switch::{policy, Egress, Ingress, Learned, PolicyDrop, Switch, TokenBucket, Verdict};
use crate::vf::{Connection, GuestMem, Port, PortTable, VfSettings, Vring};
use crate::wire::{FrameHeader, MacAddr, ETH_HEADER_LEN, HEADER_COPY_LEN};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhost_user_backend::VringT;
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::GuestAddressSpace;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Chains popped from a TX ring per lock hold.
const TX_BATCH: usize = 64;
/// Frames taken from one TX queue per pass before other queues get their turn.
const TX_BUDGET: usize = 256;
/// Most RX chains one (mergeable) frame may span.
const MAX_RX_CHAINS: usize = 64;
/// Room for VLAN tags on top of the MTU and the Ethernet header.
const FRAME_OVERHEAD: usize = ETH_HEADER_LEN + 8;
/// How long the thread sleeps without a kick (it then ages the FDB).
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Wakes the data plane: an eventfd the vhost-user threads write on a kick.
#[derive(Debug)]
pub struct Waker {
    efd: EventFd,
}

impl Waker {
    pub fn new() -> io::Result<Self> {
        Ok(Waker {
            efd: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn wake(&self) {
        // EAGAIN means the counter is saturated: the data plane is awake anyway.
        let _ = self.efd.write(1);
    }

    /// Sleeps until woken or `timeout` passes, and resets the eventfd.
    fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `pfd` is a valid pollfd for the duration of the call, and nfds is 1.
        unsafe { libc::poll(&mut pfd, 1, ms) };
        let _ = self.efd.read();
    }
}

/// Bytes of an 802.1Q/802.1ad tag.
const VLAN_TAG_LEN: usize = 4;

/// One popped TX chain and what was read from it.
struct TxFrame {
    segs: Segments,
    /// Frame length as switched (without the virtio-net header; with an inserted tag).
    len: usize,
    /// The first bytes of the frame, copied once: every decision is made on this copy and the
    /// destination receives these bytes, so a guest rewriting its buffer cannot bypass policy.
    /// A port VLAN tag is inserted here.
    head: [u8; HEADER_COPY_LEN + VLAN_TAG_LEN],
    head_len: usize,
    /// Offset in the guest's frame where the part not in `head` starts.
    tail_off: usize,
    /// The RSS / flow steering view of the frame, parsed once from `head`.
    tuple: FlowTuple,
    ok: bool,
}

impl Default for TxFrame {
    fn default() -> Self {
        TxFrame {
            segs: Segments::default(),
            len: 0,
            head: [0; HEADER_COPY_LEN + VLAN_TAG_LEN],
            head_len: 0,
            tail_off: 0,
            tuple: FlowTuple::NON_IP,
            ok: false,
        }
    }
}

impl TxFrame {
    fn read<M>(
        &mut self,
        chain: DescriptorChain<M>,
        mem: &GuestMem,
        hdr_len: usize,
        max_frame: usize,
    ) where
        M: std::ops::Deref,
        M::Target: vm_memory::GuestMemory,
    {
        self.ok = false;
        self.len = 0;
        if self.segs.fill(chain, Direction::Read, mem).is_err() {
            return;
        }
        let total = self.segs.total();
        if total < hdr_len + ETH_HEADER_LEN || total - hdr_len > max_frame {
            return;
        }
        self.len = total - hdr_len;
        let want = self.len.min(HEADER_COPY_LEN);
        match read_segments(mem, self.segs.as_slice(), hdr_len, &mut self.head[..want]) {
            Ok(n) if n == want => {
                self.head_len = n;
                self.tail_off = n;
            }
            _ => return,
        }
        self.tuple = FlowTuple::parse(&self.head[..self.head_len]);
        self.ok = true;
    }
}

impl TxFrame {
    /// Inserts a VLAN tag after the MAC addresses (the frame's port VLAN).
    fn insert_tag(&mut self, tpid: u16, tci: u16) {
        self.head.copy_within(12..self.head_len, 12 + VLAN_TAG_LEN);
        self.head[12..14].copy_from_slice(&tpid.to_be_bytes());
        self.head[14..16].copy_from_slice(&tci.to_be_bytes());
        self.head_len += VLAN_TAG_LEN;
        self.len += VLAN_TAG_LEN;
    }

    fn view(&self) -> FrameView<'_> {
        FrameView {
            head: &self.head[..self.head_len],
            tail_off: self.tail_off,
            len: self.len,
            segs: &self.segs,
        }
    }
}

/// A frame as one destination receives it: `head` from the stack copy (maybe with the outer
/// tag stripped), the rest from the sender's memory at `tail_off`.
struct FrameView<'a> {
    head: &'a [u8],
    tail_off: usize,
    len: usize,
    segs: &'a Segments,
}

/// The data plane's view of one port.
struct PortView {
    port: Arc<Port>,
    generation: u64,
    conn: Option<Arc<Connection>>,
    /// RX queues the guest has enabled, refreshed once per pass when first needed.
    enabled: EnabledQueues,
    rx_pass: u64,
    /// Bit q: RX queue q got used buffers this pass and may need a notification.
    rx_signal: u64,
    /// A copy of the port's settings, re-read when their generation changes.
    settings: VfSettings,
    settings_gen: u64,
    /// max_tx_rate state.
    bucket: TokenBucket,
    is_vf: bool,
    /// The VF MAC pinned in the FDB while the VF is attached.
    static_mac: Option<MacAddr>,
}

impl PortView {
    fn new(port: Arc<Port>) -> Self {
        let settings = port.settings();
        PortView {
            generation: u64::MAX,
            conn: None,
            enabled: EnabledQueues::NONE,
            rx_pass: 0,
            rx_signal: 0,
            settings_gen: port.settings_generation(),
            bucket: TokenBucket::new(settings.max_tx_rate),
            is_vf: matches!(port.spec.kind, PortKind::Vf(_)),
            static_mac: None,
            settings,
            port,
        }
    }

    /// The VF's link (no PF uplink yet: `auto` is up).
    fn link_up(&self) -> bool {
        self.settings.link_up(true)
    }

    fn refresh_rx(&mut self, pass: u64) {
        if self.rx_pass == pass {
            return;
        }
        self.rx_pass = pass;
        let qp = usize::from(self.port.spec.queue_pairs);
        let mask = self.conn.as_ref().map_or(0, |c| c.enabled_rx_mask(qp));
        if mask != self.enabled.mask() {
            self.enabled = EnabledQueues::from_mask(mask);
            // Frames never wait for RX buffers, so the guest need not kick when it refills:
            // ask it not to (VRING_USED_F_NO_NOTIFY; with EVENT_IDX avail_event is never moved).
            // Each RX kick would otherwise wake a vhost-user thread for nothing.
            if let Some(conn) = &self.conn {
                let mem = conn.mem.memory();
                for &q in self.enabled.as_slice() {
                    if let Some(v) = conn.vring(2 * usize::from(q)) {
                        let _ = v.get_mut().get_queue_mut().disable_notification(&*mem);
                    }
                }
            }
        }
    }
}

/// Why a frame was not delivered to one destination.
enum RxDrop {
    NoBuffer,
    Oversize,
}

/// Scratch space for RX chains, reused for every frame.
struct RxScratch {
    first: Segments,
    cur: Segments,
    used: [(u16, u32); MAX_RX_CHAINS],
}

/// The data-plane thread's state.
pub struct DataPlane {
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
    frames: Box<[TxFrame]>,
    rx: Box<RxScratch>,
    pass: u64,
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
            poll: false,
            cpu: None,
            table,
            events,
            table_generation: u64::MAX,
            views: Vec::new(),
            switch,
            waker,
            stop,
            frames: (0..TX_BATCH).map(|_| TxFrame::default()).collect(),
            rx: Box::new(RxScratch {
                first: Segments::default(),
                cur: Segments::default(),
                used: [(0, 0); MAX_RX_CHAINS],
            }),
            pass: 0,
            start: Instant::now(),
            last_age: 0,
        }
    }

    /// Busy-polls (`--poll`) instead of sleeping until a kick.
    pub fn polling(mut self, on: bool) -> Self {
        self.poll = on;
        self
    }

    /// Pins the data-plane thread to `cpu` (`--cpus`).
    pub fn on_cpu(mut self, cpu: Option<usize>) -> Self {
        self.cpu = cpu;
        self
    }

    /// Runs the data plane on its own thread until `stop` is set (and the waker woken).
    pub fn spawn(self) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || self.run())
    }

    fn run(mut self) {
        if let Some(cpu) = self.cpu {
            pin_to_cpu(cpu);
        }
        if self.poll {
            return self.run_polling();
        }
        while !self.stop.load(Ordering::Acquire) {
            self.waker.wait(IDLE_WAIT);
            self.pass += 1;
            self.sync_table();
            self.refresh_views();
            self.age_fdb();
            loop {
                let mut worked = false;
                for i in 0..self.views.len() {
                    let Some(conn) = self.views[i].as_ref().and_then(|v| v.conn.clone()) else {
                        continue;
                    };
                    let mut mask = conn.take_tx_pending();
                    while mask != 0 {
                        let qp = mask.trailing_zeros() as usize;
                        mask &= mask - 1;
                        self.process_tx(i, &conn, qp);
                        worked = true;
                    }
                }
                self.flush_rx_signals();
                if !worked {
                    break;
                }
                self.pass += 1;
            }
        }
    }

    /// Busy-poll mode: never sleeps, takes every attached port's TX queues in turn and leaves
    /// the guests' TX notifications off (no kicks, no wake-ups, no eventfd syscalls).
    fn run_polling(mut self) {
        let mut iteration: u64 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            self.pass += 1;
            iteration += 1;
            // Control-side changes are rare: look every 256 rounds (a few microseconds).
            if iteration.is_multiple_of(256) {
                self.sync_table();
                self.refresh_views();
                if iteration.is_multiple_of(256 * 1024) {
                    self.age_fdb();
                }
            }
            let mut worked = false;
            for i in 0..self.views.len() {
                let Some(conn) = self.views[i].as_ref().and_then(|v| v.conn.clone()) else {
                    continue;
                };
                let qps = conn.num_queues() / 2;
                conn.take_tx_pending();
                for qp in 0..qps.min(64) {
                    worked |= self.process_tx(i, &conn, qp);
                }
            }
            self.flush_rx_signals();
            if !worked {
                std::hint::spin_loop();
            }
        }
    }

    /// Follows ports added, removed or replaced (numvfs and channel changes).
    fn sync_table(&mut self) {
        let g = self.table.generation();
        if g == self.table_generation {
            return;
        }
        self.table_generation = g;
        let slots = self.table.snapshot();
        self.views.resize_with(slots.len(), || None);
        for (view, port) in self.views.iter_mut().zip(slots) {
            let same = match (&*view, &port) {
                (Some(v), Some(p)) => Arc::ptr_eq(&v.port, p),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(old) = view.take() {
                let mut sw = self.switch.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = old.static_mac {
                    sw.remove_static(m, old.port.spec.id);
                }
                sw.port_down(old.port.spec.id);
            }
            *view = port.map(PortView::new);
        }
    }

    /// Picks up attach/detach of frontends.
    /// Also re-reads changed settings and keeps each attached VF's MAC pinned in the FDB.
    fn refresh_views(&mut self) {
        let switch = self.switch.clone();
        for v in self.views.iter_mut().flatten() {
            let sg = v.port.settings_generation();
            if sg != v.settings_gen {
                v.settings_gen = sg;
                let new = v.port.settings();
                if new.max_tx_rate != v.settings.max_tx_rate {
                    v.bucket = TokenBucket::new(new.max_tx_rate);
                }
                v.settings = new;
            }
            let g = v.port.generation();
            if g != v.generation {
                v.generation = g;
                if v.conn.is_some() {
                    switch
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .port_down(v.port.spec.id);
                }
                v.conn = v.port.connection();
                v.rx_pass = 0;
                v.rx_signal = 0;
                if let Some(c) = &v.conn {
                    // Frames may have been queued before this view saw the connection.
                    for qp in 0..usize::from(v.port.spec.queue_pairs).min(64) {
                        c.mark_tx_pending(qp);
                    }
                }
            }
            let want = (v.is_vf && v.conn.is_some()).then_some(v.settings.mac);
            if want != v.static_mac {
                let mut sw = switch.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(m) = v.static_mac {
                    sw.remove_static(m, v.port.spec.id);
                }
                if let Some(m) = want {
                    sw.add_static(m, v.port.spec.id);
                }
                v.static_mac = want;
            }
        }
    }

    fn age_fdb(&mut self) {
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
        let Some(port) = self.views[src].as_ref().map(|v| v.port.clone()) else {
            return false;
        };
        let mem_guard = conn.mem.memory();
        let mem: &GuestMem = &mem_guard;
        let hdr_len = vnet_hdr_len(conn.acked_features());
        let max_frame = usize::from(port.spec.mtu) + FRAME_OVERHEAD;
        let mut done = 0;
        loop {
            let Some(n) = self.pop_tx_batch(vring, mem, hdr_len, max_frame) else {
                return done > 0;
            };
            if n == 0 && self.poll {
                // Polling: notifications stay off; the next round looks again.
                break;
            }
            if n == 0 {
                // Re-arm notifications; if the guest queued more meanwhile, keep going.
                let more = vring
                    .get_mut()
                    .get_queue_mut()
                    .enable_notification(mem)
                    .unwrap_or(false);
                if more {
                    continue;
                }
                break;
            }
            {
                let switch = self.switch.clone();
                let mut sw = switch.lock().unwrap_or_else(|e| e.into_inner());
                let elapsed = self.start.elapsed();
                let now = (
                    elapsed.as_secs(),
                    u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
                );
                for k in 0..n {
                    self.switch_frame(&mut sw, src, &port, qp, k, mem, hdr_len, now);
                }
            }
            complete_tx(vring, mem, &self.frames[..n]);
            done += n;
            if done >= TX_BUDGET {
                conn.mark_tx_pending(qp);
                break;
            }
        }
        done > 0
    }

    /// Pops up to `TX_BATCH` chains; `None` when the queue is not usable.
    fn pop_tx_batch(
        &mut self,
        vring: &Vring,
        mem: &GuestMem,
        hdr_len: usize,
        max_frame: usize,
    ) -> Option<usize> {
        let mut st = vring.get_mut();
        if !st.is_enabled() || !st.get_queue().ready() {
            return None;
        }
        let q = st.get_queue_mut();
        let _ = q.disable_notification(mem);
        let mut n = 0;
        while n < TX_BATCH {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                break;
            };
            self.frames[n].read(chain, mem, hdr_len, max_frame);
            n += 1;
        }
        Some(n)
    }

    #[allow(clippy::too_many_arguments)]
    fn switch_frame(
        &mut self,
        sw: &mut Switch,
        src: usize,
        port: &Port,
        qp: usize,
        k: usize,
        src_mem: &GuestMem,
        src_hdr: usize,
        (now, now_ns): (u64, u64),
    ) {
        let c = &port.counters;
        let f = &mut self.frames[k];
        c.totals.tx_packets.inc();
        c.totals.tx_bytes.add(f.len as u64);
        if let Some(qc) = c.queue(qp) {
            qc.tx_packets.inc();
            qc.tx_bytes.add(f.len as u64);
        }
        let hdr = match (f.ok, FrameHeader::parse(&f.head[..f.head_len], f.len)) {
            (true, Ok(h)) => h,
            _ => {
                c.totals.drop_malformed.inc();
                return;
            }
        };
        let Some(view) = self.views[src].as_mut() else {
            return;
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
                return;
            }
            Ok(Ingress::InsertTag(tpid, tci)) => f.insert_tag(tpid, tci),
            Ok(Ingress::Pass) => {}
        }
        if f.tuple.is_ip() {
            match port.rss().learn_tx(&f.tuple, qp as u16) {
                Some(Learn::Inserted) => c.totals.flow_learned.inc(),
                Some(Learn::InsertedEvicting) => {
                    c.totals.flow_learned.inc();
                    c.totals.flow_evictions.inc();
                }
                _ => {}
            }
        }
        let (verdict, learned) = sw.forward(port.spec.id, &hdr, now);
        if let Learned::Moved { from } = learned {
            let from_name = self
                .views
                .get(from.index())
                .and_then(Option::as_ref)
                .map(|v| v.port.spec.name.clone());
            tracing::info!(mac = %hdr.src, from = %from, to = %port.spec.name, "FDB move");
            self.events.emit(
                "FDB_MOVE",
                serde_json::json!({
                    "mac": hdr.src.to_string(),
                    "from": from_name.unwrap_or_else(|| from.to_string()),
                    "to": port.spec.name,
                }),
            );
        }
        match verdict {
            Verdict::SamePort => c.totals.drop_same_port.inc(),
            Verdict::Unicast(dst) => match self.views.get(dst.index()).and_then(Option::as_ref) {
                Some(v) if v.conn.is_some() => {
                    c.totals.tx_forwarded.inc();
                    self.deliver_counted(dst.index(), k, src_mem, src_hdr);
                }
                _ => c.totals.drop_no_destination.inc(),
            },
            Verdict::Flood => {
                let mut any = false;
                for j in 0..self.views.len() {
                    if j == src || self.views[j].as_ref().is_none_or(|v| v.conn.is_none()) {
                        continue;
                    }
                    if !any {
                        c.totals.tx_forwarded.inc();
                        any = true;
                    }
                    self.deliver_counted(j, k, src_mem, src_hdr);
                }
                if !any {
                    c.totals.drop_no_destination.inc();
                }
            }
        }
    }

    /// Applies the destination's egress policy (link, port VLAN) and delivers one copy.
    fn deliver_counted(&mut self, dst: usize, k: usize, src_mem: &GuestMem, src_hdr: usize) {
        let pass = self.pass;
        let f = &self.frames[k];
        let Some(view) = self.views[dst].as_mut() else {
            return;
        };
        let port = view.port.clone();
        let c: &PortCounters = &port.counters;
        let full = f.view();
        let mut stripped_head = [0u8; HEADER_COPY_LEN + VLAN_TAG_LEN];
        let fv = match policy::egress(&view.settings, view.is_vf, view.link_up(), full.head) {
            Err(d) => {
                count_policy_drop(&c.totals, d);
                return;
            }
            Ok(Egress::Pass) => full,
            Ok(Egress::StripTag) => {
                let n = full.head.len() - VLAN_TAG_LEN;
                stripped_head[..12].copy_from_slice(&full.head[..12]);
                stripped_head[12..n].copy_from_slice(&full.head[12 + VLAN_TAG_LEN..]);
                FrameView {
                    head: &stripped_head[..n],
                    len: full.len - VLAN_TAG_LEN,
                    ..full
                }
            }
        };
        match deliver(view, &fv, &f.tuple, src_mem, src_hdr, &mut self.rx, pass) {
            Ok(q) => {
                c.totals.rx_packets.inc();
                c.totals.rx_bytes.add(fv.len as u64);
                if let Some(qc) = c.queue(q) {
                    qc.rx_packets.inc();
                    qc.rx_bytes.add(fv.len as u64);
                }
            }
            Err(RxDrop::NoBuffer) => c.totals.drop_no_rx_buffer.inc(),
            Err(RxDrop::Oversize) => c.totals.drop_oversize_rx.inc(),
        }
    }

    /// Notifies the guests whose RX queues got frames this pass.
    fn flush_rx_signals(&mut self) {
        for v in self.views.iter_mut().flatten() {
            let mut mask = std::mem::take(&mut v.rx_signal);
            let Some(conn) = &v.conn else { continue };
            if mask == 0 {
                continue;
            }
            let mem = conn.mem.memory();
            while mask != 0 {
                let q = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                if let Some(vring) = conn.vring(2 * q) {
                    signal_if_needed(vring, &mem);
                }
            }
        }
    }
}

/// Pins the calling thread to one CPU; a failure is logged, not fatal.
fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data, zeroed is a valid empty set; CPU_SET and
    // sched_setaffinity(0 = this thread) only read and write that set.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        tracing::warn!(
            cpu,
            "cannot pin the data plane: {}",
            io::Error::last_os_error()
        );
    } else {
        tracing::info!(cpu, "data plane pinned");
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

/// Returns the TX chains to the guest and notifies it if it asked.
fn complete_tx(vring: &Vring, mem: &GuestMem, frames: &[TxFrame]) {
    let mut st = vring.get_mut();
    let q = st.get_queue_mut();
    for f in frames {
        // A failure here means the ring was reset under us; the frames are gone with it.
        let _ = q.add_used(mem, f.segs.head, 0);
    }
    let notify = q.needs_notification(mem).unwrap_or(true);
    if notify {
        let _ = st.signal_used_queue();
    }
}

fn signal_if_needed(vring: &Vring, mem: &GuestMem) {
    let mut st = vring.get_mut();
    if st.get_queue_mut().needs_notification(mem).unwrap_or(true) {
        let _ = st.signal_used_queue();
    }
}

/// Copies frame bytes `[from, to)` into `dst` at `dst_off`: the part covered by the header
/// copy from that copy, the rest guest to guest.
#[allow(clippy::too_many_arguments)]
fn copy_frame_range(
    f: &FrameView<'_>,
    src_mem: &GuestMem,
    src_hdr: usize,
    from: usize,
    to: usize,
    dst_mem: &GuestMem,
    dst: &Segments,
    dst_off: usize,
) -> bool {
    let split = f.head.len().clamp(from, to);
    if from < split
        && write_segments(dst_mem, dst.as_slice(), dst_off, &f.head[from..split]).is_err()
    {
        return false;
    }
    if split < to {
        let r = copy_segments(
            src_mem,
            f.segs.as_slice(),
            src_hdr + f.tail_off + (split - f.head.len()),
            dst_mem,
            dst.as_slice(),
            dst_off + (split - from),
            to - split,
        );
        return r.is_ok();
    }
    true
}

/// Writes one frame into the RX queue of `view` chosen by its flow hash. Returns the queue.
fn deliver(
    view: &mut PortView,
    f: &FrameView<'_>,
    tuple: &FlowTuple,
    src_mem: &GuestMem,
    src_hdr: usize,
    rx: &mut RxScratch,
    pass: u64,
) -> Result<usize, RxDrop> {
    view.refresh_rx(pass);
    if view.enabled.is_empty() {
        return Err(RxDrop::NoBuffer);
    }
    let decision = view.port.rss().decide(tuple, &view.enabled);
    let c = &view.port.counters.totals;
    match decision.by {
        Steering::Rss => c.rx_steer_rss.inc(),
        Steering::FlowRule => c.rx_steer_flow_rule.inc(),
        Steering::FlowLearned => c.rx_steer_flow_learned.inc(),
        Steering::NonIp => c.rx_steer_non_ip.inc(),
    }
    if decision.fell_back {
        c.rx_steer_fallback.inc();
    }
    let qi = usize::from(decision.queue);
    let conn = view.conn.as_ref().ok_or(RxDrop::NoBuffer)?;
    let vring = conn.vring(2 * qi).ok_or(RxDrop::NoBuffer)?;
    let features = conn.acked_features();
    let hdr_len = vnet_hdr_len(features);
    let mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
    let mem_guard = conn.mem.memory();
    let dmem: &GuestMem = &mem_guard;
    let need = hdr_len + f.len;

    let mut st = vring.get_mut();
    if !st.is_enabled() || !st.get_queue().ready() {
        return Err(RxDrop::NoBuffer);
    }
    let q = st.get_queue_mut();
    let mut nused = 0;
    let mut written = 0;
    // Chains completed with length 0 because the guest posted them broken: once one is in the
    // frame, the popped chains cannot be put back and are completed empty instead.
    let mut poisoned = false;
    let result = loop {
        if written == need {
            break Ok(());
        }
        if nused == MAX_RX_CHAINS {
            break Err(RxDrop::NoBuffer);
        }
        let Some(chain) = q.pop_descriptor_chain(dmem) else {
            break Err(RxDrop::NoBuffer);
        };
        let segs = if nused == 0 {
            &mut rx.first
        } else {
            &mut rx.cur
        };
        let head = chain.head_index();
        let fill_ok = segs.fill(chain, Direction::Write, dmem).is_ok();
        let cap = segs.total();
        if !fill_ok || (nused == 0 && cap < hdr_len) || cap == 0 {
            let _ = q.add_used(dmem, head, 0);
            poisoned = true;
            continue;
        }
        if !mergeable && cap < need {
            rx.used[nused] = (head, 0);
            nused += 1;
            break Err(RxDrop::Oversize);
        }
        let take = cap.min(need - written);
        let (from, dst_off) = if nused == 0 {
            (0, hdr_len)
        } else {
            (written - hdr_len, 0)
        };
        let to = written + take - hdr_len;
        if !copy_frame_range(f, src_mem, src_hdr, from, to, dmem, segs, dst_off) {
            rx.used[nused] = (head, 0);
            nused += 1;
            break Err(RxDrop::NoBuffer);
        }
        rx.used[nused] = (head, take as u32);
        nused += 1;
        written += take;
        if !mergeable && written < need {
            break Err(RxDrop::Oversize);
        }
    };
    match result {
        Ok(()) => {
            let hdr = rx_header(nused as u16);
            let hdr_ok = write_segments(dmem, rx.first.as_slice(), 0, &hdr[..hdr_len]).is_ok();
            for &(head, len) in &rx.used[..nused] {
                // Without a valid header the frame is unusable: hand the buffers back empty.
                let _ = q.add_used(dmem, head, if hdr_ok { len } else { 0 });
            }
            view.rx_signal |= 1 << qi;
            if hdr_ok {
                Ok(qi)
            } else {
                Err(RxDrop::NoBuffer)
            }
        }
        Err(e) => {
            if poisoned {
                for &(head, _) in &rx.used[..nused] {
                    let _ = q.add_used(dmem, head, 0);
                }
                view.rx_signal |= 1 << qi;
            } else {
                // Put the chains back for the next frame.
                let back = q.next_avail().wrapping_sub(nused as u16);
                q.set_next_avail(back);
            }
            Err(e)
        }
    }
}
