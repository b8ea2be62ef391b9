//! Batched UDP I/O for the VXLAN uplink: one `recvmmsg` takes up to a batch of datagrams, one
//! `sendmmsg` sends everything queued, never a syscall per datagram when a batch will do.
//!
//! Everything the data path needs is allocated once in [`UdpBatch::bind`]: the receive and send
//! buffers (`batch` slots of `buf_size` bytes each), the socket addresses, the iovecs and the
//! `mmsghdr`s. The pointers the kernel follows are written just before each syscall, so the
//! struct may move between calls. The struct is owned by one thread at a time (`Send`, not
//! `Sync`), and counts its syscalls so a caller can report syscalls per frame.
//!
//! With the offloads on (`enable_gso`, `enable_gro`; `udp_offload.rs`), consecutive queued
//! datagrams of one size to one destination leave as one GSO message, and a received buffer
//! may hold several datagrams of one sender ([`Datagram::segments`]).

use super::socket::{from_sockaddr, grow_buffer, to_sockaddr, zeroed_slice, STORAGE_LEN};
use super::udp_offload::{self, CmsgBuf, GSO_BYTES_MAX, GSO_SEGMENTS_MAX};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::ptr;

/// Most datagrams in one batch (the kernel's UIO_MAXIOV cap on `vlen`).
pub const BATCH_MAX: usize = 1024;
/// Largest buffer per datagram (a UDP payload is at most 65535 - 8 bytes).
pub const BUF_SIZE_MAX: usize = 65535;
pub use super::socket::SOCKET_BUFFER_BYTES;

/// What failed.
#[derive(Debug, thiserror::Error)]
pub enum UdpError {
    #[error("udp batch of {batch} datagrams is not in 1..={BATCH_MAX}")]
    BatchSize { batch: usize },
    #[error("udp buffer of {buf_size} bytes per datagram is not in 1..={BUF_SIZE_MAX}")]
    BufSize { buf_size: usize },
    #[error("this udp batch has no {0} slots")]
    NoSlots(&'static str),
    #[error("cannot bind a udp socket to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the udp socket on {addr}")]
    Configure {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("recvmmsg on the udp socket {local} failed")]
    Recv {
        local: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// A send error that is not about one destination; the queued datagrams were discarded
    /// (counted in `tx_dropped`).
    #[error("sendmmsg on the udp socket {local} failed")]
    Send {
        local: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("a datagram of {len} bytes does not fit a {max}-byte send slot")]
    PushTooLong { len: usize, max: usize },
    #[error("cannot send to {dst} from the udp socket {local}: another address family")]
    PushFamily { dst: SocketAddr, local: SocketAddr },
}

/// Counters of one socket since it was bound. Plain integers: the owner copies them out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpCounters {
    /// `recvmmsg` calls, those that found nothing (EAGAIN) included.
    pub recv_syscalls: u64,
    /// `sendmmsg` calls, failed ones included.
    pub send_syscalls: u64,
    /// Receive buffers filled: one per datagram, or one per GRO train of datagrams.
    pub rx_messages: u64,
    /// Messages the kernel accepted: one per datagram, or one per GSO train of datagrams.
    pub tx_messages: u64,
    /// Datagrams received (truncated ones included; each datagram of a GRO train).
    pub rx_datagrams: u64,
    /// Datagrams longer than a receive buffer, cut to `buf_size`.
    pub rx_truncated: u64,
    /// Datagrams the kernel accepted for sending.
    pub tx_datagrams: u64,
    /// Datagrams dropped because the socket or the device had no room (EAGAIN, ENOBUFS), or
    /// discarded by a flush that failed.
    pub tx_dropped: u64,
    /// Datagrams refused for their destination (no route, unreachable, refused, ...).
    pub tx_failed: u64,
}

/// One received datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram<'a> {
    /// Who sent it.
    pub src: SocketAddr,
    /// Its bytes, at most `buf_size` of them.
    pub data: &'a [u8],
    /// Its length on the wire (more than `data.len()` when truncated).
    pub len: usize,
    /// Longer than the receive buffer: `data` is its first `buf_size` bytes.
    pub truncated: bool,
    /// The size of each datagram in `data` (the last may be shorter): `len` unless GRO handed
    /// up a train of datagrams in one buffer.
    pub segment: usize,
}

impl<'a> Datagram<'a> {
    /// The datagrams in `data`: one, or each of a GRO train.
    pub fn segments(&self) -> std::slice::Chunks<'a, u8> {
        self.data.chunks(self.segment.max(1))
    }
}

