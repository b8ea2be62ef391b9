//! The PF's wire: uplink ports that carry the switch's traffic off this process, to the host's
//! network stack (a TAP device) or to other hosts (VXLAN over UDP). An uplink is a port kind
//! behind the same seam as a vhost-user port (`port::TxQueues`, `port::RxQueues`).
//!
//! - `tap.rs`: TAP device I/O: open or attach (multi-queue), frames behind the vnet header,
//!   administrative state and MTU; its unit tests (root, network namespaces) in `tap_tests.rs`.

pub mod tap;
