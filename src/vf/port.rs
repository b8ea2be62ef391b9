//! A port's runtime state, shared by its vhost-user threads and the data plane.

use super::settings::{SettingsError, SettingsUpdate, VfSettings};
use super::{GuestMemAtomic, Vring};
use crate::dma_engine::LogSwitch;
use crate::faults::PortFaults;
use crate::pf::{PortKind, PortSpec};
use crate::port::TxPending;
use crate::rss::{EnabledQueues, VfRss};
use crate::stats::PortCounters;
use crate::switch::{EdgePolicy, Switch, TokenBucket};
use crate::wire::MacAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Vrings per vhost-user worker thread (the handler's per-thread mask is a u64).
pub const VRINGS_PER_THREAD: usize = 64;

/// How long a stop (GET_VRING_BASE, the end of a session) waits for an in-flight TX batch
/// (microseconds in practice).
pub const TX_STOP_WAIT: Duration = Duration::from_secs(2);

/// One frontend's session on a port: from connect to hang-up.
pub struct Connection {
    /// Guest memory; SET_MEM_TABLE replaces its contents.
    pub mem: GuestMemAtomic,
    /// The vrings of each handler thread, learnt from the first `handle_event` of that thread.
    vrings: Box<[OnceLock<Box<[Vring]>>]>,
    /// Features the frontend acknowledged.
    acked_features: AtomicU64,
    /// The TX queue pairs kicked and not yet processed.
    pending_tx: Arc<TxPending>,
    /// Per TX queue pair: `TX_BUSY` while a popped batch is not completed, `TX_ABANDONED` once
    /// a stop gave up waiting for it. Changed under the vring's lock.
    tx_state: Box<[AtomicU8]>,
    num_queues: usize,
    /// The dirty log for live migration: whether it is on and where.
    pub log: LogSwitch,
    /// A VF's MAC is pinned to it in the switch (changed under the switch lock): from the
    /// connect until the frontend stops the device (GET_VRING_BASE of an RX ring: the guest
    /// reset or released it), and again from its next kick.
    pub mac_pinned: AtomicBool,
    /// A RARP to send from the port (SEND_RARP after a migration): the MAC in the low 48 bits
    /// and `ANNOUNCE_SET`; 0 when none. Written by the handler, taken by the data plane's next
    /// pop of TX queue pair 0.
    announce: AtomicU64,
}

const ANNOUNCE_SET: u64 = 1 << 63;

const TX_BUSY: u8 = 1;
const TX_ABANDONED: u8 = 2;

impl Connection {
    pub fn new(mem: GuestMemAtomic, num_queues: usize) -> Self {
        let threads = num_queues.div_ceil(VRINGS_PER_THREAD);
        Connection {
            mem,
            vrings: (0..threads).map(|_| OnceLock::new()).collect(),
            acked_features: AtomicU64::new(0),
            pending_tx: Arc::default(),
            tx_state: (0..num_queues.div_ceil(2))
                .map(|_| AtomicU8::new(0))
                .collect(),
            num_queues,
            log: LogSwitch::default(),
            mac_pinned: AtomicBool::new(false),
            announce: AtomicU64::new(0),
        }
    }

    /// Asks the data plane to send a RARP from the port with source `mac` (a later request
    /// replaces one not yet sent).
    pub fn request_announce(&self, mac: MacAddr) {
        let mut bytes = [0u8; 8];
        bytes[..6].copy_from_slice(&mac.0);
        self.announce
            .store(u64::from_le_bytes(bytes) | ANNOUNCE_SET, Ordering::Release);
    }

    /// A RARP is waiting to be sent (one relaxed load: checked on every pop of TX pair 0).
    #[inline]
    pub fn announce_pending(&self) -> bool {
        self.announce.load(Ordering::Relaxed) != 0
    }

    /// Takes the waiting RARP's MAC, if any.
    pub fn take_announce(&self) -> Option<MacAddr> {
        let v = self.announce.swap(0, Ordering::Acquire);
        (v != 0).then(|| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&(v & !ANNOUNCE_SET).to_le_bytes()[..6]);
            MacAddr(mac)
        })
    }

    pub fn num_queues(&self) -> usize {
        self.num_queues
    }

    /// Records a handler thread's vrings (first call wins; later calls see the same rings).
    /// Returns true on the first call for that thread.
    pub fn set_thread_vrings(&self, thread: usize, vrings: &[Vring]) -> bool {
        let Some(slot) = self.vrings.get(thread) else {
            return false;
        };
        if slot.get().is_some() {
            return false;
        }
        slot.set(vrings.to_vec().into_boxed_slice()).is_ok()
    }

    /// Virtqueue `index` (RX of pair q = 2q, TX = 2q+1), once its thread has reported it.
    #[inline]
    pub fn vring(&self, index: usize) -> Option<&Vring> {
        self.vrings
            .get(index / VRINGS_PER_THREAD)?
            .get()?
            .get(index % VRINGS_PER_THREAD)
    }

    /// Bit q set: RX queue q (of `queue_pairs`) is ready and enabled by the frontend.
    pub fn enabled_rx_mask(&self, queue_pairs: usize) -> u64 {
        use vhost_user_backend::VringT;
        use virtio_queue::QueueT;
        let mut mask = 0u64;
        for q in 0..queue_pairs.min(64) {
            if let Some(v) = self.vring(2 * q) {
                let st = v.get_ref();
                if st.is_enabled() && st.get_queue().ready() {
                    mask |= 1 << q;
                }
            }
        }
        mask
    }

    /// Waits until no data-plane batch that started before this call still runs: every
    /// guest-memory write happens under a vring's lock, and a batch looks at the dirty log
    /// (`LogView::sync`) after taking it, so once each lock was taken here, every write marks
    /// the log as it is now. (The frontend reads and frees a replaced log as soon as
    /// SET_LOG_BASE is answered.)
    pub fn quiesce(&self) {
        for i in 0..self.num_queues {
            if let Some(v) = self.vring(i) {
                drop(vhost_user_backend::VringT::get_mut(v));
            }
        }
    }

    pub fn set_acked_features(&self, f: u64) {
        self.acked_features.store(f, Ordering::Release);
    }

    #[inline]
    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Acquire)
    }

    /// A TX batch of queue pair `qp` was popped (under the vring's lock).
    pub fn tx_begin(&self, qp: usize) {
        if let Some(s) = self.tx_state.get(qp) {
            s.store(TX_BUSY, Ordering::Release);
        }
    }

    /// The batch of `qp` is being completed (under the vring's lock): false if a stop gave up
    /// waiting for it, so its chains must not be written into a ring handed over meanwhile.
    pub fn tx_end(&self, qp: usize) -> bool {
        // Every change is made under the vring's lock, so a load and a store do (no atomic
        // read-modify-write on every batch); `wait_tx_idle` reads the store without the lock.
        self.tx_state.get(qp).is_none_or(|s| {
            let was = s.load(Ordering::Relaxed);
            s.store(0, Ordering::Release);
            was != TX_ABANDONED
        })
    }

    /// Waits until no batch of TX queue pair `qp` is in flight (GET_VRING_BASE must report an
    /// index up to which every chain was completed). False after `timeout`.
    pub fn wait_tx_idle(&self, qp: usize, timeout: Duration) -> bool {
        let Some(s) = self.tx_state.get(qp) else {
            return true;
        };
        let start = Instant::now();
        while s.load(Ordering::Acquire) == TX_BUSY {
            if start.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        true
    }

    /// Gives up on the in-flight batch of `qp` (under the vring's lock): its completion will
    /// write nothing.
    pub fn abandon_tx(&self, qp: usize) {
        if let Some(s) = self.tx_state.get(qp) {
            let _ = s.compare_exchange(TX_BUSY, TX_ABANDONED, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Stops TX queue pair `qp` for GET_VRING_BASE or the end of the session: waits until the
    /// batch the data plane popped from it (if any) is completed into the guest's used ring,
    /// or after `TX_STOP_WAIT` gives it up (its completion then writes nothing). False if it
    /// was given up.
    pub fn stop_tx(&self, qp: usize) -> bool {
        if self.wait_tx_idle(qp, TX_STOP_WAIT) {
            return true;
        }
        if let Some(v) = self.vring(2 * qp + 1) {
            let _guard = vhost_user_backend::VringT::get_mut(v);
            self.abandon_tx(qp);
        }
        false
    }

    /// Stops every ring at the end of the session (the frontend hung up, or is being sent
    /// away), before the next frontend is accepted: from here on the data plane starts no TX
    /// batch and no RX delivery on this connection (it looks at `ready` under each ring's
    /// lock), and a TX batch in flight is completed first (`stop_tx`). So the guest's used
    /// rings are final: a frontend that comes back with the same memory (QEMU after a
    /// reconnect resumes every ring at its used index) takes up exactly where they end, with
    /// no chain taken twice and none written by the old session into the new one's rings.
    /// Returns the TX queue pairs whose batch had to be given up.
    pub fn stop(&self) -> Vec<usize> {
        use vhost_user_backend::VringT;
        for i in 0..self.num_queues {
            if let Some(v) = self.vring(i) {
                // Takes the ring's lock: an RX delivery in progress ends first.
                v.set_queue_ready(false);
            }
        }
        (0..self.num_queues.div_ceil(2))
            .filter(|&qp| !self.stop_tx(qp))
            .collect()
    }

    /// Marks TX queue pair `qp` as kicked. Returns true if it was not pending before.
    pub fn mark_tx_pending(&self, qp: usize) -> bool {
        self.pending_tx.mark(qp)
    }

    /// The TX queue pairs kicked and not yet processed.
    pub fn tx_pending(&self) -> &Arc<TxPending> {
        &self.pending_tx
    }
}

/// A switch port: static spec, counters, and the current connection if a frontend is there.
pub struct Port {
    pub spec: PortSpec,
    pub counters: PortCounters,
    /// RSS key and table, flow steering. The data plane locks it per frame only when flow
    /// rules, learning or a user table are in use (`VfRss::fast_path`).
    rss: Mutex<VfRss>,
    /// Bumped whenever the control plane changes the RSS state through `rss()`.
    rss_generation: AtomicU64,
    settings: Mutex<VfSettings>,
    /// Bumped on every settings change; the data plane keeps a copy and re-reads on change.
    settings_generation: AtomicU64,
    /// The `max_tx_rate` bucket, one per port whichever workers serve its TX queues: taken
    /// once per TX batch, only while a rate is set.
    tx_rate: Mutex<TokenBucket>,
    /// The `min_tx_rate` bucket: the share of the wire guaranteed to the port, taken once per
    /// batch with frames for the uplink, only while set.
    wire_share: Mutex<TokenBucket>,
    conn: Mutex<Option<Arc<Connection>>>,
    /// Bumped on every attach and detach, so the data plane notices without locking.
    generation: AtomicU64,
    /// The PF's carrier (the uplink's; up without one), which link state `auto` follows.
    /// Shared by every port of the adapter.
    carrier: Arc<AtomicBool>,
    /// A VF attached while its MAC was in use on another port (the plug-in model's guest on
    /// its PV NIC): the pin waits for the VF's first frame (`Switch::take_mac`). Looked at by
    /// the data plane once per TX batch.
    pin_on_tx: AtomicBool,
    /// Faults injected for the user's tests (`fault-set`).
    pub faults: PortFaults,
}

impl Port {
    pub fn new(spec: PortSpec) -> Self {
        let counters = PortCounters::new(usize::from(spec.queue_pairs));
        let faults = PortFaults::new(usize::from(spec.queue_pairs));
        let rss = Mutex::new(VfRss::new(spec.queue_pairs));
        let settings = match spec.kind {
            PortKind::Vf(_) => VfSettings::new(spec.mac.unwrap_or(MacAddr::ZERO)),
            // A PV port is the guest's software path, the uplink the wire: no VF knobs, any
            // source MAC.
            PortKind::Pv(_) | PortKind::Uplink => VfSettings {
                spoofchk: false,
                ..VfSettings::new(MacAddr::ZERO)
            },
        };
        Port {
            spec,
            counters,
            rss,
            rss_generation: AtomicU64::new(0),
            tx_rate: Mutex::new(TokenBucket::new(settings.max_tx_rate)),
            wire_share: Mutex::new(TokenBucket::new(settings.min_tx_rate)),
            settings: Mutex::new(settings),
            settings_generation: AtomicU64::new(0),
            conn: Mutex::new(None),
            generation: AtomicU64::new(0),
            carrier: Arc::new(AtomicBool::new(true)),
            pin_on_tx: AtomicBool::new(false),
            faults,
        }
    }

    /// The port follows `carrier`, the PF's (instead of a carrier always up).
    pub fn with_carrier(mut self, carrier: Arc<AtomicBool>) -> Self {
        self.carrier = carrier;
        self
    }

    /// The carrier this port's link state `auto` follows: the PF's, except for a PV port (the
    /// host's software side, up whatever the wire does).
    fn carrier(&self) -> bool {
        match self.spec.kind {
            PortKind::Pv(_) => true,
            PortKind::Vf(_) | PortKind::Uplink => self.carrier.load(Ordering::Acquire),
        }
    }

    /// Whether the port's link is up now (its link state, the carrier for `auto`, and no
    /// link flap injected holding it down).
    pub fn link_up(&self) -> bool {
        self.settings().link_up(self.carrier()) && !self.faults.link_held_down()
    }

    /// What the switch enforces at this port's edge now.
    pub fn edge_policy(&self) -> EdgePolicy {
        let mut p = self
            .settings()
            .edge_policy(self.spec.kind.is_vf(), self.carrier());
        p.link_up &= !self.faults.link_held_down();
        p
    }

    /// Something the edge policy depends on changed (the carrier): the data plane re-reads it.
    pub fn touch_settings(&self) {
        self.settings_generation.fetch_add(1, Ordering::AcqRel);
    }

    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current connection.
    pub fn connection(&self) -> Option<Arc<Connection>> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The RSS state, even if a panic poisoned the lock (the state stays consistent: every
    /// method leaves it valid). A change made through the guard bumps `rss_generation`, so
    /// the data plane re-reads its steering shortcut.
    pub fn rss(&self) -> RssGuard<'_> {
        RssGuard {
            guard: self.rss.lock().unwrap_or_else(|e| e.into_inner()),
            generation: &self.rss_generation,
            changed: false,
        }
    }

    /// The RSS state for the data path's own updates (learned flows, their recency), which
    /// never change what `VfRss::fast_path` returns: no generation bump.
    pub fn rss_data_path(&self) -> std::sync::MutexGuard<'_, VfRss> {
        self.rss.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[inline]
    pub fn rss_generation(&self) -> u64 {
        self.rss_generation.load(Ordering::Acquire)
    }

    /// The current settings.
    pub fn settings(&self) -> VfSettings {
        *self.settings.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[inline]
    pub fn settings_generation(&self) -> u64 {
        self.settings_generation.load(Ordering::Acquire)
    }

    /// Applies `update` as a whole; returns (old, new) settings. Nothing changes on error.
    pub fn update_settings(
        &self,
        update: &SettingsUpdate,
    ) -> Result<(VfSettings, VfSettings), SettingsError> {
        let mut cur = self.settings.lock().unwrap_or_else(|e| e.into_inner());
        let new = update.apply(&cur)?;
        let old = std::mem::replace(&mut *cur, new);
        if old.max_tx_rate != new.max_tx_rate {
            *self.tx_rate() = TokenBucket::new(new.max_tx_rate);
        }
        if old.min_tx_rate != new.min_tx_rate {
            *self.wire_share() = TokenBucket::new(new.min_tx_rate);
        }
        self.settings_generation.fetch_add(1, Ordering::AcqRel);
        Ok((old, new))
    }

    /// The `max_tx_rate` token bucket.
    pub fn tx_rate(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.tx_rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `min_tx_rate` token bucket (the guaranteed share of the wire).
    pub fn wire_share(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.wire_share.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes over `old`'s settings and RSS configuration (the same VF rebuilt with another
    /// channel count).
    pub fn inherit_config(&self, old: &Port) {
        let settings = old.settings();
        *self.settings.lock().unwrap_or_else(|e| e.into_inner()) = settings;
        *self.tx_rate() = TokenBucket::new(settings.max_tx_rate);
        *self.wire_share() = TokenBucket::new(settings.min_tx_rate);
        self.settings_generation.fetch_add(1, Ordering::AcqRel);
        let old_rss = old.rss();
        self.rss().inherit(&old_rss);
    }

    /// The RX queues the current frontend has enabled (none when detached).
    pub fn enabled_rx_queues(&self) -> EnabledQueues {
        let qp = usize::from(self.spec.queue_pairs);
        EnabledQueues::from_mask(self.connection().map_or(0, |c| c.enabled_rx_mask(qp)))
    }

    /// Pins this VF's MAC in `sw` now, or, while another port has it, at the VF's first frame
    /// (`Switch::pin_or_defer`). Under the switch lock (`sw`), so a concurrent `vf N set mac`
    /// is not lost.
    pub fn pin_mac(&self, sw: &mut Switch) {
        let s = self.settings();
        let now = crate::switch::now_ns() / 1_000_000_000;
        let pinned = sw.pin_or_defer(self.spec.id, s.mac, s.vlan, now);
        self.set_pin_on_tx(!pinned);
    }

    /// Sets whether the VF's MAC is to be pinned at its next frame.
    pub fn set_pin_on_tx(&self, on: bool) {
        self.pin_on_tx.store(on, Ordering::Release);
    }

    /// Takes the deferred pin, if there is one (one relaxed load when there is none).
    #[inline]
    pub fn take_pin_on_tx(&self) -> bool {
        self.pin_on_tx.load(Ordering::Relaxed) && self.pin_on_tx.swap(false, Ordering::AcqRel)
    }

    pub fn is_attached(&self) -> bool {
        self.connection().is_some()
    }

    /// Installs (or clears) the connection and bumps the generation.
    pub fn set_connection(&self, conn: Option<Arc<Connection>>) {
        *self.conn.lock().unwrap_or_else(|e| e.into_inner()) = conn;
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// `Port::rss`: the locked RSS state; a mutable use bumps the port's RSS generation on drop.
pub struct RssGuard<'a> {
    guard: std::sync::MutexGuard<'a, VfRss>,
    generation: &'a AtomicU64,
    changed: bool,
}

impl std::ops::Deref for RssGuard<'_> {
    type Target = VfRss;
    fn deref(&self) -> &VfRss {
        &self.guard
    }
}

impl std::ops::DerefMut for RssGuard<'_> {
    fn deref_mut(&mut self) -> &mut VfRss {
        self.changed = true;
        &mut self.guard
    }
}

impl Drop for RssGuard<'_> {
    fn drop(&mut self) {
        if self.changed {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// The data of a port event: `{"port": "vf0", "vf": 0, "state": ...}` (`"pv": j` for PV ports).
pub fn port_event_data(port: &Port, state: &str) -> serde_json::Value {
    match port.spec.kind {
        PortKind::Vf(i) => serde_json::json!({"port": port.spec.name, "vf": i, "state": state}),
        PortKind::Pv(j) => serde_json::json!({"port": port.spec.name, "pv": j, "state": state}),
        PortKind::Uplink => serde_json::json!({"port": port.spec.name, "state": state}),
    }
}
