//! The TX schedulers: `max_tx_rate` delivers the rate it names whatever the offered load, and
//! `min_tx_rate` is a guaranteed share of the wire when VFs compete for it. Measured by the
//! receiver over 5 s, after a warm-up that spends the 20 ms burst. One measurement at a time
//! (they share two cores).

mod common;

use common::*;
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

/// The sender's rings: both of the VF's queue pairs, 1024 entries each. The shaper must always
/// have frames waiting: 2048 64-byte frames are 5 ms at 200 Mbit/s, which covers the sender
/// being off the CPU for a scheduler slice on a busy machine (one ring, 2.4 ms, did not: the
/// rings ran dry and the rate read low, with the shaper idle for want of frames).
fn sender_rings() -> FrontendConfig {
    FrontendConfig {
        queue_size: 1024,
        ..pairs(2, 2)
    }
}

/// A sender that keeps its TX rings full (an offered load as high as the rings allow, far
/// above any rate here), until `stop`. Returns the frames it queued, and the frontend.
fn flood(
    mut fe: VirtioNetFrontend,
    frame: Vec<u8>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, VirtioNetFrontend)> {
    std::thread::spawn(move || {
        let mut queued = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let mut n = 0;
            for qp in 0..fe.queue_pairs() {
                n += fe
                    .send_batch(qp, std::iter::repeat_n(&frame[..], 64))
                    .unwrap_or(0);
            }
            queued += n as u64;
            if n == 0 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        (queued, fe)
    })
}

/// What vf0 sent and vf1 got in the window, from the emulator's counters at each port.
struct Shaped {
    /// Mbit/s vf0's TX let through (frames that passed the shaper).
    sent: f64,
    /// Mbit/s that reached vf1: written into its RX ring, or dropped there for want of a
    /// buffer (the in-process receiver falls behind at a few hundred thousand frames per
    /// second on a busy machine; that is the test frontend, not the port).
    reached: f64,
    /// Mbit/s the test's frontend on vf1 took out of its ring.
    received: f64,
    tx_throttled: u64,
    /// vf0's tx_packets - tx_forwarded (frames the switch dropped), after the traffic ended.
    not_forwarded: u64,
    ctx: String,
}

/// vf0 with `max_tx_rate rate` floods vf1 with `len`-byte frames.
fn shaped(rate: u32, len: usize, poll: bool) -> Shaped {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon_cfg(dir.path(), 2, 0, |c| {
        c.poll = poll;
        // Two queue pairs per VF: the sender floods both (`sender_rings`).
        c.pf.channels_per_vf = 2;
    });
    d.vf_set(
        0,
        &SettingsUpdate {
            max_tx_rate: Some(i64::from(rate)),
            ..Default::default()
        },
    )
    .unwrap();
    let a = connect(&d, "vf0", sender_rings());
    let mut b = connect(&d, "vf1", big_rings());
    let stop = Arc::new(AtomicBool::new(false));
    let tx = flood(
        a,
        udp_frame(vf_mac(1), vf_mac(0), 1, 2, 0, len),
        stop.clone(),
    );
    let c = |p: &str, n: &str| counter(&d, p, n);
    let reached = || (c("vf1", "rx_packets") + c("vf1", "drop_no_rx_buffer")) * len as u64;
    let start = Instant::now();
    while start.elapsed() < WARM_UP {
        b.recv_timeout(0, Duration::from_millis(5));
    }
    let (sent0, reached0) = (c("vf0", "tx_bytes"), reached());
    let begin = Instant::now();
    let mut received = 0u64;
    while begin.elapsed() < WINDOW {
        if let Some(f) = b.recv_timeout(0, Duration::from_millis(5)) {
            received += f.len() as u64;
        }
    }
    let (sent1, reached1) = (c("vf0", "tx_bytes"), reached());
    let secs = begin.elapsed().as_secs_f64();
    let mbps = |bytes: u64| bytes as f64 * 8.0 / secs / 1e6;
    stop.store(true, Ordering::Relaxed);
    let (queued, a) = tx.join().unwrap();
    assert!(queued > 0);
    // Frames held back by the rate go back to the avail side, and come out in order.
    assert_in_order(&[&a, &b]);
    drop(a);
    // The sender is gone (its ring with it); what it had sent has reached vf1 by now.
    b.drain(Duration::from_millis(200));
    let out = Shaped {
        sent: mbps(sent1 - sent0),
        reached: mbps(reached1 - reached0),
        received: mbps(received),
        tx_throttled: c("vf0", "tx_throttled"),
        not_forwarded: c("vf0", "tx_packets") - c("vf0", "tx_forwarded"),
        ctx: nonzero_counters(&d, &["vf0", "vf1"]),
    };
    drop(b);
    drop(d);
    drop(dir);
    out
}

