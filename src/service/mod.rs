//! Running under a service manager: telling it when the emulator is ready, and where it runs.
//!
//! - `notify.rs`: the sd_notify protocol (`READY=1`, `STOPPING=1`, `STATUS=...` datagrams to
//!   `$NOTIFY_SOCKET`, a path or an abstract `@name`), with std's `UnixDatagram`.
//! - `pid_file.rs`: `--pid-file`: the process id, written once ready, removed at a clean exit.
//!
//! `sriov-emu run` sends `READY=1` and writes the PID file only after every socket listens
//! (every port socket, the control socket, the metrics endpoint): whoever waits for either can
//! connect at once. contrib/sriov-emu.service runs it as a systemd `Type=notify` unit.

mod notify;
mod pid_file;

pub use notify::{notify, notify_to, NOTIFY_SOCKET};
pub use pid_file::PidFile;

use std::path::PathBuf;

/// Why the service manager could not be told, or the PID file not written.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an abstract name (@name)")]
    NotifyAddress(String),
    #[error("cannot notify the service manager at {socket:?}")]
    NotifySend {
        socket: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the PID file {path}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
