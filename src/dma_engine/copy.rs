//! Copies between guest segment lists, through vm-memory volatile slices: one copy from the
//! sender's buffer to the receiver's buffer, and every write marked in the dirty log.

use super::segments::Segment;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{Address, GuestMemoryBackend, VolatileSlice};

/// A copy that could not be done (guest memory changed under the chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    #[error("segment no longer maps guest memory")]
    Unmapped,
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
    fn at(segs: &'s [Segment], mut off: usize) -> Self {
        let mut idx = 0;
        while idx < segs.len() && off >= segs[idx].len as usize {
            off -= segs[idx].len as usize;
            idx += 1;
        }
        Cursor { segs, idx, off }
    }

    /// The next contiguous piece of at most `max` bytes.
    fn next_piece<'m, M: GuestMemoryBackend>(
        &mut self,
        mem: &'m M,
        max: usize,
    ) -> Result<VolatileSlice<'m, vm_memory::bitmap::MS<'m, M>>, CopyError> {
        let seg = self.segs.get(self.idx).ok_or(CopyError::Short)?;
        let left = seg.len as usize - self.off;
        let n = left.min(max);
        let addr = seg
            .addr
            .checked_add(self.off as u64)
            .ok_or(CopyError::Unmapped)?;
        let s = mem.get_slice(addr, n).map_err(|_| CopyError::Unmapped)?;
        self.off += n;
        if self.off == seg.len as usize {
            self.idx += 1;
            self.off = 0;
        }
        Ok(s)
    }
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`, guest to guest.
pub fn copy_segments<S: GuestMemoryBackend, D: GuestMemoryBackend>(
    src_mem: &S,
    src: &[Segment],
    src_off: usize,
    dst_mem: &D,
    dst: &[Segment],
    dst_off: usize,
    len: usize,
) -> Result<(), CopyError>
where
    for<'a> vm_memory::bitmap::MS<'a, D>: BitmapSlice,
{
    let mut s = Cursor::at(src, src_off);
    let mut d = Cursor::at(dst, dst_off);
    let mut left = len;
    // Each step copies the overlap of the current source and destination pieces.
    let mut src_piece = None;
    while left > 0 {
        let sp = match src_piece.take() {
            Some(p) => p,
            None => s.next_piece(src_mem, left)?,
        };
        let dp = d.next_piece(dst_mem, sp.len())?;
        let n = dp.len();
        sp.subslice(0, n)
            .map_err(|_| CopyError::Short)?
            .copy_to_volatile_slice(dp);
        if n < sp.len() {
            src_piece = Some(sp.offset(n).map_err(|_| CopyError::Short)?);
        }
        left -= n;
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes at `off` into `buf`; returns how many were read.
pub fn read_segments<M: GuestMemoryBackend>(
    mem: &M,
    segs: &[Segment],
    off: usize,
    buf: &mut [u8],
) -> Result<usize, CopyError> {
    let mut c = Cursor::at(segs, off);
    let mut done = 0;
    while done < buf.len() && c.idx < segs.len() {
        let p = c.next_piece(mem, buf.len() - done)?;
        done += p.copy_to(&mut buf[done..]);
    }
    Ok(done)
}

/// Writes all of `data` at `off`.
pub fn write_segments<M: GuestMemoryBackend>(
    mem: &M,
    segs: &[Segment],
    off: usize,
    data: &[u8],
) -> Result<(), CopyError> {
    let mut c = Cursor::at(segs, off);
    let mut done = 0;
    while done < data.len() {
        let p = c.next_piece(mem, data.len() - done)?;
        let n = p.len();
        p.copy_from(&data[done..done + n]);
        done += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn seg(addr: u64, len: u32) -> Segment {
        Segment {
            addr: GuestAddress(addr),
            len,
        }
    }

    #[test]
    fn copies_across_uneven_segments() {
        let (a, b) = (mem(), mem());
        let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        a.write_slice(&data[..100], GuestAddress(0x100)).unwrap();
        a.write_slice(&data[100..], GuestAddress(0x2000)).unwrap();
        let src = [seg(0x100, 100), seg(0x2000, 200)];
        let dst = [seg(0x10, 7), seg(0x500, 50), seg(0x900, 1000)];
        copy_segments(&a, &src, 10, &b, &dst, 3, 290).unwrap();
        let mut out = vec![0u8; 290];
        read_segments(&b, &dst, 3, &mut out).unwrap();
        assert_eq!(out, data[10..]);
    }

    #[test]
    fn short_destination_is_an_error() {
        let (a, b) = (mem(), mem());
        let r = copy_segments(&a, &[seg(0, 100)], 0, &b, &[seg(0, 50)], 0, 100);
        assert_eq!(r, Err(CopyError::Short));
    }

    #[test]
    fn unmapped_segment_is_an_error() {
        let (a, b) = (mem(), mem());
        let r = copy_segments(&a, &[seg(0xfff0, 0x100)], 0, &b, &[seg(0, 0x100)], 0, 0x100);
        assert_eq!(r, Err(CopyError::Unmapped));
    }

    #[test]
    fn write_then_read_back() {
        let m = mem();
        let segs = [seg(0x10, 5), seg(0x40, 20)];
        write_segments(&m, &segs, 2, b"hello world").unwrap();
        let mut out = [0u8; 11];
        assert_eq!(read_segments(&m, &segs, 2, &mut out).unwrap(), 11);
        assert_eq!(&out, b"hello world");
    }
}
