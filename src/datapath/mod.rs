//! The pipeline between ports: what happens to a batch of frames after it leaves a TX ring and
//! before it is written into RX rings.
//!
//! - `groups.rs`: deliveries grouped by destination RX ring in one pass, in order.
pub mod groups;
