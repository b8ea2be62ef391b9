//! The emulator as a service beside libvirt and the usual tools, through the real binary:
//! the port sockets' group and mode (`--socket-group`, `--socket-mode`) at start, after
//! `set-numvfs` and a channel change made them again, and after a frontend reconnected, with a
//! process of that group (and one outside it) connecting; the Prometheus endpoint
//! (`--metrics-listen`) read with a plain TcpStream, with curl and with the `prometheus_client`
//! parser from PyPI, against `ctl stats`; readiness (`READY=1` to `$NOTIFY_SOCKET` only once
//! every socket exists, `--pid-file`); JSON log lines; shell completions and man pages that
//! name every subcommand of the CLI.
//!
//! What a test needs from the machine (curl, the venv's prometheus_client, setpriv and socat)
//! fails the test when missing, or skips it with a `SKIPPED:` line under SRIOV_SKIP_QEMU=1
//! (tests/common/skip.rs); ./scripts/setup installs them.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sriov-emu");

/// A group made for one test with groupadd, removed with groupdel when dropped.
struct TempGroup {
    name: String,
    gid: u32,
}

impl TempGroup {
    fn new(tag: &str) -> TempGroup {
        let name = format!("sremu-{tag}-{}", std::process::id());
        let out = Command::new("groupadd").arg(&name).output().unwrap();
        assert!(
            out.status.success(),
            "groupadd {name} (the tests run as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("getent")
            .args(["group", &name])
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).into_owned();
        let gid = line
            .trim()
            .split(':')
            .nth(2)
            .and_then(|g| g.parse().ok())
            .unwrap_or_else(|| panic!("no gid for {name}: {line:?}"));
        TempGroup { name, gid }
    }
}

impl Drop for TempGroup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.name).status();
    }
}

/// (gid, permission bits) of `path`.
fn owner_mode(path: &Path) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.gid(), m.mode() & 0o7777)
}

/// The vfN.sock and pvN.sock in `dir`.
fn port_sockets(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            (n.starts_with("vf") || n.starts_with("pv")) && n.ends_with(".sock")
        })
        .collect();
    v.sort();
    v
}

fn assert_ports_owned(dir: &Path, want: &[&str], gid: u32, mode: u32, when: &str) {
    let socks = port_sockets(dir);
    let names: Vec<String> = socks
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want_sorted.sort();
    assert_eq!(names, want_sorted, "{when}: the port sockets");
    for s in &socks {
        let (g, m) = owner_mode(s);
        assert!(
            (g, m) == (gid, mode),
            "{when}: {} has gid {g} mode {m:04o}, wanted gid {gid} mode {mode:04o}",
            s.display()
        );
    }
}

