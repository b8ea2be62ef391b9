//! Real QEMU 10 guests (TCG, busybox initramfs) on the emulator's VFs: the acceptance tests a
//! user relies on: guests on two VFs ping each other over IPv4 and IPv6 without loss, and a
//! guest with two vCPUs receives on both of its RX queues.
//!
//! A missing QEMU 10 fails these tests (install it with ./scripts/setup); with SRIOV_SKIP_QEMU=1
//! they skip instead, each printing a `SKIPPED:` line (tests/common/skip.rs).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/qemu.rs"]
mod qemu;

use emulator::Emulator;

use qemu::{Guest, GuestConfig};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT_AND_RUN: Duration = Duration::from_secs(180);

/// The start of every QEMU scenario: QEMU 10 present (else the test fails, or with
/// SRIOV_SKIP_QEMU=1 is skipped), one scenario at a time, the guest image built, an emulator
/// running with `emu_args`.
fn scenario(
    test: &str,
    emu_args: &[&str],
) -> Option<(std::sync::MutexGuard<'static, ()>, Emulator)> {
    if !qemu::require_qemu(test) {
        return None;
    }
    let serial = one_at_a_time();
    qemu::guest_image().expect("guest image");
    Some((serial, Emulator::start(emu_args)))
}

/// QEMU scenarios run one at a time: several TCG guests with 2-4 vCPUs each on a 2-core
/// machine can starve a guest's boot for minutes.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A guest on VF `vf` that just answers (fixtures/guest/serve.sh).
fn spawn_peer(emu: &Emulator, name: &str, vf: u32, cidr: &str) -> Guest {
    Guest::spawn(
        GuestConfig::new(name)
            .qemu_args(emu.nic_args(vf, &[]))
            .ip(cidr)
            .script("serve")
            .log(emu.path().join(format!("{name}.log"))),
    )
    .expect("spawn peer")
}

fn finish(g: &Guest, emu: &Emulator) -> String {
    let rc = g
        .wait_done(BOOT_AND_RUN)
        .unwrap_or_else(|e| panic!("{e}\nemulator log:\n{}", emu.log()));
    let log = g.log();
    assert_eq!(
        rc,
        0,
        "guest {} failed:\n{log}\nemulator log:\n{}",
        g.name,
        emu.log()
    );
    log
}

#[test]
fn two_guests_on_two_vfs_ping_each_other_v4_and_v6_without_loss() {
    let Some((_serial, emu)) = scenario(
        "two_guests_on_two_vfs_ping_each_other_v4_and_v6_without_loss",
        &["--vfs", "2", "--pv-ports", "0"],
    ) else {
        return;
    };
    let logs = emu.path().to_path_buf();
    // Each guest pings under `serve`, so it stays up answering after its own pings: a guest
    // that powered off when done would cost the other, slower-booting one its last pings.
    let spawn = |vf: u32, me: &str, peer: &str| {
        Guest::spawn(
            GuestConfig::new(&format!("ping{vf}"))
                .qemu_args(emu.nic_args(vf, &[]))
                .ip(&format!("198.18.0.{me}/24"))
                .ip6(&format!("2001:db8::{me}/64"))
                .peer(&format!("198.18.0.{peer}"))
                .peer6(&format!("2001:db8::{peer}"))
                .script("serve")
                .cmd("sh /tests/ping-peer.sh")
                .log(logs.join(format!("guest{vf}.log"))),
        )
        .expect("spawn QEMU")
    };
    let g0 = spawn(0, "1", "2");
    let g1 = spawn(1, "2", "1");
    for g in [&g0, &g1] {
        let line = g
            .wait_for_line("SRIOV-SERVE-CMD-DONE rc=", BOOT_AND_RUN)
            .unwrap_or_else(|e| panic!("{e}\nemulator log:\n{}", emu.log()));
        let log = g.log();
        assert!(
            line.contains("rc=0"),
            "guest {} failed:\n{log}\nemulator log:\n{}",
            g.name,
            emu.log()
        );
        assert!(
            log.contains("20 packets transmitted, 20 packets received"),
            "{log}"
        );
        assert_eq!(
            log.matches("OK (20/20)").count(),
            2,
            "IPv4 and IPv6 both without loss:\n{log}"
        );
    }
}

