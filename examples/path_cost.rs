//! What the data path's optional features cost: VF -> VF through the real binary with two
//! userspace frontends (this process, pinned to CPU0; the emulator's worker pinned to CPU1, in
//! event mode). Modes, interleaved, RUNS times each: this build plain; with dirty-page logging
//! on (both frontends send SET_LOG_BASE and ack VHOST_F_LOG_ALL, as QEMU does during a
//! migration); with `--capture`, capturing both ports (`--pcap` into a temporary directory);
//! and with `--old BIN` another build plain (e.g. the build before a feature existed).
//!
//! The sender queues bursts of 256 frames (`--burst`) with one kick and waits until the receiver has them
//! all, so every mode sees the same batches. Reported per mode: the rate, and the emulator's
//! CPU time per frame (every thread, on-CPU ns from /proc/PID/task/*/schedstat over the
//! window), which follows the machine's speed swings far less than the rate does. Medians of
//! the runs with the spread, and the ratios to "this build, logging off".
//!
//!     cargo build --release --example path_cost
//!     target/release/examples/path_cost [--old BIN] [--capture] [--runs 5] [--secs 3] [--size 64]

use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::pf::default_vf_mac;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

struct Opts {
    bin: PathBuf,
    old: Option<PathBuf>,
    runs: usize,
    secs: f64,
    size: usize,
    burst: usize,
    capture: bool,
}

