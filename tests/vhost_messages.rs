//! Malformed vhost-user messages (issue 13, item 2): a frontend that writes the wire format by
//! hand (`RawFrontend`) sends truncated and oversized messages, unknown requests, memory
//! tables and vring settings no QEMU sends, each to vf2 of a running emulator. Each must end
//! in an error reply or a closed connection for vf2 (counted in its `protocol_errors`), or be
//! accepted harmlessly where the protocol allows it; never a crash or a hang. Throughout,
//! vf0 and vf1 exchange frames checked byte for byte, and after every case a normal frontend
//! on vf2 exchanges frames with vf0.

mod common;

use common::*;
use sriov_emu::frontend::raw::{header, RawFrontend, VERSION};
use sriov_emu::frontend::{memfd, Answer, RawError, VirtioNetFrontend};
use sriov_emu::vf::STALL_LIMIT;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserLog, VhostUserMemory, VhostUserMemoryRegion, VhostUserSingleMemoryRegion,
    VhostUserU64, VhostUserVringAddr, VhostUserVringAddrFlags, VhostUserVringState,
};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;
use FrontendReq as R;
use Seen::{Accepted, Closed, Refused};

/// vf2's vrings: one queue pair.
const VRINGS: u32 = 2;
/// Where the raw frontend says its guest memory is in its own address space.
const UADDR: u64 = 0x7f00_0000_0000;
/// The raw frontend's guest memory (one region at guest address 0).
const MEM: u64 = 1 << 20;

/// What the back-end did with a case's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// An error reply (REPLY_ACK non-zero), then the connection closed.
    Refused,
    /// The connection closed without a reply.
    Closed,
    /// Accepted: the protocol allows it and nothing breaks; the connection stays open.
    Accepted,
}

type CaseResult = Result<Seen, String>;

struct Case {
    name: &'static str,
    expect: Seen,
    run: fn(&mut RawFrontend) -> CaseResult,
}

fn req(r: FrontendReq) -> u32 {
    u32::from(r)
}

fn raw_err(e: RawError) -> String {
    format!("{e}")
}

/// After the back-end refused a request or broke the message off: it must close.
fn must_close(raw: &mut RawFrontend, seen: Seen) -> CaseResult {
    if raw.closed_within(WAIT).map_err(raw_err)? {
        Ok(seen)
    } else {
        Err(format!("{seen:?} but the connection stayed open"))
    }
}

/// Sends a request with NEED_REPLY and says what the back-end did.
fn call(raw: &mut RawFrontend, request: FrontendReq, body: &[u8], fds: &[RawFd]) -> CaseResult {
    match raw.call(req(request), body, fds, WAIT).map_err(raw_err)? {
        Answer::Reply(m) => match m.u64() {
            Some(0) => Ok(Seen::Accepted),
            Some(_) => must_close(raw, Seen::Refused),
            None => Err(format!("a reply of {} bytes to {request:?}", m.body.len())),
        },
        Answer::Closed => Ok(Seen::Closed),
        Answer::Silent => Err(format!("no answer to {request:?} in {WAIT:?}")),
    }
}

/// Sends a message without asking for a reply; the back-end must close the connection.
fn send_expect_close(raw: &mut RawFrontend, bytes: &[u8], fds: &[RawFd]) -> CaseResult {
    match raw.send_bytes(bytes, fds) {
        Ok(()) | Err(RawError::Closed) => {}
        Err(e) => return Err(raw_err(e)),
    }
    match raw.answer(WAIT).map_err(raw_err)? {
        Answer::Closed => Ok(Seen::Closed),
        Answer::Reply(m) => Err(format!("a reply: {m:?}")),
        Answer::Silent => Err(format!("nothing in {WAIT:?}, the connection is open")),
    }
}

fn handshake(raw: &mut RawFrontend) -> Result<u64, String> {
    raw.handshake(WAIT).map_err(raw_err)
}

/// A guest memory file of `size` bytes.
fn mem_file(size: u64) -> File {
    memfd(size).expect("memfd")
}

fn mem_table(regions: &[VhostUserMemoryRegion]) -> Vec<u8> {
    let mut b = VhostUserMemory::new(regions.len() as u32)
        .as_slice()
        .to_vec();
    for r in regions {
        b.extend_from_slice(r.as_slice());
    }
    b
}

fn region(gpa: u64, size: u64, uaddr: u64) -> VhostUserMemoryRegion {
    VhostUserMemoryRegion::new(gpa, size, uaddr, 0)
}

/// Handshake, then a valid memory table of `MEM` bytes at guest address 0; returns the file.
fn with_memory(raw: &mut RawFrontend) -> Result<File, String> {
    handshake(raw)?;
    let f = mem_file(MEM);
    let body = mem_table(&[region(0, MEM, UADDR)]);
    raw.ack(
        req(FrontendReq::SET_MEM_TABLE),
        &body,
        &[f.as_raw_fd()],
        WAIT,
    )
    .map_err(raw_err)?;
    Ok(f)
}

fn vring_state(index: u32, num: u32) -> Vec<u8> {
    VhostUserVringState::new(index, num).as_slice().to_vec()
}

