//! The management plane ("dom0 tools"): a control socket speaking the QMP wire protocol, and
//! the `sriov-emu ctl` client.
//!
//! - `qmp.rs`: the wire format: greeting, requests, returns, errors, argument checking.
//! - `commands.rs`: every command, on top of `Daemon` (documented in docs/control.md).
//! - `access.rs`: who may connect: the socket's group and mode (`crate::ownership`), and every
//!   peer's credentials checked (SO_PEERCRED).
//! - `server.rs`: the socket: several clients, one line per message, events after
//!   `qmp_capabilities`, bad input answered with an error on a connection that stays usable.
//! - `stream.rs`: splits the byte stream into JSON messages (no newlines needed, as in QEMU).
//! - `client.rs`: the `ctl` client: a QMP client and the `ip link ... vf N ...` vocabulary.
//! - `render.rs`: `ctl`'s human-readable and OpenMetrics text of the replies.
//! - `metrics.rs`: `--metrics-listen`: the OpenMetrics text over HTTP for Prometheus.

mod access;
pub mod client;
mod commands;
pub mod metrics;
mod qmp;
pub mod render;
mod server;
mod stream;

pub use commands::{execute, parse_command, Command, COMMAND_ARGS};
pub use metrics::{MetricsError, MetricsServer};
pub use qmp::{parse_request, QmpError, Request, MAX_LINE};
pub use server::{ControlError, ControlServer, CLIENT_WRITE_TIMEOUT, MAX_CLIENTS};
pub use stream::{Piece, Splitter};
