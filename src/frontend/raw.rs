//! A vhost-user frontend that writes the wire format by hand: any header, any body, any file
//! descriptors (SCM_RIGHTS), in any order. For tests of how a back-end treats a broken or
//! hostile frontend: truncated and oversized messages, unknown requests, memory tables and
//! vring numbers no QEMU sends. `VirtioNetFrontend` (through vhost's `Frontend`) can only send
//! well-formed messages.
//!
//! A message is a 12-byte header (u32 request, u32 flags, u32 size of the body, little
//! endian) and then the body. Bodies are best built from vhost's own message structs
//! (`vhost::vhost_user::message`, as bytes with `vm_memory::ByteValued::as_slice`).

use std::io::{self, Read};
use std::os::fd::RawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};
use vhost::vhost_user::message::{FrontendReq, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// Header flag: the protocol version, required on every message.
pub const VERSION: u32 = 0x1;
/// Header flag: the message is a reply.
pub const REPLY: u32 = 0x4;
/// Header flag: the frontend asks for an ack (REPLY_ACK).
pub const NEED_REPLY: u32 = 0x8;
/// Bytes of a message header.
pub const HEADER_LEN: usize = 12;
/// The largest reply body read (vhost's MAX_MSG_SIZE); a longer one is an error.
const MAX_REPLY_BODY: usize = 0x1000;

/// vhost's "log all writes" feature (VHOST_F_LOG_ALL): never acked by `handshake`.
const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// Why the raw frontend failed.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    #[error("cannot connect to {path}")]
    Connect {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot send a message")]
    Send(#[source] io::Error),
    #[error("cannot read from the back-end")]
    Recv(#[source] io::Error),
    #[error("the back-end closed the connection")]
    Closed,
    #[error("no answer to request {0} in time")]
    NoAnswer(u32),
    #[error("answer to request {request}: {what}")]
    BadAnswer { request: u32, what: String },
    #[error("the back-end refused request {request} (ack {value})")]
    Refused { request: u32, value: u64 },
}

type Result<T> = std::result::Result<T, RawError>;

/// One message as read from the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub request: u32,
    pub flags: u32,
    pub body: Vec<u8>,
}

impl Message {
    /// The body as a u64 (a REPLY_ACK ack, GET_FEATURES, ...), if it is one.
    pub fn u64(&self) -> Option<u64> {
        let b: [u8; 8] = self.body.as_slice().try_into().ok()?;
        Some(u64::from_le_bytes(b))
    }
}

/// What the back-end did after a request, within a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// It replied.
    Reply(Message),
    /// It closed the connection.
    Closed,
    /// Nothing came; the connection is still open.
    Silent,
}

impl Answer {
    /// For a REPLY_ACK ack: Some(true) for success (0), Some(false) for an error (non-zero).
    pub fn acked(&self) -> Option<bool> {
        match self {
            Answer::Reply(m) => m.u64().map(|v| v == 0),
            _ => None,
        }
    }
}

/// The header of a message: request, flags, size of the body.
pub fn header(request: u32, flags: u32, size: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&request.to_le_bytes());
    h[4..8].copy_from_slice(&flags.to_le_bytes());
    h[8..].copy_from_slice(&size.to_le_bytes());
    h
}

fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// How a read of a whole buffer ended.
enum Fill {
    Full,
    /// End of stream (or reset) after this many bytes.
    Eof(usize),
    /// Nothing more in time, after this many bytes.
    Timeout(usize),
}

/// A connection to a vhost-user back-end, written to byte by byte.
pub struct RawFrontend {
    sock: UnixStream,
    /// Request codes are u32 on the wire; remembered to name a missing answer.
    last_request: u32,
}

impl RawFrontend {
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let sock = UnixStream::connect(path).map_err(|source| RawError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Ok(RawFrontend {
            sock,
            last_request: 0,
        })
    }

