//! Captures as Wireshark's tools read them: a capture written by `capture::PcapngOut` and
//! `capture::CaptureSession` is read by Debian's tshark without errors, with every frame on
//! its port's interface (or `drops`), its direction, its nanosecond time and the switch's
//! decision as its comment. A missing tshark fails the test (`./scripts/setup` installs it).

use sriov_emu::capture::{
    CaptureSession, Decision, Direction, PcapngOut, PortSet, Record, VlanAction,
};
use sriov_emu::rss::Steering;
use std::process::Command;

fn name(p: u16) -> String {
    match p {
        0..=253 => format!("vf{p}"),
        254 => "pv0".into(),
        _ => "uplink".into(),
    }
}

/// `tshark -r FILE -T fields -E separator=| -e ...`: one line per frame; fails on any error.
fn tshark_fields(file: &std::path::Path, fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r")
        .arg(file)
        .args(["-T", "fields", "-E", "separator=|"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("tshark is missing ({e}): ./scripts/setup installs it"));
    // Anything on stderr but tshark's note about running as root is an error it found.
    let stderr: String = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("Running as user"))
        .collect();
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "tshark failed ({}): {stderr}",
        out.status
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

#[test]
fn tshark_reads_interfaces_directions_times_and_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mixed.pcapng");
    let out = PcapngOut::create(&path, 256, None).unwrap();
    let s =
        CaptureSession::start(out, path.clone(), PortSet::all(), 256, 64, Box::new(name)).unwrap();
    let udp = {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 1, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f
    };
    let put = |port: Option<u16>, dir: Direction, ts: u64, d: Decision| {
        let mut r: Box<Record> = s.slot().expect("a free slot");
        r.ts_ns = ts;
        r.port = port;
        r.dir = dir;
        r.set_frame(&udp, udp.len());
        r.decision = d;
        s.submit(r);
        s.wake();
    };
    let mut fwd = Decision {
        ingress: 0,
        ingress_queue: 1,
        rss_hash: Some(0xdead_beef),
        steering: Some(Steering::Rss),
        ..Decision::default()
    };
    fwd.push_egress(1, 0);
    put(
        Some(0),
        Direction::Inbound,
        1_800_000_000_000_000_001,
        fwd.clone(),
    );
    put(Some(1), Direction::Outbound, 1_800_000_000_000_000_002, fwd);
    let mut tagged = Decision {
        ingress: 254,
        vlan: VlanAction::Insert {
            vid: 100,
            tpid: 0x8100,
        },
        ..Decision::default()
    };
    tagged.push_egress(255, 0);
    put(
        Some(255),
        Direction::Outbound,
        1_800_000_000_000_000_003,
        tagged,
    );
    let spoofed = Decision {
        ingress: 2,
        drop: Some("drop_spoofchk"),
        ..Decision::default()
    };
    put(None, Direction::Inbound, 1_800_000_000_000_000_004, spoofed);
    let (_, stats) = s.stop();
    assert_eq!((stats.captured, stats.dropped), (4, 0));
    let rows = tshark_fields(
        &path,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "frame.time_epoch",
            "frame.comment",
        ],
    );
    let want = [
        [
            "vf0",
            "0x00000001",
            "1800000000.000000001",
            "in vf0 q1; out vf1 q0; steered by rss, hash 0xdeadbeef",
        ],
        [
            "vf1",
            "0x00000002",
            "1800000000.000000002",
            "in vf0 q1; out vf1 q0; steered by rss, hash 0xdeadbeef",
        ],
        [
            "uplink",
            "0x00000002",
            "1800000000.000000003",
            "in pv0 q0; out uplink q0; vlan insert 100 (tpid 0x8100)",
        ],
        [
            "drops",
            "0x00000001",
            "1800000000.000000004",
            "in vf2 q0; dropped: drop_spoofchk",
        ],
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (got, want) in rows.iter().zip(want) {
        assert_eq!(got, &want.map(String::from).to_vec());
    }
}

