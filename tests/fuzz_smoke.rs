//! The fuzz targets (`sriov_emu::fuzzing`) on the stable toolchain, bounded in time: what CI
//! runs (docs/fuzzing.md). For each target: every seed of fixtures/fuzz/<target>/ (which
//! together must reach every stage of the target), then inputs mutated from them for
//! `SRIOV_FUZZ_SECS` seconds (default 60): bit flips, byte inserts and deletes, copies,
//! interesting values, small deltas, splices and tokens of fuzz/dict/<target>.dict, from a
//! seeded PRNG (`SRIOV_FUZZ_SEED`, else a fixed seed per target). An input that reaches a new
//! set of stages joins the pool mutated from: a coarse feedback, no coverage instrumentation.
//!
//! A finding is a panic (or no progress for `HANG_SECS`): the input is saved under
//! target/fuzz-findings/<target>/ and the test fails with the file's path and the input in hex.
//! Progress (execs per target) goes straight to stderr, so it shows without `--nocapture`.
//! Run longer: `SRIOV_FUZZ_SECS=3600 cargo test --release --test fuzz_smoke desc_chain`.

#[path = "fuzz_smoke/seeds.rs"]
mod seeds;

use sriov_emu::fuzzing::{Reached, Target, TARGETS};
use std::collections::HashSet;
use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An exec that takes this long is a hang (the targets take microseconds).
const HANG_SECS: u64 = 30;
/// Longest mutated input.
const MAX_LEN: usize = 20_000;
/// Most inputs in the pool (seeds plus those that reached new stages).
const MAX_POOL: usize = 512;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A line on stderr past the harness's capture.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn fuzz_secs() -> f64 {
    std::env::var("SRIOV_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60.0)
}

/// The seed inputs of a target, by file name.
fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fixtures/fuzz").join(name);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap_or_default())
        })
        .collect();
    out.sort();
    out
}

/// The tokens of a libFuzzer dictionary (`name="value"` or `"value"` lines, `\xNN` and `\\`
/// `\"` escapes).
fn dictionary(name: &str) -> Vec<Vec<u8>> {
    let path = root().join("fuzz/dict").join(format!("{name}.dict"));
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (Some(a), Some(b)) = (line.find('"'), line.rfind('"')) else {
            continue;
        };
        if b <= a {
            continue;
        }
        let raw = &line.as_bytes()[a + 1..b];
        let mut tok = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            match (raw[i], raw.get(i + 1)) {
                (b'\\', Some(b'x')) if i + 3 < raw.len() => {
                    let hex = std::str::from_utf8(&raw[i + 2..i + 4]).unwrap_or("");
                    tok.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                    i += 4;
                }
                (b'\\', Some(&c)) => {
                    tok.push(c);
                    i += 2;
                }
                (c, _) => {
                    tok.push(c);
                    i += 1;
                }
            }
        }
        out.push(tok);
    }
    out
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    /// A position in an input of `len` bytes (`len` itself included when `end`), a quarter
    /// of the time in its first 64 bytes, where the targets keep their headers.
    fn pos(&mut self, len: usize, end: bool) -> usize {
        let n = len + usize::from(end);
        if self.below(4) == 0 {
            self.below(n.min(64))
        } else {
            self.below(n)
        }
    }
}

const INTERESTING: &[u64] = &[
    0,
    1,
    2,
    4,
    7,
    8,
    12,
    14,
    16,
    64,
    0x7f,
    0x80,
    0xff,
    0x100,
    1500,
    1514,
    4096,
    0x7fff,
    0x8000,
    0xffff,
    0x1_0000,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    u64::MAX,
];

/// One to four stacked mutations of an input from `pool`.
fn mutate(rng: &mut Rng, pool: &[Vec<u8>], dict: &[Vec<u8>]) -> Vec<u8> {
    let mut d = pool[rng.below(pool.len())].clone();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(9) {
            0 if len > 0 => {
                let p = rng.pos(len, false);
                d[p] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let p = rng.pos(len, false);
                d[p] = rng.next() as u8;
            }
            2 => {
                let p = rng.pos(len, true);
                let n = 1 + rng.below(8);
                let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(p..p, fill);
            }
            3 if len > 0 => {
                let p = rng.pos(len, false);
                let n = (1 + rng.below(16)).min(len - p);
                d.drain(p..p + n);
            }
            4 if len > 1 => {
                let (from, to) = (rng.below(len), rng.below(len));
                let n = (1 + rng.below(32)).min(len - from).min(len - to);
                d.copy_within(from..from + n, to);
            }
            5 if len > 0 => {
                let v = INTERESTING[rng.below(INTERESTING.len())];
                let w = [1, 2, 4, 8][rng.below(4)];
                let (le, be) = (v.to_le_bytes(), v.to_be_bytes());
                let b = if rng.below(2) == 0 {
                    &le[..w]
                } else {
                    &be[8 - w..]
                };
                let p = rng.pos(len, false);
                let n = w.min(len - p);
                d[p..p + n].copy_from_slice(&b[..n]);
            }
            6 if len > 1 => {
                let p = rng.pos(len - 1, false);
                let delta = 1 + rng.below(35) as u16;
                let v = u16::from_le_bytes([d[p], d[p + 1]]);
                let v = if rng.below(2) == 0 {
                    v.wrapping_add(delta)
                } else {
                    v.wrapping_sub(delta)
                };
                d[p..p + 2].copy_from_slice(&v.to_le_bytes());
            }
            7 => {
                let other = &pool[rng.below(pool.len())];
                let a = rng.below(len + 1);
                let b = rng.below(other.len() + 1);
                d.truncate(a);
                d.extend_from_slice(&other[b..]);
            }
            8 if !dict.is_empty() => {
                let tok = &dict[rng.below(dict.len())];
                let p = rng.pos(len, true);
                if rng.below(2) == 0 || p + tok.len() > len {
                    d.splice(p..p, tok.iter().copied());
                } else {
                    d[p..p + tok.len()].copy_from_slice(tok);
                }
            }
            _ => d.push(rng.next() as u8),
        }
    }
    d.truncate(MAX_LEN);
    d
}

