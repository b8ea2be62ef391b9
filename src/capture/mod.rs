//! Packet capture for debugging: pcapng per port with the switch's decisions.
//!
//! - `record.rs`: one captured frame as the data plane hands it over (a slot of the capture's
//!   pool: its bytes up to the snap length, the switch's decision) and the decision's text.
//! - `pcapng.rs`: the file: an interface per port and `drops`, nanosecond timestamps, the
//!   direction and the decision on every packet; a ring of files under a size limit.
//! - `hub.rs`: the running captures, as the control plane changes them and as each worker
//!   sees them (one relaxed load per batch while none runs).
//! - `session.rs`: a running capture: its ports, its slot pool, the bounded queue to its writer
//!   thread; frames it had no slot for are counted (`capture_dropped`), never waited for.
//!
//! - `replay.rs`: the frames of a pcap or pcapng file, for `sriov-emu replay`.
//!
//! Capture is a hook on the pipeline (`datapath`), not a switch port: it never learns or
//! receives floods, and it changes nothing the switch decides.

pub mod hub;
pub mod pcapng;
pub mod record;
pub mod replay;
pub mod session;

pub use hub::{CaptureHub, HubView};
pub use pcapng::{PcapngError, PcapngOut};
pub use record::{Decision, Direction, Record, VlanAction};
pub use session::{CaptureSession, CaptureStats, PortSet};