/// A guest with `n` vCPUs on a VF with `n` queue pairs (Linux enables all `n`) receives a
/// 32-flow stream from a peer guest on every one of its RX queues (its own `ethtool -S`).
fn guest_receives_on_every_rx_queue(test: &str, n: u32) {
    let channels = n.to_string();
    let Some((_serial, emu)) = scenario(
        test,
        &[
            "--vfs",
            "2",
            "--pv-ports",
            "0",
            "--channels-per-vf",
            &channels,
        ],
    ) else {
        return;
    };
    let logs = emu.path().to_path_buf();
    // The receiver waits until every RX queue has counted frames, then prints its counters.
    let receiver_cmd = format!(
        r#"
ethtool -l eth0 | sed -n '/Current/,$p'
end=$(( $(date +%s) + 150 ))
ok=0
while [ $(date +%s) -lt $end ]; do
    ok=1
    for q in $(seq 0 {last}); do
        c=$(ethtool -S eth0 | sed -n "s/^ *rx_queue_${{q}}_packets: //p")
        [ "${{c:-0}}" -gt 5 ] || ok=0
    done
    [ $ok = 1 ] && break
    sleep 1
done
ethtool -S eth0 | grep -E 'rx_queue_[0-9]+_packets'
[ $ok = 1 ]
"#,
        last = n - 1
    );
    // The sender pings the receiver from 32 source addresses: 32 flows for RSS.
    let sender_cmd = r#"
for i in $(seq 10 41); do ip addr add 198.18.1.$i/24 dev eth0; done
end=$(( $(date +%s) + 150 ))
until ping -c 1 -W 1 198.18.1.2 >/dev/null 2>&1; do
    [ $(date +%s) -lt $end ] || exit 1
    sleep 0.5
done
for round in 1 2 3 4 5 6 7 8; do
    for i in $(seq 10 41); do ping -c 1 -W 1 -I 198.18.1.$i 198.18.1.2 >/dev/null 2>&1 & done
    wait
done
echo sender-done
"#;
    let receiver = Guest::spawn(
        GuestConfig::new(&format!("mq{n}-rx"))
            .vcpus(n)
            .qemu_args(emu.nic_args(0, &["--channels-per-vf", &channels]))
            .ip("198.18.1.2/24")
            .cmd(&receiver_cmd)
            .log(logs.join("rx.log")),
    )
    .expect("spawn receiver");
    let sender = Guest::spawn(
        GuestConfig::new(&format!("mq{n}-tx"))
            .qemu_args(emu.nic_args(1, &["--channels-per-vf", &channels]))
            .ip("198.18.1.1/24")
            .cmd(sender_cmd)
            .log(logs.join("tx.log")),
    )
    .expect("spawn sender");
    let log = finish(&receiver, &emu);
    for q in 0..n {
        assert!(log.contains(&format!("rx_queue_{q}_packets")), "{log}");
    }
    drop(sender);
}

#[test]
fn guest_with_two_vcpus_receives_on_both_rx_queues() {
    guest_receives_on_every_rx_queue("guest_with_two_vcpus_receives_on_both_rx_queues", 2);
}

#[test]
fn guest_with_four_vcpus_receives_on_all_four_rx_queues() {
    guest_receives_on_every_rx_queue("guest_with_four_vcpus_receives_on_all_four_rx_queues", 4);
}

