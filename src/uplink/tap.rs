//! TAP device I/O for the PF's uplink, at the byte level: open (create or attach), one
//! non-blocking fd per queue, frames in and out behind a 12-byte virtio-net header, and the
//! interface's administrative state and MTU. No pipeline here: the uplink port builds on it.
//!
//! - Offloads are off (`TUNSETOFFLOAD 0`): the kernel hands over complete frames with their
//!   checksums filled in, never GSO. The header is still there (`IFF_VNET_HDR`, 12 bytes: the
//!   `virtio_net_hdr_v1` with `num_buffers`); writes send a zeroed one, reads check it.
//! - A TAP this process created (it did not exist and is not persistent) vanishes when its
//!   last fd closes, i.e. when the [`TapDevice`] is dropped; a persistent one (`ip tuntap add`)
//!   stays.
//! - Interface down: writes fail with `EIO`, reads find nothing. Interface deleted (`ip link
//!   del`, or its namespace removed): every call fails with `EBADFD`, poll reports `POLLERR`.
//! - Multi-queue: the kernel (6.18 here) picks the queue of a frame it sends by a hash of its
//!   flow, not by the queue the flow's frames were written on: poll every queue.
//! - The fds keep working when the interface is moved to another network namespace or renamed.
//!   The name-based queries (`is_up`, `mtu`) follow it: on `ENODEV` they ask the fd for the
//!   device's current name and namespace (`TUNGETIFF`, `TUNGETDEVNETNS`) and retry once.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use virtio_bindings::bindings::virtio_net::{VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_GSO_NONE};

/// The virtio-net header in front of every frame on a TAP fd (with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// The most slices one [`TapDevice::write_frame`] takes.
pub const MAX_PARTS: usize = 3;
/// Longest interface name (`IFNAMSIZ` less the NUL).
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
/// Header flags a frame may carry without offloads: "checksum already verified".
const ALLOWED_HDR_FLAGS: u8 = VIRTIO_NET_HDR_F_DATA_VALID as u8;
/// The header written in front of every frame: no checksum or GSO work asked of the kernel.
static TX_HDR: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

/// Why a TAP operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "invalid interface name {0:?} (1 to 15 bytes, not . or .., no '/', ':' or whitespace)"
    )]
    Name(String),
    #[error("a TAP needs at least one queue")]
    NoQueues,
    #[error("cannot open /dev/net/tun")]
    Open { source: io::Error },
    #[error("cannot attach queue {queue} to TAP {name} (TUNSETIFF)")]
    SetIff {
        name: String,
        queue: usize,
        source: io::Error,
    },
    #[error("cannot set the vnet header size of TAP {name}")]
    VnetHdr { name: String, source: io::Error },
    #[error("cannot turn off the offloads of TAP {name}")]
    Offload { name: String, source: io::Error },
    #[error("cannot open a control socket for TAP {name}")]
    Socket { name: String, source: io::Error },
    #[error("cannot read the flags of TAP {name}")]
    Flags { name: String, source: io::Error },
    #[error("cannot read the MTU of TAP {name}")]
    Mtu { name: String, source: io::Error },
    #[error("cannot set the MTU of TAP {name} to {mtu}")]
    SetMtu {
        name: String,
        mtu: u32,
        source: io::Error,
    },
    #[error("no queue {queue} (the TAP has {queues})")]
    Queue { queue: usize, queues: usize },
    #[error("cannot read from TAP queue {queue}")]
    Read { queue: usize, source: io::Error },
    #[error("cannot write to TAP queue {queue}")]
    Write { queue: usize, source: io::Error },
    #[error("a frame in {parts} slices (at most {MAX_PARTS})")]
    Parts { parts: usize },
    #[error("TAP queue {queue} gave {len} bytes, less than the vnet header")]
    ShortRead { queue: usize, len: usize },
    #[error("a frame from TAP queue {queue} is longer than the {cap}-byte buffer; dropped")]
    Truncated { queue: usize, cap: usize },
    #[error(
        "TAP queue {queue} gave a frame with offload work (vnet header flags {flags:#x}, \
         gso_type {gso_type}); dropped"
    )]
    Offloaded {
        queue: usize,
        flags: u8,
        gso_type: u8,
    },
}

pub type Result<T> = std::result::Result<T, TapError>;

/// An open TAP interface: one fd per queue, plus a control socket for its flags and MTU.
pub struct TapDevice {
    fds: Vec<OwnedFd>,
    name: String,
    created: bool,
    ctl: Mutex<Control>,
}

