//! What a test does when something it needs from the machine is missing (QEMU 10, the Python
//! `qemu.qmp` venv): it FAILS, saying what is missing and how to install it, so a test that did
//! not run never reads as passed. Only with `SRIOV_SKIP_QEMU=1` in the environment does it skip:
//! it prints `SKIPPED: <test>: <what is missing>` and the test returns early.
//!
//! The SKIPPED line is written straight to the process's stderr, past the test harness's output
//! capture, so it shows in `cargo test`'s output (and in `./scripts/test`'s, which counts the
//! skips in its closing line) whether or not `--nocapture` is given.
//!
//! Included by `tests/common/mod.rs` (as `common::skip`) and by `tests/common/qemu.rs` (as
//! `qemu::skip`); `tests/qemu_smoke.rs` tests [`decide`].
#![allow(dead_code)]

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;

/// The environment variable that turns "missing, so fail" into "missing, so skip".
pub const SKIP_ENV: &str = "SRIOV_SKIP_QEMU";

/// The decision for `test`, which cannot run because of `missing`, given the value of
/// `SRIOV_SKIP_QEMU` (`None` when unset): `Ok(line)` to skip after printing `line`,
/// `Err(message)` to fail with `message`. Only the exact value `1` skips.
pub fn decide(test: &str, missing: &str, skip_env: Option<&str>) -> Result<String, String> {
    match skip_env {
        Some("1") => Ok(format!("SKIPPED: {test}: {missing} ({SKIP_ENV}=1)")),
        other => {
            let set = match other {
                Some(v) if !v.is_empty() && v != "0" => {
                    format!(" ({SKIP_ENV}={v:?} is not 1)")
                }
                _ => String::new(),
            };
            Err(format!(
                "{test} cannot run: {missing}. Install what is missing with ./scripts/setup \
                 (as root, idempotent; ./scripts/test runs it), or set {SKIP_ENV}=1 to skip \
                 the tests that need it{set}."
            ))
        }
    }
}

/// Call when `test` cannot run because of `missing`. Fails the test (panics) unless
/// `SRIOV_SKIP_QEMU=1`; then prints the `SKIPPED:` line and returns, and the caller returns
/// early.
pub fn skip_or_fail(test: &str, missing: &str) {
    let env = std::env::var(SKIP_ENV).ok();
    match decide(test, missing, env.as_deref()) {
        Ok(line) => {
            // Not eprintln!: the harness captures that and shows it only for a failed test.
            // The harness may be in the middle of its own `test NAME ... ok` line (another
            // test's, or this one's with --test-threads=1): start a line of our own.
            let _ = std::io::stderr().write_all(format!("\n{line}\n").as_bytes());
        }
        Err(message) => panic!("{message}"),
    }
}

/// Whether `prog` is an executable file in a directory of PATH, or of /usr/sbin or /sbin (not
/// always on a test's PATH).
pub fn have(prog: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|d| {
            std::fs::metadata(d.join(prog))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}
