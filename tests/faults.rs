//! Fault injection for users' own tests: every kind shows its effect on real frames (or
//! commands) and its counter; the same seed picks the same frames.

mod common;

use common::*;
use serde_json::{json, Map, Value};
use sriov_emu::daemon::Daemon;
use sriov_emu::frontend::VirtioNetFrontend;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// Runs a control command on the in-process daemon.
fn exec(d: &Daemon, cmd: &str, args: Value) -> Result<Value, String> {
    let map: Map<String, Value> = match args {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    sriov_emu::control::execute(d, cmd, map, &|| {}).map_err(|e| e.desc)
}

fn set(d: &Daemon, args: Value) {
    exec(d, "fault-set", args).unwrap();
}

/// vf0 sends `n` frames (seq 0..n, at most 1024: vf1's ring) to vf1.
fn send(a: &mut VirtioNetFrontend, n: u32, len: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, len);
            a.send_wait(0, &f, WAIT).unwrap();
            f
        })
        .collect()
}

/// vf0 and vf1; vf1's ring holds every frame a test sends before it reads.
fn pair(d: &Daemon) -> (VirtioNetFrontend, VirtioNetFrontend) {
    let big = sriov_emu::frontend::FrontendConfig {
        queue_size: 1024,
        ..pairs(1, 1)
    };
    (connect(d, "vf0", pairs(1, 1)), connect(d, "vf1", big))
}

/// The seqs vf1 received until quiet.
fn received(b: &mut VirtioNetFrontend) -> Vec<u32> {
    b.drain(QUIET).iter().map(|(_, f)| seq_of(f)).collect()
}

#[test]
fn drop_takes_a_seeded_share_and_the_same_seed_drops_the_same_frames() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let (mut a, mut b) = pair(&d);
    let mut run = |seed: u64| -> BTreeSet<u32> {
        set(
            &d,
            json!({"port": "vf0", "fault": "drop", "share": "30%", "seed": seed}),
        );
        let before = counter(&d, "vf0", "fault_drop");
        send(&mut a, 1000, 100);
        let got: BTreeSet<u32> = received(&mut b).into_iter().collect();
        let dropped = counter(&d, "vf0", "fault_drop") - before;
        exec(&d, "fault-clear", json!({"port": "vf0"})).unwrap();
        assert_eq!(
            got.len() as u64 + dropped,
            1000,
            "seed {seed}: {}",
            nonzero_counters(&d, &["vf0", "vf1"])
        );
        assert!(
            (220..380).contains(&dropped),
            "{dropped} of 1000 dropped at 30%"
        );
        (0..1000).filter(|s| !got.contains(s)).collect()
    };
    let first = run(7);
    let again = run(7);
    let other = run(8);
    assert_eq!(first, again, "the same seed dropped other frames");
    assert_ne!(first, other, "another seed dropped the same frames");
    // Cleared: nothing dropped.
    send(&mut a, 100, 100);
    assert_eq!(received(&mut b).len(), 100);
    assert_eq!(
        counter(&d, "vf0", "tx_packets"),
        counter(&d, "vf0", "tx_forwarded") + counter(&d, "vf0", "fault_drop")
    );
    d.shutdown();
}

#[test]
fn delay_sends_the_picked_frames_later_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let (mut a, mut b) = pair(&d);
    set(
        &d,
        json!({"port": "vf0", "fault": "delay", "share": 0.5, "seed": 3, "delay-ms": 1000}),
    );
    // Arrival times, taken by a receiving thread as frames come.
    let rx = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Some(f) = b.recv_timeout(0, Duration::from_secs(3)) {
            got.push((seq_of(&f), Instant::now()));
        }
        got
    });
    let sent_at: Vec<Instant> = (0..200)
        .map(|i| {
            let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, 100);
            a.send_wait(0, &f, WAIT).unwrap();
            Instant::now()
        })
        .collect();
    let got = rx.join().unwrap();
    let latency = |(seq, at): &(u32, Instant)| at.duration_since(sent_at[*seq as usize]);
    let late: Vec<_> = got
        .iter()
        .filter(|g| latency(g) >= Duration::from_millis(1000))
        .collect();
    let delayed = counter(&d, "vf0", "fault_delay");
    assert!(
        (60..140).contains(&delayed),
        "{delayed} of 200 delayed at 50%"
    );
    assert_eq!(
        late.len() as u64,
        delayed,
        "the delayed frames came 1 s late, the others at once"
    );
    let early: Vec<u32> = got
        .iter()
        .filter(|g| latency(g) < Duration::from_millis(1000))
        .map(|g| g.0)
        .collect();
    let late: Vec<(u32, Instant)> = late.into_iter().copied().collect();
    let all: BTreeSet<u32> = early
        .iter()
        .copied()
        .chain(late.iter().map(|x| x.0))
        .collect();
    assert_eq!(all.len(), 200, "lost or doubled frames");
    assert_eq!(counter(&d, "vf0", "fault_injected"), delayed);
    assert_eq!(counter(&d, "vf0", "tx_packets"), 200);
    // Accounting with faults: tx_packets + fault_injected = tx_forwarded + drops.
    assert_eq!(
        counter(&d, "vf0", "tx_packets") + counter(&d, "vf0", "fault_injected"),
        counter(&d, "vf0", "tx_forwarded") + delayed
    );
    d.shutdown();
}

