//! One TX batch through the switch: pop -> edge policy -> FDB (one switch lock) -> fan-out,
//! egress policy and steering -> grouped delivery -> completion.
//!
//! The switch lock is held only for the FDB (learning and verdicts): no ring lock is taken and
//! no event is emitted under it. A frame's decisions are all made on its head copy.

use super::deliver::{Deliveries, Delivery};
use super::groups::Groups;
use super::tap::Tap;
use super::views::Views;
use super::TX_BATCH;
use crate::capture::{CaptureHub, Decision, Direction, VlanAction};
use crate::events::EventBus;
use crate::faults::{corrupt_offset, FrameFaults, Held};
use crate::pf::UPLINK_PORT_ID;
use crate::port::{FrameView, TxFrame, TxPending, TxPop, TxQueues};
use crate::rss::{FlowTuple, Learn, Steering};
use crate::stats::{Counter, PortTotals};
use crate::switch::EdgePolicy;
use crate::switch::{
    fan_out, policy, vlan, Egress, FdbMove, FromPort, Ingress, Learned, PolicyDrop, PortId,
    PortRole, Remote, Switch, TokenBucket, Verdict,
};
use crate::uplink::Uplink;
use crate::vf::Port;
use crate::wire::{FrameHeader, MacAddr};
use std::sync::{Arc, Mutex, MutexGuard};

/// Frames taken from one TX queue per pass before other queues get their turn.
const TX_BUDGET: usize = 256;
/// `Delivery::queue` of a delivery still to be steered under the destination's RSS lock (never
/// a queue, nor a remote of the uplink: `uplink::MAX_REMOTES` and `switch::ALL_REMOTES` are
/// below and above it).
const STEER_PENDING: u16 = u16::MAX - 1;

/// What the pipeline decided about one frame of the batch.
#[derive(Default)]
struct Decided {
    /// Passed the sender's edge policy: the frame is switched (its header, parsed from `head`).
    hdr: Option<FrameHeader>,
    /// Its VLAN in the switch (the outer tag after the port VLAN's; 0 = untagged).
    vlan: u16,
    /// Why it was dropped at the sender's edge (counted if the frame was sent).
    drop: Option<Dropped>,
    /// Bits charged to the sender's `max_tx_rate` for it.
    charged: u64,
    /// Its length as popped (for the sender's byte counters: read here, in the batch's small
    /// decisions, rather than from the large frames again).
    len: usize,
    /// Its flow may be learned (flow learning on).
    learn: bool,
    /// The RSS / flow steering view of the frame, parsed from its head when first needed.
    tuple: Option<FlowTuple>,
    /// An injected fault sends a copy of it later: after this long (0: a duplicate, at once).
    hold_ns: Option<u64>,
}

impl Decided {
    fn tuple(&mut self, f: &TxFrame) -> &FlowTuple {
        self.tuple.get_or_insert_with(|| FlowTuple::parse(f.head()))
    }

    fn is_ip(&self, f: &TxFrame) -> bool {
        match &self.tuple {
            Some(t) => t.is_ip(),
            None => FlowTuple::is_ip_frame(f.head()),
        }
    }
}

/// Why a frame was dropped at the sender's edge.
#[derive(Clone, Copy)]
enum Dropped {
    Malformed,
    Policy(PolicyDrop),
    /// An injected `drop` fault.
    Fault,
    /// An injected `delay` fault took it into the delay line (it is sent later).
    Delayed,
}

/// The bits a frame costs a rate bucket.
#[inline]
fn frame_bits(len: usize) -> u64 {
    len as u64 * 8
}

/// The wire's TX scheduler for one batch: the uplink's line rate, and the sender's guaranteed
/// share of it (`min_tx_rate`), locked once per batch with frames for the wire.
struct WireGate<'a> {
    line: MutexGuard<'a, TokenBucket>,
    share: Option<MutexGuard<'a, TokenBucket>>,
}

