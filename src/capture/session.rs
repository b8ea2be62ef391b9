//! One running capture: the ports it takes, a pool of record slots and a bounded queue to its
//! writer thread, which turns records into pcapng off the data path.
//!
//! The data path takes a free slot (lock-free), fills it and queues it; it never waits and
//! never allocates. With no free slot (the writer is behind) the frame is not captured and
//! `dropped` counts it, so a slow disk or a stalled reader costs traffic nothing and memory
//! stays at the pool's size. The writer flushes whenever the queue runs dry, so a stream (a
//! pipe into tshark) shows frames as they pass; a stop drains the queue and flushes, so the
//! file ends at a block boundary.

use super::pcapng::{PcapngError, PcapngOut};
use super::record::Record;
use crossbeam_queue::ArrayQueue;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Record slots per capture (the most frames queued to the writer at once).
pub const DEFAULT_SLOTS: usize = 4096;
/// How long the writer sleeps when idle before looking again (a batch's `wake` cuts it).
const IDLE_WAIT: Duration = Duration::from_millis(50);

/// Words of a `PortSet`: room for every port id (`pf::PORT_SLOTS`, 319).
const PORT_WORDS: usize = 5;

/// Which ports a capture takes (by port id), and whether it takes drops.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortSet {
    bits: [u64; PORT_WORDS],
    pub drops: bool,
}

impl PortSet {
    /// Every port, and drops.
    pub fn all() -> Self {
        PortSet {
            bits: [u64::MAX; PORT_WORDS],
            drops: true,
        }
    }

    /// The ports given (ids below 320), and drops if `drops`.
    pub fn of(ports: impl IntoIterator<Item = u16>, drops: bool) -> Self {
        let mut bits = [0u64; PORT_WORDS];
        for p in ports {
            if let Some(w) = bits.get_mut(usize::from(p) / 64) {
                *w |= 1 << (p % 64);
            }
        }
        PortSet { bits, drops }
    }

    #[inline]
    pub fn has(&self, port: u16) -> bool {
        self.bits
            .get(usize::from(port) / 64)
            .is_some_and(|w| w & (1 << (port % 64)) != 0)
    }
}

/// What a capture counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames written (or queued to be).
    pub captured: u64,
    /// Frames not captured: no free slot (the writer was behind).
    pub dropped: u64,
}

struct Shared {
    free: ArrayQueue<Box<Record>>,
    full: ArrayQueue<Box<Record>>,
    captured: AtomicU64,
    dropped: AtomicU64,
    stop: AtomicBool,
    /// The writer is asleep (or about to be): the next `wake` unparks it.
    idle: AtomicBool,
    /// The first write error (the writer stops writing, the data path goes on).
    error: Mutex<Option<String>>,
}

/// A running capture.
pub struct CaptureSession {
    pub ports: PortSet,
    /// Where it writes, as asked (a file, the ring's name, a FIFO).
    pub path: PathBuf,
    shared: Arc<Shared>,
    /// The writer thread (to wake it) and its handle (to join it at the stop).
    thread: std::thread::Thread,
    writer: Mutex<Option<JoinHandle<PcapngOut>>>,
}

