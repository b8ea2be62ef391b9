//! Frontends that go away in the middle of a burst, without stopping the device first (no
//! GET_VRING_BASE: the socket just closes, as when QEMU or the emulator dies): nothing stays
//! stuck, no buffer is lost, other ports do not notice, and the process does not keep anything
//! of the connection (memory mappings, fds, threads).

mod common;

use common::*;
use sriov_emu::daemon::Daemon;
use sriov_emu::frontend::{FrontendConfig, VirtioNetFrontend};
use sriov_emu::vf::SettingsUpdate;
use std::time::{Duration, Instant};

const ROUNDS: u32 = 20;
const BURST: u32 = 1000;
/// Frames the bystanders exchange per round.
const BYSTANDER_FRAMES: u32 = 100;

/// What the process holds: open fds, threads, mappings of frontend guest memory (the test's
/// own and the emulator's), resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    fds: usize,
    threads: usize,
    guest_maps: usize,
    rss_kib: u64,
}

impl Held {
    fn now() -> Held {
        let count = |dir: &str| std::fs::read_dir(dir).map_or(0, Iterator::count);
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        Held {
            fds: count("/proc/self/fd"),
            threads: count("/proc/self/task"),
            guest_maps: maps.matches("sriov-emu-frontend").count(),
            rss_kib: vm_rss_kib(std::process::id()),
        }
    }

