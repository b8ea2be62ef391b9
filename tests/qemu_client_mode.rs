//! Client mode with real QEMU 10 guests (issue 15): QEMU serves each VF's socket
//! (`-chardev socket,...,server=on`, as `sriov-emu qemu-args` prints it for a client-mode VF)
//! and the emulator, started with `--vf-client-dir`, connects to it. Two guests on vf0 and vf1
//! ping each other; then guest 0's QEMU is killed and started again (the emulator reconnects
//! to its new socket), then the emulator is killed and started again (it reconnects to both):
//! each time the pings come back.
//!
//! A missing QEMU 10 fails the test (SRIOV_SKIP_QEMU=1 skips it, printing `SKIPPED:`).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/qemu.rs"]
mod qemu;

use emulator::Emulator;
use qemu::{Guest, GuestConfig};
use std::path::Path;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
/// Pings back both ways within this long of a restart (a guest's boot not counted).
const RESUME_LIMIT: Duration = Duration::from_secs(10);
const IP: [&str; 2] = ["198.18.91.1", "198.18.91.2"];

fn guest(emu: &Emulator, client_dir: &Path, vf: usize, run: u32) -> Guest {
    let dir = client_dir.to_str().unwrap();
    let args = emu.nic_args(vf as u32, &["--vf-client-dir", dir]);
    assert!(
        args.iter().any(|a| a.contains("server=on")),
        "qemu-args of a client-mode VF makes QEMU the server: {args:?}"
    );
    let peer = IP[1 - vf];
    Guest::spawn(
        GuestConfig::new(&format!("client-g{vf}-{run}"))
            .qemu_args(args)
            .ip(&format!("{}/24", IP[vf]))
            .script("serve")
            .cmd(&format!(
                "until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do sleep 0.2; done\n\
                 echo GUEST-PINGING\nping -i 0.2 {peer}\n"
            ))
            .log(emu.path().join(format!("guest{vf}-{run}.log"))),
    )
    .unwrap_or_else(|e| panic!("guest {vf}: {e}\n{}", emu.report()))
}

/// Ping replies guest `g` has printed so far.
fn replies(g: &Guest) -> usize {
    g.log().lines().filter(|l| l.contains("bytes from")).count()
}

/// Waits until both guests have had 3 more replies than when called.
fn wait_pings(guests: &[&Guest; 2], emu: &Emulator, what: &str) -> Duration {
    let t = Instant::now();
    let base = [replies(guests[0]), replies(guests[1])];
    loop {
        if (0..2).all(|i| replies(guests[i]) >= base[i] + 3) {
            return t.elapsed();
        }
        if t.elapsed() > RESUME_LIMIT {
            panic!(
                "{what}: no pings both ways within {RESUME_LIMIT:?}\n{}\n{}\n{}",
                emu.report(),
                guests[0].failure("at the failure"),
                guests[1].failure("at the failure")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn qemu_serves_the_sockets_and_both_sides_restart() {
    if !qemu::require_qemu("qemu_serves_the_sockets_and_both_sides_restart") {
        return;
    }
    let client = tempfile::tempdir().unwrap();
    let dir = client.path().to_str().unwrap().to_string();
    let mut emu = Emulator::start(&["--vfs", "2", "--pv-ports", "0", "--vf-client-dir", &dir]);
    let g1 = guest(&emu, client.path(), 1, 0);
    let g0 = guest(&emu, client.path(), 0, 0);
    for g in [&g0, &g1] {
        g.wait_for_line("GUEST-PINGING", BOOT)
            .unwrap_or_else(|e| panic!("{e}\n{}", emu.report()));
    }
    let first = wait_pings(&[&g0, &g1], &emu, "first start");
    eprintln!("client mode: both guests ping ({first:.2?} for 3 replies)");

    // Guest 0's QEMU dies and starts again: a new socket at the same path.
    g0.kill();
    let t = Instant::now();
    while emu.vf_attached(0) {
        assert!(t.elapsed() < Duration::from_secs(5), "vf0 still attached");
        std::thread::sleep(Duration::from_millis(20));
    }
    let g0 = guest(&emu, client.path(), 0, 1);
    g0.wait_for_line("GUEST-PINGING", BOOT)
        .unwrap_or_else(|e| panic!("{e}\n{}", emu.report()));
    let back = wait_pings(&[&g0, &g1], &emu, "after QEMU restarted");
    eprintln!("client mode: QEMU of guest 0 restarted, pings back ({back:.2?} after its boot)");

    // The emulator dies (SIGKILL) and starts again: it connects to both QEMUs.
    emu.kill_hard();
    let t = Instant::now();
    emu.restart();
    let back = wait_pings(&[&g0, &g1], &emu, "after the emulator restarted");
    eprintln!(
        "client mode: emulator restarted, pings back {:.2?} after the restart",
        t.elapsed().max(back)
    );
    // The guests' script runs once per boot: neither rebooted.
    for (i, g) in [&g0, &g1].into_iter().enumerate() {
        assert_eq!(
            g.log().matches("GUEST-PINGING").count(),
            1,
            "guest {i} rebooted\n{}",
            g.failure("at the end")
        );
    }
}
