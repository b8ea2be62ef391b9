//! Frame parsing for the switch, independent of any transport.
//!
//! - `mac.rs`: `MacAddr`, parsing and display.
//! - `ethernet.rs`: the L2 header view (`FrameHeader`) the switch decides on.
//! - `rarp.rs`: the RARP that announces a migrated guest's MAC.
//! - `checksum.rs`: the Internet checksum, for test frames and fixtures.
//!
//! Parsing works on a copy of the first bytes of a frame taken once from guest memory, so a
//! guest rewriting its buffer cannot change a decision after it was made.

pub mod checksum;
mod ethernet;
mod mac;
mod rarp;

pub use ethernet::{FrameHeader, ParseError, ETH_HEADER_LEN, HEADER_COPY_LEN};
pub use mac::{MacAddr, MacParseError};
pub use rarp::{write_rarp_announce, ETHERTYPE_RARP, RARP_FRAME_LEN};
