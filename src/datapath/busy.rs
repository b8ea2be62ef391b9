//! Where the data-plane workers' time goes: cycles of the CPU's time-stamp counter spent in
//! rounds that moved frames (busy) and everywhere else (idle: empty rounds, busy-poll spins and
//! yields, looks at the port table), as OVS's `pmd-stats-show` and testpmd's
//! `--record-core-cycles` count theirs. Busy cycles per frame forwarded do not depend on how
//! fast the guests send (a busy-polling worker is on its CPU all the time whatever the load),
//! so they compare builds and switches where throughput swings (`query-workers`, bench-peers).
//!
//! A worker reads the clock once per round: the cycles since its last reading (the round, and
//! the short spin or look at the port table before it) are busy if the round moved frames,
//! idle if not; a yield of the CPU is read apart and counted idle, and in event mode the sleep
//! until a kick is not counted. Each worker owns its counters (one cache-line-aligned block, written only by it with
//! relaxed loads and stores: no atomic read-modify-write, no line shared between workers); the
//! control plane reads them. The clock is `rdtsc` on x86_64 and the monotonic clock in ns
//! elsewhere; `Cycles::hz` gives its rate, measured against CLOCK_MONOTONIC since start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The cycle counter: the TSC on x86_64, else ns of a monotonic clock.
#[inline]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no preconditions (every x86_64 CPU has it); it only reads a counter.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        super::now_ns()
    }
}

/// What `now` counts.
pub const CLOCK: &str = if cfg!(target_arch = "x86_64") {
    "tsc"
} else {
    "monotonic-ns"
};

/// One worker's counters (its own cache lines).
#[repr(align(128))]
#[derive(Default)]
pub struct WorkerCycles {
    busy_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    busy_rounds: AtomicU64,
    idle_rounds: AtomicU64,
    /// The worker thread's Linux thread id (0 until it runs).
    tid: AtomicU64,
}

/// A snapshot of one worker's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerSnapshot {
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub busy_rounds: u64,
    pub idle_rounds: u64,
    pub tid: u64,
}

/// The counters of every worker, and the clock's reference point for its rate.
pub struct Cycles {
    workers: Box<[Arc<WorkerCycles>]>,
    start: (u64, Instant),
}

impl Cycles {
    pub fn new(workers: usize) -> Arc<Cycles> {
        Arc::new(Cycles {
            workers: (0..workers).map(|_| Arc::default()).collect(),
            start: (now(), Instant::now()),
        })
    }

    /// Every worker's counters, in worker order.
    pub fn snapshot(&self) -> Vec<WorkerSnapshot> {
        self.workers
            .iter()
            .map(|w| WorkerSnapshot {
                busy_cycles: w.busy_cycles.load(Ordering::Relaxed),
                idle_cycles: w.idle_cycles.load(Ordering::Relaxed),
                busy_rounds: w.busy_rounds.load(Ordering::Relaxed),
                idle_rounds: w.idle_rounds.load(Ordering::Relaxed),
                tid: w.tid.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The clock's rate in Hz: its count since start over CLOCK_MONOTONIC's (both read now;
    /// within a few ppm after a second). Sleeps until 20 ms have passed since start.
    pub fn hz(&self) -> u64 {
        let (c0, t0) = self.start;
        let min = std::time::Duration::from_millis(20);
        if let Some(left) = min.checked_sub(t0.elapsed()) {
            std::thread::sleep(left);
        }
        let (c1, dt) = (now(), t0.elapsed());
        let ns = dt.as_nanos().max(1);
        u64::try_from(u128::from(c1.wrapping_sub(c0)) * 1_000_000_000 / ns).unwrap_or(u64::MAX)
    }

    /// The meter worker `w` adds to (past the workers counted: one nobody reads).
    pub fn meter(&self, w: usize) -> Meter {
        Meter {
            slot: self.workers.get(w).cloned().unwrap_or_default(),
            last: now(),
        }
    }
}

/// A worker's side: `round` after each round, one clock reading each.
pub struct Meter {
    slot: Arc<WorkerCycles>,
    /// The clock at the last reading (the end of the last round counted).
    last: u64,
}

/// Adds `d` to a counter only this worker writes (a plain load and store, no locked add).
#[inline]
fn add(c: &AtomicU64, d: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(d), Ordering::Relaxed);
}

impl Meter {
    /// Records the calling thread's id (the worker's, for per-thread CPU times and profiles).
    pub fn set_thread(&self) {
        // SAFETY: gettid has no arguments and cannot fail.
        let tid = unsafe { libc::gettid() };
        self.slot
            .tid
            .store(u64::try_from(tid).unwrap_or(0), Ordering::Relaxed);
    }

    /// Not counting what passed since the last reading (event mode: the sleep until a kick).
    #[inline]
    pub fn resume(&mut self) {
        self.last = now();
    }

    /// Counting what passed since the last reading as idle without a round (a yield of the
    /// CPU, kept out of the next round, which may be a busy one).
    pub fn idle(&mut self) {
        let end = now();
        add(&self.slot.idle_cycles, end.wrapping_sub(self.last));
        self.last = end;
    }

    /// A round ends: what passed since the last reading (the round, and the short spin or
    /// look at the port table before it) is busy if it `worked`, idle if not.
    #[inline]
    pub fn round(&mut self, worked: bool) {
        let end = now();
        let d = end.wrapping_sub(self.last);
        self.last = end;
        let w = &*self.slot;
        if worked {
            add(&w.busy_cycles, d);
            add(&w.busy_rounds, 1);
        } else {
            add(&w.idle_cycles, d);
            add(&w.idle_rounds, 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_are_counted_busy_or_idle_and_the_rate_is_sane() {
        let c = Cycles::new(2);
        let mut m = c.meter(1);
        let mut other = c.meter(2);
        other.round(true);
        m.set_thread();
        m.resume();
        std::thread::sleep(std::time::Duration::from_millis(2));
        m.round(true);
        m.round(false);
        std::thread::sleep(std::time::Duration::from_millis(2));
        m.idle();
        let s = c.snapshot();
        assert_eq!(s[0], WorkerSnapshot::default());
        assert_eq!((s[1].busy_rounds, s[1].idle_rounds), (1, 1));
        assert!(s[1].tid > 0);
        let hz = c.hz();
        // 2 ms at anything from 100 MHz (1 GHz for ns) up.
        assert!(s[1].busy_cycles >= hz / 1000, "{s:?} at {hz} Hz");
        assert!(s[1].idle_cycles >= hz / 1000, "{s:?} at {hz} Hz");
        assert!((100_000_000..20_000_000_000).contains(&hz), "{hz} Hz");
    }
}
