//! DPDK's virtio PMD on two VFs: dpdk-testpmd with two virtio-user ports (as `scripts/bench-peers`
//! runs its generator) negotiates VIRTIO_F_IN_ORDER with the emulator and takes its in-order TX
//! and RX paths. Those trust the device to use chains in the order they were posted: TX frees
//! its mbufs from the used index alone, RX takes each used element's buffer by position. Frames
//! loop between the two ports through the switch (mac forwarding, one burst of 32 from each
//! port to start) for a few seconds, in event and in busy-poll mode; none may be lost or made
//! up: the emulator's counters equal testpmd's, and the 64 frames started are the only ones in
//! flight at the end. A chain used out of order would free an mbuf still in flight, and lose or
//! repeat frames.

mod common;

use common::*;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TESTPMD: &str = "dpdk-testpmd";
/// Frames each port sends first (`start tx_first` sends one burst of 32 from each port).
const IN_FLIGHT: u64 = 64;
/// How long the frames loop.
const LOOP: Duration = Duration::from_secs(3);

/// One port's forward statistics as testpmd prints them at `stop`.
#[derive(Debug, Default, Clone, Copy)]
struct PortStats {
    rx: u64,
    rx_dropped: u64,
    tx: u64,
    tx_dropped: u64,
}

/// The value after `key` on `line` ("RX-packets: 123 ...").
fn field(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The "Forward statistics for port N" blocks of testpmd's output.
fn forward_stats(out: &str) -> [Option<PortStats>; 2] {
    let mut ports = [None, None];
    let mut cur: Option<usize> = None;
    for line in out.lines() {
        if let Some(at) = line.find("Forward statistics for port ") {
            cur = line[at + 28..]
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .filter(|n: &usize| *n < 2);
            if let Some(p) = cur {
                ports[p] = Some(PortStats::default());
            }
            continue;
        }
        let Some(p) = cur else { continue };
        let Some(s) = ports[p].as_mut() else { continue };
        if line.contains("RX-packets:") {
            s.rx = field(line, "RX-packets:").unwrap_or(0);
            s.rx_dropped = field(line, "RX-dropped:").unwrap_or(0);
        } else if line.contains("TX-packets:") {
            s.tx = field(line, "TX-packets:").unwrap_or(0);
            s.tx_dropped = field(line, "TX-dropped:").unwrap_or(0);
            cur = None;
        }
    }
    ports
}

/// Every `drop_*` counter of `port` that is not 0.
fn drops(emu: &Emu, port: &str) -> Vec<(String, u64)> {
    let s = emu
        .control()
        .execute("query-stats", serde_json::json!({"port": port}))
        .unwrap();
    s[0]["counters"]
        .as_object()
        .map(|c| {
            c.iter()
                .filter(|(k, v)| k.starts_with("drop_") && v.as_u64() != Some(0))
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(u64::MAX)))
                .collect()
        })
        .unwrap_or_default()
}