#[test]
fn duplicate_sends_identical_copies_and_corrupt_flips_one_bit_past_the_headers() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let (mut a, mut b) = pair(&d);
    set(
        &d,
        json!({"port": "vf0", "fault": "duplicate", "share": "20%", "seed": 1}),
    );
    let sent = send(&mut a, 500, 300);
    let got = b.drain(QUIET);
    let dups = counter(&d, "vf0", "fault_duplicate");
    assert!((60..140).contains(&dups), "{dups} of 500 duplicated at 20%");
    assert_eq!(got.len() as u64, 500 + dups);
    for (_, f) in &got {
        assert_eq!(f, &sent[seq_of(f) as usize], "a copy differs");
    }
    assert_eq!(counter(&d, "vf0", "fault_injected"), dups);

    exec(
        &d,
        "fault-clear",
        json!({"port": "vf0", "fault": "duplicate"}),
    )
    .unwrap();
    set(&d, json!({"port": "vf0", "fault": "corrupt", "share": 1}));
    let sent = send(&mut a, 100, 300);
    let got = b.drain(QUIET);
    assert_eq!(got.len(), 100);
    // In order and none lost: the i-th received is the i-th sent (its seq, in the payload, may
    // be what the flip hit).
    for ((_, f), s) in got.iter().zip(&sent) {
        let diffs: Vec<(usize, u8)> = f
            .iter()
            .zip(s)
            .enumerate()
            .filter(|(_, (x, y))| x != y)
            .map(|(i, (x, y))| (i, x ^ y))
            .collect();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        let (at, bits) = diffs[0];
        assert!(at >= 18, "byte {at} flipped: inside the Ethernet header");
        assert_eq!(bits.count_ones(), 1);
    }
    assert_eq!(counter(&d, "vf0", "fault_corrupt"), 100);
    d.shutdown();
}

#[test]
fn stalls_hold_a_tx_queue_and_drop_at_an_rx_queue_for_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let (mut a, mut b) = pair(&d);
    // TX: the frames wait in vf0's ring, then all go.
    set(
        &d,
        json!({"port": "vf0", "fault": "stall", "queue": "tx0", "duration-ms": 500}),
    );
    let t = Instant::now();
    for i in 0..10 {
        a.send(0, &udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, 100))
            .unwrap();
    }
    let first = b
        .recv_timeout(0, Duration::from_secs(3))
        .expect("held for good");
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "a frame left a stalled queue after {:?}",
        t.elapsed()
    );
    assert_eq!(seq_of(&first), 0);
    assert_eq!(received(&mut b).len(), 9);
    assert_eq!(counter(&d, "vf0", "fault_stall_tx"), 1);
    assert_eq!(counter(&d, "vf0", "drop_no_rx_buffer"), 0);
    // RX: frames for a stalled queue are dropped and counted; after it, delivered again.
    let t = Instant::now();
    set(
        &d,
        json!({"port": "vf1", "fault": "stall", "queue": "rx0", "duration-ms": 1500}),
    );
    send(&mut a, 20, 100);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "sending took too long"
    );
    assert!(
        b.recv_timeout(0, QUIET).is_none(),
        "written into a stalled queue"
    );
    assert_eq!(counter(&d, "vf1", "fault_stall_rx"), 20);
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(t.elapsed()));
    send(&mut a, 5, 100);
    assert_eq!(received(&mut b).len(), 5);
    assert_eq!(counter(&d, "vf1", "fault_stall_rx"), 20);
    // A queue the port does not have is refused.
    let e = exec(
        &d,
        "fault-set",
        json!({"port": "vf0", "fault": "stall", "queue": "rx3", "duration-ms": 5}),
    )
    .unwrap_err();
    assert_eq!(e, "port vf0 has no queue pair 3");
    d.shutdown();
}