impl<'a> WireGate<'a> {
    fn open(up: &'a Uplink, port: &'a Port, policy: &EdgePolicy, now_ns: u64) -> Self {
        let mut line = up.rate();
        line.refill(now_ns);
        let share = (policy.min_tx_rate != 0).then(|| {
            let mut g = port.wire_share();
            g.refill(now_ns);
            g
        });
        WireGate { line, share }
    }

    /// Admits a frame of `bits` onto the wire: within the sender's guaranteed share (which the
    /// line is charged for too, even past zero: the others wait), or while the line is not
    /// in debt. `Err(when)`: held back until then.
    fn admit(&mut self, bits: u64, now_ns: u64) -> Result<(), u64> {
        let guaranteed = self.share.as_ref().is_some_and(|g| g.has_credit());
        if guaranteed || self.line.may_send() {
            self.line.charge(bits);
            if let Some(g) = self.share.as_deref_mut().filter(|_| guaranteed) {
                g.charge(bits);
            }
            return Ok(());
        }
        let line = self.line.ready_at(now_ns);
        Err(self
            .share
            .as_ref()
            .map_or(line, |g| line.min(g.ready_at(now_ns))))
    }
}

/// A worker's pipeline: buffers reused for every batch.
pub struct Pipeline {
    switch: Arc<Mutex<Switch>>,
    events: Arc<EventBus>,
    frames: Box<[TxFrame]>,
    decided: Box<[Decided]>,
    deliveries: Deliveries,
    /// Deliveries grouped by port, to steer them under each port's RSS lock.
    by_port: Groups,
    /// Verdicts of the batch's frames.
    verdicts: Box<[Verdict]>,
    /// FDB moves of the batch, announced after the switch lock is released.
    moves: Vec<FdbMove>,
    /// One frame's destination ports and remotes (reused).
    dests: Vec<(PortId, Remote)>,
    /// When the batch just held back by a rate may go (ns, `now_ns` clock).
    throttle: u64,
    /// The earliest time a held-back queue is to be tried again.
    next_retry: Option<u64>,
    /// The capture hook (one relaxed load per batch while no capture runs).
    tap: Tap,
    /// Frames of a port's delay line being sent (injected faults): their buffers back the
    /// batch's host segments until it is delivered.
    held: Vec<Held>,
    /// A frame was put in a delay line: its queue is to be looked at again when due.
    fault_held: bool,
}

impl Pipeline {
    pub fn new(
        switch: Arc<Mutex<Switch>>,
        events: Arc<EventBus>,
        captures: Arc<CaptureHub>,
    ) -> Self {
        Pipeline {
            switch,
            events,
            frames: (0..TX_BATCH).map(|_| TxFrame::default()).collect(),
            decided: (0..TX_BATCH).map(|_| Decided::default()).collect(),
            deliveries: Deliveries::new(),
            by_port: Groups::new(crate::pf::PORT_SLOTS),
            verdicts: vec![Verdict::SamePort; TX_BATCH].into_boxed_slice(),
            moves: Vec::with_capacity(4),
            dests: Vec::with_capacity(crate::pf::PORT_SLOTS),
            throttle: 0,
            next_retry: None,
            tap: Tap::new(captures, TX_BATCH),
            held: Vec::new(),
            fault_held: false,
        }
    }

    /// Seconds on the data plane's clock (the FDB's).
    pub fn now_secs(&self) -> u64 {
        super::now_ns() / 1_000_000_000
    }

    /// The switch (for upkeep).
    pub fn switch(&self) -> &Mutex<Switch> {
        &self.switch
    }

