//! The TAP uplink end to end in-process: a frontend on a VF and a raw socket on the TAP device
//! (moved into a network namespace the test makes) exchange frames byte for byte, with exact
//! counters on both sides. Needs root and `ip` (SKIPPED without `ip`).

mod common;

use common::netns::{in_netns, skip_without_ip, unique_name, Netns, RawSocket};
use common::*;
use sriov_emu::uplink::UplinkSpec;
use sriov_emu::wire::MacAddr;
use std::time::Duration;

/// The EtherType of the test's frames (IEEE local experimental): the kernel's own chatter on
/// the interface is told apart by it.
const TEST_ETHERTYPE: u16 = 0x88b5;
/// The station behind the wire (in the namespace).
const WIRE_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0xaa, 0x05]);

fn frame(dst: MacAddr, src: MacAddr, seq: u32, len: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&src.0);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.push((f.len() as u32 ^ seq) as u8);
    }
    f
}

fn is_test_frame(f: &[u8]) -> bool {
    f.len() >= 18 && f[12..14] == TEST_ETHERTYPE.to_be_bytes()
}

/// A namespace holding the emulator's TAP device, up, with IPv6 off so that the kernel stays
/// quiet on it; and a raw socket on it.
struct Wire {
    ns: Netns,
    sock: RawSocket,
}

impl Wire {
    /// `ip -n NS args` in the wire's namespace.
    fn ns_ip(&self, args: &[&str]) {
        self.ns.ip(0, args);
    }
}

fn tap_uplink_daemon(dir: &std::path::Path) -> (sriov_emu::daemon::Daemon, String) {
    let tap = unique_name("sxt");
    let spec: UplinkSpec = format!("tap:{tap}").parse().unwrap();
    let d = start_daemon_cfg(dir, 2, 1, |c| c.uplink = Some(spec));
    (d, tap)
}

fn wire(tap: &str) -> Wire {
    let ns = Netns::new(1);
    common::netns::ip(&["link", "set", tap, "netns", ns.name(0)]);
    ns.exec(
        0,
        "sysctl",
        &["-qw", &format!("net.ipv6.conf.{tap}.disable_ipv6=1")],
    );
    ns.ip(0, &["link", "set", tap, "up"]);
    let name = tap.to_string();
    let sock = in_netns(ns.name(0), move || RawSocket::open(&name));
    Wire { ns, sock }
}

#[test]
fn ten_thousand_frames_between_a_vf_and_the_tap_byte_exact() {
    if skip_without_ip("ten_thousand_frames_between_a_vf_and_the_tap_byte_exact") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (d, tap) = tap_uplink_daemon(dir.path());
    let w = wire(&tap);
    // VFs with link state auto follow the TAP's carrier: up once the namespace set it up.
    wait_carrier(&d, true);
    let mut vf = connect(&d, "vf0", pairs(1, 1));
    let vf_mac = common::vf_mac(0);

    let mut seq = 0u32;
    let (mut sent, mut bytes) = ([0u64; 2], [0u64; 2]);
    for burst in 0..100 {
        let frames: Vec<Vec<u8>> = (0..100)
            .map(|i| {
                seq += 1;
                let len = 60 + ((seq as usize * 7919 + i) % (1514 - 60 + 1));
                if burst % 2 == 0 {
                    frame(WIRE_MAC, vf_mac, seq, len)
                } else {
                    frame(vf_mac, WIRE_MAC, seq, len)
                }
            })
            .collect();
        if burst % 2 == 0 {
            // VF -> wire. The first burst goes before the wire's MAC is known: unknown
            // unicast from a VF goes to the uplink (and the PV port).
            for f in &frames {
                vf.send_wait(0, f, WAIT).unwrap();
                sent[0] += 1;
                bytes[0] += f.len() as u64;
            }
            for f in &frames {
                let got = w
                    .sock
                    .recv_matching(WAIT, is_test_frame)
                    .unwrap_or_else(|| {
                        panic!(
                            "frame {} not on the wire (burst {burst}); vf0's TX ring: {} of \
                             its chains not returned; {}",
                            seq_of_frame(f),
                            vf.tx_in_flight(0),
                            nonzero_counters(&d, &["uplink", "vf0", "pv0"])
                        )
                    });
                assert!(got == *f, "frame {} differs on the wire", seq_of_frame(f));
            }
        } else {
            // Wire -> VF.
            for f in &frames {
                w.sock.send(f);
                sent[1] += 1;
                bytes[1] += f.len() as u64;
            }
            for f in &frames {
                let got = loop {
                    let g = vf
                        .recv_timeout(0, WAIT)
                        .expect("frame from the wire at the VF");
                    if is_test_frame(&g) {
                        break g;
                    }
                };
                assert!(got == *f, "frame {} differs at the VF", seq_of_frame(f));
            }
        }
    }
    assert_eq!(sent, [5000, 5000]);
    // A group's counters are added just after its frames are published to the guest: on a busy
    // machine the worker can be descheduled in between, so wait for the last ones to land
    // (they must still come out exact).
    let t = std::time::Instant::now();
    while (
        counter(&d, "vf0", "rx_packets"),
        counter(&d, "uplink", "rx_packets"),
    ) != (5000, 5000)
        && t.elapsed() < WAIT
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    // Exact counters: the VF's from its guest's side, the uplink's internal ones from the
    // wire's side (tx = came in from the wire).
    assert_eq!(counter(&d, "vf0", "tx_packets"), 5000);
    assert_eq!(counter(&d, "vf0", "tx_bytes"), bytes[0]);
    assert_eq!(
        counter(&d, "uplink", "rx_packets"),
        5000,
        "{}",
        nonzero_counters(&d, &["uplink", "vf0", "pv0"])
    );
    assert_eq!(counter(&d, "uplink", "rx_bytes"), bytes[0]);
    assert_eq!(counter(&d, "uplink", "tx_packets"), 5000);
    assert_eq!(counter(&d, "uplink", "tx_bytes"), bytes[1]);
    assert_eq!(counter(&d, "vf0", "rx_packets"), 5000);
    assert_eq!(counter(&d, "vf0", "rx_bytes"), bytes[1]);
    // The first burst was unknown unicast: it also reached the PV port (no frontend there:
    // counted as no buffer), and never the other VF.
    assert_eq!(
        counter(&d, "vf1", "rx_packets") + counter(&d, "vf1", "drop_no_rx_buffer"),
        0
    );
    let fdb = d.fdb();
    assert!(
        fdb.iter()
            .any(|r| r.mac == WIRE_MAC && r.port == "uplink" && !r.is_static),
        "{fdb:?}"
    );
    drop(w);
}