/// Where name-based queries go: the device's current name and a socket in its namespace.
struct Control {
    name: String,
    sock: OwnedFd,
}

impl TapDevice {
    /// Creates TAP `name`, or attaches to an existing one (e.g. made by `ip tuntap add`), with
    /// `queues` non-blocking fds. More than one queue sets `IFF_MULTI_QUEUE` (which an existing
    /// single-queue TAP refuses with `EINVAL`); one queue does not. A name with `%d` lets the
    /// kernel pick; [`name`](Self::name) gives the result.
    pub fn open(name: &str, queues: usize) -> Result<TapDevice> {
        check_name(name)?;
        if queues == 0 {
            return Err(TapError::NoQueues);
        }
        let existed = if_exists(name);
        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if queues > 1 {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        // The first TUNSETIFF may create the device (and resolve a `%d`); the others attach.
        // The header size and offloads below belong to the device, so fd 0 sets them for all.
        let mut name = name.to_string();
        let mut fds = Vec::with_capacity(queues);
        for queue in 0..queues {
            let (fd, actual) = open_queue(&name, flags, queue)?;
            name = actual;
            fds.push(fd);
        }
        let fd0 = fds[0].as_raw_fd();
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, valid for the call.
        let r = unsafe { libc::ioctl(fd0, libc::TUNSETVNETHDRSZ, &hdr_len as *const libc::c_int) };
        check(r).map_err(|source| TapError::VnetHdr {
            name: name.clone(),
            source,
        })?;
        // SAFETY: TUNSETOFFLOAD takes the offload bits as the argument itself, no pointer.
        let r = unsafe { libc::ioctl(fd0, libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        check(r).map_err(|source| TapError::Offload {
            name: name.clone(),
            source,
        })?;
        let sock = control_socket().map_err(|source| TapError::Socket {
            name: name.clone(),
            source,
        })?;
        tracing::info!(
            tap = %name,
            queues,
            "{} TAP",
            if existed { "attached to" } else { "created" }
        );
        Ok(TapDevice {
            fds,
            ctl: Mutex::new(Control {
                name: name.clone(),
                sock,
            }),
            name,
            created: !existed,
        })
    }

    /// The interface's name when it was opened (it may be renamed since; queries follow it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `open` created the interface (it did not exist before), so that it goes away
    /// when this device is dropped (unless someone made it persistent meanwhile).
    pub fn created(&self) -> bool {
        self.created
    }

    pub fn queues(&self) -> usize {
        self.fds.len()
    }

    /// The fd of `queue`, to poll for readability. Once the interface is deleted under us, poll
    /// reports `POLLERR` on it for good (and every operation fails with `EBADFD`).
    ///
    /// # Panics
    /// If `queue >= self.queues()`.
    pub fn fd(&self, queue: usize) -> RawFd {
        self.fds[queue].as_raw_fd()
    }

    /// Reads one frame into `buf`. `Ok(None)`: nothing to read (`EAGAIN`, also while the
    /// interface is down). `Ok(Some(len))`: a frame of `len` bytes, without the vnet header.
    /// A frame longer than `buf` or one asking for offload work is consumed and reported as
    /// [`TapError::Truncated`] / [`TapError::Offloaded`], for the caller to count as a drop.
    /// The header may carry `VIRTIO_NET_HDR_F_DATA_VALID` (the kernel verified the checksum);
    /// any other flag or a GSO type is refused.
    pub fn read_frame(&self, queue: usize, buf: &mut [u8]) -> Result<Option<usize>> {
        let fd = self.queue_fd(queue)?;
        // Zeroed every time: the kernel fills the 10-byte `virtio_net_hdr`, and `num_buffers`
        // is not its business.
        let mut hdr = [0u8; VNET_HDR_LEN];
        // The kernel copies what fits and returns only that much: a byte landing here tells
        // that the frame was longer than `buf`.
        let mut spare = 0u8;
        let iov = [
            libc::iovec {
                iov_base: hdr.as_mut_ptr().cast(),
                iov_len: hdr.len(),
            },
            libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            },
            libc::iovec {
                iov_base: (&mut spare as *mut u8).cast(),
                iov_len: 1,
            },
        ];
        // SAFETY: the iovecs describe memory exclusively borrowed for this call.
        let n = unsafe { libc::readv(fd, iov.as_ptr(), 3) };
        let n = match usize::try_from(n) {
            Ok(n) => n,
            Err(_) => {
                let source = io::Error::last_os_error();
                if source.kind() == io::ErrorKind::WouldBlock {
                    return Ok(None);
                }
                return Err(TapError::Read { queue, source });
            }
        };
        let len = n
            .checked_sub(VNET_HDR_LEN)
            .ok_or(TapError::ShortRead { queue, len: n })?;
        if len > buf.len() {
            return Err(TapError::Truncated {
                queue,
                cap: buf.len(),
            });
        }
        let (flags, gso_type) = (hdr[0], hdr[1]);
        if flags & !ALLOWED_HDR_FLAGS != 0 || u32::from(gso_type) != VIRTIO_NET_HDR_GSO_NONE {
            return Err(TapError::Offloaded {
                queue,
                flags,
                gso_type,
            });
        }
        Ok(Some(len))
    }

    /// Writes one frame given as up to [`MAX_PARTS`] slices, behind a zeroed vnet header.
    /// `Ok(false)`: the kernel cannot take it now (`EAGAIN`); the caller counts a drop.
    /// The kernel refuses a frame shorter than an Ethernet header (`EINVAL`) and, while the
    /// interface is down, every frame (`EIO`).
    pub fn write_frame(&self, queue: usize, parts: &[&[u8]]) -> Result<bool> {
        let fd = self.queue_fd(queue)?;
        if parts.len() > MAX_PARTS {
            return Err(TapError::Parts { parts: parts.len() });
        }
        let mut iov = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_PARTS + 1];
        iov[0] = libc::iovec {
            iov_base: TX_HDR.as_ptr().cast_mut().cast(),
            iov_len: TX_HDR.len(),
        };
        let mut total = TX_HDR.len();
        for (slot, part) in iov[1..].iter_mut().zip(parts) {
            *slot = libc::iovec {
                iov_base: part.as_ptr().cast_mut().cast(),
                iov_len: part.len(),
            };
            total += part.len();
        }
        // At most MAX_PARTS + 1: fits a c_int.
        let count = parts.len() + 1;
        // SAFETY: the first `count` iovecs describe live slices that writev only reads.
        let n = unsafe { libc::writev(fd, iov.as_ptr(), count as libc::c_int) };
        match usize::try_from(n) {
            Ok(n) if n == total => Ok(true),
            Ok(n) => Err(TapError::Write {
                queue,
                source: io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("wrote {n} of {total} bytes"),
                ),
            }),
            Err(_) => {
                let source = io::Error::last_os_error();
                if source.kind() == io::ErrorKind::WouldBlock {
                    return Ok(false);
                }
                Err(TapError::Write { queue, source })
            }
        }
    }

