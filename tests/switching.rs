//! The data path end to end in-process: frontends on VF sockets exchanging frames through the
//! switch, with exact counters.

mod common;

use common::*;
use sriov_emu::frontend::FrontendConfig;
use std::collections::HashMap;

#[test]
fn ten_thousand_mixed_frames_both_ways_byte_exact_with_learning() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 1, 2, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "pv0", pairs(1, 1));
    let mut c = connect(&d, "vf1", pairs(1, 1));
    // b is a PV port: its guest's MAC is learned (a VF's MAC is pinned while attached).
    let (ma, mb) = (vf_mac(0), sriov_emu::wire::MacAddr([2, 0, 0, 0, 0xaa, 1]));

    // Unknown unicast from a VF goes to the PV port, never to another VF (the embedded
    // bridge's rule). Then b answers and its MAC is learned.
    let first = udp_frame(mb, ma, 1, 2, 0, 60);
    a.send(0, &first).unwrap();
    assert_eq!(b.recv_timeout(0, WAIT).as_deref(), Some(&first[..]));
    assert!(
        c.recv_timeout(0, QUIET).is_none(),
        "unknown unicast reached another VF"
    );
    let reply = udp_frame(ma, mb, 2, 1, 0, 60);
    b.send(0, &reply).unwrap();
    assert_eq!(a.recv_timeout(0, WAIT).as_deref(), Some(&reply[..]));
    // a's MAC is a VF MAC, pinned in the FDB, so the reply is unicast; b's is learned now.
    assert!(
        c.recv_timeout(0, QUIET).is_none(),
        "learned unicast must not reach the third port"
    );

    // 10,000 frames, sizes 60..=1514, alternating direction in bursts that fit the rings.
    let mut sent = [0u64; 2];
    let mut bytes = [0u64; 2];
    let mut seq = 0u32;
    for burst in 0..100 {
        let (tx, rx, dst, src, side) = if burst % 2 == 0 {
            (&mut a, &mut b, mb, ma, 0)
        } else {
            (&mut b, &mut a, ma, mb, 1)
        };
        let frames: Vec<Vec<u8>> = (0..100)
            .map(|i| {
                seq += 1;
                let len = 60 + ((seq as usize * 7919 + i) % (1514 - 60 + 1));
                udp_frame(dst, src, 1000 + (seq % 50) as u16, 2000, seq, len)
            })
            .collect();
        for f in &frames {
            tx.send_wait(0, f, WAIT).unwrap();
            sent[side] += 1;
            bytes[side] += f.len() as u64;
        }
        for f in &frames {
            let got = rx.recv_timeout(0, WAIT).expect("frame delivered");
            assert_eq!(got.len(), f.len());
            assert!(
                got == *f,
                "payload differs for a frame of {} bytes",
                f.len()
            );
        }
    }
    assert_eq!(sent, [5000, 5000]);
    assert!(
        c.recv_timeout(0, QUIET).is_none(),
        "the third port saw unicast traffic"
    );

    // Broadcast reaches every other port, never the sender.
    let bc = broadcast(mb);
    b.send(0, &bc).unwrap();
    assert_eq!(a.recv_timeout(0, WAIT).as_deref(), Some(&bc[..]));
    assert_eq!(c.recv_timeout(0, WAIT).as_deref(), Some(&bc[..]));
    assert!(
        b.recv_timeout(0, QUIET).is_none(),
        "a frame came back out of its ingress port"
    );

    // Counters match exactly.
    assert_eq!(counter(&d, "vf0", "tx_packets"), 1 + 5000);
    assert_eq!(counter(&d, "vf0", "tx_bytes"), 60 + bytes[0]);
    assert_eq!(counter(&d, "pv0", "rx_packets"), 1 + 5000);
    assert_eq!(counter(&d, "pv0", "rx_bytes"), 60 + bytes[0]);
    assert_eq!(counter(&d, "pv0", "tx_packets"), 1 + 5000 + 1);
    assert_eq!(counter(&d, "vf0", "rx_packets"), 1 + 5000 + 1);
    assert_eq!(counter(&d, "vf0", "rx_bytes"), 60 + bytes[1] + 60);
    assert_eq!(counter(&d, "vf1", "rx_packets"), 1, "the broadcast only");
    assert_eq!(counter(&d, "vf1", "tx_packets"), 0);
    assert_eq!(counter(&d, "vf0", "rx_queue_0_packets"), 1 + 5000 + 1);
    assert_eq!(counter(&d, "vf0", "tx_queue_0_packets"), 1 + 5000);
    for p in ["vf0", "pv0", "vf1"] {
        for drop in [
            "drop_malformed",
            "drop_no_destination",
            "drop_same_port",
            "drop_no_rx_buffer",
            "drop_oversize_rx",
        ] {
            assert_eq!(counter(&d, p, drop), 0, "{p} {drop}");
        }
    }
    let fdb = d.fdb();
    assert!(fdb
        .iter()
        .any(|r| r.mac == ma && r.port == "vf0" && r.is_static));
    assert!(fdb
        .iter()
        .any(|r| r.mac == mb && r.port == "pv0" && !r.is_static));
    assert_in_order(&[&a, &b, &c]);
}