    /// Sends `bytes` as they are, with `fds` attached, in one sendmsg. A back-end that has
    /// hung up is `Closed`.
    pub fn send_bytes(&mut self, bytes: &[u8], fds: &[RawFd]) -> Result<()> {
        let sent = self
            .sock
            .send_with_fds(&[bytes], fds)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()));
        match sent {
            Ok(n) if n == bytes.len() => Ok(()),
            Ok(n) => Err(RawError::Send(io::Error::other(format!(
                "sent {n} of {} bytes",
                bytes.len()
            )))),
            Err(e) if is_hangup(&e) => Err(RawError::Closed),
            Err(e) => Err(RawError::Send(e)),
        }
    }

    /// Sends a message whose header announces exactly `body`.
    pub fn send(&mut self, request: u32, flags: u32, body: &[u8], fds: &[RawFd]) -> Result<()> {
        let size = u32::try_from(body.len())
            .map_err(|_| RawError::Send(io::Error::other("body longer than u32")))?;
        let mut msg = header(request, flags, size).to_vec();
        msg.extend_from_slice(body);
        self.last_request = request;
        self.send_bytes(&msg, fds)
    }

    /// Half-closes the connection: the back-end reads end of stream.
    pub fn shutdown_write(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Write);
    }

    fn fill(&mut self, buf: &mut [u8], deadline: Instant) -> Result<Fill> {
        let mut got = 0;
        while got < buf.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(Fill::Timeout(got));
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(RawError::Recv)?;
            match self.sock.read(&mut buf[got..]) {
                Ok(0) => return Ok(Fill::Eof(got)),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Ok(Fill::Timeout(got)),
                Err(e) if is_hangup(&e) => return Ok(Fill::Eof(got)),
                Err(e) => return Err(RawError::Recv(e)),
            }
        }
        Ok(Fill::Full)
    }

    /// Reads the next message, or notices the back-end closed the connection, or that nothing
    /// came within `timeout`.
    pub fn answer(&mut self, timeout: Duration) -> Result<Answer> {
        let deadline = Instant::now() + timeout;
        let mut hdr = [0u8; HEADER_LEN];
        match self.fill(&mut hdr, deadline)? {
            Fill::Full => {}
            Fill::Eof(0) => return Ok(Answer::Closed),
            Fill::Timeout(0) => return Ok(Answer::Silent),
            Fill::Eof(n) | Fill::Timeout(n) => {
                return Err(RawError::BadAnswer {
                    request: self.last_request,
                    what: format!("a header of {n} bytes"),
                })
            }
        }
        let word = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (request, flags, size) = (word(0), word(4), word(8));
        let len = usize::try_from(size).unwrap_or(usize::MAX);
        if len > MAX_REPLY_BODY {
            return Err(RawError::BadAnswer {
                request,
                what: format!("a body of {size} bytes"),
            });
        }
        let mut body = vec![0u8; len];
        match self.fill(&mut body, deadline)? {
            Fill::Full => Ok(Answer::Reply(Message {
                request,
                flags,
                body,
            })),
            Fill::Eof(n) | Fill::Timeout(n) => Err(RawError::BadAnswer {
                request,
                what: format!("{n} of {size} body bytes"),
            }),
        }
    }

    /// Sends a request with NEED_REPLY and returns what the back-end did about it.
    pub fn call(
        &mut self,
        request: u32,
        body: &[u8],
        fds: &[RawFd],
        timeout: Duration,
    ) -> Result<Answer> {
        match self.send(request, VERSION | NEED_REPLY, body, fds) {
            Ok(()) => {}
            Err(RawError::Closed) => return Ok(Answer::Closed),
            Err(e) => return Err(e),
        }
        self.answer(timeout)
    }

    /// A request with NEED_REPLY that must succeed (REPLY_ACK negotiated).
    pub fn ack(
        &mut self,
        request: u32,
        body: &[u8],
        fds: &[RawFd],
        timeout: Duration,
    ) -> Result<()> {
        match self.call(request, body, fds, timeout)? {
            Answer::Reply(m) => match m.u64() {
                Some(0) => Ok(()),
                Some(value) => Err(RawError::Refused { request, value }),
                None => Err(RawError::BadAnswer {
                    request,
                    what: format!("an ack of {} bytes", m.body.len()),
                }),
            },
            Answer::Closed => Err(RawError::Closed),
            Answer::Silent => Err(RawError::NoAnswer(request)),
        }
    }

    /// A request whose reply is a u64 (GET_FEATURES, GET_PROTOCOL_FEATURES, ...).
    pub fn get_u64(&mut self, request: FrontendReq, timeout: Duration) -> Result<u64> {
        let request = u32::from(request);
        self.send(request, VERSION, &[], &[])?;
        match self.answer(timeout)? {
            Answer::Reply(m) if m.request == request && m.flags & REPLY != 0 => {
                m.u64().ok_or_else(|| RawError::BadAnswer {
                    request,
                    what: format!("a body of {} bytes", m.body.len()),
                })
            }
            Answer::Reply(m) => Err(RawError::BadAnswer {
                request,
                what: format!("request {} flags {:#x}", m.request, m.flags),
            }),
            Answer::Closed => Err(RawError::Closed),
            Answer::Silent => Err(RawError::NoAnswer(request)),
        }
    }

    /// What QEMU does first: SET_OWNER, features and protocol features (REPLY_ACK, MQ,
    /// CONFIGURE_MEM_SLOTS, LOG_SHMFD where offered), SET_FEATURES with everything offered but
    /// VHOST_F_LOG_ALL. From here every request can ask for an ack. Returns the acked
    /// features.
    pub fn handshake(&mut self, timeout: Duration) -> Result<u64> {
        self.send(u32::from(FrontendReq::SET_OWNER), VERSION, &[], &[])?;
        let features = self.get_u64(FrontendReq::GET_FEATURES, timeout)?;
        let proto_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if features & proto_bit == 0 {
            return Err(RawError::BadAnswer {
                request: u32::from(FrontendReq::GET_FEATURES),
                what: "no PROTOCOL_FEATURES".into(),
            });
        }
        let offered = self.get_u64(FrontendReq::GET_PROTOCOL_FEATURES, timeout)?;
        let want = (VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD)
            .bits();
        let set_pf = u32::from(FrontendReq::SET_PROTOCOL_FEATURES);
        self.send(set_pf, VERSION, &(offered & want).to_le_bytes(), &[])?;
        let acked = features & !VHOST_F_LOG_ALL;
        let set_features = u32::from(FrontendReq::SET_FEATURES);
        self.ack(set_features, &acked.to_le_bytes(), &[], timeout)?;
        Ok(acked)
    }

    /// Whether the back-end closes the connection within `timeout`; whatever it sends
    /// before is read and dropped.
    pub fn closed_within(&mut self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        let mut scratch = [0u8; 256];
        loop {
            match self.fill(&mut scratch, deadline)? {
                Fill::Full => {}
                Fill::Eof(_) => return Ok(true),
                Fill::Timeout(_) => return Ok(false),
            }
        }
    }
}
