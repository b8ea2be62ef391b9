//! The seam for the uplink (`port::TxQueues`, `port::RxQueues`): a data-plane worker's handle
//! on the wire. Frames from the wire are "transmitted" into the switch by the worker that owns
//! the uplink's queue; any worker delivers frames onto the wire.
//!
//! - TAP: one `read` per frame into buffers allocated once (a TAP has no batch read), one
//!   `write` per frame from a linear copy.
//! - VXLAN: one `recvmmsg` per batch, decapsulated in place; frames onto the wire are copied
//!   behind a VXLAN header into send slots and sent with one `sendmmsg` per group (per
//!   destination remote, or every remote for a flood: head-end replication). With `offload=on`
//!   (the default) frames of one size to one remote leave as one UDP GSO message, and the
//!   socket takes UDP GRO trains: a received buffer may hold up to 64 frames, handed to the
//!   switch over as many pops as it takes.

use super::device::{
    Uplink, UplinkCounters, Vxlan, Wire, KEEPALIVE_DST, KEEPALIVE_ETHERTYPE, RX_BUF,
};
use super::tap::TapError;
use super::udp_batch::{UdpBatch, BUF_SIZE_MAX};
use super::vxlan_header;
use crate::port::{
    FrameView, QueueFault, RxBatch, RxDrop, RxQueues, RxScratch, TxFrame, TxPop, TxQueues, Unsent,
};
use crate::rss::EnabledQueues;
use crate::switch::ALL_REMOTES;
use std::sync::Arc;

/// Most frames one pop takes (the pipeline's batch).
const BATCH: usize = crate::port::MAX_BATCH;
/// Busy-poll rounds an empty wire is left alone (a read is a syscall; a vhost ring is a load).
const IDLE_ROUNDS: u32 = 16;

/// A worker's handle on the uplink.
pub struct UplinkIo {
    up: Arc<Uplink>,
    poll: bool,
    /// Busy-poll rounds left before the wire is read again.
    idle: u32,
    /// Frames from the wire (the owning worker only), made on first use.
    rx: Option<Box<RxSide>>,
    /// Frames onto the wire, made on first use.
    tx: Option<Box<TxSide>>,
}

// Boxed where kept (`UplinkIo::rx`), made once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum RxSide {
    /// One buffer per frame of a batch.
    Tap(Box<[u8]>),
    Vxlan(VxlanRx),
}

/// This worker's receive slots, and where in the last receive the next pop goes on.
struct VxlanRx {
    batch: UdpBatch,
    /// The next received message to hand over.
    next: usize,
    /// Bytes of message `next` handed over already (its first GRO segments).
    offset: usize,
}

#[allow(clippy::large_enum_variant)]
enum TxSide {
    /// The frame copied out before its `write`.
    Tap(Box<[u8]>),
    Vxlan(VxlanTx),
}

/// This worker's send slots, and what each queued datagram carries (for exact counting when
/// the kernel drops the tail of a batch).
struct VxlanTx {
    batch: UdpBatch,
    /// Per queued datagram: (remote, frame length, first copy of its frame).
    queued: Vec<(u16, u32, bool)>,
}

impl UplinkIo {
    pub fn new(up: Arc<Uplink>, poll: bool) -> Self {
        UplinkIo {
            up,
            poll,
            idle: 0,
            rx: None,
            tx: None,
        }
    }

    fn rx_side(&mut self) -> Option<&mut RxSide> {
        if self.rx.is_none() {
            let side = match self.up.wire() {
                Wire::Tap(_) => RxSide::Tap(vec![0u8; BATCH * RX_BUF].into_boxed_slice()),
                Wire::Vxlan(v) => {
                    let sock = v.socket.try_clone().ok()?;
                    let batch = if v.offload {
                        gro_batch(sock)?
                    } else {
                        UdpBatch::with_sizes(sock, BATCH, RX_BUF, 0).ok()?
                    };
                    RxSide::Vxlan(VxlanRx {
                        batch,
                        next: 0,
                        offset: 0,
                    })
                }
            };
            self.rx = Some(Box::new(side));
        }
        self.rx.as_deref_mut()
    }

