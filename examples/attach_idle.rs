//! Attaches idle userspace frontends to a range of VF sockets and holds them until killed:
//! used by scripts/bench-peers to measure the cost of attached but idle VFs.
//!
//!     cargo run --release --example attach_idle -- SOCKET_DIR FIRST_VF LAST_VF

use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(first), Some(last)) = (
        args.get(1).map(PathBuf::from),
        args.get(2).and_then(|a| a.parse::<u32>().ok()),
        args.get(3).and_then(|a| a.parse::<u32>().ok()),
    ) else {
        eprintln!("usage: attach_idle SOCKET_DIR FIRST_VF LAST_VF");
        return ExitCode::from(2);
    };
    let cfg = FrontendConfig {
        queue_size: 256,
        ..FrontendConfig::default()
    };
    let mut held = Vec::new();
    for vf in first..=last {
        match VirtioNetFrontend::connect(dir.join(format!("vf{vf}.sock")), cfg.clone()) {
            Ok(fe) => held.push(fe),
            Err(e) => {
                eprintln!("attach_idle: vf{vf}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("attached {}", held.len());
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
