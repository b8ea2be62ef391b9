//! The data-plane worker threads: sleeping on kicks (or busy-polling), following the ports,
//! taking the TX queues they own in turn, and the FDB's aging (worker 0).
//!
//! Queue pair q of port p belongs to worker (p + q) mod N (`Waker::owner`): only that worker
//! pops that TX queue; any worker may deliver into any RX queue (under that ring's lock).

use super::busy::{Cycles, Meter};
use super::pipeline::Pipeline;
use super::views::Views;
use crate::capture::CaptureHub;
use crate::events::EventBus;
use crate::port::Waker;
use crate::switch::Switch;
use crate::uplink::Uplink;
use crate::vf::PortTable;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a worker sleeps without a kick (worker 0 then ages the FDB).
const IDLE_WAIT: Duration = Duration::from_millis(500);
/// Busy-poll rounds between looks at control-side changes (a few microseconds).
const POLL_SYNC_ROUNDS: u64 = 256;
/// Empty busy-poll rounds in a row after which the worker yields its CPU (`sched_yield`): a
/// few microseconds of nothing to do. Alone on its CPU the call returns at once (one syscall
/// per this many idle rounds); beside another busy thread on the same CPU (two emulators'
/// pollers, a test's load) it hands the CPU over instead of spinning out its time slice while
/// the frames it waits for sit with the other thread.
const POLL_YIELD_ROUNDS: u32 = 64;

/// One data-plane worker.
pub struct DataPlane {
    /// This worker's index; worker 0 also ages the FDB.
    worker: usize,
    /// Busy-poll instead of sleeping on kicks.
    poll: bool,
    /// Pin the thread to this CPU.
    cpu: Option<usize>,
    table: Arc<PortTable>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    switch: Arc<Mutex<Switch>>,
    events: Arc<EventBus>,
    uplink: Option<Arc<Uplink>>,
    captures: Arc<CaptureHub>,
    /// Where the worker counts its busy and idle cycles (`busy`).
    cycles: Arc<Cycles>,
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
            waker,
            stop,
            switch,
            events,
            uplink: None,
            captures: Arc::default(),
            cycles: Cycles::new(0),
        }
    }

    /// Counts busy and idle cycles into `cycles` (slot `worker`; none by default).
    pub fn with_cycles(mut self, cycles: Arc<Cycles>) -> Self {
        self.cycles = cycles;
        self
    }

    /// Feeds the running captures of `captures` (none by default).
    pub fn with_captures(mut self, captures: Arc<CaptureHub>) -> Self {
        self.captures = captures;
        self
    }

    /// Serves the uplink too (its port is in the table).
    pub fn with_uplink(mut self, uplink: Option<Arc<Uplink>>) -> Self {
        self.uplink = uplink;
        self
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
            .spawn(move || Worker::new(self).run())
    }
}

/// A running worker's state.
struct Worker {
    cfg: DataPlane,
    views: Views,
    pipeline: Pipeline,
    last_age: u64,
    /// The random state that picks where a round starts.
    round: u64,
    meter: Meter,
}

impl Worker {
    fn new(cfg: DataPlane) -> Self {
        Worker {
            views: Views::new(
                cfg.table.clone(),
                cfg.worker,
                cfg.waker.clone(),
                cfg.poll,
                cfg.uplink.clone(),
            ),
            pipeline: Pipeline::new(cfg.switch.clone(), cfg.events.clone(), cfg.captures.clone()),
            last_age: 0,
            round: 0x9e37_79b9_7f4a_7c15 ^ cfg.worker as u64,
            meter: cfg.cycles.meter(cfg.worker),
            cfg,
        }
    }

    fn run(mut self) {
        let _span = tracing::info_span!("dataplane", worker = self.cfg.worker).entered();
        self.meter.set_thread();
        if let Some(cpu) = self.cfg.cpu {
            pin_to_cpu(self.cfg.worker, cpu);
        }
        if self.cfg.poll {
            return self.run_polling();
        }
        let mut poll_set = Vec::new();
        while !self.cfg.stop.load(Ordering::Acquire) {
            // A queue held back by a rate is looked at again when its tokens are there.
            let wait = match self.pipeline.take_retry() {
                Some(at) => Duration::from_nanos(at.saturating_sub(super::now_ns()))
                    .max(Duration::from_millis(1))
                    .min(IDLE_WAIT),
                None => IDLE_WAIT,
            };
            self.cfg
                .waker
                .wait(self.cfg.worker, wait, &self.views.wait_fds, &mut poll_set);
            self.views.sync_table();
            self.views.refresh();
            self.age_fdb();
            self.meter.resume();
            while self.metered_round(false) {}
        }
    }

