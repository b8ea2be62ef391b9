//! VF and PV ports: per-port runtime state and the vhost-user glue.
//!
//! - `port.rs`: `Port`, shared between the vhost-user threads and the data plane; its current
//!   frontend `Connection` (guest memory, vrings, negotiated features, pending TX kicks).
//! - `backend.rs`: `NetBackend`, the `VhostUserBackend` for one connection: features, queues,
//!   and kick handling (which only wakes the data plane).
//! - `server.rs`: the accept loop of one port's socket: a new daemon per frontend, so a port
//!   accepts the next frontend after the old one left; stoppable when the port goes away.
//! - `table.rs`: the port table the data plane follows.
//! - `settings.rs`: the host's knobs of a VF (MAC, VLAN, spoofchk, trust, link, rates).
//! - `knobs.rs`: the one list of VF knobs with their names in QMP, the config file and the
//!   `ip link` words, their types, and where each value goes and comes from.

mod backend;
pub mod knobs;
mod port;
mod server;
mod settings;
mod table;

pub use backend::{NetBackend, DEVICE_FEATURES, MAX_QUEUE_SIZE};
pub use knobs::{Knob, KnobError, KnobValues, KNOBS};
pub use port::{Connection, Port, RssGuard};
pub use server::{port_event_data, PortServer, ServerError, ServerHandle};
pub use settings::{
    LinkState, SettingsError, SettingsUpdate, VfSettings, VlanProto, MAX_QOS, MAX_RATE_MBPS,
    MAX_VLAN,
};
pub use table::PortTable;

/// Dirty-page bitmap type for guest memory. `()`: dirty logging (LOG_ALL / LOG_SHMFD) is not
/// offered yet, and vhost-user-backend's `BitmapMmapRegion` takes an RwLock on every write
/// even while logging is off (about 10% of the data plane's time under load, measured with
/// perf). Migration support will bring a bitmap that costs nothing while logging is off.
pub type GuestBitmap = ();
/// Guest memory as the backend maps it.
pub type GuestMem = vm_memory::GuestMemoryMmap<GuestBitmap>;
/// Guest memory that SET_MEM_TABLE can replace under the data plane.
pub type GuestMemAtomic = vm_memory::GuestMemoryAtomic<GuestMem>;
/// One virtqueue as the vhost-user handler shares it.
pub type Vring = vhost_user_backend::VringRwLock<GuestMemAtomic>;
