//! One frontend's session on the control loop: its vhost-user daemon (no threads of its own,
//! vendor/PATCHES.md item 10), its connection, its kicks registered with the kick thread, and
//! the serving of its requests: only whole ones (`pending.rs`), at most a burst at a time.

use super::backend::NetBackend;
use super::kicks::Kicks;
use super::pending::{pending, Pending};
use super::port::Connection;
use super::port_socket::PortServer;
use super::{GuestMem, GuestMemAtomic};
use std::io;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vhost::vhost_user::Error as VhostUserError;
use vhost_user_backend::{Error as DaemonError, VhostUserDaemon};

/// How long a frontend may leave a message half sent, or a read or write of its connection
/// may wait, before the connection is closed as a protocol error.
pub const STALL_LIMIT: Duration = Duration::from_secs(1);

/// Requests served from one connection before the others get a turn.
const BURST: usize = 64;

/// Why a frontend could not be served.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    #[error("cannot set up its socket")]
    Socket(#[source] io::Error),
    #[error("cannot create its vhost-user daemon: {0}")]
    Daemon(String),
    #[error("cannot watch its kicks")]
    Kicks(#[source] io::Error),
    #[error("cannot watch its socket")]
    Watch(#[source] io::Error),
}

/// The frontend being served.
pub(super) struct Session {
    pub(super) daemon: VhostUserDaemon<NetBackend>,
    /// The connection (a clone of the daemon's): watched, and looked into (`pending`).
    pub(super) stream: UnixStream,
    kick_tokens: Vec<u64>,
    /// Since when part of a message has waited for the rest.
    pub(super) partial_since: Option<Instant>,
    /// The frontend hung up (or we shut the connection): read until the crate says so.
    pub(super) closed: bool,
}

/// How a session ended.
pub(super) enum Ended {
    Disconnected,
    ProtocolError(String),
}

impl Ended {
    fn of(e: &DaemonError, shutdown_requested: bool) -> Ended {
        match e {
            DaemonError::HandleRequest(VhostUserError::Disconnected)
            | DaemonError::HandleRequest(VhostUserError::SocketBroken(_)) => Ended::Disconnected,
            _ if shutdown_requested => Ended::Disconnected,
            DaemonError::HandleRequest(VhostUserError::SocketRetry(io))
                if io.kind() == io::ErrorKind::WouldBlock =>
            {
                Ended::ProtocolError(format!(
                    "no progress on the connection for {STALL_LIMIT:?} (a read or write timed out)"
                ))
            }
            e => Ended::ProtocolError(e.to_string()),
        }
    }
}

/// What a burst of requests left.
pub(super) enum Burst {
    /// Nothing whole to read.
    Done,
    /// More whole requests wait.
    More,
    Ended(Ended),
}

impl Session {
    /// Sets up the daemon for `stream`, a frontend of `server`'s port, with its kicks watched
    /// by `kicks`; returns the connection to publish.
    pub(super) fn open(
        server: &PortServer,
        stream: UnixStream,
        kicks: &Kicks,
    ) -> Result<(Session, Arc<Connection>), SessionError> {
        let port = &server.port;
        let name = port.spec.name.clone();
        stream
            .set_read_timeout(Some(STALL_LIMIT))
            .and_then(|()| stream.set_write_timeout(Some(STALL_LIMIT)))
            .map_err(SessionError::Socket)?;
        let watched = stream.try_clone().map_err(SessionError::Socket)?;
        let num_queues = 2 * usize::from(port.spec.queue_pairs);
        let mem = GuestMemAtomic::new(GuestMem::default());
        let conn = Arc::new(Connection::new(mem.clone(), num_queues));
        let backend = NetBackend::new(
            port.clone(),
            conn.clone(),
            server.waker.clone(),
            server.events.clone(),
            server.switch.clone(),
        );
        let mut daemon = VhostUserDaemon::new_external(name.clone(), backend, mem)
            .map_err(|e| SessionError::Daemon(e.to_string()))?;
        daemon
            .serve_stream(stream)
            .map_err(|e| SessionError::Daemon(e.to_string()))?;
        let mut session = Session {
            daemon,
            stream: watched,
            kick_tokens: Vec::new(),
            partial_since: None,
            closed: false,
        };
        for h in session.daemon.get_epoll_handlers() {
            match kicks.register(&name, h) {
                Ok(t) => session.kick_tokens.push(t),
                Err(e) => {
                    session.close(kicks);
                    return Err(SessionError::Kicks(e));
                }
            }
        }
        Ok((session, conn))
    }

    /// Serves the whole requests waiting, at most a burst of them.
    pub(super) fn serve_burst(&mut self) -> Burst {
        for _ in 0..BURST {
            let next = if self.closed {
                Pending::Ready
            } else {
                pending(&self.stream)
            };
            match next {
                Pending::Empty => {
                    self.partial_since = None;
                    return Burst::Done;
                }
                Pending::Partial => {
                    self.partial_since.get_or_insert_with(Instant::now);
                    return Burst::Done;
                }
                Pending::Ready => {
                    // A panic in the crate's handling of one frontend's request ends that
                    // session only, as it ended that connection's own thread before.
                    let daemon = &mut self.daemon;
                    match catch_unwind(AssertUnwindSafe(|| daemon.handle_request())) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            return Burst::Ended(Ended::of(&e, self.daemon.shutdown_requested()))
                        }
                        Err(_) => {
                            return Burst::Ended(Ended::ProtocolError(
                                "handling its request panicked".into(),
                            ))
                        }
                    }
                    self.partial_since = None;
                }
            }
        }
        Burst::More
    }

    /// Stops watching the session's kicks.
    pub(super) fn stop_kicks(&mut self, kicks: &Kicks) {
        for t in self.kick_tokens.drain(..) {
            kicks.unregister(t);
        }
    }

    /// Ends the session: its kicks unwatched, its daemon and connection closed.
    pub(super) fn close(mut self, kicks: &Kicks) {
        self.stop_kicks(kicks);
    }
}
