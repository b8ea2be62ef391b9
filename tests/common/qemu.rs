//! QEMU guest harness for integration tests (std only).
//!
//! Include it from an integration test with
//!
//! ```ignore
//! #[path = "common/qemu.rs"]
//! mod qemu;
//! ```
//!
//! (or `pub mod qemu;` from a `tests/common/mod.rs`).
//!
//! Guests boot the kernel + busybox initramfs built by `scripts/guest-image` under TCG
//! (`-accel tcg -cpu max`), with guest RAM in a shared memfd so vhost-user backends can map it.
//! The guest's `/init` understands `sriov.*` kernel arguments (see `scripts/guest-image`) and
//! prints `SRIOV-GUEST-READY` once its network is configured and `SRIOV-GUEST-DONE rc=N` when
//! its script ends (then it powers off). All guest output goes to the serial log file;
//! `PingWatch` follows serial logs and stamps the ping replies in them as they appear.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// Printed by the guest once lo/eth0 are configured (before the script runs).
pub const READY_MARKER: &str = "SRIOV-GUEST-READY";
/// Printed by the guest when its script or command ends: `SRIOV-GUEST-DONE rc=N`.
pub const DONE_MARKER: &str = "SRIOV-GUEST-DONE rc=";

/// Kernel command lines are limited to 2048 bytes on x86; longer commands go through fw_cfg.
const MAX_CMDLINE_CMD: usize = 1024;
const LOG_TAIL_LINES: usize = 40;

#[path = "skip.rs"]
pub mod skip;

/// True when QEMU >= 10 is installed. When it is not, `test` FAILS with what is missing and how
/// to install it, unless SRIOV_SKIP_QEMU=1: then it prints `SKIPPED: <test>: ...` and this
/// returns false, and the test returns early (see `skip.rs`).
pub fn require_qemu(test: &str) -> bool {
    let Some(missing) = qemu_missing() else {
        return true;
    };
    skip::skip_or_fail(test, &missing);
    false
}

/// Why QEMU cannot be used (not found, or older than 10), or `None` if it can.
pub fn qemu_missing() -> Option<String> {
    match qemu_version() {
        Some((major, _)) if major >= 10 => None,
        Some((major, minor)) => Some(format!(
            "{} is QEMU {major}.{minor}, the tests need QEMU >= 10 (Debian bookworm-backports)",
            qemu_binary()
        )),
        None => Some(format!(
            "QEMU >= 10 is not installed ({} --version cannot be run{})",
            qemu_binary(),
            if std::env::var_os("SRIOV_QEMU").is_some() {
                ", from $SRIOV_QEMU"
            } else {
                ""
            }
        )),
    }
}

/// Root of the repository (the crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The QEMU binary: `$SRIOV_QEMU` or `qemu-system-x86_64`.
pub fn qemu_binary() -> String {
    std::env::var("SRIOV_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".to_string())
}

/// `(major, minor)` of the QEMU binary, or `None` if it cannot be run.
pub fn qemu_version() -> Option<(u32, u32)> {
    let out = Command::new(qemu_binary())
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = &text[text.find("version ")? + "version ".len()..];
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Some((major, minor))
}

/// True when `qemu-system-x86_64` is installed and is version 10 or newer.
pub fn qemu_available() -> bool {
    qemu_missing().is_none()
}

/// Directory for guest logs and scratch files (`target/tmp/guests` for integration tests).
pub fn scratch_dir() -> PathBuf {
    let base = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("guests");
    let _ = fs::create_dir_all(&dir);
    dir
}

/// Builds (once per test binary; the script itself caches across runs) the guest kernel and
/// initramfs with `scripts/guest-image`, returning `(kernel, initrd)`.
pub fn guest_image() -> Result<(PathBuf, PathBuf), String> {
    static IMAGE: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    IMAGE.get_or_init(build_guest_image).clone()
}

