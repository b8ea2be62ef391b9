//! Unit tests of `udp_batch.rs` on the loopback device (127.0.0.1 and ::1): byte-exact round
//! trips in batches with the syscalls counted, truncation, a full batch, refused arguments.
//! The test against a Linux vxlan device in network namespaces is `tests/uplink_vxlan.rs`.

use super::*;
use std::net::UdpSocket;
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

/// Receives from `rx` until `n` datagrams arrived (5 s at most), GRO trains cut into their
/// datagrams: each datagram's bytes, in arrival order.
fn receive_datagrams(rx: &mut UdpBatch, n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while got.len() < n {
        assert!(Instant::now() < deadline, "{} of {n} datagrams", got.len());
        if rx.recv().unwrap() == 0 {
            wait_readable(rx);
            continue;
        }
        for d in rx.datagrams() {
            assert!(!d.truncated);
            got.extend(d.segments().map(<[u8]>::to_vec));
        }
    }
    got
}

/// One flush with GSO: runs of one size to one destination leave as GSO messages within the
/// kernel's limits (64 datagrams, 64 KiB; only the last of a message shorter). A socket with
/// GRO takes each message whole, a plain socket gets the datagrams one by one; both byte-exact
/// and in order.
#[test]
fn gso_trains_reach_a_gro_socket_whole_and_a_plain_one_cut_byte_exact() {
    let mut tx = UdpBatch::bind(sa(V4), 256, 2000).unwrap();
    tx.enable_gso().expect("UDP GSO (Linux 4.18+)");
    let sock = UdpSocket::bind(sa(V4)).unwrap();
    let mut gro = UdpBatch::with_sizes(sock, 64, BUF_SIZE_MAX, 0).unwrap();
    gro.enable_gro().expect("UDP GRO (Linux 5.0+)");
    assert!(gro.gro() && tx.gso());
    let mut plain = UdpBatch::bind(sa(V4), 256, 2000).unwrap();
    // Per destination: 7 x 1000 bytes and a shorter 600 (one message), 50 x 1500 (43 fit in
    // 64 KiB: two messages), 70 x 100 (64 at most: two messages).
    let runs: [&[(usize, usize)]; 3] = [&[(1000, 7), (600, 1)], &[(1500, 50)], &[(100, 70)]];
    let mut sent: [Vec<Vec<u8>>; 2] = Default::default();
    let mut i = 0;
    for run in runs {
        for (d, dst) in [gro.local_addr(), plain.local_addr()]
            .into_iter()
            .enumerate()
        {
            for &(len, count) in run {
                for _ in 0..count {
                    let (hdr, body) = payload(i, len);
                    assert!(tx.push(dst, &[&hdr, &body]).unwrap());
                    sent[d].push([hdr, body].concat());
                    i += 1;
                }
            }
        }
    }
    let r = tx.flush().unwrap();
    assert_eq!(
        (r.sent, r.dropped, r.failed, r.syscalls),
        (256, 0, 0, 1),
        "{r:?}"
    );
    assert_eq!(
        tx.counters().tx_messages,
        10,
        "5 GSO messages per destination"
    );
    assert_eq!(tx.counters().tx_datagrams, 256);
    assert!(
        receive_datagrams(&mut gro, 128) == sent[0],
        "GRO side differs"
    );
    assert!(
        receive_datagrams(&mut plain, 128) == sent[1],
        "plain side differs"
    );
    let (g, p) = (gro.counters(), plain.counters());
    assert_eq!((g.rx_datagrams, p.rx_datagrams), (128, 128));
    assert_eq!(
        p.rx_messages, 128,
        "a plain socket gets a datagram per buffer"
    );
    assert!(
        g.rx_messages <= 128 / 4,
        "a GRO socket gets the trains whole: {} buffers for 128 datagrams",
        g.rx_messages
    );
}

/// Without GSO every datagram is its own message; with it, a change of destination or of size
/// ends a message.
#[test]
fn gso_messages_end_at_a_new_destination_or_size() {
    let mut tx = UdpBatch::bind(sa(V4), 64, 200).unwrap();
    let mut rx: Vec<UdpBatch> = (0..2)
        .map(|_| UdpBatch::bind(sa(V4), 64, 200).unwrap())
        .collect();
    let dst: Vec<SocketAddr> = rx.iter().map(UdpBatch::local_addr).collect();
    // (destination, length): with GSO the messages are [0: 100 x3], [1: 100 x2], [0: 100],
    // [0: 150 x2] and [0: 160] (longer than the message's size: a message of its own).
    let plan = [
        (0, 100),
        (0, 100),
        (0, 100),
        (1, 100),
        (1, 100),
        (0, 100),
        (0, 150),
        (0, 150),
        (0, 160),
    ];
    for gso in [false, true] {
        if gso {
            tx.enable_gso().unwrap();
        }
        let before = tx.counters().tx_messages;
        for (i, &(d, len)) in plan.iter().enumerate() {
            let (hdr, body) = payload(i, len);
            assert!(tx.push(dst[d], &[&hdr, &body]).unwrap());
        }
        assert_eq!(tx.flush().unwrap().sent, plan.len());
        let messages = tx.counters().tx_messages - before;
        assert_eq!(messages, if gso { 5 } else { 9 }, "gso {gso}");
        let to0 = receive_datagrams(&mut rx[0], 7);
        let to1 = receive_datagrams(&mut rx[1], 2);
        let lens = |v: &[Vec<u8>]| v.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(lens(&to0), [100, 100, 100, 100, 150, 150, 160]);
        assert_eq!(lens(&to1), [100, 100]);
    }
}