/// Whether a process of uid nobody and group `gid` (no other groups) can connect to `sock`:
/// Ok, or the error it printed.
fn connect_as(gid: u32, sock: &Path) -> Result<(), String> {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
        .args(["socat", "-u", "OPEN:/dev/null"])
        .arg(format!("UNIX-CONNECT:{}", sock.display()))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_detached(emu: &Emu, vf: usize) {
    wait_for("the frontend detached", || {
        emu.control().execute("query-vfs", json!({})).unwrap()[vf]["attached"] == json!(false)
    });
}

#[test]
fn port_sockets_get_the_group_and_mode_whenever_they_are_made() {
    let group = TempGroup::new("sock");
    let emu = Emu::start(&[
        "--vfs",
        "2",
        "--pv-ports",
        "1",
        "--socket-group",
        &group.name,
        "--socket-mode",
        "0660",
    ]);
    let dir = emu.path();
    assert_ports_owned(
        dir,
        &["vf0.sock", "vf1.sock", "pv0.sock"],
        group.gid,
        0o660,
        "start",
    );
    // The control socket keeps its own, stricter default.
    // SAFETY: getegid(2) has no preconditions.
    let my_gid = unsafe { libc::getegid() };
    assert_eq!(owner_mode(&dir.join("control.sock")), (my_gid, 0o600));

    // A process of the group can connect (a unix socket needs write permission), one outside
    // it cannot: the libvirt case (QEMU as libvirt-qemu, group kvm).
    if !skip::have("socat") || !skip::have("setpriv") {
        skip::skip_or_fail(
            "port_sockets_get_the_group_and_mode_whenever_they_are_made",
            "socat or setpriv (util-linux) is not installed",
        );
        return;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    connect_as(group.gid, &dir.join("vf0.sock")).expect("a member of the group connects");
    let e = connect_as(65534, &dir.join("vf0.sock")).expect_err("nogroup must be refused");
    assert!(e.contains("Permission denied"), "{e}");
    let e = connect_as(group.gid, &dir.join("control.sock")).expect_err("control is 0600");
    assert!(e.contains("Permission denied"), "{e}");

    // numvfs through 0 makes the VF sockets again.
    let mut c = emu.control();
    c.execute("set-numvfs", json!({"numvfs": 0})).unwrap();
    assert_ports_owned(dir, &["pv0.sock"], group.gid, 0o660, "numvfs 0");
    c.execute("set-numvfs", json!({"numvfs": 3})).unwrap();
    assert_ports_owned(
        dir,
        &["vf0.sock", "vf1.sock", "vf2.sock", "pv0.sock"],
        group.gid,
        0o660,
        "numvfs 3",
    );
    // So does a channel change of a VF. vf1.sock's mode is changed by hand first: only a
    // socket made again, and given the mode again, has 0660 afterwards.
    let vf1 = dir.join("vf1.sock");
    std::fs::set_permissions(&vf1, std::fs::Permissions::from_mode(0o600)).unwrap();
    c.execute("vf-set", json!({"vf": 1, "channels": 1}))
        .unwrap();
    assert_eq!(
        c.execute("query-vfs", json!({})).unwrap()[1]["channels"],
        json!(1)
    );
    assert_ports_owned(
        dir,
        &["vf0.sock", "vf1.sock", "vf2.sock", "pv0.sock"],
        group.gid,
        0o660,
        "vf1 channels 1",
    );

    // A frontend attaches, leaves, and another comes: same socket, same group and mode, and
    // the group still gets in.
    for round in 0..2 {
        let fe = connect(dir, "vf0", pairs(1, 1));
        fe.disconnect();
        wait_detached(&emu, 0);
        assert_ports_owned(
            dir,
            &["vf0.sock", "vf1.sock", "vf2.sock", "pv0.sock"],
            group.gid,
            0o660,
            &format!("reconnect {round}"),
        );
    }
    connect_as(group.gid, &dir.join("vf2.sock")).expect("a member connects to a new VF");
}

#[test]
fn a_mode_alone_keeps_the_group_and_no_option_keeps_todays_sockets() {
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "1", "--socket-mode", "0606"]);
    // SAFETY: getegid(2) has no preconditions.
    let my_gid = unsafe { libc::getegid() };
    assert_ports_owned(
        emu.path(),
        &["vf0.sock", "pv0.sock"],
        my_gid,
        0o606,
        "mode only",
    );
    drop(emu);
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "0"]);
    // SAFETY: umask(2) twice puts the process's mask back as it was.
    let umask = unsafe {
        let m = libc::umask(0o022);
        libc::umask(m);
        m
    };
    assert_ports_owned(
        emu.path(),
        &["vf0.sock"],
        my_gid,
        0o777 & !umask,
        "no option: as bind(2) makes it",
    );
}

