//! The control loop: one thread serves the vhost-user control traffic of every port.
//!
//! One epoll watches every port's listening socket, every frontend's connection and an eventfd
//! for commands (a port added or removed, stop), as DPDK's vhost library does with its fdset
//! thread (`lib/vhost/fd_man.c`). Per port it keeps what the per-port accept thread did: one
//! frontend at a time (the listener leaves the epoll while a frontend is served, so the next
//! waits in the backlog), the link-disabled refusal (accept, close, pause), attach and detach
//! with the switch, the rings stopped before the next frontend is served, protocol errors
//! counted and logged at a limited rate.
//!
//! Nothing here may block on one frontend for long: a request is read only once all of it
//! has arrived (`pending.rs`); a frontend that stalls mid-message for `STALL_LIMIT` is a
//! protocol error; reads and writes on a connection time out after `STALL_LIMIT` (a body sent
//! apart from its header and never finished, a frontend that does not read its replies).
//! GET_VRING_BASE may wait for the data plane to finish a TX batch (`Connection::stop_tx`,
//! bounded by `TX_STOP_WAIT`): the other ports wait that long. Kicks do not go through this
//! thread (`kicks.rs`).

use super::kicks::Kicks;
use super::port_socket::{
    connect_nonblocking, stop_rings, Endpoint, PortServer, RateLimitedLog,
    PROTOCOL_ERROR_LOG_INTERVAL,
};
use super::session::{Burst, Ended, Session, SessionError};
use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use super::session::STALL_LIMIT;

/// The pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// The pause after refusing a frontend (link down): QEMU reconnects every second.
const REFUSE_PAUSE: Duration = Duration::from_millis(100);
/// The pause after the vhost-user daemon of a frontend could not be set up.
const SETUP_RETRY: Duration = Duration::from_secs(1);
/// Client mode: the pause after the frontend's socket refused (as QEMU's `reconnect-ms`).
const CONNECT_RETRY: Duration = Duration::from_secs(1);
/// Client mode: how often a port whose link is down looks whether it is up again.
const LINK_DOWN_RETRY: Duration = Duration::from_millis(250);

/// The epoll token of the command eventfd; ports' tokens are `key << 1 | kind`, keys from 1.
const COMMAND_TOKEN: u64 = 0;
const LISTENER: u64 = 0;
const CONNECTION: u64 = 1;