    /// Waits (up to 5 s: threads end and fds close a little after a detach) until the process
    /// holds no more fds, threads and guest memory mappings than `base`; returns what it holds.
    fn settle_to(base: Held) -> Held {
        let t = Instant::now();
        loop {
            let h = Held::now();
            let back =
                h.fds <= base.fds && h.threads <= base.threads && h.guest_maps <= base.guest_maps;
            if back || t.elapsed() > WAIT {
                return h;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The tests measure the whole process (fds, threads, mappings): one at a time.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Four VFs; vf0, the sender, at 20 Mbit/s: a burst takes it about 50 ms, so a hang-up right
/// after queueing one lands in its middle.
fn daemon(dir: &std::path::Path, poll: bool, workers: usize) -> Daemon {
    let d = start_daemon_cfg(dir, 4, 0, |c| {
        c.poll = poll;
        c.workers = workers;
    });
    let rate = SettingsUpdate {
        max_tx_rate: Some(20),
        ..SettingsUpdate::default()
    };
    d.vf_set(0, &rate).unwrap();
    d
}

/// The sender: a 1024-entry TX ring with small buffers, so a whole burst fits in it.
fn sender_cfg() -> FrontendConfig {
    FrontendConfig {
        queue_size: 1024,
        tx_buf_size: 256,
        ..FrontendConfig::default()
    }
}

/// The receiver: 1024 RX buffers, so a whole burst is taken without reading.
fn receiver_cfg() -> FrontendConfig {
    FrontendConfig {
        queue_size: 1024,
        ..FrontendConfig::default()
    }
}

fn burst(round: u32) -> Vec<Vec<u8>> {
    (0..BURST)
        .map(|i| {
            let seq = round * BURST + i;
            udp_frame(vf_mac(1), vf_mac(0), 1, 2, seq, 60 + (i as usize % 150))
        })
        .collect()
}

/// vf2 sends vf3 `BYSTANDER_FRAMES` frames, each received byte-exact.
fn bystanders_exchange(c: &mut VirtioNetFrontend, e: &mut VirtioNetFrontend, round: u32) {
    for i in 0..BYSTANDER_FRAMES {
        let f = udp_frame(vf_mac(3), vf_mac(2), 3, 4, round * 1000 + i, 200);
        c.send_wait(0, &f, WAIT).unwrap();
        assert_eq!(
            e.recv_timeout(0, WAIT).as_deref(),
            Some(&f[..]),
            "bystander frame {i} of round {round}"
        );
    }
}

/// What the process's fds are, counted by kind (`anon_inode:[eventfd]`, `socket`, ...).
fn fd_kinds() -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    for e in std::fs::read_dir("/proc/self/fd")
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        let target = target.display().to_string();
        let kind = target.split(":[").next().unwrap_or_default().to_string();
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// The running scenario: the emulator, the receiver on vf1, the bystanders on vf2 and vf3.
struct Setup {
    d: Daemon,
    b: VirtioNetFrontend,
    c: VirtioNetFrontend,
    e: VirtioNetFrontend,
    _dir: tempfile::TempDir,
}

fn setup(poll: bool, workers: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(dir.path(), poll, workers);
    Setup {
        b: connect(&d, "vf1", receiver_cfg()),
        c: connect(&d, "vf2", pairs(1, 1)),
        e: connect(&d, "vf3", pairs(1, 1)),
        d,
        _dir: dir,
    }
}

/// The last sender `a` leaves; then the process must hold no more than it held after the
/// first rounds (`base`): no fd, thread or guest memory mapping of the connections, and
/// resident memory within 8 MiB (what the allocator keeps).
fn finish(s: Setup, a: VirtioNetFrontend, base: Option<Held>, what: &str) {
    drop(a);
    wait_for("detached", || {
        s.d.port("vf0").is_some_and(|p| !p.is_attached())
    });
    let base = base.expect("a measure after the warm-up rounds");
    assert_nothing_kept(base, Held::settle_to(base), what);
    s.d.shutdown();
}

fn assert_nothing_kept(base: Held, end: Held, what: &str) {
    eprintln!("{what}: after warm-up {base:?}, at the end {end:?}");
    assert!(
        end.fds <= base.fds && end.threads <= base.threads && end.guest_maps <= base.guest_maps,
        "{what}: the process kept something of the connections: after warm-up {base:?}, at \
         the end {end:?}; its fds now: {:?}",
        fd_kinds()
    );
    assert!(
        end.rss_kib <= base.rss_kib + 8 * 1024,
        "{what}: resident memory grew from {} to {} KiB",
        base.rss_kib,
        end.rss_kib
    );
}

/// The sender hangs up in the middle of a 1000-frame burst and comes back with the same
/// memory and rings, as QEMU reattaches a back-end: each ring resumes at the used index the
/// device left (QEMU's restored `last_avail_idx`). Every frame of every burst reaches the
/// receiver exactly once and in order, every TX buffer comes back, and the sender's ring
/// needs no kick to resume (a guest whose device died while its kicks were off sends none).
#[test]
fn a_hang_up_in_the_middle_of_a_burst_then_a_reattach_loses_and_repeats_no_frame() {
    let _serial = one_at_a_time();
    for (poll, workers) in [(false, 1), (true, 2)] {
        let mut s = setup(poll, workers);
        let mut a = connect(&s.d, "vf0", sender_cfg());
        let mut base = None;
        let mut cut = 0;
        for round in 0..ROUNDS {
            if round == 2 {
                base = Some(Held::now());
            }
            let frames = burst(round);
            let (_, used_before) = a.ring_indices(1);
            let queued = a.send_batch(0, frames.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(queued, BURST as usize);
            // The hang-up lands wherever the device is in the burst.
            let (_, used) = a.ring_indices(1);
            let done = used.wrapping_sub(used_before);
            a = a.reconnect().unwrap();
            cut += usize::from(usize::from(done) < queued);
            bystanders_exchange(&mut s.c, &mut s.e, round);
            let got = recv_n(&mut s.b, BURST as usize, WAIT);
            for (i, (_, f)) in got.iter().enumerate() {
                assert_eq!(
                    f, &frames[i],
                    "round {round} (poll {poll}): frame {i} of the burst (the device had \
                     returned {done} at the hang-up)"
                );
            }
            assert!(
                s.b.recv_timeout(0, QUIET).is_none(),
                "round {round} (poll {poll}): a frame came twice"
            );
            wait_for("every TX buffer back", || a.tx_in_flight(0) == 0);
        }
        eprintln!("poll {poll}: {cut} of {ROUNDS} hang-ups landed in the middle of the burst");
        let sent = u64::from(ROUNDS * BURST);
        assert_eq!(counter(&s.d, "vf0", "tx_packets"), sent);
        assert_eq!(counter(&s.d, "vf1", "rx_packets"), sent);
        assert_eq!(
            counter(&s.d, "vf3", "rx_packets"),
            u64::from(ROUNDS * BYSTANDER_FRAMES)
        );
        finish(s, a, base, &format!("poll {poll}"));
    }
}

/// The sender hangs up in the middle of a burst and never comes back (a fresh frontend takes
/// the port): the port reattaches every time, the bystanders' counters are exact, every frame
/// the device took is counted once (forwarded or dropped), and the process keeps nothing of
/// the 20 connections.
#[test]
fn hang_ups_in_the_middle_of_a_burst_leave_no_stuck_state_and_keep_nothing() {
    let _serial = one_at_a_time();
    for (poll, workers) in [(false, 1), (true, 2)] {
        let mut s = setup(poll, workers);
        let mut base = None;
        let mut received = 0u64;
        for round in 0..ROUNDS {
            if round == 2 {
                base = Some(Held::now());
            }
            let mut a = connect(&s.d, "vf0", sender_cfg());
            let frames = burst(round);
            let queued = a.send_batch(0, frames.iter().map(Vec::as_slice)).unwrap();
            assert_eq!(queued, BURST as usize);
            drop(a);
            bystanders_exchange(&mut s.c, &mut s.e, round);
            wait_for("vf0 detached", || {
                s.d.port("vf0").is_some_and(|p| !p.is_attached())
            });
            // What the device took before the hang-up reached b, in order, from the start (the
            // session's end stopped the rings: nothing more comes).
            let delivered = counter(&s.d, "vf1", "rx_packets") - received;
            let got = recv_n(&mut s.b, delivered as usize, WAIT);
            for (i, (_, f)) in got.iter().enumerate() {
                assert_eq!(f, &frames[i], "round {round}: frame {i}");
            }
            received += delivered;
        }
        assert!(
            s.b.recv_timeout(0, QUIET).is_none(),
            "more frames than counted"
        );
        let taken = counter(&s.d, "vf0", "tx_packets");
        let tx_drops: u64 = TX_DROPS.iter().map(|n| counter(&s.d, "vf0", n)).sum();
        assert_eq!(
            taken,
            counter(&s.d, "vf0", "tx_forwarded") + tx_drops,
            "{}",
            nonzero_counters(&s.d, &["vf0", "vf1"])
        );
        assert_eq!(
            counter(&s.d, "vf0", "tx_forwarded"),
            received + counter(&s.d, "vf1", "drop_no_rx_buffer"),
            "{}",
            nonzero_counters(&s.d, &["vf0", "vf1"])
        );
        assert_eq!(counter(&s.d, "vf1", "rx_packets"), received);
        for (port, name, want) in [
            ("vf2", "tx_packets", ROUNDS * BYSTANDER_FRAMES),
            ("vf3", "rx_packets", ROUNDS * BYSTANDER_FRAMES),
            ("vf2", "drop_no_destination", 0),
            ("vf3", "drop_no_rx_buffer", 0),
        ] {
            assert_eq!(counter(&s.d, port, name), u64::from(want), "{port} {name}");
        }
        eprintln!(
            "poll {poll}: the device took {taken} of {} frames before the hang-ups",
            ROUNDS * BURST
        );
        // A new frontend on the port works.
        let mut a = connect(&s.d, "vf0", pairs(1, 1));
        let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 7, 80);
        a.send(0, &f).unwrap();
        assert_eq!(s.b.recv_timeout(0, WAIT).as_deref(), Some(&f[..]));
        finish(s, a, base, &format!("poll {poll}"));
    }
}

/// A guest whose device died while it was taking a burst has its kicks off (EVENT_IDX: the
/// `avail_event` the device last wrote is behind), so it sends no kick for what it queues
/// next. The device that comes back must look at the TX ring by itself when it starts it.
#[test]
fn a_tx_ring_left_with_kicks_off_resumes_without_a_kick_when_the_frontend_reattaches() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(1, 1));
    // Mid-stream: the rings' indices are not 0.
    for i in 0..5 {
        let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, 100);
        a.send_wait(0, &f, WAIT).unwrap();
        assert_eq!(b.recv_timeout(0, WAIT).as_deref(), Some(&f[..]));
    }
    // Once the device is idle (its last pass re-armed the kick at avail index 5), its last word
    // on TX becomes "kick me at avail index 2", as if it had died in the middle of a pass.
    wait_for("every TX buffer back", || a.tx_in_flight(0) == 0);
    std::thread::sleep(QUIET);
    let (used_ring, _) = a.used_ring_gpa(1);
    let avail_event = used_ring + 4 + 8 * 256;
    a.write_guest(avail_event, &2u16.to_le_bytes());
    let frames: Vec<Vec<u8>> = (10..20)
        .map(|i| udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, 100))
        .collect();
    assert_eq!(
        a.send_batch(0, frames.iter().map(Vec::as_slice)).unwrap(),
        10
    );
    assert!(
        b.recv_timeout(0, QUIET).is_none(),
        "the device took frames the driver did not kick for"
    );
    let mut a = a.reconnect().unwrap();
    for (i, f) in frames.iter().enumerate() {
        assert_eq!(
            b.recv_timeout(0, WAIT).as_deref(),
            Some(&f[..]),
            "frame {i} queued without a kick"
        );
    }
    wait_for("every TX buffer back", || a.tx_in_flight(0) == 0);
    assert_eq!(counter(&d, "vf0", "tx_packets"), 15);
}