    /// Processes TX queue pair `qp` of the port in slot `src` for up to `TX_BUDGET` frames;
    /// true if there were any.
    pub fn process_tx(
        &mut self,
        views: &mut Views,
        src: usize,
        pending: &TxPending,
        qp: usize,
    ) -> bool {
        let mut done = 0;
        loop {
            let Some(view) = views.get_mut(src) else {
                return done > 0;
            };
            if view.throttled_until != 0 {
                // Held back by a rate: not before its bucket has tokens again.
                let now = super::now_ns();
                if now < view.throttled_until {
                    pending.mark(qp);
                    self.retry_at(view.throttled_until);
                    return done > 0;
                }
                view.throttled_until = 0;
            }
            if view.port.faults.any() {
                let port = view.port.clone();
                match self.fault_gate(views, src, &port, pending, qp) {
                    FaultGate::Stalled => return done > 0,
                    FaultGate::Sent(n) => {
                        done += n;
                        if done >= TX_BUDGET {
                            pending.mark(qp);
                            break;
                        }
                    }
                    FaultGate::Open => {}
                }
            }
            let Some(view) = views.get_mut(src) else {
                return done > 0;
            };
            let Some(io) = view.io.as_mut() else {
                return done > 0;
            };
            let (n, batch) = match io.pop(qp, &mut self.frames) {
                TxPop::Batch(n, b) => (n, b),
                TxPop::Empty => break,
                TxPop::Fault(f) => {
                    view.port.counters.totals.queue_faults.inc();
                    view.warn_broken_queue(&format_args!("TX queue {qp}: {f}"));
                    break;
                }
            };
            let port = view.port.clone();
            let sent = self.forward(views, src, &port, qp, n, Origin::Queue);
            let Some(view) = views.get_mut(src) else {
                break;
            };
            if let Some(io) = view.io.as_mut() {
                io.complete(qp, &self.frames[..n], batch, sent);
            }
            done += sent;
            if std::mem::take(&mut self.fault_held) {
                // Sent from the delay line by this queue's next look (`fault_gate`).
                pending.mark(qp);
            }
            if sent < n {
                // The rest waits in the queue until the rate allows it.
                view.throttled_until = self.throttle.max(1);
                port.counters.totals.tx_throttled.inc();
                pending.mark(qp);
                self.retry_at(self.throttle);
                break;
            }
            if done >= TX_BUDGET {
                pending.mark(qp);
                break;
            }
        }
        done > 0
    }

    /// Switches, captures and delivers the first `n` frames of the batch, popped from
    /// `port`'s TX queue pair `qp` or taken from its delay line; returns how many were sent
    /// (`switch_batch`).
    fn forward(
        &mut self,
        views: &mut Views,
        src: usize,
        port: &Arc<Port>,
        qp: usize,
        n: usize,
        origin: Origin,
    ) -> usize {
        self.tap.begin();
        let sent = self.switch_batch(views, src, port, qp, n, origin);
        if self.tap.on {
            self.capture_batch(views, port, qp, sent);
        }
        self.deliveries
            .write(&self.frames[..sent], views, &self.tap);
        self.tap.end();
        sent
    }

