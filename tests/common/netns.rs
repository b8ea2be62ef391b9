//! Network namespaces for tests that need the host's network stack (TAP and VXLAN uplinks,
//! Linux vxlan devices): created with unique names, deleted with everything in them on drop,
//! even on failure; sockets opened inside one; raw Ethernet sockets on an interface.
//!
//! Needs root and `ip`; `skip_without_ip` says SKIPPED when `ip` is missing.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// `true` (after printing the SKIPPED line past the harness's capture) when `ip` is missing.
pub fn skip_without_ip(test: &str) -> bool {
    match Command::new("ip").arg("-V").output() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let _ = std::io::stderr()
                .write_all(format!("\nSKIPPED: {test}: the `ip` command is missing\n").as_bytes());
            true
        }
        _ => false,
    }
}

/// Runs `cmd args`, panicking with its stderr if it fails; its stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(args: &[&str]) -> String {
    run("ip", args)
}

/// A name no other test of any process uses at the same time: `{prefix}{pid}-{n}`, at most
/// 15 bytes (an interface name's limit) for a short prefix.
pub fn unique_name(prefix: &str) -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id() % 100_000,
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Network namespaces deleted on drop, with everything in them (veth, vxlan, moved TAPs).
pub struct Netns(Vec<String>);

impl Netns {
    /// `n` new namespaces with names unique to this process and call.
    pub fn new(n: usize) -> Netns {
        let mut guard = Netns(Vec::new());
        for _ in 0..n {
            let name = unique_name("sxns");
            ip(&["netns", "add", &name]);
            guard.0.push(name);
        }
        guard
    }

    pub fn name(&self, i: usize) -> &str {
        &self.0[i]
    }

    /// `ip -n NS args`.
    pub fn ip(&self, i: usize, args: &[&str]) -> String {
        let mut all = vec!["-n", self.name(i)];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs `cmd args` inside namespace `i` (`ip netns exec`).
    pub fn exec(&self, i: usize, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["netns", "exec", self.name(i), cmd];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread that has joined network namespace `ns`: sockets it creates belong to
/// `ns` for good. A panic in `f` is the caller's panic.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: `file` is an open namespace file for the duration of the call; setns with
        // CLONE_NEWNET changes the namespace of this (new, short-lived) thread only.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// An AF_PACKET socket on one interface: whole Ethernet frames in and out.
pub struct RawSocket {
    fd: OwnedFd,
}

/// `PACKET_IGNORE_OUTGOING` (linux/if_packet.h): do not see the frames we send.
const PACKET_IGNORE_OUTGOING: libc::c_int = 23;

impl RawSocket {
    /// Opens a raw socket on `ifname` in the calling thread's namespace (see `in_netns`).
    pub fn open(ifname: &str) -> RawSocket {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = std::ffi::CString::new(ifname).expect("interface name");
        // SAFETY: `name` is a valid C string.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert!(index != 0, "no interface {ifname}");
        // SAFETY: sockaddr_ll is plain data; zeroed is valid, the fields are set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = index as i32;
        // SAFETY: `sll` is a valid sockaddr_ll of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
        let one: libc::c_int = 1;
        let big: libc::c_int = 8 << 20;
        // SAFETY: setsockopt with pointers to live ints of the given size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_IGNORE_OUTGOING,
                &one as *const _ as *const libc::c_void,
                4,
            );
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                &big as *const _ as *const libc::c_void,
                4,
            );
        }
        RawSocket { fd }
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "raw send: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame received within `timeout` for which `want` holds (others are skipped:
    /// the kernel's own chatter).
    pub fn recv_matching(
        &self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let end = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().max(1) as i32) };
            if r <= 0 {
                continue;
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 && want(&buf[..n as usize]) {
                return Some(buf[..n as usize].to_vec());
            }
        }
    }
}
