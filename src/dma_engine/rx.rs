//! RX: frames written into a guest's RX ring, with mergeable buffers, one group at a time.
//!
//! The caller holds the ring's lock for the group and gives the device's indices in; `finish`
//! gives them back with whether the guest wants an interrupt. Frames never wait for buffers:
//! without one a frame is refused (`RxDrop::NoBuffer`) and the caller counts it.

use super::copy::write_segments;
use super::dirty_log::{mark_segments, LogArea};
use super::frame::{copy_first_chain, copy_frame_range, FrameView};
use super::guest_map::GuestMap;
use super::net_hdr::{rx_header, vnet_hdr_len};
use super::ring::SplitRing;
use super::segments::{Direction, Segments};
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

/// RX descriptors prefetched when a group opens.
const RX_PREFETCH: usize = 32;
/// How many chains ahead of the one being written the buffers are prefetched: the first
/// store into a buffer waits for a line that is dirty in the guest's cache on another core
/// (about as long as writing a few small frames), so one ahead is too late.
const RX_BUFFER_AHEAD: u16 = 6;
/// Most RX chains one (mergeable) frame may span.
const MAX_RX_CHAINS: usize = 64;

/// Why a frame was not written into an RX ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDrop {
    /// No usable buffer (none posted, or the ring is not usable now).
    NoBuffer,
    /// The buffers are too small and mergeable buffers were not negotiated.
    Oversize,
    /// (The uplink) the frame does not fit the wire's MTU after encapsulation.
    Mtu,
}

/// The driver's avail index is further ahead than the ring is long: a broken driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("RX avail index {avail} is more than the ring size ahead of {next}")]
pub struct AvailOverrun {
    pub avail: u16,
    pub next: u16,
}

/// Used elements staged on the host while a group is written, and copied into the guest's
/// used ring together just before the index is published (DPDK's shadow used ring). Written
/// one by one between the frame copies, each element's store waited behind the copies' cache
/// misses and pulled the used ring's lines, which the driver polls, back and forth.
pub struct UsedShadow {
    entries: Box<[(u16, u32)]>,
}

/// Used elements staged before a flush (more in a group are flushed as they fill it).
const USED_SHADOW_LEN: usize = 256;

impl Default for UsedShadow {
    fn default() -> Self {
        UsedShadow {
            entries: vec![(0, 0); USED_SHADOW_LEN].into_boxed_slice(),
        }
    }
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
    /// The device's avail position when the group opened: a group takes at most one ring's
    /// worth of chains from there (more would wrap its own used entries before the guest saw
    /// them).
    old_avail: u16,
    old_used: u16,
    /// Used elements not yet in the guest's ring: `shadow[..staged]`, from used position
    /// `staged_from`.
    shadow: &'a mut [(u16, u32)],
    staged: usize,
    staged_from: u16,
    /// Avail position of the next chain whose buffer is to be prefetched.
    buffer_ahead: u16,
    hdr_len: usize,
    mergeable: bool,
    /// The dirty log while the frontend migrates the guest: every buffer and used-ring write
    /// is marked in it.
    log: Option<&'a LogArea>,
    /// Chains the guest posted broken (read-only, outside its memory, shorter than the
    /// header), handed back empty.
    bad_buffers: u32,
}

