//! The plug-in model with a real QEMU 10 guest: it networks over its PV NIC from boot, in an
//! active-backup bond (fixtures/guest/plugin-watch.sh); the host hot-plugs vf0 with the guest's
//! MAC and the guest's traffic moves to the VF (the watcher enslaves it as primary and
//! announces the move); the host unplugs it and the traffic falls back to the PV path. Pings
//! at 100 ms run both ways the whole time (the guest pings the peer, the peer pings the guest:
//! inbound-only traffic is where a stale FDB entry shows); at most one is lost per transition.
//!
//! The second test takes the guest from host A to host B (two emulators joined by VXLAN) the
//! plug-in way: unplug A's VF, live-migrate to a QEMU on B's PV port, plug B's VF; the peer
//! stays on host A and reaches the guest through the uplink.
//!
//! A missing QEMU 10 fails the tests (SRIOV_SKIP_QEMU=1 skips them, printing `SKIPPED:`).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/qemu.rs"]
mod qemu;

use emulator::Emulator;
use qemu::{Guest, GuestConfig};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(30);
const CYCLES: u32 = 5;
/// How long each state is held once the traffic moved (so each path carries a run of pings).
const HOLD: Duration = Duration::from_secs(1);
/// How long both pings run (at 100 ms): long enough for the cycles on a busy machine.
const PING_SECS: u32 = 40;

