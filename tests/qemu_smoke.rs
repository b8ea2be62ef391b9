//! Smoke test of the QEMU guest harness: boots the test guest (no NIC) under TCG, runs a
//! command, and checks the markers, the tools and the kernel modules the other QEMU tests need.
//! A missing QEMU 10 fails it (install it with ./scripts/setup); SRIOV_SKIP_QEMU=1 skips it
//! with a `SKIPPED:` line instead. Also tests that decision (tests/common/skip.rs).

#[path = "common/qemu.rs"]
mod qemu;

use qemu::{Guest, GuestConfig};
use std::time::Duration;

/// Without QEMU a test fails, naming what is missing, how to install it and how to opt out;
/// only SRIOV_SKIP_QEMU=1 makes it skip. (The decision takes the variable's value as an
/// argument: tests run in parallel threads and must not change the process environment.)
#[test]
fn missing_qemu_fails_unless_skipping_is_asked_for() {
    use qemu::skip::decide;
    let missing = "QEMU >= 10 is not installed";
    for env in [None, Some(""), Some("0"), Some("yes"), Some("true")] {
        let msg = decide("t", missing, env).expect_err("fails");
        assert!(
            msg.starts_with("t cannot run: QEMU >= 10 is not installed."),
            "{msg}"
        );
        assert!(msg.contains("./scripts/setup"), "{msg}");
        assert!(msg.contains("SRIOV_SKIP_QEMU=1"), "{msg}");
    }
    assert!(decide("t", missing, Some("yes"))
        .unwrap_err()
        .contains(r#"SRIOV_SKIP_QEMU="yes" is not 1"#));
    assert_eq!(
        decide("t", missing, Some("1")),
        Ok("SKIPPED: t: QEMU >= 10 is not installed (SRIOV_SKIP_QEMU=1)".to_string())
    );
}

#[test]
fn guest_boots_and_runs_script() {
    if !qemu::require_qemu("guest_boots_and_runs_script") {
        return;
    }
    let guest = Guest::spawn(
        GuestConfig::new("smoke")
            .sriov("smoke-value", "42")
            .cmd("echo hi; ethtool --version; lsmod; echo \"smoke=$SRIOV_SMOKE_VALUE\""),
    )
    .expect("spawn QEMU");

    guest
        .wait_for_line(qemu::READY_MARKER, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let rc = guest
        .wait_done(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let boot = guest.uptime();
    assert_eq!(rc, 0, "{}", guest.failure("guest command failed"));

    let log = guest.log();
    for expected in [
        "hi",
        "ethtool version",
        "virtio_net",
        "bonding",
        "8021q",
        "smoke=42",
    ] {
        assert!(
            log.contains(expected),
            "{}",
            guest.failure(&format!("{expected:?} missing from the guest output"))
        );
    }
    guest
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest booted, ran its command and reported DONE in {boot:.1?}");
}

/// Two guests joined by a QEMU `-netdev stream` unix socket (plain virtio-net, no emulator,
/// reaches nothing else): checks the NIC path of the harness and the ping-peer/serve fixtures,
/// so a failing vhost-user test can be told apart from broken guest tooling.
#[test]
fn two_guests_ping_over_qemu_stream_netdev() {
    if !qemu::require_qemu("two_guests_ping_over_qemu_stream_netdev") {
        return;
    }
    let sock = std::env::temp_dir().join(format!("sriov-smoke-net-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let nic = |server: bool, mac: &str| {
        vec![
            "-netdev".to_string(),
            format!(
                "stream,id=n0,server={},addr.type=unix,addr.path={}{}",
                if server { "on" } else { "off" },
                sock.display(),
                if server { "" } else { ",reconnect-ms=500" }
            ),
            "-device".to_string(),
            format!("virtio-net-pci,netdev=n0,mac={mac}"),
        ]
    };
    let server = Guest::spawn(
        GuestConfig::new("smoke-serve")
            .ip("198.18.0.1/24")
            .ip6("2001:db8::1/64")
            .script("serve")
            .qemu_args(nic(true, "02:00:00:00:00:0a")),
    )
    .expect("spawn server guest");
    server
        .wait_for_line("serve: up", Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));

    let client = Guest::spawn(
        GuestConfig::new("smoke-ping")
            .ip("198.18.0.2/24")
            .ip6("2001:db8::2/64")
            .peer("198.18.0.1")
            .peer6("2001:db8::1")
            .script("ping-peer")
            .qemu_args(nic(false, "02:00:00:00:00:0b")),
    )
    .expect("spawn client guest");
    client
        .expect_success(Duration::from_secs(180))
        .unwrap_or_else(|e| panic!("{e}\n--- server guest ---\n{}", server.log_tail(20)));
    let log = client.log();
    assert!(
        log.contains("20 packets transmitted, 20 packets received"),
        "{log}"
    );
    assert!(log.contains("ping-peer: PASS"), "{log}");
    drop(server);
    let _ = std::fs::remove_file(&sock);
}