fn build_guest_image() -> Result<(PathBuf, PathBuf), String> {
    let script = repo_root().join("scripts/guest-image");
    let out = Command::new(&script)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}):\n{stdout}{stderr}",
            script.display(),
            out.status
        ));
    }
    let field = |key: &str| {
        stdout
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(key))
            .map(|p| PathBuf::from(p.trim()))
    };
    match (field("kernel="), field("initrd=")) {
        (Some(k), Some(i)) if k.is_file() && i.is_file() => Ok((k, i)),
        _ => Err(format!(
            "{} did not report existing kernel=/initrd= paths:\n{stdout}{stderr}",
            script.display()
        )),
    }
}

/// Path of the emulator binary built by cargo for this test run.
pub fn sriov_emu_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sriov-emu"))
}

/// Runs `sriov-emu qemu-args <kind> <n> --socket-dir DIR` (kind is `vf` or `pv`) and splits
/// the printed line into QEMU arguments.
pub fn emulator_qemu_args(
    emulator: &Path,
    kind: &str,
    n: u32,
    socket_dir: &Path,
) -> Result<Vec<String>, String> {
    let out = Command::new(emulator)
        .arg("qemu-args")
        .arg(kind)
        .arg(n.to_string())
        .arg("--socket-dir")
        .arg(socket_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", emulator.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} qemu-args {kind} {n} failed ({}): {}",
            emulator.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let args = split_args(&String::from_utf8_lossy(&out.stdout));
    if args.is_empty() {
        return Err(format!(
            "{} qemu-args {kind} {n} printed nothing",
            emulator.display()
        ));
    }
    Ok(args)
}

/// Splits a one-line, space-separated QEMU option string (as `sriov-emu qemu-args` prints it).
pub fn split_args(line: &str) -> Vec<String> {
    line.split_whitespace().map(str::to_string).collect()
}

/// `n` hot-plug slots: `-device pcie-root-port,id=rpI,chassis=I+1,slot=I+1` for I in 0..n.
/// Hot-plug a NIC into one with QMP `device_add` and `"bus": "rpI"`.
pub fn pcie_root_ports(n: u32) -> Vec<String> {
    (0..n)
        .flat_map(|i| {
            [
                "-device".to_string(),
                format!("pcie-root-port,id=rp{i},chassis={},slot={}", i + 1, i + 1),
            ]
        })
        .collect()
}

/// Standard base64 (RFC 4648, with padding), for `sriov.cmd=`.
pub fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// How to boot one guest. Build with [`GuestConfig::new`] and the builder methods, or fill
/// the public fields directly.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// Guest name: QEMU `-name`, guest hostname (`sriov.name=`), default log file name.
    pub name: String,
    /// Guest RAM in MiB (default 256); it is a shared memfd, as vhost-user requires.
    pub memory_mib: u32,
    /// vCPUs (default 1). Linux enables min(queue pairs, vCPUs) queues by default.
    pub vcpus: u32,
    /// Extra QEMU arguments, e.g. the NIC options from `sriov-emu qemu-args`.
    pub qemu_args: Vec<String>,
    /// Extra kernel command line words (`sriov.ip=...`, `sriov.script=...`); no spaces inside.
    pub cmdline: Vec<String>,
    /// Serial console log (default: `<scratch_dir>/<name>-<pid>-<seq>.log`).
    pub log: Option<PathBuf>,
    /// Shell snippet the guest runs with `sh` (`sriov.cmd`, or fw_cfg `opt/sriov/cmd` if long).
    pub cmd: Option<String>,
    /// If set, QEMU serves QMP on this unix socket (see [`Guest::qmp`]).
    pub qmp_socket: Option<PathBuf>,
}

impl Default for GuestConfig {
    fn default() -> Self {
        GuestConfig {
            name: "guest".to_string(),
            memory_mib: 256,
            vcpus: 1,
            qemu_args: Vec::new(),
            cmdline: Vec::new(),
            log: None,
            cmd: None,
            qmp_socket: None,
        }
    }
}