/// A datagram refused for its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendFailure {
    pub dst: SocketAddr,
    /// The errno `sendmmsg` gave.
    pub errno: i32,
}

impl SendFailure {
    pub fn error(&self) -> io::Error {
        io::Error::from_raw_os_error(self.errno)
    }
}

/// What one [`UdpBatch::flush`] did with the queued datagrams: each is sent, dropped or failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FlushResult {
    /// Accepted by the kernel.
    pub sent: usize,
    /// Not sent because the socket buffer or the device queue was full (EAGAIN, ENOBUFS):
    /// the rest of the batch from the first such error on.
    pub dropped: usize,
    /// Refused for their destination (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ...); the
    /// datagrams after one were still sent.
    pub failed: usize,
    /// The first of the `failed`.
    pub first_failure: Option<SendFailure>,
    /// `sendmmsg` calls made.
    pub syscalls: usize,
}

/// A non-blocking UDP socket with preallocated batches for `recvmmsg` and `sendmmsg`.
pub struct UdpBatch {
    sock: UdpSocket,
    local: SocketAddr,
    batch: usize,
    /// Bytes per receive slot (0: this batch does not receive).
    rx_size: usize,
    /// Bytes per send slot (0: this batch does not send).
    tx_size: usize,
    rx: Slots,
    /// Messages the last `recv` returned.
    rx_count: usize,
    /// Per received message: the size of its datagrams (its length unless GRO merged several).
    rx_segment: Box<[usize]>,
    /// UDP GRO is on: receive slots hold trains of datagrams.
    gro: bool,
    /// Queued datagrams of one size to one destination leave as one GSO message.
    gso: bool,
    tx: Slots,
    /// Per send message (they are built at flush): its first queued datagram and how many.
    msg_first: Box<[usize]>,
    msg_segs: Box<[usize]>,
    /// Where each queued datagram goes (for `SendFailure`).
    tx_dst: Box<[SocketAddr]>,
    /// Bytes of each queued datagram.
    tx_len: Box<[usize]>,
    /// Datagrams queued.
    tx_count: usize,
    counters: UdpCounters,
}

/// One direction's preallocated storage: `n` buffers of `size` bytes in one allocation, and a
/// socket address, an iovec, an `mmsghdr` and room for a control message per buffer.
struct Slots {
    buf: Box<[u8]>,
    addr: Box<[libc::sockaddr_storage]>,
    addr_len: Box<[libc::socklen_t]>,
    iov: Box<[libc::iovec]>,
    msg: Box<[libc::mmsghdr]>,
    ctl: Box<[CmsgBuf]>,
}

// SAFETY: the raw pointers inside `iov` and `msg` point only into the boxes of the same
// `Slots` (heap memory that moves with the struct), are rewritten before every syscall, and are
// never dereferenced by Rust code; no other thread can reach them. Moving a `UdpBatch` to
// another thread moves that memory with it.
unsafe impl Send for UdpBatch {}

impl Slots {
    fn new(n: usize, size: usize) -> Slots {
        Slots {
            buf: vec![0u8; n * size].into_boxed_slice(),
            addr: zeroed_slice(n),
            addr_len: vec![0; n].into_boxed_slice(),
            iov: zeroed_slice(n),
            msg: zeroed_slice(n),
            ctl: vec![[0; 4]; n].into_boxed_slice(),
        }
    }

    /// Points iovec `i` at the first `len` bytes of buffer `i` (of `size`).
    fn link_iov(&mut self, i: usize, size: usize, len: usize) {
        self.iov[i] = libc::iovec {
            iov_base: self.buf[i * size..].as_mut_ptr().cast(),
            iov_len: len,
        };
    }

    /// Points message `i` at buffer `i` (`len` bytes of `size`) and at address `i`
    /// (`addr_len` bytes), so the kernel reads or writes only inside this struct's boxes.
    fn link(&mut self, i: usize, size: usize, len: usize, addr_len: libc::socklen_t) {
        self.link_iov(i, size, len);
        let h = &mut self.msg[i].msg_hdr;
        h.msg_name = ptr::from_mut(&mut self.addr[i]).cast();
        h.msg_namelen = addr_len;
        h.msg_iov = ptr::from_mut(&mut self.iov[i]);
        h.msg_iovlen = 1;
        h.msg_control = ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        self.msg[i].msg_len = 0;
    }
}

