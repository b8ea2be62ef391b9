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
//! - `capture`: pcapng captures of the ports with the switch's decisions.
//! - `config`: the `--config` TOML file.
//! - `events`: asynchronous events (VF attach, link, FDB moves, numvfs) for control clients.
//! - `daemon`: wires it all together for `sriov-emu run`.
//! - `fuzzing`: the fuzz targets' entry functions (fuzz/, tests/fuzz_smoke.rs, docs/fuzzing.md).
//! - `affinity`: pinning a thread to a CPU.
//! - `ownership`: the group and mode of the sockets the emulator serves.
//! - `service`: running under a service manager: sd_notify readiness, the PID file.
//!
//! Errors: one `thiserror` enum per module. An error's message says what failed; its cause is
//! its `source()`, never repeated in the message, so `ErrorChain` prints each cause once.

pub mod affinity;
pub mod capture;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod dma_engine;
pub mod events;
pub mod faults;
pub mod frontend;
pub mod fuzzing;
pub mod libvirt;
pub mod malloc_arenas;
pub mod ownership;
pub mod pf;
pub mod port;
pub mod rss;
pub mod service;
pub mod stats;
pub mod switch;
pub mod uplink;
pub mod vf;
pub mod wire;

/// An error and its causes on one line, `error: cause: cause of the cause`: how `main` and
/// the control socket report an error.
pub struct ErrorChain<'a>(pub &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(e) = cause {
            write!(f, ": {e}")?;
            cause = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::ErrorChain;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("cannot open /x")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_is_printed_once_in_order() {
        let e = Outer(Middle(std::io::Error::other("no such file")));
        assert_eq!(
            ErrorChain(&e).to_string(),
            "cannot start: cannot open /x: no such file"
        );
    }
}