fn parse() -> Result<Opts, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/release/examples/log_cost -> target/release/sriov-emu
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("sriov-emu"))
        .ok_or("cannot find target/release/sriov-emu")?;
    let mut o = Opts {
        bin,
        old: None,
        runs: 5,
        secs: 3.0,
        size: 64,
        burst: 256,
        capture: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--old" => o.old = Some(PathBuf::from(val()?)),
            "--capture" => o.capture = true,
            "--bin" => o.bin = PathBuf::from(val()?),
            "--runs" => o.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--secs" => o.secs = val()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--size" => o.size = val()?.parse().map_err(|e| format!("--size: {e}"))?,
            "--burst" => o.burst = val()?.parse().map_err(|e| format!("--burst: {e}"))?,
            "-h" | "--help" => {
                return Err(
                    "usage: path_cost [--old BIN] [--capture] [--bin BIN] [--runs N] [--secs S] \
                            [--size BYTES] [--burst N]"
                        .into(),
                )
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if !(60..=1514).contains(&o.size) {
        return Err("--size: 60..=1514".into());
    }
    if !(1..=1024).contains(&o.burst) {
        return Err("--burst: 1..=1024 (the rings have 1024 entries)".into());
    }
    Ok(o)
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; sched_setaffinity reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// On-CPU ns of every thread of `pid` (schedstat field 1).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

struct Emulator {
    child: Child,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Emulator {
    fn start(bin: &Path, capture: bool) -> Result<Emulator, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().to_path_buf();
        let mut cmd = Command::new(bin);
        cmd.args([
            "run",
            "--vfs",
            "2",
            "--pv-ports",
            "0",
            "--cpus",
            "1",
            "--socket-dir",
        ])
        .arg(&path);
        if capture {
            cmd.arg("--pcap").arg(path.join("pcap"));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let t = Instant::now();
        while !path.join("vf1.sock").exists() {
            if t.elapsed() > Duration::from_secs(10) {
                return Err("the emulator did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Emulator {
            child,
            _dir: dir,
            dir: path,
        })
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// Sends bursts until `until`; returns the frames received.
fn pump(
    tx: &mut VirtioNetFrontend,
    rx: &mut VirtioNetFrontend,
    frame: &[u8],
    burst: usize,
    until: Instant,
) -> Result<u64, String> {
    let mut n = 0u64;
    while Instant::now() < until {
        let sent = tx
            .send_batch(0, std::iter::repeat_n(frame, burst))
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let mut got = 0;
        while got < sent {
            if rx.recv(0).is_some() {
                got += 1;
            } else if t.elapsed() > Duration::from_secs(2) {
                return Err(format!("{got} of {sent} frames arrived"));
            }
        }
        n += sent as u64;
    }
    Ok(n)
}

/// One measurement: (Mpps, emulator CPU ns per frame).
/// A mode: its name, the binary, dirty logging on, capture on.
type Mode = (&'static str, PathBuf, bool, bool);

fn measure(mode: &Mode, o: &Opts) -> Result<(f64, f64), String> {
    let (_, bin, log, capture) = mode;
    let emu = Emulator::start(bin, *capture)?;
    let cfg = FrontendConfig {
        queue_size: 1024,
        ..FrontendConfig::default()
    };
    let mut tx = VirtioNetFrontend::connect(emu.dir.join("vf0.sock"), cfg.clone())
        .map_err(|e| format!("vf0: {e}"))?;
    let mut rx = VirtioNetFrontend::connect(emu.dir.join("vf1.sock"), cfg)
        .map_err(|e| format!("vf1: {e}"))?;
    let _logs = if *log {
        Some((
            tx.start_dirty_log().map_err(|e| format!("vf0 log: {e}"))?,
            rx.start_dirty_log().map_err(|e| format!("vf1 log: {e}"))?,
        ))
    } else {
        None
    };
    let mut frame = vec![0u8; o.size];
    frame[..6].copy_from_slice(&default_vf_mac(1).0);
    frame[6..12].copy_from_slice(&default_vf_mac(0).0);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    pump(
        &mut tx,
        &mut rx,
        &frame,
        o.burst,
        Instant::now() + Duration::from_millis(500),
    )?;
    let (c0, t0) = (cpu_ns(emu.child.id()), Instant::now());
    let n = pump(
        &mut tx,
        &mut rx,
        &frame,
        o.burst,
        t0 + Duration::from_secs_f64(o.secs),
    )?;
    let (c1, secs) = (cpu_ns(emu.child.id()), t0.elapsed().as_secs_f64());
    Ok((n as f64 / secs / 1e6, (c1 - c0) as f64 / n as f64))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    pin_to(0);
    let mut modes: Vec<Mode> = vec![
        ("this build", o.bin.clone(), false, false),
        ("this build, logging on", o.bin.clone(), true, false),
    ];
    if o.capture {
        modes.push(("this build, capture on", o.bin.clone(), false, true));
    }
    if let Some(old) = &o.old {
        modes.push(("older build", old.clone(), false, false));
    }
    let mut results: Vec<Vec<(f64, f64)>> = vec![Vec::new(); modes.len()];
    for r in 0..o.runs {
        for (i, mode) in modes.iter().enumerate() {
            let name = mode.0;
            match measure(mode, &o) {
                Ok(m) => {
                    println!(
                        "run {}: {name}: {:.3} Mpps, {:.0} ns/frame",
                        r + 1,
                        m.0,
                        m.1
                    );
                    results[i].push(m);
                }
                Err(e) => {
                    eprintln!("run {}: {name}: {e}", r + 1);
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    println!(
        "\n{} B frames, bursts of {}, {} runs of {} s, medians [min-max]:",
        o.size, o.burst, o.runs, o.secs
    );
    let summary: Vec<(f64, f64)> = results
        .iter()
        .map(|r| {
            let mut rate: Vec<f64> = r.iter().map(|m| m.0).collect();
            let mut ns: Vec<f64> = r.iter().map(|m| m.1).collect();
            (median(&mut rate), median(&mut ns))
        })
        .collect();
    for (i, (name, ..)) in modes.iter().enumerate() {
        let r = &results[i];
        let lo = |f: fn(&(f64, f64)) -> f64| r.iter().map(f).fold(f64::MAX, f64::min);
        let hi = |f: fn(&(f64, f64)) -> f64| r.iter().map(f).fold(0.0, f64::max);
        println!(
            "  {name:<26} {:.3} Mpps [{:.3}-{:.3}]  {:.0} ns/frame [{:.0}-{:.0}]  ratio {:.3} (rate), {:.3} (ns/frame)",
            summary[i].0,
            lo(|m| m.0),
            hi(|m| m.0),
            summary[i].1,
            lo(|m| m.1),
            hi(|m| m.1),
            summary[i].0 / summary[0].0,
            summary[i].1 / summary[0].1,
        );
    }
    ExitCode::SUCCESS
}
