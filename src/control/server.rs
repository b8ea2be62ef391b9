//! The control socket: QMP framing, clients, events.

use super::commands::execute;
use super::qmp::{self, QmpError, MAX_LINE};
use crate::daemon::Daemon;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the control socket cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {0} is in use by a running process")]
    InUse(PathBuf),
    #[error("cannot listen on control socket {path}: {source}")]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
}

type QuitFn = dyn Fn() + Send + Sync;

/// A listening control socket.
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
}

impl ControlServer {
    /// Listens on `path` (mode 0600) and serves clients on their own threads.
    pub fn start(
        path: &Path,
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
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(listen_err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(c) => {
                            let (d, q) = (daemon.clone(), quit.clone());
                            let _ = std::thread::Builder::new()
                                .name("control-client".into())
                                .spawn(move || serve_client(c, &d, &*q));
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

fn send(w: &Mutex<UnixStream>, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).unwrap_or_default();
    line.push(b'\n');
    w.lock().unwrap_or_else(|e| e.into_inner()).write_all(&line)
}

/// Reads one line of at most `MAX_LINE` bytes. `Ok(None)` on EOF; an over-long line is
/// consumed to its end and reported as `Err`.
fn read_line(
    r: &mut impl BufRead,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<(), usize>>> {
    buf.clear();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(Ok(())));
    }
    if buf.len() <= MAX_LINE {
        return Ok(Some(Ok(()))); // EOF without a newline: take what came
    }
    // Too long: skip to the end of the line.
    let mut skipped = buf.len();
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            break;
        }
        match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                skipped += i;
                break;
            }
            None => {
                let l = chunk.len();
                r.consume(l);
                skipped += l;
            }
        }
    }
    Ok(Some(Err(skipped)))
}

fn serve_client(stream: UnixStream, d: &Arc<Daemon>, quit: &QuitFn) {
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let writer = Arc::new(Mutex::new(write_half));
    if send(&writer, &qmp::greeting()).is_err() {
        return;
    }
    let closed = Arc::new(AtomicBool::new(false));
    let mut negotiated = false;
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let line = match read_line(&mut reader, &mut buf) {
            Ok(None) | Err(_) => break,
            Ok(Some(Err(len))) => {
                let e = QmpError::generic(format!(
                    "message of {len} bytes exceeds the limit of {MAX_LINE}"
                ));
                if send(&writer, &qmp::error(&e, None)).is_err() {
                    break;
                }
                continue;
            }
            Ok(Some(Ok(()))) => String::from_utf8_lossy(&buf).into_owned(),
        };
        if line.trim().is_empty() {
            continue;
        }
        let reply = match qmp::parse_request(&line) {
            Err((e, id)) => qmp::error(&e, id.as_ref()),
            Ok(req) if req.execute == "qmp_capabilities" => {
                if negotiated {
                    let e = QmpError {
                        class: "CommandNotFound",
                        desc: "Capabilities negotiation is already complete, command ignored"
                            .into(),
                    };
                    qmp::error(&e, req.id.as_ref())
                } else {
                    negotiated = true;
                    start_event_forwarder(d, writer.clone(), closed.clone());
                    qmp::ret(json!({}), req.id.as_ref())
                }
            }
            Ok(req) if !negotiated => {
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
        };
        if send(&writer, &reply).is_err() {
            break;
        }
    }
    closed.store(true, Ordering::Release);
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