impl CaptureSession {
    /// Starts the writer thread on `out` (written at `path`) with `slots` record slots of
    /// `snaplen` bytes; `name` gives a port's name (interfaces and comments).
    pub fn start(
        out: PcapngOut,
        path: PathBuf,
        ports: PortSet,
        snaplen: usize,
        slots: usize,
        name: Box<dyn Fn(u16) -> String + Send>,
    ) -> std::io::Result<CaptureSession> {
        let slots = slots.max(1);
        let shared = Arc::new(Shared {
            free: ArrayQueue::new(slots),
            full: ArrayQueue::new(slots),
            captured: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            idle: AtomicBool::new(false),
            error: Mutex::new(None),
        });
        for _ in 0..slots {
            let _ = shared.free.push(Box::new(Record::slot(snaplen)));
        }
        let s = shared.clone();
        let writer = std::thread::Builder::new()
            .name("capture-writer".into())
            .spawn(move || write_loop(&s, out, name.as_ref()))?;
        Ok(CaptureSession {
            ports,
            path,
            shared,
            thread: writer.thread().clone(),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// A free slot to fill, or `None` (counted as dropped) when the writer is behind; `None`
    /// too once the capture stopped (a worker may hold it for a batch more).
    #[inline]
    pub fn slot(&self) -> Option<Box<Record>> {
        if self.shared.stop.load(Ordering::Relaxed) {
            return None;
        }
        let r = self.shared.free.pop();
        if r.is_none() {
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// Queues a filled slot for the writer (call `wake` once per batch).
    #[inline]
    pub fn submit(&self, r: Box<Record>) {
        // The queues hold every slot, so there is always room.
        if self.shared.full.push(r).is_ok() {
            self.shared.captured.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wakes the writer if it sleeps (once per batch, not per frame).
    #[inline]
    pub fn wake(&self) {
        if self.shared.idle.swap(false, Ordering::AcqRel) {
            self.thread.unpark();
        }
    }

    pub fn stats(&self) -> CaptureStats {
        CaptureStats {
            captured: self.shared.captured.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
        }
    }

    /// The writer's first error, if it had one (it then stops writing).
    pub fn error(&self) -> Option<String> {
        self.shared
            .error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the capture: the writer drains the queue, flushes and ends. Returns the output
    /// (for its file list; `None` if already stopped) and the counts.
    pub fn stop(&self) -> (Option<PcapngOut>, CaptureStats) {
        self.shared.stop.store(true, Ordering::Release);
        self.thread.unpark();
        let w = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        let out = w.and_then(|w| w.join().ok());
        (out, self.stats())
    }
}

impl Drop for CaptureSession {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn write_loop(s: &Shared, mut out: PcapngOut, name: &dyn Fn(u16) -> String) -> PcapngOut {
    let mut failed = false;
    loop {
        let mut wrote = false;
        while let Some(r) = s.full.pop() {
            if !failed {
                if let Err(e) = out.write(&r, name) {
                    fail(s, &e);
                    failed = true;
                }
            }
            let _ = s.free.push(r);
            wrote = true;
        }
        if wrote && !failed {
            if let Err(e) = out.flush() {
                fail(s, &PcapngError::Io(e));
                failed = true;
            }
        }
        if s.stop.load(Ordering::Acquire) {
            if s.full.is_empty() {
                let _ = out.flush();
                return out;
            }
            continue;
        }
        s.idle.store(true, Ordering::Release);
        if s.full.is_empty() {
            std::thread::park_timeout(IDLE_WAIT);
        }
        s.idle.store(false, Ordering::Release);
    }
}

/// The output failed (a full disk, a reader gone from a pipe): the capture takes no more
/// frames (`slot` sees `stop`), the writer drains and ends, the error stays for the control
/// plane to show.
fn fail(s: &Shared, e: &PcapngError) {
    s.stop.store(true, Ordering::Release);
    let msg = crate::ErrorChain(e).to_string();
    tracing::warn!("capture stopped writing: {msg}");
    let mut err = s.error.lock().unwrap_or_else(|e| e.into_inner());
    err.get_or_insert(msg);
}

#[cfg(test)]
mod tests {
    use super::super::record::Direction;
    use super::*;
    use std::io::Write;

    fn names(p: u16) -> String {
        format!("vf{p}")
    }

    fn capture(s: &CaptureSession, port: u16, len: usize, ts: u64) -> bool {
        let Some(mut r) = s.slot() else {
            return false;
        };
        r.ts_ns = ts;
        r.port = Some(port);
        r.dir = Direction::Inbound;
        r.set_frame(&vec![port as u8; len], len);
        s.submit(r);
        s.wake();
        true
    }

    #[test]
    fn port_sets() {
        let s = PortSet::of([0, 63, 64, 255, 318], false);
        assert!(s.has(0) && s.has(63) && s.has(64) && s.has(255) && s.has(318));
        assert!(!s.has(1) && !s.has(256) && !s.has(320) && !s.drops);
        assert!(PortSet::all().has(318));
    }

    #[test]
    fn every_frame_queued_is_in_the_file_after_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.pcapng");
        let out = PcapngOut::create(&path, 128, None).unwrap();
        let s = CaptureSession::start(out, path.clone(), PortSet::all(), 128, 64, Box::new(names))
            .unwrap();
        let mut sent = 0;
        for i in 0..10_000u64 {
            while !capture(&s, (i % 4) as u16, 100, i) {
                std::thread::yield_now();
            }
            sent += 1;
        }
        let (_, stats) = s.stop();
        assert_eq!(stats.captured, sent);
        let mut rd =
            pcap_file::pcapng::PcapNgReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        let mut n = 0;
        while let Some(b) = rd.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(e) = b.unwrap() {
                assert_eq!(e.timestamp.as_nanos(), n as u128, "in order");
                n += 1;
            }
        }
        assert_eq!(n, sent);
    }

    /// A writer stuck on its output (a reader that stopped reading) never blocks the data
    /// path: the slots run out and the rest is counted.
    #[test]
    fn a_stuck_writer_costs_the_data_path_nothing_and_counts_what_it_missed() {
        struct Stuck(Arc<AtomicBool>);
        impl Write for Stuck {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                while !self.0.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let release = Arc::new(AtomicBool::new(false));
        // The writer blocks on its first flush (or once its buffer is full).
        let out = PcapngOut::stream(Box::new(Stuck(release.clone())), 64).unwrap();
        let s = CaptureSession::start(out, "-".into(), PortSet::all(), 64, 32, Box::new(names))
            .unwrap();
        let t = std::time::Instant::now();
        let mut taken = 0;
        for i in 0..100_000u64 {
            if capture(&s, 0, 60, i) {
                taken += 1;
            }
        }
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(2),
            "the data path waited: {took:?}"
        );
        let st = s.stats();
        assert_eq!(st.captured, taken);
        assert_eq!(st.captured + st.dropped, 100_000);
        // The writer took what fit its buffer before it blocked, and the pool's slots: the
        // rest was dropped, not waited for.
        assert!(st.dropped >= 90_000, "{st:?}");
        release.store(true, Ordering::Release);
        let (_, st) = s.stop();
        assert_eq!(st.captured, taken);
    }
}