/// QEMU (re)starts a vhost-user device in this order: SET_VRING_ENABLE, then per ring
/// SET_VRING_NUM, _BASE, _ADDR, _KICK, and SET_VRING_CALL last. The ring is in use from the
/// kick, so a frame arriving in between (the other guest's pings, while the emulator comes
/// back after a crash) is written into it with no call fd to signal. The interrupt that frame
/// wanted must come when the call fd does: with EVENT_IDX the device interrupts only when the
/// used index crosses the driver's `used_event`, once, so a driver that missed it is never
/// interrupted for that ring again (a guest's RX stopped for good after a restart in
/// `qemu_restart`, on a busy CI machine). At first attach and at a reattach, in both modes.
#[test]
fn frames_written_before_the_call_fd_arrives_interrupt_the_driver_when_it_does() {
    let _serial = one_at_a_time();
    for poll in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = start_daemon_cfg(dir.path(), 2, 0, |c| c.poll = poll);
        let mut a = connect(&d, "vf0", pairs(1, 1));
        let late = FrontendConfig {
            late_call: true,
            ..pairs(1, 1)
        };
        let mut b = connect(&d, "vf1", late);
        for (seq, what) in [(0u32, "first attach"), (1, "reattach")] {
            // The port may still be changing hands after a reattach: send until one arrives.
            let before = counter(&d, "vf1", "rx_packets");
            let t = Instant::now();
            let mut sent = Vec::new();
            while counter(&d, "vf1", "rx_packets") == before {
                assert!(
                    t.elapsed() < WAIT,
                    "poll {poll}, {what}: no frame reached vf1"
                );
                let f = udp_frame(
                    vf_mac(1),
                    vf_mac(0),
                    1,
                    2,
                    seq * 1000 + sent.len() as u32,
                    100,
                );
                a.send_wait(0, &f, WAIT).unwrap();
                sent.push(f);
                std::thread::sleep(Duration::from_millis(20));
            }
            b.send_calls().unwrap();
            assert!(
                b.interrupted(0, WAIT),
                "poll {poll}, {what}: frames were written into vf1's RX ring before its \
                 SET_VRING_CALL, and no interrupt came when the call fd did"
            );
            let got = b.recv(0).expect("the frame the interrupt was for");
            assert!(sent.contains(&got), "poll {poll}, {what}: a frame not sent");
            while b.recv_timeout(0, QUIET).is_some() {}
            if seq == 0 {
                b = b.reconnect().unwrap();
            }
        }
        d.shutdown();
    }
}
