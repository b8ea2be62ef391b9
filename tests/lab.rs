//! The plug-in model end to end with real QEMU 10 guests, in the lab of `common/lab.rs` (two
//! emulators joined by VXLAN, a peer guest on host A, the guest under test in an active-backup
//! bond with its PV NIC; pings at 100 ms both ways). Each test is a scenario of the plug-in
//! issue; each prints its timeline and writes it to `target/tmp/lab/SCENARIO.txt`
//! (`scripts/lab` runs them and collects the timelines).
//!
//! A missing QEMU 10 fails the tests (SRIOV_SKIP_QEMU=1 skips them, printing `SKIPPED:`).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/lab.rs"]
mod lab;
#[path = "common/qemu.rs"]
mod qemu;

use lab::{Host, Lab, Phase};
use serde_json::json;

/// Where the guest's traffic runs at the end of `p`: its last second's frames from the guest
/// are on the VF (`on_vf`) or on the PV port, and the other port carried at most one.
fn assert_on(lab: &Lab, p: &Phase, on_vf: bool) {
    let (on, off) = if on_vf {
        (p.last.vf_tx, p.last.pv_tx)
    } else {
        (p.last.pv_tx, p.last.vf_tx)
    };
    if on < 5 || off > 1 {
        lab.fail(&format!(
            "phase {:?}: the guest's traffic is not on the {} at its end ({on} frames there, {off} \
             on the other port in the last second)",
            p.name,
            if on_vf { "VF" } else { "PV port" }
        ));
    }
}

/// At most `per_move` pings lost per move each way (and `extra` more for a migration's
/// downtime), over the whole run.
fn assert_losses(lab: &Lab, moves: u32, extra: u32) {
    let ((o_sent, o_ok), (i_sent, i_ok)) = lab.ping_totals();
    let budget = moves + extra;
    if o_sent - o_ok > budget || i_sent - i_ok > budget {
        lab.fail(&format!(
            "more than {budget} pings lost over {moves} moves: guest -> peer {o_ok}/{o_sent}, \
             peer -> guest {i_ok}/{i_sent}"
        ));
    }
    assert!(o_sent >= 50 && i_sent >= 50, "too few pings to judge");
}

/// The pings a migration's downtime may cost at 100 ms (one per 100 ms, plus one).
fn downtime_budget(lab: &Lab) -> u32 {
    lab.migrations
        .iter()
        .map(|&(_, ms)| u32::try_from(ms / 100).unwrap_or(10) + 1)
        .sum()
}

/// The destination announced the guest after the migration (QEMU's SEND_RARP, answered, not
/// a closed connection), and host A learnt it behind its uplink.
fn assert_announced(lab: &Lab) {
    let line = format!("announcing {} (SEND_RARP)", lab.mac);
    if !lab.log(Host::B).contains(&line) {
        lab.fail("host B never logged SEND_RARP for the guest's MAC");
    }
    let fdb = lab.a.qmp("query-fdb", json!({}));
    let on_uplink = fdb
        .as_array()
        .into_iter()
        .flatten()
        .any(|r| r["mac"] == lab.mac.as_str() && r["port"] == "uplink");
    if !on_uplink {
        lab.fail("host A's FDB does not have the migrated guest behind its uplink");
    }
}

/// Plug A's vf0, unplug it, live-migrate to B's PV port (`migrate_as`: the phase's name), and
/// with `replug` plug B's vf0: the plug-in way to another host.
fn unplug_migrate_replug(lab: &mut Lab, migrate_as: &str, replug: Option<&str>) {
    let p = lab.phase("plug A's vf0", Lab::plug).clone();
    assert_on(lab, &p, true);
    let p = lab.phase("unplug A's vf0", Lab::unplug).clone();
    assert_on(lab, &p, false);
    let p = lab.phase(migrate_as, |l| l.migrate(false)).clone();
    assert_on(lab, &p, false);
    assert_announced(lab);
    let p = match replug {
        Some(name) => lab.phase(name, Lab::plug).clone(),
        None => lab.phase("stay on B's pv0", |_| String::new()).clone(),
    };
    assert_on(lab, &p, replug.is_some());
}

#[test]
fn plug_cycles_move_traffic_to_the_vf_and_back_with_at_most_one_loss_per_move() {
    if !qemu::require_qemu("plug_cycles") {
        return;
    }
    let _serial = lab::one_at_a_time();
    let mut lab = Lab::start("plug-cycles", &[]);
    const CYCLES: u32 = 5;
    for c in 1..=CYCLES {
        let p = lab.phase(&format!("plug A's vf0 ({c})"), Lab::plug).clone();
        assert_on(&lab, &p, true);
        let p = lab
            .phase(&format!("unplug A's vf0 ({c})"), Lab::unplug)
            .clone();
        assert_on(&lab, &p, false);
    }
    lab.finish();
    assert_losses(&lab, 2 * CYCLES, 0);
}