/// Waits until the uplink's carrier is `up` (the emulator looks every 100 ms).
fn wait_carrier(d: &sriov_emu::daemon::Daemon, up: bool) {
    let t = std::time::Instant::now();
    while d.uplink().expect("an uplink").carrier() != up {
        assert!(t.elapsed() < WAIT, "the uplink's carrier never went {up}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn seq_of_frame(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[14], f[15], f[16], f[17]])
}

/// CPU time (ticks) of this process's thread named `name`.
fn thread_ticks(name: &str) -> u64 {
    let mut total = 0;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        // Fields after the ")" of the command: state is 1st, utime 12th, stime 13th.
        let rest = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        total += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// A TAP deleted under the emulator: the uplink stops (carrier down, counted), the worker does
/// not spin on the dead descriptor, and the VFs keep switching between themselves.
#[test]
fn a_deleted_tap_stops_the_uplink_not_the_switch() {
    if skip_without_ip("a_deleted_tap_stops_the_uplink_not_the_switch") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (d, tap) = tap_uplink_daemon(dir.path());
    let w = wire(&tap);
    wait_carrier(&d, true);
    // VFs set to `enable`: they must keep working whatever the wire does.
    for vf in 0..2 {
        d.vf_set(
            vf,
            &sriov_emu::vf::SettingsUpdate {
                link_state: Some("enable".into()),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(1, 1));
    a.send(0, &frame(WIRE_MAC, vf_mac(0), 1, 100)).unwrap();
    assert!(w.sock.recv_matching(WAIT, is_test_frame).is_some());

    w.ns_ip(&["link", "del", &tap]);
    wait_carrier(&d, false);
    // Give the worker a wake-up or two, then look at its CPU time for a second.
    a.send(0, &frame(WIRE_MAC, vf_mac(0), 2, 100)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before = thread_ticks("dataplane0");
    std::thread::sleep(Duration::from_secs(1));
    let spent = thread_ticks("dataplane0") - before;
    assert!(
        spent < 20,
        "the worker used {spent} ticks of 100 in 1 s with the TAP gone"
    );
    let f = frame(vf_mac(1), vf_mac(0), 3, 300);
    a.send(0, &f).unwrap();
    assert_eq!(
        b.recv_timeout(0, WAIT).as_deref(),
        Some(&f[..]),
        "VF to VF still works"
    );
    let up = d.uplink().unwrap();
    assert!(up.is_broken() && up.counters.device_errors.get() >= 1);
}
