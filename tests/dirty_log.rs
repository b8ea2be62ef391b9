//! Dirty-page logging for live migration, through the vhost-user protocol as QEMU drives it:
//! the frontend hands over a memfd bitmap (SET_LOG_BASE, LOG_SHMFD) and acks VHOST_F_LOG_ALL;
//! every page the emulator writes (RX buffers, used rings) is then marked, nothing once logging
//! is off, and nothing in a log the frontend replaced.

mod common;

use common::*;
use sriov_emu::frontend::DirtyLog;
use std::time::Duration;

const PAGE: u64 = 4096;

/// Sends `n` frames of 1000 bytes from `tx` (vf1) to vf0 and receives them on `rx`.
fn exchange(
    tx: &mut sriov_emu::frontend::VirtioNetFrontend,
    rx: &mut sriov_emu::frontend::VirtioNetFrontend,
    first_seq: u32,
    n: u32,
) {
    for seq in first_seq..first_seq + n {
        let f = udp_frame(vf_mac(0), vf_mac(1), 1000, 2000, seq, 1000);
        tx.send_wait(0, &f, WAIT).unwrap();
        let got = rx.recv_timeout(0, WAIT).expect("frame at vf0");
        assert_eq!(got, f);
    }
}

fn pages_of(log: &DirtyLog, gpa: u64, len: u64) -> Vec<u64> {
    (gpa / PAGE..=(gpa + len - 1) / PAGE)
        .filter(|p| !log.is_dirty(p * PAGE))
        .collect()
}

#[test]
fn every_page_the_emulator_writes_is_marked_while_logging_and_none_after() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let mut rx = connect(&d, "vf0", pairs(1, 1));
    let mut tx = connect(&d, "vf1", pairs(1, 1));
    exchange(&mut tx, &mut rx, 0, 4);

    let log = rx
        .start_dirty_log()
        .expect("the emulator takes a dirty log");
    assert_eq!(log.dirty_pages(), Vec::<u64>::new(), "nothing written yet");
    // 20 frames into vf0's RX buffers (2048 bytes each, taken in ring order after the 4
    // before), and vf0 sends one (its TX used ring).
    exchange(&mut tx, &mut rx, 100, 20);
    let f = udp_frame(vf_mac(1), vf_mac(0), 1, 1, 7, 200);
    rx.send_wait(0, &f, WAIT).unwrap();
    assert_eq!(tx.recv_timeout(0, WAIT), Some(f));
    // The device's writes land just before it signals; give the TX completion its moment.
    std::thread::sleep(Duration::from_millis(50));
    for head in 4..24 {
        let gpa = rx.rx_buffer_gpa(0, head);
        assert!(
            log.is_dirty(gpa),
            "RX buffer {head} (gpa {gpa:#x}) not marked"
        );
    }
    for q in [0, 1] {
        let (gpa, len) = rx.used_ring_gpa(q);
        let missing = pages_of(&log, gpa, len);
        assert!(
            missing.is_empty(),
            "used ring {q}: pages {missing:?} not marked"
        );
    }
    // Buffers the device did not touch stay clean (two buffers a page: 100 and 101 share one).
    let untouched = rx.rx_buffer_gpa(0, 100);
    assert!(
        !log.is_dirty(untouched),
        "RX buffer 100 was never written but is marked: {:?}",
        log.dirty_pages()
    );
    // The sender's own memory is not this log's business (another connection).
    let marked = log.dirty_pages().len();
    println!("{marked} pages marked");

    rx.stop_dirty_log().unwrap();
    log.clear();
    exchange(&mut tx, &mut rx, 200, 20);
    assert_eq!(
        log.dirty_pages(),
        Vec::<u64>::new(),
        "pages marked after logging stopped"
    );
}

#[test]
fn a_replaced_log_is_never_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let mut rx = connect(&d, "vf0", pairs(1, 1));
    let mut tx = connect(&d, "vf1", pairs(1, 1));
    let first = rx.start_dirty_log().unwrap();
    exchange(&mut tx, &mut rx, 0, 5);
    assert!(!first.dirty_pages().is_empty());
    // QEMU resizes the log with a new SET_LOG_BASE, reads the old one right after the reply
    // and frees it: from the reply on, every mark goes to the new log.
    let second = rx.start_dirty_log().unwrap();
    first.clear();
    exchange(&mut tx, &mut rx, 10, 20);
    assert_eq!(
        first.dirty_pages(),
        Vec::<u64>::new(),
        "the old log was written"
    );
    for head in 5..25 {
        assert!(second.is_dirty(rx.rx_buffer_gpa(0, head)), "buffer {head}");
    }
}

#[test]
fn the_emulator_offers_what_qemu_needs_to_migrate() {
    use vhost::vhost_user::message::VhostUserProtocolFeatures;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::VhostBackend;
    let dir = tempfile::tempdir().unwrap();
    let _d = start_daemon(dir.path(), 1, 0, 1, 1500);
    let mut fe = Frontend::connect(dir.path().join("vf0.sock"), 2).unwrap();
    fe.set_owner().unwrap();
    let features = fe.get_features().unwrap();
    assert_ne!(
        features & (1 << 26),
        0,
        "VHOST_F_LOG_ALL offered: {features:#x}"
    );
    let pf = fe.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::LOG_SHMFD), "{pf:?}");
}
