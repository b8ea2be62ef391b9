//! RX: frames written into a guest's RX ring, with mergeable buffers, one group at a time.
//!
//! The caller holds the ring's lock for the group and gives the device's indices in; `finish`
//! gives them back with whether the guest wants an interrupt. Frames never wait for buffers:
//! without one a frame is refused (`RxDrop::NoBuffer`) and the caller counts it.

use super::copy::write_segments;
use super::frame::{copy_first_chain, copy_frame_range, FrameView};
use super::guest_map::GuestMap;
use super::net_hdr::{rx_header, vnet_hdr_len};
use super::ring::SplitRing;
use super::segments::{Direction, Segments};
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

/// RX descriptors prefetched when a group opens.
const RX_PREFETCH: usize = 32;
/// Most RX chains one (mergeable) frame may span.
const MAX_RX_CHAINS: usize = 64;

/// Why a frame was not written into an RX ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// No usable buffer (none posted, or the ring is not usable now).
    NoBuffer,
    /// The buffers are too small and mergeable buffers were not negotiated.
    Oversize,
}

/// The driver's avail index is further ahead than the ring is long: a broken driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("RX avail index {avail} is more than the ring size ahead of {next}")]
pub struct AvailOverrun {
    pub avail: u16,
    pub next: u16,
}

/// Scratch space for RX chains, reused for every frame.
pub struct RxScratch {
    first: Segments,
    cur: Segments,
    used: [(u16, u32); MAX_RX_CHAINS],
}

impl Default for RxScratch {
    fn default() -> Self {
        RxScratch {
            first: Segments::default(),
            cur: Segments::default(),
            used: [(0, 0); MAX_RX_CHAINS],
        }
    }
}

/// The device's position in one RX ring while a group is written.
struct RxCursor {
    next_avail: u16,
    /// The driver's avail index as last read.
    avail_idx: u16,
    next_used: u16,
}

/// One group of frames written into one RX ring.
pub struct RxFill<'a> {
    map: &'a GuestMap,
    ring: &'a SplitRing,
    cur: RxCursor,
    old_used: u16,
    hdr_len: usize,
    mergeable: bool,
}

impl<'a> RxFill<'a> {
    /// Starts a group at the device's indices `next_avail`/`next_used` (under the ring's lock),
    /// for `expected` frames, with the negotiated `features`. Fails if the driver's avail index
    /// is more than a ring ahead (the queue is broken until the driver fixes it).
    pub fn open(
        map: &'a GuestMap,
        ring: &'a SplitRing,
        next_avail: u16,
        next_used: u16,
        features: u64,
        expected: usize,
    ) -> Result<Self, AvailOverrun> {
        let avail_idx = ring.avail_idx();
        if avail_idx.wrapping_sub(next_avail) > ring.size() {
            return Err(AvailOverrun {
                avail: avail_idx,
                next: next_avail,
            });
        }
        // The descriptors of the buffers the group will take, loading while frames are copied.
        let ahead = usize::from(avail_idx.wrapping_sub(next_avail))
            .min(expected)
            .min(RX_PREFETCH);
        for i in 0..ahead as u16 {
            ring.prefetch_desc(ring.avail_entry(next_avail.wrapping_add(i)));
        }
        Ok(RxFill {
            map,
            ring,
            cur: RxCursor {
                next_avail,
                avail_idx,
                next_used,
            },
            old_used: next_used,
            hdr_len: vnet_hdr_len(features),
            mergeable: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
        })
    }

    /// The next chain the driver made available, if any.
    #[inline]
    fn pop(&mut self) -> Option<u16> {
        if self.cur.next_avail == self.cur.avail_idx {
            let idx = self.ring.avail_idx();
            // An index further ahead than the ring is a broken driver: take nothing.
            if idx.wrapping_sub(self.cur.next_avail) > self.ring.size() {
                return None;
            }
            self.cur.avail_idx = idx;
            if idx == self.cur.next_avail {
                return None;
            }
        }
        let head = self.ring.avail_entry(self.cur.next_avail);
        self.cur.next_avail = self.cur.next_avail.wrapping_add(1);
        Some(head)
    }