    /// Whether the interface is administratively up (`IFF_UP`, what `ip link set ... up|down`
    /// sets): the uplink's carrier as the user controls it. One ioctl when nothing moved.
    pub fn is_up(&self) -> Result<bool> {
        let ifr = self
            .query(libc::SIOCGIFFLAGS, |_| {})
            .map_err(|(name, source)| TapError::Flags { name, source })?;
        // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        Ok(libc::c_int::from(flags) & libc::IFF_UP != 0)
    }

    /// The interface's MTU (`SIOCGIFMTU`).
    pub fn mtu(&self) -> Result<u32> {
        let ifr = self
            .query(libc::SIOCGIFMTU, |_| {})
            .map_err(|(name, source)| TapError::Mtu { name, source })?;
        // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member.
        let mtu = unsafe { ifr.ifr_ifru.ifru_mtu };
        u32::try_from(mtu).map_err(|_| TapError::Mtu {
            name: self.name.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, format!("MTU {mtu}")),
        })
    }

    /// Sets the interface's MTU (`SIOCSIFMTU`; the kernel allows 68..=65521 on a TAP).
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        let value = libc::c_int::try_from(mtu).map_err(|_| TapError::SetMtu {
            name: self.name.clone(),
            mtu,
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        self.query(libc::SIOCSIFMTU, |ifr| ifr.ifr_ifru.ifru_mtu = value)
            .map(|_| ())
            .map_err(|(name, source)| TapError::SetMtu { name, mtu, source })
    }

    fn queue_fd(&self, queue: usize) -> Result<RawFd> {
        match self.fds.get(queue) {
            Some(fd) => Ok(fd.as_raw_fd()),
            None => Err(TapError::Queue {
                queue,
                queues: self.fds.len(),
            }),
        }
    }

    /// Runs the ifreq ioctl `req` on the control socket for the device's current name, after
    /// `fill` set the request's value. On `ENODEV` (renamed, moved to another namespace) finds
    /// the device again and retries once. Errors carry the name last tried.
    fn query(
        &self,
        req: libc::Ioctl,
        fill: impl Fn(&mut libc::ifreq),
    ) -> std::result::Result<libc::ifreq, (String, io::Error)> {
        let mut ctl = self.lock_ctl();
        match ctl.ioctl(req, &fill) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
            done => return done.map_err(|e| (ctl.name.clone(), e)),
        }
        let (name, sock) = locate(self.fds[0].as_raw_fd()).map_err(|e| (ctl.name.clone(), e))?;
        tracing::info!(tap = %self.name, now = %name, "TAP moved or renamed; following it");
        *ctl = Control { name, sock };
        ctl.ioctl(req, &fill).map_err(|e| (ctl.name.clone(), e))
    }

    fn lock_ctl(&self) -> MutexGuard<'_, Control> {
        // A panic elsewhere cannot leave `Control` half-written: it is replaced whole.
        self.ctl.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Control {
    fn ioctl(&self, req: libc::Ioctl, fill: &dyn Fn(&mut libc::ifreq)) -> io::Result<libc::ifreq> {
        let mut ifr = ifreq(&self.name);
        fill(&mut ifr);
        // SAFETY: `req` is an ifreq ioctl (SIOCGIFFLAGS, SIOCGIFMTU, SIOCSIFMTU) that reads and
        // writes only the ifreq behind the pointer, valid for the call.
        check(unsafe { libc::ioctl(self.sock.as_raw_fd(), req, &mut ifr as *mut libc::ifreq) })?;
        Ok(ifr)
    }
}