impl UdpBatch {
    /// A non-blocking UDP socket bound to `local` (port 0 picks one: see `local_addr`), with
    /// `batch` receive and `batch` send slots of `buf_size` bytes each.
    pub fn bind(local: SocketAddr, batch: usize, buf_size: usize) -> Result<Self, UdpError> {
        let sock = UdpSocket::bind(local).map_err(|source| UdpError::Bind {
            addr: local,
            source,
        })?;
        Self::from_socket(sock, batch, buf_size)
    }

    /// The same around a socket already bound (a `try_clone` of another `UdpBatch`'s socket,
    /// so that several threads send on one address, each with its own batch).
    pub fn from_socket(sock: UdpSocket, batch: usize, buf_size: usize) -> Result<Self, UdpError> {
        Self::with_sizes(sock, batch, buf_size, buf_size)
    }

    /// Around a socket already bound, with `rx_size`-byte receive slots and `tx_size`-byte send
    /// slots; a size of 0 leaves that direction out (its calls fail with `NoSlots`).
    pub fn with_sizes(
        sock: UdpSocket,
        batch: usize,
        rx_size: usize,
        tx_size: usize,
    ) -> Result<Self, UdpError> {
        if !(1..=BATCH_MAX).contains(&batch) {
            return Err(UdpError::BatchSize { batch });
        }
        for buf_size in [rx_size, tx_size] {
            if buf_size > BUF_SIZE_MAX || (rx_size == 0 && tx_size == 0) {
                return Err(UdpError::BufSize { buf_size });
            }
        }
        let slots = |size: usize| Slots::new(if size == 0 { 0 } else { batch }, size);
        let local = sock
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let configure = |source| UdpError::Configure {
            addr: local,
            source,
        };
        sock.set_nonblocking(true).map_err(configure)?;
        let bound = sock.local_addr().map_err(configure)?;
        let fd = sock.as_raw_fd();
        grow_buffer(
            fd,
            libc::SO_RCVBUFFORCE,
            libc::SO_RCVBUF,
            "receive buffer",
            "net.core.rmem_max",
        );
        grow_buffer(
            fd,
            libc::SO_SNDBUFFORCE,
            libc::SO_SNDBUF,
            "send buffer",
            "net.core.wmem_max",
        );
        tracing::debug!(
            "udp socket bound to {bound}: batch {batch}, slots of {rx_size} bytes to receive, \
             {tx_size} to send"
        );
        Ok(UdpBatch {
            sock,
            local: bound,
            batch,
            rx_size,
            tx_size,
            rx: slots(rx_size),
            rx_count: 0,
            rx_segment: vec![0; batch].into_boxed_slice(),
            gro: false,
            gso: false,
            tx: slots(tx_size),
            msg_first: vec![0; batch].into_boxed_slice(),
            msg_segs: vec![0; batch].into_boxed_slice(),
            tx_dst: vec![bound; batch].into_boxed_slice(),
            tx_len: vec![0; batch].into_boxed_slice(),
            tx_count: 0,
            counters: UdpCounters::default(),
        })
    }

    /// The socket, for epoll (readable: call `recv`).
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// The address the socket is bound to (with the port the kernel chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Slots per batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Bytes per send slot (per receive slot when this batch only receives).
    pub fn buf_size(&self) -> usize {
        if self.tx_size > 0 {
            self.tx_size
        } else {
            self.rx_size
        }
    }

    /// Sends consecutive queued datagrams of one size to one destination as one GSO message
    /// (`UDP_SEGMENT`). Fails, leaving it off, on a kernel without it (before Linux 4.18). Should
    /// a send refuse a GSO message (a route that cannot segment), it is resent datagram by
    /// datagram and GSO stays off for this batch.
    pub fn enable_gso(&mut self) -> io::Result<()> {
        udp_offload::probe_gso(self.sock.as_raw_fd())?;
        self.gso = true;
        Ok(())
    }

    /// Whether sends use GSO.
    pub fn gso(&self) -> bool {
        self.gso
    }

    /// Turns UDP GRO on: one receive slot may then hold a train of datagrams from one sender
    /// ([`Datagram::segments`]). Refused (`BufSize`) unless the receive slots hold the largest
    /// datagram: a train is up to 64 KiB.
    pub fn enable_gro(&mut self) -> Result<(), UdpError> {
        if self.rx_size < BUF_SIZE_MAX {
            return Err(UdpError::BufSize {
                buf_size: self.rx_size,
            });
        }
        udp_offload::enable_gro(self.sock.as_raw_fd()).map_err(|source| UdpError::Configure {
            addr: self.local,
            source,
        })?;
        self.gro = true;
        Ok(())
    }

