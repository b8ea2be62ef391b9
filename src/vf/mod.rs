//! VF and PV ports: per-port runtime state and the vhost-user glue.
//!
//! - `port.rs`: `Port`, shared between the vhost-user threads and the data plane; its current
//!   frontend `Connection` (guest memory, vrings, negotiated features, pending TX kicks).
//! - `backend.rs`: `NetBackend`, the `VhostUserBackend` for one connection: features, queues,
//!   kick handling (which only wakes the data plane), stopping a ring.
//! - `io.rs`: `VhostIo`, the seam (`port::TxQueues`, `port::RxQueues`) for one connection: a
//!   worker's mapped rings, TX batches popped and completed, RX groups filled.
//! - `server.rs`: one port's socket (`PortServer`, `ServerHandle`): attach and detach, a new
//!   daemon per frontend, so a port accepts the next frontend after the old one left;
//!   stoppable when the port goes away.
//! - `port_socket.rs`: a port's bound socket as the control loop holds it, and what a
//!   frontend arriving or leaving does to the port (attach, detach, rings stopped).
//! - `control_loop.rs`: the one thread that serves every port's vhost-user control traffic
//!   (listeners and connections in one epoll), whatever the number of ports.
//! - `session.rs`: one frontend's session on the control loop: its daemon, its kicks, its
//!   requests served (whole ones only, a burst at a time).
//! - `pending.rs`: whether a connection holds a whole request yet (the loop never waits on
//!   a frontend that stalls mid-message).
//! - `kicks.rs`: the one thread that turns every connection's ring kicks into data-plane
//!   wakeups.
//! - `table.rs`: the port table the data plane follows.
//! - `settings.rs`: the host's knobs of a VF (MAC, VLAN, spoofchk, trust, link, rates).
//! - `knobs.rs`: the one list of VF knobs with their names in QMP, the config file and the
//!   `ip link` words, their types, and where each value goes and comes from.

mod backend;
mod control_loop;
mod io;
mod kicks;
pub mod knobs;
mod pending;
mod port;
mod port_socket;
mod server;
mod session;
mod settings;
mod table;

pub use backend::{NetBackend, DEVICE_FEATURES, MAX_QUEUE_SIZE};
pub use control_loop::{ControlLoop, LoopError, STALL_LIMIT};
pub use io::{VhostIo, VhostRx};
pub use knobs::{Knob, KnobError, KnobValues, KNOBS};
pub use port::{port_event_data, Connection, Port, RssGuard};
pub use port_socket::PortServer;
pub use server::{remove_own_socket, ServerError, ServerHandle};
pub use settings::{
    LinkState, SettingsError, SettingsUpdate, VfSettings, VlanProto, MAX_QOS, MAX_RATE_MBPS,
    MAX_VLAN,
};
pub use table::PortTable;

pub use crate::dma_engine::{GuestBitmap, GuestMem, GuestMemAtomic};

/// One virtqueue as the vhost-user handler shares it.
pub type Vring = vhost_user_backend::VringRwLock<GuestMemAtomic>;