mod common;

/// A mixed run through the real binary with `--pcap DIR`, stopped with SIGTERM: tshark reads
/// the file; every port's interface has exactly its `tx_packets` inbound and its `rx_packets`
/// outbound; every frame a `drop_*` counter counted is on `drops`, its comment naming that
/// counter (a spoofed frame, a VLAN-filtered one, one with no destination among them).
#[test]
fn a_pcap_run_shows_every_frame_where_the_counters_say_and_every_drop_with_its_reason() {
    use common::{broadcast, connect, pairs, vf_mac, Emu, WAIT};
    let cap = tempfile::tempdir().unwrap();
    let dir = cap.path().join("pcaps");
    let emu = Emu::start(&[
        "--vfs",
        "3",
        "--pv-ports",
        "0",
        "--pcap",
        dir.to_str().unwrap(),
    ]);
    // vf2 is on port VLAN 100: frames tagged with another VLAN do not reach it.
    emu.control()
        .execute("vf-set", serde_json::json!({"vf": 2, "vlan": 100}))
        .unwrap();
    let mut fe: Vec<_> = (0..3)
        .map(|i| connect(emu.path(), &format!("vf{i}"), pairs(1, 1)))
        .collect();
    let unicast = |dst: [u8; 6], src: [u8; 6], n: u8| {
        let mut f = vec![n; 60];
        f[..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f[12..14].copy_from_slice(&[0x88, 0xb5]);
        f
    };
    for n in 0..20u8 {
        fe[0]
            .send_wait(0, &unicast(vf_mac(1).0, vf_mac(0).0, n), WAIT)
            .unwrap();
        fe[1]
            .send_wait(0, &unicast(vf_mac(0).0, vf_mac(1).0, n), WAIT)
            .unwrap();
    }
    // A broadcast (to vf1 and, untagged into its VLAN, vf2).
    fe[0].send_wait(0, &broadcast(vf_mac(0)), WAIT).unwrap();
    // Spoofed: vf0 with another source MAC.
    fe[0]
        .send_wait(0, &unicast(vf_mac(1).0, [2, 9, 9, 9, 9, 9], 1), WAIT)
        .unwrap();
    // To nobody: an unknown unicast with no port that takes it (no PV port, no uplink).
    fe[0]
        .send_wait(0, &unicast([2, 7, 7, 7, 7, 7], vf_mac(0).0, 2), WAIT)
        .unwrap();
    // Tagged with VLAN 200, broadcast: vf1 takes it, vf2 (VLAN 100) filters it.
    let mut tagged = broadcast(vf_mac(1));
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0xc8]);
    fe[1].send_wait(0, &tagged, WAIT).unwrap();
    for f in &mut fe {
        f.drain(std::time::Duration::from_millis(200));
    }
    let stats = emu
        .control()
        .execute("query-stats", serde_json::json!({}))
        .unwrap();
    drop(fe);
    drop(emu); // SIGTERM: the capture is flushed at exit
    let file = dir.join("sriov-emu.pcapng");
    let rows = tshark_fields(
        &file,
        &[
            "frame.interface_name",
            "frame.packet_flags_direction",
            "frame.comment",
        ],
    );
    let count = |iface: &str, dir: &str| {
        rows.iter().filter(|r| r[0] == iface && r[1] == dir).count() as u64
    };
    let mut drops: std::collections::BTreeMap<String, u64> = Default::default();
    for p in stats.as_array().unwrap() {
        let name = p["port"].as_str().unwrap();
        let c = &p["counters"];
        assert_eq!(
            count(name, "0x00000001"),
            c["tx_packets"].as_u64().unwrap(),
            "{name}: inbound frames against tx_packets"
        );
        assert_eq!(
            count(name, "0x00000002"),
            c["rx_packets"].as_u64().unwrap(),
            "{name}: outbound frames against rx_packets"
        );
        for (k, v) in c.as_object().unwrap() {
            if k.starts_with("drop_") && v.as_u64().unwrap() > 0 {
                *drops.entry(k.clone()).or_default() += v.as_u64().unwrap();
            }
        }
    }
    println!("{} frames captured; drops counted: {drops:?}", rows.len());
    for want in ["drop_spoofchk", "drop_vlan_filter", "drop_no_destination"] {
        assert!(drops.contains_key(want), "no {want} in this run: {drops:?}");
    }
    let on_drops: Vec<&Vec<String>> = rows.iter().filter(|r| r[0] == "drops").collect();
    for (name, n) in &drops {
        let shown = on_drops
            .iter()
            .filter(|r| r[2].ends_with(&format!("dropped: {name}")))
            .count() as u64;
        assert_eq!(shown, *n, "{name}: frames on drops against the counter");
    }
    assert_eq!(on_drops.len() as u64, drops.values().sum::<u64>());
}

