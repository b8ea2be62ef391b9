//! The pipeline between ports: a batch of frames from one port's TX queue, through the switch,
//! into other ports' RX queues, on data-plane worker threads.
//!
//! - `worker.rs`: the worker threads: sleeping on kicks or busy-polling, CPU pinning, which TX
//!   queues each worker serves, FDB aging.
//! - `views.rs`: a worker's view of the ports (attached or not, settings as the switch enforces
//!   them, RSS steering), following the port table without locks on the fast path.
//! - `ports.rs`: every port kind behind one enum (static dispatch over `port::TxQueues` and
//!   `port::RxQueues`).
//! - `pipeline.rs`: one TX batch: pop, edge policy, FDB (one switch lock), fan-out, egress
//!   policy and steering, completion.
//! - `groups.rs`: deliveries grouped by destination RX ring in one pass, in order.
//! - `deliver.rs`: the groups written into RX rings, counted once per group.
//!
//! - `busy.rs`: each worker's busy and idle cycles (TSC), for `query-workers`.
//! - `tap.rs`: the capture hook: records of the batch's frames for the running captures
//!   (`capture`), one relaxed load per batch while none runs. A capture is not a port.

pub mod busy;
mod deliver;
pub mod groups;
mod pipeline;
mod ports;
mod tap;
mod views;
mod worker;

pub use worker::DataPlane;

/// Chains popped from a TX ring per lock hold, and frames decided together.
pub const TX_BATCH: usize = crate::port::MAX_BATCH;

/// The data plane's clock (the switch's: FDB ages and rate buckets).
pub use crate::switch::now_ns;
