//! Bounded resources: whatever the offered load, the emulator's tables stop at their limits
//! and count what they turned away, and its memory stays flat. Run on the real binary, whose
//! resident memory is read from /proc.

mod common;

use common::*;
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::rss::DEFAULT_LEARNED_CAPACITY;
use sriov_emu::switch::MAX_LEARNED;
use sriov_emu::wire::MacAddr;
use std::time::{Duration, Instant};

/// The emulator's resident memory, KiB.
fn rss_kib(emu: &Emu) -> u64 {
    vm_rss_kib(emu.child.id())
}

/// Sends `n` frames made by `frame(i)` on `fe`'s queue pair 0, as fast as its ring takes them.
fn send_all(
    fe: &mut VirtioNetFrontend,
    range: std::ops::Range<u32>,
    frame: impl Fn(u32) -> Vec<u8>,
) {
    let mut i = range.start;
    let t = Instant::now();
    while i < range.end {
        let batch: Vec<Vec<u8>> = (i..range.end.min(i + 128)).map(&frame).collect();
        let n = fe.send_batch(0, batch.iter().map(Vec::as_slice)).unwrap();
        i += n as u32;
        if n == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(120),
                "sending stalled at {i}"
            );
            std::thread::yield_now();
        }
    }
}

/// Waits until `port`'s `name` reaches `want` (through the control socket).
fn wait_counter(emu: &Emu, port: &str, name: &str, want: u64) {
    let t = Instant::now();
    loop {
        let v = emu.counter(port, name);
        if v >= want {
            assert_eq!(v, want, "{port} {name}");
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{port} {name} at {v}, {want} expected"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_million_flows_and_100k_source_macs_stay_within_the_tables_limits() {
    const FLOWS: u32 = 1_000_000;
    const MACS: u32 = 100_000;
    let emu = Emu::start(&[
        "--vfs",
        "2",
        "--pv-ports",
        "1",
        "--channels-per-vf",
        "2",
        "--flow-learning",
    ]);
    let cfg = FrontendConfig {
        queue_size: 1024,
        tx_buf_size: 256,
        ..pairs(2, 2)
    };
    let connect = |port: &str, cfg: FrontendConfig| {
        VirtioNetFrontend::connect(emu.path().join(format!("{port}.sock")), cfg).unwrap()
    };
    let mut vf0 = connect("vf0", cfg.clone());
    // vf1 receives nothing: what does not fit its ring is counted there, which is fine.
    let _vf1 = connect("vf1", pairs(2, 2));
    let mut pv0 = connect(
        "pv0",
        FrontendConfig {
            fill_rx: false,
            ..cfg
        },
    );
    let flow = |i: u32| udp_frame(vf_mac(1), vf_mac(0), (i >> 16) as u16, i as u16, i, 60);
    let mac = |i: u32| MacAddr([0x02, 0x5e, 0, (i >> 16) as u8, (i >> 8) as u8, i as u8]);
    let from_mac = |i: u32| udp_frame(vf_mac(1), mac(i), 1, 2, i, 60);

    // Warm-up: both tables full.
    let rss0 = rss_kib(&emu);
    let warm_flows = 2 * DEFAULT_LEARNED_CAPACITY as u32;
    let warm_macs = MAX_LEARNED as u32 + 1000;
    send_all(&mut vf0, 0..warm_flows, flow);
    send_all(&mut pv0, 0..warm_macs, from_mac);
    wait_counter(&emu, "vf0", "tx_packets", u64::from(warm_flows));
    wait_counter(&emu, "pv0", "tx_packets", u64::from(warm_macs));
    let rss_warm = rss_kib(&emu);

    send_all(&mut vf0, warm_flows..FLOWS, flow);
    send_all(&mut pv0, warm_macs..MACS, from_mac);
    wait_counter(&emu, "vf0", "tx_packets", u64::from(FLOWS));
    wait_counter(&emu, "pv0", "tx_packets", u64::from(MACS));
    let rss_end = rss_kib(&emu);

    // Every flow learned once, and all but the table's capacity evicted again.
    assert_eq!(emu.counter("vf0", "flow_learned"), u64::from(FLOWS));
    assert_eq!(
        emu.counter("vf0", "flow_evictions"),
        u64::from(FLOWS) - DEFAULT_LEARNED_CAPACITY as u64
    );
    // The FDB learned up to its limit and counted every other new MAC.
    assert_eq!(
        emu.counter("pv0", "fdb_learn_refused"),
        u64::from(MACS) - MAX_LEARNED as u64
    );
    let fdb = emu
        .control()
        .execute("query-fdb", serde_json::json!({}))
        .unwrap();
    let learned = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["static"] == false)
        .count();
    assert_eq!(learned, MAX_LEARNED);
    eprintln!(
        "VmRSS: {rss0} KiB at start, {rss_warm} KiB with both tables full, {rss_end} KiB after \
         {FLOWS} flows and {MACS} source MACs"
    );
    assert!(
        rss_end <= rss_warm + 2048,
        "memory grew from {rss_warm} KiB to {rss_end} KiB after warm-up"
    );
    assert!(
        rss_end < 128 * 1024,
        "{rss_end} KiB resident, over the 128 MiB bound"
    );
}