    /// Whether receives use GRO.
    pub fn gro(&self) -> bool {
        self.gro
    }

    pub fn counters(&self) -> UdpCounters {
        self.counters
    }

    /// One `recvmmsg(MSG_DONTWAIT)` into the receive slots: how many datagrams arrived (0 when
    /// none were waiting). The previous batch's datagrams are gone.
    pub fn recv(&mut self) -> Result<usize, UdpError> {
        self.rx_count = 0;
        if self.rx_size == 0 {
            return Err(UdpError::NoSlots("receive"));
        }
        for i in 0..self.batch {
            self.rx.link(i, self.rx_size, self.rx_size, STORAGE_LEN);
            if self.gro {
                let h = &mut self.rx.msg[i].msg_hdr;
                h.msg_control = self.rx.ctl[i].as_mut_ptr().cast();
                h.msg_controllen = std::mem::size_of::<CmsgBuf>() as _;
            }
        }
        let vlen = libc::c_uint::try_from(self.batch).unwrap_or(libc::c_uint::MAX);
        loop {
            self.counters.recv_syscalls += 1;
            // SAFETY: `msg` holds `batch` (= vlen) mmsghdrs, each just linked to its own
            // `rx_size`-byte region of `rx.buf`, its own sockaddr_storage and (with GRO) its
            // own control buffer, all owned by `self.rx` and not otherwise borrowed during the
            // call. MSG_TRUNC makes msg_len the datagram's real length; the kernel still
            // writes at most iov_len bytes.
            let n = unsafe {
                libc::recvmmsg(
                    self.sock.as_raw_fd(),
                    self.rx.msg.as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                    ptr::null_mut(),
                )
            };
            if let Ok(n) = usize::try_from(n) {
                let n = n.min(self.batch);
                self.rx_count = n;
                self.counters.rx_messages += n as u64;
                for i in 0..n {
                    let m = &self.rx.msg[i];
                    let len = usize::try_from(m.msg_len).unwrap_or(usize::MAX);
                    let seg = if self.gro {
                        // SAFETY: with GRO the kernel wrote at most msg_controllen bytes of
                        // control messages into this slot's `ctl` (linked above).
                        unsafe { udp_offload::read_gro_cmsg(&m.msg_hdr) }
                    } else {
                        None
                    };
                    let seg = seg.unwrap_or(len).clamp(1, len.max(1));
                    self.rx_segment[i] = seg;
                    self.counters.rx_datagrams += len.div_ceil(seg).max(1) as u64;
                }
                let truncated = self.rx.msg[..n]
                    .iter()
                    .filter(|m| m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0)
                    .count();
                self.counters.rx_truncated += truncated as u64;
                return Ok(n);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => continue,
                _ => {
                    return Err(UdpError::Recv {
                        local: self.local,
                        source: e,
                    })
                }
            }
        }
    }

    /// Datagrams the last `recv` returned.
    pub fn received(&self) -> usize {
        self.rx_count
    }

