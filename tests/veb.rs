//! The embedded switch forwards as an SR-IOV NIC's VEB does: three VFs, a PV port and a VXLAN
//! uplink whose remote is a UDP socket of the test, every rule with exact counters.

mod common;

use common::*;
use sriov_emu::daemon::Daemon;
use sriov_emu::uplink::{vxlan_header, UplinkSpec};
use sriov_emu::vf::SettingsUpdate;
use sriov_emu::wire::MacAddr;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

const VNI: u32 = 77;

/// A free UDP port on 127.0.0.1 (bound and released: good enough for a test).
fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The remote VTEP: a plain UDP socket that speaks VXLAN by hand.
struct Remote {
    sock: UdpSocket,
    emulator: SocketAddr,
}

impl Remote {
    fn send(&self, frame: &[u8]) {
        let mut d = vxlan_header::encode(VNI).to_vec();
        d.extend_from_slice(frame);
        self.sock.send_to(&d, self.emulator).unwrap();
    }

    /// The next inner frame within `timeout`.
    fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        self.sock.set_read_timeout(Some(timeout)).unwrap();
        let mut buf = [0u8; 9300];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        assert_eq!(from, self.emulator, "a datagram from elsewhere");
        let (vni, inner) = vxlan_header::decode(&buf[..n]).expect("a VXLAN datagram");
        assert_eq!(vni, VNI);
        Some(inner.to_vec())
    }
}

/// The uplinks of two emulators ("hosts" A and B) joined by VXLAN on 127.0.0.1: A's spec and
/// B's, each with `opts` appended (`,carrier=peer`, `,offload=off`).
fn vxlan_pair(opts: &str) -> (UplinkSpec, UplinkSpec) {
    let (pa, pb) = (free_port(), free_port());
    let spec = |l: u16, r: u16| {
        format!("vxlan:local=127.0.0.1:{l},remote=127.0.0.1:{r},vni={VNI}{opts}")
            .parse()
            .unwrap()
    };
    (spec(pa, pb), spec(pb, pa))
}