fn check_shaped(rate: u32, len: usize, poll: bool) {
    let _one = one_at_a_time();
    let s = shaped(rate, len, poll);
    eprintln!(
        "max_tx_rate {rate} with {len}-byte frames (poll {poll}): sent {:.1}, reached vf1 {:.1}, \
         received by the test {:.1} Mbit/s",
        s.sent, s.reached, s.received
    );
    let want = f64::from(rate);
    let within = |x: f64| (0.95 * want..=1.05 * want).contains(&x);
    assert!(
        within(s.sent) && within(s.reached),
        "max_tx_rate {rate}, {len}-byte frames, poll {poll}: vf0 sent {:.1} and vf1 got {:.1} \
         Mbit/s; {}",
        s.sent,
        s.reached,
        s.ctx
    );
    assert!(s.tx_throttled > 0, "{}", s.ctx);
    // Shaped, not policed: nothing the sender queued was dropped.
    assert_eq!(s.not_forwarded, 0, "{}", s.ctx);
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

#[test]
fn guarantees_that_add_up_to_more_than_the_wire_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let local = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    let spec = format!("vxlan:local={local},remote=127.0.0.1:9,vni=5")
        .parse()
        .unwrap();
    let d = start_daemon_cfg(dir.path(), 3, 0, |c| {
        c.uplink = Some(spec);
        c.uplink_rate = 100;
    });
    let min = |vf: u32, r: i64| {
        d.vf_set(
            vf,
            &SettingsUpdate {
                min_tx_rate: Some(r),
                ..Default::default()
            },
        )
        .map_err(|e| e.to_string())
    };
    min(0, 60).unwrap();
    min(1, 40).unwrap();
    let err = min(2, 1).unwrap_err();
    assert!(
        err.contains("the VFs' guarantees would add up to 101 Mbit/s, more than the wire's 100"),
        "{err}"
    );
    assert_eq!(
        d.port("vf2").unwrap().settings().min_tx_rate,
        0,
        "nothing changed"
    );
    // Lowering one makes room.
    min(0, 50).unwrap();
    min(2, 10).unwrap();
}

/// A `vf-set` whose guarantee does not fit changes nothing, not even the channels it also asks
/// for (they are changed before the settings).
#[test]
fn a_refused_guarantee_changes_nothing_of_the_request() {
    let local = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap();
    let spec = format!("vxlan:local={local},remote=127.0.0.1:9,vni=5");
    let emu = Emu::start(&[
        "--vfs",
        "2",
        "--pv-ports",
        "0",
        "--uplink",
        &spec,
        "--uplink-rate",
        "100",
    ]);
    let mut ctl = emu.control();
    ctl.execute("vf-set", serde_json::json!({"vf": 0, "min-tx-rate": 60}))
        .unwrap();
    let err = ctl
        .execute(
            "vf-set",
            serde_json::json!({"vf": 1, "channels": 1, "min-tx-rate": 50}),
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("would add up to 110 Mbit/s"), "{err}");
    let vfs = ctl.execute("query-vfs", serde_json::json!({})).unwrap();
    assert_eq!(vfs[1]["channels"], 2, "{vfs}");
    assert_eq!(vfs[1]["min-tx-rate"], 0, "{vfs}");
}
