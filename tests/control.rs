//! The management plane through the real binary's control socket: the QMP wire protocol, bad
//! input, `ctl` output, and every VF knob's effect on real frames with its exact drop counter.

mod common;

use common::*;
use serde_json::{json, Value};
use sriov_emu::wire::MacAddr;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sriov-emu");

/// A raw line-level connection, to send what no client library would.
struct Raw {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Raw {
    fn connect(emu: &Emu) -> Raw {
        let s = UnixStream::connect(emu.path().join("control.sock")).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut raw = Raw {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        };
        let greeting = raw.read();
        assert!(
            greeting["QMP"]["version"]["qemu"]["major"].is_u64(),
            "{greeting}"
        );
        raw
    }

    fn read(&mut self) -> Value {
        loop {
            let mut line = String::new();
            self.r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    fn send_line(&mut self, line: &[u8]) -> Value {
        self.w.write_all(line).unwrap();
        self.w.write_all(b"\n").unwrap();
        self.read()
    }

    fn exec(&mut self, cmd: &str, args: Value) -> Value {
        self.send_line(
            json!({"execute": cmd, "arguments": args})
                .to_string()
                .as_bytes(),
        )
    }
}

#[test]
fn qmp_wire_protocol_greeting_capabilities_ids_and_errors() {
    let emu = Emu::start(&["--vfs", "2"]);
    let mut raw = Raw::connect(&emu);
    let before = raw.exec("query-vfs", json!({}));
    assert_eq!(
        before["error"]["class"], "CommandNotFound",
        "commands need qmp_capabilities first"
    );
    assert_eq!(
        raw.send_line(br#"{"execute":"qmp_capabilities","id":1}"#),
        json!({"return": {}, "id": 1})
    );
    let v = raw.send_line(br#"{"execute":"query-version","id":"abc"}"#);
    assert_eq!(v["id"], "abc");
    assert!(v["return"]["package"]
        .as_str()
        .unwrap()
        .starts_with("sriov-emu"));
    let vfs = raw.exec("query-vfs", json!({}))["return"].clone();
    assert_eq!(vfs.as_array().unwrap().len(), 2);
    assert_eq!(vfs[1]["mac"], "02:00:00:00:01:01");
    let pf = raw.exec("query-pf", json!({}))["return"].clone();
    assert_eq!(
        (pf["totalvfs"].as_u64(), pf["channels"]["free"].as_u64()),
        (Some(254), Some(2044))
    );
    // Control socket permissions: owner only.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(emu.path().join("control.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn every_bad_input_is_an_error_and_changes_nothing() {
    let emu = Emu::start(&["--vfs", "2", "--channels-per-vf", "2"]);
    let mut raw = Raw::connect(&emu);
    raw.exec("qmp_capabilities", json!({}));
    let state = |raw: &mut Raw| {
        (
            raw.exec("query-vfs", json!({})),
            raw.exec("query-pf", json!({})),
        )
    };
    let initial = state(&mut raw);
    let huge = format!(
        r#"{{"execute":"query-vfs","arguments":{{"x":"{}"}}}}"#,
        "a".repeat(100_000)
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("unknown VF", json!({"execute":"vf-set","arguments":{"vf":7,"spoofchk":false}}).to_string().into(), "vf 7 does not exist"),
        ("negative VF", json!({"execute":"vf-set","arguments":{"vf":-1,"trust":true}}).to_string().into(), "out of range"),
        ("multicast MAC", json!({"execute":"vf-set","arguments":{"vf":0,"mac":"01:00:5e:00:00:01"}}).to_string().into(), "must be unicast"),
        ("zero MAC", json!({"execute":"vf-set","arguments":{"vf":0,"mac":"00:00:00:00:00:00"}}).to_string().into(), "must be unicast"),
        ("VLAN 4096", json!({"execute":"vf-set","arguments":{"vf":0,"vlan":4096}}).to_string().into(), "VLAN 4096 is out of range"),
        ("QoS 8", json!({"execute":"vf-set","arguments":{"vf":0,"vlan":5,"qos":8}}).to_string().into(), "QoS 8 is out of range"),
        ("bad proto", json!({"execute":"vf-set","arguments":{"vf":0,"vlan":5,"proto":"802.1x"}}).to_string().into(), "802.1x"),
        ("negative rate", json!({"execute":"vf-set","arguments":{"vf":0,"max-tx-rate":-10}}).to_string().into(), "max_tx_rate -10"),
        ("min above max", json!({"execute":"vf-set","arguments":{"vf":0,"max-tx-rate":100,"min-tx-rate":200}}).to_string().into(), "above max_tx_rate"),
        ("bad link state", json!({"execute":"vf-set","arguments":{"vf":0,"link-state":"up"}}).to_string().into(), "not auto, enable or disable"),
        ("channels over budget", json!({"execute":"vf-set","arguments":{"vf":0,"channels":65}}).to_string().into(), "out of range"),
        ("mixed valid and invalid", json!({"execute":"vf-set","arguments":{"vf":0,"trust":true,"vlan":9999}}).to_string().into(), "VLAN 9999"),
        ("wrong type", json!({"execute":"vf-set","arguments":{"vf":0,"vlan":"ten"}}).to_string().into(), "expects an integer"),
        ("unknown parameter", json!({"execute":"vf-set","arguments":{"vf":0,"colour":"blue"}}).to_string().into(), "'colour' is unexpected"),
        ("misspelt parameter beside a valid one", json!({"execute":"vf-set","arguments":{"vf":0,"vlan":7,"vlna":8}}).to_string().into(), "'vlna' is unexpected"),
        ("numvfs not through 0", json!({"execute":"set-numvfs","arguments":{"numvfs":3}}).to_string().into(), "set it to 0 before"),
        ("numvfs too high", json!({"execute":"set-numvfs","arguments":{"numvfs":255}}).to_string().into(), "numvfs 255 is out of range"),
        ("RSS table queue", json!({"execute":"vf-rss-set","arguments":{"vf":0,"table":[0,1,2]}}).to_string().into(), "queue 2 does not exist"),
        ("RSS key", json!({"execute":"vf-rss-set","arguments":{"vf":0,"key":"abcd"}}).to_string().into(), "RSS key is 40 bytes"),
        ("flow to missing queue", json!({"execute":"vf-flow-add","arguments":{"vf":0,"proto":"tcp","src":"198.18.0.1","dst":"198.18.0.2","queue":9}}).to_string().into(), "queue 9 does not exist"),
        ("malformed JSON", b"{\"execute\": \"query-vfs\",}".to_vec(), "JSON parse error"),
        ("stray text", b"hello".to_vec(), "JSON parse error"),
        ("not an object", b"[1,2,3]".to_vec(), "must be a JSON object"),
        ("no execute", b"{\"arguments\":{}}".to_vec(), "lacks member 'execute'"),
        ("unknown command", json!({"execute":"vf-frobnicate"}).to_string().into(), "has not been found"),
        ("huge line", huge.into_bytes(), "exceeds the limit"),
    ];
    for (what, line, want) in cases {
        let r = raw.send_line(&line);
        let desc = r["error"]["desc"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: no error in {r}"));
        assert!(
            desc.contains(want),
            "{what}: {desc:?} does not say {want:?}"
        );
        assert!(r["error"]["class"].is_string(), "{what}: {r}");
        // The connection stays usable and nothing changed.
        assert_eq!(state(&mut raw), initial, "{what} changed the state");
    }
    assert!(!emu.log().contains("panicked"));
}

/// With an uplink, `query-pf` describes it and `ctl show` prints its line after the PF's.
#[test]
fn query_pf_and_ctl_show_describe_the_uplink() {
    // Two free UDP ports on loopback, held together so they differ.
    let (a, b) = {
        let s1 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let s2 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        (
            s1.local_addr().unwrap().port(),
            s2.local_addr().unwrap().port(),
        )
    };
    let spec = format!("vxlan:local=127.0.0.1:{a},remote=127.0.0.1:{b},vni=5");
    let emu = Emu::start(&[
        "--vfs",
        "1",
        "--mtu",
        "1450",
        "--uplink",
        &spec,
        "--uplink-rate",
        "2500",
    ]);
    let pf = emu.control().execute("query-pf", json!({})).unwrap();
    assert_eq!(
        pf["uplink"],
        json!({"spec": spec, "carrier": true, "max-frame": 1464, "guest-mtu": 1450,
               "rate-mbps": 2500, "remotes": [format!("127.0.0.1:{b}")]}),
        "{pf}"
    );
    let out = Command::new(BIN)
        .arg("ctl")
        .arg("--socket-dir")
        .arg(emu.path())
        .arg("show")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let show = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = show.lines().collect();
    assert_eq!(lines.len(), 3, "{show}");
    assert!(lines[0].starts_with("pf: numvfs 1/254"), "{show}");
    assert_eq!(
        lines[1],
        format!("uplink: {spec} carrier up, guest mtu 1450, rate 2500Mbps")
    );
    assert!(lines[2].starts_with("    vf 0 "), "{show}");
}

#[test]
fn ctl_show_json_stats_fdb_and_events() {
    let emu = Emu::start(&["--vfs", "2"]);
    let ctl = |args: &[&str]| emu.ctl(args);
    assert!(ctl(&[
        "vf",
        "1",
        "set",
        "vlan",
        "10",
        "qos",
        "3",
        "spoofchk",
        "off",
        "max_tx_rate",
        "100"
    ])
    .is_empty());
    let show = ctl(&["show"]);
    let lines: Vec<&str> = show.lines().collect();
    assert_eq!(lines.len(), 3, "{show}");
    assert!(lines[0].starts_with("pf: numvfs 2/254"), "{show}");
    assert_eq!(
        lines[1],
        "    vf 0     link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff, spoof checking on, link-state auto, trust off, promisc off, channels 2, detached"
    );
    assert_eq!(
        lines[2],
        "    vf 1     link/ether 02:00:00:00:01:01 brd ff:ff:ff:ff:ff:ff, vlan 10, qos 3, spoof checking off, link-state auto, trust off, promisc off, max_tx_rate 100Mbps, min_tx_rate 0Mbps, channels 2, detached"
    );
    let j: Value = serde_json::from_str(&ctl(&["show", "-j"])).unwrap();
    assert_eq!(j["vfs"][1]["vlan"], 10);
    assert_eq!(j["vfs"][1]["spoofchk"], false);
    assert_eq!(j["pf"]["numvfs"], 2);
    assert!(j["pf"].get("uplink").is_none(), "no uplink: {}", j["pf"]);
    let om = ctl(&["stats", "--format", "openmetrics"]);
    assert!(
        om.contains("sriov_emu_rx_packets_total{port=\"vf1\"} 0") && om.ends_with("# EOF\n"),
        "{om}"
    );
    assert!(ctl(&["stats", "vf0"]).starts_with("vf0:\n     tx_packets: 0\n"));
    let t = ctl(&[
        "vf",
        "0",
        "rss",
        "test",
        "udp",
        "198.18.0.1:53",
        "198.18.0.2:4000",
    ]);
    assert!(t.contains("by rss (hash 0x"), "{t}");
    // A bad ctl input: an error on stderr, exit code 1.
    let out = Command::new(BIN)
        .args(["ctl", "--socket-dir"])
        .arg(emu.path())
        .args(["vf", "0", "set", "vlan", "99999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VLAN 99999 is out of range"));

    // `ctl events` prints VF_ATTACHED when a frontend attaches.
    let mut ev = Command::new(BIN)
        .args(["ctl", "--socket-dir"])
        .arg(emu.path())
        .arg("events")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _fe = connect(emu.path(), "vf0", pairs(1, 1));
    let mut out = BufReader::new(ev.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc::kill(ev.id() as i32, libc::SIGTERM) };
    let _ = ev.wait();
    let e: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (e["event"].as_str(), e["data"]["port"].as_str()),
        (Some("VF_ATTACHED"), Some("vf0")),
        "{line}"
    );
    assert!(e["timestamp"]["seconds"].as_u64().is_some());
    let fdb = ctl(&["fdb"]);
    assert!(fdb.contains("02:00:00:00:00:01 port vf0 static"), "{fdb}");
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

#[test]
fn spoofchk_drops_foreign_source_macs_and_off_lets_them_through() {
    let emu = Emu::start(&["--vfs", "2", "--pv-ports", "0"]);
    let mut a = connect(emu.path(), "vf0", pairs(1, 1));
    let mut b = connect(emu.path(), "vf1", pairs(1, 1));
    let spoofed = udp_frame(vf_mac(1), mac("02:00:00:00:99:01"), 1, 2, 0, 100);
    a.send(0, &spoofed).unwrap();
    assert!(
        b.recv_timeout(0, QUIET).is_none(),
        "spoofed frame delivered"
    );
    assert_eq!(emu.counter("vf0", "drop_spoofchk"), 1);
    let own = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 1, 100);
    a.send(0, &own).unwrap();
    assert!(b.recv_timeout(0, WAIT).unwrap() == own);
    emu.control()
        .execute("vf-set", json!({"vf": 0, "spoofchk": false}))
        .unwrap();
    a.send(0, &spoofed).unwrap();
    assert!(
        b.recv_timeout(0, WAIT).unwrap() == spoofed,
        "spoofchk off delivers"
    );
    assert_eq!(emu.counter("vf0", "drop_spoofchk"), 1);
    // trust also lets a VF use another MAC (a guest changing its address).
    emu.control()
        .execute("vf-set", json!({"vf": 0, "spoofchk": true, "trust": true}))
        .unwrap();
    a.send(0, &spoofed).unwrap();
    assert!(b.recv_timeout(0, WAIT).is_some());
    assert_eq!(emu.counter("vf0", "drop_spoofchk"), 1);
}

#[test]
fn port_vlan_is_tagged_towards_the_peer_and_stripped_towards_the_vf() {
    for (proto, tpid) in [("802.1Q", 0x8100u16), ("802.1ad", 0x88a8)] {
        let emu = Emu::start(&["--vfs", "1", "--pv-ports", "1"]);
        emu.control()
            .execute(
                "vf-set",
                json!({"vf": 0, "vlan": 100, "qos": 5, "proto": proto}),
            )
            .unwrap();
        let mut v = connect(emu.path(), "vf0", pairs(1, 1));
        let mut p = connect(emu.path(), "pv0", pairs(1, 1));
        let pv_mac = mac("02:00:00:00:aa:01");
        // VF -> peer: the tag is inserted, with the QoS as PCP.
        let f = udp_frame(pv_mac, vf_mac(0), 1, 2, 0, 200);
        v.send(0, &f).unwrap();
        let got = p.recv_timeout(0, WAIT).expect("tagged frame at the peer");
        assert_eq!(got.len(), f.len() + 4);
        assert_eq!(u16::from_be_bytes([got[12], got[13]]), tpid, "{proto}");
        let tci = u16::from_be_bytes([got[14], got[15]]);
        assert_eq!((tci >> 13, tci & 0xfff), (5, 100), "{proto}: PCP and VID");
        assert_eq!(&got[..12], &f[..12]);
        assert_eq!(&got[16..], &f[12..]);
        // Peer -> VF with the VF's tag: stripped on the way in.
        let mut tagged = f[..12].to_vec();
        tagged[..6].copy_from_slice(&vf_mac(0).0);
        tagged[6..12].copy_from_slice(&pv_mac.0);
        tagged.extend_from_slice(&tpid.to_be_bytes());
        tagged.extend_from_slice(&(100u16).to_be_bytes());
        tagged.extend_from_slice(&f[12..]);
        p.send(0, &tagged).unwrap();
        let back = v.recv_timeout(0, WAIT).expect("stripped frame at the VF");
        assert_eq!(back.len(), f.len());
        assert_eq!(&back[12..14], &[0x08, 0x00], "{proto}: untagged at the VF");
        // Another VLAN, or no tag, towards the VF: dropped and counted.
        let mut other = tagged.clone();
        other[15] = 101;
        p.send(0, &other).unwrap();
        let mut untagged = f.clone();
        untagged[..6].copy_from_slice(&vf_mac(0).0);
        untagged[6..12].copy_from_slice(&pv_mac.0);
        p.send(0, &untagged).unwrap();
        assert!(v.recv_timeout(0, QUIET).is_none());
        // The FDB is keyed by (VLAN, MAC): the VF's MAC is known in VLAN 100 only, so these
        // are unknown unicast, and a PV port's unknown unicast goes to no VF.
        assert_eq!(emu.counter("pv0", "drop_no_destination"), 2, "{proto}");
        // A broadcast in another VLAN is filtered at the VF.
        let mut bc = other.clone();
        bc[..6].copy_from_slice(&[0xff; 6]);
        p.send(0, &bc).unwrap();
        assert!(v.recv_timeout(0, QUIET).is_none());
        assert_eq!(emu.counter("vf0", "drop_vlan_filter"), 1, "{proto}");
        // A tag from the guest under a port VLAN is spoofing.
        v.send(0, &tagged).unwrap();
        assert!(p.recv_timeout(0, QUIET).is_none());
        assert_eq!(emu.counter("vf0", "drop_spoofchk"), 1);
    }
}

#[test]
fn link_disable_stops_traffic_both_ways_and_enable_restores_it() {
    let emu = Emu::start(&["--vfs", "2", "--pv-ports", "0"]);
    let mut ctl = emu.control();
    let mut a = connect(emu.path(), "vf0", pairs(1, 1));
    let mut b = connect(emu.path(), "vf1", pairs(1, 1));
    a.send(0, &udp_frame(vf_mac(1), vf_mac(0), 1, 1, 0, 100))
        .unwrap();
    assert!(b.recv_timeout(0, WAIT).is_some());
    ctl.execute("vf-set", json!({"vf": 0, "link-state": "disable"}))
        .unwrap();
    let ev = loop {
        let ev = ctl
            .next_event_timeout(WAIT)
            .unwrap_or_else(|e| panic!("no VF_LINK_CHANGE: {e}"));
        if ev["event"] != "VF_ATTACHED" {
            break ev;
        }
    };
    assert_eq!(
        (ev["event"].as_str(), ev["data"]["state"].as_str()),
        (Some("VF_LINK_CHANGE"), Some("down")),
        "{ev}"
    );
    // The frontend is disconnected (QEMU shows the guest NO-CARRIER) and kept out.
    let t = Instant::now();
    while emu.control().execute("query-vfs", json!({})).unwrap()[0]["attached"] == json!(true) {
        assert!(t.elapsed() < WAIT, "vf0 still attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        a.set_queue_pair_enabled(0, true).is_err(),
        "frontend still connected"
    );
    let refused =
        sriov_emu::frontend::VirtioNetFrontend::connect(emu.path().join("vf0.sock"), pairs(1, 1));
    if let Ok(mut f) = refused {
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            f.set_queue_pair_enabled(0, true).is_err(),
            "a new frontend was let in while the link is down"
        );
    }
    // Traffic towards the VF's MAC does not reach it.
    b.send(0, &udp_frame(vf_mac(0), vf_mac(1), 1, 1, 1, 100))
        .unwrap();
    std::thread::sleep(QUIET);
    assert_eq!(emu.counter("vf0", "rx_packets"), 0);
    // Enable: a frontend attaches again and traffic flows both ways.
    ctl.execute("vf-set", json!({"vf": 0, "link-state": "enable"}))
        .unwrap();
    let mut a = connect(emu.path(), "vf0", pairs(1, 1));
    a.send(0, &udp_frame(vf_mac(1), vf_mac(0), 1, 1, 2, 100))
        .unwrap();
    assert!(b.recv_timeout(0, WAIT).is_some());
    b.send(0, &udp_frame(vf_mac(0), vf_mac(1), 1, 1, 3, 100))
        .unwrap();
    assert!(a.recv_timeout(0, WAIT).is_some());
}

#[test]
fn a_vf_mac_is_static_while_attached_and_moves_to_the_pv_port_after() {
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "1"]);
    let mut ctl = emu.control();
    let a = connect(emu.path(), "vf0", pairs(1, 1));
    let t = Instant::now();
    loop {
        let fdb = ctl.execute("query-fdb", json!({})).unwrap();
        if fdb
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "02:00:00:00:00:01" && e["static"] == true)
        {
            break;
        }
        assert!(t.elapsed() < WAIT, "no static entry: {fdb}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The PV port cannot take the MAC while the VF is attached.
    let mut p = connect(emu.path(), "pv0", pairs(1, 1));
    p.send(0, &broadcast(vf_mac(0))).unwrap();
    std::thread::sleep(QUIET);
    let fdb = ctl.execute("query-fdb", json!({})).unwrap();
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "02:00:00:00:00:01" && e["port"] == "vf0"),
        "{fdb}"
    );
    // The VF's frontend detaches (hot-unplug): the guest's PV NIC now sends with the same MAC.
    a.disconnect();
    std::thread::sleep(QUIET);
    p.send(0, &broadcast(vf_mac(0))).unwrap();
    let t = Instant::now();
    loop {
        let ev = ctl
            .next_event_timeout(WAIT.saturating_sub(t.elapsed()))
            .unwrap_or_else(|e| panic!("no FDB_MOVE: {e}"));
        if ev["event"] == "FDB_MOVE" {
            assert_eq!(
                ev["data"],
                json!({"mac": "02:00:00:00:00:01", "from": "vf0", "to": "pv0"})
            );
            break;
        }
    }
    let fdb = ctl.execute("query-fdb", json!({})).unwrap();
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "02:00:00:00:00:01" && e["port"] == "pv0" && e["static"] == false),
        "{fdb}"
    );
}

