//! Copies between segment lists: one copy from the sender's buffer to the receiver's buffer.
//!
//! The segments hold host addresses inside guest memory mappings, which the guests may write
//! at any time: the bytes copied may be torn, but every address touched is inside a mapping
//! validated when the chain was walked, and no decision is made on guest memory read twice.

use super::segments::Segment;

/// A copy that could not be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("segments too short for the copy")]
    Short,
}

/// A position inside a segment list.
struct Cursor<'s> {
    segs: &'s [Segment],
    idx: usize,
    off: usize,
}

impl<'s> Cursor<'s> {
    #[inline]
    fn at(segs: &'s [Segment], mut off: usize) -> Self {
        let mut idx = 0;
        while idx < segs.len() && off >= segs[idx].len as usize {
            off -= segs[idx].len as usize;
            idx += 1;
        }
        Cursor { segs, idx, off }
    }

    /// The host address and length of the next contiguous piece of at most `max` bytes.
    #[inline]
    fn next_piece(&mut self, max: usize) -> Result<(usize, usize), CopyError> {
        let seg = self.segs.get(self.idx).ok_or(CopyError::Short)?;
        let n = (seg.len as usize - self.off).min(max);
        let host = seg.host + self.off;
        self.off += n;
        if self.off == seg.len as usize {
            self.idx += 1;
            self.off = 0;
        }
        Ok((host, n))
    }
}

/// Writes `src[..n]` over `dst[..n]` only where they differ, in 8-, 4-, 2- and 1-byte pieces
/// (DPDK's `ASSIGN_UNLESS_EQUAL`). For the virtio-net header of an RX buffer: the driver's
/// buffers come back with the header the device wrote there last time (its TX path clears only
/// what it must), so the header is read and left alone, and its cache line stays shared with
/// the driver's core. Written, the line would move to this core and back to the driver's when
/// it reads the header: two transfers per frame, about 200 ns each when the two cores do not
/// share a last-level cache.
///
/// # Safety
/// As for `copy_short`, and `dst..dst + n` must also be valid for reads.
#[inline(always)]
pub(super) unsafe fn write_unless_equal(src: *const u8, dst: *mut u8, n: usize) {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    // SAFETY: every access is inside `[0, n)` of both ranges, which the contract makes
    // readable (both) and writable (`dst`), and disjoint; unaligned reads and writes.
    unsafe {
        let mut i = 0;
        while i + 8 <= n {
            let v = rd(src.add(i) as *const u64);
            if rd(dst.add(i) as *const u64) != v {
                wr(dst.add(i) as *mut u64, v);
            }
            i += 8;
        }
        if i + 4 <= n {
            let v = rd(src.add(i) as *const u32);
            if rd(dst.add(i) as *const u32) != v {
                wr(dst.add(i) as *mut u32, v);
            }
            i += 4;
        }
        if i + 2 <= n {
            let v = rd(src.add(i) as *const u16);
            if rd(dst.add(i) as *const u16) != v {
                wr(dst.add(i) as *mut u16, v);
            }
            i += 2;
        }
        if i < n && *dst.add(i) != *src.add(i) {
            *dst.add(i) = *src.add(i);
        }
    }
}