impl<'a> RxFill<'a> {
    /// Starts a group at the device's indices `next_avail`/`next_used` (under the ring's lock),
    /// for `expected` frames, with the negotiated `features`, staging used elements in
    /// `shadow`. Fails if the driver's avail index is more than a ring ahead (the queue is
    /// broken until the driver fixes it).
    pub fn open(
        map: &'a GuestMap,
        ring: &'a SplitRing,
        next_avail: u16,
        next_used: u16,
        features: u64,
        expected: usize,
        shadow: &'a mut UsedShadow,
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
            old_avail: next_avail,
            old_used: next_used,
            shadow: &mut shadow.entries,
            staged: 0,
            staged_from: next_used,
            buffer_ahead: next_avail,
            hdr_len: vnet_hdr_len(features),
            mergeable: features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0,
            log: None,
            bad_buffers: 0,
        })
    }

    /// Marks what the group writes in `log` (while the frontend migrates the guest).
    pub fn with_log(mut self, log: Option<&'a LogArea>) -> Self {
        self.log = log;
        self
    }

    /// The next chain the driver made available, if any.
    #[inline]
    fn pop(&mut self) -> Option<u16> {
        if self.cur.next_avail == self.cur.avail_idx {
            let idx = self.ring.avail_idx();
            // An index further ahead than the ring is a broken driver: take nothing. Ahead of
            // where the group opened too: the guest moved it while the group ran (or the
            // group's own writes did, into a buffer over the avail ring).
            let size = self.ring.size();
            if idx.wrapping_sub(self.cur.next_avail) > size
                || idx.wrapping_sub(self.old_avail) > size
            {
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
        if self.staged == self.shadow.len() {
            self.flush_used();
        }
        match self.shadow.get_mut(self.staged) {
            Some(e) => {
                *e = (head, len);
                self.staged += 1;
            }
            None => {
                // No room at all (an empty shadow): straight into the ring.
                self.ring.write_used(self.cur.next_used, head, len);
                self.staged_from = self.staged_from.wrapping_add(1);
            }
        }
        self.cur.next_used = self.cur.next_used.wrapping_add(1);
    }

    /// Writes the staged used elements into the guest's used ring (not published yet).
    fn flush_used(&mut self) {
        let mut pos = self.staged_from;
        for &(head, len) in &self.shadow[..self.staged] {
            self.ring.write_used(pos, head, len);
            pos = pos.wrapping_add(1);
        }
        self.staged = 0;
        self.staged_from = pos;
    }

    /// Writes one frame into the ring: its buffers (several with mergeable RX buffers) get
    /// the virtio-net header and the frame.
    #[inline]
    pub fn deliver(&mut self, f: &FrameView<'_>, rx: &mut RxScratch) -> Result<(), RxDrop> {
        let hdr_len = self.hdr_len;
        let need = hdr_len + f.len;
        let size = self.ring.size();
        let mut nused = 0;
        let mut written = 0;
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
                // Chains are completed in ring order (IN_ORDER): the ones this frame took
                // before the broken one go back empty first, and the frame starts again in
                // the next chain.
                for &(h, _) in &rx.used[..nused] {
                    self.push_used(h, 0);
                }
                nused = 0;
                written = 0;
                if head < size {
                    self.push_used(head, 0);
                }
                self.bad_buffers += 1;
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
                // The buffers of the next frames start loading while this one is written.
                self.prefetch_buffers_ahead();
                // SAFETY: `segs` were just walked as device-writable descriptors with
                // `self.map`, which this fill borrows (so their memory stays mapped); they are
                // guest memory, which no Rust reference points into, so not `f.head`.
                unsafe { copy_first_chain(f, to, segs, hdr_len) }
            } else {
                // SAFETY: as above.
                unsafe { copy_frame_range(f, written - hdr_len, to, segs, 0) }
            };
            if let Some(log) = self.log {
                // The whole chain, written or not: a page marked more is only copied again.
                mark_segments(log, self.map, segs.as_slice());
            }
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
                // Put the chains back for the next frame: they are the last ones popped (any
                // broken chain before them is completed already).
                self.cur.next_avail = self.cur.next_avail.wrapping_sub(nused as u16);
                Err(e)
            }
        }
    }

    /// Prefetches the buffers of the chains up to `RX_BUFFER_AHEAD` past the next one, among
    /// those the driver has made available as last read.
    #[inline]
    fn prefetch_buffers_ahead(&mut self) {
        let next = self.cur.next_avail;
        if self.buffer_ahead.wrapping_sub(next) > RX_BUFFER_AHEAD {
            // Behind (chains were put back, or the group started): restart at the next one.
            self.buffer_ahead = next;
        }
        let end = next.wrapping_add(RX_BUFFER_AHEAD);
        let avail = self.cur.avail_idx;
        while self.buffer_ahead != end && self.buffer_ahead != avail {
            let head = self.ring.avail_entry(self.buffer_ahead);
            self.ring.prefetch_buffer(self.map, head, self.hdr_len);
            self.buffer_ahead = self.buffer_ahead.wrapping_add(1);
        }
    }

    /// Broken chains the group handed back empty so far.
    pub fn bad_buffers(&self) -> u32 {
        self.bad_buffers
    }

    /// Publishes the used buffers. Returns the device's new (next_avail, next_used) and whether
    /// the guest asked for an interrupt.
    pub fn finish(mut self) -> (u16, u16, bool) {
        self.flush_used();
        let used = self.cur.next_used;
        if used != self.old_used {
            self.ring.publish_used(used);
            if let Some(log) = self.log {
                self.ring.mark_used(log);
            }
        }
        let notify = self.ring.needs_notification(self.old_used, used);
        (self.cur.next_avail, used, notify)
    }
}