#[test]
fn changing_channels_keeps_the_vf_settings_and_rss_configuration() {
    let emu = Emu::start(&["--vfs", "1", "--channels-per-vf", "4"]);
    let mut c = emu.control();
    c.execute(
        "vf-set",
        json!({"vf": 0, "vlan": 100, "spoofchk": false, "max-tx-rate": 50}),
    )
    .unwrap();
    c.execute(
        "vf-rss-set",
        json!({"vf": 0, "table": [1, 2], "flow-learning": true}),
    )
    .unwrap();
    c.execute(
        "vf-flow-add",
        json!({"vf": 0, "proto": "udp", "src": "198.18.0.1", "dst": "198.18.0.2", "queue": 2}),
    )
    .unwrap();
    // Channels and another setting in one request: both apply, nothing else is lost.
    let r = c
        .execute("vf-set", json!({"vf": 0, "channels": 3, "qos": 5}))
        .unwrap();
    assert_eq!(
        (
            r["channels"].as_u64(),
            r["vlan"].as_u64(),
            r["qos"].as_u64()
        ),
        (Some(3), Some(100), Some(5)),
        "{r}"
    );
    assert_eq!(
        (r["spoofchk"].as_bool(), r["max-tx-rate"].as_u64()),
        (Some(false), Some(50))
    );
    let rss = c.execute("vf-rss-query", json!({"vf": 0})).unwrap();
    assert_eq!(
        (rss["user-table"].as_bool(), rss["flow-learning"].as_bool()),
        (Some(true), Some(true)),
        "{rss}"
    );
    assert_eq!(
        c.execute("vf-flow-list", json!({"vf": 0})).unwrap()["rules"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Fewer queues than the table names: the table no longer fits and goes back to the default.
    c.execute("vf-set", json!({"vf": 0, "channels": 2}))
        .unwrap();
    let rss = c.execute("vf-rss-query", json!({"vf": 0})).unwrap();
    assert_eq!(rss["user-table"].as_bool(), Some(false), "{rss}");
    assert_eq!(
        c.execute("vf-flow-list", json!({"vf": 0})).unwrap()["rules"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

/// Control plane security: a process of another uid is refused (SO_PEERCRED) even when the
/// socket's mode was opened to everyone by hand; at most `MAX_CLIENTS` clients at once, the
/// next one told why; clients coming and going leave no thread or descriptor behind.
#[test]
fn another_uid_is_refused_clients_are_capped_and_leave_nothing_behind() {
    use sriov_emu::control::MAX_CLIENTS;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "0"]);
    let sock = emu.path().join("control.sock");
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // Open the directory and the socket to everyone, as a careless admin might.
        std::fs::set_permissions(emu.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
            .args(["ctl", "--control"])
            .arg(&sock)
            .args(["qmp", "query-version"])
            .uid(54_321)
            .gid(54_321)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "another uid was served");
        assert!(
            err.contains("permission denied: uid 54321 is not the emulator's (uid 0)"),
            "{err}"
        );
    } else {
        eprintln!("SKIPPED: the other-uid half needs root to run a process as another uid");
    }
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", emu.child.id()))
            .unwrap()
            .count()
    };
    let threads = || {
        std::fs::read_dir(format!("/proc/{}/task", emu.child.id()))
            .unwrap()
            .count()
    };
    let greeted = |s: &UnixStream| {
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    };
    // Warm up once (lazy threads), then count.
    drop(emu.control());
    std::thread::sleep(std::time::Duration::from_millis(100));
    let (fd0, th0) = (fds(), threads());
    let held: Vec<UnixStream> = (0..MAX_CLIENTS)
        .map(|_| {
            let s = UnixStream::connect(&sock).unwrap();
            assert!(greeted(&s).contains("\"QMP\""));
            s
        })
        .collect();
    let extra = UnixStream::connect(&sock).unwrap();
    let line = greeted(&extra);
    assert!(
        line.contains("too many control clients (at most 64 at once)"),
        "{line}"
    );
    drop(extra);
    drop(held);
    // 1,000 clients come and go, one after the other.
    for _ in 0..1000 {
        let c = emu.control();
        drop(c);
    }
    let t = std::time::Instant::now();
    while (fds() > fd0 || threads() > th0) && t.elapsed() < std::time::Duration::from_secs(5) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(
        fds() <= fd0 && threads() <= th0,
        "descriptors and threads after 1,064 clients: {} and {}, before {fd0} and {th0}",
        fds(),
        threads()
    );
    // And a client is served again.
    let v = emu
        .control()
        .execute("query-version", serde_json::json!({}))
        .unwrap();
    assert!(v["package"].is_string() || v.is_object());
}

/// A 100 MiB message is refused with a clear error, without the emulator's memory growing,
/// and the connection stays usable.
#[test]
fn a_100_mib_message_is_refused_without_memory_growth() {
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "0"]);
    let mut raw = Raw::connect(&emu);
    raw.exec("qmp_capabilities", json!({}));
    let rss0 = emu.rss_kib();
    let mut w = raw.w.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(br#"{"execute": "query-version", "arguments": {"pad": ""#)
            .unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            w.write_all(&chunk).unwrap();
        }
        w.write_all(b"\"}}\n").unwrap();
    });
    let reply = raw.read();
    writer.join().unwrap();
    let desc = reply["error"]["desc"].as_str().unwrap_or_default();
    assert!(
        desc.contains("exceeds the limit of 65536"),
        "100 MiB message answered {reply}"
    );
    let rss1 = emu.rss_kib();
    eprintln!("emulator VmRSS {rss0} kB before, {rss1} kB after a 100 MiB message");
    assert!(
        rss1 < rss0 + 4096,
        "VmRSS grew from {rss0} to {rss1} kB on a 100 MiB message"
    );
    // The same connection goes on.
    let v = raw.exec("query-version", json!({}));
    assert!(v["return"].is_object(), "{v}");
}

