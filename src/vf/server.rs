//! One port's vhost-user socket: `PortServer::bind`, then `spawn` hands it to the control loop
//! (`control_loop.rs`), which serves a frontend at a time, the next after it left;
//! `ServerHandle` disconnects the frontend or stops serving the port.

use super::control_loop::{ControlLoop, LoopError};
use super::port::Port;
use super::port_socket::{stop_rings, Endpoint, PortServer, PortShared};
use crate::events::EventBus;
use crate::ownership::{OwnershipError, SocketOwner};
use crate::pf::PortSpec;
use crate::port::Waker;
use crate::switch::Switch;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use vhost::vhost_user::Listener;

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
    /// `--socket-group` / `--socket-mode` could not be applied (the socket is removed).
    #[error("cannot give {port}'s socket its group and mode")]
    Ownership {
        port: String,
        #[source]
        source: OwnershipError,
    },
    #[error("cannot make the socket of {port} non-blocking")]
    Nonblocking {
        port: String,
        source: vhost::vhost_user::Error,
    },
    #[error("cannot serve {port}")]
    Serve {
        port: String,
        #[source]
        source: LoopError,
    },
}

/// A served port: stop it to disconnect its frontend and remove its socket.
pub struct ServerHandle {
    port: Arc<Port>,
    shared: Arc<PortShared>,
    control: Arc<ControlLoop>,
    /// The port's key in the control loop.
    key: u64,
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
        self.shared.shutdown_session();
    }

    /// Disconnects the frontend (if any), stops serving the port, removes the socket. When
    /// this returns the port is detached (VF_DETACHED sent) and its listener closed.
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Release);
        stop_rings(&self.port);
        self.shared.shutdown_session();
        self.control.remove(self.key);
        remove_own_socket(&self.port.spec);
    }
}

/// Removes a port's socket file if it is the port's own (in client mode it is QEMU's).
pub fn remove_own_socket(spec: &PortSpec) {
    if !spec.client {
        let _ = std::fs::remove_file(&spec.socket);
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
    /// Binds the port's socket and gives it `owner`'s group and mode (every bind of a port
    /// socket comes here: at start, when numvfs or a VF's channels change).
    pub fn bind(
        port: Arc<Port>,
        owner: &SocketOwner,
        waker: Arc<Waker>,
        events: Arc<EventBus>,
        switch: Arc<Mutex<Switch>>,
    ) -> Result<Self, ServerError> {
        let path = port.spec.socket.clone();
        if port.spec.client {
            // The frontend's socket: nothing to bind, and never ours to remove.
            return Ok(PortServer {
                port,
                endpoint: Endpoint::Connect(path),
                waker,
                events,
                switch,
                shared: Arc::default(),
            });
        }
        claim_socket_path(&path)?;
        let listener = Listener::new(&path, true).map_err(|source| ServerError::Listen {
            path: path.clone(),
            source,
        })?;
        if let Err(source) = owner.apply(&path) {
            drop(listener);
            let _ = std::fs::remove_file(&path);
            return Err(ServerError::Ownership {
                port: port.spec.name.clone(),
                source,
            });
        }
        // The control loop accepts when epoll says a frontend is waiting.
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Nonblocking {
                port: port.spec.name.clone(),
                source,
            })?;
        Ok(PortServer {
            port,
            endpoint: Endpoint::Listen(listener),
            waker,
            events,
            switch,
            shared: Arc::default(),
        })
    }

    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Hands the port to the control loop, which serves its frontends from now on.
    pub fn spawn(self, control: &Arc<ControlLoop>) -> Result<ServerHandle, ServerError> {
        let (port, shared) = (self.port.clone(), self.shared.clone());
        let key = control.add(self).map_err(|source| ServerError::Serve {
            port: port.spec.name.clone(),
            source,
        })?;
        Ok(ServerHandle {
            port,
            shared,
            control: control.clone(),
            key,
        })
    }
}