/// Why the control loop cannot serve a port.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("cannot set up the control loop")]
    Setup(#[source] io::Error),
    #[error("cannot start the control loop's thread")]
    Spawn(#[source] io::Error),
    #[error("the control loop has stopped")]
    Stopped,
    #[error("cannot watch the port's socket")]
    Watch(#[source] io::Error),
}

enum Command {
    Add {
        key: u64,
        server: Box<PortServer>,
        done: Sender<Result<(), LoopError>>,
    },
    Remove {
        key: u64,
        done: Sender<()>,
    },
    Stop,
}

/// The running control loop (and the kick thread it registers connections with).
pub struct ControlLoop {
    commands: Mutex<Sender<Command>>,
    wake: EventFd,
    next_key: AtomicU64,
    kicks: Arc<Kicks>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl ControlLoop {
    /// Starts the control thread and the kick thread.
    pub fn start() -> Result<Arc<ControlLoop>, LoopError> {
        let kicks = Arc::new(Kicks::start().map_err(LoopError::Spawn)?);
        let epoll = Epoll::new().map_err(LoopError::Setup)?;
        let wake = EventFd::new(EFD_NONBLOCK).map_err(LoopError::Setup)?;
        epoll
            .ctl(
                ControlOperation::Add,
                wake.as_raw_fd(),
                EpollEvent::new(EventSet::IN, COMMAND_TOKEN),
            )
            .map_err(LoopError::Setup)?;
        let (tx, rx) = channel();
        let runner = Runner {
            epoll,
            wake: wake.try_clone().map_err(LoopError::Setup)?,
            commands: rx,
            kicks: kicks.clone(),
            ports: HashMap::new(),
            again: Vec::new(),
        };
        let thread = std::thread::Builder::new()
            .name("vhu-control".into())
            .spawn(move || runner.run())
            .map_err(LoopError::Spawn)?;
        Ok(Arc::new(ControlLoop {
            commands: Mutex::new(tx),
            wake,
            next_key: AtomicU64::new(1),
            kicks,
            thread: Mutex::new(Some(thread)),
        }))
    }

    fn send(&self, c: Command) -> Result<(), LoopError> {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(c)
            .map_err(|_| LoopError::Stopped)?;
        self.wake.write(1).map_err(|_| LoopError::Stopped)
    }

    /// Serves `server`'s socket from now on; returns its key.
    pub(super) fn add(&self, server: PortServer) -> Result<u64, LoopError> {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (done, result) = channel();
        self.send(Command::Add {
            key,
            server: Box::new(server),
            done,
        })?;
        result.recv().map_err(|_| LoopError::Stopped)??;
        Ok(key)
    }

    /// Ends the session of port `key` (VF_DETACHED) and closes its listener; returns when
    /// done, or at once if the loop is gone.
    pub(super) fn remove(&self, key: u64) {
        let (done, finished) = channel();
        if self.send(Command::Remove { key, done }).is_ok() {
            let _ = finished.recv();
        }
    }

    /// Ends the threads (after every port was removed).
    pub fn stop(&self) {
        let _ = self.send(Command::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
        self.kicks.stop();
    }
}

impl Drop for ControlLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port the loop serves.
struct Served {
    server: PortServer,
    /// Everything logged for the port (here, and in the switch and event code this calls).
    span: tracing::Span,
    protocol_log: RateLimitedLog,
    /// The listener is in the epoll.
    listening: bool,
    /// The listener waits until then (after a refusal or a failure); in client mode, the
    /// next connection attempt.
    paused_until: Option<Instant>,
    session: Option<Session>,
    /// Client mode: the last attempt failed (said once, not at every retry).
    connect_failing: bool,
}

fn token(key: u64, kind: u64) -> u64 {
    key << 1 | kind
}

struct Runner {
    epoll: Epoll,
    wake: EventFd,
    commands: Receiver<Command>,
    kicks: Arc<Kicks>,
    ports: HashMap<u64, Served>,
    /// Connections left with whole requests after a burst: served again before waiting.
    again: Vec<u64>,
}

impl Runner {
    fn run(mut self) {
        let mut events = [EpollEvent::new(EventSet::empty(), 0); 64];
        loop {
            let timeout = self.timeout_ms();
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("control loop: epoll_wait failed, no frontend is served: {e}");
                    return;
                }
            };
            for ev in &events[..n] {
                let (tok, set) = (ev.data(), ev.event_set());
                if tok == COMMAND_TOKEN {
                    if !self.commands() {
                        return;
                    }
                    continue;
                }
                let key = tok >> 1;
                if tok & 1 == LISTENER {
                    self.accept(key);
                } else {
                    if set.intersects(EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
                    {
                        if let Some(s) = self.session_mut(key) {
                            s.closed = true;
                        }
                    }
                    self.serve(key);
                }
            }
            for key in std::mem::take(&mut self.again) {
                self.serve(key);
            }
            self.timers();
        }
    }

    /// Runs the queued commands; false on Stop.
    fn commands(&mut self) -> bool {
        let _ = self.wake.read();
        while let Ok(c) = self.commands.try_recv() {
            match c {
                Command::Add { key, server, done } => {
                    let _ = done.send(self.add(key, *server));
                }
                Command::Remove { key, done } => {
                    self.remove(key);
                    let _ = done.send(());
                }
                Command::Stop => {
                    let keys: Vec<u64> = self.ports.keys().copied().collect();
                    for key in keys {
                        self.remove(key);
                    }
                    return false;
                }
            }
        }
        true
    }

    fn add(&mut self, key: u64, server: PortServer) -> Result<(), LoopError> {
        let name = server.port.spec.name.clone();
        self.ports.insert(
            key,
            Served {
                server,
                span: tracing::info_span!("port", port = %name),
                protocol_log: RateLimitedLog::new(PROTOCOL_ERROR_LOG_INTERVAL),
                listening: false,
                paused_until: None,
                session: None,
                connect_failing: false,
            },
        );
        if let Err(e) = self.listen(key) {
            self.ports.remove(&key);
            return Err(LoopError::Watch(e));
        }
        Ok(())
    }

    /// The port goes away: its frontend is disconnected, its listener closed (which removes
    /// the socket file).
    fn remove(&mut self, key: u64) {
        self.end_session(key, Ended::Disconnected);
        self.unlisten(key);
        self.ports.remove(&key);
    }

    fn session_mut(&mut self, key: u64) -> Option<&mut Session> {
        self.ports.get_mut(&key)?.session.as_mut()
    }

    /// Puts port `key`'s listener in the epoll (in client mode: tries to connect), unless it
    /// is serving, paused or stopping.
    fn listen(&mut self, key: u64) -> io::Result<()> {
        let Some(p) = self.ports.get_mut(&key) else {
            return Ok(());
        };
        if p.listening
            || p.session.is_some()
            || p.paused_until.is_some()
            || p.server.shared.stop.load(Ordering::Acquire)
        {
            return Ok(());
        }
        let listener = match &p.server.endpoint {
            Endpoint::Listen(l) => l.as_raw_fd(),
            Endpoint::Connect(_) => {
                self.connect(key);
                return Ok(());
            }
        };
        self.epoll.ctl(
            ControlOperation::Add,
            listener,
            EpollEvent::new(EventSet::IN, token(key, LISTENER)),
        )?;
        p.listening = true;
        Ok(())
    }

    fn unlisten(&mut self, key: u64) {
        let Some(p) = self.ports.get_mut(&key) else {
            return;
        };
        if let (true, Endpoint::Listen(l)) = (p.listening, &p.server.endpoint) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, token(key, LISTENER)),
            );
            p.listening = false;
        }
    }

    /// Client mode: port `key` connects to its frontend's socket, or tries again later.
    fn connect(&mut self, key: u64) {
        let Some(p) = self.ports.get_mut(&key) else {
            return;
        };
        let Endpoint::Connect(path) = &p.server.endpoint else {
            return;
        };
        let span = p.span.clone();
        let _span = span.enter();
        let port = p.server.port.clone();
        if !port.link_up() {
            // As in server mode, no frontend while the link is down: the guest sees it down.
            self.pause(key, LINK_DOWN_RETRY);
            return;
        }
        let stream = match connect_nonblocking(path) {
            Ok(s) => s,
            Err(e) => {
                if !std::mem::replace(&mut p.connect_failing, true) {
                    tracing::info!(
                        port = %port.spec.name,
                        "client mode: cannot connect to {} ({e}); retrying every {CONNECT_RETRY:?}",
                        path.display()
                    );
                }
                self.pause(key, CONNECT_RETRY);
                return;
            }
        };
        p.connect_failing = false;
        tracing::info!(port = %port.spec.name, "client mode: connected to {}", path.display());
        if let Err(e) = self.open_session(key, stream) {
            tracing::error!(port = %port.spec.name, "cannot serve a frontend: {e}");
            self.pause(key, SETUP_RETRY);
        }
    }

    /// Stops accepting on port `key` for `d`.
    fn pause(&mut self, key: u64, d: Duration) {
        self.unlisten(key);
        if let Some(p) = self.ports.get_mut(&key) {
            p.paused_until = Some(Instant::now() + d);
        }
    }

    /// A frontend connects to port `key`.
    fn accept(&mut self, key: u64) {
        let Some(p) = self.ports.get(&key) else {
            return;
        };
        let span = p.span.clone();
        let _span = span.enter();
        if p.session.is_some() {
            self.unlisten(key);
            return;
        }
        let port = p.server.port.clone();
        let Endpoint::Listen(listener) = &p.server.endpoint else {
            return;
        };
        let stream = match listener.accept() {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(port = %port.spec.name, "accepting a frontend failed: {e}");
                self.pause(key, ACCEPT_RETRY);
                return;
            }
        };
        if !port.link_up() {
            // Link down (disabled, or `auto` without carrier): QEMU sets the guest's link
            // down while its vhost-user connection is closed, so refuse frontends until
            // the link is up again.
            tracing::info!(port = %port.spec.name, "link disabled: closing the frontend's connection");
            drop(stream);
            self.pause(key, REFUSE_PAUSE);
            return;
        }
        if let Err(e) = self.open_session(key, stream) {
            tracing::error!(port = %port.spec.name, "cannot serve a frontend: {e}");
            self.pause(key, SETUP_RETRY);
        }
    }

    fn open_session(&mut self, key: u64, stream: UnixStream) -> Result<(), SessionError> {
        let Some(p) = self.ports.get(&key) else {
            return Ok(());
        };
        let (session, conn) = Session::open(&p.server, stream, &self.kicks)?;
        // Edge-triggered: `serve` reads all whole requests on each event, and a partial one
        // waits for the next bytes (or its deadline) without waking the loop again.
        let watch = self.epoll.ctl(
            ControlOperation::Add,
            session.stream.as_raw_fd(),
            EpollEvent::new(
                EventSet::IN | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED,
                token(key, CONNECTION),
            ),
        );
        if let Err(e) = watch {
            session.close(&self.kicks);
            return Err(SessionError::Watch(e));
        }
        self.unlisten(key);
        let Some(p) = self.ports.get_mut(&key) else {
            return Ok(());
        };
        p.server
            .shared
            .set_session(session.daemon.shutdown_handle());
        p.session = Some(session);
        tracing::info!(port = %p.server.port.spec.name, "frontend connected");
        p.server.attach(conn);
        p.server.waker.wake();
        p.server.emit("VF_ATTACHED", "connected");
        Ok(())
    }

    /// Serves the whole requests waiting on port `key`'s connection (at most a burst).
    fn serve(&mut self, key: u64) {
        let Some(p) = self.ports.get_mut(&key) else {
            return;
        };
        let span = p.span.clone();
        let _span = span.enter();
        let Some(s) = p.session.as_mut() else {
            return;
        };
        match s.serve_burst() {
            Burst::Done => {}
            Burst::More => self.again.push(key),
            Burst::Ended(ended) => self.end_session(key, ended),
        }
    }

    /// Ends port `key`'s session: the rings stop, the port detaches (VF_DETACHED), and the
    /// listener takes the next frontend.
    fn end_session(&mut self, key: u64, ended: Ended) {
        let Some(p) = self.ports.get_mut(&key) else {
            return;
        };
        let Some(mut session) = p.session.take() else {
            return;
        };
        let span = p.span.clone();
        let _span = span.enter();
        let name = p.server.port.spec.name.clone();
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            session.stream.as_raw_fd(),
            EpollEvent::new(EventSet::IN, token(key, CONNECTION)),
        );
        // No more kicks for the old connection once its rings are stopped below.
        session.stop_kicks(&self.kicks);
        match ended {
            Ended::Disconnected => tracing::info!(port = %name, "frontend disconnected"),
            Ended::ProtocolError(e) => {
                p.server.port.counters.totals.protocol_errors.inc();
                p.protocol_log.report(&name, &e);
            }
        }
        // Before the next frontend can look at the rings (the same QEMU, reattaching).
        stop_rings(&p.server.port);
        p.server.shared.set_session(None);
        p.server.detach();
        p.server.waker.wake();
        p.server.emit("VF_DETACHED", "gone");
        session.close(&self.kicks);
        if let Err(e) = self.listen(key) {
            tracing::error!(port = %name, "cannot watch the socket again, retrying: {e}");
            self.pause(key, SETUP_RETRY);
        }
    }

    /// How long epoll may wait: until the next pause ends or partial message runs out.
    fn timeout_ms(&self) -> i32 {
        if !self.again.is_empty() {
            return 0;
        }
        let next = self
            .ports
            .values()
            .flat_map(|p| {
                let stall = p
                    .session
                    .as_ref()
                    .and_then(|s| s.partial_since)
                    .map(|t| t + STALL_LIMIT);
                [p.paused_until, stall]
            })
            .flatten()
            .min();
        match next {
            None => -1,
            Some(t) => {
                let left = t.saturating_duration_since(Instant::now());
                // Rounded up, so the deadline has passed when epoll returns.
                i32::try_from(left.as_millis() + 1).unwrap_or(i32::MAX)
            }
        }
    }

    /// Ends the pauses and the stalled sessions whose time has come.
    fn timers(&mut self) {
        let now = Instant::now();
        let mut resume = Vec::new();
        let mut stalled = Vec::new();
        for (key, p) in &mut self.ports {
            if p.paused_until.is_some_and(|t| t <= now) {
                p.paused_until = None;
                resume.push(*key);
            }
            if p.session
                .as_ref()
                .and_then(|s| s.partial_since)
                .is_some_and(|t| t + STALL_LIMIT <= now)
            {
                stalled.push(*key);
            }
        }
        for key in stalled {
            self.end_session(
                key,
                Ended::ProtocolError(format!(
                    "the frontend left a message unfinished for {STALL_LIMIT:?}"
                )),
            );
        }
        for key in resume {
            if let Err(e) = self.listen(key) {
                tracing::error!("cannot watch a port's socket again, retrying: {e}");
                self.pause(key, SETUP_RETRY);
            }
        }
    }
}