    fn tx_side(&mut self) -> Option<&mut TxSide> {
        if self.tx.is_none() {
            let max = self.up.max_frame();
            let side = match self.up.wire() {
                Wire::Tap(_) => TxSide::Tap(vec![0u8; max].into_boxed_slice()),
                Wire::Vxlan(v) => {
                    let sock = v.socket.try_clone().ok()?;
                    let slot = max + vxlan_header::VXLAN_HDR_LEN;
                    let mut batch = UdpBatch::with_sizes(sock, BATCH, 0, slot).ok()?;
                    if v.offload {
                        if let Err(e) = batch.enable_gso() {
                            tracing::info!("uplink: no UDP GSO on this kernel ({e})");
                        }
                    }
                    TxSide::Vxlan(VxlanTx {
                        batch,
                        queued: Vec::with_capacity(BATCH),
                    })
                }
            };
            self.tx = Some(Box::new(side));
        }
        self.tx.as_deref_mut()
    }

    /// Reads up to `frames.len()` frames from TAP queue `qp`.
    fn pop_tap(&mut self, qp: usize, frames: &mut [TxFrame]) -> usize {
        let up = self.up.clone();
        let Wire::Tap(tap) = up.wire() else {
            return 0;
        };
        if qp >= tap.queues() {
            return 0;
        }
        let Some(RxSide::Tap(bufs)) = self.rx_side() else {
            return 0;
        };
        let mut n = 0;
        while n < frames.len() {
            let buf = &mut bufs[n * RX_BUF..(n + 1) * RX_BUF];
            up.counters.rx_syscalls.inc();
            match tap.read_frame(qp, buf) {
                Ok(Some(len)) => {
                    let ptr = buf.as_ptr() as usize;
                    // SAFETY: `buf` is this worker's receive buffer, left alone until the next
                    // `pop`, after the pipeline completed this batch; no reference into it is
                    // kept (`buf` ends here).
                    if unsafe { fill(&mut frames[n], ptr, len, 0) } {
                        n += 1;
                    }
                }
                Ok(None) => break,
                Err(TapError::Truncated { .. }) => up.counters.drop_truncated.inc(),
                Err(TapError::Offloaded { .. }) => up.counters.drop_offloaded.inc(),
                Err(e) => {
                    up.counters.device_errors.inc();
                    up.set_broken(&e);
                    break;
                }
            }
        }
        n
    }

    /// Receives and decapsulates up to `frames.len()` frames: first what is left of the last
    /// receive (the rest of a GRO train), else one `recvmmsg`. Never receives into buffers
    /// that frames of this pop point into.
    fn pop_vxlan(&mut self, frames: &mut [TxFrame]) -> usize {
        let up = self.up.clone();
        let Wire::Vxlan(v) = up.wire() else {
            return 0;
        };
        let Some(RxSide::Vxlan(rx)) = self.rx_side() else {
            return 0;
        };
        let c = &up.counters;
        loop {
            if rx.next >= rx.batch.received() {
                c.rx_syscalls.inc();
                rx.next = 0;
                rx.offset = 0;
                match rx.batch.recv() {
                    Ok(0) => return 0,
                    Ok(_) => {}
                    Err(e) => {
                        c.device_errors.inc();
                        tracing::warn!("uplink: receiving failed: {e}");
                        return 0;
                    }
                }
            }
            let full = rx.batch.received() == rx.batch.batch();
            let n = decap(v, c, rx, frames);
            // Frames of this pop point into the receive slots: hand them over first. A full
            // receive of nothing but keepalives or errors: look again.
            if n > 0 || !full || rx.next < rx.batch.received() {
                return n;
            }
        }
    }
}

