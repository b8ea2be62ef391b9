//! The kick thread: one epoll over the vring epoll handlers of every connection.
//!
//! Each connection's `VringEpollHandler`s (made without threads, `VhostUserDaemon::new_external`)
//! hold the ring kick fds the frontend gave; a handler's own epoll fd is readable while a kick
//! is pending. This thread waits on all of them and lets the ready handler read its kicks
//! (`process_ready`), which ends in `NetBackend::handle_event`: mark TX pending, wake the
//! worker. It never blocks on a frontend, so kicks stay prompt while the control loop is busy
//! (a GET_VRING_BASE waiting for a TX batch, a stalled frontend's read timing out).

use super::backend::NetBackend;
use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use vhost_user_backend::VringEpollHandler;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The vring epoll handler of one connection (one per 64 rings).
pub type KickHandler = Arc<VringEpollHandler<NetBackend>>;

/// The token of the stop eventfd; handlers get tokens from 1.
const STOP_TOKEN: u64 = 0;

struct Shared {
    epoll: Epoll,
    /// The watched handlers by token, with their port's name for the log.
    handlers: Mutex<HashMap<u64, (Arc<str>, KickHandler)>>,
    next_token: AtomicU64,
    stop: AtomicBool,
    stop_event: EventFd,
}

/// The running kick thread.
pub struct Kicks {
    shared: Arc<Shared>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Kicks {
    /// Starts the thread.
    pub fn start() -> io::Result<Kicks> {
        let epoll = Epoll::new()?;
        let stop_event = EventFd::new(EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            stop_event.as_raw_fd(),
            EpollEvent::new(EventSet::IN, STOP_TOKEN),
        )?;
        let shared = Arc::new(Shared {
            epoll,
            handlers: Mutex::new(HashMap::new()),
            next_token: AtomicU64::new(STOP_TOKEN + 1),
            stop: AtomicBool::new(false),
            stop_event,
        });
        let run = shared.clone();
        let thread = std::thread::Builder::new()
            .name("vhu-kicks".into())
            .spawn(move || run.run())?;
        Ok(Kicks {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Watches `handler` (of port `port`) until `unregister`; returns its token.
    pub fn register(&self, port: &str, handler: KickHandler) -> io::Result<u64> {
        let token = self.shared.next_token.fetch_add(1, Ordering::Relaxed);
        let fd = handler.as_raw_fd();
        self.lock().insert(token, (Arc::from(port), handler));
        let added = self.shared.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, token),
        );
        if let Err(e) = added {
            self.lock().remove(&token);
            return Err(e);
        }
        Ok(token)
    }

    /// Stops watching the handler of `token` (a no-op if the thread already dropped it).
    pub fn unregister(&self, token: u64) {
        if let Some((_, h)) = self.lock().remove(&token) {
            let _ = self.shared.epoll.ctl(
                ControlOperation::Delete,
                h.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token),
            );
        }
    }

    /// Ends the thread (after every connection is gone).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.stop_event.write(1);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (Arc<str>, KickHandler)>> {
        self.shared
            .handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Kicks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Pins the calling thread to the CPU it runs on. The kick thread is woken by every
/// frontend's kicks in turn: left free, the scheduler moved it to each waker's CPU, one
/// migration per kick, and a one-frame round trip in event mode took a third longer than with
/// a thread per connection (`benches/latency.rs`, p50 63 -> 85 us; pinned: 63 us). Kicks are
/// a read and a wake-up each, so one CPU is plenty.
fn stay_on_this_cpu() {
    let Some(cpu) = crate::affinity::current_cpu() else {
        return;
    };
    if let Err(e) = crate::affinity::pin_current_thread(cpu) {
        tracing::debug!("kick thread: cannot pin to CPU {cpu}, it may move between CPUs: {e}");
    }
}

impl Shared {
    fn run(&self) {
        stay_on_this_cpu();
        let mut events = [EpollEvent::new(EventSet::empty(), 0); 64];
        while !self.stop.load(Ordering::Acquire) {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(
                        "kick thread: epoll_wait failed, kicks are no longer seen: {e}"
                    );
                    return;
                }
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == STOP_TOKEN {
                    continue;
                }
                let found = self
                    .handlers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&token)
                    .cloned();
                let Some((port, handler)) = found else {
                    continue;
                };
                // As when upstream's vring thread ends on an error (or a panic): the rings of
                // this handler are no longer kicked (the frontend gave a broken kick fd).
                match catch_unwind(AssertUnwindSafe(|| handler.process_ready())) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(port = %port, "vring kicks no longer handled: {e}");
                        self.drop_handler(token, &handler);
                    }
                    Err(_) => {
                        tracing::error!(port = %port, "vring kicks no longer handled: panicked");
                        self.drop_handler(token, &handler);
                    }
                }
            }
        }
    }

    fn drop_handler(&self, token: u64, handler: &KickHandler) {
        self.handlers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&token);
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            handler.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token),
        );
    }
}