    #[inline]
    fn push_used(&mut self, head: u16, len: u32) {
        self.ring.write_used(self.cur.next_used, head, len);
        self.cur.next_used = self.cur.next_used.wrapping_add(1);
    }

    /// Writes one frame into the ring: its buffers (several with mergeable RX buffers) get
    /// the virtio-net header and the frame.
    pub fn deliver(&mut self, f: &FrameView<'_>, rx: &mut RxScratch) -> Result<(), RxDrop> {
        let hdr_len = self.hdr_len;
        let need = hdr_len + f.len;
        let size = self.ring.size();
        let mut nused = 0;
        let mut written = 0;
        // Chains completed with length 0 because the guest posted them broken: once one is in
        // the frame, the popped chains cannot be put back and are completed empty instead.
        let mut poisoned = false;
        let result = loop {
            if written == need {
                break Ok(());
            }
            if nused == MAX_RX_CHAINS {
                break Err(RxDrop::NoBuffer);
            }
            let Some(head) = self.pop() else {
                break Err(RxDrop::NoBuffer);
            };
            let segs = if nused == 0 {
                &mut rx.first
            } else {
                &mut rx.cur
            };
            let walk_ok = self
                .ring
                .walk(self.map, head, Direction::Write, segs)
                .is_ok();
            let cap = segs.total();
            if !walk_ok || (nused == 0 && cap < hdr_len) || cap == 0 {
                if head < size {
                    self.push_used(head, 0);
                }
                poisoned = true;
                continue;
            }
            if !self.mergeable && cap < need {
                rx.used[nused] = (head, 0);
                nused += 1;
                break Err(RxDrop::Oversize);
            }
            let take = cap.min(need - written);
            let to = written + take - hdr_len;
            let copied = if nused == 0 {
                // The next frame's buffer starts loading while this one is written.
                if self.cur.next_avail != self.cur.avail_idx {
                    let next = self.ring.avail_entry(self.cur.next_avail);
                    self.ring.prefetch_buffer(self.map, next);
                }
                // SAFETY: `segs` were just walked as device-writable descriptors with
                // `self.map`, which this fill borrows (so their memory stays mapped); they are
                // guest memory, which no Rust reference points into, so not `f.head`.
                unsafe { copy_first_chain(f, to, segs, hdr_len) }
            } else {
                // SAFETY: as above.
                unsafe { copy_frame_range(f, written - hdr_len, to, segs, 0) }
            };
            if copied.is_err() {
                rx.used[nused] = (head, 0);
                nused += 1;
                break Err(RxDrop::NoBuffer);
            }
            rx.used[nused] = (head, take as u32);
            nused += 1;
            written += take;
        };
        match result {
            Ok(()) => {
                // The first chain got a header for one buffer; more need the real count.
                let hdr_ok = nused == 1 || {
                    let hdr = rx_header(nused as u16);
                    // SAFETY: `rx.first` was walked writable with `self.map` in this call (as
                    // above); `hdr` is a local array.
                    unsafe { write_segments(rx.first.as_slice(), 0, &hdr[..hdr_len]) }.is_ok()
                };
                for &(head, len) in &rx.used[..nused] {
                    // Without a valid header the frame is unusable: hand the buffers back empty.
                    self.push_used(head, if hdr_ok { len } else { 0 });
                }
                if hdr_ok {
                    Ok(())
                } else {
                    Err(RxDrop::NoBuffer)
                }
            }
            Err(e) => {
                if poisoned {
                    for &(head, _) in &rx.used[..nused] {
                        self.push_used(head, 0);
                    }
                } else {
                    // Put the chains back for the next frame.
                    self.cur.next_avail = self.cur.next_avail.wrapping_sub(nused as u16);
                }
                Err(e)
            }
        }
    }

    /// Publishes the used buffers. Returns the device's new (next_avail, next_used) and whether
    /// the guest asked for an interrupt.
    pub fn finish(self) -> (u16, u16, bool) {
        let used = self.cur.next_used;
        if used != self.old_used {
            self.ring.publish_used(used);
        }
        let notify = self.ring.needs_notification(self.old_used, used);
        (self.cur.next_avail, used, notify)
    }
}
