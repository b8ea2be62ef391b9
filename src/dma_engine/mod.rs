//! The DMA engine: virtqueue processing and guest-to-guest copies.
//!
//! - `net_hdr.rs`: the virtio-net header layouts (10 or 12 bytes) and the RX header.
//! - `segments.rs`: a descriptor chain validated into a fixed array of guest segments.
//! - `copy.rs`: copies between segment lists of two guests' memories, through vm-memory
//!   slices (so dirty-page logging sees every write).
//! - `worker.rs`: the data-plane thread: TX pop, switch, RX fill with mergeable buffers,
//!   used-ring updates and notifications, all batched.
//!
//! Only this module and `vf` touch guest memory.

mod copy;
mod net_hdr;
mod segments;
mod worker;

pub use copy::{copy_segments, read_segments, write_segments, CopyError};
pub use net_hdr::{rx_header, vnet_hdr_len, VNET_HDR_MAX};
pub use segments::{ChainError, Direction, Segment, Segments, MAX_SEGMENTS};
pub use worker::{DataPlane, Waker};
