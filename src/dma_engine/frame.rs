//! A frame as one destination receives it, and the copies that write it into RX buffers.
//!
//! A frame is a short head (its first bytes, copied once out of the sender's buffer: every
//! decision was made on that copy, and a VLAN tag may have been inserted into it or stripped
//! from it) followed by the rest, still where the sender left it: a segment list in the
//! sender's guest memory, or in a host buffer a port owns (`Segments::push_host`). Only the
//! copy functions here read it.

use super::copy::{
    copy_segments, copy_short, read_segments, write_segments, write_unless_equal, CopyError,
};
use super::net_hdr::{rx_header, VNET_HDR_MAX};
use super::segments::Segments;

/// Most bytes a frame's head may hold: the header copy plus one inserted VLAN tag.
pub const MAX_HEAD: usize = crate::wire::HEADER_COPY_LEN + 4;

/// One frame for one destination. Its segments are readable for as long as it lives (the
/// contract of `new`), which is what lets the RX side copy from them through a safe call.
#[derive(Clone, Copy)]
pub struct FrameView<'a> {
    /// The frame's first bytes, as this destination receives them.
    pub head: &'a [u8],
    /// Offset in `segs` where the bytes after the head start.
    pub tail_base: usize,
    /// The whole frame's length (head included).
    pub len: usize,
    /// Where the rest of the frame is.
    segs: &'a Segments,
}

impl<'a> FrameView<'a> {
    /// A frame whose first bytes are `head` and whose bytes after it start at offset
    /// `tail_base` of `segs`. `head`, `tail_base` and `len` need not agree with `segs`: a copy
    /// that runs past the segments fails with `CopyError::Short`.
    ///
    /// # Safety
    /// Every segment of `segs` must stay valid for reads for as long as the view (or a copy of
    /// it) lives, and no Rust reference may point into them meanwhile (as for
    /// `Segments::push_host`).
    pub unsafe fn new(head: &'a [u8], tail_base: usize, len: usize, segs: &'a Segments) -> Self {
        FrameView {
            head,
            tail_base,
            len,
            segs,
        }
    }

    /// The same frame with another head of `len` bytes in all (a VLAN tag stripped from it).
    pub fn with_head(&self, head: &'a [u8], len: usize) -> Self {
        FrameView { head, len, ..*self }
    }

    /// Copies the whole frame (its head, then the rest from where the sender left it) into
    /// the start of `out`; `None` if `out` is shorter than the frame or the rest is not all
    /// there.
    pub fn copy_to(&self, out: &mut [u8]) -> Option<usize> {
        let out = out.get_mut(..self.len)?;
        let split = self.head.len().min(self.len);
        out[..split].copy_from_slice(&self.head[..split]);
        // SAFETY: the segments are readable while the view lives (`FrameView::new`'s
        // contract) and are the sender's memory, never `out` (a host buffer of the receiver).
        let read =
            unsafe { read_segments(self.segs.as_slice(), self.tail_base, &mut out[split..]) };
        (read == self.len - split).then_some(self.len)
    }

    /// Copies the frame's first bytes, as many as fit `out` (a capture's snap length); returns
    /// how many were copied (fewer if the rest is not all there).
    pub fn copy_prefix(&self, out: &mut [u8]) -> usize {
        let n = self.len.min(out.len());
        let split = self.head.len().min(n);
        out[..split].copy_from_slice(&self.head[..split]);
        // SAFETY: as in `copy_to`: the segments are readable while the view lives, and `out`
        // is not in them.
        let read =
            unsafe { read_segments(self.segs.as_slice(), self.tail_base, &mut out[split..n]) };
        split + read
    }
}

/// Writes the virtio-net header (for one buffer) and frame bytes `[0, to)` into the first RX
/// chain `dst`: header and head straight into the first buffer when they fit it (else staged
/// and written across the segments), the rest from the sender's buffer.
///
/// # Safety
/// As for `copy_frame_range`: `dst`'s segments valid for writes, not overlapping `f.head`.
#[inline]
pub unsafe fn copy_first_chain(
    f: &FrameView<'_>,
    to: usize,
    dst: &Segments,
    hdr_len: usize,
) -> Result<(), CopyError> {
    let hdr_len = hdr_len.min(VNET_HDR_MAX);
    let split = f.head.len().min(to).min(MAX_HEAD);
    let hdr = rx_header(1);
    match dst.as_slice().first() {
        // The usual case: header and head fit the first buffer. Written in place, with no
        // staging copy (DPDK's `mbuf_to_desc` does the same).
        Some(s) if s.len as usize >= hdr_len + split => {
            let p = s.host as *mut u8;
            // SAFETY: `p..p + hdr_len + split` is inside `dst`'s first segment, writable and
            // not overlapping `hdr` (a local) or `f.head` (the caller's contract).
            unsafe {
                write_unless_equal(hdr.as_ptr(), p, hdr_len);
                copy_short(f.head.as_ptr(), p.add(hdr_len), split);
            }
        }
        _ => {
            let mut buf = [0u8; VNET_HDR_MAX + MAX_HEAD];
            buf[..VNET_HDR_MAX].copy_from_slice(&hdr);
            let room = &mut buf[hdr_len..hdr_len + split];
            // SAFETY: `room` and `f.head[..split]` are both `split` bytes of distinct Rust
            // buffers.
            unsafe { copy_short(f.head.as_ptr(), room.as_mut_ptr(), split) };
            // SAFETY: `dst`'s segments are writable (the caller's contract) and cannot
            // overlap `buf`, a local array.
            unsafe { write_segments(dst.as_slice(), 0, &buf[..hdr_len + split])? };
        }
    }
    if split < to {
        // SAFETY: the caller's contract, passed on.
        unsafe { copy_frame_range(f, split, to, dst, hdr_len + split) }
    } else {
        Ok(())
    }
}