/// Hands over frames from `rx`'s last receive, from where the previous pop stopped, into
/// `frames`: how many. Datagrams that are not frames for the switch are counted and skipped.
fn decap(v: &Vxlan, c: &UplinkCounters, rx: &mut VxlanRx, frames: &mut [TxFrame]) -> usize {
    let mut n = 0;
    while rx.next < rx.batch.received() {
        let Some(d) = rx.batch.datagram(rx.next) else {
            rx.next += 1;
            continue;
        };
        let remote = v.remotes.classify(d.src);
        let Some(remote) = remote.filter(|_| !d.truncated) else {
            if remote.is_none() {
                c.drop_unknown_remote.add(d.segments().count() as u64);
            } else {
                c.drop_truncated.inc();
            }
            rx.next += 1;
            rx.offset = 0;
            continue;
        };
        let rest = d.data.get(rx.offset..).unwrap_or_default();
        for seg in rest.chunks(d.segment.max(1)) {
            if n == frames.len() {
                return n;
            }
            rx.offset += seg.len();
            let inner = match vxlan_header::decode(seg) {
                Ok((vni, inner)) if vni == v.vni => inner,
                Ok(_) => {
                    c.drop_vni.inc();
                    continue;
                }
                Err(_) => {
                    c.drop_decap.inc();
                    continue;
                }
            };
            v.remotes.heard(usize::from(remote));
            if inner[..6] == KEEPALIVE_DST && inner[12..14] == KEEPALIVE_ETHERTYPE.to_be_bytes() {
                c.keepalives_rx.inc();
                continue;
            }
            if let Some(r) = v.remotes.get(usize::from(remote)) {
                r.counters.rx_packets.inc();
                r.counters.rx_bytes.add(inner.len() as u64);
            }
            let (ptr, len) = (inner.as_ptr() as usize, inner.len());
            // SAFETY: the datagram is in this worker's receive slots, which are not written
            // again before the next `recv`: in a later pop, after the pipeline completed this
            // batch (`pop_vxlan` receives only when this pop has no frame yet); `inner` is not
            // used after this.
            if unsafe { fill(&mut frames[n], ptr, len, remote) } {
                n += 1;
            }
        }
        rx.next += 1;
        rx.offset = 0;
    }
    n
}

/// A receive batch with UDP GRO (64 KiB slots), or without it (`RX_BUF` slots) on a kernel that
/// has none.
fn gro_batch(sock: std::net::UdpSocket) -> Option<UdpBatch> {
    let plain = sock.try_clone().ok()?;
    let mut b = UdpBatch::with_sizes(sock, BATCH, BUF_SIZE_MAX, 0).ok()?;
    match b.enable_gro() {
        Ok(()) => Some(b),
        Err(e) => {
            tracing::info!("uplink: no UDP GRO on this kernel ({e})");
            UdpBatch::with_sizes(plain, BATCH, RX_BUF, 0).ok()
        }
    }
}

/// Points `f` at the `len`-byte frame at host address `ptr` that came from `remote`.
///
/// # Safety
/// `[ptr, ptr + len)` must stay valid for reads, with no Rust reference into it, until the
/// batch `f` belongs to is completed.
unsafe fn fill(f: &mut TxFrame, ptr: usize, len: usize, remote: u16) -> bool {
    f.segs.reset(0);
    f.from = remote;
    f.returnable = true;
    // SAFETY: the caller's contract is `push_host`'s.
    if unsafe { f.segs.push_host(ptr, len) }.is_err() {
        return false;
    }
    // SAFETY: the segments were just made readable (above). A frame shorter than an
    // Ethernet header still enters: the pipeline counts it malformed.
    unsafe { f.take_head(0, len) };
    true
}

impl TxQueues for UplinkIo {
    /// Nothing to give back: the buffers are reused by the next pop.
    type Batch = ();

    fn pop(&mut self, qp: usize, frames: &mut [TxFrame]) -> TxPop<()> {
        if self.poll && self.idle > 0 {
            self.idle -= 1;
            return TxPop::Empty;
        }
        if self.up.is_broken() {
            // Logged and counted once when it broke (`Uplink::set_broken`).
            return TxPop::Empty;
        }
        let take = frames.len().min(BATCH);
        let frames = &mut frames[..take];
        let n = match self.up.wire() {
            Wire::Tap(_) => self.pop_tap(qp, frames),
            Wire::Vxlan(_) => {
                if qp != 0 {
                    return TxPop::Empty;
                }
                self.pop_vxlan(frames)
            }
        };
        if n == 0 {
            self.idle = IDLE_ROUNDS;
            return TxPop::Empty;
        }
        TxPop::Batch(n, ())
    }

    /// Frames from the wire are never held back (no rate applies to them, and none of them
    /// goes back onto the wire): `sent` is all of them.
    fn complete(&mut self, _qp: usize, _frames: &[TxFrame], _batch: (), _sent: usize) {}
}

impl RxQueues for UplinkIo {
    type Open<'a> = UplinkRx<'a>;

    /// One queue: the wire.
    fn enabled(&self) -> EnabledQueues {
        EnabledQueues::from_mask(1)
    }

    /// `queue` is the remote the frames go to (`switch::ALL_REMOTES`: every remote).
    fn open(&mut self, queue: usize, _expected: usize) -> Result<Option<UplinkRx<'_>>, QueueFault> {
        let up = self.up.clone();
        let Some(side) = self.tx_side() else {
            return Ok(None);
        };
        Ok(Some(UplinkRx {
            up,
            side,
            remote: u16::try_from(queue).unwrap_or(ALL_REMOTES),
            unsent: Unsent::default(),
        }))
    }
}