#[test]
fn a_vf_serves_the_next_qemu_after_the_previous_one_exits() {
    let Some((_serial, emu)) = scenario(
        "a_vf_serves_the_next_qemu_after_the_previous_one_exits",
        &["--vfs", "2", "--pv-ports", "0"],
    ) else {
        return;
    };
    let logs = emu.path().to_path_buf();
    let server = spawn_peer(&emu, "server", 1, "198.18.2.2/24");
    // Two guests one after the other on vf0: the second one's QEMU connects to the same socket
    // after the first powered off and hung up, without restarting the emulator.
    for round in 0..2 {
        let client = Guest::spawn(
            GuestConfig::new(&format!("client{round}"))
                .qemu_args(emu.nic_args(0, &[]))
                .ip("198.18.2.1/24")
                .peer("198.18.2.2")
                .sriov("count", "5")
                .script("ping-peer")
                .log(logs.join(format!("client{round}.log"))),
        )
        .expect("spawn client");
        let log = finish(&client, &emu);
        assert!(log.contains("OK (5/5)"), "round {round}:\n{log}");
        client
            .wait_exit(Duration::from_secs(30))
            .expect("QEMU exits after poweroff");
    }
    drop(server);
    let connects = emu.log().matches("frontend connected port=vf0").count();
    assert!(
        connects >= 2,
        "vf0 served {connects} frontends:\n{}",
        emu.log()
    );
    // QEMU's own sequence (negotiation, guest runs, poweroff, hang-up) breaks no rule.
    assert_eq!(
        emu.stats("vf0")["counters"]["protocol_errors"],
        0,
        "{}",
        emu.log()
    );
}

