//! The control socket: QMP framing, clients, events.

use super::access::{check_peer, restrict};
use super::commands::execute;
use super::qmp::{self, QmpError, MAX_LINE};
use super::stream::{Piece, Splitter};
use crate::daemon::Daemon;
use crate::ownership::OwnershipError;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the control socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("cannot listen on control socket {path}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Access(#[from] OwnershipError),
}

type QuitFn = dyn Fn() + Send + Sync;

/// A listening control socket.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl ControlServer {
    /// Listens on `path` (mode 0600, or 0660 and owned by `group`) and serves clients on their
    /// own threads: the emulator's uid, root, and members of `group`.
    pub fn start(
        path: &Path,
        group: Option<u32>,
        daemon: Arc<Daemon>,
        quit: Arc<QuitFn>,
    ) -> Result<ControlServer, ControlError> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listen_err = |source| ControlError::Listen {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        if let Err(e) = restrict(path, group) {
            let _ = std::fs::remove_file(path);
            return Err(e.into());
        }
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let clients = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(c) => {
                            if let Err(why) = admit(&c, group, &clients) {
                                refuse(c, &why);
                                continue;
                            }
                            let (d, q) = (daemon.clone(), quit.clone());
                            let slot = ClientSlot::take(&clients);
                            let spawned = std::thread::Builder::new()
                                .name("control-client".into())
                                .spawn(move || {
                                    let _slot = slot;
                                    serve_client(c, &d, &*q)
                                });
                            if let Err(e) = spawned {
                                tracing::warn!("cannot start a control client thread: {e}");
                            }
                        }
                        Err(e) => tracing::warn!("control socket accept failed: {e}"),
                    }
                }
            })
            .map_err(listen_err)?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Clients served at once; more are refused (each has a thread).
pub const MAX_CLIENTS: usize = 64;

/// A client's place among the `MAX_CLIENTS`, given back when its thread ends.
struct ClientSlot(Arc<AtomicUsize>);

impl ClientSlot {
    fn take(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        ClientSlot(count.clone())
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether the client may be served: its credentials (`access::check_peer`) and a free client
/// place.
fn admit(c: &UnixStream, group: Option<u32>, clients: &AtomicUsize) -> Result<(), String> {
    check_peer(c, group)?;
    if clients.load(Ordering::Acquire) >= MAX_CLIENTS {
        return Err(format!(
            "too many control clients (at most {MAX_CLIENTS} at once)"
        ));
    }
    Ok(())
}

/// Tells a refused client why (a QMP error line, without waiting for it to read) and closes.
fn refuse(c: UnixStream, why: &str) {
    tracing::warn!("control client refused: {why}");
    let _ = c.set_nonblocking(true);
    let _ = (&c).write_all(&line_of(&qmp::error(&QmpError::generic(why), None)));
}

/// `v` as one line of the wire protocol.
fn line_of(v: &Value) -> Vec<u8> {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    line
}

/// How long a client may leave a reply or an event unread (its socket buffer full) before it
/// is disconnected: a stuck client must not hold its thread and place forever.
pub const CLIENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes one line to the client. A client that does not read within `CLIENT_WRITE_TIMEOUT`
/// is shut down (with a warning), which also ends its reading thread; one that has gone (an
/// event for a client that just closed its socket: a broken pipe) is only shut down.
fn send(w: &Mutex<UnixStream>, v: &Value) -> std::io::Result<()> {
    let line = line_of(v);
    let s = w.lock().unwrap_or_else(|e| e.into_inner());
    let r = (&*s).write_all(&line);
    if let Err(e) = &r {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            tracing::warn!(
                "control client dropped: {e} (it did not read for {CLIENT_WRITE_TIMEOUT:?})"
            );
        } else {
            tracing::debug!("control client gone: {e}");
        }
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    r
}

fn serve_client(stream: UnixStream, d: &Arc<Daemon>, quit: &QuitFn) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    if write_half
        .set_write_timeout(Some(CLIENT_WRITE_TIMEOUT))
        .is_err()
    {
        return;
    }
    let writer = Arc::new(Mutex::new(write_half));
    if send(&writer, &qmp::greeting()).is_err() {
        return;
    }
    let closed = Arc::new(AtomicBool::new(false));
    let mut negotiated = false;
    let mut reader = stream;
    let mut splitter = Splitter::default();
    let mut chunk = [0u8; 4096];
    'conn: loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut pieces = Vec::new();
        splitter.feed(&chunk[..n], |p| pieces.push(p));
        for piece in pieces {
            let reply = match piece {
                Piece::TooLong(len) => {
                    let e = QmpError::generic(format!(
                        "message of {len} bytes exceeds the limit of {MAX_LINE}"
                    ));
                    qmp::error(&e, None)
                }
                Piece::Stray(text) => {
                    let e = QmpError::generic(format!(
                        "JSON parse error: unexpected {:?} outside an object",
                        String::from_utf8_lossy(&text)
                    ));
                    qmp::error(&e, None)
                }
                Piece::Message(bytes) => handle(
                    &String::from_utf8_lossy(&bytes),
                    &mut negotiated,
                    d,
                    &writer,
                    &closed,
                    quit,
                ),
            };
            if send(&writer, &reply).is_err() {
                break 'conn;
            }
        }
    }
    closed.store(true, Ordering::Release);
}

/// Answers one message.
fn handle(
    text: &str,
    negotiated: &mut bool,
    d: &Arc<Daemon>,
    writer: &Arc<Mutex<UnixStream>>,
    closed: &Arc<AtomicBool>,
    quit: &QuitFn,
) -> Value {
    match qmp::parse_request(text) {
        Err((e, id)) => qmp::error(&e, id.as_ref()),
        Ok(req) if req.execute == "qmp_capabilities" => {
            if *negotiated {
                let e = QmpError {
                    class: "CommandNotFound",
                    desc: "Capabilities negotiation is already complete, command ignored".into(),
                };
                qmp::error(&e, req.id.as_ref())
            } else {
                *negotiated = true;
                start_event_forwarder(d, writer.clone(), closed.clone());
                qmp::ret(json!({}), req.id.as_ref())
            }
        }
        Ok(req) if !*negotiated => {
            let e = QmpError {
                class: "CommandNotFound",
                desc: "Expecting capabilities negotiation with 'qmp_capabilities'".into(),
            };
            qmp::error(&e, req.id.as_ref())
        }
        Ok(req) => match execute(d, &req.execute, req.arguments, quit) {
            Ok(v) => qmp::ret(v, req.id.as_ref()),
            Err(e) => qmp::error(&e, req.id.as_ref()),
        },
    }
}

fn start_event_forwarder(d: &Arc<Daemon>, writer: Arc<Mutex<UnixStream>>, closed: Arc<AtomicBool>) {
    let rx = d.events().subscribe();
    let _ = std::thread::Builder::new()
        .name("control-events".into())
        .spawn(move || loop {
            match rx.recv_timeout(Duration::from_millis(500)) {
                Ok(ev) => {
                    if send(&writer, &ev.to_qmp()).is_err() {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if closed.load(Ordering::Acquire) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
        });
}
