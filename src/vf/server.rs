//! The accept loop of one port: serve a frontend, wait for it to leave, serve the next.

use super::backend::NetBackend;
use super::port::{port_event_data, Connection, Port, TX_STOP_WAIT};
use super::{GuestMem, GuestMemAtomic};
use crate::events::EventBus;
use crate::pf::PortKind;
use crate::port::Waker;
use crate::switch::Switch;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhost::vhost_user::{Error as VhostUserError, Listener};
use vhost_user_backend::{Error as DaemonError, ShutdownHandle, VhostUserDaemon};

/// At most one log line per port this often about frontends that broke the protocol (a
/// hostile frontend can reconnect and fail in a loop); the rest are counted in
/// `protocol_errors` and summed up in the next line.
const PROTOCOL_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A warning logged at most once per interval, with how many were left out since.
struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    left_out: u64,
}

impl RateLimitedLog {
    fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last: None,
            left_out: 0,
        }
    }

    /// Logs that the frontend of `port` was disconnected for `error`, unless a line was
    /// logged less than an interval ago.
    fn report(&mut self, port: &str, error: &DaemonError) {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.left_out += 1;
            return;
        }
        self.last = Some(now);
        let left_out = std::mem::take(&mut self.left_out);
        tracing::warn!(
            port = %port,
            "vhost-user protocol error, frontend disconnected: {error} ({left_out} more since the last such line; at most one per {:?})",
            self.every
        );
    }
}

/// Why a port cannot serve its socket.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket {0} is in use by a running process (another sriov-emu?)")]
    SocketInUse(PathBuf),
    #[error("cannot remove stale socket {path}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}")]
    Listen {
        path: PathBuf,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot start the vhost-user thread for {port}")]
    Spawn {
        port: String,
        source: std::io::Error,
    },
}

/// A bound socket for one port.
pub struct PortServer {
    port: Arc<Port>,
    listener: Listener,
    waker: Arc<Waker>,
    events: Arc<EventBus>,
    /// Told of every attach and detach before anyone else sees it (static VF MACs).
    switch: Arc<Mutex<Switch>>,
    stop: Arc<AtomicBool>,
    /// Ends the current frontend's session, if one is being served.
    session: Arc<Mutex<Option<ShutdownHandle>>>,
}

/// A running port server: stop it to disconnect its frontend and remove its socket.
pub struct ServerHandle {
    port: Arc<Port>,
    stop: Arc<AtomicBool>,
    session: Arc<Mutex<Option<ShutdownHandle>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The listening socket, owned by the thread until it ends (`stop` joins it first).
    listener_fd: RawFd,
}

impl ServerHandle {
    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Ends the current frontend's session (link disabled); the loop accepts the next one.
    /// The rings are stopped before the connection closes (`Connection::stop`), so what the
    /// frontend reads of them when it sees the hang-up is final.
    pub fn disconnect_frontend(&self) {
        stop_rings(&self.port);
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            s.shutdown();
        }
    }

    /// Disconnects the frontend (if any), ends the accept loop, removes the socket.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Release);
        stop_rings(&self.port);
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            s.shutdown();
        }
        // Wake an accept() in progress; the loop sees `stop` and leaves. A shutdown of the
        // listening socket does it even if its file was removed under us.
        // SAFETY: the fd is the listener the thread owns until it ends, which is joined below;
        // shutdown(2) only changes the socket's state.
        unsafe { libc::shutdown(self.listener_fd, libc::SHUT_RDWR) };
        let _ = UnixStream::connect(&self.port.spec.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.port.spec.socket);
    }
}

/// Stops the rings of `port`'s current connection, if it has one (`Connection::stop`), and
/// says so if a TX batch had to be given up.
fn stop_rings(port: &Port) {
    if let Some(conn) = port.connection() {
        let abandoned = conn.stop();
        if !abandoned.is_empty() {
            tracing::warn!(
                port = %port.spec.name,
                "session ended: the data plane did not complete the batch of TX queue pairs \
                 {abandoned:?} in {TX_STOP_WAIT:?}; its buffers are not returned"
            );
        }
    }
}

/// Refuses a socket path that a live process still serves; removes a stale one.
fn claim_socket_path(path: &Path) -> Result<(), ServerError> {
    if !path.exists() {
        return Ok(());
    }
    if UnixStream::connect(path).is_ok() {
        return Err(ServerError::SocketInUse(path.to_path_buf()));
    }
    std::fs::remove_file(path).map_err(|source| ServerError::RemoveStale {
        path: path.to_path_buf(),
        source,
    })
}