/// Linux's rules for an interface name (`dev_valid_name`), except that empty is refused too
/// (TUNSETIFF would pick `tapN`).
fn check_name(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > MAX_NAME_LEN
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if bad {
        return Err(TapError::Name(name.to_string()));
    }
    Ok(())
}

fn if_exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else {
        return false;
    };
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

/// An all-zero `ifreq` naming `name` (at most 15 bytes, checked by `check_name`, or a name the
/// kernel gave).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a byte array and a union of integers, sockaddrs and a
    // pointer); all zeroes is a valid value of each.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes().take(MAX_NAME_LEN)) {
        *dst = src as libc::c_char;
    }
    ifr
}

/// The name in an ifreq the kernel filled (NUL-terminated within IFNAMSIZ).
fn ifreq_name(ifr: &libc::ifreq) -> String {
    let bytes: Vec<u8> = ifr
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Opens /dev/net/tun non-blocking and attaches it to `name` as queue `queue`. Returns the fd
/// and the name the kernel reports.
fn open_queue(name: &str, flags: libc::c_int, queue: usize) -> Result<(OwnedFd, String)> {
    // SAFETY: a NUL-terminated path literal; open returns a new fd or -1.
    let raw = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(TapError::Open {
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut ifr = ifreq(name);
    // The tun flags are a short in the union; every one used here fits.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads the ifreq and writes the device's name back into it.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    };
    check(r).map_err(|source| TapError::SetIff {
        name: name.to_string(),
        queue,
        source,
    })?;
    Ok((fd, ifreq_name(&ifr)))
}

/// A datagram socket for the interface ioctls, in the calling thread's network namespace.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket returns a new fd or -1.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    check(raw)?;
    // SAFETY: `raw` is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// Where the device behind tun fd `tun` is now: its current name (`TUNGETIFF`) and a control
/// socket in its current network namespace (`TUNGETDEVNETNS`, entered by a short-lived thread
/// so that no thread of ours changes namespace for good).
fn locate(tun: RawFd) -> io::Result<(String, OwnedFd)> {
    let mut ifr = ifreq("");
    // SAFETY: TUNGETIFF writes the device's name and tun flags into the ifreq.
    check(unsafe { libc::ioctl(tun, libc::TUNGETIFF, &mut ifr as *mut libc::ifreq) })?;
    // SAFETY: TUNGETDEVNETNS takes no argument and returns a new fd or -1.
    let raw = unsafe { libc::ioctl(tun, libc::TUNGETDEVNETNS) };
    check(raw)?;
    // SAFETY: `raw` is a new fd that nothing else owns.
    let netns = unsafe { OwnedFd::from_raw_fd(raw) };
    let sock = std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("tap-netns".into())
            .spawn_scoped(s, || {
                // SAFETY: setns on a namespace fd we own; it changes only this thread, which
                // ends right after making the socket.
                check(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) })?;
                control_socket()
            })?
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
    })?;
    Ok((ifreq_name(&ifr), sock))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[path = "tap_tests.rs"]
mod tests;