    /// Makes the switch decisions for `n` popped frames of `port`'s TX queue `qp`. Returns how
    /// many were sent (decided and counted); the rest are held back by a rate (the port's
    /// `max_tx_rate`, or the wire's line rate and the port's share of it), and `self.throttle`
    /// says when to try again.
    fn switch_batch(
        &mut self,
        views: &mut Views,
        src: usize,
        port: &Port,
        qp: usize,
        n: usize,
        origin: Origin,
    ) -> usize {
        let c = &port.counters.totals;
        let now_ns = super::now_ns();
        let now = now_ns / 1_000_000_000;
        let Some(view) = views.get(src) else {
            return 0;
        };
        let policy = view.policy;
        let role = view.role;
        let learning = view.rss_fast.is_none();
        let mut cut = n;

        // 1. The sender's rate (its bucket locked once if set), then its edge policy, frame
        // by frame. Drops are counted once the batch's cut is known.
        let mut bucket = (policy.max_tx_rate != 0).then(|| port.tx_rate());
        if let Some(b) = bucket.as_deref_mut() {
            b.refill(now_ns);
        }
        // Injected faults (`fault-set`), numbered per frame; not on frames they injected.
        let faults = (origin == Origin::Queue && port.faults.any())
            .then(|| port.faults.frames())
            .flatten()
            .filter(|f| f.is_active());
        let first = faults.as_ref().map_or(0, |f| f.number(n));
        for k in 0..n {
            let (f, d) = (&mut self.frames[k], &mut self.decided[k]);
            if let Some(b) = bucket.as_deref_mut() {
                if !b.may_send() {
                    cut = k;
                    self.throttle = b.ready_at(now_ns);
                    break;
                }
                d.charged = frame_bits(f.len);
                b.charge(d.charged);
            }
            d.hdr = None;
            d.learn = false;
            d.tuple = None;
            d.drop = None;
            d.hold_ns = None;
            d.len = f.len;
            if let Some(ff) = faults.as_ref().filter(|_| f.ok) {
                let v = ff.decide(first + k as u64);
                if v.drop {
                    d.drop = Some(Dropped::Fault);
                    continue;
                }
                if let Some(ns) = v.delay_ns {
                    d.drop = Some(Dropped::Delayed);
                    d.hold_ns = Some(ns);
                    continue;
                }
                if v.duplicate {
                    d.hold_ns = Some(0);
                }
                if let Some((r, mask)) = v.corrupt {
                    if let Some(at) = corrupt_offset(r, f.head_len) {
                        f.head[at] ^= mask;
                        c.fault_corrupt.inc();
                    }
                }
            }
            let hdr = match (f.ok, FrameHeader::parse(f.head(), f.len)) {
                (true, Ok(h)) => h,
                _ => {
                    d.drop = Some(Dropped::Malformed);
                    continue;
                }
            };
            match policy::ingress(&policy, &hdr) {
                Err(drop) => {
                    d.drop = Some(Dropped::Policy(drop));
                    continue;
                }
                Ok(Ingress::InsertTag(tpid, tci)) => {
                    match vlan::insert_tag(&mut f.head, f.head_len, tpid, tci) {
                        Some(len) => {
                            f.head_len = len;
                            f.len += vlan::TAG_LEN;
                        }
                        None => {
                            d.drop = Some(Dropped::Malformed);
                            continue;
                        }
                    }
                }
                Ok(Ingress::Pass) => {}
            }
            d.vlan = policy::outer_tag(f.head()).map_or(0, |(_, vid)| vid);
            d.hdr = Some(hdr);
            // Learned after the batch's decisions, under one lock (`learn_flows`).
            d.learn = learning;
        }
        drop(bucket);

        // 2. The FDB, under one switch lock: learn the sources, decide the destinations. A
        // frame with the same addresses, VLAN and remote as the previous one gets the same
        // verdict, and its learning would only refresh the entry just refreshed.
        self.moves.clear();
        {
            let mut at = FromPort {
                port: port.spec.id,
                role,
                remote: 0,
                vlan: 0,
            };
            let mut sw = self.switch.lock().unwrap_or_else(|e| e.into_inner());
            if port.take_pin_on_tx() {
                // A VF plugged while its guest's MAC was on another port: its first frame
                // (the guest's bond moved to it) takes the MAC back.
                let s = port.settings();
                if let Some(from) = sw.take_mac(port.spec.id, s.mac, s.vlan, now) {
                    self.moves.push(FdbMove {
                        mac: s.mac,
                        from,
                        to: port.spec.id,
                    });
                }
            }
            let mut last: Option<(MacAddr, MacAddr, u16, Remote, Verdict)> = None;
            for k in 0..cut {
                let Some(hdr) = self.decided[k].hdr else {
                    continue;
                };
                let (vlan, remote) = (self.decided[k].vlan, self.frames[k].from);
                self.verdicts[k] = match last {
                    Some((s, d, vl, r, v))
                        if s == hdr.src && d == hdr.dst && vl == vlan && r == remote =>
                    {
                        v
                    }
                    _ => {
                        at.vlan = vlan;
                        at.remote = remote;
                        let (v, learned) = sw.forward(&at, &hdr, now);
                        match learned {
                            Learned::Moved { from } => self.moves.push(FdbMove {
                                mac: hdr.src,
                                from,
                                to: at.port,
                            }),
                            Learned::Full => port.counters.totals.fdb_learn_refused.inc(),
                            _ => {}
                        }
                        last = Some((hdr.src, hdr.dst, vlan, remote, v));
                        v
                    }
                };
            }
        }
        for m in &self.moves {
            m.announce(&self.events, |p| views.name(p.index()));
        }

        // 3. Fan-out, the wire's rate for frames to the uplink, the destinations' egress
        // policy and steering.
        let mut forwarded = 0u64;
        let ports = views.slots.len();
        let mut dests = std::mem::take(&mut self.dests);
        let uplink = views.uplink().cloned();
        let mut wire: Option<WireGate<'_>> = None;
        let mut held = None;
        for k in 0..cut {
            if self.decided[k].hdr.is_none() {
                continue;
            }
            let verdict = self.verdicts[k];
            dests.clear();
            let went = fan_out(
                verdict,
                port.spec.id,
                ports,
                |p| views.attached(p.index()),
                |p, r| dests.push((p, r)),
            );
            if let Some(up) = uplink.as_deref() {
                if dests.iter().any(|(d, _)| *d == UPLINK_PORT_ID) {
                    let gate =
                        wire.get_or_insert_with(|| WireGate::open(up, port, &policy, now_ns));
                    if let Err(retry) = gate.admit(frame_bits(self.frames[k].len), now_ns) {
                        held = Some(k);
                        self.throttle = retry;
                        break;
                    }
                }
            }
            for &(d, r) in &dests {
                self.queue_delivery(views, k, d.index(), r);
            }
            if went {
                forwarded += 1;
            } else if verdict == Verdict::SamePort {
                c.drop_same_port.inc();
            } else {
                c.drop_no_destination.inc();
            }
        }
        drop(wire);
        self.dests = dests;
        if let Some(k) = held {
            if policy.max_tx_rate != 0 {
                // The frames held back were charged to the port's own rate in pass 1: they
                // will be again when they go.
                let bits = self.decided[k..cut].iter().map(|d| d.charged).sum();
                port.tx_rate().refund(bits);
            }
            cut = k;
        }

        // What was sent: its drops, its flows, its counters.
        let mut bytes = 0u64;
        for d in &self.decided[..cut] {
            bytes += d.len as u64;
            match d.drop {
                Some(Dropped::Malformed) => c.drop_malformed.inc(),
                Some(Dropped::Policy(p)) => policy_drop_counter(c, p).0.inc(),
                Some(Dropped::Fault) => c.fault_drop.inc(),
                Some(Dropped::Delayed) | None => {}
            }
        }
        if let Some(ff) = &faults {
            self.hold_copies(ff, port, cut, now_ns);
        }
        self.learn_flows(port, qp, cut);
        self.steer_pending(views);
        if origin == Origin::DelayLine {
            c.fault_injected.add(cut as u64);
        } else {
            c.tx_packets.add(cut as u64);
            c.tx_bytes.add(bytes);
            if let Some(qc) = port.counters.queue(qp) {
                qc.tx_packets.add(cut as u64);
                qc.tx_bytes.add(bytes);
            }
        }
        if forwarded > 0 {
            c.tx_forwarded.add(forwarded);
        }
        cut
    }