#[test]
fn full_rx_ring_counts_drop_no_rx_buffer_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(
        &d,
        "vf1",
        FrontendConfig {
            queue_size: 64,
            ..pairs(1, 1)
        },
    );
    for i in 0..100u32 {
        a.send_wait(0, &udp_frame(vf_mac(1), vf_mac(0), 5, 6, i, 128), WAIT)
            .unwrap();
    }
    // Wait until the emulator has taken all 100 frames from a's TX ring.
    let t = std::time::Instant::now();
    while a.tx_in_flight(0) > 0 && t.elapsed() < WAIT {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let got = b.drain(QUIET);
    assert_eq!(got.len(), 64, "the RX ring holds 64 buffers");
    assert_eq!(counter(&d, "vf1", "rx_packets"), 64);
    assert_eq!(counter(&d, "vf1", "drop_no_rx_buffer"), 36);
    assert_eq!(counter(&d, "vf0", "tx_packets"), 100);
    assert_eq!(counter(&d, "vf0", "tx_forwarded"), 100);
    // Once b posts buffers again, traffic flows.
    a.send(0, &udp_frame(vf_mac(1), vf_mac(0), 5, 6, 1000, 128))
        .unwrap();
    assert!(b.recv_timeout(0, WAIT).is_some());
    // The 36 frames that found no buffer took none out of order.
    assert_in_order(&[&a, &b]);
}

#[test]
fn jumbo_frames_span_mergeable_buffers_and_split_headers_work() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 9000);
    let mut a = connect(
        &d,
        "vf0",
        FrontendConfig {
            split_tx_header: true,
            ..pairs(1, 1)
        },
    );
    let mut b = connect(&d, "vf1", pairs(1, 1));
    for (i, len) in [9014usize, 4000, 2049, 60, 2036, 2037]
        .into_iter()
        .enumerate()
    {
        let f = udp_frame(vf_mac(1), vf_mac(0), 9, 9, i as u32, len);
        a.send(0, &f).unwrap();
        let got = b.recv_timeout(0, WAIT).expect("jumbo delivered");
        assert!(got == f, "frame of {len} bytes differs");
    }
    // One byte over MTU + Ethernet + VLAN room is refused as malformed.
    let too_big = udp_frame(vf_mac(1), vf_mac(0), 9, 9, 99, 9000 + 14 + 8 + 1);
    a.send(0, &too_big).unwrap();
    assert!(b.recv_timeout(0, QUIET).is_none());
    assert_eq!(counter(&d, "vf0", "drop_malformed"), 1);
    assert_eq!(counter(&d, "vf1", "rx_packets"), 6);
    assert_in_order(&[&a, &b]);
}

