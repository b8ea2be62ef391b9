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

use criterion::{BenchmarkId, Criterion};
use sriov_emu::daemon::{Daemon, DaemonConfig};
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::pf::PfConfig;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const LIMIT: f64 = 1.5;

/// Interleaved rounds of the recorded figures, and batches per round.
const ROUNDS: usize = 7;
const BATCHES_PER_ROUND: usize = 40;

/// The TIDs of this process's threads named `name`.
fn threads_named(name: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == name))
        .map(|t| t.file_name().to_string_lossy().to_string())
        .collect()
}

/// On-CPU nanoseconds of thread `tid` of this process.
fn thread_cpu_ns(tid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("the worker thread's schedstat")
}

struct Setup {
    _dir: tempfile::TempDir,
    d: Daemon,
    /// The daemon's data-plane worker.
    worker: String,
    dests: usize,
    tx: VirtioNetFrontend,
    rx: Vec<VirtioNetFrontend>,
    frame: Vec<u8>,
}

fn setup(dests: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pf = PfConfig::new(dir.path().to_path_buf(), dests as u32, 1, 1, 1500).unwrap();
    let before = threads_named("dataplane0");
    let d = Daemon::start(DaemonConfig::new(pf)).unwrap();
    let t = Instant::now();
    let worker = loop {
        if let Some(w) = threads_named("dataplane0")
            .into_iter()
            .find(|t| !before.contains(t))
        {
            break w;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no worker thread");
        std::thread::sleep(Duration::from_millis(1));
    };
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
        worker,
        dests,
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

/// The worker's on-CPU nanoseconds per delivery over `batches` broadcast batches.
fn ns_per_delivery(s: &mut Setup, batches: usize) -> f64 {
    let before = thread_cpu_ns(&s.worker);
    for _ in 0..batches {
        one_batch(s);
    }
    (thread_cpu_ns(&s.worker) - before) as f64 / (batches * BATCH * s.dests) as f64
}

fn bench(c: &mut Criterion, setups: &mut [Setup]) {
    let mut g = c.benchmark_group("broadcast_batch_64");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for s in setups.iter_mut().filter(|s| s.dests > 1) {
        let dests = s.dests;
        g.bench_with_input(BenchmarkId::new("destinations", dests), &dests, |b, _| {
            b.iter_custom(|iters| {
                let before = thread_cpu_ns(&s.worker);
                for _ in 0..iters {
                    one_batch(s);
                }
                Duration::from_nanos(thread_cpu_ns(&s.worker) - before)
            })
        });
    }
    g.finish();
}

/// The recorded figures: rounds over every setup in turn, medians and spread.
fn interleaved(setups: &mut [Setup]) {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); setups.len()];
    for _ in 0..ROUNDS {
        for (i, s) in setups.iter_mut().enumerate() {
            samples[i].push(ns_per_delivery(s, BATCHES_PER_ROUND));
        }
    }
    for s in setups.iter() {
        let drops: u64 = (0..s.dests)
            .map(|i| {
                s.d.port(&format!("vf{i}"))
                    .and_then(|p| p.counters.get("drop_no_rx_buffer"))
                    .unwrap_or(0)
            })
            .sum();
        assert_eq!(
            drops, 0,
            "receivers ran out of buffers: the bench would measure drops"
        );
    }
    let stats: Vec<(usize, f64, f64, f64)> = setups
        .iter()
        .zip(&mut samples)
        .map(|(s, v)| {
            v.sort_by(f64::total_cmp);
            (s.dests, v[v.len() / 2], v[0], v[v.len() - 1])
        })
        .collect();
    let median = |n: usize| stats.iter().find(|e| e.0 == n).map_or(f64::NAN, |e| e.1);
    let ratio = median(254) / median(8);
    let rows: String = stats
        .iter()
        .map(|(n, med, lo, hi)| format!("| {n} | {med:.1} | {lo:.1}-{hi:.1} |\n"))
        .collect();
    let body = format!(
        "`cargo bench --bench broadcast` ({}): a 64-frame broadcast batch from the PV port, \
         delivered to every attached VF (1 destination: the per-frame cost of the whole path); \
         the data-plane worker's on-CPU time per delivery (schedstat), event mode, one worker. \
         {ROUNDS} interleaved rounds of {BATCHES_PER_ROUND} batches per setup: median and \
         spread of the rounds.\n\n\
         | destinations | ns per delivery, median | min-max |\n|---|---|---|\n{rows}\n\
         254 / 8 per delivery: **{ratio:.2}** (limit {LIMIT}: grouping is linear in the \
         deliveries, one ring lock and one used-index store per destination ring; before the \
         grouping was made linear this was 3.95).",
        common::today()
    );
    println!("\n{body}");
    common::write_section("Broadcast fan-out", &body);
    assert!(
        ratio <= LIMIT,
        "254 destinations cost {ratio:.2}x per delivery what 8 do (limit {LIMIT})"
    );
}

fn main() {
    let mut setups: Vec<Setup> = [1usize, 8, 254].into_iter().map(setup).collect();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c, &mut setups);
    c.final_summary();
    interleaved(&mut setups);
}