    /// Remembers that a held-back queue is to be tried again at `at` (ns, `now_ns` clock).
    fn retry_at(&mut self, at: u64) {
        self.next_retry = Some(self.next_retry.map_or(at, |r| r.min(at)));
    }

    /// When the worker should look again at a held-back queue, forgotten once asked.
    pub fn take_retry(&mut self) -> Option<u64> {
        self.next_retry.take()
    }

    /// Applies port `dst`'s egress policy (link, port VLAN) and steering to frame `k` and
    /// queues the delivery; drops are counted on `dst`.
    fn queue_delivery(&mut self, views: &mut Views, k: usize, dst: usize, remote: Remote) {
        let Some(view) = views.get_mut(dst) else {
            return;
        };
        if view.role == PortRole::Uplink {
            // The wire: no RSS; its "queue" is the remote behind it (or all of them).
            let c = &view.port.counters.totals;
            if let Err(drop) = policy::egress(&view.policy, self.frames[k].head()) {
                let (counter, name) = policy_drop_counter(c, drop);
                counter.inc();
                self.tap.egress_drop(k, dst, name);
                return;
            }
            self.deliveries.list.push(Delivery {
                frame: k as u16,
                dst: dst as u16,
                queue: remote,
                strip: false,
                by: Steering::Rss,
                fell_back: false,
            });
            return;
        }
        if view.enabled.is_empty() {
            // Views are refreshed once per pass (every POLL_SYNC_ROUNDS when polling): look
            // again before dropping, the guest may have just enabled its first queue.
            view.refresh_enabled();
        }
        let c = &view.port.counters.totals;
        let (f, d) = (&self.frames[k], &mut self.decided[k]);
        let strip = match policy::egress(&view.policy, f.head()) {
            Err(drop) => {
                let (counter, name) = policy_drop_counter(c, drop);
                counter.inc();
                self.tap.egress_drop(k, dst, name);
                return;
            }
            Ok(Egress::Pass) => false,
            Ok(Egress::StripTag) => true,
        };
        if view.enabled.is_empty() {
            c.drop_no_rx_buffer.inc();
            self.tap.egress_drop(k, dst, "drop_no_rx_buffer");
            return;
        }
        let (queue, by, fell_back) = match &view.rss_fast {
            // One queue and no rules or table: every IP frame goes there, no need for its tuple.
            Some(snap) if snap.is_plain() && view.enabled.len() == 1 && d.is_ip(f) => {
                (u16::from(view.enabled.as_slice()[0]), Steering::Rss, false)
            }
            Some(snap) => snap.steer(d.tuple(f), &view.enabled),
            // Decided after the batch's switching, one lock per destination (`steer_pending`).
            None => (STEER_PENDING, Steering::Rss, false),
        };
        self.deliveries.list.push(Delivery {
            frame: k as u16,
            dst: dst as u16,
            queue,
            strip,
            by,
            fell_back,
        });
    }

