//! UDP segmentation offloads for `udp_batch.rs`: GSO on send (`UDP_SEGMENT`: one message of
//! many equal datagrams, cut by the kernel below the socket, or by the device) and GRO on
//! receive (`UDP_GRO`: datagrams of one flow handed up together, with their size in a control
//! message). On loopback a GSO message reaches a GRO socket whole: one send and one receive
//! carry up to `GSO_SEGMENTS_MAX` datagrams, where the plain path pays a kernel trip per
//! datagram (examples/udp_cost.rs measures both).

use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::ptr;

/// Most datagrams in one GSO message (the kernel's UDP_MAX_SEGMENTS before Linux 6.9; later
/// kernels accept more, none fewer).
pub const GSO_SEGMENTS_MAX: usize = 64;
/// Most payload bytes in one GSO message: an IPv4 datagram's 65535 bytes less the IP and UDP
/// headers (an IPv6 payload could take 20 more).
pub const GSO_BYTES_MAX: usize = 65_507;

/// Room for one control message of up to 8 data bytes, aligned for `cmsghdr`.
pub(super) type CmsgBuf = [u64; 4];

// The control buffer holds the header and an int.
const _: () = assert!(mem::size_of::<CmsgBuf>() >= mem::size_of::<libc::cmsghdr>() + 8);

/// `setsockopt(fd, SOL_UDP, opt, val)`.
fn set_udp_opt(fd: RawFd, opt: libc::c_int, val: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket; the option value is a c_int that lives across the call
    // and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_UDP,
            opt,
            ptr::from_ref(&val).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this kernel takes `UDP_SEGMENT` on `fd` (Linux 4.18 and later). The socket option
/// is set to 0 (no segmentation by default); each message asks with its own control message.
pub(super) fn probe_gso(fd: RawFd) -> io::Result<()> {
    set_udp_opt(fd, libc::UDP_SEGMENT, 0)
}

/// Turns UDP GRO on for `fd` (Linux 5.0 and later): receive buffers must then hold 64 KiB.
pub(super) fn enable_gro(fd: RawFd) -> io::Result<()> {
    set_udp_opt(fd, libc::UDP_GRO, 1)
}

/// Writes a `UDP_SEGMENT` control message asking for `segment`-byte datagrams into `buf`;
/// returns the length for `msg_controllen`.
pub(super) fn write_segment_cmsg(buf: &mut CmsgBuf, segment: u16) -> usize {
    *buf = [0; 4];
    // SAFETY: CMSG_LEN and CMSG_SPACE are arithmetic on their argument.
    let (len, space) = unsafe {
        (
            libc::CMSG_LEN(mem::size_of::<u16>() as u32) as usize,
            libc::CMSG_SPACE(mem::size_of::<u16>() as u32) as usize,
        )
    };
    let hdr = libc::cmsghdr {
        cmsg_len: len as _,
        cmsg_level: libc::SOL_UDP,
        cmsg_type: libc::UDP_SEGMENT,
    };
    let base = buf.as_mut_ptr().cast::<u8>();
    // SAFETY: `buf` is 32 bytes aligned to 8 (checked above to hold a cmsghdr and 8 data
    // bytes); the header goes at its start and the u16 at the header's aligned end, both
    // inside it. Unaligned writes need no alignment.
    unsafe {
        ptr::write_unaligned(base.cast::<libc::cmsghdr>(), hdr);
        ptr::write_unaligned(libc::CMSG_DATA(base.cast()).cast::<u16>(), segment);
    }
    space
}

/// The datagram size in a `UDP_GRO` control message of a received `msg`: `Some(size)` when the
/// kernel handed up several datagrams of `size` bytes (the last may be shorter) in one buffer.
///
/// # Safety
/// `msg.msg_control` must point to `msg.msg_controllen` readable bytes (or be null), as the
/// kernel leaves them after a receive into a buffer this module's caller owns.
pub(super) unsafe fn read_gro_cmsg(msg: &libc::msghdr) -> Option<usize> {
    if msg.msg_control.is_null() || msg.msg_controllen < mem::size_of::<libc::cmsghdr>() {
        return None;
    }
    // SAFETY: the caller's contract: the control bytes are readable; CMSG_FIRSTHDR and
    // CMSG_NXTHDR stay within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = ptr::read_unaligned(c);
            if h.cmsg_level == libc::SOL_UDP && h.cmsg_type == libc::UDP_GRO {
                let size = ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(size).ok().filter(|&s| s > 0);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_cmsg_reads_back_as_written() {
        let mut buf: CmsgBuf = [0; 4];
        let len = write_segment_cmsg(&mut buf, 1526);
        // SAFETY: all-zero bytes are a valid msghdr (pointers null, lengths zero).
        let mut msg: libc::msghdr = unsafe { mem::zeroed() };
        msg.msg_control = buf.as_mut_ptr().cast();
        msg.msg_controllen = len as _;
        // SAFETY: `buf` outlives the call and holds `len` bytes.
        let c = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        assert!(!c.is_null());
        // SAFETY: `c` points into `buf`, at a header just written.
        let (h, seg) = unsafe {
            (
                ptr::read_unaligned(c),
                ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u16>()),
            )
        };
        assert_eq!(
            (h.cmsg_level, h.cmsg_type, seg),
            (libc::SOL_UDP, libc::UDP_SEGMENT, 1526)
        );
        // A UDP_SEGMENT message is not a GRO one.
        // SAFETY: as above.
        assert_eq!(unsafe { read_gro_cmsg(&msg) }, None);
    }
}
