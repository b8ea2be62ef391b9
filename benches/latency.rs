//! Round-trip latency through the switch with one packet in flight, in event mode and in
//! busy-poll mode: a userspace frontend on vf0 sends a 64-byte frame to vf1, whose frontend
//! echoes it back; both frontends wait on their call eventfds like a guest's interrupt handler.
//! Prints p50/p99 and writes docs/benchmarks.md ("Latency").
//!
//!     cargo bench --bench latency

#[path = "common/mod.rs"]
mod common;

use sriov_emu::frontend::FrontendConfig;
use sriov_emu::pf::default_vf_mac;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ROUND_TRIPS: usize = 20_000;

fn frame() -> Vec<u8> {
    let mut f = vec![0u8; 64];
    f[..6].copy_from_slice(&default_vf_mac(1).0);
    f[6..12].copy_from_slice(&default_vf_mac(0).0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f
}

/// Round-trip times in microseconds, sorted.
fn measure(poll: bool) -> Vec<f64> {
    let (_dir, d, mut a, b) = common::two_vfs(poll, FrontendConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut b = b;
            while !stop.load(Ordering::Relaxed) {
                if let Some(mut f) = b.recv_timeout(0, Duration::from_millis(50)) {
                    f.copy_within(6..12, 0);
                    f[6..12].copy_from_slice(&default_vf_mac(1).0);
                    let _ = b.send(0, &f);
                }
            }
        })
    };
    let f = frame();
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS + 1000 {
        let t = Instant::now();
        a.send(0, &f).unwrap();
        a.recv_timeout(0, Duration::from_secs(2))
            .expect("echo came back");
        if i >= 1000 {
            rtts.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    d.shutdown();
    rtts.sort_by(|x, y| x.total_cmp(y));
    rtts
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let event = measure(false);
    let poll = measure(true);
    let row = |name: &str, v: &[f64]| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} |\n",
            common::percentile(v, 50.0),
            common::percentile(v, 99.0),
            common::percentile(v, 99.9)
        )
    };
    let table = format!(
        "| mode | p50 (µs) | p99 (µs) | p99.9 (µs) |\n|---|---|---|---|\n{}{}",
        row("event (kicks, eventfd wake-ups)", &event),
        row("busy-poll (--poll)", &poll)
    );
    let ratio = common::percentile(&event, 50.0) / common::percentile(&poll, 50.0);
    let body = format!(
        "Measured {} on this machine (2 cores) with `cargo bench --bench latency`: {ROUND_TRIPS} round trips of a \
         64-byte frame, one in flight, between two userspace frontends (vf0 -> switch -> vf1, echoed back), each \
         waiting on its call eventfd as a guest's interrupt handler would. The frontends are the peer: their \
         wake-ups are in every figure.\n\n{table}\nEvent / poll at p50: {ratio:.2}x.\n",
        common::today()
    );
    print!("{body}");
    common::write_section("Latency: one packet in flight", &body);
}