/// Copies `n` bytes between a guest buffer and a Rust buffer. Frame headers are short: up to
/// 128 bytes go in 16-byte moves inline, without a call into libc's memcpy.
///
/// # Safety
/// `src..src + n` must be valid for reads and `dst..dst + n` for writes, and the two ranges
/// must not overlap. No alignment is needed.
#[inline(always)]
pub(super) unsafe fn copy_short(src: *const u8, dst: *mut u8, n: usize) {
    use std::ptr::{read_unaligned as rd, write_unaligned as wr};
    // SAFETY: in every arm each access is inside `[0, n)` of both ranges (the 16-byte moves
    // stop before `i + 16 >= n` and end with the one at `n - 16`; the 8- and 4-byte pairs
    // start at 0 and end at `n`), which the contract makes readable and writable and
    // disjoint; the moves are unaligned reads and writes, so no alignment is assumed.
    unsafe {
        if n > 128 {
            std::ptr::copy_nonoverlapping(src, dst, n);
        } else if n >= 16 {
            // Straight-line 16-byte moves (as a loop, LLVM turns them back into a memcpy
            // call), then the last 16 bytes, overlapping the previous move when n is not a
            // multiple of 16.
            let mv = |i: usize| wr(dst.add(i) as *mut u128, rd(src.add(i) as *const u128));
            for i in [0, 16, 32, 48, 64, 80, 96] {
                if i + 16 >= n {
                    break;
                }
                mv(i);
            }
            mv(n - 16);
        } else if n >= 8 {
            wr(dst as *mut u64, rd(src as *const u64));
            wr(dst.add(n - 8) as *mut u64, rd(src.add(n - 8) as *const u64));
        } else if n >= 4 {
            wr(dst as *mut u32, rd(src as *const u32));
            wr(dst.add(n - 4) as *mut u32, rd(src.add(n - 4) as *const u32));
        } else {
            for i in 0..n {
                *dst.add(i) = *src.add(i);
            }
        }
    }
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`, guest to guest.
///
/// # Safety
/// For the whole call, every segment of `src` must be valid for reads and every segment of
/// `dst` for writes: segments from `Segments::push_guest` whose `GuestMap` is still alive,
/// or from `Segments::push_host` under its contract. No Rust reference may point into them
/// during the call. `src` and `dst` may overlap.
pub unsafe fn copy_segments(
    src: &[Segment],
    src_off: usize,
    dst: &[Segment],
    dst_off: usize,
    len: usize,
) -> Result<(), CopyError> {
    let mut s = Cursor::at(src, src_off);
    let mut d = Cursor::at(dst, dst_off);
    let mut left = len;
    // Each step copies the overlap of the current source and destination pieces.
    let mut pending: Option<(usize, usize)> = None;
    while left > 0 {
        let (sp, sn) = match pending.take() {
            Some(p) => p,
            None => s.next_piece(left)?,
        };
        let (dp, dn) = d.next_piece(sn)?;
        // SAFETY: `next_piece` gives at most the rest of one segment, so `sp..sp + dn` is
        // inside a readable `src` segment and `dp..dp + dn` inside a writable `dst` segment
        // (the caller's contract); `copy` allows overlap, which a guest posting one buffer for
        // both TX and RX could cause.
        unsafe { std::ptr::copy(sp as *const u8, dp as *mut u8, dn) };
        if dn < sn {
            pending = Some((sp + dn, sn - dn));
        }
        left -= dn;
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `off` into `buf`; returns how many were read.
///
/// # Safety
/// Every segment must be valid for reads for the call and must not overlap `buf` (as for
/// the source of `copy_segments`).
pub unsafe fn read_segments(segs: &[Segment], off: usize, buf: &mut [u8]) -> usize {
    let mut c = Cursor::at(segs, off);
    let mut done = 0;
    while done < buf.len() {
        let Ok((p, n)) = c.next_piece(buf.len() - done) else {
            break;
        };
        // SAFETY: `p..p + n` is inside one segment (`next_piece`), readable and disjoint from
        // `buf` (the caller's contract), and `buf[done..]` has room for `n` more bytes
        // (`n <= buf.len() - done`).
        unsafe { copy_short(p as *const u8, buf[done..].as_mut_ptr(), n) };
        done += n;
    }
    done
}

/// Writes all of `data` at `off`.
///
/// # Safety
/// Every segment must be valid for writes for the call and must not overlap `data` (as for
/// the destination of `copy_segments`).
pub unsafe fn write_segments(segs: &[Segment], off: usize, data: &[u8]) -> Result<(), CopyError> {
    let mut c = Cursor::at(segs, off);
    let mut done = 0;
    while done < data.len() {
        let (p, n) = c.next_piece(data.len() - done)?;
        // SAFETY: `p..p + n` is inside one segment (`next_piece`), writable and disjoint from
        // `data` (the caller's contract), and `data[done..]` holds at least `n` bytes.
        unsafe { copy_short(data[done..].as_ptr(), p as *mut u8, n) };
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma_engine::guest_map::GuestMap;
    use crate::dma_engine::segments::Segments;
    use crate::dma_engine::GuestMem;
    use std::sync::Arc;
    use vm_memory::{Bytes, GuestAddress};

    fn mem() -> Arc<GuestMem> {
        Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap())
    }

    /// What differs is written, whatever the length; what is equal is not even stored: the
    /// destination is a read-only page, so a store there would fault.
    #[test]
    fn write_unless_equal_writes_only_the_pieces_that_differ() {
        for n in 0..=20usize {
            let src: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
            for flip in 0..=n {
                let mut dst = src.clone();
                if flip < n {
                    dst[flip] ^= 0xff;
                }
                // SAFETY: `src` and `dst` are distinct vectors of `n` bytes.
                unsafe { write_unless_equal(src.as_ptr(), dst.as_mut_ptr(), n) };
                assert_eq!(dst, src, "n {n}, byte {flip} differed");
            }
        }
        // SAFETY: an anonymous private page of our own, unmapped below; nothing else uses it.
        unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED);
            let p = page as *mut u8;
            let hdr = [0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
            std::ptr::copy_nonoverlapping(hdr.as_ptr(), p.add(116), hdr.len());
            assert_eq!(libc::mprotect(page, 4096, libc::PROT_READ), 0);
            write_unless_equal(hdr.as_ptr(), p.add(116), hdr.len());
            libc::munmap(page, 4096);
        }
    }

    fn segs(map: &GuestMap, list: &[(u64, u32)]) -> Segments {
        let mut s = Segments::default();
        s.reset(0);
        for &(a, l) in list {
            s.push_guest(map, a, l).unwrap();
        }
        s
    }

    #[test]
    fn copies_across_uneven_segments() {
        let (a, b) = (mem(), mem());
        let (ma, mb) = (GuestMap::new(a.clone()), GuestMap::new(b.clone()));
        let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        a.write_slice(&data[..100], GuestAddress(0x100)).unwrap();
        a.write_slice(&data[100..], GuestAddress(0x2000)).unwrap();
        let src = segs(&ma, &[(0x100, 100), (0x2000, 200)]);
        let dst = segs(&mb, &[(0x10, 7), (0x500, 50), (0x900, 1000)]);
        // SAFETY: every segment was translated with `ma` or `mb`, alive until the end of the
        // test, into guest memory (readable, writable, and not a Rust object).
        unsafe { copy_segments(src.as_slice(), 10, dst.as_slice(), 3, 290).unwrap() };
        let mut out = vec![0u8; 290];
        // SAFETY: as above; `out` is not guest memory.
        let read = unsafe { read_segments(dst.as_slice(), 3, &mut out) };
        assert_eq!(read, 290);
        assert_eq!(out, data[10..]);
    }

    #[test]
    fn short_destination_is_an_error() {
        let (a, b) = (mem(), mem());
        let (ma, mb) = (GuestMap::new(a), GuestMap::new(b));
        let (src, dst) = (segs(&ma, &[(0, 100)]), segs(&mb, &[(0, 50)]));
        // SAFETY: every segment was translated with `ma` or `mb`, alive until the end of the
        // test, into guest memory (readable, writable, and not a Rust object).
        let r = unsafe { copy_segments(src.as_slice(), 0, dst.as_slice(), 0, 100) };
        assert_eq!(r, Err(CopyError::Short));
    }

    #[test]
    fn short_copies_of_every_length_are_exact() {
        let src: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in 0..=200 {
            let mut dst = vec![0xeeu8; 210];
            // SAFETY: both buffers hold at least n bytes and do not overlap.
            unsafe { copy_short(src.as_ptr(), dst.as_mut_ptr(), n) };
            assert_eq!(dst[..n], src[..n], "length {n}");
            assert!(
                dst[n..].iter().all(|&b| b == 0xee),
                "length {n} wrote past the end"
            );
        }
    }

    #[test]
    fn write_then_read_back() {
        let m = mem();
        let map = GuestMap::new(m.clone());
        let s = segs(&map, &[(0x10, 5), (0x40, 20)]);
        // SAFETY: the segments were translated with `map`, alive until the end of the test,
        // into guest memory, which the Rust buffers `b"hello world"` and `out` are not.
        unsafe { write_segments(s.as_slice(), 2, b"hello world").unwrap() };
        let mut out = [0u8; 11];
        // SAFETY: as above.
        let read = unsafe { read_segments(s.as_slice(), 2, &mut out) };
        assert_eq!(read, 11);
        assert_eq!(&out, b"hello world");
        let mut direct = [0u8; 3];
        m.read_slice(&mut direct, GuestAddress(0x12)).unwrap();
        assert_eq!(&direct, b"hel");
    }
}
