//! How ports tell the pipeline they have work: the TX queue pairs marked pending (kicked, or
//! left with frames), and one eventfd per data-plane worker.

use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The TX queue pairs of one port with frames to take: bit q for queue pair q (mod 64). Set by
/// whoever notices work (a guest's kick, a readable socket, a worker that stopped at its budget),
/// taken by the worker that owns the queue.
#[derive(Debug, Default)]
pub struct TxPending(AtomicU64);

impl TxPending {
    /// Marks queue pair `qp`. Returns true if it was not pending before.
    #[inline]
    pub fn mark(&self, qp: usize) -> bool {
        let bit = 1u64 << (qp % 64);
        self.0.fetch_or(bit, Ordering::AcqRel) & bit == 0
    }

    /// Marks every queue pair of `mask`.
    pub fn mark_mask(&self, mask: u64) {
        self.0.fetch_or(mask, Ordering::AcqRel);
    }

    /// Takes the pending queue pairs among `mask` (the ones a worker owns).
    #[inline]
    pub fn take(&self, mask: u64) -> u64 {
        self.0.fetch_and(!mask, Ordering::AcqRel) & mask
    }
}

/// A file descriptor a sleeping worker also waits on (a TAP queue, a UDP socket): readable
/// means TX queue pair `qp` of the port whose `pending` it is has frames.
#[derive(Debug, Clone)]
pub struct WaitFd {
    pub fd: RawFd,
    pub pending: Arc<TxPending>,
    pub qp: usize,
}

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

    /// Sleeps until woken, one of `fds` is readable (its queue is then marked pending) or
    /// `timeout` passes, and resets the eventfd. `scratch` is the poll set, reused.
    pub fn wait(
        &self,
        w: usize,
        timeout: Duration,
        fds: &[WaitFd],
        scratch: &mut Vec<libc::pollfd>,
    ) {
        let efd = &self.efds[w];
        scratch.clear();
        scratch.push(libc::pollfd {
            fd: efd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        scratch.extend(fds.iter().map(|f| libc::pollfd {
            fd: f.fd,
            events: libc::POLLIN,
            revents: 0,
        }));
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let n = libc::nfds_t::try_from(scratch.len()).unwrap_or(1);
        // SAFETY: `scratch` holds `n` valid pollfds for the duration of the call.
        let ready = unsafe { libc::poll(scratch.as_mut_ptr(), n, ms) };
        if ready > 0 {
            for (p, f) in scratch[1..].iter().zip(fds) {
                if p.revents != 0 {
                    f.pending.mark(f.qp);
                }
            }
        }
        let _ = efd.read();
    }
}
