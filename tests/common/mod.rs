//! Helpers shared by the integration tests: an in-process emulator, frontends, frames.
#![allow(dead_code)]

use sriov_emu::daemon::{Daemon, DaemonConfig};
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::pf::{default_vf_mac, PfConfig};
use sriov_emu::wire::MacAddr;
use std::path::Path;
use std::time::Duration;

/// Starts an emulator in this process with its sockets in `dir`.
pub fn start_daemon(dir: &Path, vfs: u32, pv: u32, channels: u32, mtu: u32) -> Daemon {
    let pf = PfConfig::new(dir.to_path_buf(), vfs, pv, channels, mtu).expect("valid pf config");
    Daemon::start(DaemonConfig {
        pf,
        fdb_aging_secs: 300,
        stats_interval: None,
    })
    .expect("daemon starts")
}

pub fn connect(dir: &Path, port: &str, cfg: FrontendConfig) -> VirtioNetFrontend {
    let path = dir.join(format!("{port}.sock"));
    VirtioNetFrontend::connect(&path, cfg).unwrap_or_else(|e| panic!("connect {port}: {e}"))
}

pub fn pairs(queue_pairs: usize, enabled: usize) -> FrontendConfig {
    FrontendConfig {
        queue_pairs,
        enabled_pairs: enabled,
        ..FrontendConfig::default()
    }
}

pub fn vf_mac(i: u16) -> MacAddr {
    default_vf_mac(i)
}

/// An IPv4/UDP frame of exactly `len` bytes (>= 42) whose payload encodes `seq`, so the
/// receiver can check every byte.
pub fn udp_frame(
    dst: MacAddr,
    src: MacAddr,
    sport: u16,
    dport: u16,
    seq: u32,
    len: usize,
) -> Vec<u8> {
    assert!(len >= 42);
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (len - 14) as u16;
    f[14] = 0x45;
    f[16..18].copy_from_slice(&ip_len.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&[198, 18, 0, 1]);
    f[30..34].copy_from_slice(&[198, 18, 0, 2]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&dport.to_be_bytes());
    f[38..40].copy_from_slice(&((len - 34) as u16).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
    }
    if len >= 46 {
        f[42..46].copy_from_slice(&seq.to_be_bytes());
    }
    f
}

/// A broadcast frame from `src` (ARP-like, 60 bytes).
pub fn broadcast(src: MacAddr) -> Vec<u8> {
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&MacAddr::BROADCAST.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f
}

pub const WAIT: Duration = Duration::from_secs(5);
pub const QUIET: Duration = Duration::from_millis(300);

pub fn counter(d: &Daemon, port: &str, name: &str) -> u64 {
    d.port(port)
        .unwrap_or_else(|| panic!("no port {port}"))
        .counters
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name}"))
}
