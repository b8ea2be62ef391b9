//! How long one cache line takes to move between two CPUs, in ns: two threads pinned to CPU A
//! and CPU B bounce a counter in one line, and the time per one-way handoff is printed (the
//! median of 5 rounds of 200,000 round trips). Used by scripts/bench-peers beside every run:
//! on this machine the figure is either about 40 ns or about 200 ns (the host places the VM's
//! two vCPUs on cores that share a last-level cache or not), and a switch's cost per frame,
//! which moves several lines between the guest's CPU and its own, follows it.
//!
//!     cargo run --release --example line_transfer -- [CPU_A CPU_B]   (default 0 1)

use sriov_emu::affinity::pin_current_thread;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// The line both threads write, alone in its cache line.
#[repr(align(128))]
struct Line(AtomicU64);

const ROUND_TRIPS: u64 = 200_000;
const ROUNDS: usize = 5;

/// One round: ns per one-way handoff.
fn round(a: usize, b: usize) -> Result<f64, String> {
    let line = Arc::new(Line(AtomicU64::new(0)));
    let other = line.clone();
    let pong = std::thread::spawn(move || -> Result<(), String> {
        pin_current_thread(b).map_err(|e| format!("cannot pin to CPU {b}: {e}"))?;
        for i in 0..ROUND_TRIPS {
            while other.0.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            other.0.store(2 * i + 2, Ordering::Release);
        }
        Ok(())
    });
    pin_current_thread(a).map_err(|e| format!("cannot pin to CPU {a}: {e}"))?;
    let t = Instant::now();
    for i in 0..ROUND_TRIPS {
        line.0.store(2 * i + 1, Ordering::Release);
        while line.0.load(Ordering::Acquire) != 2 * i + 2 {
            std::hint::spin_loop();
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / (2 * ROUND_TRIPS) as f64;
    pong.join()
        .map_err(|_| "the other thread panicked".to_string())??;
    Ok(ns)
}

fn main() -> ExitCode {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (a, b) = match args.as_slice() {
        [] => (0, 1),
        [a, b] => (*a, *b),
        _ => {
            eprintln!("usage: line_transfer [CPU_A CPU_B]");
            return ExitCode::from(2);
        }
    };
    let mut ns = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        match round(a, b) {
            Ok(v) => ns.push(v),
            Err(e) => {
                eprintln!("line_transfer: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ns.sort_by(f64::total_cmp);
    println!("{:.1}", ns[ROUNDS / 2]);
    ExitCode::SUCCESS
}
