//! The DMA engine: guest rings and copies. It knows guest memory and virtqueues, nothing of
//! ports, switching or vhost-user connections.
//!
//! - `net_hdr.rs`: the virtio-net header layouts (10 or 12 bytes) and the RX header.
//! - `guest_map.rs`: guest memory types, and guest-physical to host address translation (a
//!   snapshot of the memory table).
//! - `ring.rs`: split virtqueues read and written through host pointers: avail and used
//!   rings, descriptor chain walks (direct and indirect), notification suppression; its unit
//!   tests in `ring_tests.rs`.
//! - `segments.rs`: a descriptor chain validated into a fixed array of host segments (or a
//!   host buffer of a port's own).
//! - `copy.rs`: copies between segment lists and Rust buffers.
//! - `frame.rs`: a frame as a destination receives it (copied head + the rest where the sender
//!   left it), and the copies that write it into RX buffers.
//! - `tx.rs`: a TX chain walked and its head copied out once.
//! - `rx.rs`: a group of frames written into an RX ring (mergeable buffers).
//! - `dirty_log.rs`: the frontend's dirty-page log for live migration, and the switch that
//!   turns it on and off under the data plane.
//!
//! Only this module and the vhost-user glue in `vf` touch guest memory.

mod copy;
pub mod dirty_log;
pub mod frame;
mod guest_map;
mod net_hdr;
mod ring;
pub mod rx;
mod segments;
pub mod tx;

pub use copy::CopyError;
pub use dirty_log::{LogArea, LogSwitch, LogView};
pub use frame::FrameView;
pub use guest_map::{GuestBitmap, GuestMap, GuestMem, GuestMemAtomic};
pub use net_hdr::{rx_header, vnet_hdr_len, VNET_HDR_MAX};
pub use ring::{prefetch, RingAddrs, SplitRing};
pub use segments::{ChainError, Direction, Segment, Segments, MAX_SEGMENTS};