    /// Flow learning (the sender's RSS state needs its lock): the flows of the batch's frames
    /// that passed the edge policy, under one lock.
    fn learn_flows(&mut self, port: &Port, qp: usize, n: usize) {
        if !self.decided[..n].iter().any(|d| d.learn) {
            return;
        }
        let c = &port.counters.totals;
        let mut rss = port.rss_data_path();
        for (f, d) in self.frames[..n].iter().zip(&mut self.decided[..n]) {
            if !d.learn || !d.tuple(f).is_ip() {
                continue;
            }
            match rss.learn_tx(d.tuple(f), qp as u16) {
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
    fn steer_pending(&mut self, views: &Views) {
        if !self
            .deliveries
            .list
            .iter()
            .any(|d| d.queue == STEER_PENDING)
        {
            return;
        }
        let Pipeline {
            by_port: groups,
            deliveries,
            frames,
            decided,
            ..
        } = self;
        let deliveries = &mut deliveries.list;
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
            let Some(view) = views.get(usize::from(g.port)) else {
                continue;
            };
            let mut rss = view.port.rss_data_path();
            for i in groups.members(g) {
                let d = &mut deliveries[i];
                let k = usize::from(d.frame);
                let decision = rss.decide(decided[k].tuple(&frames[k]), &view.enabled);
                d.queue = decision.queue;
                d.by = decision.by;
                d.fell_back = decision.fell_back;
            }
        }
        groups.clear();
    }
}

impl Pipeline {
    /// The batch's captures (some capture runs): each sent frame's decision, its inbound
    /// record on the sender's interface, and the frames dropped at the sender's edge, for want
    /// of a destination, and at the destinations' edges, on `drops`. The outbound records are
    /// made as the frames are written (`Deliveries::write`).
    fn capture_batch(&mut self, views: &Views, port: &Port, qp: usize, cut: usize) {
        let Pipeline {
            tap,
            frames,
            decided,
            deliveries,
            verdicts,
            ..
        } = self;
        let id = port.spec.id.0;
        let totals = &port.counters.totals;
        // The edge policy the batch was switched with (the sender's view), not a new read.
        let Some(policy) = views.get(port.spec.id.index()).map(|v| v.policy) else {
            return;
        };
        for k in 0..cut {
            let dropped_at_egress = tap.egress_drops().any(|(f, _, _)| f == k);
            let Some(d) = tap.decision_mut(k) else {
                break;
            };
            *d = Decision {
                ingress: id,
                ingress_queue: qp as u16,
                ..Decision::default()
            };
            let dec = &decided[k];
            let has_hdr = dec.hdr.is_some();
            d.drop = match dec.drop {
                Some(Dropped::Malformed) => Some("drop_malformed"),
                Some(Dropped::Policy(p)) => Some(policy_drop_counter(totals, p).1),
                Some(Dropped::Fault) => Some("fault_drop"),
                Some(Dropped::Delayed) => Some("fault_delay"),
                None => None,
            };
            if !has_hdr {
                continue;
            }
            if policy.is_vf && policy.vlan != 0 {
                d.vlan = VlanAction::Insert {
                    vid: policy.vlan,
                    tpid: policy.tpid,
                };
            }
            let (mut n, mut by) = (0, None);
            for del in deliveries.list.iter().filter(|x| usize::from(x.frame) == k) {
                d.push_egress(del.dst, del.queue);
                n += 1;
                by = Some(del.by);
                if del.strip {
                    let vid = views.get(usize::from(del.dst)).map_or(0, |v| v.policy.vlan);
                    d.vlan = VlanAction::Strip { vid };
                }
            }
            if n == 1 {
                d.steering = by;
                // The hash the destination's RSS computed (or would have: one queue and a
                // plain table skip it), with its own key.
                if by == Some(Steering::Rss) {
                    let dst = usize::from(d.egress()[0].0);
                    let tuple = decided[k].tuple(&frames[k]);
                    d.rss_hash = views
                        .get(dst)
                        .filter(|v| v.role != PortRole::Uplink)
                        .and_then(|v| match &v.rss_fast {
                            Some(snap) => snap.hash(tuple),
                            None => v.port.rss_data_path().hash(tuple),
                        });
                }
            }
            if n == 0 && !dropped_at_egress {
                d.drop = Some(match verdicts[k] {
                    Verdict::SamePort => "drop_same_port",
                    _ => "drop_no_destination",
                });
            }
        }
        for (k, f) in frames[..cut].iter().enumerate() {
            let view = frame_view(f);
            tap.record(k, Some(id), Direction::Inbound, &view, None);
            let drop = tap.decision_mut(k).and_then(|d| d.drop);
            if drop.is_some() {
                tap.record(k, None, Direction::Inbound, &view, drop);
            }
        }
        for (k, _, reason) in tap.egress_drops() {
            if let Some(f) = frames.get(k) {
                tap.record(k, None, Direction::Outbound, &frame_view(f), Some(reason));
            }
        }
    }
}

/// A popped frame as the capture copies it (nothing of a malformed one, whose head was never
/// taken).
fn frame_view(f: &TxFrame) -> FrameView<'_> {
    if f.ok {
        // SAFETY: the frame belongs to the batch being switched, not yet completed: its
        // segments stay readable (`TxFrame::view`'s contract).
        unsafe { f.view() }
    } else {
        // SAFETY: a zero-length view reads no segment.
        unsafe { FrameView::new(&[], 0, 0, &f.segs) }
    }
}

/// Where the frames of a batch come from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The port's TX queue: the guest sent them (counted in `tx_packets`, faults apply).
    Queue,
    /// The port's delay line: delayed frames and duplicates of injected faults (counted in
    /// `fault_injected`, no fault applies again).
    DelayLine,
}