    /// Datagram `i` (0-based) of the last `recv`; `None` past the last one.
    pub fn datagram(&self, i: usize) -> Option<Datagram<'_>> {
        if i >= self.rx_count {
            return None;
        }
        let m = &self.rx.msg[i];
        let len = usize::try_from(m.msg_len).unwrap_or(usize::MAX);
        let start = i * self.rx_size;
        let data = self.rx.buf.get(start..start + len.min(self.rx_size))?;
        // A UDP socket's sender is always IPv4 or IPv6; the unspecified address stands in
        // should the kernel ever say otherwise.
        let src = from_sockaddr(&self.rx.addr[i]).unwrap_or(match self.local {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        });
        Some(Datagram {
            src,
            data,
            len,
            truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
            segment: self.rx_segment[i],
        })
    }

    /// The datagrams of the last `recv`, in arrival order.
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> + '_ {
        (0..self.rx_count).filter_map(|i| self.datagram(i))
    }

    /// Datagrams queued for the next `flush`.
    pub fn queued(&self) -> usize {
        self.tx_count
    }

    /// The next send slot, to build a datagram to `dst` in place: `Ok(None)` when the batch is
    /// full (flush first). Nothing is queued until [`TxSlot::commit`].
    pub fn tx_slot(&mut self, dst: SocketAddr) -> Result<Option<TxSlot<'_>>, UdpError> {
        if dst.is_ipv4() != self.local.is_ipv4() {
            return Err(UdpError::PushFamily {
                dst,
                local: self.local,
            });
        }
        if self.tx_size == 0 {
            return Err(UdpError::NoSlots("send"));
        }
        if self.tx_count >= self.batch {
            return Ok(None);
        }
        Ok(Some(TxSlot { owner: self, dst }))
    }

    /// Queues one datagram to `dst` made of `parts` copied one after the other (a VXLAN header
    /// and a frame): `Ok(false)` when the batch is full (flush first).
    pub fn push(&mut self, dst: SocketAddr, parts: &[&[u8]]) -> Result<bool, UdpError> {
        let len = parts
            .iter()
            .try_fold(0usize, |acc, p| acc.checked_add(p.len()))
            .unwrap_or(usize::MAX);
        if len > self.tx_size {
            return Err(UdpError::PushTooLong {
                len,
                max: self.tx_size,
            });
        }
        let Some(mut slot) = self.tx_slot(dst)? else {
            return Ok(false);
        };
        let buf = slot.buf();
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        slot.commit(len)?;
        Ok(true)
    }

    /// Builds the send messages for queued datagrams `from..`: one per datagram, or with GSO
    /// one per run of datagrams to one destination of one size (the last of a run may be
    /// shorter), within the kernel's limits. Returns how many messages.
    fn link_messages(&mut self, from: usize) -> usize {
        let count = self.tx_count;
        let (mut m, mut d) = (0, from);
        while d < count {
            let seg = self.tx_len[d];
            let mut end = d + 1;
            if self.gso && seg > 0 {
                let mut total = seg;
                while end < count
                    && end - d < GSO_SEGMENTS_MAX
                    && self.tx_dst[end] == self.tx_dst[d]
                {
                    let len = self.tx_len[end];
                    if len == 0 || len > seg || total + len > GSO_BYTES_MAX {
                        break;
                    }
                    total += len;
                    end += 1;
                    if len < seg {
                        break; // only the last datagram of a GSO message may be shorter
                    }
                }
            }
            let control = if end - d > 1 {
                let seg = u16::try_from(seg).unwrap_or(u16::MAX);
                Some(udp_offload::write_segment_cmsg(&mut self.tx.ctl[m], seg))
            } else {
                None
            };
            let h = &mut self.tx.msg[m].msg_hdr;
            h.msg_name = ptr::from_mut(&mut self.tx.addr[d]).cast();
            h.msg_namelen = self.tx.addr_len[d];
            h.msg_iov = ptr::from_mut(&mut self.tx.iov[d]);
            h.msg_iovlen = end - d;
            match control {
                Some(len) => {
                    h.msg_control = self.tx.ctl[m].as_mut_ptr().cast();
                    h.msg_controllen = len;
                }
                None => {
                    h.msg_control = ptr::null_mut();
                    h.msg_controllen = 0;
                }
            }
            h.msg_flags = 0;
            self.tx.msg[m].msg_len = 0;
            self.msg_first[m] = d;
            self.msg_segs[m] = end - d;
            m += 1;
            d = end;
        }
        m
    }

    /// `sendmmsg(MSG_DONTWAIT)` of everything queued, again from where the kernel stopped
    /// until all is sent, dropped or failed; the queue is empty afterwards. EAGAIN and ENOBUFS
    /// drop the rest of the batch; an error about one destination fails that message's
    /// datagrams and the rest are still sent. A GSO message the kernel refuses (EINVAL, EIO,
    /// EMSGSIZE, EOPNOTSUPP: a route or device that cannot segment) is sent again datagram by
    /// datagram, with GSO off from then on. Any other error discards the queue and is returned.
    pub fn flush(&mut self) -> Result<FlushResult, UdpError> {
        let count = self.tx_count;
        let mut r = FlushResult::default();
        if count == 0 {
            return Ok(r);
        }
        for i in 0..count {
            self.tx.link_iov(i, self.tx_size, self.tx_len[i]);
        }
        let mut msgs = self.link_messages(0);
        // Datagrams in messages `start..` (start < msgs where it is called).
        let rest = |b: &Self, start: usize| count - b.msg_first[start];
        let mut start = 0;
        let outcome = loop {
            if start >= msgs {
                break Ok(());
            }
            let vlen = libc::c_uint::try_from(msgs - start).unwrap_or(libc::c_uint::MAX);
            r.syscalls += 1;
            self.counters.send_syscalls += 1;
            // SAFETY: `tx.msg[start..msgs]` are `vlen` mmsghdrs built just above
            // (`link_messages`), each pointing at iovecs of its own queued bytes of `tx.buf`,
            // its destination address and its control message, all owned by `self.tx` and not
            // otherwise borrowed during the call; the kernel only reads them (and writes
            // msg_len).
            let n = unsafe {
                libc::sendmmsg(
                    self.sock.as_raw_fd(),
                    self.tx.msg[start..].as_mut_ptr(),
                    vlen,
                    libc::MSG_DONTWAIT,
                )
            };
            match usize::try_from(n) {
                Ok(0) => {
                    // Not seen from Linux; counted as a full queue rather than looping.
                    r.dropped = rest(self, start);
                    break Ok(());
                }
                Ok(n) => {
                    let n = n.min(msgs - start);
                    r.sent += self.msg_segs[start..start + n].iter().sum::<usize>();
                    self.counters.tx_messages += n as u64;
                    start += n;
                    continue;
                }
                Err(_) => {}
            }
            let e = io::Error::last_os_error();
            let errno = e.raw_os_error().unwrap_or(0);
            match errno {
                libc::EINTR => {}
                libc::EAGAIN | libc::ENOBUFS => {
                    r.dropped = rest(self, start);
                    break Ok(());
                }
                libc::EINVAL | libc::EIO | libc::EMSGSIZE | libc::EOPNOTSUPP
                    if self.msg_segs[start] > 1 =>
                {
                    tracing::warn!(
                        "udp socket {}: the kernel refused a GSO send to {} ({e}): sending \
                         datagram by datagram from now on",
                        self.local,
                        self.tx_dst[self.msg_first[start]]
                    );
                    self.gso = false;
                    msgs = self.link_messages(self.msg_first[start]);
                    start = 0;
                }
                libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENETDOWN
                | libc::EADDRNOTAVAIL
                | libc::EACCES
                | libc::EPERM
                | libc::EMSGSIZE => {
                    r.failed += self.msg_segs[start];
                    r.first_failure.get_or_insert(SendFailure {
                        dst: self.tx_dst[self.msg_first[start]],
                        errno,
                    });
                    start += 1;
                }
                _ => {
                    r.dropped = rest(self, start);
                    break Err(e);
                }
            }
        };
        self.tx_count = 0;
        self.counters.tx_datagrams += r.sent as u64;
        self.counters.tx_dropped += r.dropped as u64;
        self.counters.tx_failed += r.failed as u64;
        if r.failed > 0 {
            if let Some(f) = r.first_failure {
                tracing::debug!(
                    "udp send to {}: {} ({} datagrams failed)",
                    f.dst,
                    f.error(),
                    r.failed
                );
            }
        }
        outcome.map(|()| r).map_err(|source| UdpError::Send {
            local: self.local,
            source,
        })
    }
}