/// What one target's run did.
#[derive(Debug)]
struct Summary {
    execs: u64,
    secs: f64,
    pool: usize,
    /// Stages reached by the seeds, and by anything.
    seeds: Reached,
    all: Reached,
}

/// A panic (or a hang) on `input`, saved at `path`.
#[derive(Debug)]
struct Finding {
    path: PathBuf,
    input: Vec<u8>,
    what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex: String = self
            .input
            .iter()
            .take(4096)
            .map(|b| format!("{b:02x}"))
            .collect();
        let more = if self.input.len() > 4096 { " ..." } else { "" };
        write!(
            f,
            "{}; input ({} bytes) saved as {}; reproduce with `cargo +nightly fuzz run TARGET {}` \
             or the smoke test; hex: {hex}{more}",
            self.what,
            self.input.len(),
            self.path.display(),
            self.path.display()
        )
    }
}

fn findings_dir(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    target.join("fuzz-findings").join(name)
}

fn save(name: &str, input: &[u8], what: String) -> Finding {
    // FNV-1a names the file after the input.
    let h = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let dir = findings_dir(name);
    let path = dir.join(format!("crash-{h:016x}"));
    let _ = std::fs::create_dir_all(&dir);
    if let Err(e) = std::fs::write(&path, input) {
        say(&format!(
            "fuzz_smoke {name}: cannot save {}: {e}",
            path.display()
        ));
    }
    Finding {
        path,
        input: input.to_vec(),
        what,
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into())
}

/// A panicking input and the panic's message.
type Crash = (Vec<u8>, String);

/// What the worker thread shares with the watchdog.
struct Shared {
    execs: AtomicU64,
    current: Mutex<Vec<u8>>,
    done: AtomicBool,
}