#[test]
fn link_disable_shows_no_carrier_in_a_real_guest_and_enable_restores_traffic() {
    let Some((_serial, emu)) = scenario(
        "link_disable_shows_no_carrier_in_a_real_guest_and_enable_restores_traffic",
        &["--vfs", "2", "--pv-ports", "0"],
    ) else {
        return;
    };
    let logs = emu.path().to_path_buf();
    let watcher = r#"
until ping -c 1 -W 1 198.18.3.2 >/dev/null 2>&1; do sleep 0.5; done
echo PING-OK-1
state() { if ip link show eth0 | grep -q NO-CARRIER; then echo down; else echo up; fi; }
prev=up; saw_down=0
end=$(( $(date +%s) + 120 ))
while [ $(date +%s) -lt $end ]; do
    s=$(state)
    if [ "$s" != "$prev" ]; then echo "CARRIER-$s"; ip link show eth0 | head -1; prev=$s; fi
    [ "$s" = down ] && saw_down=1
    [ $saw_down = 1 ] && [ "$s" = up ] && break
    sleep 0.2
done
[ $saw_down = 1 ] || { echo "never saw NO-CARRIER"; exit 3; }
n=0
until ping -c 1 -W 1 198.18.3.2 >/dev/null 2>&1; do n=$((n+1)); [ $n -lt 60 ] || exit 4; done
echo PING-OK-2
ping -c 5 -i 0.2 -W 2 198.18.3.2
"#;
    let server = spawn_peer(&emu, "link-peer", 1, "198.18.3.2/24");
    let guest = Guest::spawn(
        GuestConfig::new("link-guest")
            .qemu_args(emu.nic_args(0, &[]))
            .ip("198.18.3.1/24")
            .cmd(watcher)
            .log(logs.join("guest.log")),
    )
    .expect("spawn guest");
    guest
        .wait_for_line("PING-OK-1", BOOT_AND_RUN)
        .unwrap_or_else(|e| panic!("{e}\n{}", emu.log()));
    let mut ctl = emu.control();
    ctl.execute(
        "vf-set",
        serde_json::json!({"vf": 0, "link-state": "disable"}),
    )
    .unwrap();
    guest
        .wait_for_line("NO-CARRIER", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", emu.log()));
    guest
        .wait_for_line("CARRIER-down", Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}\n{}", emu.log()));
    std::thread::sleep(Duration::from_secs(2));
    ctl.execute(
        "vf-set",
        serde_json::json!({"vf": 0, "link-state": "enable"}),
    )
    .unwrap();
    let log = finish(&guest, &emu);
    assert!(
        log.contains("CARRIER-up") && log.contains("PING-OK-2"),
        "{log}"
    );
    assert!(
        log.contains("5 packets transmitted, 5 packets received"),
        "{log}"
    );
    drop(server);
}

/// The plug-in model: a guest bonds its VF (primary) and PV NIC (backup, same MAC). Disabling
/// the VF's link fails traffic over to the PV path (the MAC moves to pv0 in the FDB), enabling
/// it brings the VF back as the active slave, and pings keep flowing throughout.
#[test]
fn plug_in_guest_fails_over_from_vf_to_pv_and_back() {
    let Some((_serial, emu)) = scenario(
        "plug_in_guest_fails_over_from_vf_to_pv_and_back",
        &["--vfs", "2", "--pv-ports", "1"],
    ) else {
        return;
    };
    let logs = emu.path().to_path_buf();
    let pv_args = {
        let out = Command::new(qemu::sriov_emu_bin())
            .args(["qemu-args", "pv", "0", "--socket-dir"])
            .arg(emu.path())
            .output()
            .unwrap();
        qemu::split_args(&String::from_utf8_lossy(&out.stdout))
    };
    let guest_cmd = r#"
/tests/plugin-bond.sh || exit 1
until ping -c 1 -W 1 198.18.4.2 >/dev/null 2>&1; do sleep 0.3; done
echo PING-OK-1
ping -c 75 -i 0.2 -W 1 198.18.4.2 | tail -3
grep "Currently Active Slave" /proc/net/bonding/bond0
"#;
    let peer = spawn_peer(&emu, "bond-peer", 1, "198.18.4.2/24");
    let mut nics = emu.nic_args(0, &[]);
    nics.extend(pv_args);
    let guest = Guest::spawn(
        GuestConfig::new("bond-guest")
            .qemu_args(nics)
            .sriov("bondip", "198.18.4.1/24")
            .cmd(guest_cmd)
            .log(logs.join("guest.log")),
    )
    .expect("spawn guest");
    guest
        .wait_for_line("PING-OK-1", BOOT_AND_RUN)
        .unwrap_or_else(|e| panic!("{e}\n{}", emu.log()));
    let mut ctl = emu.control();
    std::thread::sleep(Duration::from_secs(3));
    ctl.execute(
        "vf-set",
        serde_json::json!({"vf": 0, "link-state": "disable"}),
    )
    .unwrap();
    let wait_move = |ctl: &mut sriov_emu::control::client::Client, to: &str| {
        const FAILOVER: Duration = Duration::from_secs(30);
        let t = Instant::now();
        loop {
            let ev = ctl
                .next_event_timeout(FAILOVER.saturating_sub(t.elapsed()))
                .unwrap_or_else(|e| panic!("no FDB_MOVE to {to}: {e}\n{}", emu.log()));
            if ev["event"] == "FDB_MOVE" && ev["data"]["to"] == to {
                assert_eq!(ev["data"]["mac"], "02:00:00:00:00:01");
                return;
            }
        }
    };
    wait_move(&mut ctl, "pv0");
    std::thread::sleep(Duration::from_secs(3));
    ctl.execute("vf-set", serde_json::json!({"vf": 0, "link-state": "auto"}))
        .unwrap();
    let log = finish(&guest, &emu);
    let received: u32 = log
        .lines()
        .find_map(|l| {
            l.strip_prefix("75 packets transmitted, ")?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no ping summary:\n{log}"));
    assert!(
        received >= 70,
        "only {received} of 75 pings answered across failover and failback:\n{log}"
    );
    assert!(
        log.contains("Currently Active Slave: eth0"),
        "the VF is the active slave again:\n{log}"
    );
    let fdb = ctl.execute("query-fdb", serde_json::json!({})).unwrap();
    assert!(
        fdb.as_array()
            .unwrap()
            .iter()
            .any(|e| e["mac"] == "02:00:00:00:00:01" && e["port"] == "vf0" && e["static"] == true),
        "{fdb}"
    );
    drop(peer);
}