/// What a port's injected faults let `process_tx` do with one of its TX queues.
enum FaultGate {
    /// Nothing in the way: pop the queue.
    Open,
    /// The queue is stalled: leave it (its frames wait in the guest's ring).
    Stalled,
    /// This many frames of the port's delay line were sent; go on.
    Sent(usize),
}

impl Pipeline {
    /// Injected faults before TX queue pair `qp` of the port in slot `src` is popped: a stall
    /// holds the queue back; delayed frames and duplicates now due are sent from the port.
    fn fault_gate(
        &mut self,
        views: &mut Views,
        src: usize,
        port: &Arc<Port>,
        pending: &TxPending,
        qp: usize,
    ) -> FaultGate {
        let now = super::now_ns();
        if let Some(until) = port.faults.tx_stalled(qp, now) {
            if port.faults.first_tx_hold(qp) {
                port.counters.totals.fault_stall_tx.inc();
            }
            pending.mark(qp);
            self.retry_at(until);
            return FaultGate::Stalled;
        }
        let Some(ff) = port.faults.frames() else {
            // Whatever was set has run out (a stall): back to one load per batch.
            port.faults.refresh_on();
            return FaultGate::Open;
        };
        let mut held = std::mem::take(&mut self.held);
        held.clear();
        ff.take_due(now, self.frames.len(), &mut held);
        if held.is_empty() {
            match ff.next_due() {
                Some(due) => {
                    pending.mark(qp);
                    self.retry_at(due);
                }
                None if !ff.is_active() => port.faults.refresh_on(),
                None => {}
            }
            self.held = held;
            return FaultGate::Open;
        }
        let n = held.len();
        for (f, h) in self.frames.iter_mut().zip(&held) {
            f.segs.reset(0);
            f.returnable = false;
            f.from = 0;
            // SAFETY: `h.frame` is a heap buffer in `self.held` (moved there below, not
            // touched again) until the batch is delivered and the buffers are recycled.
            f.ok = unsafe { f.segs.push_host(h.frame.as_ptr() as usize, h.frame.len()) }
                .is_ok()
                // SAFETY: the segment just pushed is readable (above).
                && unsafe { f.take_head(0, h.frame.len()) };
        }
        self.held = held;
        let sent = self.forward(views, src, port, qp, n, Origin::DelayLine);
        let mut held = std::mem::take(&mut self.held);
        ff.put_back(held.drain(sent.min(n)..));
        for h in held.drain(..) {
            ff.recycle(h.frame);
        }
        self.held = held;
        // More may be due (the line, or a rate's hold): look again soon.
        pending.mark(qp);
        if sent < n {
            self.retry_at(self.throttle.max(now));
        } else if let Some(due) = ff.next_due() {
            self.retry_at(due);
        }
        FaultGate::Sent(sent)
    }

