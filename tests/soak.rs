//! The soak: the real binary under mixed traffic for `SRIOV_SOAK_SECS` seconds (60 in CI; run
//! `SRIOV_SOAK_SECS=600 cargo test --release --test soak -- --nocapture` for ten minutes).
//!
//! Throughout, pv0 sends to pv1 (mixed sizes), and pv1's frontend reconnects every few
//! seconds. In rounds of about 4 s: numvfs goes 0 -> 4 (the new VFs unused until then), vf0 and
//! vf1 get port VLAN 200; vf0 sends to vf1 with one frame in 8 spoofed; vf3 sends 802.1Q-tagged
//! frames (VLAN 100) to vf2, then its link flaps (an injected fault) and its frontend reconnects,
//! then it sends again; everything stops, and for every port the frames sent equal the frames
//! delivered plus the frames dropped by reason, exactly, by the emulator's counters and by what
//! the frontends sent and received; the VFs' frontends leave and numvfs goes back to 0. At the
//! end the same holds for the PV ports, and the emulator's resident memory is where it was after
//! the first round.
//!
//! "Resident memory" is the emulator's own (VmRSS less RssShmem): the guests' shared memory it
//! maps is the guests', and how much of it is resident swings by MiBs with which frontend is
//! attached at the moment of the sample. That it is all unmapped once every frontend has left
//! is checked on its own.

mod common;

use common::*;
use serde_json::{json, Value};
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::wire::MacAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn exec(emu: &Emu, cmd: &str, args: Value) -> Value {
    emu.control()
        .execute(cmd, args)
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// Every counter of `port`.
fn counters(emu: &Emu, port: &str) -> Value {
    exec(emu, "query-stats", json!({"port": port}))[0]["counters"].clone()
}

fn get(c: &Value, name: &str) -> u64 {
    c[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {c}"))
}

/// A port as a sender: every frame it sent is forwarded or dropped by a named reason.
fn check_sender(emu: &Emu, port: &str, sent: u64) -> Value {
    let c = counters(emu, port);
    let drops: u64 = TX_DROPS.iter().map(|d| get(&c, d)).sum();
    assert_eq!(get(&c, "tx_packets"), sent, "{port}: {c}");
    assert_eq!(
        get(&c, "tx_packets"),
        get(&c, "tx_forwarded") + drops,
        "{port}: frames sent != forwarded + dropped: {c}"
    );
    c
}

/// A port as the only receiver of `from`'s forwarded frames: each is delivered or dropped by a
/// named reason, and its frontend got exactly the delivered ones.
fn check_receiver(emu: &Emu, port: &str, forwarded: u64, got: u64) {
    let c = counters(emu, port);
    let lost = get(&c, "drop_no_rx_buffer") + get(&c, "drop_oversize_rx");
    assert_eq!(get(&c, "rx_packets"), got, "{port}: {c}");
    assert_eq!(
        forwarded,
        get(&c, "rx_packets") + lost,
        "{port}: frames forwarded to it != delivered + dropped: {c}"
    );
}

fn mac(a: u8, b: u8) -> MacAddr {
    MacAddr([0x02, 0x50, 0, 0, a, b])
}

/// A frame of a size that cycles through small, medium and large.
fn sized(dst: MacAddr, src: MacAddr, seq: u32) -> Vec<u8> {
    const SIZES: [usize; 6] = [60, 64, 128, 590, 1024, 1514];
    udp_frame(dst, src, 7, 9, seq, SIZES[seq as usize % SIZES.len()])
}

/// `f` with an 802.1Q tag of VLAN `vid`.
fn tagged(f: &[u8], vid: u16) -> Vec<u8> {
    let mut t = Vec::with_capacity(f.len() + 4);
    t.extend_from_slice(&f[..12]);
    t.extend_from_slice(&[0x81, 0x00]);
    t.extend_from_slice(&vid.to_be_bytes());
    t.extend_from_slice(&f[12..]);
    t
}

/// Sends `frames` from `tx` in bursts of 32 and collects what `rx` receives meanwhile, until
/// it has been quiet for `QUIET`.
fn exchange(
    tx: &mut VirtioNetFrontend,
    rx: &mut VirtioNetFrontend,
    frames: &[(Vec<u8>, bool)],
    got: &mut Vec<Vec<u8>>,
) {
    for burst in frames.chunks(32) {
        for (f, _) in burst {
            tx.send_wait(0, f, WAIT).unwrap();
        }
        while let Some((_, f)) = rx.recv_any(Duration::from_millis(1)) {
            got.push(f);
        }
    }
    got.extend(rx.drain(QUIET).into_iter().map(|(_, f)| f));
}

/// The PV ports' traffic, on its own thread for the whole soak.
struct PvTraffic {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64, u64)>,
}

impl PvTraffic {
    fn start(dir: std::path::PathBuf) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (a, b) = (mac(0xa, 0), mac(0xb, 0));
            let connect = |p: &str| {
                VirtioNetFrontend::connect(dir.join(format!("{p}.sock")), pairs(1, 1)).unwrap()
            };
            let mut pv0 = connect("pv0");
            let (mut sent, mut got, mut hellos) = (0u64, 0u64, 0u64);
            let mut seq = 0u32;
            while !flag.load(Ordering::Relaxed) {
                // pv1 (re)connects and says hello, so the FDB learns its MAC on it.
                let mut pv1 = connect("pv1");
                pv1.send_wait(0, &sized(a, b, 0), WAIT).unwrap();
                hellos += 1;
                assert!(pv0.recv_timeout(0, WAIT).is_some(), "pv1's hello lost");
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(3) && !flag.load(Ordering::Relaxed) {
                    let frames: Vec<(Vec<u8>, bool)> = (0..256)
                        .map(|_| {
                            seq += 1;
                            (sized(b, a, seq), true)
                        })
                        .collect();
                    let mut rx = Vec::new();
                    exchange(&mut pv0, &mut pv1, &frames, &mut rx);
                    sent += frames.len() as u64;
                    for f in &rx {
                        assert_eq!(f, &sized(b, a, seq_of(f)), "pv1 got a frame changed");
                    }
                    got += rx.len() as u64;
                }
                drop(pv1);
            }
            (sent, got, hellos)
        });
        PvTraffic { stop, thread }
    }

    fn finish(self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the PV traffic failed")
    }
}