#[test]
fn a_link_flap_takes_the_link_down_and_up_with_events_each_time() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let events = d.events().subscribe();
    let (a, mut b) = pair(&d);
    set(
        &d,
        json!({"port": "vf0", "fault": "link-flap", "down-ms": 300, "up-ms": 300, "count": 2}),
    );
    let mut seen = Vec::new();
    let t = Instant::now();
    while seen.len() < 4 && t.elapsed() < WAIT {
        if let Ok(ev) = events.recv_timeout(Duration::from_millis(100)) {
            if ev.name == "VF_LINK_CHANGE" && ev.data["port"] == "vf0" {
                assert_eq!(ev.data["reason"], "fault");
                seen.push(ev.data["state"].as_str().unwrap_or_default().to_string());
            }
        }
    }
    assert_eq!(seen, ["down", "up", "down", "up"]);
    assert_eq!(counter(&d, "vf0", "fault_link_flap"), 2);
    // The link went down as a disabled link does: the frontend was closed.
    let t = Instant::now();
    while d.port("vf0").is_some_and(|p| p.is_attached()) {
        assert!(t.elapsed() < WAIT, "still attached");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(a);
    // After the flaps, a frontend attaches and sends.
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 1, 100);
    a.send(0, &f).unwrap();
    assert_eq!(b.recv_timeout(0, WAIT).as_deref(), Some(&f[..]));
    assert!(exec(&d, "query-faults", json!({})).unwrap()[0].is_null());
    d.shutdown();
}

#[test]
fn busy_refuses_a_vfs_management_commands_for_its_window() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    set(
        &d,
        json!({"port": "vf0", "fault": "busy", "duration-ms": 500}),
    );
    let e = exec(&d, "vf-set", json!({"vf": 0, "vlan": 5})).unwrap_err();
    assert!(
        e.contains("VF 0 is busy") && e.contains("try again in"),
        "{e}"
    );
    let e = exec(&d, "vf-flow-list", json!({"vf": 0}));
    assert!(e.is_ok(), "a query is not management: {e:?}");
    exec(&d, "vf-set", json!({"vf": 1, "vlan": 5})).unwrap();
    assert_eq!(counter(&d, "vf0", "fault_busy"), 1);
    let faults = exec(&d, "query-faults", json!({})).unwrap();
    assert_eq!(faults[0]["port"], "vf0");
    assert_eq!(faults[0]["faults"][0]["fault"], "busy");
    std::thread::sleep(Duration::from_millis(600));
    exec(&d, "vf-set", json!({"vf": 0, "vlan": 5})).unwrap();
    // Only VFs have management commands.
    let e = exec(
        &d,
        "fault-set",
        json!({"port": "vf9", "fault": "busy", "duration-ms": 5}),
    )
    .unwrap_err();
    assert_eq!(e, "port \"vf9\" does not exist");
    d.shutdown();
}

#[test]
fn faults_from_the_config_file_and_ctl() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("faults.toml");
    std::fs::write(
        &config,
        "numvfs = 2\npv_ports = 0\n\n[[fault]]\nport = \"vf1\"\nfault = \"drop\"\nshare = 1\n\n\
         [[fault]]\nport = \"vf0\"\nfault = \"delay\"\nshare = \"50%\"\ndelay_ms = 30\nseed = 9\n",
    )
    .unwrap();
    let emu = Emu::start(&["--config", config.to_str().unwrap()]);
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
            .args(["ctl", "--control"])
            .arg(emu.path().join("control.sock"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = ctl(&["faults"]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["port"], "vf0");
    assert_eq!(v[0]["faults"][0]["fault"], "delay");
    assert_eq!(v[0]["faults"][0]["delay-ms"], 30);
    assert_eq!(v[1]["faults"][0]["fault"], "drop");
    // vf1 drops everything it sends.
    let fe = |n: u32| {
        VirtioNetFrontend::connect(emu.path().join(format!("vf{n}.sock")), pairs(1, 1)).unwrap()
    };
    let (mut a, mut b) = (fe(0), fe(1));
    b.send(0, &udp_frame(vf_mac(0), vf_mac(1), 1, 2, 0, 100))
        .unwrap();
    assert!(a.recv_timeout(0, QUIET).is_none());
    assert_eq!(emu.counter("vf1", "fault_drop"), 1);
    let (ok, _, err) = ctl(&["fault", "vf1", "clear", "drop"]);
    assert!(ok, "{err}");
    let (ok, _, err) = ctl(&["fault", "vf1", "corrupt", "share", "100%", "seed", "4"]);
    assert!(ok, "{err}");
    let f = udp_frame(vf_mac(0), vf_mac(1), 1, 2, 0, 100);
    b.send(0, &f).unwrap();
    let got = a.recv_timeout(0, WAIT).expect("corrupted frame delivered");
    assert_ne!(got, f);
    assert_eq!(emu.counter("vf1", "fault_corrupt"), 1);
    let (ok, _, err) = ctl(&["fault", "vf1", "melt", "share", "1"]);
    assert!(!ok);
    assert!(err.contains("unknown fault \"melt\""), "{err}");
    // A bad [[fault]] stops `run` before anything starts.
    std::fs::write(
        &config,
        "numvfs = 1\n[[fault]]\nport = \"vf0\"\nfault = \"delay\"\nshare = 1\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
        .args(["run", "--config", config.to_str().unwrap(), "--socket-dir"])
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("fault delay needs 'delay-ms'"), "{err}");
}
