//! A 64-frame broadcast batch from the PV port delivered to N attached VFs: the data-plane
//! worker's CPU time per delivery with 8 and with 254 destinations. Delivery grouping is linear, so 254 destinations
//! must cost at most 1.5x per delivery what 8 do; the bench fails otherwise.
//!
//!     cargo bench --bench broadcast          (about a minute; 255 frontends in this process)
//!
//! The time measured is the worker thread's on-CPU time (/proc/self/task/TID/schedstat), not
//! wall time: the bench thread's own work (queueing the frames, draining 254 receivers) is not
//! the data plane's. Figures go to docs/benchmarks.md.

#[path = "common/mod.rs"]
mod common;

use criterion::{criterion_group, BenchmarkId, Criterion};
use sriov_emu::daemon::{Daemon, DaemonConfig};
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::pf::PfConfig;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const LIMIT: f64 = 1.5;

/// Per destination count: (worker CPU ns, deliveries) summed over every measured batch.
static TOTALS: Mutex<Vec<(usize, u64, u64)>> = Mutex::new(Vec::new());

/// On-CPU nanoseconds of the thread named `name` in this process.
fn thread_cpu_ns(name: &str) -> Option<u64> {
    for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let s = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
            return s.split_whitespace().next()?.parse().ok();
        }
    }
    None
}

struct Setup {
    _dir: tempfile::TempDir,
    d: Daemon,
    tx: VirtioNetFrontend,
    rx: Vec<VirtioNetFrontend>,
    frame: Vec<u8>,
}

fn setup(dests: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pf = PfConfig::new(dir.path().to_path_buf(), dests as u32, 1, 1, 1500).unwrap();
    let d = Daemon::start(DaemonConfig::new(pf)).unwrap();
    let cfg = FrontendConfig {
        tx_buf_size: 256,
        ..FrontendConfig::default()
    };
    let fe = |name: String| {
        let f = VirtioNetFrontend::connect(dir.path().join(format!("{name}.sock")), cfg.clone())
            .unwrap();
        let t = Instant::now();
        while d
            .port(&name)
            .is_none_or(|p| p.enabled_rx_queues().is_empty())
        {
            assert!(t.elapsed() < Duration::from_secs(10), "{name} never ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        f
    };
    let tx = fe("pv0".into());
    let rx = (0..dests).map(|i| fe(format!("vf{i}"))).collect();
    let mut frame = vec![0u8; 60];
    frame[..6].fill(0xff);
    // A MAC of the PV guest's own (any source is fine on a PV port).
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xaa, 0x01]);
    frame[12..14].copy_from_slice(&[0x08, 0x06]);
    Setup {
        _dir: dir,
        d,
        tx,
        rx,
        frame,
    }
}

/// Sends one broadcast batch and waits until every destination has it all.
fn one_batch(s: &mut Setup) {
    let frames = vec![s.frame.as_slice(); BATCH];
    let mut sent = 0;
    while sent < BATCH {
        sent += s.tx.send_batch(0, frames[sent..].iter().copied()).unwrap();
    }
    let t = Instant::now();
    for (i, r) in s.rx.iter_mut().enumerate() {
        let mut got = 0;
        while got < BATCH {
            if r.recv(0).is_some() {
                got += 1;
            } else {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "destination {i} got {got} of {BATCH}"
                );
                std::thread::yield_now();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("broadcast_batch_64");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for dests in [8usize, 254] {
        let mut s = setup(dests);
        g.bench_with_input(BenchmarkId::new("destinations", dests), &dests, |b, _| {
            b.iter_custom(|iters| {
                let before = thread_cpu_ns("dataplane0").expect("worker thread");
                for _ in 0..iters {
                    one_batch(&mut s);
                }
                let ns = thread_cpu_ns("dataplane0").expect("worker thread") - before;
                let mut t = TOTALS.lock().unwrap();
                match t.iter_mut().find(|e| e.0 == dests) {
                    Some(e) => {
                        e.1 += ns;
                        e.2 += iters * (BATCH * dests) as u64;
                    }
                    None => t.push((dests, ns, iters * (BATCH * dests) as u64)),
                }
                Duration::from_nanos(ns)
            })
        });
        let drops: u64 = (0..dests)
            .map(|i| {
                s.d.port(&format!("vf{i}"))
                    .and_then(|p| p.counters.get("drop_no_rx_buffer"))
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(
            drops, 0,
            "receivers ran out of buffers: the bench measures drops"
        );
        drop(s);
    }
    g.finish();
}

fn report() {
    let t = TOTALS.lock().unwrap().clone();
    let per = |n: usize| {
        t.iter()
            .find(|e| e.0 == n)
            .map(|e| e.1 as f64 / e.2 as f64)
            .unwrap_or(f64::NAN)
    };
    let (few, many) = (per(8), per(254));
    let ratio = many / few;
    let body = format!(
        "`cargo bench --bench broadcast` ({}): a 64-frame broadcast batch from the PV port, \
         delivered to every attached VF; the data-plane worker's on-CPU time per delivery \
         (mean over every measured batch; event mode, one worker).\n\n\
         | destinations | ns per delivery |\n|---|---|\n| 8 | {few:.1} |\n| 254 | {many:.1} |\n\n\
         254 / 8 per delivery: **{ratio:.2}** (limit {LIMIT}: grouping is linear in the \
         deliveries, one ring lock and one used-index store per destination ring).",
        common::today()
    );
    println!("\n{body}");
    common::write_section("Broadcast fan-out", &body);
    assert!(
        ratio <= LIMIT,
        "254 destinations cost {ratio:.2}x per delivery what 8 do (limit {LIMIT})"
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    report();
}