#[test]
fn legacy_ten_byte_header_without_mergeable_buffers() {
    use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
    use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let legacy = FrontendConfig {
        driver_features: !((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)),
        ..pairs(1, 1)
    };
    let mut a = connect(&d, "vf0", legacy.clone());
    let mut b = connect(&d, "vf1", pairs(1, 1));
    assert_eq!(a.hdr_len(), 10);
    assert_eq!(b.hdr_len(), 12);
    let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 7, 1514);
    a.send(0, &f).unwrap();
    assert!(
        b.recv_timeout(0, WAIT).unwrap() == f,
        "10-byte header sender"
    );
    let g = udp_frame(vf_mac(0), vf_mac(1), 2, 1, 8, 1000);
    b.send(0, &g).unwrap();
    assert!(
        a.recv_timeout(0, WAIT).unwrap() == g,
        "10-byte header receiver"
    );
    // Without mergeable buffers, a frame larger than one RX buffer cannot be delivered.
    drop(a);
    let mut small = connect(
        &d,
        "vf0",
        FrontendConfig {
            rx_buf_size: 512,
            ..legacy
        },
    );
    b.send(0, &udp_frame(vf_mac(0), vf_mac(1), 2, 1, 9, 1000))
        .unwrap();
    assert!(small.recv_timeout(0, QUIET).is_none());
    assert_eq!(counter(&d, "vf0", "drop_oversize_rx"), 1);
    b.send(0, &udp_frame(vf_mac(0), vf_mac(1), 2, 1, 10, 400))
        .unwrap();
    assert_eq!(small.recv_timeout(0, WAIT).map(|f| f.len()), Some(400));
}

#[test]
fn multiqueue_delivers_only_to_enabled_queues_then_spreads_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 4, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(4, 2));
    // Let the switch learn b.
    b.send(0, &broadcast(vf_mac(1))).unwrap();
    a.recv_timeout(0, WAIT).unwrap();

    let send_flows = |a: &mut sriov_emu::frontend::VirtioNetFrontend, base: u16| {
        for i in 0..200u16 {
            a.send_wait(
                0,
                &udp_frame(vf_mac(1), vf_mac(0), base + i, 4789, u32::from(i), 100),
                WAIT,
            )
            .unwrap();
        }
    };
    send_flows(&mut a, 10_000);
    let got = b.drain(QUIET);
    assert_eq!(got.len(), 200);
    let mut per_q: HashMap<usize, usize> = HashMap::new();
    for (q, _) in &got {
        *per_q.entry(*q).or_default() += 1;
    }
    assert!(
        per_q.keys().all(|q| *q < 2),
        "frames on a disabled queue: {per_q:?}"
    );
    assert!(per_q.len() == 2, "both enabled queues used: {per_q:?}");

    b.set_queue_pair_enabled(2, true).unwrap();
    b.set_queue_pair_enabled(3, true).unwrap();
    send_flows(&mut a, 20_000);
    let got = b.drain(QUIET);
    assert_eq!(got.len(), 200);
    let mut per_q = [0usize; 4];
    for (q, _) in &got {
        per_q[*q] += 1;
    }
    assert!(per_q.iter().all(|n| *n > 0), "all 4 queues used: {per_q:?}");
    // One flow always lands on one queue.
    let f = udp_frame(vf_mac(1), vf_mac(0), 777, 4789, 0, 100);
    for _ in 0..20 {
        a.send_wait(0, &f, WAIT).unwrap();
    }
    let got = b.drain(QUIET);
    assert_eq!(got.len(), 20);
    assert!(
        got.iter().all(|(q, _)| *q == got[0].0),
        "one flow spread over queues"
    );
    let total: u64 = (0..4)
        .map(|q| counter(&d, "vf1", &format!("rx_queue_{q}_packets")))
        .sum();
    assert_eq!(total, counter(&d, "vf1", "rx_packets"));
}

