//! RSS and flow steering end to end: frontends with 8 queue pairs on VF sockets.

mod common;

use common::*;
use sriov_emu::rss::{EnabledQueues, FlowTuple, Steering};

const FLOWS: usize = 10_000;
const BURST: usize = 200;

/// 10,000 random TCP/UDP flows in 198.18.0.0/15.
fn random_flows() -> Vec<FlowTuple> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    (0..FLOWS)
        .map(|_| {
            let r = rng.next();
            let proto = if r & 1 == 0 { 6 } else { 17 };
            let sip = [
                198,
                18 + (r >> 1 & 1) as u8,
                (r >> 8) as u8,
                (r >> 16) as u8,
            ];
            let dip = [198, 19, (r >> 24) as u8, 1];
            FlowTuple::v4(proto, sip, dip, (r >> 32) as u16 | 1024, (r >> 48) as u16)
        })
        .collect()
}

/// Sends every flow once from `a` to VF 1 and returns the RX queue each one arrived on.
fn queue_of_each_flow(
    a: &mut sriov_emu::frontend::VirtioNetFrontend,
    b: &mut sriov_emu::frontend::VirtioNetFrontend,
    flows: &[FlowTuple],
) -> Vec<usize> {
    let mut queue = vec![usize::MAX; flows.len()];
    for (chunk_no, chunk) in flows.chunks(BURST).enumerate() {
        for (i, flow) in chunk.iter().enumerate() {
            let seq = (chunk_no * BURST + i) as u32;
            a.send_wait(0, &l4_frame(vf_mac(1), vf_mac(0), flow, seq), WAIT)
                .unwrap();
        }
        for (q, f) in recv_n(b, chunk.len(), WAIT) {
            queue[seq_of(&f) as usize] = q;
        }
    }
    queue
}

#[test]
fn rss_spreads_random_flows_evenly_and_keeps_each_flow_on_one_queue() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 8, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(8, 8));
    b.send(0, &broadcast(vf_mac(1))).unwrap();
    a.recv_timeout(0, WAIT).unwrap();
    let flows = random_flows();

    let first = queue_of_each_flow(&mut a, &mut b, &flows);
    let mut per_q = [0usize; 8];
    for q in &first {
        per_q[*q] += 1;
    }
    let expect = FLOWS / 8;
    for (q, n) in per_q.iter().enumerate() {
        let dev = (*n as f64 - expect as f64).abs() / expect as f64;
        assert!(
            dev <= 0.15,
            "queue {q} got {n} of {FLOWS} flows ({:.1}% off 1/8): {per_q:?}",
            dev * 100.0
        );
    }
    // The same flows again: each lands where it landed before, and where explain() says.
    let second = queue_of_each_flow(&mut a, &mut b, &flows);
    assert_eq!(first, second, "a flow moved between queues");
    let port = d.port("vf1").unwrap();
    let all = EnabledQueues::first(8);
    for (i, flow) in flows.iter().enumerate().step_by(97) {
        let why = port.rss().explain(flow, &all);
        assert_eq!(
            (why.queue as usize, why.by),
            (first[i], Steering::Rss),
            "{why}"
        );
    }
    assert_eq!(counter(&d, "vf1", "rx_steer_rss"), 2 * FLOWS as u64);

    // With 2 of the 8 queue pairs enabled, every frame lands on those 2.
    for qp in 2..8 {
        b.set_queue_pair_enabled(qp, false).unwrap();
    }
    let narrowed = queue_of_each_flow(&mut a, &mut b, &flows[..2000]);
    assert!(
        narrowed.iter().all(|q| *q < 2),
        "a frame reached a disabled queue"
    );
    assert!(narrowed.contains(&0) && narrowed.contains(&1));
}

#[test]
fn flow_learning_steers_replies_to_the_transmit_queue_for_every_flow() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 8, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(8, 8));
    d.port("vf1").unwrap().rss().set_learning(true);
    let flows = &random_flows()[..1000];
    // B transmits each flow on TX queue k = i % 8 ...
    for (chunk_no, chunk) in flows.chunks(BURST).enumerate() {
        for (i, flow) in chunk.iter().enumerate() {
            let n = chunk_no * BURST + i;
            let f = l4_frame(vf_mac(0), vf_mac(1), &flow.reversed(), n as u32);
            b.send_wait(n % 8, &f, WAIT).unwrap();
        }
        recv_n(&mut a, chunk.len(), WAIT);
    }
    assert_eq!(counter(&d, "vf1", "flow_learned"), 1000);
    // ... and the replies (A -> B) arrive on RX queue k.
    let got = queue_of_each_flow(&mut a, &mut b, flows);
    let wrong: Vec<_> = got
        .iter()
        .enumerate()
        .filter(|(i, q)| **q != i % 8)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of 1000 flows on the wrong queue, first: {:?}",
        wrong.len(),
        wrong.first()
    );
    assert_eq!(counter(&d, "vf1", "rx_steer_flow_learned"), 1000);
    let t = flows[5];
    let why = d
        .port("vf1")
        .unwrap()
        .rss()
        .explain(&t, &EnabledQueues::first(8));
    assert_eq!((why.queue, why.by), (5, Steering::FlowLearned), "{why}");
}

#[test]
fn explicit_flow_rules_and_user_tables_steer_frames() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 4, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(4, 4));
    let port = d.port("vf1").unwrap();
    // Every entry to queue 3: all RSS traffic lands there.
    port.rss().set_table(Some(&[3])).unwrap();
    let flows = &random_flows()[..300];
    assert!(queue_of_each_flow(&mut a, &mut b, flows)
        .iter()
        .all(|q| *q == 3));
    // A rule beats the table.
    port.rss().add_flow_rule(flows[0], 1).unwrap();
    let got = queue_of_each_flow(&mut a, &mut b, &flows[..2]);
    assert_eq!(got, vec![1, 3]);
    assert_eq!(counter(&d, "vf1", "rx_steer_flow_rule"), 1);
    // Non-IP frames go to queue 0.
    let mut arp = broadcast(vf_mac(0));
    arp[..6].copy_from_slice(&vf_mac(1).0);
    a.send(0, &arp).unwrap();
    assert_eq!(recv_n(&mut b, 1, WAIT)[0].0, 0);
    assert_eq!(counter(&d, "vf1", "rx_steer_non_ip"), 1);
}
