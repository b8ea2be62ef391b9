//! Shared by the benches: writing their sections of docs/benchmarks.md.
#![allow(dead_code)]

use sriov_emu::daemon::{Daemon, DaemonConfig};
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::pf::PfConfig;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// An in-process emulator with two VFs and a frontend attached to each (`cfg`), returned once
/// vf1 has its RX queues enabled, so the first frame is not raced against the attach.
pub fn two_vfs(
    poll: bool,
    cfg: FrontendConfig,
) -> (
    tempfile::TempDir,
    Daemon,
    VirtioNetFrontend,
    VirtioNetFrontend,
) {
    let dir = tempfile::tempdir().unwrap();
    let pf = PfConfig::new(dir.path().to_path_buf(), 2, 0, 1, 1500).unwrap();
    let d = Daemon::start(DaemonConfig {
        poll,
        ..DaemonConfig::new(pf)
    })
    .unwrap();
    let a = VirtioNetFrontend::connect(dir.path().join("vf0.sock"), cfg.clone()).unwrap();
    let b = VirtioNetFrontend::connect(dir.path().join("vf1.sock"), cfg).unwrap();
    while d
        .port("vf1")
        .is_none_or(|p| p.enabled_rx_queues().is_empty())
    {
        std::thread::sleep(Duration::from_millis(1));
    }
    (dir, d, a, b)
}

/// Today's date (UTC), for the record.
pub fn today() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces (or appends) the section `## {title}` of docs/benchmarks.md with `body`.
pub fn write_section(title: &str, body: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/benchmarks.md");
    let doc = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_string());
    let heading = format!("## {title}");
    let section = format!("{heading}\n\n{}\n", body.trim_end());
    let new = match doc.find(&heading) {
        Some(s) => {
            let end = doc[s + 3..]
                .find("\n## ")
                .map(|e| s + 3 + e + 1)
                .unwrap_or(doc.len());
            format!("{}{}\n{}", &doc[..s], section, &doc[end..])
        }
        None => format!("{}\n\n{section}", doc.trim_end()),
    };
    if let Err(e) = std::fs::write(&path, new.trim_end().to_string() + "\n") {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

/// The `p`-th percentile (0..=100) of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    let i = ((sorted.len() - 1) as f64 * p / 100.0).round() as usize;
    sorted[i]
}