    /// Puts copies of the sent frames an injected delay or duplicate picked into the port's
    /// delay line, and asks to be back when the first is due.
    fn hold_copies(&mut self, ff: &FrameFaults, port: &Port, cut: usize, now_ns: u64) {
        let c = &port.counters.totals;
        for k in 0..cut {
            let Some(ns) = self.decided[k].hold_ns else {
                continue;
            };
            let f = &self.frames[k];
            // SAFETY: `f` was popped in the batch being switched, not completed yet (its
            // port keeps its memory until then).
            let view = unsafe { f.view() };
            let held = ff.hold(now_ns + ns, f.len, |buf| view.copy_to(buf).is_some());
            match (held, ns) {
                (true, 0) => c.fault_duplicate.inc(),
                (true, _) => c.fault_delay.inc(),
                // The line is full: a delayed frame is lost (counted so), a duplicate not
                // made.
                (false, 0) => {}
                (false, _) => c.fault_drop.inc(),
            }
            if held {
                self.retry_at(now_ns + ns);
                self.fault_held = true;
            }
        }
    }
}

/// The drop counter a policy drop is counted in, and its name (as captures give the reason).
fn policy_drop_counter(c: &PortTotals, d: PolicyDrop) -> (&Counter, &'static str) {
    match d {
        PolicyDrop::LinkDown => (&c.drop_link_down, "drop_link_down"),
        PolicyDrop::SpoofChk => (&c.drop_spoofchk, "drop_spoofchk"),
        PolicyDrop::VlanFilter => (&c.drop_vlan_filter, "drop_vlan_filter"),
    }
}