/// Copies frame bytes `[from, to)` into `dst` at `dst_off`: the part covered by the head from
/// the head, the rest from the sender's buffer.
///
/// # Safety
/// Every segment of `dst` must be valid for writes for the call (translated with a
/// `GuestMap` that is still alive, or a host buffer under `Segments::push_host`'s contract)
/// and must not overlap `f.head`. The frame's own segments are readable: `FrameView::new`'s
/// contract.
#[inline]
pub unsafe fn copy_frame_range(
    f: &FrameView<'_>,
    from: usize,
    to: usize,
    dst: &Segments,
    dst_off: usize,
) -> Result<(), CopyError> {
    let split = f.head.len().clamp(from, to);
    if from < split {
        // SAFETY: `dst`'s segments are writable and do not overlap `f.head` (the caller's
        // contract).
        unsafe { write_segments(dst.as_slice(), dst_off, &f.head[from..split])? };
    }
    if split < to {
        // SAFETY: `f.segs` are readable while `f` lives (`FrameView::new`) and `dst`'s are
        // writable (the caller's contract); nothing borrows either (no Rust reference may
        // point into them, by both contracts).
        unsafe {
            copy_segments(
                f.segs.as_slice(),
                f.tail_base + (split - f.head.len()),
                dst.as_slice(),
                dst_off + (split - from),
                to - split,
            )?
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_from_a_host_buffer_is_copied_with_its_head() {
        // The sender's buffer: 12 bytes of its own header, then the frame.
        let frame: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
        let mut src = vec![0u8; 12];
        src.extend_from_slice(&frame);
        let mut segs = Segments::default();
        segs.reset(0);
        // SAFETY: `src` outlives `segs`' use below and is only read, through the segments,
        // until then.
        unsafe { segs.push_host(src.as_ptr() as usize, src.len()) }.unwrap();
        // The head as the switch left it: the first 40 bytes with a byte changed.
        let mut head = frame[..40].to_vec();
        head[0] = 0xee;
        // SAFETY: `segs` points into `src`, as above.
        let f = unsafe { FrameView::new(&head, 12 + 40, frame.len(), &segs) };
        // Two destination buffers: the first holding header and head (written in place), or
        // too short for them (staged and written across both), then 400 bytes.
        for first in [100, 52, 51, 20, 12] {
            let mut d1 = vec![0u8; first];
            let mut d2 = vec![0u8; 400];
            let mut dst = Segments::default();
            dst.reset(0);
            // SAFETY: `d1` and `d2` outlive `dst`'s use below and are not touched but through
            // the segments until then.
            unsafe {
                dst.push_host(d1.as_mut_ptr() as usize, d1.len()).unwrap();
                dst.push_host(d2.as_mut_ptr() as usize, d2.len()).unwrap();
            }
            // SAFETY: `dst`'s segments are `d1` and `d2`, live and writable, apart from `head`.
            unsafe { copy_first_chain(&f, frame.len(), &dst, 12) }.unwrap();
            let mut out = vec![0u8; 12 + frame.len()];
            // SAFETY: `dst`'s segments are still `d1` and `d2`, apart from `out`.
            let read = unsafe { read_segments(dst.as_slice(), 0, &mut out) };
            assert_eq!(read, out.len());
            assert_eq!(out[..12], rx_header(1)[..12], "first buffer {first}");
            let mut want = frame.clone();
            want[0] = 0xee;
            assert_eq!(
                out[12..],
                want[..],
                "first buffer {first}: head from the copy, the rest from the buffer"
            );
        }
        let mut want = frame.clone();
        want[0] = 0xee;
        let mut linear = vec![0u8; frame.len() + 5];
        assert_eq!(f.copy_to(&mut linear), Some(frame.len()));
        assert_eq!(linear[..frame.len()], want[..]);
        assert_eq!(f.copy_to(&mut linear[..frame.len() - 1]), None, "too short");
    }
}