fn vring_addr(index: u32, desc: u64, used: u64, avail: u64) -> Vec<u8> {
    VhostUserVringAddr::new(
        index,
        VhostUserVringAddrFlags::empty(),
        desc,
        used,
        avail,
        0,
    )
    .as_slice()
    .to_vec()
}

fn u64_body(v: u64) -> Vec<u8> {
    VhostUserU64::new(v).as_slice().to_vec()
}

/// A pipe (read end, write end): descriptors that cannot be mapped.
fn pipe() -> (File, File) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just created and are owned by nobody else.
    unsafe {
        use std::os::fd::FromRawFd;
        (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
    }
}

fn eventfd() -> EventFd {
    EventFd::new(0).expect("eventfd")
}

// ---- the cases ----

/// After the handshake, one request with NEED_REPLY.
fn after_handshake(
    raw: &mut RawFrontend,
    request: FrontendReq,
    body: &[u8],
    fds: &[RawFd],
) -> CaseResult {
    handshake(raw)?;
    call(raw, request, body, fds)
}

/// After the handshake, SET_MEM_TABLE of `regions` with `fds`.
fn mem_table_case(
    raw: &mut RawFrontend,
    regions: &[VhostUserMemoryRegion],
    fds: &[RawFd],
) -> CaseResult {
    after_handshake(raw, FrontendReq::SET_MEM_TABLE, &mem_table(regions), fds)
}

/// After the handshake, `request` (ADD_MEM_REG, REM_MEM_REG) of one region.
fn single_region_case(
    raw: &mut RawFrontend,
    request: FrontendReq,
    (gpa, size, uaddr): (u64, u64, u64),
    fds: &[RawFd],
) -> CaseResult {
    let body = VhostUserSingleMemoryRegion::new(gpa, size, uaddr, 0);
    call(raw, request, body.as_slice(), fds)
}

fn unknown_request_need_reply(raw: &mut RawFrontend) -> CaseResult {
    handshake(raw)?;
    match raw.call(9999, &[], &[], WAIT).map_err(raw_err)? {
        Answer::Closed => Ok(Seen::Closed),
        Answer::Reply(m) if m.u64().is_some_and(|v| v != 0) => must_close(raw, Seen::Refused),
        a => Err(format!("{a:?}")),
    }
}

fn mem_region_past_end_of_file(raw: &mut RawFrontend) -> CaseResult {
    // The region says 1 MiB, the file has 64 KiB: its pages past 64 KiB would SIGBUS.
    let f = mem_file(64 << 10);
    let seen = mem_table_case(raw, &[region(0, MEM, UADDR)], &[f.as_raw_fd()])?;
    if seen != Seen::Accepted {
        return Ok(seen);
    }
    // Accepted: a used ring in the part past the end of the file makes the back-end read it.
    let at = UADDR + MEM / 2;
    let body = vring_addr(0, at, at + 0x4000, at + 0x2000);
    call(raw, FrontendReq::SET_VRING_ADDR, &body, &[])
}

fn mem_too_many_regions(raw: &mut RawFrontend) -> CaseResult {
    // vhost accepts up to 32 regions (and 32 descriptors) in one message.
    let size = 64 << 10;
    let files: Vec<File> = (0..33).map(|_| mem_file(size)).collect();
    let regions: Vec<_> = (0..33)
        .map(|i| region(i * size, size, UADDR + i * size))
        .collect();
    let fds: Vec<RawFd> = files.iter().map(AsRawFd::as_raw_fd).collect();
    mem_table_case(raw, &regions, &fds)
}

/// Ring `q` set up at these offsets of the raw frontend's memory.
fn set_up_ring(raw: &mut RawFrontend, q: u32, desc: u64, avail: u64, used: u64) -> CaseResult {
    for (r, body) in [
        (FrontendReq::SET_VRING_NUM, vring_state(q, 256)),
        (FrontendReq::SET_VRING_BASE, vring_state(q, 0)),
        (
            FrontendReq::SET_VRING_ADDR,
            vring_addr(q, UADDR + desc, UADDR + used, UADDR + avail),
        ),
    ] {
        raw.ack(req(r), &body, &[], WAIT).map_err(raw_err)?;
    }
    Ok(Seen::Accepted)
}

/// A TX ring whose used ring runs past the end of guest memory (its index inside), with a
/// chain posted and kicked: the data plane must not write past the memory.
fn vring_used_ring_past_end_of_memory(raw: &mut RawFrontend) -> CaseResult {
    let mem = with_memory(raw)?;
    let (desc, avail) = (0x1_0000, 0x2_0000);
    set_up_ring(raw, 1, desc, avail, MEM - 8)?;
    // One chain: descriptor 0 (a 64-byte buffer) in avail slot 0, avail index 1.
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&0x3_0000u64.to_le_bytes());
    d[8..12].copy_from_slice(&64u32.to_le_bytes());
    mem.write_all_at(&d, desc).expect("write desc");
    mem.write_all_at(&[0, 0, 1, 0, 0, 0], avail)
        .expect("write avail");
    kick_ring(raw, 1)
}

