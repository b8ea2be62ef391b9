//! Many frames in every direction at once, with two workers: every frame is delivered byte-exact
//! or counted under one drop reason, for every port. `scripts/stress` runs this while CPU-bound
//! loops keep the machine busy.

mod common;

use common::*;
use sriov_emu::daemon::{Daemon, DaemonConfig};
use sriov_emu::pf::PfConfig;
use std::time::{Duration, Instant};

const VFS: usize = 4;
const QUEUE_PAIRS: usize = 4;
const FRAMES: u32 = 100_000;
/// Frames one VF queues per round before the receivers drain.
const BURST: usize = 48;

/// Frame `seq`: who sends it, to whom, on which queue pair, and its bytes.
fn frame(seq: u32) -> (usize, usize, usize, Vec<u8>) {
    let k = seq as usize;
    let src = k % VFS;
    let dst = (src + 1 + (k / VFS) % (VFS - 1)) % VFS;
    let qp = (k / 12) % QUEUE_PAIRS;
    let len = 60 + (k * 7919) % (1514 - 60 + 1);
    let sport = 1000 + (k % 97) as u16;
    let bytes = udp_frame(
        vf_mac(dst as u16),
        vf_mac(src as u16),
        sport,
        4789,
        seq,
        len,
    );
    (src, dst, qp, bytes)
}

fn run(poll: bool) {
    let dir = tempfile::tempdir().unwrap();
    let pf = PfConfig::new(
        dir.path().to_path_buf(),
        VFS as u32,
        0,
        QUEUE_PAIRS as u32,
        1500,
    )
    .unwrap();
    let d = Daemon::start(DaemonConfig {
        poll,
        workers: 2,
        ..DaemonConfig::new(pf)
    })
    .unwrap();
    let names: Vec<String> = (0..VFS).map(|i| format!("vf{i}")).collect();
    let mut fes: Vec<_> = names
        .iter()
        .map(|n| connect(&d, n, pairs(QUEUE_PAIRS, QUEUE_PAIRS)))
        .collect();

    // Frames waiting to be sent, per (VF, queue pair), in sequence order.
    let mut queued: Vec<Vec<std::collections::VecDeque<u32>>> =
        vec![vec![Default::default(); QUEUE_PAIRS]; VFS];
    for seq in 0..FRAMES {
        let (src, _, qp, _) = frame(seq);
        queued[src][qp].push_back(seq);
    }
    let mut sent = [0u64; VFS];
    let mut sent_to = [0u64; VFS];
    let mut received = [0u64; VFS];
    let mut seen = vec![false; FRAMES as usize];

    let receive = |fes: &mut Vec<sriov_emu::frontend::VirtioNetFrontend>,
                   received: &mut [u64; VFS],
                   seen: &mut Vec<bool>| {
        for (p, fe) in fes.iter_mut().enumerate() {
            for qp in 0..QUEUE_PAIRS {
                while let Some(got) = fe.recv(qp) {
                    let seq = seq_of(&got);
                    assert!(seq < FRAMES, "{}: a frame with seq {seq}", names[p]);
                    let (_, dst, _, want) = frame(seq);
                    assert_eq!(
                        dst, p,
                        "frame {seq} reached {} instead of vf{dst}",
                        names[p]
                    );
                    if got != want {
                        let at = got.iter().zip(&want).position(|(a, b)| a != b);
                        panic!(
                            "frame {seq} differs at {}: {} bytes received, {} sent, first \
                             difference at byte {at:?}",
                            names[p],
                            got.len(),
                            want.len()
                        );
                    }
                    assert!(!seen[seq as usize], "frame {seq} delivered twice");
                    seen[seq as usize] = true;
                    received[p] += 1;
                }
            }
        }
    };

    let deadline = Instant::now() + Duration::from_secs(120);
    while queued.iter().flatten().any(|q| !q.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "sending took too long (poll {poll}): {}",
            nonzero_counters(&d, &names.iter().map(String::as_str).collect::<Vec<_>>())
        );
        for (src, queues) in queued.iter_mut().enumerate() {
            for (qp, q) in queues.iter_mut().enumerate() {
                let batch: Vec<Vec<u8>> = q.iter().take(BURST).map(|&s| frame(s).3).collect();
                if batch.is_empty() {
                    continue;
                }
                let n = fes[src]
                    .send_batch(qp, batch.iter().map(Vec::as_slice))
                    .unwrap();
                for seq in q.drain(..n) {
                    sent[src] += 1;
                    sent_to[frame(seq).1] += 1;
                }
            }
        }
        receive(&mut fes, &mut received, &mut seen);
    }

    // Everything sent: wait until every frame is delivered or counted as dropped.
    let port_drops = |p: &str| {
        [
            "drop_no_rx_buffer",
            "drop_oversize_rx",
            "drop_link_down",
            "drop_vlan_filter",
        ]
        .iter()
        .map(|c| counter(&d, p, c))
        .sum::<u64>()
    };
    let settled =
        |received: &[u64; VFS]| (0..VFS).all(|p| received[p] + port_drops(&names[p]) == sent_to[p]);
    let t = Instant::now();
    while !settled(&received) && t.elapsed() < Duration::from_secs(20) {
        receive(&mut fes, &mut received, &mut seen);
        std::thread::sleep(Duration::from_millis(1));
    }
    let all = names.iter().map(String::as_str).collect::<Vec<_>>();
    assert_eq!(sent.iter().sum::<u64>(), u64::from(FRAMES));
    for p in 0..VFS {
        let n = names[p].as_str();
        let ctx = || format!("{n} (poll {poll}): {}", nonzero_counters(&d, &all));
        // What the port sent: all of it taken, all of it forwarded (own MAC, known destination).
        assert_eq!(counter(&d, n, "tx_packets"), sent[p], "{}", ctx());
        assert_eq!(counter(&d, n, "tx_forwarded"), sent[p], "{}", ctx());
        for drop in [
            "drop_malformed",
            "drop_no_destination",
            "drop_same_port",
            "drop_spoofchk",
        ] {
            assert_eq!(counter(&d, n, drop), 0, "{drop}: {}", ctx());
        }
        // What was sent to it: delivered byte-exact (checked above) or dropped by reason.
        assert_eq!(counter(&d, n, "rx_packets"), received[p], "{}", ctx());
        assert_eq!(
            received[p] + port_drops(n),
            sent_to[p],
            "sent to {n} = delivered + dropped: {}",
            ctx()
        );
        let per_queue: u64 = (0..QUEUE_PAIRS)
            .map(|q| counter(&d, n, &format!("rx_queue_{q}_packets")))
            .sum();
        assert_eq!(per_queue, received[p], "{}", ctx());
        let per_queue: u64 = (0..QUEUE_PAIRS)
            .map(|q| counter(&d, n, &format!("tx_queue_{q}_packets")))
            .sum();
        assert_eq!(per_queue, sent[p], "{}", ctx());
    }
    let delivered: u64 = received.iter().sum();
    assert!(
        delivered > u64::from(FRAMES) / 2,
        "only {delivered} of {FRAMES} frames delivered (poll {poll}): {}",
        nonzero_counters(&d, &all)
    );
    eprintln!(
        "poll {poll}: {delivered} of {FRAMES} frames delivered byte-exact, {} dropped and counted",
        u64::from(FRAMES) - delivered
    );
    drop(fes);
    d.shutdown();
}

#[test]
fn all_directions_two_workers_every_frame_delivered_or_counted() {
    run(false);
    run(true);
}
