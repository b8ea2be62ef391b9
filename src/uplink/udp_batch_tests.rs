//! Unit tests of `udp_batch.rs` on the loopback device (127.0.0.1 and ::1): byte-exact round
//! trips in batches with the syscalls counted, truncation, a full batch, refused arguments.
//! The test against a Linux vxlan device in network namespaces is `tests/uplink_vxlan.rs`.

use super::*;
use std::time::{Duration, Instant};

const V4: &str = "127.0.0.1:0";
const V6: &str = "[::1]:0";

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

/// Waits (poll, at most 5 s) until `b`'s socket is readable.
fn wait_readable(b: &UdpBatch) {
    let mut p = libc::pollfd {
        fd: b.fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    let rc = unsafe { libc::poll(&mut p, 1, 5000) };
    assert_eq!(rc, 1, "socket did not become readable");
}

/// Datagram `i`'s payload: an 8-byte header naming `i`, then `len - 8` bytes that depend on
/// `i` and the offset.
fn payload(i: usize, len: usize) -> (Vec<u8>, Vec<u8>) {
    let hdr = (i as u64).to_be_bytes().to_vec();
    let body = (0..len - 8)
        .map(|k| (k.wrapping_mul(31) ^ i.wrapping_mul(7)) as u8)
        .collect();
    (hdr, body)
}

/// Sizes from 60 to 9000 bytes, both ends included, spread by a fixed LCG.
fn sizes(n: usize) -> Vec<usize> {
    let mut x: u32 = 12345;
    let mut v: Vec<usize> = (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            60 + (x >> 8) as usize % (9000 - 60 + 1)
        })
        .collect();
    v[0] = 60;
    v[1] = 9000;
    v
}

/// Sends `n` datagrams of mixed sizes from `a` to `b` in batches, receives them all, checks
/// every byte; returns (send syscalls, recv syscalls).
fn round_trip(local: &str, n: usize, batch: usize) -> (u64, u64) {
    let mut tx = UdpBatch::bind(sa(local), batch, 9216).unwrap();
    let mut rx = UdpBatch::bind(sa(local), batch, 9216).unwrap();
    let dst = rx.local_addr();
    let sizes = sizes(n);
    let mut next_rx = 0;
    let mut i = 0;
    while i < n {
        let (hdr, body) = payload(i, sizes[i]);
        if tx.push(dst, &[&hdr, &body]).unwrap() {
            i += 1;
            if i < n {
                continue;
            }
        }
        let r = tx.flush().unwrap();
        assert_eq!((r.dropped, r.failed), (0, 0), "{r:?}");
        // Take what was sent before queueing more (the receive buffer need not hold it all).
        let deadline = Instant::now() + Duration::from_secs(5);
        while next_rx < i {
            assert!(
                Instant::now() < deadline,
                "lost datagrams: {next_rx} of {i}"
            );
            if rx.recv().unwrap() == 0 {
                wait_readable(&rx);
                continue;
            }
            for d in rx.datagrams() {
                let (hdr, body) = payload(next_rx, sizes[next_rx]);
                assert_eq!(d.src, tx.local_addr());
                assert!(!d.truncated);
                assert_eq!(d.len, sizes[next_rx]);
                assert_eq!(&d.data[..8], &hdr[..], "datagram {next_rx} out of order");
                assert!(d.data[8..] == body[..], "datagram {next_rx} differs");
                next_rx += 1;
            }
        }
    }
    assert_eq!(rx.recv().unwrap(), 0, "more datagrams than sent");
    let (t, r) = (tx.counters(), rx.counters());
    assert_eq!(t.tx_datagrams, n as u64);
    assert_eq!(r.rx_datagrams, n as u64);
    assert_eq!((t.tx_dropped, t.tx_failed, r.rx_truncated), (0, 0, 0));
    println!(
        "{local}: {n} datagrams, batch {batch}: {} sendmmsg, {} recvmmsg",
        t.send_syscalls, r.recv_syscalls
    );
    (t.send_syscalls, r.recv_syscalls)
}

#[test]
fn ipv4_round_trip_in_batches_is_byte_exact_with_few_syscalls() {
    let n = 200;
    let (send, recv) = round_trip(V4, n, 32);
    // 7 batches; one recvmmsg each, plus the final empty one.
    assert!(send + recv < (n / 8) as u64, "{send} + {recv} syscalls");
    assert_eq!(send, 7);
}

#[test]
fn ipv6_round_trip() {
    let (send, _) = round_trip(V6, 100, 64);
    assert_eq!(send, 2);
}

#[test]
fn truncated_datagrams_are_flagged_with_their_real_length() {
    let mut tx = UdpBatch::bind(sa(V4), 4, 1000).unwrap();
    let mut rx = UdpBatch::bind(sa(V4), 4, 100).unwrap();
    let dst = rx.local_addr();
    assert!(tx.push(dst, &[&[7u8; 300]]).unwrap());
    assert!(tx.push(dst, &[&[9u8; 100]]).unwrap());
    assert_eq!(tx.flush().unwrap().sent, 2);
    wait_readable(&rx);
    assert_eq!(rx.recv().unwrap(), 2);
    let d = rx.datagram(0).unwrap();
    assert!(d.truncated);
    assert_eq!((d.len, d.data.len()), (300, 100));
    assert!(d.data.iter().all(|b| *b == 7));
    let d = rx.datagram(1).unwrap();
    assert!(!d.truncated);
    assert_eq!((d.len, d.data.len()), (100, 100));
    assert_eq!(rx.datagram(2), None);
    assert_eq!(rx.counters().rx_truncated, 1);
}