/// The scenarios run one at a time: each has two or three TCG guests.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn tx_packets(emu: &Emulator, port: &str) -> u64 {
    emu.stats(port)["counters"]["tx_packets"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until `port` sent at least `n` more frames than `from` (the guest's traffic is on
/// it); returns how long that took.
fn wait_traffic(emu: &Emulator, port: &str, from: u64, n: u64) -> Duration {
    let t = Instant::now();
    while tx_packets(emu, port) < from + n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the guest's traffic is not on {port} within 5 s\n{}",
            emu.report()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t.elapsed()
}

/// Waits until the guest printed `marker` `n` times; returns the last such line.
fn wait_count(g: &Guest, marker: &str, n: u32, within: Duration) -> Result<String, String> {
    let t = Instant::now();
    loop {
        let log = g.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(marker)).collect();
        if lines.len() >= n as usize {
            return Ok(lines[n as usize - 1].trim().to_string());
        }
        if t.elapsed() > within {
            return Err(g.failure(&format!("{marker} not seen {n} times within {within:?}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// (transmitted, received) of the last ping summary in `log`.
fn ping_summary(log: &str) -> (u32, u32) {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains(" packets transmitted, "))
        .unwrap_or_else(|| panic!("no ping summary:\n{log}"));
    let nums: Vec<u32> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    (nums[0], nums[1])
}

#[test]
fn traffic_moves_to_a_hot_plugged_vf_and_back_to_pv_on_unplug_with_at_most_one_loss_per_move() {
    let test =
        "traffic_moves_to_a_hot_plugged_vf_and_back_to_pv_on_unplug_with_at_most_one_loss_per_move";
    if !qemu::require_qemu(test) {
        return;
    }
    let _serial = one_at_a_time();
    qemu::guest_image().expect("guest image");
    let emu = Emulator::start(&["--vfs", "2", "--pv-ports", "1"]);
    let mac = emu.vf_mac(0);
    // The PV NIC carries the guest's MAC, which is also vf0's (as the host assigns it).
    let pv = emu.pv_nic_args(0, &mac);
    let peer_cmd = format!(
        r#"
until ping -c 1 -W 1 198.18.70.1 >/dev/null 2>&1; do sleep 0.2; done
echo PEER-PINGING
ping -c {n} -i 0.1 -W 1 198.18.70.1 | tail -2
"#,
        n = PING_SECS * 10
    );
    let peer = Guest::spawn(
        GuestConfig::new("plugin-peer")
            .qemu_args(emu.nic_args(1, &[]))
            .ip("198.18.70.2/24")
            .script("serve")
            .cmd(&peer_cmd)
            .log(emu.path().join("peer.log")),
    )
    .expect("spawn peer");
    let guest_cmd = format!(
        r#"
sh /tests/plugin-watch.sh &
until ping -c 1 -W 1 198.18.70.2 >/dev/null 2>&1; do sleep 0.2; done
echo GUEST-PINGING
ping -c {n} -i 0.1 -W 1 198.18.70.2 | tail -2
"#,
        n = PING_SECS * 10
    );
    let qmp = emu.path().join("guest.qmp");
    let mut nics = pv;
    nics.extend(qemu::pcie_root_ports(1));
    let guest = Guest::spawn(
        GuestConfig::new("plugin-guest")
            .qemu_args(nics)
            .sriov("bondip", "198.18.70.1/24")
            .script("serve")
            .cmd(&guest_cmd)
            .qmp_socket(&qmp)
            .log(emu.path().join("guest.log")),
    )
    .expect("spawn guest");
    let fail = |e: String| -> ! { panic!("{e}\n{}", emu.report()) };
    guest
        .wait_for_line("GUEST-PINGING", BOOT)
        .unwrap_or_else(|e| fail(e));
    peer.wait_for_line("PEER-PINGING", BOOT)
        .unwrap_or_else(|e| fail(e));
    let started = Instant::now();
    // On PV: the guest's pings leave through pv0.
    wait_traffic(&emu, "pv0", tx_packets(&emu, "pv0"), 5);
    for c in 1..=CYCLES {
        let pv_before = tx_packets(&emu, "pv0");
        emu.hotplug(&guest, 0, "plug");
        let enslaved = wait_count(&guest, "PLUGIN-ENSLAVED", c, STEP).unwrap_or_else(|e| fail(e));
        let on_vf = wait_traffic(&emu, "vf0", tx_packets(&emu, "vf0"), 5);
        // On the VF, the PV path is quiet (the bond's backup sends nothing).
        let pv_at = tx_packets(&emu, "pv0");
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            tx_packets(&emu, "pv0") - pv_at <= 1,
            "cycle {c}: traffic still on pv0 with vf0 plugged\n{}",
            emu.report()
        );
        println!(
            "cycle {c}: {enslaved}; traffic on vf0 {on_vf:.1?} later (pv0 sent {} meanwhile)",
            pv_at - pv_before
        );
        let vf_start = tx_packets(&emu, "vf0");
        std::thread::sleep(HOLD);
        let vf_hold = tx_packets(&emu, "vf0") - vf_start;
        assert!(
            vf_hold >= 10,
            "cycle {c}: vf0 sent {vf_hold} frames in {HOLD:?} (pings both ways at 100 ms)"
        );
        emu.hotplug(&guest, 0, "unplug");
        let on_pv = wait_traffic(&emu, "pv0", tx_packets(&emu, "pv0"), 5);
        println!(
            "cycle {c}: vf0 sent {vf_hold} frames in {HOLD:?}; unplugged; traffic on pv0 \
             {on_pv:.1?} later"
        );
        wait_count(&guest, "PLUGIN-RELEASED", c, STEP).unwrap_or_else(|e| fail(e));
        std::thread::sleep(HOLD);
    }
    println!("{CYCLES} cycles in {:.1?}", started.elapsed());
    let out = Duration::from_secs(u64::from(PING_SECS) + 60);
    for g in [&guest, &peer] {
        g.wait_for_line("SRIOV-SERVE-CMD-DONE", out)
            .unwrap_or_else(|e| fail(e));
    }
    let transitions = 2 * CYCLES;
    let (g_tx, g_rx) = ping_summary(&guest.log());
    let (p_tx, p_rx) = ping_summary(&peer.log());
    println!(
        "guest -> peer: {g_rx} of {g_tx}; peer -> guest: {p_rx} of {p_tx}; {transitions} transitions"
    );
    assert!(
        g_tx - g_rx <= transitions && p_tx - p_rx <= transitions,
        "more than one ping lost per transition: guest -> peer {g_rx}/{g_tx}, peer -> guest \
         {p_rx}/{p_tx}\n{}\n{}",
        guest.log(),
        emu.report()
    );
    drop((guest, peer));
}

/// A free UDP port on 127.0.0.1 (bound and released).
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[test]
fn a_plug_in_guest_moves_to_another_host_unplug_migrate_replug_and_stays_reachable() {
    let test = "a_plug_in_guest_moves_to_another_host_unplug_migrate_replug_and_stays_reachable";
    if !qemu::require_qemu(test) {
        return;
    }
    let _serial = one_at_a_time();
    qemu::guest_image().expect("guest image");
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let host = |l: u16, r: u16| {
        Emulator::start(&[
            "--vfs",
            "2",
            "--pv-ports",
            "1",
            "--mtu",
            "1450",
            "--uplink",
            &format!("vxlan:local=127.0.0.1:{l},remote=127.0.0.1:{r},vni=80"),
        ])
    };
    let (a, b) = (host(pa, pb), host(pb, pa));
    let mac = a.vf_mac(0);
    // Host B's vf0 gets the guest's MAC, as B's management would before the plug.
    b.qmp("vf-set", serde_json::json!({"vf": 0, "mac": mac}));
    let secs: u32 = 40;
    let peer = Guest::spawn(
        GuestConfig::new("mig-peer")
            .qemu_args(a.nic_args(1, &["--mtu", "1450"]))
            .ip("198.18.80.2/24")
            .script("serve")
            .cmd(&format!(
                "until ping -c 1 -W 1 198.18.80.1 >/dev/null 2>&1; do sleep 0.2; done\n\
                 echo PEER-PINGING\nping -c {} -i 0.1 -W 1 198.18.80.1 | tail -2\n",
                secs * 10
            ))
            .log(a.path().join("peer.log")),
    )
    .expect("spawn peer");
    let guest_cmd = format!(
        "sh /tests/plugin-watch.sh &\n\
         until ping -c 1 -W 1 198.18.80.2 >/dev/null 2>&1; do sleep 0.2; done\n\
         echo GUEST-PINGING\nping -c {} -i 0.1 -W 1 198.18.80.2 | tail -2\n",
        secs * 10
    );
    let config = |emu: &Emulator, qmp: &std::path::Path, log: &str| {
        let mut nics = emu.pv_nic_args(0, &mac);
        nics.extend(qemu::pcie_root_ports(1));
        GuestConfig::new("mig-guest")
            .qemu_args(nics)
            .sriov("bondip", "198.18.80.1/24")
            .script("serve")
            .cmd(&guest_cmd)
            .qmp_socket(qmp)
            .log(emu.path().join(log))
    };
    let src = Guest::spawn(config(&a, &a.path().join("src.qmp"), "src.log")).expect("source");
    let fail = |e: String| -> ! { panic!("{e}\nA:\n{}\nB:\n{}", a.report(), b.report()) };
    src.wait_for_line("GUEST-PINGING", BOOT)
        .unwrap_or_else(|e| fail(e));
    peer.wait_for_line("PEER-PINGING", BOOT)
        .unwrap_or_else(|e| fail(e));
    let t0 = Instant::now();
    // Accelerated on host A first.
    a.hotplug(&src, 0, "plug");
    let on_vf_a = wait_traffic(&a, "vf0", tx_packets(&a, "vf0"), 5);
    std::thread::sleep(HOLD);
    // Unplug A's VF (back on A's PV port), then migrate to a QEMU on B's PV port.
    a.hotplug(&src, 0, "unplug");
    wait_traffic(&a, "pv0", tx_packets(&a, "pv0"), 5);
    let mig = b.path().join("migration.sock");
    let mut dst_cfg = config(&b, &b.path().join("dst.qmp"), "dst.log");
    dst_cfg = dst_cfg.qemu_args(["-incoming".to_string(), format!("unix:{}", mig.display())]);
    let dst = Guest::spawn(dst_cfg).expect("destination");
    let t_mig = Instant::now();
    let status = src.migrate_unix(&mig, STEP).unwrap_or_else(|e| fail(e));
    let migrate_time = t_mig.elapsed();
    let downtime = status
        .split("\"downtime\": ")
        .nth(1)
        .and_then(|r| r.split([',', '}']).next())
        .unwrap_or("?")
        .trim()
        .to_string();
    // The guest runs on B's PV port; the source QEMU is stopped.
    let on_pv_b = wait_traffic(&b, "pv0", tx_packets(&b, "pv0"), 5);
    src.kill();
    // Accelerated again, on host B.
    b.hotplug(&dst, 0, "plug");
    let on_vf_b = wait_traffic(&b, "vf0", tx_packets(&b, "vf0"), 5);
    let total = t0.elapsed();
    // The peer on A reaches the guest on B's VF through the uplink.
    let up_before = a.stats("uplink")["counters"]["tx_packets"]
        .as_u64()
        .unwrap_or(0);
    std::thread::sleep(HOLD);
    let up_after = a.stats("uplink")["counters"]["tx_packets"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        up_after - up_before >= 5,
        "the peer's pings do not cross the uplink to host B"
    );
    println!(
        "timeline: on A's vf0 {on_vf_a:.1?} after the plug; migration {migrate_time:.1?} \
         (QEMU downtime {downtime} ms); on B's pv0 {on_pv_b:.1?} after it; on B's vf0 \
         {on_vf_b:.1?} after the plug; {total:.1?} from the first plug"
    );
    for g in [&dst, &peer] {
        g.wait_for_line(
            "SRIOV-SERVE-CMD-DONE",
            Duration::from_secs(u64::from(secs) + 60),
        )
        .unwrap_or_else(|e| fail(e));
    }
    let (g_tx, g_rx) = ping_summary(&dst.log());
    let (p_tx, p_rx) = ping_summary(&peer.log());
    println!("guest -> peer: {g_rx} of {g_tx}; peer -> guest: {p_rx} of {p_tx}");
    // Four moves (plug, unplug, migration, plug): at most one lost each, plus what QEMU's
    // downtime costs at 100 ms.
    let budget = 4 + downtime.parse::<u32>().unwrap_or(1000) / 100 + 1;
    assert!(
        g_tx - g_rx <= budget && p_tx - p_rx <= budget,
        "lost more than {budget}: guest -> peer {g_rx}/{g_tx}, peer -> guest {p_rx}/{p_tx}\n{}",
        dst.log()
    );
    drop((dst, peer));
}
