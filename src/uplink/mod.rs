//! The PF's wire: uplink ports that carry the switch's traffic off this process, to the host's
//! network stack (a TAP device) or to other hosts (VXLAN over UDP). An uplink is a port kind
//! behind the same seam as a vhost-user port (`port::TxQueues`, `port::RxQueues`).
//!
//! - `spec.rs`: the `--uplink` value (`tap:...`, `vxlan:...`) parsed and printed, and the MTU
//!   arithmetic (VXLAN's 36/56 bytes of overhead); unit tests in `spec_tests.rs`.

pub mod spec;