#[test]
fn a_full_batch_takes_nothing_until_flushed() {
    let mut tx = UdpBatch::bind(sa(V4), 4, 64).unwrap();
    let rx = UdpBatch::bind(sa(V4), 4, 64).unwrap();
    let dst = rx.local_addr();
    for k in 0..4u8 {
        assert!(tx.push(dst, &[&[k; 10]]).unwrap());
    }
    assert_eq!(tx.queued(), 4);
    assert!(!tx.push(dst, &[&[4; 10]]).unwrap());
    assert!(tx.tx_slot(dst).unwrap().is_none());
    let r = tx.flush().unwrap();
    assert_eq!((r.sent, r.syscalls), (4, 1));
    assert_eq!(tx.queued(), 0);
    assert!(tx.push(dst, &[&[4; 10]]).unwrap());
}

#[test]
fn tx_slot_builds_in_place_and_uncommitted_slots_queue_nothing() {
    let mut tx = UdpBatch::bind(sa(V6), 2, 64).unwrap();
    let mut rx = UdpBatch::bind(sa(V6), 2, 64).unwrap();
    let dst = rx.local_addr();
    {
        let mut s = tx.tx_slot(dst).unwrap().unwrap();
        s.buf()[..3].copy_from_slice(b"abc");
    } // dropped: nothing queued
    assert_eq!(tx.queued(), 0);
    let mut s = tx.tx_slot(dst).unwrap().unwrap();
    assert_eq!(s.buf().len(), 64);
    s.buf()[..5].copy_from_slice(b"hello");
    s.commit(5).unwrap();
    let s = tx.tx_slot(dst).unwrap().unwrap();
    assert!(matches!(
        s.commit(65),
        Err(UdpError::PushTooLong { len: 65, max: 64 })
    ));
    assert_eq!(tx.queued(), 1);
    assert_eq!(tx.flush().unwrap().sent, 1);
    wait_readable(&rx);
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(rx.datagram(0).unwrap().data, b"hello");
}

#[test]
fn nothing_waiting_is_zero_and_empty_flush_makes_no_syscall() {
    let mut b = UdpBatch::bind(sa(V4), 8, 64).unwrap();
    assert_eq!(b.recv().unwrap(), 0);
    assert_eq!(b.received(), 0);
    assert_eq!(b.datagrams().count(), 0);
    assert_eq!(b.flush().unwrap(), FlushResult::default());
    let c = b.counters();
    assert_eq!((c.recv_syscalls, c.send_syscalls), (1, 0));
}

#[test]
fn refused_arguments() {
    assert!(matches!(
        UdpBatch::bind(sa(V4), 0, 64),
        Err(UdpError::BatchSize { batch: 0 })
    ));
    assert!(matches!(
        UdpBatch::bind(sa(V4), BATCH_MAX + 1, 64),
        Err(UdpError::BatchSize { .. })
    ));
    assert!(matches!(
        UdpBatch::bind(sa(V4), 1, 0),
        Err(UdpError::BufSize { buf_size: 0 })
    ));
    assert!(matches!(
        UdpBatch::bind(sa(V4), 1, BUF_SIZE_MAX + 1),
        Err(UdpError::BufSize { .. })
    ));
    let a = UdpBatch::bind(sa(V4), 1, 64).unwrap();
    match UdpBatch::bind(a.local_addr(), 1, 64) {
        Err(e @ UdpError::Bind { .. }) => {
            assert!(std::error::Error::source(&e).is_some());
            assert!(e.to_string().contains(&a.local_addr().to_string()), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let mut b = UdpBatch::bind(sa(V4), 2, 64).unwrap();
    let v6 = sa("[::1]:4789");
    assert!(matches!(
        b.push(v6, &[b"x"]),
        Err(UdpError::PushFamily { .. })
    ));
    assert!(matches!(b.tx_slot(v6), Err(UdpError::PushFamily { .. })));
    assert!(matches!(
        b.push(a.local_addr(), &[&[0; 40], &[0; 25]]),
        Err(UdpError::PushTooLong { len: 65, max: 64 })
    ));
    assert_eq!(b.queued(), 0);
    // Exactly buf_size fits.
    assert!(b.push(a.local_addr(), &[&[0; 40], &[0; 24]]).unwrap());
}

#[test]
fn a_batch_can_move_to_another_thread_between_calls() {
    let mut tx = UdpBatch::bind(sa(V4), 4, 64).unwrap();
    let rx = UdpBatch::bind(sa(V4), 4, 64).unwrap();
    let dst = rx.local_addr();
    assert!(tx.push(dst, &[b"before the move"]).unwrap());
    let boxed = Box::new(tx); // the struct moves; its pointers are relinked at flush
    let mut rx = std::thread::spawn(move || {
        let mut tx = *boxed;
        assert_eq!(tx.flush().unwrap().sent, 1);
        rx
    })
    .join()
    .unwrap();
    wait_readable(&rx);
    assert_eq!(rx.recv().unwrap(), 1);
    assert_eq!(rx.datagram(0).unwrap().data, b"before the move");
}