/// A TX ring set up inside guest memory and running; then a new memory table of 64 KiB
/// leaves the ring (at 64 KiB and up) outside memory, and the ring is kicked again.
fn mem_table_shrinks_under_a_running_ring(raw: &mut RawFrontend) -> CaseResult {
    let _mem = with_memory(raw)?;
    set_up_ring(raw, 1, 0x1_0000, 0x2_0000, 0x3_0000)?;
    kick_ring(raw, 1)?;
    let small = mem_file(64 << 10);
    let body = mem_table(&[region(0, 64 << 10, UADDR)]);
    raw.ack(
        req(FrontendReq::SET_MEM_TABLE),
        &body,
        &[small.as_raw_fd()],
        WAIT,
    )
    .map_err(raw_err)?;
    kick_ring(raw, 1)
}

/// SET_VRING_KICK and SET_VRING_ENABLE for ring `q`, then a kick.
fn kick_ring(raw: &mut RawFrontend, q: u32) -> CaseResult {
    let kick = eventfd();
    let set_kick = req(FrontendReq::SET_VRING_KICK);
    raw.ack(set_kick, &u64_body(u64::from(q)), &[kick.as_raw_fd()], WAIT)
        .map_err(raw_err)?;
    let enable = req(FrontendReq::SET_VRING_ENABLE);
    raw.ack(enable, &vring_state(q, 1), &[], WAIT)
        .map_err(raw_err)?;
    kick.write(1).expect("kick");
    // Give the data plane time to look at the ring, then check the connection still works.
    std::thread::sleep(QUIET);
    raw.get_u64(FrontendReq::GET_FEATURES, WAIT)
        .map_err(raw_err)?;
    Ok(Seen::Accepted)
}

/// SET_LOG_BASE of `size` bytes with `fds`, after the handshake. It is answered with a reply
/// of its own body, never an ack.
fn log_base(raw: &mut RawFrontend, size: u64, fds: &[RawFd]) -> CaseResult {
    handshake(raw)?;
    let body = VhostUserLog::new(size, 0).as_slice().to_vec();
    let r = req(FrontendReq::SET_LOG_BASE);
    match raw.send(r, VERSION, &body, fds) {
        Ok(()) | Err(RawError::Closed) => {}
        Err(e) => return Err(raw_err(e)),
    }
    match raw.answer(WAIT).map_err(raw_err)? {
        Answer::Closed => Ok(Seen::Closed),
        Answer::Reply(m) if m.request == r && m.body == body => Ok(Seen::Accepted),
        a => Err(format!("{a:?}")),
    }
}

/// A header's bytes with `extra` zero bytes of body after it.
fn message(request: u32, flags: u32, size: u32, extra: usize) -> Vec<u8> {
    let mut m = header(request, flags, size).to_vec();
    m.resize(m.len() + extra, 0);
    m
}

