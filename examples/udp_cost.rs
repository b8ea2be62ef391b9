//! What the kernel's UDP path costs per datagram on loopback, with everything on one thread
//! (send, the loopback receive the kernel runs in the sender's context, receive), so the figure
//! is CPU time per datagram: the VXLAN uplink's batched I/O (`uplink::udp_batch::UdpBatch`,
//! sendmmsg + recvmmsg of 64) against UDP GSO (`UDP_SEGMENT`: one send of many equal datagrams)
//! with and without UDP GRO on the receiving socket. Used for docs/benchmarks.md ("VXLAN wire
//! between two emulators"); pin it to an idle CPU:
//!
//!     cargo build --release --example udp_cost
//!     taskset -c 1 target/release/examples/udp_cost 1526 3    # payload bytes, seconds per mode
//!
//! 1526 bytes is a 1518-byte frame behind its 8-byte VXLAN header; 72 a 64-byte frame.

use sriov_emu::uplink::udp_batch::UdpBatch;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const BATCH: usize = 64;
/// The most a GSO send carries: 64 KiB of UDP payload.
const GSO_MAX: usize = 65_000;

fn setsockopt_int(fd: i32, level: i32, opt: i32, val: i32) -> std::io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a c_int that lives across the call
    // and its size is passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            std::ptr::from_ref(&val).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// ns per datagram with the uplink's own batches: `BATCH` datagrams per sendmmsg, recvmmsg
/// until all arrived.
fn batched(size: usize, secs: f64) -> Result<f64, String> {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut a = UdpBatch::bind(any, BATCH, size).map_err(|e| e.to_string())?;
    let mut b = UdpBatch::bind(any, BATCH, size).map_err(|e| e.to_string())?;
    let dst = b.local_addr();
    let payload = vec![0xabu8; size];
    let (mut n, start) = (0u64, Instant::now());
    while start.elapsed().as_secs_f64() < secs {
        for _ in 0..BATCH {
            a.push(dst, &[&payload]).map_err(|e| e.to_string())?;
        }
        let r = a.flush().map_err(|e| e.to_string())?;
        if r.sent != BATCH {
            return Err(format!("sent {} of {BATCH}", r.sent));
        }
        let mut got = 0;
        while got < BATCH {
            got += b.recv().map_err(|e| e.to_string())?;
        }
        n += BATCH as u64;
    }
    Ok(start.elapsed().as_nanos() as f64 / n as f64)
}

/// ns per datagram with UDP GSO: one `send_to` of as many `size`-byte datagrams as fit in 64
/// KiB (at most 64); the receiver with UDP_GRO gets them back coalesced, without it one by one.
fn gso(size: usize, secs: f64, gro: bool) -> Result<(f64, usize), String> {
    let a = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let b = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    b.set_read_timeout(Some(Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    for s in [&a, &b] {
        for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
            setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, opt, 4 << 20)
                .map_err(|e| e.to_string())?;
        }
    }
    setsockopt_int(
        a.as_raw_fd(),
        libc::IPPROTO_UDP,
        libc::UDP_SEGMENT,
        size as i32,
    )
    .map_err(|e| format!("UDP_SEGMENT: {e}"))?;
    if gro {
        setsockopt_int(b.as_raw_fd(), libc::IPPROTO_UDP, libc::UDP_GRO, 1)
            .map_err(|e| format!("UDP_GRO: {e}"))?;
    }
    let segs = (GSO_MAX / size).clamp(1, BATCH);
    let payload = vec![0xabu8; segs * size];
    let mut buf = vec![0u8; 65_536];
    let dst = b.local_addr().map_err(|e| e.to_string())?;
    let (mut n, start) = (0u64, Instant::now());
    while start.elapsed().as_secs_f64() < secs {
        a.send_to(&payload, dst).map_err(|e| e.to_string())?;
        let mut got = 0;
        while got < segs {
            let len = b.recv(&mut buf).map_err(|e| e.to_string())?;
            got += len.div_ceil(size);
        }
        n += segs as u64;
    }
    Ok((start.elapsed().as_nanos() as f64 / n as f64, segs))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(size), Some(secs)) = (
        args.get(1).and_then(|a| a.parse::<usize>().ok()),
        args.get(2).and_then(|a| a.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: udp_cost PAYLOAD_BYTES SECONDS");
        return ExitCode::from(2);
    };
    match batched(size, secs) {
        Ok(ns) => println!(
            "{size} B: sendmmsg + recvmmsg, {BATCH} per call (UdpBatch): {ns:.0} ns per datagram"
        ),
        Err(e) => {
            eprintln!("udp_cost: batched: {e}");
            return ExitCode::FAILURE;
        }
    }
    for gro in [false, true] {
        match gso(size, secs, gro) {
            Ok((ns, segs)) => println!(
                "{size} B: UDP GSO, {segs} per send, receiver {}: {ns:.0} ns per datagram",
                if gro { "with UDP_GRO" } else { "without GRO" }
            ),
            Err(e) => {
                eprintln!("udp_cost: gso: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
