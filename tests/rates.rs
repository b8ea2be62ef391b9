//! The TX schedulers: `max_tx_rate` delivers the rate it names whatever the offered load, and
//! `min_tx_rate` is a guaranteed share of the wire when VFs compete for it. Measured by the
//! receiver over 5 s, after a warm-up that spends the 20 ms burst. One measurement at a time
//! (they share two cores).

mod common;

use common::*;
use sriov_emu::daemon::Daemon;
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::vf::SettingsUpdate;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WARM_UP: Duration = Duration::from_millis(500);
const WINDOW: Duration = Duration::from_secs(5);

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn big_rings() -> FrontendConfig {
    FrontendConfig {
        queue_size: 1024,
        ..pairs(1, 1)
    }
}

/// A sender that keeps its TX ring full (an offered load as high as the ring allows, far
/// above any rate here), until `stop`. Returns the frames it queued.
fn flood(
    mut fe: VirtioNetFrontend,
    frame: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut queued = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let n = fe
                .send_batch(0, std::iter::repeat_n(&frame[..], 64))
                .unwrap_or(0);
            queued += n as u64;
            if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        queued
    })
}

/// Bytes `fe` receives during `WINDOW`, after `WARM_UP`; frames it receives are checked by
/// `check` (which returns the index of the sender it came from).
fn receive(fe: &mut VirtioNetFrontend, senders: usize, check: impl Fn(&[u8]) -> usize) -> Vec<f64> {
    let start = Instant::now();
    let mut bytes = vec![0u64; senders];
    while start.elapsed() < WARM_UP {
        fe.recv_timeout(0, Duration::from_millis(5));
    }
    let begin = Instant::now();
    while begin.elapsed() < WINDOW {
        if let Some(f) = fe.recv_timeout(0, Duration::from_millis(5)) {
            bytes[check(&f)] += f.len() as u64;
        }
    }
    let secs = begin.elapsed().as_secs_f64();
    bytes.iter().map(|b| *b as f64 * 8.0 / secs / 1e6).collect()
}

/// Mbit/s that vf1 receives from vf0 with `max_tx_rate rate`, `len`-byte frames.
fn shaped(rate: u32, len: usize, poll: bool) -> (tempfile::TempDir, Daemon, f64) {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon_cfg(dir.path(), 2, 0, |c| c.poll = poll);
    d.vf_set(
        0,
        &SettingsUpdate {
            max_tx_rate: Some(i64::from(rate)),
            ..Default::default()
        },
    )
    .unwrap();
    let a = connect(&d, "vf0", big_rings());
    let mut b = connect(&d, "vf1", big_rings());
    let stop = Arc::new(AtomicBool::new(false));
    let tx = flood(
        a,
        udp_frame(vf_mac(1), vf_mac(0), 1, 2, 0, len),
        stop.clone(),
    );
    let mbps = receive(&mut b, 1, |_| 0)[0];
    stop.store(true, Ordering::Relaxed);
    let queued = tx.join().unwrap();
    assert!(queued > 0);
    (dir, d, mbps)
}

fn check_shaped(rate: u32, len: usize, poll: bool) {
    let _one = one_at_a_time();
    // Bound in this order, the daemon stops before its directory goes.
    let (_dir, d, mbps) = shaped(rate, len, poll);
    let ctx = nonzero_counters(&d, &["vf0", "vf1"]);
    eprintln!("max_tx_rate {rate} with {len}-byte frames (poll {poll}): {mbps:.1} Mbit/s");
    let want = f64::from(rate);
    assert!(
        (0.95 * want..=1.05 * want).contains(&mbps),
        "max_tx_rate {rate}, {len}-byte frames, poll {poll}: {mbps:.1} Mbit/s delivered; {ctx}"
    );
    assert!(counter(&d, "vf0", "tx_throttled") > 0, "{ctx}");
    // Shaped, not policed: nothing the sender queued was dropped.
    assert_eq!(
        counter(&d, "vf0", "tx_forwarded"),
        counter(&d, "vf0", "tx_packets"),
        "{ctx}"
    );
}

