//! A port's bound socket as the control loop serves it (`PortServer`, `PortShared`) and what
//! a frontend arriving and leaving does to the port: attach and detach with the switch, the
//! rings stopped, protocol errors logged at a limited rate.

use super::port::{port_event_data, Connection, Port, TX_STOP_WAIT};
use crate::events::EventBus;
use crate::pf::PortKind;
use crate::port::Waker;
use crate::switch::Switch;
use std::fmt::Display;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhost::vhost_user::Listener;
use vhost_user_backend::ShutdownHandle;

/// At most one log line per port this often about frontends that broke the protocol (a
/// hostile frontend can reconnect and fail in a loop); the rest are counted in
/// `protocol_errors` and summed up in the next line.
pub(super) const PROTOCOL_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// A warning logged at most once per interval, with how many were left out since.
pub(super) struct RateLimitedLog {
    every: Duration,
    last: Option<Instant>,
    left_out: u64,
}

impl RateLimitedLog {
    pub(super) fn new(every: Duration) -> Self {
        RateLimitedLog {
            every,
            last: None,
            left_out: 0,
        }
    }

    /// Logs that the frontend of `port` was disconnected for `error`, unless a line was
    /// logged less than an interval ago.
    pub(super) fn report(&mut self, port: &str, error: &dyn Display) {
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

/// Where a port's frontends come from.
pub(super) enum Endpoint {
    /// Our socket: frontends connect to it.
    Listen(Listener),
    /// Client mode: the frontend serves this socket, and the port connects to it.
    Connect(PathBuf),
}

/// A port's socket, bound (or, in client mode, the path to connect to).
pub struct PortServer {
    pub(super) port: Arc<Port>,
    pub(super) endpoint: Endpoint,
    pub(super) waker: Arc<Waker>,
    pub(super) events: Arc<EventBus>,
    /// Told of every attach and detach before anyone else sees it (static VF MACs).
    pub(super) switch: Arc<Mutex<Switch>>,
    pub(super) shared: Arc<PortShared>,
}

/// What a `ServerHandle` shares with the control loop about its port.
#[derive(Default)]
pub(super) struct PortShared {
    /// Set by `ServerHandle::stop`.
    pub(super) stop: AtomicBool,
    /// Ends the current frontend's session, if one is being served.
    pub(super) session: Mutex<Option<ShutdownHandle>>,
}

impl PortShared {
    pub(super) fn set_session(&self, session: Option<ShutdownHandle>) {
        *self.session.lock().unwrap_or_else(|e| e.into_inner()) = session;
    }

    /// Closes the frontend's connection, if there is one; the control loop sees it and ends
    /// the session.
    pub(super) fn shutdown_session(&self) {
        if let Some(s) = self
            .session
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            s.shutdown();
        }
    }
}

impl PortServer {
    pub(super) fn emit(&self, event: &'static str, state: &str) {
        self.events.emit(event, port_event_data(&self.port, state));
    }

    /// Publishes the frontend's connection. The switch pins a VF's MAC first (`Port::pin_mac`,
    /// under the switch lock): once the control plane or a guest can see the port attached,
    /// frames to it never flood (unless its MAC is in use on another port: then the pin waits
    /// for the VF's first frame).
    pub(super) fn attach(&self, conn: Arc<Connection>) {
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
    pub(super) fn detach(&self) {
        self.port.set_connection(None);
        self.port.set_pin_on_tx(false);
        self.switch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .port_detached(self.port.spec.id);
    }
}

/// Stops the rings of `port`'s current connection, if it has one (`Connection::stop`), and
/// says so if a TX batch had to be given up.
pub(super) fn stop_rings(port: &Port) {
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

/// Connects to the unix socket `path` without waiting: a listener whose backlog is full (a
/// frontend that is stopped, or does not accept) is a refusal to retry later, not a stall of
/// the control loop that serves every port.
pub(super) fn connect_nonblocking(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use std::os::fd::FromRawFd;
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) address.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the socket path is too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) with constant arguments; the descriptor it returns is owned by the
    // stream made of it right below, and by nothing else.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un of which `len` bytes are used (the path and its
    // terminating zero, which `zeroed` left); `fd` is the socket `stream` owns.
    let r = unsafe {
        libc::connect(
            fd,
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}