/// A directory removed when the test ends, passed or not.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loop_frames(poll: bool) {
    let mut args = vec!["--vfs", "2", "--pv-ports", "0"];
    if poll {
        // The worker on CPU1, testpmd's forwarding lcore on CPU0 (bench-peers' layout).
        args.extend(["--poll", "--cpus", "1"]);
    }
    let emu = Emu::start(&args);
    let (mac0, mac1) = (vf_mac(0).to_string(), vf_mac(1).to_string());
    let port = |n: usize, mac: &str| {
        format!(
            "net_virtio_user{n},path={},queue_size=256,mac={mac}",
            emu.path().join(format!("vf{n}.sock")).display()
        )
    };
    let out_path = emu.path().join("testpmd.log");
    // One file (one offset) for both streams: the PMD's log lines go to stderr.
    let out_file = std::fs::File::create(&out_path).unwrap();
    // --no-huge: memfd-backed memory the emulator can map, no hugepages to set up. Its runtime
    // files (/var/run/dpdk/PREFIX: --in-memory cannot go with --no-huge) are removed on drop.
    let prefix = format!("sriov_in_order_{}_{poll}", std::process::id());
    let _runtime = RemoveOnDrop(std::path::PathBuf::from("/var/run/dpdk").join(&prefix));
    let mut child = Command::new(TESTPMD)
        .args(["--lcores", "0@0,1@0", "--no-pci", "--no-huge", "-m", "256"])
        .args(["--file-prefix", &prefix])
        .arg("--log-level=pmd.net.virtio.*:info")
        .args(["--vdev", &port(0, &mac0), "--vdev", &port(1, &mac1)])
        .args(["--", "-i", "--forward-mode=mac", "--nb-cores=1"])
        .arg(format!("--eth-peer=0,{mac1}"))
        .arg(format!("--eth-peer=1,{mac0}"))
        .args(["--total-num-mbufs=4096", "--rxd=256", "--txd=256"])
        .stdin(Stdio::piped())
        .stdout(out_file.try_clone().unwrap())
        .stderr(out_file)
        .spawn()
        .unwrap_or_else(|e| panic!("{TESTPMD}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let log = || std::fs::read_to_string(&out_path).unwrap_or_default();
    // Both ports up (the emulator sees both VFs attached) before the first burst.
    let t = Instant::now();
    let attached = |port: &str| {
        emu.control()
            .execute("query-stats", serde_json::json!({"port": port}))
            .is_ok_and(|s| s[0]["attached"] == true)
    };
    while !(log().contains("testpmd>") && attached("vf0") && attached("vf1")) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "testpmd did not bring both ports up:\n{}\n{}",
            log(),
            emu.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    writeln!(stdin, "start tx_first 1").unwrap();
    std::thread::sleep(LOOP);
    writeln!(stdin, "stop").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    writeln!(stdin, "quit").unwrap();
    drop(stdin);
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t.elapsed() > Duration::from_secs(30) {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
            let _ = child.wait();
            panic!("testpmd did not quit:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = log();
    assert!(status.success(), "testpmd failed ({status}):\n{out}");
    let ctx = format!("poll {poll}; testpmd:\n{out}\nemulator:\n{}", emu.log());

    for p in 0..2 {
        for path in ["Tx", "Rx"] {
            let want = format!("using inorder {path} path on port {p}");
            assert!(
                out.contains(&want),
                "no '{want}': IN_ORDER not negotiated; {ctx}"
            );
        }
    }
    let [Some(s0), Some(s1)] = forward_stats(&out) else {
        panic!("no forward statistics for both ports; {ctx}");
    };
    let looped = s0.rx + s1.rx;
    assert!(looped > 10_000, "only {looped} frames looped; {ctx}");
    for s in [s0, s1] {
        assert_eq!((s.rx_dropped, s.tx_dropped), (0, 0), "{s:?}; {ctx}");
    }
    // Sent and not (yet) received: exactly the frames started, none lost or made up.
    assert_eq!(
        (s0.tx + s1.tx) - (s0.rx + s1.rx),
        IN_FLIGHT,
        "port 0 {s0:?}, port 1 {s1:?}; {ctx}"
    );
    // The emulator took every frame each port sent and delivered it to the other.
    for (n, s) in [(0usize, s0), (1, s1)] {
        let (me, peer) = (format!("vf{n}"), format!("vf{}", 1 - n));
        assert_eq!(emu.counter(&me, "tx_packets"), s.tx, "{me}; {ctx}");
        assert_eq!(
            emu.counter(&peer, "rx_packets"),
            s.tx,
            "{peer} got what {me} sent; {ctx}"
        );
        assert_eq!(drops(&emu, &me), vec![], "{me}; {ctx}");
    }
}

fn testpmd_or_skip(test: &str) -> bool {
    if skip::have(TESTPMD) {
        return true;
    }
    skip::skip_or_fail(
        test,
        "dpdk-testpmd is not installed (Debian's dpdk package, which scripts/setup installs)",
    );
    false
}

#[test]
fn dpdk_virtio_in_order_loop_event_mode() {
    if testpmd_or_skip("dpdk_virtio_in_order_loop_event_mode") {
        loop_frames(false);
    }
}

#[test]
fn dpdk_virtio_in_order_loop_poll_mode() {
    if testpmd_or_skip("dpdk_virtio_in_order_loop_poll_mode") {
        loop_frames(true);
    }
}