impl PortServer {
    /// Binds the port's socket.
    pub fn bind(
        port: Arc<Port>,
        waker: Arc<Waker>,
        events: Arc<EventBus>,
        switch: Arc<Mutex<Switch>>,
    ) -> Result<Self, ServerError> {
        let path = port.spec.socket.clone();
        claim_socket_path(&path)?;
        let listener =
            Listener::new(&path, true).map_err(|source| ServerError::Listen { path, source })?;
        Ok(PortServer {
            port,
            listener,
            waker,
            events,
            switch,
            stop: Arc::new(AtomicBool::new(false)),
            session: Arc::new(Mutex::new(None)),
        })
    }

    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Runs the accept loop on its own thread.
    pub fn spawn(self) -> Result<ServerHandle, ServerError> {
        let name = format!("vhu-{}", self.port.spec.name);
        let (port, stop, session) = (self.port.clone(), self.stop.clone(), self.session.clone());
        let listener_fd = self.listener.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name(name)
            .stack_size(256 * 1024)
            .spawn(move || self.run())
            .map_err(|source| ServerError::Spawn {
                port: port.spec.name.clone(),
                source,
            })?;
        Ok(ServerHandle {
            port,
            stop,
            session,
            thread: Some(thread),
            listener_fd,
        })
    }

    fn emit(&self, event: &'static str, state: &str) {
        self.events.emit(event, port_event_data(&self.port, state));
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Publishes the frontend's connection. The switch pins a VF's MAC first (`Port::pin_mac`,
    /// under the switch lock): once the control plane or a guest can see the port attached,
    /// frames to it never flood (unless its MAC is in use on another port: then the pin waits
    /// for the VF's first frame).
    fn attach(&self, conn: Arc<Connection>) {
        {
            let mut sw = self.switch.lock().unwrap_or_else(|e| e.into_inner());
            if matches!(self.port.spec.kind, PortKind::Vf(_)) {
                self.port.pin_mac(&mut sw);
            } else {
                sw.port_attached(self.port.spec.id, None);
            }
            conn.mac_pinned.store(true, Ordering::Release);
        }
        self.port.set_connection(Some(conn));
    }

    /// Withdraws the connection, then the switch forgets the port's MACs.
    fn detach(&self) {
        self.port.set_connection(None);
        self.port.set_pin_on_tx(false);
        self.switch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .port_detached(self.port.spec.id);
    }

    /// Serves one frontend after another, until stopped. Everything logged on this thread
    /// (here, and in the switch and event code it calls) is in the port's span.
    fn run(mut self) {
        let name = self.port.spec.name.clone();
        let _span = tracing::info_span!("port", port = %name).entered();
        let num_queues = 2 * usize::from(self.port.spec.queue_pairs);
        let mut protocol_log = RateLimitedLog::new(PROTOCOL_ERROR_LOG_INTERVAL);
        while !self.stopping() {
            let mem = GuestMemAtomic::new(GuestMem::default());
            let conn = Arc::new(Connection::new(mem.clone(), num_queues));
            let backend = NetBackend::new(
                self.port.clone(),
                conn.clone(),
                self.waker.clone(),
                self.events.clone(),
                self.switch.clone(),
            );
            let mut daemon = match VhostUserDaemon::new(name.clone(), backend, mem) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(port = %name, "cannot create vhost-user daemon: {e}");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            if let Err(e) = daemon.start(&mut self.listener) {
                if self.stopping() {
                    break;
                }
                tracing::warn!(port = %name, "accepting a frontend failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            *self.session.lock().unwrap_or_else(|e| e.into_inner()) = daemon.shutdown_handle();
            if self.stopping() {
                daemon.request_shutdown();
                let _ = daemon.wait();
                break;
            }
            if !self.port.link_up() {
                // Link down (disabled, or `auto` without carrier): QEMU sets the guest's link
                // down while its vhost-user connection is closed, so refuse frontends until
                // the link is up again.
                tracing::info!(port = %name, "link disabled: closing the frontend's connection");
                daemon.request_shutdown();
                let _ = daemon.wait();
                self.session
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            tracing::info!(port = %name, "frontend connected");
            self.attach(conn);
            self.waker.wake();
            self.emit("VF_ATTACHED", "connected");
            match daemon.wait() {
                Ok(()) | Err(DaemonError::HandleRequest(VhostUserError::Disconnected)) => {
                    tracing::info!(port = %name, "frontend disconnected")
                }
                Err(e) => {
                    self.port.counters.totals.protocol_errors.inc();
                    protocol_log.report(&name, &e);
                }
            }
            // Before the next frontend can look at the rings (the same QEMU, reattaching).
            stop_rings(&self.port);
            self.session
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            self.detach();
            self.waker.wake();
            self.emit("VF_DETACHED", "gone");
        }
    }
}
