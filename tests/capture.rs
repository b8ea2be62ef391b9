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
    let s = CaptureSession::start(out, PortSet::all(), 256, 64, Box::new(name)).unwrap();
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
