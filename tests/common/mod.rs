//! Helpers shared by the integration tests: an in-process emulator, frontends, frames.
#![allow(dead_code)]

/// A missing QEMU / qemu.qmp venv fails a test, or skips it with SRIOV_SKIP_QEMU=1.
pub mod skip;

/// Network namespaces, sockets inside them, raw Ethernet sockets.
pub mod netns;

use sriov_emu::daemon::{Daemon, DaemonConfig};
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::pf::{default_vf_mac, PfConfig};
use sriov_emu::rss::FlowTuple;
use sriov_emu::wire::MacAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Starts an emulator in this process with its sockets in `dir`.
pub fn start_daemon(dir: &Path, vfs: u32, pv: u32, channels: u32, mtu: u32) -> Daemon {
    start_daemon_mode(dir, vfs, pv, channels, mtu, false)
}

/// `start_daemon` with the data plane busy-polling (`--poll`) or not.
pub fn start_daemon_mode(
    dir: &Path,
    vfs: u32,
    pv: u32,
    channels: u32,
    mtu: u32,
    poll: bool,
) -> Daemon {
    let pf = PfConfig::new(dir.to_path_buf(), vfs, pv, channels, mtu).expect("valid pf config");
    Daemon::start(DaemonConfig {
        poll,
        ..DaemonConfig::new(pf)
    })
    .expect("daemon starts")
}

/// Starts an emulator in this process with `cfg` adjusting the defaults.
pub fn start_daemon_cfg(
    dir: &Path,
    vfs: u32,
    pv: u32,
    cfg: impl FnOnce(&mut DaemonConfig),
) -> Daemon {
    let pf = PfConfig::new(dir.to_path_buf(), vfs, pv, 1, 1500).expect("valid pf config");
    let mut c = DaemonConfig::new(pf);
    cfg(&mut c);
    Daemon::start(c).expect("daemon starts")
}

/// Where frontends attach: an in-process `Daemon`, or the socket directory of a running binary
/// (asked through its control socket).
pub trait Host {
    fn socket_dir(&self) -> &Path;
    /// The RX queues `port` has enabled, as the emulator sees them.
    fn enabled_rx(&self, port: &str) -> usize;
}

impl Host for Daemon {
    fn socket_dir(&self) -> &Path {
        Daemon::socket_dir(self)
    }
    fn enabled_rx(&self, port: &str) -> usize {
        self.port(port).map_or(0, |p| p.enabled_rx_queues().len())
    }
}

impl Host for Path {
    fn socket_dir(&self) -> &Path {
        self
    }
    fn enabled_rx(&self, port: &str) -> usize {
        let Ok(mut c) = sriov_emu::control::client::Client::connect(&self.join("control.sock"))
        else {
            return 0;
        };
        let vfs = c
            .execute("query-vfs", serde_json::json!({}))
            .unwrap_or_default();
        let pf = c
            .execute("query-pf", serde_json::json!({}))
            .unwrap_or_default();
        let all = vfs
            .as_array()
            .into_iter()
            .flatten()
            .chain(pf["pv-ports"].as_array().into_iter().flatten());
        all.filter(|p| p["name"] == port)
            .map(|p| p["enabled-queues"].as_array().map_or(0, Vec::len))
            .sum()
    }
}

/// Connects a frontend to `port` and waits until the emulator has it attached with its RX
/// queues enabled, so frames sent right away are not raced against the attach.
pub fn connect<H: Host + ?Sized>(host: &H, port: &str, cfg: FrontendConfig) -> VirtioNetFrontend {
    let path = host.socket_dir().join(format!("{port}.sock"));
    let want = cfg.enabled_pairs;
    let fe =
        VirtioNetFrontend::connect(&path, cfg).unwrap_or_else(|e| panic!("connect {port}: {e}"));
    let t = std::time::Instant::now();
    while want > 0 && host.enabled_rx(port) < want {
        assert!(t.elapsed() < WAIT, "{port} never became ready");
        std::thread::sleep(Duration::from_millis(2));
    }
    fe
}

