//! VF hot-plug into a running QEMU 10 guest, the q35 way (a pcie-root-port, ACPI hot-plug),
//! with exactly the QMP commands `sriov-emu qemu-args vf N --hotplug plug|unplug` prints: the
//! guest boots without a NIC, gets vf0 plugged, pings a peer over it, loses it on unplug
//! (device_del, DEVICE_DELETED, netdev_del), and gets it back on the next plug; twice.
//!
//! A missing QEMU 10 fails the test (SRIOV_SKIP_QEMU=1 skips it, printing `SKIPPED:`).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/qemu.rs"]
mod qemu;

use emulator::Emulator;
use qemu::{Guest, GuestConfig};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(60);
const CYCLES: u32 = 2;

/// The guest: for each cycle, wait for a NIC, configure it, ping the peer, wait until the NIC
/// is gone. Markers carry the cycle number.
fn guest_cmd() -> String {
    format!(
        r#"
for c in $(seq 1 {CYCLES}); do
    echo HOTPLUG-WAITING-$c
    i=0
    while [ ! -e /sys/class/net/eth0 ]; do
        sleep 0.2; i=$((i + 1)); [ $i -lt 600 ] || {{ echo HOTPLUG-NO-NIC-$c; exit 1; }}
    done
    echo HOTPLUG-NIC-$c $(cat /sys/class/net/eth0/address)
    ip addr add 198.18.60.1/24 dev eth0
    ip link set eth0 up
    end=$(( $(date +%s) + 60 ))
    until ping -c 1 -W 1 198.18.60.2 >/dev/null 2>&1; do
        [ $(date +%s) -lt $end ] || {{ echo HOTPLUG-PEER-SILENT-$c; exit 1; }}
    done
    ping -c 10 -i 0.2 -W 2 198.18.60.2 | grep transmitted
    echo HOTPLUG-PINGED-$c
    i=0
    while [ -e /sys/class/net/eth0 ]; do
        sleep 0.2; i=$((i + 1)); [ $i -lt 600 ] || {{ echo HOTPLUG-STILL-THERE-$c; exit 1; }}
    done
    echo HOTPLUG-GONE-$c
done
"#
    )
}

fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_vf_hot_plugs_into_a_running_guest_carries_traffic_and_unplugs_twice() {
    let test = "a_vf_hot_plugs_into_a_running_guest_carries_traffic_and_unplugs_twice";
    if !qemu::require_qemu(test) {
        return;
    }
    qemu::guest_image().expect("guest image");
    let emu = Emulator::start(&["--vfs", "2", "--pv-ports", "0"]);
    let peer = Guest::spawn(
        GuestConfig::new("peer")
            .qemu_args(emu.nic_args(1, &[]))
            .ip("198.18.60.2/24")
            .script("serve")
            .log(emu.path().join("peer.log")),
    )
    .expect("spawn peer");
    let qmp = emu.path().join("guest.qmp");
    let guest = Guest::spawn(
        GuestConfig::new("hotplug")
            .qemu_args(qemu::pcie_root_ports(1))
            .script("serve")
            .cmd(&guest_cmd())
            .qmp_socket(&qmp)
            .log(emu.path().join("hotplug.log")),
    )
    .expect("spawn guest");
    peer.wait_for_line("serve: up", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    let fail = |e: String| -> ! { panic!("{e}\n{}", emu.report()) };
    for c in 1..=CYCLES {
        guest
            .wait_for_line(&format!("HOTPLUG-WAITING-{c}"), BOOT)
            .unwrap_or_else(|e| fail(e));
        assert!(
            !emu.vf_attached(0),
            "cycle {c}: vf0 attached before the plug"
        );
        let t = Instant::now();
        emu.hotplug(&guest, 0, "plug");
        let line = guest
            .wait_for_line(&format!("HOTPLUG-PINGED-{c}"), STEP)
            .unwrap_or_else(|e| fail(e));
        println!(
            "cycle {c}: plugged and pinging after {:.1?} ({line})",
            t.elapsed()
        );
        assert!(
            emu.vf_attached(0),
            "cycle {c}: the emulator has no frontend on vf0"
        );
        let log = guest.log();
        assert!(
            log.matches("10 packets transmitted, 10 packets received")
                .count()
                >= c as usize,
            "cycle {c}: pings lost over the plugged VF:\n{log}"
        );

        let t = Instant::now();
        // device_del, DEVICE_DELETED (the guest let go), netdev_del.
        emu.hotplug(&guest, 0, "unplug");
        guest
            .wait_for_line(&format!("HOTPLUG-GONE-{c}"), STEP)
            .unwrap_or_else(|e| fail(e));
        wait_until("the emulator sees vf0's frontend go", STEP, || {
            !emu.vf_attached(0)
        });
        println!("cycle {c}: unplugged after {:.1?}", t.elapsed());
    }
    let events = emu.log();
    assert!(
        events.matches("frontend connected port=vf0").count() >= CYCLES as usize,
        "{events}"
    );
    drop((guest, peer));
}
