//! The PF's wire: uplink ports that carry the switch's traffic off this process, to the host's
//! network stack (a TAP device) or to other hosts (VXLAN over UDP). An uplink is a port kind
//! behind the same seam as a vhost-user port (`port::TxQueues`, `port::RxQueues`).
//!
//! - `device.rs`: `Uplink`, the wire as the data plane shares it: the device, the largest
//!   frame it carries, its carrier, its counters, keepalives for `carrier=peer`.
//! - `io.rs`: `UplinkIo`, the seam for a worker: frames read (TAP) or received and
//!   decapsulated (VXLAN) into the switch, frames written or encapsulated onto the wire.
//! - `remotes.rs`: a VXLAN uplink's remote VTEPs, their counters, when each was heard from.
//! - `spec.rs`: the `--uplink` value (`tap:...`, `vxlan:...`) parsed and printed, and the MTU
//!   arithmetic (VXLAN's 36/56 bytes of overhead); unit tests in `spec_tests.rs`.
//! - `tap.rs`: TAP device I/O: open or attach (multi-queue), frames behind the vnet header,
//!   administrative state and MTU; its unit tests (root, network namespaces) in `tap_tests.rs`.
//! - `vxlan_header.rs`: the RFC 7348 header, built and checked.
//! - `udp_batch.rs`: a non-blocking UDP socket read with `recvmmsg` and written with
//!   `sendmmsg` into buffers allocated once, counting its syscalls; unit tests in
//!   `udp_batch_tests.rs`, the test against Linux's vxlan in `tests/uplink_vxlan.rs`.
//! - `socket.rs`: the C side of `udp_batch.rs`: socket addresses to and from
//!   `sockaddr_storage`, socket buffer sizes.

mod device;
mod io;
mod remotes;
mod socket;
pub mod spec;
pub mod tap;
pub mod udp_batch;
mod udp_offload;
pub mod vxlan_header;

pub use device::{Uplink, UplinkCounters, UplinkError, Wire};
pub use io::{UplinkIo, UplinkRx};
pub use remotes::MAX_REMOTES;
pub use spec::UplinkSpec;