fn setup() -> (tempfile::TempDir, Daemon, Remote) {
    let dir = tempfile::tempdir().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let remote = sock.local_addr().unwrap();
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let spec = format!("vxlan:local={local},remote={remote},vni={VNI}")
        .parse()
        .unwrap();
    let d = start_daemon_cfg(dir.path(), 3, 1, |c| c.uplink = Some(spec));
    (
        dir,
        d,
        Remote {
            sock,
            emulator: local,
        },
    )
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn set(d: &Daemon, vf: u32, u: SettingsUpdate) -> Result<(), String> {
    d.vf_set(vf, &u)
        .map(|_| ())
        .map_err(|e| sriov_emu::ErrorChain(&e).to_string())
}

#[test]
fn every_veb_rule_with_exact_counters() {
    let (_dir, d, wire) = setup();
    let mut vf: Vec<_> = (0..3)
        .map(|i| connect(&d, &format!("vf{i}"), pairs(1, 1)))
        .collect();
    let mut pv = connect(&d, "pv0", pairs(1, 1));
    let nobody = mac("02:00:00:00:ee:01");
    let far = mac("02:00:00:00:ff:01");
    let quiet = |fe: &mut sriov_emu::frontend::VirtioNetFrontend, what: &str| {
        assert!(fe.recv_timeout(0, QUIET).is_none(), "{what}");
    };

    // 1. Unknown unicast from a VF: the uplink and the PV port, no other VF.
    let f1 = udp_frame(nobody, vf_mac(0), 1, 1, 1, 100);
    vf[0].send(0, &f1).unwrap();
    assert_eq!(wire.recv(WAIT).as_deref(), Some(&f1[..]), "on the wire");
    assert_eq!(pv.recv_timeout(0, WAIT).as_deref(), Some(&f1[..]), "at pv0");
    quiet(&mut vf[1], "vf1 got unknown unicast");
    quiet(&mut vf[2], "vf2 got unknown unicast");

    // 2. An untrusted VF cannot be promiscuous: a clear error, nothing changes.
    let promisc = || SettingsUpdate {
        promisc: Some(true),
        ..Default::default()
    };
    let err = set(&d, 1, promisc()).unwrap_err();
    assert!(err.contains("promiscuous mode needs a trusted VF"), "{err}");
    assert!(!d.port("vf1").unwrap().settings().promisc);
    // A trusted one can; then it gets unknown unicast of its VLAN too.
    set(
        &d,
        2,
        SettingsUpdate {
            trust: Some(true),
            ..promisc()
        },
    )
    .unwrap();
    vf[0].send(0, &f1).unwrap();
    assert_eq!(wire.recv(WAIT).as_deref(), Some(&f1[..]));
    assert_eq!(pv.recv_timeout(0, WAIT).as_deref(), Some(&f1[..]));
    assert_eq!(
        vf[2].recv_timeout(0, WAIT).as_deref(),
        Some(&f1[..]),
        "promiscuous vf2"
    );
    quiet(&mut vf[1], "vf1 got unknown unicast");

    // 3. Unknown unicast from the uplink: PV ports (and the promiscuous VF) only.
    let f3 = udp_frame(nobody, far, 3, 3, 3, 200);
    wire.send(&f3);
    assert_eq!(pv.recv_timeout(0, WAIT).as_deref(), Some(&f3[..]));
    assert_eq!(vf[2].recv_timeout(0, WAIT).as_deref(), Some(&f3[..]));
    quiet(&mut vf[0], "vf0 got unknown unicast from the wire");
    quiet(&mut vf[1], "vf1 got unknown unicast from the wire");
    assert!(wire.recv(QUIET).is_none(), "back onto the wire");

    // 4. The uplink learned `far` (with its remote): unicast to it goes to the wire only.
    let f4 = udp_frame(far, vf_mac(1), 4, 4, 4, 300);
    vf[1].send(0, &f4).unwrap();
    assert_eq!(wire.recv(WAIT).as_deref(), Some(&f4[..]));
    quiet(&mut pv, "pv0 got unicast for a MAC known on the uplink");
    quiet(&mut vf[2], "vf2 got known unicast");
    let fdb = d.fdb();
    let learned = fdb.iter().find(|r| r.mac == far).expect("far learned");
    assert_eq!(
        (
            learned.port.as_str(),
            learned.is_static,
            learned.remote.clone()
        ),
        (
            "uplink",
            false,
            Some(wire.sock.local_addr().unwrap().to_string())
        )
    );

    // 5. Broadcast reaches every VF, the PV port and the uplink, never its sender.
    let bc = broadcast(vf_mac(0));
    vf[0].send(0, &bc).unwrap();
    assert_eq!(wire.recv(WAIT).as_deref(), Some(&bc[..]));
    for (i, fe) in vf.iter_mut().enumerate().skip(1) {
        assert_eq!(fe.recv_timeout(0, WAIT).as_deref(), Some(&bc[..]), "vf{i}");
    }
    assert_eq!(pv.recv_timeout(0, WAIT).as_deref(), Some(&bc[..]));
    quiet(&mut vf[0], "a broadcast came back to its sender");
    // ... and from the wire, every VF and the PV port, not back onto the wire.
    let bw = broadcast(far);
    wire.send(&bw);
    for (i, fe) in vf.iter_mut().enumerate() {
        assert_eq!(fe.recv_timeout(0, WAIT).as_deref(), Some(&bw[..]), "vf{i}");
    }
    assert_eq!(pv.recv_timeout(0, WAIT).as_deref(), Some(&bw[..]));
    assert!(
        wire.recv(QUIET).is_none(),
        "a broadcast went back onto the wire"
    );

    // 6. A VF's static entry wins over learning: the wire sending with vf1's MAC moves
    // nothing, and unicast to vf1 still reaches vf1 only.
    wire.send(&broadcast(vf_mac(1)));
    for fe in vf.iter_mut().chain(std::iter::once(&mut pv)) {
        fe.drain(QUIET);
    }
    let f6 = udp_frame(vf_mac(1), vf_mac(0), 6, 6, 6, 120);
    vf[0].send(0, &f6).unwrap();
    assert_eq!(vf[1].recv_timeout(0, WAIT).as_deref(), Some(&f6[..]));
    assert!(wire.recv(QUIET).is_none(), "a VF's MAC went to the wire");
    let vf1 = d.fdb().into_iter().find(|r| r.mac == vf_mac(1)).unwrap();
    assert_eq!((vf1.port.as_str(), vf1.is_static), ("vf1", true));

    // Exact counters. The uplink's internal names are from the wire's side: tx = came in.
    let c = |p: &str, n: &str| counter(&d, p, n);
    assert_eq!(c("vf0", "tx_packets"), 4);
    assert_eq!(c("vf0", "tx_forwarded"), 4);
    assert_eq!(c("vf1", "tx_packets"), 1);
    assert_eq!(c("uplink", "tx_packets"), 3, "frames from the wire");
    assert_eq!(c("uplink", "tx_forwarded"), 3);
    assert_eq!(c("uplink", "rx_packets"), 4, "frames onto the wire");
    // pv0: f1 twice, f3, both broadcasts, the wire's broadcast with vf1's MAC.
    assert_eq!(c("pv0", "rx_packets"), 6);
    assert_eq!(c("vf0", "rx_packets"), 2);
    assert_eq!(c("vf1", "rx_packets"), 4);
    assert_eq!(c("vf2", "rx_packets"), 5);
    for p in ["vf0", "vf1", "vf2", "pv0", "uplink"] {
        for n in [
            "drop_no_destination",
            "drop_same_port",
            "drop_no_rx_buffer",
            "drop_malformed",
        ] {
            assert_eq!(c(p, n), 0, "{p} {n}: {}", nonzero_counters(&d, &[p]));
        }
    }
}

/// A VXLAN uplink with two remotes floods to both (head-end replication) and sends a MAC
/// learned behind one remote to that remote only.
#[test]
fn floods_go_to_every_remote_and_learned_macs_to_theirs() {
    let dir = tempfile::tempdir().unwrap();
    let socks: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let local: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let remotes: Vec<String> = socks
        .iter()
        .map(|s| format!("remote={}", s.local_addr().unwrap()))
        .collect();
    let spec = format!("vxlan:local={local},{},vni={VNI}", remotes.join(","))
        .parse()
        .unwrap();
    let d = start_daemon_cfg(dir.path(), 1, 0, |c| c.uplink = Some(spec));
    let wires: Vec<Remote> = socks
        .into_iter()
        .map(|sock| Remote {
            sock,
            emulator: local,
        })
        .collect();
    let mut vf = connect(&d, "vf0", pairs(1, 1));

    let bc = broadcast(vf_mac(0));
    vf.send(0, &bc).unwrap();
    for (i, w) in wires.iter().enumerate() {
        assert_eq!(w.recv(WAIT).as_deref(), Some(&bc[..]), "remote {i}");
    }
    // A station behind remote 1 speaks; then unicast to it goes to remote 1 only.
    let far = mac("02:00:00:00:ff:02");
    wires[1].send(&udp_frame(vf_mac(0), far, 1, 1, 1, 90));
    assert!(vf.recv_timeout(0, WAIT).is_some());
    let f = udp_frame(far, vf_mac(0), 2, 2, 2, 400);
    vf.send(0, &f).unwrap();
    assert_eq!(wires[1].recv(WAIT).as_deref(), Some(&f[..]));
    assert!(
        wires[0].recv(QUIET).is_none(),
        "remote 0 got unicast for remote 1"
    );
    let up = d.uplink().unwrap();
    let mut c = std::collections::HashMap::new();
    up.for_each_counter(|n, v| {
        c.insert(n, v);
    });
    assert_eq!((c["remote_0_tx_packets"], c["remote_1_tx_packets"]), (1, 2));
    assert_eq!((c["remote_0_rx_packets"], c["remote_1_rx_packets"]), (0, 1));
    assert!(c["tx_syscalls"] <= 2, "one sendmmsg per group: {c:?}");
}

/// With `carrier=peer`, the uplink has carrier while a remote is heard from: two emulators
/// keep each other up with keepalives; when one goes, the other loses carrier (and its `auto`
/// VFs their link) within the timeout, and gets it back when the peer returns.
#[test]
fn carrier_follows_the_peer_with_carrier_tracking() {
    let (sa, sb) = vxlan_pair(",carrier=peer,peer-timeout-ms=1000");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_daemon_cfg(da.path(), 1, 0, |c| c.uplink = Some(sa));
    let wait_carrier = |d: &Daemon, up: bool, within: Duration| {
        let t = std::time::Instant::now();
        while d.uplink().unwrap().carrier() != up {
            assert!(t.elapsed() < within, "carrier never went {up}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_carrier(&a, false, WAIT);
    let b = start_daemon_cfg(db.path(), 1, 0, |c| c.uplink = Some(sb.clone()));
    wait_carrier(&a, true, Duration::from_secs(3));
    wait_carrier(&b, true, Duration::from_secs(3));
    assert!(d_link_up(&a), "an auto VF follows the carrier up");
    drop(b);
    wait_carrier(&a, false, Duration::from_secs(3));
    assert!(!d_link_up(&a), "an auto VF follows the carrier down");
    let b = start_daemon_cfg(db.path(), 1, 0, |c| c.uplink = Some(sb));
    wait_carrier(&a, true, Duration::from_secs(3));
    let mut counters = std::collections::HashMap::new();
    a.uplink().unwrap().for_each_counter(|n, v| {
        counters.insert(n, v);
    });
    assert!(
        counters["keepalives_rx"] >= 2 && counters["carrier_changes"] >= 3,
        "{counters:?}"
    );
    drop(b);
}

fn d_link_up(d: &Daemon) -> bool {
    d.port("vf0").unwrap().link_up()
}

/// `query-stats` shows the uplink as a PF's `ethtool -S` would (rx = from the wire), with its
/// carrier, its remotes and their counters, and without the counters that mean nothing for a
/// wire (RX steering, flow learning, per-queue).
#[test]
fn query_stats_shows_the_uplink_from_the_wire_side() {
    let remote = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = format!("127.0.0.1:{}", free_port());
    let spec = format!(
        "vxlan:local={local},remote={},vni={VNI}",
        remote.local_addr().unwrap()
    );
    let emu = Emu::start(&["--vfs", "1", "--pv-ports", "0", "--uplink", &spec]);
    let w = Remote {
        sock: remote,
        emulator: local.parse().unwrap(),
    };
    let mut vf = connect(emu.path(), "vf0", pairs(1, 1));
    w.send(&broadcast(mac("02:00:00:00:ff:01")));
    assert!(vf.recv_timeout(0, WAIT).is_some());
    let f = udp_frame(mac("02:00:00:00:ff:01"), vf_mac(0), 1, 1, 1, 200);
    vf.send(0, &f).unwrap();
    assert!(w.recv(WAIT).is_some());
    let s = emu
        .control()
        .execute("query-stats", serde_json::json!({"port": "uplink"}))
        .unwrap();
    let up = &s[0];
    assert_eq!(up["carrier"], true, "{up}");
    assert_eq!(up["remotes"][0], w.sock.local_addr().unwrap().to_string());
    let c = &up["counters"];
    assert_eq!(
        (c["rx_packets"].as_u64(), c["tx_packets"].as_u64()),
        (Some(1), Some(1)),
        "{c}"
    );
    assert_eq!(
        (
            c["remote_0_rx_packets"].as_u64(),
            c["remote_0_tx_packets"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(c["tx_bytes"].as_u64(), Some(200));
    for absent in [
        "rx_steer_rss",
        "flow_learned",
        "rx_queue_0_packets",
        "tx_queue_0_packets",
    ] {
        assert!(
            c.get(absent).is_none(),
            "{absent} shown for the uplink: {c}"
        );
    }
}

/// Two emulators joined by VXLAN on loopback (two hosts): A's vf0 sends 5,000 frames of mixed
/// sizes, in runs of ten of one size so that GSO trains form, to B's vf0; every frame arrives,
/// in order, byte for byte, with exact counters on both uplinks. `offload` is the spec's
/// `offload=on|off` (UDP GSO/GRO or a datagram per send and receive).
fn two_hosts_exchange(offload: bool) {
    const FRAMES: u32 = 5000;
    const ETHERTYPE: u16 = 0x88b5;
    let (sa, sb) = vxlan_pair(if offload { "" } else { ",offload=off" });
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_daemon_cfg(da.path(), 1, 0, |c| c.uplink = Some(sa));
    let b = start_daemon_cfg(db.path(), 1, 0, |c| c.uplink = Some(sb));
    // B's vf0 gets its own MAC (both emulators derive the same ones).
    let b_mac = mac("02:00:00:00:bb:01");
    set(
        &b,
        0,
        SettingsUpdate {
            mac: Some(b_mac.to_string()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut tx = connect(&a, "vf0", pairs(1, 1));
    let mut rx = connect(&b, "vf0", pairs(1, 1));
    let frame = |seq: u32| {
        let len = 60 + ((seq / 10) as usize * 7919) % (1464 - 60 + 1);
        let mut f = Vec::with_capacity(len);
        f.extend_from_slice(&b_mac.0);
        f.extend_from_slice(&vf_mac(0).0);
        f.extend_from_slice(&ETHERTYPE.to_be_bytes());
        f.extend_from_slice(&seq.to_be_bytes());
        while f.len() < len {
            f.push((f.len() as u32 ^ seq) as u8);
        }
        f
    };
    let mut bytes = 0u64;
    for burst in 0..FRAMES / 100 {
        let seqs = burst * 100..(burst + 1) * 100;
        for seq in seqs.clone() {
            let f = frame(seq);
            bytes += f.len() as u64;
            tx.send_wait(0, &f, WAIT).unwrap();
        }
        for seq in seqs {
            let got = loop {
                let g = rx.recv_timeout(0, WAIT).unwrap_or_else(|| {
                    panic!(
                        "frame {seq} did not arrive\nA: {}\nB: {}",
                        nonzero_counters(&a, &["uplink", "vf0"]),
                        nonzero_counters(&b, &["uplink", "vf0"])
                    )
                });
                if g[12..14] == ETHERTYPE.to_be_bytes() {
                    break g;
                }
            };
            assert!(got == frame(seq), "frame {seq} differs at B's vf0");
        }
    }
    let t = std::time::Instant::now();
    while counter(&b, "vf0", "rx_packets") < u64::from(FRAMES) && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(5));
    }
    // The uplinks' counters from the wire side: A sent, B received.
    assert_eq!(counter(&a, "uplink", "rx_packets"), u64::from(FRAMES));
    assert_eq!(counter(&a, "uplink", "rx_bytes"), bytes);
    assert_eq!(counter(&b, "uplink", "tx_packets"), u64::from(FRAMES));
    assert_eq!(counter(&b, "uplink", "tx_bytes"), bytes);
    assert_eq!(counter(&b, "vf0", "rx_packets"), u64::from(FRAMES));
    let syscalls = |d: &Daemon| {
        let mut c = std::collections::HashMap::new();
        d.uplink().unwrap().for_each_counter(|n, v| {
            c.insert(n, v);
        });
        (c["tx_syscalls"], c["rx_syscalls"])
    };
    let ((a_tx, _), (_, b_rx)) = (syscalls(&a), syscalls(&b));
    println!(
        "offload {offload}: {FRAMES} frames A -> B: {a_tx} send syscalls at A, {b_rx} receive \
         syscalls at B (empty receives included)"
    );
    drop((tx, rx));
}

#[test]
fn two_hosts_exchange_frames_byte_exact_with_udp_offloads() {
    two_hosts_exchange(true);
}

#[test]
fn two_hosts_exchange_frames_byte_exact_without_udp_offloads() {
    two_hosts_exchange(false);
}

/// After a live migration QEMU asks the destination's back-end to announce the guest
/// (SEND_RARP): the RARP leaves from the port as if the guest had sent it, so both hosts'
/// FDBs learn the guest's new place before it sends anything, and frames to it stop going to
/// the port it left.
#[test]
fn send_rarp_moves_the_guest_in_both_hosts_fdbs_before_it_sends_anything() {
    let (sa, sb) = vxlan_pair("");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = start_daemon_cfg(da.path(), 1, 1, |c| c.uplink = Some(sa));
    let b = start_daemon_cfg(db.path(), 1, 1, |c| c.uplink = Some(sb));
    let guest = mac("02:00:00:00:77:01");
    let port_of = |d: &Daemon| d.fdb().into_iter().find(|r| r.mac == guest).map(|r| r.port);
    let wait_port = |d: &Daemon, want: &str| {
        let t = std::time::Instant::now();
        while port_of(d).as_deref() != Some(want) {
            assert!(
                t.elapsed() < WAIT,
                "the guest's MAC is on {:?}, not {want}",
                port_of(d)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    // The guest ran on A's PV port: A learned it there (and B on its uplink).
    let mut old = connect(&a, "pv0", pairs(1, 1));
    let mut peer = connect(&a, "vf0", pairs(1, 1));
    old.send_wait(0, &broadcast(guest), WAIT).unwrap();
    wait_port(&a, "pv0");
    wait_port(&b, "uplink");
    peer.drain(Duration::from_millis(50));
    old.drain(Duration::from_millis(50));
    // It migrated to B's PV port; the source QEMU still holds A's pv0 (stopped). QEMU on B
    // sends SEND_RARP.
    let events = a.events().subscribe();
    let b_events = b.events().subscribe();
    let mut new = connect(&b, "pv0", pairs(1, 1));
    new.send_rarp(guest.0).expect("SEND_RARP acked");
    wait_port(&b, "pv0");
    wait_port(&a, "uplink");
    // The RARP itself: broadcast, byte for byte what QEMU would send, on A's ports too.
    let mut rarp = [0u8; sriov_emu::wire::RARP_FRAME_LEN];
    sriov_emu::wire::write_rarp_announce(guest, &mut rarp);
    let got = peer
        .recv_timeout(0, WAIT)
        .expect("the RARP reaches A's vf0");
    assert_eq!(got, rarp.to_vec());
    assert_eq!(
        counter(&b, "pv0", "tx_packets"),
        1,
        "counted as the port's frame"
    );
    let named = |rx: &std::sync::mpsc::Receiver<std::sync::Arc<sriov_emu::events::Event>>,
                 name: &str| {
        let t = std::time::Instant::now();
        loop {
            let left = WAIT.saturating_sub(t.elapsed());
            match rx.recv_timeout(left) {
                Ok(e) if e.name == name => return e.data.clone(),
                Ok(_) => {}
                Err(_) => panic!("no {name} event"),
            }
        }
    };
    let moved = named(&events, "FDB_MOVE");
    assert_eq!(moved["mac"], guest.to_string());
    assert_eq!(
        (moved["from"].as_str(), moved["to"].as_str()),
        (Some("pv0"), Some("uplink"))
    );
    let announced = named(&b_events, "GUEST_ANNOUNCED");
    assert_eq!(announced["port"], "pv0");
    assert_eq!(announced["mac"], guest.to_string());
    // Frames to the guest now reach it on B, none go to the port it left (which got the
    // RARP's flood only).
    old.drain(Duration::from_millis(100));
    let mut to_guest = broadcast(vf_mac(0));
    to_guest[..6].copy_from_slice(&guest.0);
    peer.send_wait(0, &to_guest, WAIT).unwrap();
    let at_b = new
        .recv_timeout(0, WAIT)
        .expect("the frame reaches the guest on B");
    assert_eq!(at_b, to_guest);
    assert!(
        old.drain(Duration::from_millis(100)).is_empty(),
        "a frame reached the port the guest left"
    );
    drop((old, peer, new));
}