#[test]
fn reconnect_in_the_middle_of_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 4, 0, 1, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = Some(connect(&d, "vf1", pairs(1, 1)));
    let mut c = connect(&d, "vf2", pairs(1, 1));
    let mut e = connect(&d, "vf3", pairs(1, 1));
    for (fe, i) in [(b.as_mut().unwrap(), 1u16), (&mut c, 2), (&mut e, 3)] {
        fe.send(0, &broadcast(vf_mac(i))).unwrap();
    }
    std::thread::sleep(QUIET);
    for fe in [&mut a, b.as_mut().unwrap(), &mut c, &mut e] {
        fe.drain(QUIET);
    }

    // Traffic a -> b while c <-> e keep talking; b hangs up halfway.
    let mut delivered_before = 0;
    for i in 0..200u32 {
        a.send_wait(0, &udp_frame(vf_mac(1), vf_mac(0), 1, 1, i, 200), WAIT)
            .unwrap();
        if let Some(fe) = b.as_mut() {
            if fe.recv_timeout(0, WAIT).is_some() {
                delivered_before += 1;
            }
        }
        if i == 99 {
            b.take().unwrap().disconnect();
            let t = std::time::Instant::now();
            while d.port("vf1").unwrap().is_attached() && t.elapsed() < WAIT {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        c.send_wait(0, &udp_frame(vf_mac(3), vf_mac(2), 2, 2, i, 300), WAIT)
            .unwrap();
        assert!(
            e.recv_timeout(0, WAIT).is_some(),
            "other ports keep working (frame {i})"
        );
    }
    assert_eq!(delivered_before, 100);
    // After the hang-up b's MAC is withdrawn: the 100 frames for it are unknown unicast, which
    // the embedded bridge never sends to other VFs (no PV port or uplink here: counted).
    std::thread::sleep(QUIET);
    assert!(c.drain(QUIET).is_empty(), "unknown unicast reached a VF");
    assert_eq!(counter(&d, "vf0", "drop_no_destination"), 100);
    assert!(!d.port("vf1").unwrap().is_attached());

    // b comes back: announce, then unicast reaches it again.
    let mut b = connect(&d, "vf1", pairs(1, 1));
    b.send(0, &broadcast(vf_mac(1))).unwrap();
    a.recv_timeout(0, WAIT)
        .expect("broadcast from the reconnected port");
    c.recv_timeout(0, WAIT).expect("broadcast reaches c");
    e.recv_timeout(0, WAIT).expect("broadcast reaches e");
    for i in 0..50u32 {
        let f = udp_frame(vf_mac(1), vf_mac(0), 1, 1, 1000 + i, 500);
        a.send_wait(0, &f, WAIT).unwrap();
        assert!(b.recv_timeout(0, WAIT).expect("traffic resumes") == f);
    }
    assert!(
        c.recv_timeout(0, QUIET).is_none(),
        "unicast to b no longer floods"
    );
    assert!(d.port("vf1").unwrap().is_attached());
}

#[test]
fn malformed_tx_chains_are_counted_and_traffic_continues() {
    use sriov_emu::frontend::Desc;
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(1, 1));
    let frame = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 3, 100);
    let (buf, len) = frame_in_tx_buffer(&mut a, &frame);
    let end = a.mem_size();
    let bad: Vec<(&str, Vec<Desc>)> = vec![
        (
            "write-only descriptor on TX",
            vec![Desc {
                addr: buf,
                len,
                write: true,
            }],
        ),
        (
            "past the end of guest memory",
            vec![Desc {
                addr: end - 16,
                len: 200,
                write: false,
            }],
        ),
        (
            "header only, empty frame",
            vec![Desc {
                addr: buf,
                len: a.hdr_len() as u32,
                write: false,
            }],
        ),
        (
            "shorter than an Ethernet header",
            vec![Desc {
                addr: buf,
                len: a.hdr_len() as u32 + 13,
                write: false,
            }],
        ),
        (
            "longer than the MTU",
            vec![
                Desc {
                    addr: buf,
                    len: 1600,
                    write: false
                };
                2
            ],
        ),
    ];
    for (i, (what, descs)) in bad.iter().enumerate() {
        a.send_raw(0, descs).unwrap();
        // Each bad chain is completed, counted, and the next good frame still goes through.
        a.send(0, &frame).unwrap();
        let got = b
            .recv_timeout(0, WAIT)
            .unwrap_or_else(|| panic!("traffic stopped after: {what}"));
        assert!(got == frame, "after {what}");
        assert_eq!(counter(&d, "vf0", "drop_malformed"), i as u64 + 1, "{what}");
    }
    assert!(
        b.recv_timeout(0, QUIET).is_none(),
        "a malformed chain was delivered"
    );
    let t = std::time::Instant::now();
    while a.tx_in_flight(0) > 0 && t.elapsed() < WAIT {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(
        a.tx_in_flight(0),
        0,
        "every chain, good or bad, is returned to the guest"
    );
    assert_eq!(counter(&d, "vf0", "tx_packets"), 10);
    assert_eq!(counter(&d, "vf0", "tx_forwarded"), 5);
}

