//! Hostile or broken guests, written by the test frontend: rings and chains a correct driver
//! never writes. Each is counted, fails only what it touches, and traffic resumes once the
//! guest behaves.

mod common;

use common::*;
use sriov_emu::daemon::{Daemon, DaemonConfig};
use sriov_emu::frontend::{FrontendConfig, RawDesc};
use sriov_emu::pf::PfConfig;

#[test]
fn an_rx_avail_index_past_the_ring_fails_that_queue_counted_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(1, 1));
    let (avail, _) = b.ring_indices(0);
    // 1000 buffers more than were posted: more than the 256-entry ring can hold.
    b.set_avail_idx_raw(0, avail.wrapping_add(1000));
    for i in 0..5 {
        a.send(0, &udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, 100))
            .unwrap();
    }
    wait_for("frames to the broken queue counted", || {
        counter(&d, "vf1", "drop_no_rx_buffer") == 5
    });
    assert!(counter(&d, "vf1", "queue_faults") >= 1);
    assert_eq!(counter(&d, "vf1", "rx_packets"), 0);
    assert_eq!(counter(&d, "vf0", "tx_forwarded"), 5);
    assert!(b.recv_timeout(0, QUIET).is_none(), "nothing written");
    // The driver comes back to its senses: delivery resumes.
    b.restore_avail_idx(0);
    let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 9, 100);
    a.send(0, &f).unwrap();
    assert_eq!(b.recv_timeout(0, WAIT).as_deref(), Some(&f[..]));
}

#[test]
fn a_tx_avail_index_past_the_ring_is_a_counted_queue_fault_then_recovers() {
    for poll in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let d = start_daemon_mode(dir.path(), 2, 0, 1, 1500, poll);
        let mut a = connect(&d, "vf0", pairs(1, 1));
        let mut b = connect(&d, "vf1", pairs(1, 1));
        let (avail, _) = a.ring_indices(1);
        a.set_avail_idx_raw(1, avail.wrapping_add(1000));
        wait_for("the TX fault counted", || {
            counter(&d, "vf0", "queue_faults") >= 1
        });
        assert_eq!(counter(&d, "vf0", "tx_packets"), 0, "nothing taken");
        a.restore_avail_idx(1);
        let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 1, 100);
        a.send(0, &f).unwrap();
        assert_eq!(
            b.recv_timeout(0, WAIT).as_deref(),
            Some(&f[..]),
            "poll {poll}"
        );
        assert_eq!(counter(&d, "vf0", "tx_packets"), 1);
        d.shutdown();
    }
}

#[test]
fn a_chain_longer_than_the_queue_is_malformed_even_if_its_descriptors_are_empty() {
    let dir = tempfile::tempdir().unwrap();
    let d = start_daemon(dir.path(), 2, 0, 1, 1500);
    let mut a = connect(&d, "vf0", pairs(1, 1));
    let mut b = connect(&d, "vf1", pairs(1, 1));
    let frame = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 3, 100);
    let (buf, len) = frame_in_tx_buffer(&mut a, &frame);
    // An indirect table of `n` descriptors: n - 1 empty ones, then the frame.
    let table = |n: u16| -> Vec<RawDesc> {
        (0..n)
            .map(|i| {
                if i + 1 < n {
                    RawDesc::new(buf, 0, RawDesc::NEXT, i + 1)
                } else {
                    RawDesc::new(buf, len, 0, 0)
                }
            })
            .collect()
    };
    // 300 descriptors on a 256-entry queue.
    a.send_indirect_raw(0, &table(300)).unwrap();
    wait_for("the long chain counted as malformed", || {
        counter(&d, "vf0", "drop_malformed") == 1
    });
    assert!(
        b.recv_timeout(0, QUIET).is_none(),
        "the long chain was delivered"
    );
    // As many as the queue holds is a valid chain.
    a.send_indirect_raw(0, &table(256)).unwrap();
    assert_eq!(b.recv_timeout(0, WAIT).as_deref(), Some(&frame[..]));
    assert_eq!(counter(&d, "vf0", "drop_malformed"), 1);
    assert_eq!(counter(&d, "vf0", "tx_packets"), 2);
}

#[test]
fn a_stop_in_the_middle_of_a_burst_returns_every_buffer_taken() {
    for (poll, workers) in [(false, 1), (true, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let pf = PfConfig::new(dir.path().to_path_buf(), 2, 0, 1, 1500).unwrap();
        let d = Daemon::start(DaemonConfig {
            poll,
            workers,
            ..DaemonConfig::new(pf)
        })
        .unwrap();
        let cfg = FrontendConfig {
            queue_size: 1024,
            tx_buf_size: 256,
            ..FrontendConfig::default()
        };
        let frames: Vec<Vec<u8>> = (0..1000)
            .map(|i| udp_frame(vf_mac(1), vf_mac(0), 1, 2, i, 60 + (i as usize % 150)))
            .collect();
        let mut taken = 0u64;
        let mut cut = 0;
        for round in 0..20 {
            let mut a = connect(&d, "vf0", cfg.clone());
            let b = connect(&d, "vf1", pairs(1, 1));
            let queued = a.send_batch(0, frames.iter().map(Vec::as_slice)).unwrap();
            // QEMU stopping the device (migration, vm stop) while the burst is in flight.
            let base = a.get_vring_base(1).unwrap();
            let (avail, used) = a.ring_indices(1);
            assert_eq!(avail, queued as u16);
            assert_eq!(
                used, base,
                "round {round} (poll {poll}): the device reported {base} as taken but returned {used}"
            );
            taken += u64::from(base);
            cut += usize::from(usize::from(base) < queued);
            wait_for("counters settle", || {
                counter(&d, "vf0", "tx_packets") == taken
            });
            drop(a);
            drop(b);
            wait_for("detached", || {
                d.port("vf0").is_some_and(|p| !p.is_attached())
                    && d.port("vf1").is_some_and(|p| !p.is_attached())
            });
        }
        eprintln!("poll {poll}: {cut} of 20 stops landed in the middle of the burst");
        // After all that, a new frontend works.
        let mut a = connect(&d, "vf0", pairs(1, 1));
        let mut b = connect(&d, "vf1", pairs(1, 1));
        let f = udp_frame(vf_mac(1), vf_mac(0), 1, 2, 7, 80);
        a.send(0, &f).unwrap();
        assert_eq!(b.recv_timeout(0, WAIT).as_deref(), Some(&f[..]));
        d.shutdown();
    }
}