/// `ctl capture vf1 -w - | tshark -i -` shows frames sent while it runs; Ctrl-C (SIGINT to
/// ctl) stops the capture and ends the stream.
#[test]
fn ctl_capture_streams_live_into_tshark() {
    use common::{connect, pairs, vf_mac, Emu, WAIT};
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let emu = Emu::start(&["--vfs", "2", "--pv-ports", "0"]);
    let mut tx = connect(emu.path(), "vf0", pairs(1, 1));
    let mut rx = connect(emu.path(), "vf1", pairs(1, 1));
    let mut ctl = Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
        .args(["ctl", "--socket-dir"])
        .arg(emu.path())
        .args(["capture", "vf1", "-w", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut tshark = Command::new("tshark")
        .args([
            "-l",
            "-i",
            "-",
            "-T",
            "fields",
            "-e",
            "frame.interface_name",
            "-e",
            "frame.comment",
        ])
        .stdin(ctl.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("tshark is missing ({e}): ./scripts/setup installs it"));
    // The capture runs once the control socket lists it.
    let t = std::time::Instant::now();
    while emu
        .control()
        .execute("query-captures", serde_json::json!({}))
        .unwrap()
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(t.elapsed() < WAIT, "the capture never started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&vf_mac(1).0);
    frame[6..12].copy_from_slice(&vf_mac(0).0);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    for _ in 0..10 {
        tx.send_wait(0, &frame, WAIT).unwrap();
    }
    rx.drain(std::time::Duration::from_millis(100));
    // Ten lines from tshark while the capture still runs: vf1's outbound frames.
    let lines = std::sync::mpsc::channel();
    let out = BufReader::new(tshark.stdout.take().unwrap());
    let reader = std::thread::spawn(move || {
        for l in out.lines().map_while(Result::ok) {
            if lines.0.send(l).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < 10 {
        match lines.1.recv_timeout(WAIT) {
            Ok(l) => got.push(l),
            Err(_) => panic!("tshark showed {} lines live: {got:?}", got.len()),
        }
    }
    assert!(
        got.iter()
            .all(|l| l == "vf1\tin vf0 q0; out vf1 q0; steered by non_ip"),
        "{got:?}"
    );
    // Ctrl-C: ctl stops the capture and the stream ends.
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(ctl.id() as i32, libc::SIGINT) };
    let st = ctl.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut ctl.stderr.take().unwrap(), &mut err).unwrap();
    assert!(st.success(), "ctl: {st}: {err}");
    assert!(err.contains("captured 10 frames (0 dropped"), "{err}");
    assert!(tshark.wait().unwrap().success());
    let _ = reader.join();
    let left = emu
        .control()
        .execute("query-captures", serde_json::json!({}))
        .unwrap();
    assert_eq!(left, serde_json::json!([]));
}

/// The control commands check their input before starting anything.
#[test]
fn capture_commands_refuse_bad_input_clearly() {
    use common::Emu;
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "0"]);
    let err = |args: serde_json::Value| {
        emu.control()
            .execute("capture-start", args)
            .unwrap_err()
            .to_string()
    };
    assert!(err(serde_json::json!({"file": "rel.pcapng"})).contains("must be an absolute path"));
    let f = emu.path().join("x.pcapng");
    assert_eq!(
        err(serde_json::json!({"file": f, "ports": ["vf9x"]})),
        "no port \"vf9x\" to capture (ports: vfN, pvN, uplink, drops)"
    );
    assert!(err(serde_json::json!({"file": f, "snaplen": 0})).contains("out of range"));
    assert!(err(serde_json::json!({"file": f, "max-mb": 0})).contains("at least 1"));
    let e = emu
        .control()
        .execute("capture-stop", serde_json::json!({"id": 7}))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "no capture 7");
    // A good one starts, is listed, and stops with its file.
    let id = emu
        .control()
        .execute(
            "capture-start",
            serde_json::json!({"file": f, "ports": ["vf0", "drops"]}),
        )
        .unwrap()["id"]
        .clone();
    let list = emu
        .control()
        .execute("query-captures", serde_json::json!({}))
        .unwrap();
    assert_eq!(list[0]["id"], id);
    let stopped = emu
        .control()
        .execute("capture-stop", serde_json::json!({"id": id}))
        .unwrap();
    assert_eq!(stopped["files"], serde_json::json!([f]));
    assert!(f.exists());
}

/// The frames on `iface` in a pcapng file, in order (read back with the pcap-file crate).
fn frames_on(file: &std::path::Path, iface: &str) -> Vec<Vec<u8>> {
    use pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let mut r = PcapNgReader::new(std::fs::File::open(file).unwrap()).unwrap();
    let (mut names, mut out) = (Vec::new(), Vec::new());
    while let Some(b) = r.next_block() {
        match b.unwrap() {
            Block::InterfaceDescription(i) => names.push(
                i.options
                    .iter()
                    .find_map(|o| match o {
                        InterfaceDescriptionOption::IfName(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default(),
            ),
            Block::EnhancedPacket(e) if names[e.interface_id as usize] == iface => {
                out.push(e.data.into_owned())
            }
            _ => {}
        }
    }
    out
}

/// `sriov-emu replay` sends a capture's frames into vf0 as its guest would: the peer (vf1)
/// receives them byte for byte, as its capture shows too, and the malformed one is on `drops`.
/// Both formats (the fixtures' pcapng and pcap), with --loop and --rate.
#[test]
fn replaying_the_fixtures_into_vf0_delivers_byte_identical_frames_to_vf1() {
    use common::{connect, pairs, Emu};
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/captures");
    let want = sriov_emu::capture::replay::read_frames(&fixtures.join("mixed.pcapng"))
        .unwrap()
        .frames;
    let classic = sriov_emu::capture::replay::read_frames(&fixtures.join("mixed.pcap"))
        .unwrap()
        .frames;
    assert_eq!(classic, want, "the two fixtures hold the same frames");
    let cap = tempfile::tempdir().unwrap();
    let emu = Emu::start(&[
        "--vfs",
        "2",
        "--pv-ports",
        "0",
        "--mtu",
        "9000",
        "--pcap",
        cap.path().to_str().unwrap(),
        "--pcap-ports",
        "vf1,drops",
    ]);
    let mut rx = connect(emu.path(), "vf1", pairs(1, 1));
    let replay = |file: &str, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
            .args(["replay"])
            .arg(fixtures.join(file))
            .args(["--port", "vf0", "--socket-dir"])
            .arg(emu.path())
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "replay {file}: {err}");
        err
    };
    let said = replay("mixed.pcapng", &[]);
    assert!(
        said.contains(&format!("replayed {} frames", want.len())),
        "{said}"
    );
    let said = replay("mixed.pcap", &["--loop", "2", "--rate", "1000"]);
    assert!(
        said.contains(&format!("replayed {} frames", 2 * want.len())),
        "{said}"
    );
    let got: Vec<Vec<u8>> = rx
        .drain(std::time::Duration::from_millis(300))
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    // Every well-formed frame, three times, in order; the 10-byte one never arrives.
    let delivered: Vec<&Vec<u8>> = want.iter().filter(|f| f.len() >= 14).collect();
    assert_eq!(got.len(), 3 * delivered.len(), "frames at vf1");
    for (i, f) in got.iter().enumerate() {
        assert!(
            f == delivered[i % delivered.len()],
            "frame {i} differs at vf1"
        );
    }
    // The hash vf1's RSS gives the fixtures' IPv4 UDP flow, as `vf-rss-test` explains it.
    let explained = emu
        .control()
        .execute(
            "vf-rss-test",
            serde_json::json!({"vf": 1, "proto": "udp", "src": "198.18.0.1", "dst": "198.18.0.2",
                               "src-port": 1234, "dst-port": 5678}),
        )
        .unwrap();
    let hash = explained["hash"].as_str().unwrap().to_string();
    drop(rx);
    drop(emu);
    let file = cap.path().join("sriov-emu.pcapng");
    assert_eq!(
        frames_on(&file, "vf1"),
        got,
        "vf1's capture against what it received"
    );
    let rows = tshark_fields(&file, &["frame.interface_name", "frame.comment"]);
    let udp4: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| r[0] == "vf1")
        .skip(1)
        .step_by(8)
        .collect();
    assert_eq!(udp4.len(), 3);
    for r in udp4 {
        assert_eq!(
            r[1],
            format!("in vf0 q0; out vf1 q0; steered by rss, hash {hash}")
        );
    }
    // The 10-byte frame is refused as a descriptor chain (shorter than an Ethernet header):
    // its record on `drops` has no bytes (a refused chain's memory is never read).
    let dropped = frames_on(&file, "drops");
    assert_eq!(dropped, vec![Vec::<u8>::new(); 3]);
    let rows = tshark_fields(&file, &["frame.interface_name", "frame.comment"]);
    let malformed = rows
        .iter()
        .filter(|r| r[0] == "drops" && r[1] == "in vf0 q0; dropped: drop_malformed")
        .count();
    assert_eq!(malformed, 3);
}

/// A long run under `--pcap-max-mb 1`: the capture is a ring of files whose total stays under
/// the limit, and a SIGTERM in the middle of the traffic leaves every file readable.
#[test]
fn a_size_limited_capture_stays_under_its_limit_and_survives_sigterm_mid_run() {
    use common::{connect, pairs, vf_mac, Emu};
    let cap = tempfile::tempdir().unwrap();
    let mut emu = Emu::start(&[
        "--vfs",
        "2",
        "--pv-ports",
        "0",
        "--pcap",
        cap.path().to_str().unwrap(),
        "--pcap-max-mb",
        "1",
    ]);
    let mut tx = connect(emu.path(), "vf0", pairs(1, 1));
    let mut rx = connect(emu.path(), "vf1", pairs(1, 1));
    let mut frame = vec![0u8; 1000];
    frame[..6].copy_from_slice(&vf_mac(1).0);
    frame[6..12].copy_from_slice(&vf_mac(0).0);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let wait = std::time::Duration::from_secs(2);
    // About 20 MB of records (two per frame) through a 1 MiB ring, then SIGTERM mid-stream.
    for i in 0..30_000u32 {
        frame[14..18].copy_from_slice(&i.to_be_bytes());
        if i == 10_000 {
            // SAFETY: kill(2) on our own child's PID.
            unsafe { libc::kill(emu.child.id() as i32, libc::SIGTERM) };
        }
        if tx.send_wait(0, &frame, wait).is_err() {
            break;
        }
        if i % 256 == 0 {
            rx.drain(std::time::Duration::ZERO);
        }
    }
    let st = emu.child.wait().unwrap();
    assert!(st.success(), "the emulator exited with {st}");
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(cap.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let total: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    println!("{} files, {total} bytes", files.len());
    assert!(files.len() >= 2 && files.len() <= 4, "{files:?}");
    assert!(total <= 1 << 20, "{total} bytes under a 1 MiB limit");
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("sriov-emu-") && name.ends_with(".pcapng"),
            "{name}"
        );
        // tshark reads it to the end without complaint (no block cut short).
        let rows = tshark_fields(f, &["frame.interface_name"]);
        assert!(!rows.is_empty(), "{name} holds no frame");
    }
}