/// Waits until `port`'s link is up again and nothing is attached to it.
fn wait_link_back(emu: &Emu, vf: usize) {
    let t = Instant::now();
    loop {
        let vfs = exec(emu, "query-vfs", json!({}));
        let v = &vfs[vf];
        if v["link-up"] == true && v["attached"] == false {
            return;
        }
        assert!(t.elapsed() < WAIT, "vf{vf} did not come back: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One round with 4 VFs; returns the frames exchanged.
fn round(emu: &Emu, n: u32) -> u64 {
    exec(emu, "set-numvfs", json!({"numvfs": 4}));
    for vf in [0, 1] {
        exec(emu, "vf-set", json!({"vf": vf, "vlan": 200}));
    }
    let cfg = FrontendConfig {
        queue_size: 512,
        ..pairs(1, 1)
    };
    let connect = |vf: u32| {
        VirtioNetFrontend::connect(emu.path().join(format!("vf{vf}.sock")), cfg.clone()).unwrap()
    };
    let (mut vf0, mut vf1, mut vf2, mut vf3) = (connect(0), connect(1), connect(2), connect(3));

    // vf0 -> vf1 under port VLAN 200 (tagged and stripped by the switch), one in 8 spoofed.
    let spoofed = mac(0xee, n as u8);
    let frames: Vec<(Vec<u8>, bool)> = (0..800u32)
        .map(|i| {
            let fake = i % 8 == 7;
            let src = if fake { spoofed } else { vf_mac(0) };
            (sized(vf_mac(1), src, i), !fake)
        })
        .collect();
    let mut got1 = Vec::new();
    exchange(&mut vf0, &mut vf1, &frames, &mut got1);
    let legit: Vec<&Vec<u8>> = frames.iter().filter(|f| f.1).map(|f| &f.0).collect();
    for f in &got1 {
        assert_eq!(
            f,
            legit[legit.iter().position(|x| seq_of(x) == seq_of(f)).unwrap()]
        );
    }

    // vf3 -> vf2 tagged VLAN 100 (the guest's own tag: no port VLAN on either), then a flap of
    // vf3's link, its frontend reconnecting, and again.
    let mut got2 = Vec::new();
    let mut sent3 = 0u64;
    for phase in 0..2u32 {
        let frames: Vec<(Vec<u8>, bool)> = (0..400u32)
            .map(|i| {
                (
                    tagged(&sized(vf_mac(2), vf_mac(3), phase * 1000 + i), 100),
                    true,
                )
            })
            .collect();
        exchange(&mut vf3, &mut vf2, &frames, &mut got2);
        sent3 += frames.len() as u64;
        if phase == 0 {
            exec(
                emu,
                "fault-set",
                json!({"port": "vf3", "fault": "link-flap", "down-ms": 300}),
            );
            wait_link_back(emu, 3);
            vf3 = connect(3);
        }
    }
    for f in &got2 {
        let seq = seq_of(&f[4..]);
        assert_eq!(f, &tagged(&sized(vf_mac(2), vf_mac(3), seq), 100));
    }

    let c0 = check_sender(emu, "vf0", frames.len() as u64);
    assert_eq!(get(&c0, "drop_spoofchk"), 100, "vf0: {c0}");
    check_receiver(emu, "vf1", get(&c0, "tx_forwarded"), got1.len() as u64);
    let c3 = check_sender(emu, "vf3", sent3);
    assert_eq!(get(&c3, "fault_link_flap"), 1);
    check_receiver(emu, "vf2", get(&c3, "tx_forwarded"), got2.len() as u64);
    for p in ["vf1", "vf2"] {
        check_sender(emu, p, 0);
    }
    drop((vf0, vf1, vf2, vf3));
    exec(emu, "set-numvfs", json!({"numvfs": 0}));
    (got1.len() + got2.len()) as u64
}

#[test]
fn soak_every_frame_accounted_for_and_memory_flat() {
    let secs: u64 = std::env::var("SRIOV_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let emu = Emu::start(&["--vfs", "0", "--pv-ports", "2", "--channels-per-vf", "1"]);
    let pv = PvTraffic::start(emu.path().to_path_buf());
    let t = Instant::now();
    let mut rounds = 0;
    let mut frames = 0;
    let mut rss_warm = 0;
    while rounds == 0 || t.elapsed() < Duration::from_secs(secs) {
        frames += round(&emu, rounds);
        rounds += 1;
        if rounds == 1 {
            rss_warm = emu.own_rss_kib();
        }
        if rounds % 10 == 0 {
            eprintln!(
                "soak: {rounds} rounds, {frames} VF frames, {:?}, own RSS {} KiB, guests' {} KiB",
                t.elapsed(),
                emu.own_rss_kib(),
                emu.guest_rss_kib()
            );
        }
    }
    let (sent, got, hellos) = pv.finish();
    let c0 = check_sender(&emu, "pv0", sent);
    check_receiver(&emu, "pv1", get(&c0, "tx_forwarded"), got);
    check_sender(&emu, "pv1", hellos);
    let rss_end = emu.own_rss_kib();
    eprintln!(
        "soak: {secs} s, {rounds} rounds of numvfs 0 -> 4 -> 0, {frames} VF frames and {got} PV \
         frames delivered, {hellos} PV reconnects; own RSS {rss_warm} KiB after the first round, \
         {rss_end} KiB at the end"
    );
    assert!(
        rss_end <= rss_warm + 2048,
        "resident memory grew from {rss_warm} KiB to {rss_end} KiB"
    );
    // Every frontend has left: no guest memory stays mapped.
    let t = Instant::now();
    while emu.guest_rss_kib() > 0 && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        emu.guest_rss_kib(),
        0,
        "guest memory still mapped after every frontend left"
    );
}