#[cfg(test)]
mod tests {
    //! Each scenario runs with mergeable RX buffers on and off and with EVENT_IDX on and off.
    use super::*;
    use crate::dma_engine::GuestMem;
    use std::sync::Arc;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress};

    const WRITE: u16 = 2;
    const BUF: u64 = 0x4_0000;
    const BUF_LEN: u32 = 64;
    const HDR: usize = 12;

    struct Rx {
        mem: Arc<GuestMem>,
        q: Queue,
        used_addr: u64,
        avail_addr: u64,
    }

    const DESC: u64 = 0x1000;
    const AVAIL: u64 = 0x2000;
    const USED: u64 = 0x3000;

    /// A 16-entry RX queue with `posted` write-only buffers of 64 bytes available. (Laid out by
    /// hand: virtio-queue's MockSplitQueue puts the used ring over the avail ring's
    /// `used_event` for this size.)
    fn rx_queue(posted: u16, event_idx: bool) -> Rx {
        let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
        for i in 0..posted {
            let d = SplitDescriptor::new(BUF + u64::from(i) * 0x100, BUF_LEN, WRITE, 0);
            mem.write_obj(
                RawDescriptor::from(d),
                GuestAddress(DESC + 16 * u64::from(i)),
            )
            .unwrap();
            mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
                .unwrap();
        }
        mem.write_obj(posted, GuestAddress(AVAIL + 2)).unwrap();
        let mut q = Queue::new(16).unwrap();
        q.set_size(16);
        q.set_desc_table_address(Some(DESC as u32), Some(0));
        q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
        q.set_used_ring_address(Some(USED as u32), Some(0));
        q.set_event_idx(event_idx);
        q.set_ready(true);
        Rx {
            used_addr: USED,
            avail_addr: AVAIL,
            mem,
            q,
        }
    }

    fn features(mergeable: bool) -> u64 {
        let version_1 = 1 << virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
        version_1
            | if mergeable {
                1 << VIRTIO_NET_F_MRG_RXBUF
            } else {
                0
            }
    }

    /// Delivers `frames` (host buffers); returns the results and what `finish` gave.
    fn deliver(
        rx: &Rx,
        mergeable: bool,
        frames: &[Vec<u8>],
    ) -> (Vec<Result<(), RxDrop>>, (u16, u16, bool)) {
        deliver_staging(rx, mergeable, frames, USED_SHADOW_LEN)
    }

    /// `deliver` with room for `staged` used elements before a flush.
    fn deliver_staging(
        rx: &Rx,
        mergeable: bool,
        frames: &[Vec<u8>],
        staged: usize,
    ) -> (Vec<Result<(), RxDrop>>, (u16, u16, bool)) {
        let map = GuestMap::new(rx.mem.clone());
        let ring = SplitRing::map(&rx.q, &map).unwrap();
        let mut shadow = UsedShadow {
            entries: vec![(0, 0); staged].into_boxed_slice(),
        };
        let mut fill = RxFill::open(
            &map,
            &ring,
            0,
            0,
            features(mergeable),
            frames.len(),
            &mut shadow,
        )
        .unwrap();
        let mut scratch = RxScratch::default();
        let mut results = Vec::new();
        for f in frames {
            let mut segs = Segments::default();
            segs.reset(0);
            // SAFETY: `f` outlives `segs`' use in this iteration.
            unsafe { segs.push_host(f.as_ptr() as usize, f.len()) }.unwrap();
            let head = &f[..f.len().min(20)];
            // SAFETY: `segs` points at `f`, alive and not written while `view` is used.
            let view = unsafe { FrameView::new(head, head.len(), f.len(), &segs) };
            results.push(fill.deliver(&view, &mut scratch));
        }
        (results, fill.finish())
    }

    fn buffer(rx: &Rx, i: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        rx.mem
            .read_slice(&mut out, GuestAddress(BUF + i * 0x100))
            .unwrap();
        out
    }

    fn used_elem(rx: &Rx, i: u64) -> (u32, u32) {
        let e: [u32; 2] = rx
            .mem
            .read_obj(GuestAddress(rx.used_addr + 4 + 8 * i))
            .unwrap();
        (e[0], e[1])
    }

    fn frame(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    fn every_mode(scenario: fn(bool, bool)) {
        for mergeable in [false, true] {
            for event_idx in [false, true] {
                scenario(mergeable, event_idx);
            }
        }
    }

    #[test]
    fn a_frame_that_fits_one_buffer() {
        every_mode(|mergeable, event_idx| {
            let rx = rx_queue(4, event_idx);
            let f = frame(40, 1);
            let (r, (next_avail, next_used, _)) = deliver(&rx, mergeable, std::slice::from_ref(&f));
            assert_eq!(
                r,
                vec![Ok(())],
                "mergeable {mergeable} event_idx {event_idx}"
            );
            assert_eq!((next_avail, next_used), (1, 1));
            let got = buffer(&rx, 0, HDR + 40);
            assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
            assert_eq!(got[HDR..], f[..]);
            assert_eq!(used_elem(&rx, 0), (0, (HDR + 40) as u32));
        });
    }

    #[test]
    fn a_frame_longer_than_a_buffer_spans_buffers_only_when_mergeable() {
        every_mode(|mergeable, event_idx| {
            let rx = rx_queue(4, event_idx);
            let f = frame(100, 2);
            let (r, (next_avail, next_used, _)) = deliver(&rx, mergeable, std::slice::from_ref(&f));
            if !mergeable {
                assert_eq!(r, vec![Err(RxDrop::Oversize)]);
                assert_eq!((next_avail, next_used), (0, 0), "the buffer is put back");
                return;
            }
            assert_eq!(r, vec![Ok(())], "event_idx {event_idx}");
            assert_eq!((next_avail, next_used), (2, 2));
            let first = buffer(&rx, 0, 64);
            assert_eq!(u16::from_le_bytes([first[10], first[11]]), 2, "num_buffers");
            let mut got = first[HDR..].to_vec();
            got.extend_from_slice(&buffer(&rx, 1, 100 - (64 - HDR)));
            assert_eq!(got, f);
            assert_eq!(used_elem(&rx, 0), (0, 64));
            assert_eq!(used_elem(&rx, 1), (1, (HDR + 100 - 64) as u32));
        });
    }

    #[test]
    fn chains_are_completed_in_ring_order_around_a_broken_one() {
        // IN_ORDER: the used ring lists the chains in the order they were made available, also
        // when one in the middle of a frame is broken (its address is outside guest memory).
        let rx = rx_queue(5, false);
        let broken = SplitDescriptor::new(0x1000_0000, BUF_LEN, WRITE, 0);
        rx.mem
            .write_obj(RawDescriptor::from(broken), GuestAddress(DESC + 16))
            .unwrap();
        let f = frame(100, 5);
        let (r, (next_avail, next_used, _)) = deliver(&rx, true, std::slice::from_ref(&f));
        assert_eq!(r, vec![Ok(())]);
        assert_eq!((next_avail, next_used), (4, 4));
        let used: Vec<_> = (0..4).map(|i| used_elem(&rx, i)).collect();
        assert_eq!(
            used,
            vec![(0, 0), (1, 0), (2, 64), (3, (HDR + 100 - 64) as u32)],
            "chain 0 goes back empty before the broken chain 1; the frame is in 2 and 3"
        );
        let mut got = buffer(&rx, 2, 64)[HDR..].to_vec();
        got.extend_from_slice(&buffer(&rx, 3, 100 - (64 - HDR)));
        assert_eq!(got, f);
    }

    #[test]
    fn without_buffers_frames_are_refused_not_held() {
        every_mode(|mergeable, event_idx| {
            let rx = rx_queue(1, event_idx);
            let (r, (next_avail, next_used, _)) =
                deliver(&rx, mergeable, &[frame(30, 3), frame(30, 4)]);
            assert_eq!(r, vec![Ok(()), Err(RxDrop::NoBuffer)]);
            assert_eq!((next_avail, next_used), (1, 1));
        });
    }

    #[test]
    fn the_guest_is_notified_as_it_asked() {
        for event_idx in [false, true] {
            // Nothing suppresses: notify.
            let rx = rx_queue(4, event_idx);
            let (_, (_, _, notify)) = deliver(&rx, true, &[frame(30, 5)]);
            assert!(notify, "event_idx {event_idx}");
            // Suppressed: NO_INTERRUPT without EVENT_IDX, used_event further ahead with it.
            let rx = rx_queue(4, event_idx);
            if event_idx {
                let used_event = rx.avail_addr + 4 + 2 * 16;
                rx.mem.write_obj(3u16, GuestAddress(used_event)).unwrap();
            } else {
                rx.mem.write_obj(1u16, GuestAddress(rx.avail_addr)).unwrap();
            }
            let (_, (_, next_used, notify)) = deliver(&rx, true, &[frame(30, 6)]);
            assert_eq!(next_used, 1);
            assert!(
                !notify,
                "event_idx {event_idx}: the guest asked for no interrupt yet"
            );
            if event_idx {
                // Crossing used_event (3) notifies.
                let (_, (_, next_used, notify)) = deliver(
                    &rx,
                    true,
                    &[frame(30, 7), frame(30, 8), frame(30, 9), frame(30, 10)],
                );
                assert_eq!(next_used, 4);
                assert!(notify);
            }
        }
    }

    /// Found by fuzzing (fixtures/fuzz/desc_chain/rx_buffer_over_avail_ring): a buffer over
    /// the avail ring, so that writing a frame into it moves the avail index 4 past the 16
    /// chains already taken and rewrites the ring's first entries. The group must not take
    /// those 4 again: its 20 used entries would wrap over 4 of its own.
    #[test]
    fn a_group_takes_at_most_a_ring_of_chains_even_if_the_avail_index_moves() {
        let rx = rx_queue(16, false);
        let over = AVAIL + 2 - HDR as u64 - 20;
        let d = SplitDescriptor::new(over, BUF_LEN, WRITE, 0);
        rx.mem
            .write_obj(RawDescriptor::from(d), GuestAddress(DESC + 16 * 15))
            .unwrap();
        // Bytes 20..22 land on the avail index (20), then ring entries 0, 1, 2, ...
        let mut f = frame(40, 1);
        f[20..22].copy_from_slice(&20u16.to_le_bytes());
        for k in 0..9u16 {
            f[22 + 2 * usize::from(k)..24 + 2 * usize::from(k)].copy_from_slice(&k.to_le_bytes());
        }
        let frames = vec![f; 20];
        let (r, (next_avail, next_used, _)) = deliver(&rx, false, &frames);
        assert_eq!(r[..16], vec![Ok(()); 16]);
        assert_eq!(r[16..], vec![Err(RxDrop::NoBuffer); 4]);
        assert_eq!((next_avail, next_used), (16, 16));
    }

    #[test]
    fn an_avail_index_past_the_ring_is_refused_at_open() {
        let rx = rx_queue(4, false);
        rx.mem
            .write_obj(4u16 + 17, GuestAddress(rx.avail_addr + 2))
            .unwrap();
        let map = GuestMap::new(rx.mem.clone());
        let ring = SplitRing::map(&rx.q, &map).unwrap();
        assert_eq!(
            RxFill::open(
                &map,
                &ring,
                0,
                0,
                features(true),
                1,
                &mut UsedShadow::default()
            )
            .err(),
            Some(AvailOverrun { avail: 21, next: 0 })
        );
        // A full ring is fine.
        rx.mem
            .write_obj(16u16, GuestAddress(rx.avail_addr + 2))
            .unwrap();
        assert!(RxFill::open(
            &map,
            &ring,
            0,
            0,
            features(true),
            1,
            &mut UsedShadow::default()
        )
        .is_ok());
    }

    /// The used elements staged on the host reach the guest's ring exactly as if written one
    /// by one, however often the staging area fills (or if it has no room at all).
    #[test]
    fn staged_used_elements_reach_the_ring_whatever_the_staging_room() {
        let frames: Vec<Vec<u8>> = (0..12).map(|i| frame(40 + 30 * i, i as u8)).collect();
        for mergeable in [false, true] {
            let used_ring = |rx: &Rx| {
                let mut out = vec![0u8; 4 + 8 * 16];
                rx.mem
                    .read_slice(&mut out, GuestAddress(rx.used_addr))
                    .unwrap();
                out
            };
            let reference = rx_queue(16, false);
            let want = deliver_staging(&reference, mergeable, &frames, USED_SHADOW_LEN);
            for staged in [0, 1, 3, 5] {
                let rx = rx_queue(16, false);
                let got = deliver_staging(&rx, mergeable, &frames, staged);
                assert_eq!(got, want, "mergeable {mergeable}, staging room {staged}");
                assert_eq!(
                    used_ring(&rx),
                    used_ring(&reference),
                    "mergeable {mergeable}, staging room {staged}"
                );
            }
        }
    }
}