#[test]
fn busy_poll_mode_switches_the_same_frames_with_exact_counters() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon_mode(dir.path(), 2, 0, 2, 1500, true);
    let mut a = connect(&d, "vf0", pairs(2, 2));
    let mut b = connect(&d, "vf1", pairs(2, 2));
    let mut bytes = 0u64;
    for i in 0..2000u32 {
        let len = 60 + (i as usize * 37) % 1455;
        let f = udp_frame(vf_mac(1), vf_mac(0), 1000 + (i % 64) as u16, 53, i, len);
        a.send_wait((i % 2) as usize, &f, WAIT).unwrap();
        let (_, got) = b.recv_any(WAIT).expect("delivered in poll mode");
        assert!(got == f, "frame {i} differs");
        bytes += len as u64;
    }
    assert_eq!(counter(&d, "vf0", "tx_packets"), 2000);
    assert_eq!(counter(&d, "vf0", "tx_queue_1_packets"), 1000);
    assert_eq!(counter(&d, "vf1", "rx_packets"), 2000);
    assert_eq!(counter(&d, "vf1", "rx_bytes"), bytes);
    // Control-side changes still reach a polling data plane.
    d.vf_set(
        0,
        &sriov_emu::vf::SettingsUpdate {
            link_state: Some("disable".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let t = std::time::Instant::now();
    while d.port("vf0").unwrap().is_attached() && t.elapsed() < WAIT {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!d.port("vf0").unwrap().is_attached());
}

/// Names of this process's threads (for the data-plane workers).
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn two_workers_split_the_queues_and_keep_every_frame_and_count() {
    for poll in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let pf = sriov_emu::pf::PfConfig::new(dir.path().to_path_buf(), 2, 0, 2, 1500).unwrap();
        let d = sriov_emu::daemon::Daemon::start(sriov_emu::daemon::DaemonConfig {
            poll,
            workers: 2,
            ..sriov_emu::daemon::DaemonConfig::new(pf)
        })
        .unwrap();
        // The workers name themselves once running.
        let t = std::time::Instant::now();
        let has_workers = || {
            let names = thread_names();
            ["dataplane0", "dataplane1"]
                .iter()
                .all(|w| names.iter().any(|n| n == w))
        };
        while !has_workers() && t.elapsed() < WAIT {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(
            has_workers(),
            "two data-plane workers: {:?}",
            thread_names()
        );
        let mut a = connect(&d, "vf0", pairs(2, 2));
        let mut b = connect(&d, "vf1", pairs(2, 2));
        // With 2 workers, queue pair q of vf0 (port 0) is served by worker q and of vf1 by
        // worker 1 - q: every worker sends to and receives from both ports.
        let mut bytes = [0u64; 2];
        for i in 0..1000u32 {
            let len = 60 + (i as usize * 53) % 1455;
            let qp = (i % 2) as usize;
            let ab = udp_frame(vf_mac(1), vf_mac(0), 1000 + (i % 64) as u16, 53, i, len);
            let ba = udp_frame(vf_mac(0), vf_mac(1), 2000 + (i % 64) as u16, 53, i, len);
            a.send_wait(qp, &ab, WAIT).unwrap();
            b.send_wait(1 - qp, &ba, WAIT).unwrap();
            let Some((_, got)) = b.recv_any(WAIT) else {
                panic!(
                    "a -> b frame {i} not delivered (poll {poll}): {}",
                    nonzero_counters(&d, &["vf0", "vf1"])
                );
            };
            assert!(got == ab, "a -> b frame {i} differs (poll {poll})");
            let Some((_, got)) = a.recv_any(WAIT) else {
                panic!(
                    "b -> a frame {i} not delivered (poll {poll}): {}",
                    nonzero_counters(&d, &["vf0", "vf1"])
                );
            };
            assert!(got == ba, "b -> a frame {i} differs (poll {poll})");
            bytes[0] += len as u64;
            bytes[1] += len as u64;
        }
        for (port, peer) in [("vf0", "vf1"), ("vf1", "vf0")] {
            assert_eq!(
                counter(&d, port, "tx_packets"),
                1000,
                "{port} (poll {poll})"
            );
            assert_eq!(counter(&d, port, "tx_queue_0_packets"), 500, "{port}");
            assert_eq!(counter(&d, port, "tx_queue_1_packets"), 500, "{port}");
            assert_eq!(
                counter(&d, peer, "rx_packets"),
                1000,
                "{peer} (poll {poll})"
            );
            assert_eq!(counter(&d, peer, "rx_bytes"), bytes[0], "{peer}");
            assert_eq!(
                counter(&d, peer, "rx_queue_0_packets") + counter(&d, peer, "rx_queue_1_packets"),
                1000
            );
        }
        d.shutdown();
    }
}
