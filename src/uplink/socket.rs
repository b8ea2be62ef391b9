//! The C side of a UDP socket for `udp_batch.rs`: socket addresses converted to and from
//! `sockaddr_storage`, zeroed C structs, and the socket buffer sizes asked of the kernel.

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::ptr;

/// The socket receive and send buffer size asked for (best effort).
pub const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// C structs for which all-zero bytes are a valid value.
///
/// # Safety
///
/// Implement only for types made of integers, arrays of them and raw pointers.
pub(super) unsafe trait Zeroable: Copy {}

// SAFETY: integers and padding only.
unsafe impl Zeroable for libc::sockaddr_storage {}
// SAFETY: a raw pointer (null when zero) and a length.
unsafe impl Zeroable for libc::iovec {}
// SAFETY: a msghdr (raw pointers, lengths, flags) and a length.
unsafe impl Zeroable for libc::mmsghdr {}

/// `n` zeroed values in one allocation.
pub(super) fn zeroed_slice<T: Zeroable>(n: usize) -> Box<[T]> {
    // SAFETY: `T: Zeroable` says all-zero bytes are a valid `T`.
    let zero: T = unsafe { mem::zeroed() };
    vec![zero; n].into_boxed_slice()
}

pub(super) const STORAGE_LEN: libc::socklen_t =
    mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// Writes `addr` into `out` as a C socket address; returns its length.
pub(super) fn to_sockaddr(addr: &SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in (integers only).
            let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            // SAFETY: sockaddr_storage is larger than sockaddr_in and aligned for any socket
            // address type; `out` is a valid, exclusive reference.
            unsafe { ptr::write(ptr::from_mut(out).cast::<libc::sockaddr_in>(), sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // SAFETY: all-zero bytes are a valid sockaddr_in6 (integers only).
            let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            // SAFETY: as above, sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { ptr::write(ptr::from_mut(out).cast::<libc::sockaddr_in6>(), sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The socket address the kernel wrote into `s`; `None` for a family other than IPv4/IPv6.
pub(super) fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the kernel wrote a sockaddr_in here; sockaddr_storage is
            // larger than and aligned for it.
            let sin = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &*ptr::from_ref(s).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Asks for `SOCKET_BUFFER_BYTES` of socket buffer: with `force` (SO_RCVBUFFORCE, which
/// needs CAP_NET_ADMIN but ignores `net.core.rmem_max`), else with `opt`. Logs when the kernel
/// gave less. Best effort: the socket works with any size.
pub(super) fn grow_buffer(
    fd: RawFd,
    force: libc::c_int,
    opt: libc::c_int,
    name: &str,
    sysctl: &str,
) {
    let want = libc::c_int::try_from(SOCKET_BUFFER_BYTES).unwrap_or(libc::c_int::MAX);
    let set = |o: libc::c_int| {
        // SAFETY: `fd` is an open socket; the option value is a c_int that lives across the
        // call and its size is passed.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                o,
                ptr::from_ref(&want).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) == 0
        }
    };
    if !set(force) {
        let _ = set(opt);
    }
    let mut got: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket; `got` and `len` are valid for writes of their sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            ptr::from_mut(&mut got).cast(),
            &mut len,
        )
    };
    // The kernel reports twice what it was given (the other half is its bookkeeping).
    if rc != 0 || got / 2 < want {
        tracing::info!(
            "udp socket {name} is {} bytes, less than the {want} asked for (raise {sysctl})",
            got / 2
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn sockaddr_conversion_round_trips() {
        for s in ["198.18.0.1:4789", "[2001:db8::1]:65535", "0.0.0.0:1"] {
            let a = sa(s);
            // SAFETY: all-zero bytes are a valid sockaddr_storage.
            let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
            let len = to_sockaddr(&a, &mut st);
            assert!(len <= STORAGE_LEN);
            assert_eq!(from_sockaddr(&st), Some(a));
        }
        // SAFETY: as above.
        let mut st: libc::sockaddr_storage = unsafe { mem::zeroed() };
        st.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(from_sockaddr(&st), None);
    }
}