    /// Busy-poll mode: never sleeps, takes its attached ports' TX queues in turn and leaves the
    /// guests' TX notifications off (no kicks, no wake-ups, no eventfd syscalls); after
    /// `POLL_YIELD_ROUNDS` empty rounds it yields the CPU to whoever else is waiting for it.
    fn run_polling(mut self) {
        let mut iteration: u64 = 0;
        let mut idle: u32 = 0;
        while !self.cfg.stop.load(Ordering::Relaxed) {
            iteration += 1;
            if iteration.is_multiple_of(POLL_SYNC_ROUNDS) {
                self.views.sync_table();
                self.views.refresh();
                if iteration.is_multiple_of(POLL_SYNC_ROUNDS * 1024) {
                    self.age_fdb();
                }
            }
            if self.metered_round(true) {
                idle = 0;
            } else {
                idle += 1;
                if idle >= POLL_YIELD_ROUNDS {
                    idle = 0;
                    std::thread::yield_now();
                    self.meter.idle();
                } else {
                    std::hint::spin_loop();
                }
            }
        }
    }

    /// `tx_round`, its cycles counted busy or idle (one clock reading).
    #[inline]
    fn metered_round(&mut self, polling: bool) -> bool {
        let worked = self.tx_round(polling);
        self.meter.round(worked);
        worked
    }

    /// One pass over the TX queues this worker owns: every one when polling (kicks are off
    /// and pending bits are not looked at), else the kicked ones. True if any had frames.
    /// Each pass starts at a port picked at random and goes one way or the other at random,
    /// so that of any two ports held back by a shared rate (the wire's) each has the same
    /// chance to go first when it lets one through (a fixed rotation fell into step with the
    /// rate's wake-ups: 65:35 between two VFs beside the uplink's own queue).
    fn tx_round(&mut self, polling: bool) -> bool {
        let mut worked = false;
        let active = std::mem::take(&mut self.views.active);
        let (start, backwards) = if active.len() < 2 {
            (0, false)
        } else {
            // xorshift64: cheap, and no pattern a rate's timing can follow.
            let mut x = self.round;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.round = x;
            ((x % active.len() as u64) as usize, x & (1 << 40) != 0)
        };
        let len = active.len();
        let mut at = start;
        for _ in 0..len {
            let here = at;
            // The next port, wrapping without a division.
            at = if backwards {
                at.checked_sub(1).unwrap_or(len - 1)
            } else if at + 1 == len {
                0
            } else {
                at + 1
            };
            let (i, pending, own) = &active[here];
            let mut mask = if polling { *own } else { pending.take(*own) };
            while mask != 0 {
                let qp = mask.trailing_zeros() as usize;
                mask &= mask - 1;
                worked |= self.pipeline.process_tx(&mut self.views, *i, pending, qp);
            }
        }
        // A view refreshed during the round (a destination that just attached) leaves the
        // list stale: it is rebuilt by the next `refresh`; keep this round's until then.
        if self.views.active.is_empty() {
            self.views.active = active;
        }
        worked
    }

    /// Worker 0 ages the FDB once a second.
    fn age_fdb(&mut self) {
        if self.cfg.worker != 0 {
            return;
        }
        let now = self.pipeline.now_secs();
        if now > self.last_age {
            self.last_age = now;
            self.pipeline
                .switch()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .age(now);
        }
    }
}

/// Pins the calling thread to one CPU; a failure is logged, not fatal.
fn pin_to_cpu(worker: usize, cpu: usize) {
    match crate::affinity::pin_current_thread(cpu) {
        Ok(()) => tracing::info!(worker, cpu, "data-plane worker pinned"),
        Err(e) => tracing::warn!(worker, cpu, "cannot pin the data-plane worker: {e}"),
    }
}
