//! sriov-emu: a software model of an SR-IOV 10G adapter for QEMU guests over vhost-user.
//!
//! - `wire`: frame parsing (MACs, headers, flow hash); no guest memory.
//! - `switch`: the embedded L2 switch (FDB, verdicts); no guest memory.
//! - `stats`: per-port and per-queue counters with `ethtool -S` names.
//! - `pf`: PF resources: VF table, channels, MACs, socket paths.
//! - `rss`: Toeplitz RSS, indirection tables and flow steering per VF; no guest memory.
//! - `vf`: VF and PV ports as vhost-user virtio-net backends.
//! - `dma_engine`: virtqueue processing and guest-to-guest copies (the data plane).
//! - `frontend`: a userspace vhost-user virtio-net driver: "a guest in a test".
//! - `config`: the `--config` TOML file.
//! - `events`: asynchronous events (VF attach, link, FDB moves, numvfs) for control clients.
//! - `daemon`: wires it all together for `sriov-emu run`.

pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dma_engine;
pub mod events;
pub mod frontend;
pub mod pf;
pub mod port;
pub mod rss;
pub mod stats;
pub mod switch;
pub mod vf;
pub mod wire;
