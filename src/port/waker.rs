//! How ports tell the pipeline they have work: one eventfd per data-plane worker.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

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
    pub fn wait(&self, w: usize, timeout: Duration) {
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