/// A client that sends commands and reads nothing fills its socket: its own thread waits,
/// nobody else does. Another client's commands and the data path go on meanwhile, and after
/// `CLIENT_WRITE_TIMEOUT` the stuck client is disconnected and its thread is gone.
#[test]
fn a_client_that_never_reads_blocks_neither_other_clients_nor_the_data_path() {
    use sriov_emu::control::CLIENT_WRITE_TIMEOUT;
    use sriov_emu::frontend::VirtioNetFrontend;
    let emu = Emu::start(&["--vfs", "2", "--pv-ports", "0"]);
    let mut stuck = Raw::connect(&emu);
    stuck.exec("qmp_capabilities", json!({}));
    // Commands whose replies it never reads, from a thread (its own writes block once the
    // emulator stops reading it).
    let mut w = stuck.w.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let cmd = br#"{"execute": "query-vfs"}"#;
        for _ in 0..200_000 {
            if w.write_all(cmd).is_err() {
                break;
            }
        }
    });
    // Long enough for its socket to fill both ways.
    std::thread::sleep(Duration::from_millis(500));
    let mut other = Raw::connect(&emu);
    other.exec("qmp_capabilities", json!({}));
    for i in 0..20 {
        let t = Instant::now();
        let v = other.exec("vf-set", json!({"vf": 1, "link-state": "enable"}));
        assert!(v["return"].is_object(), "{v}");
        let v = other.exec("query-vfs", json!({}));
        assert!(v["return"].is_array(), "{v}");
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "command {i} took {:?} beside a stuck client",
            t.elapsed()
        );
    }
    let fe = |n: u32| {
        VirtioNetFrontend::connect(emu.path().join(format!("vf{n}.sock")), pairs(1, 1)).unwrap()
    };
    let (mut a, mut b) = (fe(0), fe(1));
    for i in 0..100 {
        let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, 60 + i as usize * 10);
        a.send(0, &f).unwrap();
        assert_eq!(
            b.recv_timeout(0, WAIT).as_deref(),
            Some(&f[..]),
            "frame {i}"
        );
    }
    // The stuck client is cut off; its threads end (the other client keeps its two).
    let client_threads = || {
        std::fs::read_dir(format!("/proc/{}/task", emu.child.id()))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|c| c.starts_with("control-"))
            .count()
    };
    // Each client has a control-client and a control-events thread.
    assert_eq!(
        client_threads(),
        4,
        "the stuck client's threads are gone already"
    );
    let t = Instant::now();
    while client_threads() > 2 {
        assert!(
            t.elapsed() < CLIENT_WRITE_TIMEOUT + Duration::from_secs(5),
            "the stuck client still has its threads after {:?}",
            t.elapsed()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "the stuck client was dropped {:?} after the checks",
        t.elapsed()
    );
    flood.join().unwrap();
    assert!(
        emu.log().contains("control client dropped"),
        "{}",
        emu.log()
    );
    drop(other);
}