impl std::fmt::Debug for UdpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBatch")
            .field("local", &self.local)
            .field("batch", &self.batch)
            .field("rx_size", &self.rx_size)
            .field("tx_size", &self.tx_size)
            .field("gso", &self.gso)
            .field("gro", &self.gro)
            .field("received", &self.rx_count)
            .field("queued", &self.tx_count)
            .field("counters", &self.counters)
            .finish()
    }
}

/// A send slot being filled: write the datagram into [`buf`](Self::buf), then
/// [`commit`](Self::commit) its length. Dropped without a commit, nothing is queued.
pub struct TxSlot<'a> {
    owner: &'a mut UdpBatch,
    dst: SocketAddr,
}

impl TxSlot<'_> {
    /// The slot's `buf_size` bytes (their contents are left from an earlier datagram).
    pub fn buf(&mut self) -> &mut [u8] {
        let o = &mut *self.owner;
        let start = o.tx_count * o.tx_size;
        &mut o.tx.buf[start..start + o.tx_size]
    }

    /// Queues the first `len` bytes of the slot as a datagram to the slot's destination.
    pub fn commit(self, len: usize) -> Result<(), UdpError> {
        let o = self.owner;
        if len > o.tx_size {
            return Err(UdpError::PushTooLong {
                len,
                max: o.tx_size,
            });
        }
        let i = o.tx_count;
        o.tx.addr_len[i] = to_sockaddr(&self.dst, &mut o.tx.addr[i]);
        o.tx_dst[i] = self.dst;
        o.tx_len[i] = len;
        o.tx_count += 1;
        Ok(())
    }
}

#[cfg(test)]
#[path = "udp_batch_tests.rs"]
mod tests;