impl GuestConfig {
    pub fn new(name: &str) -> Self {
        GuestConfig {
            name: name.to_string(),
            ..Default::default()
        }
    }
    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }
    pub fn vcpus(mut self, n: u32) -> Self {
        self.vcpus = n;
        self
    }
    /// Appends QEMU arguments (e.g. `emulator_qemu_args(..)?`).
    pub fn qemu_args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        self.qemu_args.extend(args.into_iter().map(Into::into));
        self
    }
    /// Appends one kernel command line word.
    pub fn kernel_arg(mut self, word: &str) -> Self {
        self.cmdline.push(word.to_string());
        self
    }
    /// `sriov.KEY=VALUE` (seen by guest scripts as `$SRIOV_KEY`).
    pub fn sriov(self, key: &str, value: &str) -> Self {
        self.kernel_arg(&format!("sriov.{key}={value}"))
    }
    /// IPv4 address/prefix for eth0, e.g. `198.18.0.1/24`.
    pub fn ip(self, cidr: &str) -> Self {
        self.sriov("ip", cidr)
    }
    /// IPv6 address/prefix for eth0, e.g. `2001:db8::1/64`.
    pub fn ip6(self, cidr: &str) -> Self {
        self.sriov("ip6", cidr)
    }
    /// `$PEER` for guest scripts.
    pub fn peer(self, ip: &str) -> Self {
        self.sriov("peer", ip)
    }
    /// `$PEER6` for guest scripts.
    pub fn peer6(self, ip6: &str) -> Self {
        self.sriov("peer6", ip6)
    }
    /// Runs `/tests/NAME.sh` (from `fixtures/guest/NAME.sh`).
    pub fn script(self, name: &str) -> Self {
        self.sriov("script", name)
    }
    /// Shell snippet to run in the guest (alone, or before `serve.sh` waits).
    pub fn cmd(mut self, snippet: &str) -> Self {
        self.cmd = Some(snippet.to_string());
        self
    }
    pub fn log(mut self, path: impl Into<PathBuf>) -> Self {
        self.log = Some(path.into());
        self
    }
    pub fn qmp_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.qmp_socket = Some(path.into());
        self
    }
}

/// A running QEMU guest. Dropping it kills QEMU (by its PID) and reaps it.
pub struct Guest {
    pub name: String,
    child: Mutex<Child>,
    log: PathBuf,
    qemu_stderr: PathBuf,
    qmp_socket: Option<PathBuf>,
    started: Instant,
}

