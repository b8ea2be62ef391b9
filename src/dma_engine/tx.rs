//! TX chains: a chain popped from a TX ring walked into segments, and its head copied out once.

use super::copy::read_segments;
use super::guest_map::GuestMap;
use super::ring::{prefetch, SplitRing};
use super::segments::{ChainError, Direction, Segments};
use crate::wire::ETH_HEADER_LEN;

/// Why a TX chain was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxChainError {
    #[error(transparent)]
    Chain(#[from] ChainError),
    #[error("{0} bytes: shorter than the virtio-net and Ethernet headers")]
    Short(usize),
    #[error("{0} bytes: longer than the MTU allows")]
    Long(usize),
}

/// Walks TX chain `head` into `segs` and checks the frame's length: the frame's length
/// (without the `hdr_len` bytes of virtio-net header) if the chain is valid and the frame is
/// between an Ethernet header and `max_frame` bytes. Starts loading the frame's first bytes.
#[inline]
pub fn walk_tx(
    ring: &SplitRing,
    map: &GuestMap,
    head: u16,
    hdr_len: usize,
    max_frame: usize,
    segs: &mut Segments,
) -> Result<usize, TxChainError> {
    ring.walk(map, head, Direction::Read, segs)?;
    let total = segs.total();
    if total < hdr_len + ETH_HEADER_LEN {
        return Err(TxChainError::Short(total));
    }
    if total - hdr_len > max_frame {
        return Err(TxChainError::Long(total));
    }
    let mut off = hdr_len;
    for s in segs.as_slice() {
        if (s.len as usize) > off {
            prefetch(s.host + off);
            break;
        }
        off -= s.len as usize;
    }
    Ok(total - hdr_len)
}

/// Copies the frame's first `buf.len()` bytes (after the `hdr_len` header) out of the chain;
/// true if all of them were there.
///
/// # Safety
/// `segs` must be valid for reads for the call: from `walk_tx` with a `GuestMap` that is
/// still alive (or host buffers under `Segments::push_host`'s contract).
pub unsafe fn read_head(segs: &Segments, hdr_len: usize, buf: &mut [u8]) -> bool {
    // SAFETY: `segs` are readable (the caller's contract) and cannot overlap `buf`, a Rust
    // buffer the caller lends us.
    unsafe { read_segments(segs.as_slice(), hdr_len, buf) == buf.len() }
}
