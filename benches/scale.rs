//! Memory, threads and idle CPU of the emulator with 254 attached VFs (issue: PF resources at
//! full scale). Not a timed test: it prints figures and writes them to docs/benchmarks.md.
//!
//!     cargo bench --bench scale            (about a minute)
//!
//! Each configuration runs the release binary, attaches userspace frontends (8 queue pairs per
//! VF, all enabled, 256-entry rings), lets everything settle, then samples the emulator's
//! /proc: resident memory, threads, and CPU time used over an idle window. The peer is the same
//! binary with one VF attached, measured in the same run.

#[path = "common/mod.rs"]
mod common;

use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const IDLE_WINDOW: Duration = Duration::from_secs(20);

struct Sample {
    name: &'static str,
    attached: usize,
    rss_mib: f64,
    threads: u64,
    idle_cpu_pct: f64,
}

fn status_field(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is field 14, stime 15.
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

fn start(dir: &Path, vfs: u32) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
        .args([
            "run",
            "--pv-ports",
            "0",
            "--channels-per-vf",
            "8",
            "--vfs",
            &vfs.to_string(),
            "--socket-dir",
        ])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sriov-emu");
    let last = dir.join(format!("vf{}.sock", vfs - 1));
    let t = Instant::now();
    while !last.exists() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "emulator did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn measure(name: &'static str, vfs: u32, attach: usize) -> Sample {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = start(dir.path(), vfs);
    let pid = child.id();
    let cfg = FrontendConfig {
        queue_pairs: 8,
        enabled_pairs: 8,
        queue_size: 256,
        ..FrontendConfig::default()
    };
    let t = Instant::now();
    let mut fes: Vec<VirtioNetFrontend> = (0..attach)
        .map(|i| {
            VirtioNetFrontend::connect(dir.path().join(format!("vf{i}.sock")), cfg.clone())
                .expect("attach")
        })
        .collect();
    eprintln!(
        "{name}: attached {attach} VFs in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    // One frame through every attached VF, so every ring has been touched once.
    for (i, fe) in fes.iter_mut().enumerate() {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&[2, 0, 0, 0, i as u8, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, i as u8, 1]);
        let _ = fe.send(0, &f);
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(pid);
    std::thread::sleep(IDLE_WINDOW);
    let ticks = cpu_ticks(pid) - before;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let sample = Sample {
        name,
        attached: attach,
        rss_mib: status_field(pid, "VmRSS:") as f64 / 1024.0,
        threads: status_field(pid, "Threads:"),
        idle_cpu_pct: ticks as f64 / hz / IDLE_WINDOW.as_secs_f64() * 100.0,
    };
    drop(fes);
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let _ = child.wait();
    sample
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let peer = measure("1 VF attached (peer)", 254, 1);
    let full = measure("254 VFs attached", 254, 254);
    let mut table = String::from(
        "| configuration | attached VFs | resident memory (MiB) | threads | idle CPU (% of one core) |\n|---|---|---|---|---|\n",
    );
    for s in [&peer, &full] {
        table += &format!(
            "| {} | {} | {:.1} | {} | {:.2} |\n",
            s.name, s.attached, s.rss_mib, s.threads, s.idle_cpu_pct
        );
    }
    let rss_ok = full.rss_mib < 256.0;
    let cpu_ok = full.idle_cpu_pct < 2.0;
    let verdict = format!(
        "Ratios 254 / 1 attached: memory {:.1}x, threads {:.1}x. Goals: memory under 256 MiB: {} ({:.1} MiB); idle CPU under 2% of one core: {} ({:.2}%).\n",
        full.rss_mib / peer.rss_mib.max(0.1),
        full.threads as f64 / peer.threads.max(1) as f64,
        if rss_ok { "met" } else { "NOT met" },
        full.rss_mib,
        if cpu_ok { "met" } else { "NOT met" },
        full.idle_cpu_pct,
    );
    print!("{table}\n{verdict}");
    let body = format!(
        "Measured {} on this machine (2 cores) with `cargo bench --bench scale`: the release \
         binary with `--vfs 254 --channels-per-vf 8`, userspace frontends attached (8 queue pairs each, all enabled, \
         256-entry rings), then {} s idle. Resident memory and threads from /proc/PID/status, CPU from utime+stime.\n\n{table}\n{verdict}",
        common::today(),
        IDLE_WINDOW.as_secs()
    );
    common::write_section("Scale: 254 attached VFs", &body);
}