impl Guest {
    /// Starts QEMU. Returns once the process is spawned; use [`Guest::wait_for_line`] /
    /// [`Guest::wait_done`] to follow the boot.
    pub fn spawn(cfg: GuestConfig) -> Result<Guest, String> {
        let (kernel, initrd) = guest_image()?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let safe_name: String = cfg
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let log = cfg.log.clone().unwrap_or_else(|| {
            scratch_dir().join(format!(
                "{safe_name}-{}-{}.log",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ))
        });
        if let Some(dir) = log.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        // Start from an empty log so markers of an earlier run are not found.
        File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let qemu_stderr = log.with_extension("qemu.txt");

        let mut append = vec![
            "console=ttyS0".to_string(),
            "quiet".to_string(),
            "panic=-1".to_string(),
            format!("sriov.name={safe_name}"),
        ];
        for word in &cfg.cmdline {
            if word.contains(char::is_whitespace) {
                return Err(format!("kernel argument {word:?} contains whitespace"));
            }
            append.push(word.clone());
        }
        let mut fw_cfg = Vec::new();
        if let Some(cmd) = &cfg.cmd {
            let encoded = base64_encode(cmd.as_bytes());
            if encoded.len() <= MAX_CMDLINE_CMD {
                append.push(format!("sriov.cmd={encoded}"));
            } else {
                let file = log.with_extension("cmd.sh");
                fs::write(&file, cmd).map_err(|e| format!("write {}: {e}", file.display()))?;
                fw_cfg.push("-fw_cfg".to_string());
                fw_cfg.push(format!("name=opt/sriov/cmd,file={}", file.display()));
            }
        }
        let append = append.join(" ");
        if append.len() > 2000 {
            return Err(format!(
                "kernel command line too long ({} bytes)",
                append.len()
            ));
        }

        let mem = format!("{}M", cfg.memory_mib);
        let mut args: Vec<String> = vec![
            "-name".into(),
            safe_name.clone(),
            "-accel".into(),
            "tcg".into(),
            "-cpu".into(),
            "max".into(),
            "-machine".into(),
            "q35,memory-backend=mem".into(),
            "-object".into(),
            format!("memory-backend-memfd,id=mem,size={mem},share=on"),
            "-m".into(),
            mem,
            "-smp".into(),
            cfg.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-nographic".into(),
            "-serial".into(),
            format!("file:{}", log.display()),
            "-kernel".into(),
            kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            append,
            "-no-reboot".into(),
        ];
        if let Some(qmp) = &cfg.qmp_socket {
            let _ = fs::remove_file(qmp);
            args.push("-qmp".into());
            args.push(format!("unix:{},server=on,wait=off", qmp.display()));
        }
        args.extend(fw_cfg);
        args.extend(cfg.qemu_args.iter().cloned());

        // QEMU's own output goes to <log>.qemu.txt, after the command line (to reproduce a
        // failure by hand).
        fs::write(
            &qemu_stderr,
            format!("# {} {}\n", qemu_binary(), shell_quote(&args)),
        )
        .map_err(|e| format!("write {}: {e}", qemu_stderr.display()))?;
        let open_out = || {
            fs::OpenOptions::new()
                .append(true)
                .open(&qemu_stderr)
                .map_err(|e| format!("open {}: {e}", qemu_stderr.display()))
        };
        let mut command = Command::new(qemu_binary());
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(open_out()?)
            .stderr(open_out()?);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", qemu_binary()))?;
        Ok(Guest {
            name: cfg.name,
            child: Mutex::new(child),
            log,
            qemu_stderr,
            qmp_socket: cfg.qmp_socket,
            started: Instant::now(),
        })
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    /// Path of the serial console log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the guest printed so far (serial console).
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// QEMU exit status if it has exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    /// Waits until a serial console line contains `marker`; returns that line (without the
    /// line ending). Fails on timeout or if QEMU exits first, with the log tail in the error.
    pub fn wait_for_line(&self, marker: &str, timeout: Duration) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            // Check for exit before reading, so output written just before the exit is seen.
            let exited = self.try_exit_status();
            if let Some(line) = find_line(&self.log(), marker) {
                return Ok(line);
            }
            if let Some(status) = exited {
                return Err(self.failure(&format!(
                    "QEMU exited ({status}) before the guest printed {marker:?}"
                )));
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!(
                    "timeout after {:.1?} waiting for {marker:?}",
                    timeout
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for `SRIOV-GUEST-DONE rc=N` and returns N.
    pub fn wait_done(&self, timeout: Duration) -> Result<i32, String> {
        let line = self.wait_for_line(DONE_MARKER, timeout)?;
        let rest = &line[line.find(DONE_MARKER).unwrap() + DONE_MARKER.len()..];
        let digits: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        digits
            .parse()
            .map_err(|_| self.failure(&format!("cannot parse exit code in {line:?}")))
    }

    /// Like [`Guest::wait_done`] but fails unless the guest's rc is 0.
    pub fn expect_success(&self, timeout: Duration) -> Result<(), String> {
        match self.wait_done(timeout)? {
            0 => Ok(()),
            rc => Err(self.failure(&format!("guest script failed with rc={rc}"))),
        }
    }

    /// Waits for QEMU itself to exit (the guest powers off after the DONE marker).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(self.failure(&format!("QEMU still running after {timeout:.1?}")));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills QEMU now (SIGKILL to its PID) and reaps it.
    pub fn kill(&self) {
        let mut child = self.child.lock().unwrap();
        if child.try_wait().ok().flatten().is_none() {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Live-migrates the guest to a QEMU started with `-incoming unix:SOCKET`: waits for that
    /// QEMU to listen, sends QMP `migrate`, then asks `query-migrate` until it completes.
    /// Returns the completed status reply; `Err` if the destination never listened, or the
    /// migration failed, was cancelled or had not completed within `timeout`.
    pub fn migrate_unix(&self, socket: &Path, timeout: Duration) -> Result<String, String> {
        let t = Instant::now();
        while !socket.exists() {
            if t.elapsed() > timeout {
                return Err(format!(
                    "the destination never listened on {}",
                    socket.display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        let t = Instant::now();
        self.qmp(
            "migrate",
            &format!("{{\"uri\":\"unix:{}\"}}", socket.display()),
        )?;
        loop {
            let r = self.qmp("query-migrate", "")?;
            if r.contains("\"completed\"") {
                return Ok(r);
            }
            if r.contains("\"failed\"") || r.contains("\"cancelled\"") {
                return Err(format!("migration failed: {r}"));
            }
            if t.elapsed() > timeout {
                return Err(format!(
                    "migration did not complete within {timeout:?}: {r}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs one QMP command on the guest's QMP socket (needs `GuestConfig::qmp_socket`).
    /// `arguments` is a JSON object text (or empty for none). Returns the raw `{"return":...}`
    /// reply line; an `{"error":...}` reply becomes `Err`. Events are skipped.
    pub fn qmp(&self, execute: &str, arguments: &str) -> Result<String, String> {
        let path = self
            .qmp_socket
            .as_ref()
            .ok_or_else(|| "guest was started without qmp_socket".to_string())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("QMP connect {}: {e}", path.display()))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut writer = stream;
        let read_reply = |reader: &mut BufReader<UnixStream>| -> Result<String, String> {
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => return Err("QMP connection closed".to_string()),
                    Ok(_) => {}
                    Err(e) => return Err(format!("QMP read: {e}")),
                }
                let t = line.trim();
                if t.starts_with("{\"return\"") || t.starts_with("{\"QMP\"") {
                    return Ok(t.to_string());
                }
                if t.starts_with("{\"error\"") {
                    return Err(format!("QMP error: {t}"));
                }
                // {"event": ...} and anything else: skip
            }
        };
        read_reply(&mut reader)?; // greeting
        writer
            .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
            .map_err(|e| format!("QMP write: {e}"))?;
        read_reply(&mut reader)?;
        let request = if arguments.trim().is_empty() {
            format!("{{\"execute\":\"{execute}\"}}\n")
        } else {
            format!("{{\"execute\":\"{execute}\",\"arguments\":{arguments}}}\n")
        };
        writer
            .write_all(request.as_bytes())
            .map_err(|e| format!("QMP write: {e}"))?;
        read_reply(&mut reader)
    }

    /// The last `n` lines of the serial log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// An error message with context: guest name, elapsed time, serial log tail, QEMU stderr.
    pub fn failure(&self, what: &str) -> String {
        let mut msg = format!(
            "guest {:?}: {what} (after {:.1?})\n--- serial log {} (last {LOG_TAIL_LINES} lines) ---\n{}",
            self.name,
            self.started.elapsed(),
            self.log.display(),
            self.log_tail(LOG_TAIL_LINES)
        );
        let stderr = fs::read_to_string(&self.qemu_stderr).unwrap_or_default();
        let _ = write!(
            msg,
            "\n--- QEMU output {} ---\n{}",
            self.qemu_stderr.display(),
            tail(&stderr, 20)
        );
        msg
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        if let Some(qmp) = &self.qmp_socket {
            let _ = fs::remove_file(qmp);
        }
    }
}

/// Reply lines of a ping, stamped when seen.
#[derive(Default, Clone)]
pub struct Replies {
    /// (sequence number, when its reply line appeared), in order seen.
    pub seen: Vec<(u32, Instant)>,
}

impl Replies {
    /// The sequence numbers missing between the first and the last reply, each with the time
    /// between the replies around it.
    pub fn lost(&self) -> Vec<(u32, Instant)> {
        let mut r = self.seen.clone();
        r.sort_by_key(|&(s, _)| s);
        r.dedup_by_key(|&mut (s, _)| s);
        let mut out = Vec::new();
        for w in r.windows(2) {
            let ((s0, t0), (s1, t1)) = (w[0], w[1]);
            for s in s0 + 1..s1 {
                let f = f64::from(s - s0) / f64::from(s1 - s0);
                let at = if t1 > t0 {
                    t0 + (t1 - t0).mul_f64(f)
                } else {
                    t0
                };
                out.push((s, at));
            }
        }
        out
    }
}

/// Follows console logs and stamps the ping replies in them: `out` (the guest's pings, in the
/// logs of each QEMU the guest ran in) and `in` (the peer's).
pub struct PingWatch {
    files: Arc<Mutex<Vec<(PathBuf, bool)>>>,
    replies: Arc<Mutex<[Replies; 2]>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The sequence number of a ping reply line (`64 bytes from 198.18.80.2: seq=12 ttl=64 ...`).
pub fn reply_seq(line: &str) -> Option<u32> {
    if !line.contains(" bytes from ") {
        return None;
    }
    let rest = line.split("seq=").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl PingWatch {
    pub fn start() -> PingWatch {
        let files: Arc<Mutex<Vec<(PathBuf, bool)>>> = Arc::default();
        let replies: Arc<Mutex<[Replies; 2]>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (f, r, s) = (files.clone(), replies.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            // Per file: the offset read up to, and a partial line.
            let mut at: Vec<(u64, String)> = Vec::new();
            while !s.load(Ordering::Relaxed) {
                let list = f.lock().unwrap().clone();
                at.resize(list.len(), (0, String::new()));
                for ((path, inbound), (off, partial)) in list.iter().zip(at.iter_mut()) {
                    let Ok(mut file) = std::fs::File::open(path) else {
                        continue;
                    };
                    let mut buf = Vec::new();
                    if file.seek(SeekFrom::Start(*off)).is_err()
                        || file.read_to_end(&mut buf).is_err()
                    {
                        continue;
                    }
                    *off += buf.len() as u64;
                    partial.push_str(&String::from_utf8_lossy(&buf));
                    let now = Instant::now();
                    while let Some(nl) = partial.find('\n') {
                        let line: String = partial.drain(..=nl).collect();
                        if let Some(seq) = reply_seq(&line) {
                            r.lock().unwrap()[usize::from(*inbound)]
                                .seen
                                .push((seq, now));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        PingWatch {
            files,
            replies,
            stop,
            thread: Some(thread),
        }
    }

    /// Follows the console log `path`: its replies are the `inbound` ones (the second of
    /// `replies`) or the outbound ones (the first).
    pub fn watch(&self, path: &Path, inbound: bool) {
        self.files
            .lock()
            .unwrap()
            .push((path.to_path_buf(), inbound));
    }

    /// The replies stamped so far: outbound, inbound.
    pub fn replies(&self) -> std::sync::MutexGuard<'_, [Replies; 2]> {
        self.replies.lock().unwrap()
    }
}

impl Drop for PingWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The first complete line (newline-terminated: the guest may be in the middle of writing the
/// last one) that contains `marker`.
fn find_line(log: &str, marker: &str) -> Option<String> {
    let complete = match log.rfind('\n') {
        Some(i) => &log[..i],
        None => return None,
    };
    complete
        .lines()
        .find(|l| l.contains(marker))
        .map(|l| l.trim_end_matches('\r').to_string())
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..]
        .iter()
        .map(|l| l.trim_end_matches('\r'))
        .collect::<Vec<_>>()
        .join("\n")
}

fn shell_quote(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=,./:@+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