/// `sriov-emu run --socket-dir DIR ARGS...` to its end: (exit code, stderr).
fn run_to_exit(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("run")
        .arg("--socket-dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if t.elapsed() > WAIT {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
            panic!("sriov-emu run {args:?} kept running: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_group_or_a_bad_mode_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (args, file, code, want) in [
        (
            vec!["--socket-group", "no-such-group-here"],
            None,
            1,
            "error: cannot use the port sockets' group (--socket-group, socket_group): unknown \
             group \"no-such-group-here\"",
        ),
        (
            vec!["--socket-mode", "0999"],
            None,
            2,
            "bad socket mode \"0999\": not octal digits",
        ),
        (
            vec!["--socket-mode", "4660"],
            None,
            2,
            "only permission bits (at most 0777) apply to a socket",
        ),
        (
            vec!["--socket-mode", "rw-rw----"],
            None,
            2,
            "not octal digits",
        ),
        (
            vec!["--config"],
            Some("socket_group = \"no-such-group-here\""),
            1,
            "unknown group \"no-such-group-here\"",
        ),
        (
            vec!["--config"],
            Some("socket_mode = \"8\""),
            1,
            "bad socket mode \"8\": not octal digits",
        ),
        (
            vec!["--config"],
            Some("socket_mode = 660"),
            1,
            "bad socket mode 660 (decimal)",
        ),
    ] {
        let mut args: Vec<&str> = args;
        if let Some(text) = file {
            std::fs::write(&cfg, text).unwrap();
            args.push(cfg.to_str().unwrap());
        }
        let socks = dir.path().join("socks");
        let (got, err) = run_to_exit(&socks, &args);
        assert_eq!(got, Some(code), "{args:?} {file:?}: {err}");
        assert!(err.contains(want), "{args:?} {file:?}: {err}");
        assert!(
            !socks.exists() || port_sockets(&socks).is_empty(),
            "{args:?}: sockets were left behind"
        );
    }
}

/// The address the emulator logged for its metrics endpoint (text log: `addr=IP:PORT`).
fn metrics_addr(emu: &Emu) -> SocketAddr {
    let t = Instant::now();
    loop {
        let log = emu.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("metrics endpoint listening"))
        {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("no addr= in {line:?}"));
            return addr.parse().unwrap();
        }
        assert!(t.elapsed() < WAIT, "no metrics endpoint in the log:\n{log}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One HTTP request written as given: (status line, headers by lowercase name, body).
fn http(addr: SocketAddr, request: &[u8]) -> (String, BTreeMap<String, String>, String) {
    let mut s = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(request).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (String, BTreeMap<String, String>, String) {
    http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n\r\n").as_bytes(),
    )
}

/// The samples of an OpenMetrics text as `prometheus_client`'s OpenMetrics parser reads it
/// (it refuses text that breaks the format): `name{label="v",...}` -> value.
fn parse_with_prometheus_client(python: &Path, text: &str) -> BTreeMap<String, f64> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    assert fam.type == "counter", (fam.name, fam.type)
    for s in fam.samples:
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;
    let mut child = Command::new(python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client refused the text: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, BTreeMap<String, String>, f64)> =
        serde_json::from_slice(&out.stdout).unwrap();
    samples
        .into_iter()
        .map(|(name, labels, v)| {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            (format!("{name}{{{}}}", l.join(",")), v)
        })
        .collect()
}

/// The sample key of counter `name` of `port` in `ctl stats -j`: per-queue counters
/// (`rx_queue_3_packets`) are one family with a `queue` label.
fn sample_key(port: &str, name: &str) -> String {
    if let Some((dir, rest)) = name.split_once("_queue_") {
        if let Some((q, what)) = rest.split_once('_') {
            if q.parse::<u32>().is_ok() {
                return format!("sriov_emu_queue_{dir}_{what}_total{{port={port:?},queue={q:?}}}");
            }
        }
    }
    format!("sriov_emu_{name}_total{{port={port:?}}}")
}

#[test]
fn the_metrics_endpoint_serves_what_ctl_stats_says() {
    const TEST: &str = "the_metrics_endpoint_serves_what_ctl_stats_says";
    let emu = Emu::start(&[
        "--vfs",
        "2",
        "--pv-ports",
        "1",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    let addr = metrics_addr(&emu);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");

    // Traffic, then none: the counters stand still.
    let mut a = connect(emu.path(), "vf0", pairs(1, 1));
    let mut b = connect(emu.path(), "vf1", pairs(1, 1));
    const N: u32 = 25;
    for i in 0..N {
        a.send_wait(0, &udp_frame(vf_mac(1), vf_mac(0), 9, 9, i, 200), WAIT)
            .unwrap();
    }
    assert_eq!(recv_n(&mut b, N as usize, WAIT).len(), N as usize);
    a.send_wait(0, &broadcast(vf_mac(0)), WAIT).unwrap();
    assert_eq!(recv_n(&mut b, 1, WAIT).len(), 1);
    std::thread::sleep(QUIET);

    let (status, headers, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{headers:?}");
    assert_eq!(
        headers.get("content-type").map(String::as_str),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert_eq!(headers.get("content-length"), Some(&body.len().to_string()));
    assert!(body.ends_with("# EOF\n"), "{body}");
    assert!(
        body.contains(&format!(
            "sriov_emu_tx_packets_total{{port=\"vf0\"}} {}\n",
            N + 1
        )),
        "{body}"
    );
    // The same text as `ctl stats --format openmetrics`, byte for byte.
    assert_eq!(body, emu.ctl(&["stats", "--format", "openmetrics"]));

    // Every counter of `ctl stats -j`, with its value, as a Prometheus parser reads the text.
    let stats: Value = serde_json::from_str(&emu.ctl(&["stats", "-j"])).unwrap();
    match venv_python("prometheus_client.openmetrics.parser") {
        Ok(python) => {
            let samples = parse_with_prometheus_client(&python, &body);
            let mut n = 0;
            for p in stats.as_array().unwrap() {
                let port = p["port"].as_str().unwrap();
                for (name, v) in p["counters"].as_object().unwrap() {
                    let key = sample_key(port, name);
                    let got = samples
                        .get(&key)
                        .unwrap_or_else(|| panic!("no sample {key}"));
                    assert_eq!(*got, v.as_u64().unwrap() as f64, "{key}");
                    n += 1;
                }
            }
            assert_eq!(n, samples.len(), "samples that ctl stats does not have");
            assert_eq!(
                samples[r#"sriov_emu_rx_packets_total{port="vf1"}"#],
                f64::from(N + 1)
            );
        }
        Err(missing) => skip::skip_or_fail(TEST, &missing),
    }

    // curl, as an operator would check it.
    if skip::have("curl") {
        let out = Command::new("curl")
            .args(["-sS", "--fail", "-D", "-", "--max-time", "10"])
            .arg(format!("http://{addr}/metrics"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (head, got) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.to_ascii_lowercase().contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{head}"
        );
        assert_eq!(got, body);
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .arg(format!("http://{addr}/"))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "404");
    } else {
        skip::skip_or_fail(TEST, "curl is not installed");
    }

    // Only /metrics, only GET and HEAD, heads of at most 8 KiB.
    assert_eq!(get(addr, "/").0, "HTTP/1.1 404 Not Found");
    assert_eq!(get(addr, "/metrics/x").0, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = http(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(headers.get("allow").map(String::as_str), Some("GET, HEAD"));
    let (status, headers, rest) = http(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(rest.is_empty() && headers.contains_key("content-length"));
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert!(http(addr, big.as_bytes()).0.starts_with("HTTP/1.1 431 "));
    assert!(http(addr, b"HELLO\r\n\r\n").0.starts_with("HTTP/1.1 400 "));

    // A client that connects and says nothing holds only the metrics thread: frames still
    // flow and the control socket answers meanwhile; it is cut off after the request
    // timeout, and the next scrape is served.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(b"GET /met").unwrap();
    let t = Instant::now();
    for i in 0..N {
        a.send_wait(
            0,
            &udp_frame(vf_mac(1), vf_mac(0), 9, 9, 100 + i, 200),
            WAIT,
        )
        .unwrap();
    }
    assert_eq!(recv_n(&mut b, N as usize, WAIT).len(), N as usize);
    assert_eq!(emu.counter("vf1", "rx_packets"), u64::from(2 * N + 1));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "the data path or control waited for the slow metrics client: {:?}",
        t.elapsed()
    );
    let (status, _, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(t.elapsed() < Duration::from_secs(9), "{:?}", t.elapsed());
    assert!(body.contains(&format!(
        "sriov_emu_rx_packets_total{{port=\"vf1\"}} {}\n",
        2 * N + 1
    )));
    slow.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    assert!(
        slow.read_to_end(&mut rest).is_ok() && rest.is_empty(),
        "the slow client got {rest:?}"
    );
}

/// A child emulator, stopped by its PID (SIGTERM) if a failed assertion leaves it running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on our own child's PID, not yet reaped.
            unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
            let _ = self.0.wait();
        }
    }
}

/// `sriov-emu run` with `NOTIFY_SOCKET` set to `notify` and stderr into DIR/emulator.log.
fn spawn_notified(dir: &Path, notify: &str, args: &[&str]) -> Running {
    let log = std::fs::File::create(dir.join("emulator.log")).unwrap();
    Running(
        Command::new(BIN)
            .arg("run")
            .arg("--socket-dir")
            .arg(dir)
            .args(args)
            .env("NOTIFY_SOCKET", notify)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    )
}

/// The next datagram on `s` (fails after 10 s).
fn next_datagram(s: &UnixDatagram) -> String {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 4096];
    let n = s.recv(&mut buf).expect("a datagram from sriov-emu");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn sigterm_and_wait(child: &mut Running) -> Option<i32> {
    let child = &mut child.0;
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st.code();
        }
        assert!(t.elapsed() < WAIT, "sriov-emu did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ready_is_announced_only_once_every_socket_exists_and_the_pid_file_follows_it() {
    const VFS: usize = 48;
    const PVS: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let pid_file = dir.path().join("sriov-emu.pid");
    let mut child = spawn_notified(
        dir.path(),
        notify_path.to_str().unwrap(),
        &[
            "--vfs",
            &VFS.to_string(),
            "--pv-ports",
            &PVS.to_string(),
            "--channels-per-vf",
            "1",
            "--metrics-listen",
            "127.0.0.1:0",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
    );
    let msg = next_datagram(&notify);
    // Checked at once, before anything else: every socket must exist by now.
    let sock_dir = dir.path();
    let missing: Vec<String> = (0..VFS)
        .map(|i| format!("vf{i}.sock"))
        .chain((0..PVS).map(|i| format!("pv{i}.sock")))
        .chain(["control.sock".to_string()])
        .filter(|n| !sock_dir.join(n).exists())
        .collect();
    let pid = std::fs::read_to_string(&pid_file).ok();
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "the first datagram is not READY=1: {msg:?}"
    );
    assert!(missing.is_empty(), "READY=1 before {missing:?} existed");
    assert_eq!(
        pid.as_deref(),
        Some(format!("{}\n", child.0.id()).as_str()),
        "the PID file when READY=1 came"
    );
    assert!(
        msg.lines().any(|l| l.starts_with("STATUS=serving 48 VFs")),
        "{msg:?}"
    );
    // The control socket answers at once.
    let vfs = sriov_emu::control::client::Client::connect(&sock_dir.join("control.sock"))
        .unwrap()
        .execute("query-vfs", json!({}))
        .unwrap();
    assert_eq!(vfs.as_array().unwrap().len(), VFS);

    assert_eq!(sigterm_and_wait(&mut child), Some(0));
    assert_eq!(next_datagram(&notify), "STOPPING=1");
    assert!(!pid_file.exists(), "the PID file stayed after a clean exit");
    assert!(!sock_dir.join("vf0.sock").exists());
}

#[test]
fn ready_goes_to_an_abstract_notify_socket_too() {
    let name = format!("sriov-emu-test-ready-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    let notify = UnixDatagram::bind_addr(&addr).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut child = spawn_notified(dir.path(), &format!("@{name}"), &["--vfs", "2"]);
    let msg = next_datagram(&notify);
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg:?}");
    for s in ["vf0.sock", "vf1.sock", "pv0.sock", "control.sock"] {
        assert!(dir.path().join(s).exists(), "READY=1 before {s}");
    }
    assert_eq!(sigterm_and_wait(&mut child), Some(0));
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Running(
        Command::new(BIN)
            .args(["--log-format", "json", "run", "--socket-dir"])
            .arg(dir.path())
            .args(["--vfs", "2", "--metrics-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut err = BufReader::new(child.0.stderr.take().unwrap());
    // Read up to the metrics line (the last at start), then attach a frontend (more lines).
    let mut lines = Vec::new();
    let mut line = String::new();
    while !lines
        .last()
        .is_some_and(|l: &String| l.contains("metrics endpoint listening"))
    {
        line.clear();
        assert!(
            err.read_line(&mut line).unwrap() > 0,
            "stderr ended: {lines:?}"
        );
        lines.push(line.trim_end().to_string());
    }
    let fe = connect(dir.path(), "vf0", pairs(1, 1));
    fe.disconnect();
    assert_eq!(sigterm_and_wait(&mut child), Some(0));
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    lines.extend(rest.lines().map(str::to_string));
    let objects: Vec<Value> = lines
        .iter()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    for o in &objects {
        assert!(
            o["timestamp"].is_string() && o["level"].is_string() && o["message"].is_string(),
            "{o}"
        );
    }
    let messages: Vec<&str> = objects
        .iter()
        .filter_map(|o| o["message"].as_str())
        .collect();
    for want in ["serving", "control socket listening", "shutting down"] {
        assert!(messages.contains(&want), "no {want:?} in {messages:?}");
    }
    assert!(
        objects.iter().any(|o| o["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:"))),
        "the event's fields are keys of the object"
    );

    // A refused start reports its error as JSON too.
    let out = Command::new(BIN)
        .args(["run", "--log-format", "json", "--socket-dir"])
        .arg(dir.path().join("other"))
        .args(["--socket-group", "no-such-group-here"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let last: Value = serde_json::from_str(err.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON: {err}: {e}"));
    assert_eq!(last["level"], "ERROR");
    assert!(
        last["error"].as_str().unwrap().contains("unknown group"),
        "{last}"
    );
}

/// The subcommands `sriov-emu PATH... --help` lists (the clap definition's), `help` aside.
fn subcommands_of(path: &[String]) -> Vec<String> {
    let out = Command::new(BIN).args(path).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.strip_prefix("  ")?.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect()
}

/// Every subcommand path of the CLI, parents before children: `[run]`, `[ctl]`,
/// `[ctl, stats]`, ...
fn every_subcommand() -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut todo = vec![Vec::new()];
    while let Some(path) = todo.pop() {
        for sub in subcommands_of(&path) {
            let mut p = path.clone();
            p.push(sub);
            out.push(p.clone());
            todo.push(p);
        }
    }
    out
}

fn stdout_of(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_and_man_pages_name_every_subcommand() {
    let all = every_subcommand();
    let top: Vec<&str> = all
        .iter()
        .filter(|p| p.len() == 1)
        .map(|p| p[0].as_str())
        .collect();
    for want in ["run", "ctl", "qemu-args", "replay", "completions", "man"] {
        assert!(top.contains(&want), "{want} not in {top:?}");
    }
    assert!(
        all.iter()
            .any(|p| p == &["ctl".to_string(), "stats".to_string()]),
        "{all:?}"
    );

    let bash = stdout_of(&["completions", "bash"]);
    let zsh = stdout_of(&["completions", "zsh"]);
    let fish = stdout_of(&["completions", "fish"]);
    for path in &all {
        let (name, parents) = path.split_last().unwrap();
        // bash: a case for the word after its parent (`sriov__emu__subcmd__ctl,stats)`).
        let parent: String = std::iter::once("sriov__emu".to_string())
            .chain(
                parents
                    .iter()
                    .map(|p| format!("__subcmd__{}", p.replace('-', "__subcmd__"))),
            )
            .collect();
        assert!(
            bash.contains(&format!("{parent},{name})")),
            "bash: {path:?}"
        );
        // zsh: offered with its description, and a case of its own.
        assert!(zsh.contains(&format!("'{name}:")), "zsh: {path:?}");
        assert!(zsh.contains(&format!("({name})")), "zsh: {path:?}");
        // fish: offered after its parent.
        let cond = match parents.last() {
            None => "__fish_sriov_emu_needs_command\"".to_string(),
            Some(_) => format!("__fish_sriov_emu_using_subcommand {}", parents.join(" ")),
        };
        assert!(
            fish.lines()
                .any(|l| l.contains(&cond) && l.contains(&format!("-a \"{name}\""))),
            "fish: {path:?}"
        );
    }
    if skip::have("bash") {
        let st = Command::new("bash")
            .args(["-n", "-c", &bash])
            .status()
            .unwrap();
        assert!(st.success(), "the bash completion script does not parse");
    }

    // sriov-emu(1) on stdout names each top-level subcommand's page.
    let page = stdout_of(&["man"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH sriov-emu 1"),
        "{page}"
    );
    for t in &top {
        let roff = format!("sriov\\-emu\\-{}(1)", t.replace('-', "\\-"));
        assert!(page.contains(&roff), "man: no {roff}");
    }
    // --out-dir: a page per subcommand, and each parent's page names its children.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let page_of = |p: &[String]| {
        let name: Vec<&str> = std::iter::once("sriov-emu")
            .chain(p.iter().map(String::as_str))
            .collect();
        dir.path().join(format!("{}.1", name.join("-")))
    };
    for path in &all {
        let own = page_of(path);
        let text =
            std::fs::read_to_string(&own).unwrap_or_else(|e| panic!("{}: {e}", own.display()));
        assert!(text.contains(".TH sriov-emu-"), "{}", own.display());
        let parent = std::fs::read_to_string(page_of(&path[..path.len() - 1])).unwrap();
        let roff = format!("sriov-emu-{}(1)", path.join("-")).replace('-', "\\-");
        assert!(parent.contains(&roff), "no {roff} in the parent's page");
    }
}

/// The unit in contrib/ as systemd would run it: its `ExecStart=` command line (with the
/// socket directory, the group and the metrics port swapped for the test's), under
/// `NOTIFY_SOCKET`, becomes ready with the sockets of the group and mode it names.
#[test]
fn the_systemd_unit_runs_and_becomes_ready() {
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/sriov-emu.service"),
    )
    .unwrap();
    let lines: Vec<&str> = unit.lines().collect();
    assert!(lines.contains(&"Type=notify"), "{unit}");
    let start = lines
        .iter()
        .position(|l| l.starts_with("ExecStart="))
        .expect("an ExecStart= line");
    let mut cmd = String::new();
    for l in &lines[start..] {
        let l = l.trim();
        match l.strip_suffix('\\') {
            Some(part) => cmd += part,
            None => {
                cmd += l;
                break;
            }
        }
        cmd.push(' ');
    }
    let words: Vec<&str> = cmd
        .trim_start_matches("ExecStart=")
        .split_whitespace()
        .collect();
    assert_eq!(words[..2], ["/usr/local/bin/sriov-emu", "run"], "{cmd}");
    let group = TempGroup::new("unit");
    let dir = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config.toml");
    let mut args: Vec<String> = Vec::new();
    let mut it = words[2..].iter();
    while let Some(w) = it.next() {
        args.push(w.to_string());
        let value = match *w {
            "--config" => config.to_str().unwrap().to_string(),
            "--socket-dir" => dir.path().to_str().unwrap().to_string(),
            "--socket-group" => group.name.clone(),
            "--metrics-listen" => "127.0.0.1:0".to_string(),
            _ => continue,
        };
        it.next();
        args.push(value);
    }
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let log = std::fs::File::create(dir.path().join("emulator.log")).unwrap();
    let mut child = Running(
        Command::new(BIN)
            .arg("run")
            .args(&args)
            .env("NOTIFY_SOCKET", &notify_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let msg = next_datagram(&notify);
    assert!(
        msg.lines().any(|l| l == "READY=1"),
        "{msg:?}\n{}",
        std::fs::read_to_string(dir.path().join("emulator.log")).unwrap_or_default()
    );
    let want: Vec<String> = (0..8)
        .map(|i| format!("vf{i}.sock"))
        .chain(["pv0.sock".to_string()])
        .collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    assert_ports_owned(dir.path(), &want, group.gid, 0o660, "the unit's sockets");
    assert_eq!(sigterm_and_wait(&mut child), Some(0));
    // Its logs are JSON lines (--log-format json).
    let log = std::fs::read_to_string(dir.path().join("emulator.log")).unwrap();
    assert!(log.lines().count() >= 3, "{log}");
    for l in log.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}"));
    }
}