/// Runs `target` on `seeds`, then on mutations of them until `secs` have passed.
fn fuzz(
    name: &'static str,
    run: fn(&[u8]) -> Reached,
    seeds: Vec<Vec<u8>>,
    dict: Vec<Vec<u8>>,
    secs: f64,
    seed: u64,
) -> Result<Summary, Finding> {
    let shared = Arc::new(Shared {
        execs: AtomicU64::new(0),
        current: Mutex::new(Vec::new()),
        done: AtomicBool::new(false),
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let worker = {
        let shared = shared.clone();
        std::thread::spawn(move || -> Result<(usize, Reached, Reached), Crash> {
            let exec = |input: &[u8]| -> Result<Reached, Crash> {
                *shared.current.lock().unwrap_or_else(|e| e.into_inner()) = input.to_vec();
                let r = catch_unwind(AssertUnwindSafe(|| run(input)))
                    .map_err(|p| (input.to_vec(), format!("panic: {}", panic_message(&*p))));
                shared.execs.fetch_add(1, Ordering::Relaxed);
                r
            };
            let mut seeds_reached = Reached::default();
            let mut seen = HashSet::new();
            let mut pool = Vec::new();
            for s in &seeds {
                let r = exec(s)?;
                seeds_reached |= r;
                seen.insert(r.0);
                pool.push(s.clone());
            }
            if pool.is_empty() {
                pool.push(Vec::new());
            }
            let mut all = seeds_reached;
            let mut rng = Rng(seed);
            while Instant::now() < deadline {
                for _ in 0..64 {
                    let input = mutate(&mut rng, &pool, &dict);
                    let r = exec(&input)?;
                    all |= r;
                    if seen.insert(r.0) && pool.len() < MAX_POOL {
                        pool.push(input);
                    }
                }
            }
            shared.done.store(true, Ordering::Release);
            Ok((pool.len(), seeds_reached, all))
        })
    };
    let mut last = (Instant::now(), 0u64);
    let mut report = Instant::now();
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
        let execs = shared.execs.load(Ordering::Relaxed);
        if execs != last.1 {
            last = (Instant::now(), execs);
        } else if last.0.elapsed() > Duration::from_secs(HANG_SECS) && !worker.is_finished() {
            let input = shared
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            return Err(save(
                name,
                &input,
                format!("no exec finished in {HANG_SECS} s (a hang)"),
            ));
        }
        if report.elapsed() >= Duration::from_secs(15) {
            report = Instant::now();
            let t = start.elapsed().as_secs_f64();
            say(&format!(
                "fuzz_smoke {name}: {execs} execs in {t:.0} s ({:.0}/s)",
                execs as f64 / t
            ));
        }
    }
    let execs = shared.execs.load(Ordering::Relaxed);
    match worker.join() {
        Ok(Ok((pool, seeds, all))) => Ok(Summary {
            execs,
            secs: start.elapsed().as_secs_f64(),
            pool,
            seeds,
            all,
        }),
        Ok(Err((input, what))) => Err(save(name, &input, what)),
        Err(p) => Err(save(
            name,
            &[],
            format!("the fuzz thread died: {}", panic_message(&*p)),
        )),
    }
}

fn smoke(name: &str) {
    let Some(t): Option<&Target> = TARGETS.iter().find(|t| t.name == name) else {
        panic!("no fuzz target {name}");
    };
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fixtures/fuzz/{name} is empty");
    let secs = fuzz_secs();
    let seed = std::env::var("SRIOV_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            name.bytes()
                .fold(17u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)))
        });
    say(&format!(
        "fuzz_smoke {name}: {} seeds, then mutations for {secs} s (SRIOV_FUZZ_SECS), seed {seed} (SRIOV_FUZZ_SEED)",
        seeds.len()
    ));
    let dict = dictionary(name);
    let s = match fuzz(
        t.name,
        t.run,
        seeds.into_iter().map(|(_, b)| b).collect(),
        dict,
        secs,
        seed,
    ) {
        Ok(s) => s,
        Err(f) => panic!("fuzz_smoke {name}: FINDING: {f}"),
    };
    let names = |r: Reached| -> Vec<&str> {
        t.stages
            .iter()
            .enumerate()
            .filter(|(i, _)| !r.has(*i))
            .map(|(_, s)| *s)
            .collect()
    };
    say(&format!(
        "fuzz_smoke {name}: {} execs in {:.1} s ({:.0}/s), pool {}, stages {}/{}, no finding",
        s.execs,
        s.secs,
        s.execs as f64 / s.secs,
        s.pool,
        t.stages.len() - names(s.all).len(),
        t.stages.len()
    ));
    let missing = names(s.seeds);
    assert!(
        missing.is_empty(),
        "{name}: the seed corpus does not reach {missing:?}"
    );
}

#[test]
fn desc_chain() {
    smoke("desc_chain");
}

#[test]
fn frame_parse() {
    smoke("frame_parse");
}

#[test]
fn control_request() {
    smoke("control_request");
}

#[test]
fn config_file() {
    smoke("config_file");
}

/// The finding path works: a target that panics on some input has it saved and reported.
#[test]
fn a_panic_is_saved_and_reported_with_its_input() {
    fn buggy(d: &[u8]) -> Reached {
        assert!(!d.windows(3).any(|w| w == b"BUG"), "found the bug");
        Reached(1)
    }
    let seeds = vec![b"fine".to_vec(), b"a BUG here".to_vec()];
    let f = fuzz("selftest", buggy, seeds, Vec::new(), 0.1, 1).unwrap_err();
    assert_eq!(f.input, b"a BUG here");
    assert_eq!(std::fs::read(&f.path).unwrap(), b"a BUG here");
    let msg = f.to_string();
    assert!(msg.contains("panic: found the bug"), "{msg}");
    assert!(msg.contains("6120425547206865726"), "the hex: {msg}");
    // And mutations get there from a seed one byte away.
    let f = fuzz(
        "selftest",
        buggy,
        vec![b"xBUFx".to_vec()],
        Vec::new(),
        20.0,
        2,
    )
    .unwrap_err();
    assert!(f.input.windows(3).any(|w| w == b"BUG"));
}

#[test]
fn the_seed_corpus_is_the_one_made_here() {
    for (target, name, bytes) in seeds::all() {
        let path = root().join("fixtures/fuzz").join(target).join(&name);
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (cargo test --release --test fuzz_smoke -- --ignored write_seed_corpus)",
                path.display()
            )
        });
        assert!(
            on_disk == bytes,
            "{} differs from tests/fuzz_smoke/seeds.rs",
            path.display()
        );
    }
}

/// Writes the seed corpus into fixtures/fuzz/ (files found by fuzzing stay).
#[test]
#[ignore]
fn write_seed_corpus() {
    for (target, name, bytes) in seeds::all() {
        let dir = root().join("fixtures/fuzz").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
