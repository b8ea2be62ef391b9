//! How much of the next vhost-user message a connection has received, without reading it.
//!
//! The control loop serves every port's connection from one thread, so it only lets the
//! crate read a request (`VhostUserDaemon::handle_request`, which blocks until the whole
//! message is in) once the socket holds all of it. A frontend that sends part of a message
//! and stalls then costs nothing until its deadline (`control_loop::STALL_LIMIT`).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use vhost::vhost_user::message::MAX_MSG_SIZE;

/// A vhost-user message header: request, flags, size (u32 each).
const HEADER_LEN: usize = 12;

/// What the socket holds of the next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pending {
    /// Nothing.
    Empty,
    /// Part of a message: wait for the rest.
    Partial,
    /// A whole message (or one the crate refuses without reading on: an oversized header), or
    /// a socket this cannot look into: let the crate read it (its reads time out).
    Ready,
}

/// Looks at `stream` (FIONREAD, and the header with MSG_PEEK).
pub fn pending(stream: &UnixStream) -> Pending {
    let fd = stream.as_raw_fd();
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int to the pointer, which is valid for the call.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued as *mut libc::c_int) } < 0 {
        return Pending::Ready;
    }
    let queued = usize::try_from(queued).unwrap_or(0);
    if queued == 0 {
        return Pending::Empty;
    }
    if queued < HEADER_LEN {
        return Pending::Partial;
    }
    let mut hdr = [0u8; HEADER_LEN];
    // SAFETY: recv(2) writes at most `hdr.len()` bytes into the buffer; MSG_PEEK leaves them
    // (and any attached fds) in the socket.
    let got = unsafe {
        libc::recv(
            fd,
            hdr.as_mut_ptr().cast(),
            hdr.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if usize::try_from(got).ok() != Some(HEADER_LEN) {
        // A peek stops after a part that carries fds: the bytes are there (FIONREAD).
        return Pending::Ready;
    }
    let size = u32::from_ne_bytes([hdr[8], hdr[9], hdr[10], hdr[11]]);
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > MAX_MSG_SIZE || queued >= HEADER_LEN + size {
        Pending::Ready
    } else {
        Pending::Partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn header(size: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&1u32.to_ne_bytes());
        h.extend_from_slice(&1u32.to_ne_bytes());
        h.extend_from_slice(&size.to_ne_bytes());
        h
    }

    #[test]
    fn a_message_is_ready_only_when_all_of_it_is_in() {
        let (mut a, b) = UnixStream::pair().unwrap();
        assert_eq!(pending(&b), Pending::Empty);
        let msg = [header(8), vec![0; 8]].concat();
        a.write_all(&msg[..6]).unwrap();
        assert_eq!(pending(&b), Pending::Partial);
        a.write_all(&msg[6..14]).unwrap();
        assert_eq!(pending(&b), Pending::Partial);
        a.write_all(&msg[14..]).unwrap();
        assert_eq!(pending(&b), Pending::Ready);
    }

    #[test]
    fn an_oversized_header_is_left_to_the_crate_to_refuse() {
        let (mut a, b) = UnixStream::pair().unwrap();
        a.write_all(&header(u32::MAX)).unwrap();
        assert_eq!(pending(&b), Pending::Ready);
    }
}