#[test]
fn link_disable_moves_traffic_to_pv_without_unplugging_and_enable_brings_it_back() {
    if !qemu::require_qemu("link_disable") {
        return;
    }
    let _serial = lab::one_at_a_time();
    let mut lab = Lab::start("link-disable", &[]);
    let p = lab.phase("plug A's vf0", Lab::plug).clone();
    assert_on(&lab, &p, true);
    let p = lab
        .phase("vf 0 link-state disable", |l| l.set_link("disable"))
        .clone();
    assert_on(&lab, &p, false);
    let p = lab
        .phase("vf 0 link-state enable", |l| l.set_link("enable"))
        .clone();
    assert_on(&lab, &p, true);
    lab.finish();
    assert_losses(&lab, 3, 0);
}

#[test]
fn migration_to_another_host_unplug_migrate_replug_and_the_peer_reaches_it_over_the_uplink() {
    if !qemu::require_qemu("migrate_replug") {
        return;
    }
    let _serial = lab::one_at_a_time();
    let mut lab = Lab::start("migrate-replug", &[]);
    // Host B's vf0 gets the guest's MAC, as B's management does before the plug (both
    // emulators derive the same MACs, so here it is the one it had).
    lab.b
        .qmp("vf-set", json!({"vf": 0, "mac": lab.mac.clone()}));
    unplug_migrate_replug(&mut lab, "migrate to B's pv0", Some("plug B's vf0"));
    // The peer on A reaches the guest on B's VF through the uplink.
    let up = |l: &Lab| {
        l.a.stats("uplink")["counters"]["tx_packets"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = up(&lab);
    lab.finish();
    if up(&lab) - before < 5 {
        lab.fail("the peer's pings do not cross the uplink to host B");
    }
    let budget = downtime_budget(&lab);
    assert_losses(&lab, 4, budget);
}

#[test]
fn migration_to_a_host_without_vfs_keeps_the_guest_on_its_pv_port() {
    if !qemu::require_qemu("migrate_no_vfs") {
        return;
    }
    let _serial = lab::one_at_a_time();
    let mut lab = Lab::start("migrate-no-vfs", &["--vfs", "0"]);
    assert_eq!(
        lab.b.qmp("query-vfs", json!({})),
        json!([]),
        "B has numvfs 0"
    );
    unplug_migrate_replug(&mut lab, "migrate to B's pv0 (B: no VFs)", None);
    lab.finish();
    for w in ["ERROR", "WARN"] {
        if let Some(l) = lab.log(Host::B).lines().find(|l| l.contains(w)) {
            lab.fail(&format!("host B logged: {l}"));
        }
    }
    let budget = downtime_budget(&lab);
    assert_losses(&lab, 3, budget);
}

#[test]
fn migration_to_a_different_adapter_plugs_its_vf_with_its_own_queue_count_and_mtu() {
    if !qemu::require_qemu("migrate_other_adapter") {
        return;
    }
    let _serial = lab::one_at_a_time();
    // Host B's adapter: 4 channels per VF (A: 2) and MTU 9000 (A: 1450); its PV ports are
    // A's (the PV NIC migrates with the guest, so QEMU needs the same device on both hosts).
    let mut lab = Lab::start(
        "migrate-other-adapter",
        &[
            "--channels-per-vf",
            "4",
            "--mtu",
            "9000",
            "--uplink-mtu",
            "9100",
            "--pv-channels",
            "2",
            "--pv-mtu",
            "1450",
        ],
    );
    unplug_migrate_replug(
        &mut lab,
        "migrate to B's pv0",
        Some("plug B's vf0 (4 channels, MTU 9000)"),
    );
    // Each VF ran with every queue pair it offers (the plug's note says how many).
    if !lab.phases[1].note.contains("2 queue pairs") {
        lab.fail("A's vf0 did not run with its 2 queue pairs");
    }
    let vf0 = lab.vf0(Host::B);
    if vf0["channels"] != 4 || vf0["enabled-queues"] != json!([0, 1, 2, 3]) {
        lab.fail(&format!(
            "B's vf0 does not run with its own 4 queue pairs: {vf0}"
        ));
    }
    lab.finish();
    let budget = downtime_budget(&lab);
    assert_losses(&lab, 4, budget);
}

#[test]
fn migration_with_the_vf_attached_resumes_on_the_destinations_vf() {
    if !qemu::require_qemu("migrate_with_vf") {
        return;
    }
    let _serial = lab::one_at_a_time();
    let mut lab = Lab::start("migrate-with-vf", &[]);
    // The destination's VF gets the guest's MAC through the control socket (the same here).
    lab.b
        .qmp("vf-set", json!({"vf": 0, "mac": lab.mac.clone()}));
    let p = lab.phase("plug A's vf0", Lab::plug).clone();
    assert_on(&lab, &p, true);
    let p = lab
        .phase("migrate with vf0 (A's vf0 -> B's vf0)", |l| l.migrate(true))
        .clone();
    assert_on(&lab, &p, true);
    assert_announced(&lab);
    let p = lab.phase("stay on B's vf0", |_| String::new()).clone();
    assert_on(&lab, &p, true);
    lab.finish();
    // Nothing is left on host A's ports: A's vf0 and pv0 took no frame from the guest after
    // the migration (the last phase's frames are all B's).
    let a_tx = lab.a.stats("vf0")["counters"]["tx_packets"].as_u64();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        lab.a.stats("vf0")["counters"]["tx_packets"].as_u64(),
        a_tx,
        "host A's vf0 still sends"
    );
    let budget = downtime_budget(&lab);
    assert_losses(&lab, 2, budget);
}