const CASES: &[Case] = &[
    Case {
        name: "truncated header, then end of stream",
        expect: Closed,
        run: |raw| {
            let h = header(req(R::GET_FEATURES), VERSION, 0);
            raw.send_bytes(&h[..7], &[]).map_err(raw_err)?;
            raw.shutdown_write();
            must_close(raw, Closed)
        },
    },
    Case {
        name: "body shorter than the header announces",
        expect: Closed,
        run: |raw| send_expect_close(raw, &message(req(R::SET_FEATURES), VERSION, 8, 4), &[]),
    },
    Case {
        name: "size field 0x7fff_ffff",
        expect: Closed,
        run: |raw| {
            send_expect_close(
                raw,
                &header(req(R::GET_FEATURES), VERSION, 0x7fff_ffff),
                &[],
            )
        },
    },
    Case {
        name: "size one past the largest message (0x1001)",
        expect: Closed,
        run: |raw| {
            handshake(raw)?;
            let m = message(req(R::SET_MEM_TABLE), VERSION, 0x1001, 0x1001);
            send_expect_close(raw, &m, &[])
        },
    },
    Case {
        name: "unknown request 9999",
        expect: Closed,
        run: |raw| send_expect_close(raw, &header(9999, VERSION, 0), &[]),
    },
    Case {
        name: "unknown request 9999 with NEED_REPLY",
        expect: Closed,
        run: unknown_request_need_reply,
    },
    Case {
        name: "request the device does not implement (NET_SET_MTU)",
        expect: Closed,
        run: |raw| after_handshake(raw, R::NET_SET_MTU, &u64_body(1500), &[]),
    },
    Case {
        name: "version 2 in the flags",
        expect: Closed,
        run: |raw| send_expect_close(raw, &header(req(R::GET_FEATURES), 0x2, 0), &[]),
    },
    Case {
        name: "REPLY flag on a request",
        expect: Closed,
        run: |raw| send_expect_close(raw, &header(req(R::SET_OWNER), VERSION | 0x4, 0), &[]),
    },
    Case {
        name: "a descriptor on a request that takes none",
        expect: Closed,
        run: |raw| {
            let e = eventfd();
            after_handshake(
                raw,
                R::SET_PROTOCOL_FEATURES,
                &u64_body(0),
                &[e.as_raw_fd()],
            )
        },
    },
    Case {
        name: "SET_MEM_TABLE: overlapping regions",
        expect: Refused,
        run: |raw| {
            let (a, b) = (mem_file(MEM), mem_file(MEM));
            let regions = [region(0, MEM, UADDR), region(MEM / 2, MEM, UADDR + MEM)];
            mem_table_case(raw, &regions, &[a.as_raw_fd(), b.as_raw_fd()])
        },
    },
    Case {
        name: "SET_MEM_TABLE: a region of 2^60 bytes",
        expect: Refused,
        run: |raw| {
            let f = mem_file(MEM);
            mem_table_case(raw, &[region(0, 1 << 60, UADDR)], &[f.as_raw_fd()])
        },
    },
    Case {
        name: "SET_MEM_TABLE: guest address + size overflows",
        expect: Refused,
        run: |raw| {
            let f = mem_file(MEM);
            mem_table_case(
                raw,
                &[region(u64::MAX - 4095, MEM, UADDR)],
                &[f.as_raw_fd()],
            )
        },
    },
    Case {
        name: "SET_MEM_TABLE: a region past the end of its file",
        expect: Refused,
        run: mem_region_past_end_of_file,
    },
    Case {
        name: "SET_MEM_TABLE: two regions, one descriptor",
        expect: Refused,
        run: |raw| {
            let f = mem_file(MEM);
            let regions = [region(0, MEM, UADDR), region(MEM, MEM, UADDR + MEM)];
            mem_table_case(raw, &regions, &[f.as_raw_fd()])
        },
    },
    Case {
        name: "SET_MEM_TABLE: no descriptor",
        expect: Refused,
        run: |raw| mem_table_case(raw, &[region(0, MEM, UADDR)], &[]),
    },
    Case {
        name: "SET_MEM_TABLE: a pipe as memory",
        expect: Refused,
        run: |raw| {
            let (r, _w) = pipe();
            mem_table_case(raw, &[region(0, MEM, UADDR)], &[r.as_raw_fd()])
        },
    },
    Case {
        name: "SET_MEM_TABLE: a socket as memory",
        expect: Refused,
        run: |raw| {
            let (s, _t) = std::os::unix::net::UnixStream::pair().expect("socketpair");
            mem_table_case(raw, &[region(0, MEM, UADDR)], &[s.as_raw_fd()])
        },
    },
    Case {
        name: "SET_MEM_TABLE: 33 regions",
        expect: Closed,
        run: mem_too_many_regions,
    },
    Case {
        name: "SET_MEM_TABLE: no region",
        expect: Refused,
        run: |raw| mem_table_case(raw, &[], &[]),
    },
    Case {
        name: "SET_VRING_ADDR: outside the memory table",
        expect: Refused,
        run: |raw| {
            let _mem = with_memory(raw)?;
            let at = UADDR + 4 * MEM;
            let body = vring_addr(0, at, at + 0x4000, at + 0x2000);
            call(raw, R::SET_VRING_ADDR, &body, &[])
        },
    },
    Case {
        name: "SET_VRING_ADDR: before any memory table",
        expect: Refused,
        run: |raw| {
            let body = vring_addr(0, UADDR, UADDR + 0x4000, UADDR + 0x2000);
            after_handshake(raw, R::SET_VRING_ADDR, &body, &[])
        },
    },
    Case {
        name: "SET_VRING_ADDR: used ring past the end of memory, chain kicked",
        expect: Accepted,
        run: vring_used_ring_past_end_of_memory,
    },
    Case {
        name: "SET_MEM_TABLE: memory shrinks under a running ring, ring kicked",
        expect: Accepted,
        run: mem_table_shrinks_under_a_running_ring,
    },
    Case {
        name: "SET_VRING_NUM: index past the queues",
        expect: Refused,
        run: |raw| after_handshake(raw, R::SET_VRING_NUM, &vring_state(VRINGS, 256), &[]),
    },
    Case {
        name: "SET_VRING_BASE: index past the queues",
        expect: Refused,
        run: |raw| after_handshake(raw, R::SET_VRING_BASE, &vring_state(7, 0), &[]),
    },
    Case {
        name: "SET_VRING_KICK: index past the queues",
        expect: Refused,
        run: |raw| {
            let e = eventfd();
            let body = u64_body(u64::from(VRINGS) + 3);
            after_handshake(raw, R::SET_VRING_KICK, &body, &[e.as_raw_fd()])
        },
    },
    Case {
        name: "GET_VRING_BASE: index past the queues",
        expect: Closed,
        run: |raw| after_handshake(raw, R::GET_VRING_BASE, &vring_state(99, 0), &[]),
    },
    Case {
        name: "SET_VRING_ENABLE: index past the queues",
        expect: Refused,
        run: |raw| after_handshake(raw, R::SET_VRING_ENABLE, &vring_state(VRINGS, 1), &[]),
    },
    Case {
        name: "SET_VRING_ENABLE: value 2",
        expect: Closed,
        run: |raw| after_handshake(raw, R::SET_VRING_ENABLE, &vring_state(0, 2), &[]),
    },
    Case {
        name: "SET_VRING_NUM: 0",
        expect: Refused,
        run: |raw| after_handshake(raw, R::SET_VRING_NUM, &vring_state(0, 0), &[]),
    },
    Case {
        name: "SET_VRING_NUM: 100 (not a power of two)",
        expect: Refused,
        run: |raw| after_handshake(raw, R::SET_VRING_NUM, &vring_state(0, 100), &[]),
    },
    Case {
        name: "SET_VRING_NUM: 2048 (past the maximum)",
        expect: Refused,
        run: |raw| after_handshake(raw, R::SET_VRING_NUM, &vring_state(1, 2048), &[]),
    },
    Case {
        name: "SET_VRING_KICK and ENABLE before SET_MEM_TABLE, then kicks",
        expect: Accepted,
        run: |raw| {
            // Rings with address 0 everywhere and no memory at all.
            handshake(raw)?;
            kick_ring(raw, 1)?;
            kick_ring(raw, 0)
        },
    },
    Case {
        name: "SET_OWNER twice",
        expect: Refused,
        run: |raw| after_handshake(raw, R::SET_OWNER, &[], &[]),
    },
    Case {
        name: "SET_FEATURES: a bit not offered",
        expect: Refused,
        run: |raw| {
            let acked = handshake(raw)?;
            call(raw, R::SET_FEATURES, &u64_body(acked | 1 << 60), &[])
        },
    },
    Case {
        name: "SET_VRING_CALL: the no-descriptor flag with a descriptor",
        expect: Closed,
        run: |raw| {
            let e = eventfd();
            after_handshake(raw, R::SET_VRING_CALL, &u64_body(0x100), &[e.as_raw_fd()])
        },
    },
    Case {
        name: "ADD_MEM_REG: no descriptor",
        expect: Closed,
        run: |raw| {
            handshake(raw)?;
            single_region_case(raw, R::ADD_MEM_REG, (0, MEM, UADDR), &[])
        },
    },
    Case {
        name: "ADD_MEM_REG: overlapping the memory table",
        expect: Refused,
        run: |raw| {
            let _mem = with_memory(raw)?;
            let f = mem_file(MEM);
            let r = (MEM / 2, MEM, UADDR + 8 * MEM);
            single_region_case(raw, R::ADD_MEM_REG, r, &[f.as_raw_fd()])
        },
    },
    Case {
        name: "ADD_MEM_REG: a region past the end of its file",
        expect: Refused,
        run: |raw| {
            handshake(raw)?;
            let f = mem_file(4096);
            single_region_case(raw, R::ADD_MEM_REG, (0, MEM, UADDR), &[f.as_raw_fd()])
        },
    },
    Case {
        name: "ADD_MEM_REG: frontend address + size overflows",
        expect: Closed,
        run: |raw| {
            handshake(raw)?;
            let f = mem_file(MEM);
            let r = (0, MEM, u64::MAX - 4095);
            single_region_case(raw, R::ADD_MEM_REG, r, &[f.as_raw_fd()])
        },
    },
    Case {
        name: "REM_MEM_REG: a region never added",
        expect: Refused,
        run: |raw| {
            let _mem = with_memory(raw)?;
            let r = (16 * MEM, MEM, UADDR + 16 * MEM);
            single_region_case(raw, R::REM_MEM_REG, r, &[])
        },
    },
    Case {
        name: "SET_LOG_BASE: size 0",
        expect: Closed,
        run: |raw| log_base(raw, 0, &[mem_file(4096).as_raw_fd()]),
    },
    Case {
        name: "SET_LOG_BASE: a pipe as the log",
        expect: Closed,
        run: |raw| log_base(raw, 4096, &[pipe().0.as_raw_fd()]),
    },
    Case {
        name: "SET_LOG_BASE: no descriptor",
        expect: Closed,
        run: |raw| log_base(raw, 4096, &[]),
    },
    Case {
        name: "SET_LOG_BASE: a log past the end of its file",
        expect: Closed,
        // 8 KiB of log in an empty file: the first page marked would SIGBUS.
        run: |raw| log_base(raw, 8192, &[mem_file(0).as_raw_fd()]),
    },
];