/// `--control-group`: the socket becomes 0660 and that group's; its members (primary or
/// supplementary group) are served, others refused; an unknown group stops `run` clearly.
#[test]
fn control_group_opens_the_socket_to_its_members_only() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let out = Command::new(BIN)
        .args(["run", "--vfs", "0", "--control-group", "no-such-group-here"])
        .arg("--socket-dir")
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("unknown group \"no-such-group-here\""),
        "{err}"
    );
    // SAFETY: geteuid(2) has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: running a client as another uid needs root");
        return;
    }
    const GROUP: u32 = 54_400;
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "0", "--control-group", "54400"]);
    let sock = emu.path().join("control.sock");
    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), GROUP);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(emu.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    // A client as (uid, primary gid, supplementary groups).
    let ctl = |uid: u32, gid: u32, groups: &'static [u32]| {
        let mut cmd = Command::new(BIN);
        cmd.args(["ctl", "--control"])
            .arg(&sock)
            .args(["qmp", "query-version"]);
        // SAFETY: only async-signal-safe calls (setgroups, setgid, setuid) between fork and
        // exec, in the order that lets root drop its privileges.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = ctl(54_321, GROUP, &[]);
    assert!(ok, "a member by its primary group was refused: {err}");
    let (ok, err) = ctl(54_322, 54_401, &[GROUP]);
    assert!(ok, "a member by a supplementary group was refused: {err}");
    // A non-member: the socket's mode stops it; with the mode opened by hand, its credentials.
    let (ok, err) = ctl(54_323, 54_401, &[]);
    assert!(!ok, "a non-member was served");
    assert!(err.contains("Permission denied"), "{err}");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let (ok, err) = ctl(54_323, 54_401, &[]);
    assert!(!ok, "a non-member was served");
    assert!(
        err.contains(
            "permission denied: uid 54323 is neither the emulator's (uid 0) nor in the control \
             group (gid 54400)"
        ),
        "{err}"
    );
}