/// A capture whose writer is stuck (its FIFO is never read) costs the traffic nothing: every
/// frame is delivered, about as fast as without the capture, and what the capture had no room
/// for is counted in `capture_dropped` (captured + dropped = every record it was offered).
#[test]
fn a_stuck_capture_writer_costs_no_throughput_and_counts_capture_dropped() {
    use common::{connect, pairs, vf_mac, Emu, WAIT};
    use std::os::unix::fs::OpenOptionsExt;
    const N: u32 = 20_480;
    let emu = Emu::start(&["--vfs", "2", "--pv-ports", "0"]);
    let mut tx = connect(emu.path(), "vf0", pairs(1, 1));
    let mut rx = connect(emu.path(), "vf1", pairs(1, 1));
    let mut frame = [0u8; 64];
    frame[..6].copy_from_slice(&vf_mac(1).0);
    frame[6..12].copy_from_slice(&vf_mac(0).0);
    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
    let mut run = || {
        let t = std::time::Instant::now();
        let mut got = 0u32;
        for _ in 0..N / 64 {
            let sent = tx
                .send_batch(0, std::iter::repeat_n(&frame[..], 64))
                .unwrap();
            assert_eq!(sent, 64);
            let t0 = std::time::Instant::now();
            let mut burst = 0;
            while burst < 64 {
                if rx.recv(0).is_some() {
                    burst += 1;
                } else {
                    assert!(t0.elapsed() < WAIT, "frames stopped arriving");
                }
            }
            got += burst;
        }
        (got, t.elapsed())
    };
    let (got_before, before) = run();
    // A FIFO opened for reading and never read: the writer blocks once its 64 KiB are full.
    let fifo = emu.path().join("stuck.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path alive across the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let id = emu
        .control()
        .execute("capture-start", serde_json::json!({"file": fifo}))
        .unwrap()["id"]
        .clone();
    let (got_stuck, stuck) = run();
    let listed = emu
        .control()
        .execute("query-captures", serde_json::json!({}))
        .unwrap();
    let (captured, dropped) = (
        listed[0]["captured"].as_u64().unwrap(),
        listed[0]["capture_dropped"].as_u64().unwrap(),
    );
    // The reader goes: the writer's write fails, the capture stops taking frames.
    drop(reader);
    let stopped = emu
        .control()
        .execute("capture-stop", serde_json::json!({"id": id}))
        .unwrap();
    let (got_after, after) = run();
    println!(
        "{N} frames: {before:.2?} without the capture, {stuck:.2?} with a stuck one \
         (captured {captured}, dropped {dropped}), {after:.2?} after it; stop: {stopped}"
    );
    assert_eq!((got_before, got_stuck, got_after), (N, N, N));
    assert_eq!(
        captured + dropped,
        2 * u64::from(N),
        "inbound on vf0 and outbound on vf1"
    );
    assert!(
        dropped > u64::from(N),
        "the stuck writer took {captured} records"
    );
    let plain = before.max(after);
    assert!(
        stuck < plain * 2 + std::time::Duration::from_millis(100),
        "the stuck capture slowed the traffic: {stuck:?} against {plain:?}"
    );
}