// ---- traffic between vf0 and vf1, all along ----

/// vf0 and vf1 exchanging frames on a thread; frames vf0 gets from vf2 go to `from_vf2`.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Round trips completed.
    rounds: Arc<AtomicU64>,
    vf0: Arc<Mutex<VirtioNetFrontend>>,
    from_vf2: mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<TrafficReport>,
}

#[derive(Debug, Default)]
struct TrafficReport {
    sent: u64,
    received: u64,
    errors: Vec<String>,
    /// The longest time a round trip took.
    longest: Duration,
}

/// Receives the next frame at vf0 that is not from vf2 (those go to `side`).
fn recv_at_vf0(
    a: &Mutex<VirtioNetFrontend>,
    side: &mpsc::Sender<Vec<u8>>,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        let got = a.lock().unwrap().recv(0);
        match got {
            Some(f) if f.len() >= 12 && f[6..12] == vf_mac(2).0 => {
                let _ = side.send(f);
            }
            Some(f) => return Some(f),
            None => std::thread::sleep(Duration::from_micros(200)),
        }
    }
    None
}

impl Traffic {
    fn start(a: VirtioNetFrontend, mut b: VirtioNetFrontend) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let vf0 = Arc::new(Mutex::new(a));
        let (side, from_vf2) = mpsc::channel();
        let (s, r, a) = (stop.clone(), rounds.clone(), vf0.clone());
        let thread = std::thread::spawn(move || {
            let mut rep = TrafficReport::default();
            let mut seq = 0u32;
            while !s.load(Ordering::Acquire) {
                let round = Instant::now();
                let len = 60 + (seq as usize * 37) % 1400;
                let ab = udp_frame(vf_mac(1), vf_mac(0), 1000, 2000, seq, len);
                let ba = udp_frame(vf_mac(0), vf_mac(1), 2000, 1000, seq, 1514 - len + 60);
                if let Err(e) = a.lock().unwrap().send_wait(0, &ab, WAIT) {
                    rep.errors.push(format!("vf0 send {seq}: {e}"));
                    break;
                }
                if let Err(e) = b.send_wait(0, &ba, WAIT) {
                    rep.errors.push(format!("vf1 send {seq}: {e}"));
                    break;
                }
                rep.sent += 2;
                match b.recv_timeout(0, WAIT) {
                    Some(f) if f == ab => rep.received += 1,
                    Some(f) => rep.errors.push(format!(
                        "vf1 got {} bytes (seq {}) for frame {seq}",
                        f.len(),
                        if f.len() >= 46 { seq_of(&f) } else { 0 }
                    )),
                    None => rep.errors.push(format!("vf1 lost frame {seq}")),
                }
                match recv_at_vf0(&a, &side, WAIT) {
                    Some(f) if f == ba => rep.received += 1,
                    Some(f) => rep.errors.push(format!(
                        "vf0 got {} bytes (seq {}) for frame {seq}",
                        f.len(),
                        if f.len() >= 46 { seq_of(&f) } else { 0 }
                    )),
                    None => rep.errors.push(format!("vf0 lost frame {seq}")),
                }
                if rep.errors.len() > 20 {
                    break;
                }
                seq += 1;
                rep.longest = rep.longest.max(round.elapsed());
                r.store(u64::from(seq), Ordering::Release);
            }
            rep
        });
        Traffic {
            stop,
            rounds,
            vf0,
            from_vf2,
            thread,
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Acquire)
    }

    /// Waits until `n` more round trips than `since` completed.
    fn wait_rounds(&self, since: u64, n: u64, what: &str) {
        let t = Instant::now();
        while self.rounds() < since + n {
            assert!(
                t.elapsed() < WAIT,
                "{what}: vf0<->vf1 traffic stalled at {} round trips",
                self.rounds()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(self) -> TrafficReport {
        self.stop.store(true, Ordering::Release);
        self.thread.join().expect("traffic thread")
    }
}

// ---- the emulator seen from outside ----

/// One control client for the whole test (a client per query would hit its limit of 64).
struct Ctl {
    client: sriov_emu::control::client::Client,
    /// The emulator's log, shown when it stops answering.
    log: std::path::PathBuf,
    pid: u32,
}

/// How process `pid` (a child) ended, if it did; it stays a zombie for `Child::wait`.
fn exit_status(pid: u32) -> Option<String> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid(2).
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with WNOWAIT only reads its state into `info`.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: waitid filled `info` (si_pid 0: the child has not ended).
    let (child, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if r != 0 || child == 0 {
        return None;
    }
    Some(match code {
        libc::CLD_EXITED => format!("exited with {status}"),
        _ => format!("killed by signal {status}"),
    })
}

impl Ctl {
    fn new(emu: &Emu) -> Ctl {
        Ctl {
            client: emu.control(),
            log: emu.path().join("emulator.log"),
            pid: emu.child.id(),
        }
    }

    fn port(&mut self, port: &str) -> serde_json::Value {
        match self
            .client
            .execute("query-stats", serde_json::json!({"port": port}))
        {
            Ok(s) => s[0].clone(),
            Err(e) => {
                std::thread::sleep(QUIET);
                panic!(
                    "the control socket does not answer: {e}; the emulator {}; its log:\n{}",
                    exit_status(self.pid).unwrap_or_else(|| "runs".into()),
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                )
            }
        }
    }

    fn counter(&mut self, port: &str, name: &str) -> u64 {
        self.port(port)["counters"][name]
            .as_u64()
            .unwrap_or_else(|| panic!("no counter {name}"))
    }

    fn protocol_errors(&mut self, port: &str) -> u64 {
        self.counter(port, "protocol_errors")
    }

    fn attached(&mut self, port: &str) -> bool {
        self.port(port)["attached"] == true
    }
}

/// Whether `f` holds within `WAIT`.
fn holds_within(mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > WAIT {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

fn wait_until(what: &str, f: impl FnMut() -> bool) {
    assert!(holds_within(f), "{what}");
}

fn alive(emu: &mut Emu, what: &str) {
    if let Ok(Some(status)) = emu.child.try_wait() {
        panic!(
            "{what}: the emulator exited ({status}); its log:\n{}",
            emu.log()
        );
    }
}

/// A normal frontend on vf2 exchanges a frame each way with vf0.
fn vf2_recovers(emu: &Emu, ctl: &mut Ctl, traffic: &Traffic, what: &str, seq: u32) {
    let mut c = connect(emu.path(), "vf2", pairs(1, 1));
    let to_vf0 = udp_frame(vf_mac(0), vf_mac(2), 3000, 4000, seq, 200);
    let to_vf2 = udp_frame(vf_mac(2), vf_mac(0), 4000, 3000, seq, 300);
    traffic
        .vf0
        .lock()
        .unwrap()
        .send_wait(0, &to_vf2, WAIT)
        .expect("vf0 sends to vf2");
    assert_eq!(
        c.recv_timeout(0, WAIT).as_deref(),
        Some(&to_vf2[..]),
        "{what}: vf2 did not get vf0's frame afterwards"
    );
    c.send_wait(0, &to_vf0, WAIT).expect("vf2 sends");
    let got = traffic.from_vf2.recv_timeout(WAIT);
    assert_eq!(
        got.ok().as_deref(),
        Some(&to_vf0[..]),
        "{what}: vf0 did not get vf2's frame afterwards"
    );
    drop(c);
    wait_until(&format!("{what}: vf2 detached"), || !ctl.attached("vf2"));
}

/// Descriptors and threads of a process.
fn fds_and_threads(pid: u32) -> (usize, usize) {
    let count = |d: &str| {
        std::fs::read_dir(Path::new(&format!("/proc/{pid}/{d}")))
            .map(|r| r.count())
            .unwrap_or(0)
    };
    (count("fd"), count("task"))
}

/// `fds_and_threads` once it has not changed for 200 ms (a detached port's resources are
/// let go by the threads that held them when they next look).
fn settled_fds_and_threads(pid: u32) -> (usize, usize) {
    let t = Instant::now();
    let mut last = fds_and_threads(pid);
    let mut same = 0;
    while same < 10 && t.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(20));
        let now = fds_and_threads(pid);
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

fn fd_list(pid: u32) -> String {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|r| {
            r.flatten()
                .map(|e| {
                    format!(
                        "{}->{}",
                        e.file_name().to_string_lossy(),
                        std::fs::read_link(e.path())
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v.join(" ")
}

#[test]
fn malformed_messages_fail_only_their_connection() {
    let mut emu = Emu::start(&["--vfs", "3", "--pv-ports", "0", "--channels-per-vf", "1"]);
    let a = connect(emu.path(), "vf0", pairs(1, 1));
    let b = connect(emu.path(), "vf1", pairs(1, 1));
    let traffic = Traffic::start(a, b);
    traffic.wait_rounds(0, 10, "start");
    let mut ctl = Ctl::new(&emu);
    vf2_recovers(&emu, &mut ctl, &traffic, "before the cases", 0);
    let pid = emu.child.id();
    let baseline = settled_fds_and_threads(pid);
    let vf2_sock = emu.path().join("vf2.sock");
    let started = Instant::now();
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        eprintln!("case {i}: {}", case.name);
        let before = ctl.protocol_errors("vf2");
        let faults_before = ctl.counter("vf2", "queue_faults");
        let rounds = traffic.rounds();
        let mut raw = RawFrontend::connect(&vf2_sock).expect("connect vf2");
        let t = Instant::now();
        let seen = (case.run)(&mut raw);
        let took = t.elapsed();
        drop(raw);
        alive(&mut emu, case.name);
        match &seen {
            Ok(s) if *s == case.expect => {}
            other => failures.push(format!(
                "{}: expected {:?}, saw {other:?}",
                case.name, case.expect
            )),
        }
        // Counted once if the back-end ended the connection, not at all if we did.
        let want = before + u64::from(case.expect != Seen::Accepted);
        if !holds_within(|| ctl.protocol_errors("vf2") == want) {
            failures.push(format!(
                "{}: protocol_errors {} (expected {want})",
                case.name,
                ctl.protocol_errors("vf2")
            ));
        }
        wait_until(&format!("{}: vf2 detached", case.name), || {
            !ctl.attached("vf2")
        });
        // An accepted ring the data plane cannot use is a counted queue fault.
        if case.expect == Seen::Accepted && ctl.counter("vf2", "queue_faults") == faults_before {
            failures.push(format!("{}: no queue fault counted", case.name));
        }
        traffic.wait_rounds(rounds, 5, case.name);
        vf2_recovers(&emu, &mut ctl, &traffic, case.name, i as u32 + 1);
        alive(&mut emu, case.name);
        report.push(format!("{:<70} {:?} in {took:.1?}", case.name, seen));
    }
    // The descriptors and threads of the failed connections must be gone: measured with vf2
    // detached and vf0 and vf1 attached, as at the baseline.
    let (after, fds_after) = (settled_fds_and_threads(pid), fd_list(pid));
    let elapsed = started.elapsed();
    let rep = traffic.stop();
    eprintln!("{}", report.join("\n"));
    eprintln!(
        "vf0<->vf1: {} sent, {} received byte-exact, longest round trip {:?}",
        rep.sent, rep.received, rep.longest
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(rep.errors.is_empty(), "traffic: {}", rep.errors.join("\n"));
    assert_eq!(rep.sent, rep.received);
    // No case held the data plane up (a round trip is tens of microseconds).
    assert!(
        rep.longest < Duration::from_secs(1),
        "a round trip took {:?}",
        rep.longest
    );
    assert!(
        after.0 <= baseline.0 && after.1 <= baseline.1,
        "(descriptors, threads) {after:?}, {baseline:?} before the cases; descriptors: {fds_after}"
    );
    for p in ["vf0", "vf1"] {
        let c = &ctl.port(p)["counters"];
        assert_eq!(c["protocol_errors"], 0, "{p}");
        assert_eq!(c["drop_malformed"], 0, "{p}");
    }
    // No thread of the emulator panicked (a request thread would, on an overflow in debug).
    let log = emu.log();
    assert!(!log.contains("panicked"), "{log}");
    // The log names the failures at a limited rate: at most one line per port per 10 s.
    let lines = log
        .lines()
        .filter(|l| l.contains("vhost-user protocol error"))
        .count();
    let most = 1 + elapsed.as_secs() as usize / 10;
    assert!(
        (1..=most).contains(&lines),
        "{lines} protocol error lines in {elapsed:?}"
    );
}

/// Every port's control traffic is served from one thread (issue 14, item 4): a frontend that
/// sends part of a message and stalls must not hold the other ports up. While vf2's frontend
/// stalls, vf0 and vf1 attach and exchange a frame each way without waiting for it; vf2's
/// connection is closed once the stall has lasted `STALL_LIMIT`, counted as a protocol error,
/// and vf2 serves the next frontend.
#[test]
fn a_frontend_stalled_mid_message_holds_up_no_other_port() {
    let emu = Emu::start(&["--vfs", "3", "--pv-ports", "0", "--channels-per-vf", "1"]);
    let mut ctl = Ctl::new(&emu);
    let stalls = [
        (
            "half a header",
            header(req(R::GET_FEATURES), VERSION, 0)[..6].to_vec(),
        ),
        (
            "a header and half its body",
            message(req(R::SET_FEATURES), VERSION, 8, 4),
        ),
    ];
    for (i, (what, bytes)) in stalls.iter().enumerate() {
        let before = ctl.protocol_errors("vf2");
        let mut raw = RawFrontend::connect(emu.path().join("vf2.sock")).expect("connect vf2");
        raw.send_bytes(bytes, &[]).expect("send");
        let stalled = Instant::now();
        wait_until(&format!("{what}: vf2 attached"), || ctl.attached("vf2"));

        let t = Instant::now();
        let mut a = connect(emu.path(), "vf0", pairs(1, 1));
        let mut b = connect(emu.path(), "vf1", pairs(1, 1));
        let seq = i as u32;
        let to_b = udp_frame(vf_mac(1), vf_mac(0), 1000, 2000, seq, 200);
        let to_a = udp_frame(vf_mac(0), vf_mac(1), 2000, 1000, seq, 300);
        a.send_wait(0, &to_b, WAIT).expect("vf0 sends");
        assert_eq!(
            b.recv_timeout(0, WAIT).as_deref(),
            Some(&to_b[..]),
            "{what}"
        );
        b.send_wait(0, &to_a, WAIT).expect("vf1 sends");
        assert_eq!(
            a.recv_timeout(0, WAIT).as_deref(),
            Some(&to_a[..]),
            "{what}"
        );
        let others = t.elapsed();
        assert!(
            others < STALL_LIMIT,
            "{what}: vf0 and vf1 took {others:?} to attach and exchange frames"
        );

        let closed = raw
            .closed_within(STALL_LIMIT + Duration::from_secs(3))
            .expect("read vf2");
        let after = stalled.elapsed();
        assert!(
            closed,
            "{what}: vf2's stalled frontend still connected after {after:?}"
        );
        assert!(
            after >= STALL_LIMIT - Duration::from_millis(100),
            "{what}: closed after {after:?}, before the stall limit"
        );
        wait_until(&format!("{what}: one protocol error"), || {
            ctl.protocol_errors("vf2") == before + 1
        });
        wait_until(&format!("{what}: vf2 detached"), || !ctl.attached("vf2"));
        drop((a, b));
        let c = connect(emu.path(), "vf2", pairs(1, 1));
        wait_until(&format!("{what}: vf2 serves the next frontend"), || {
            ctl.attached("vf2")
        });
        drop(c);
        wait_until(&format!("{what}: vf2 detached again"), || {
            !ctl.attached("vf2")
        });
    }
    for p in ["vf0", "vf1"] {
        assert_eq!(ctl.protocol_errors(p), 0, "{p}");
    }
    assert!(
        emu.log().contains("left a message unfinished"),
        "{}",
        emu.log()
    );
}