/// Frames onto the wire, for one remote (or all of them).
pub struct UplinkRx<'a> {
    up: Arc<Uplink>,
    side: &'a mut TxSide,
    remote: u16,
    unsent: Unsent,
}

/// Sends what `side` has queued; frames none of whose copies went out are added to `unsent`.
/// (A function of the parts, not of `UplinkRx`, so that `push` can call it while it reads the
/// uplink it borrows: no `Arc` clone per frame.)
fn flush(up: &Uplink, side: &mut TxSide, unsent: &mut Unsent) {
    let TxSide::Vxlan(tx) = side else {
        return;
    };
    let Wire::Vxlan(v) = up.wire() else {
        return;
    };
    let c = &up.counters;
    let count = tx.queued.len();
    let r = match tx.batch.flush() {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("uplink: sending failed: {e}");
            c.device_errors.inc();
            super::udp_batch::FlushResult {
                dropped: count,
                ..Default::default()
            }
        }
    };
    c.tx_syscalls.add(r.syscalls as u64);
    c.send_errors.add(r.failed as u64);
    // The kernel drops the tail of a batch: everything from `sent_end` on.
    let sent_end = count - r.dropped.min(count);
    for (i, &(remote, len, first)) in tx.queued.iter().enumerate() {
        if i < sent_end {
            if let Some(rc) = v.remotes.get(usize::from(remote)) {
                rc.counters.tx_packets.inc();
                rc.counters.tx_bytes.add(u64::from(len));
            }
        } else if first {
            // The frame's copies are queued together: if its first is in the dropped
            // tail, all are.
            unsent.frames += 1;
            unsent.bytes += u64::from(len);
        }
    }
    tx.queued.clear();
}

impl RxBatch for UplinkRx<'_> {
    fn push(&mut self, frame: &FrameView<'_>, _scratch: &mut RxScratch) -> Result<(), RxDrop> {
        let up = &*self.up;
        if frame.len > up.max_frame() {
            return Err(RxDrop::Mtu);
        }
        match (&mut *self.side, up.wire()) {
            (TxSide::Tap(buf), Wire::Tap(tap)) => {
                let len = frame.copy_to(buf).ok_or(RxDrop::NoBuffer)?;
                up.counters.tx_syscalls.inc();
                match tap.write_frame(0, &[&buf[..len]]) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(RxDrop::NoBuffer),
                    Err(_) => {
                        // Down (EIO) between two carrier checks, or deleted.
                        up.counters.device_errors.inc();
                        Err(RxDrop::NoBuffer)
                    }
                }
            }
            (TxSide::Vxlan(_), Wire::Vxlan(v)) => {
                let (first, end) = if self.remote == ALL_REMOTES {
                    (0, v.remotes.len())
                } else {
                    let r = usize::from(self.remote);
                    (r, (r + 1).min(v.remotes.len()))
                };
                let mut copies = 0;
                for r in first..end {
                    let Some(addr) = v.remotes.get(r).map(|x| x.addr) else {
                        continue;
                    };
                    if matches!(&*self.side, TxSide::Vxlan(tx) if tx.queued.len() >= tx.batch.batch())
                    {
                        flush(up, self.side, &mut self.unsent);
                    }
                    let TxSide::Vxlan(tx) = &mut *self.side else {
                        break;
                    };
                    let Ok(Some(mut slot)) = tx.batch.tx_slot(addr) else {
                        continue;
                    };
                    let buf = slot.buf();
                    buf[..vxlan_header::VXLAN_HDR_LEN]
                        .copy_from_slice(&vxlan_header::encode(v.vni));
                    let Some(len) = frame.copy_to(&mut buf[vxlan_header::VXLAN_HDR_LEN..]) else {
                        continue;
                    };
                    if slot.commit(vxlan_header::VXLAN_HDR_LEN + len).is_ok() {
                        tx.queued.push((r as u16, len as u32, copies == 0));
                        copies += 1;
                    }
                }
                if copies == 0 {
                    return Err(RxDrop::NoBuffer);
                }
                Ok(())
            }
            _ => Err(RxDrop::NoBuffer),
        }
    }

    fn close(mut self) -> Unsent {
        flush(&self.up, self.side, &mut self.unsent);
        self.unsent
    }
}