/// `query-workers` (and `ctl workers`): busy cycles and rounds grow with frames forwarded, idle
/// rounds grow while a busy-polling worker finds nothing, and the clock's rate is sane.
#[test]
fn query_workers_counts_busy_cycles_for_frames_and_idle_rounds_while_idle() {
    let emu = Emu::start(&["--vfs", "2", "--pv-ports", "0", "--poll"]);
    let workers = || emu.control().execute("query-workers", json!({})).unwrap();
    let w0 = |w: &Value, k: &str| w["workers"][0][k].as_u64().unwrap();
    let first = workers();
    assert_eq!(first["poll"], true, "{first}");
    assert_eq!(first["workers"].as_array().unwrap().len(), 1, "{first}");
    let hz = first["hz"].as_u64().unwrap();
    assert!((100_000_000..20_000_000_000).contains(&hz), "{first}");
    assert!(w0(&first, "tid") > 0, "{first}");
    // The worker thread is the emulator's, named dataplane0.
    let comm = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/comm",
        emu.child.id(),
        w0(&first, "tid")
    ))
    .unwrap();
    assert_eq!(comm.trim(), "dataplane0");

    // Busy-polling with nothing attached: idle rounds grow, no busy ones.
    std::thread::sleep(Duration::from_millis(100));
    let idle = workers();
    assert!(
        w0(&idle, "idle-rounds") > w0(&first, "idle-rounds"),
        "{idle}"
    );
    assert!(
        w0(&idle, "idle-cycles") > w0(&first, "idle-cycles"),
        "{idle}"
    );
    assert_eq!(w0(&idle, "busy-rounds"), 0, "{idle}");

    let mut a = connect(emu.path(), "vf0", pairs(1, 1));
    let mut b = connect(emu.path(), "vf1", pairs(1, 1));
    for seq in 0..50 {
        a.send(0, &udp_frame(vf_mac(1), vf_mac(0), 1, 2, seq, 100))
            .unwrap();
    }
    assert_eq!(recv_n(&mut b, 50, WAIT).len(), 50);
    let busy = workers();
    let rounds = w0(&busy, "busy-rounds");
    assert!((1..=50).contains(&rounds), "{busy}");
    assert!(w0(&busy, "busy-cycles") > 0, "{busy}");

    // Idle again: the busy counters stay, the idle ones grow.
    std::thread::sleep(Duration::from_millis(100));
    let after = workers();
    assert_eq!(w0(&after, "busy-rounds"), rounds, "{after}");
    assert!(
        w0(&after, "idle-rounds") > w0(&busy, "idle-rounds"),
        "{after}"
    );

    let out = Command::new(BIN)
        .args(["ctl", "--socket-dir"])
        .arg(emu.path())
        .arg("workers")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("clock "), "{text}");
    assert!(text.contains("MHz, busy-polling\nworker 0 tid "), "{text}");
}