/// Asserts that the frontends negotiated VIRTIO_F_IN_ORDER and that the emulator used every
/// chain in the order it was posted, as a driver relying on it (DPDK's virtio PMD) expects.
pub fn assert_in_order(fes: &[&VirtioNetFrontend]) {
    for (i, fe) in fes.iter().enumerate() {
        assert_ne!(
            fe.features() & (1 << virtio_bindings::bindings::virtio_config::VIRTIO_F_IN_ORDER),
            0,
            "frontend {i}: VIRTIO_F_IN_ORDER not negotiated"
        );
        assert_eq!(
            fe.out_of_order_completions(),
            0,
            "frontend {i}: chains used out of the order they were posted in"
        );
    }
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

/// The drops a sender's frames can meet at its own edge or in the switch: with
/// `tx_forwarded`, they account for every frame in `tx_packets`.
pub const TX_DROPS: &[&str] = &[
    "drop_malformed",
    "drop_no_destination",
    "drop_same_port",
    "drop_spoofchk",
    "drop_link_down",
    "drop_vlan_filter",
    "fault_drop",
    "fault_delay",
];

pub const WAIT: Duration = Duration::from_secs(5);

/// Waits until `f` holds (or fails after `WAIT` with `what`).
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !f() {
        assert!(t.elapsed() < WAIT, "{what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
pub const QUIET: Duration = Duration::from_millis(300);

pub fn counter(d: &Daemon, port: &str, name: &str) -> u64 {
    d.port(port)
        .unwrap_or_else(|| panic!("no port {port}"))
        .counters
        .get(name)
        .unwrap_or_else(|| panic!("no counter {name}"))
}

/// Writes `frame` behind a zeroed virtio-net header into `fe`'s scratch TX buffer, for a test
/// that builds its own chains around it; returns the buffer's guest address and the length of
/// header + frame.
pub fn frame_in_tx_buffer(fe: &mut VirtioNetFrontend, frame: &[u8]) -> (u64, u32) {
    let mut with_hdr = vec![0u8; fe.hdr_len()];
    with_hdr.extend_from_slice(frame);
    let (buf, _) = fe.tx_buffer(0, &with_hdr);
    (buf, with_hdr.len() as u32)
}

/// The non-zero counters of `ports`, for a failure message that says where frames went.
pub fn nonzero_counters(d: &Daemon, ports: &[&str]) -> String {
    ports
        .iter()
        .map(|p| {
            let c: Vec<String> = d
                .port(p)
                .map(|port| port.counters.snapshot())
                .unwrap_or_default()
                .into_iter()
                .filter(|(_, v)| *v != 0)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            format!("{p}: {}", c.join(" "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Receives exactly `n` frames from any queue pair (or fails after `timeout`).
pub fn recv_n(fe: &mut VirtioNetFrontend, n: usize, timeout: Duration) -> Vec<(usize, Vec<u8>)> {
    let end = std::time::Instant::now() + timeout;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = end.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "received {} of {n} frames", out.len());
        if let Some(x) = fe.recv_any(left.min(Duration::from_millis(100))) {
            out.push(x);
        }
    }
    out
}

/// The resident memory (VmRSS) of process `pid`, KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// One `KiB` field of `/proc/PID/status` (`VmRSS`, `RssShmem`, ...).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// A small deterministic PRNG (xorshift64*), so tests are repeatable without a crate.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A TCP or UDP IPv4 frame of `flow` (`FlowTuple::v4`), with `seq` in the payload.
pub fn l4_frame(dst: MacAddr, src: MacAddr, flow: &FlowTuple, seq: u32) -> Vec<u8> {
    let mut f = udp_frame(dst, src, flow.sport, flow.dport, seq, 80);
    f[23] = flow.proto;
    f[26..30].copy_from_slice(&flow.src[..4]);
    f[30..34].copy_from_slice(&flow.dst[..4]);
    f
}

/// The `seq` written by `udp_frame` / `l4_frame`.
pub fn seq_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes([frame[42], frame[43], frame[44], frame[45]])
}

/// The real `sriov-emu` binary, stopped by its PID on drop.
pub struct Emu {
    pub child: std::process::Child,
    pub dir: tempfile::TempDir,
}

impl Emu {
    pub fn start(args: &[&str]) -> Emu {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
            .arg("run")
            .arg("--socket-dir")
            .arg(dir.path())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let t = std::time::Instant::now();
        while !dir.path().join("control.sock").exists() {
            assert!(t.elapsed() < WAIT, "emulator did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Emu { child, dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn control(&self) -> sriov_emu::control::client::Client {
        sriov_emu::control::client::Client::connect(&self.path().join("control.sock"))
            .expect("control socket")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("emulator.log")).unwrap_or_default()
    }

    /// What `sriov-emu ctl --socket-dir DIR ARGS...` prints; panics with its stderr if it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
            .arg("ctl")
            .arg("--socket-dir")
            .arg(self.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The emulator's resident memory, KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        vm_rss_kib(self.child.id())
    }

    /// The emulator's own resident memory, KiB: VmRSS less the pages of guests' shared memory
    /// it has touched while mapped (`RssShmem`, which comes and goes with the frontends).
    pub fn own_rss_kib(&self) -> u64 {
        let pid = self.child.id();
        vm_rss_kib(pid).saturating_sub(status_kib(pid, "RssShmem"))
    }

    /// Resident pages of guests' shared memory the emulator has mapped, KiB.
    pub fn guest_rss_kib(&self) -> u64 {
        status_kib(self.child.id(), "RssShmem")
    }

    /// One counter of one port, through `query-stats`.
    pub fn counter(&self, port: &str, name: &str) -> u64 {
        let s = self
            .control()
            .execute("query-stats", serde_json::json!({"port": port}))
            .unwrap();
        s[0]["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}: {s}"))
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The python of the test venv (target/qmp-venv, which scripts/setup makes; SRIOV_QMP_VENV
/// names another) if it can `import module`, else what is missing.
pub fn venv_python(module: &str) -> Result<PathBuf, String> {
    let venv = std::env::var_os("SRIOV_QMP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/qmp-venv"));
    let p = venv.join("bin/python");
    let ok = std::process::Command::new(&p)
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(p)
    } else {
        Err(format!(
            "the Python module {module} is not installed in {} (`{} -c 'import {module}'` fails; \
             ./scripts/setup installs it; SRIOV_QMP_VENV names another venv)",
            venv.display(),
            p.display()
        ))
    }
}