#[test]
fn max_tx_rate_200_with_1518_byte_frames() {
    check_shaped(200, 1514, false);
    check_shaped(200, 1514, true);
}

#[test]
fn max_tx_rate_1000_with_1518_byte_frames() {
    check_shaped(1000, 1514, false);
    check_shaped(1000, 1514, true);
}

#[test]
fn max_tx_rate_200_with_64_byte_frames() {
    check_shaped(200, 60, false);
    check_shaped(200, 60, true);
}

/// Mbit/s of the wire (a VXLAN uplink at `--uplink-rate 100` whose remote is the test's
/// socket) that vf0 and vf1 get when both flood it, vf0 with `min_tx_rate min0`.
fn wire_shares(min0: u32) -> [f64; 2] {
    use sriov_emu::uplink::vxlan_header;
    let dir = tempfile::tempdir().unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let remote = sock.local_addr().unwrap();
    let local = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    let spec = format!("vxlan:local={local},remote={remote},vni=5")
        .parse()
        .unwrap();
    let d = start_daemon_cfg(dir.path(), 2, 0, |c| {
        c.uplink = Some(spec);
        c.uplink_rate = 100;
    });
    if min0 != 0 {
        d.vf_set(
            0,
            &SettingsUpdate {
                min_tx_rate: Some(i64::from(min0)),
                ..Default::default()
            },
        )
        .unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let nobody = sriov_emu::wire::MacAddr([2, 0, 0, 0, 0xee, 1]);
    let senders: Vec<_> = (0..2u16)
        .map(|i| {
            let fe = connect(&d, &format!("vf{i}"), big_rings());
            flood(
                fe,
                udp_frame(nobody, vf_mac(i), 1, 2, 0, 1400),
                stop.clone(),
            )
        })
        .collect();
    // The wire's far end counts what each VF got (by the inner source MAC).
    sock.set_read_timeout(Some(Duration::from_millis(5)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let mut bytes = [0u64; 2];
    let start = Instant::now();
    let mut begin = None;
    while start.elapsed() < WARM_UP + WINDOW {
        let Ok(n) = sock.recv(&mut buf) else {
            continue;
        };
        let Ok((_, inner)) = vxlan_header::decode(&buf[..n]) else {
            continue;
        };
        if start.elapsed() < WARM_UP {
            continue;
        }
        begin.get_or_insert_with(Instant::now);
        // The source MAC is vf_mac(i) = 02:00:00:00:0i:01.
        bytes[usize::from(inner[10]).min(1)] += inner.len() as u64;
    }
    let secs = begin.map_or(1.0, |b| b.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    for s in senders {
        s.join().unwrap();
    }
    drop(d);
    bytes.map(|b| b as f64 * 8.0 / secs / 1e6)
}

#[test]
fn min_tx_rate_is_a_guaranteed_share_of_the_wire() {
    let _one = one_at_a_time();
    let [a, b] = wire_shares(60);
    eprintln!("uplink 100 Mbit/s, vf0 min_tx_rate 60: vf0 {a:.1}, vf1 {b:.1} Mbit/s");
    assert!(
        a >= 55.0,
        "vf0 with min_tx_rate 60 got {a:.1} Mbit/s (vf1 {b:.1})"
    );
    assert!(
        (95.0..=105.0).contains(&(a + b)),
        "the wire carried {:.1} Mbit/s of 100",
        a + b
    );
    assert!(
        b >= 5.0,
        "vf1 got {b:.1} Mbit/s: the rest of the wire is shared too"
    );
    let [a, b] = wire_shares(0);
    eprintln!("uplink 100 Mbit/s, no min_tx_rate: vf0 {a:.1}, vf1 {b:.1} Mbit/s");
    assert!(
        (95.0..=105.0).contains(&(a + b)),
        "the wire carried {:.1} Mbit/s of 100",
        a + b
    );
    assert!(
        (40.0..=60.0).contains(&a) && (40.0..=60.0).contains(&b),
        "not even: vf0 {a:.1}, vf1 {b:.1}"
    );
}
