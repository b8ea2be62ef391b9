//! The DMA engine: virtqueue processing and guest-to-guest copies.
//!
//! - `net_hdr.rs`: the virtio-net header layouts (10 or 12 bytes) and the RX header.
//! - `guest_map.rs`: guest-physical to host address translation (a snapshot of the memory
//!   table).
//! - `ring.rs`: split virtqueues read and written through host pointers: avail and used
//!   rings, descriptor chain walks (direct and indirect), notification suppression.
//! - `segments.rs`: a descriptor chain validated into a fixed array of host segments.
//! - `copy.rs`: copies between segment lists of two guests' memories.
//! - `worker.rs`: the data-plane workers: TX pop, switch, RX fill with mergeable buffers,
//!   used-ring updates and notifications, all batched.
//!
//! Only this module and `vf` touch guest memory.

mod copy;
mod guest_map;
mod net_hdr;
mod ring;
mod segments;
mod worker;

pub use copy::CopyError;
pub use guest_map::GuestMap;
pub use net_hdr::{rx_header, vnet_hdr_len, VNET_HDR_MAX};
pub use ring::SplitRing;
pub use segments::{ChainError, Direction, Segment, Segments, MAX_SEGMENTS};
pub use worker::{DataPlane, Waker};
