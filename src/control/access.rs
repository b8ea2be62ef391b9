//! Who may use the control socket: the emulator's own uid, root, and, with `--control-group`,
//! members of that group. The socket's mode says the same (0600, or 0660 with the group), but
//! a mode can be opened by hand: every peer is checked again by its credentials (SO_PEERCRED),
//! as libvirt and OVS check theirs.

use crate::ownership::{OwnershipError, SocketMode, SocketOwner};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// The control socket's owner group and mode: 0600 for the owner alone, 0660 with a group
/// (`SocketOwner`, as the port sockets are given theirs).
pub fn restrict(path: &Path, group: Option<u32>) -> Result<(), OwnershipError> {
    let mode = match group {
        Some(_) => SocketMode::OWNER_AND_GROUP,
        None => SocketMode::OWNER_ONLY,
    };
    SocketOwner::new(group, Some(mode)).apply(path)
}

/// A peer's credentials.
#[derive(Debug, Clone, Copy)]
struct Peer {
    pid: i32,
    uid: u32,
    gid: u32,
}

fn peer(c: &UnixStream) -> Option<Peer> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt(2) on a socket we own, writing at most `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::from_mut(&mut cred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(Peer {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Whether process `pid` has `gid` among its supplementary groups (`Groups:` in its status).
fn has_supplementary_group(pid: i32, gid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Groups:"))
                .map(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
        .unwrap_or(false)
}

/// Whether the peer of `c` may use the control socket; the reason if not.
pub fn check_peer(c: &UnixStream, group: Option<u32>) -> Result<(), String> {
    // SAFETY: geteuid(2) has no preconditions.
    let me = unsafe { libc::geteuid() };
    let Some(p) = peer(c) else {
        return Err("permission denied: the peer's credentials are unknown".into());
    };
    if p.uid == me || p.uid == 0 {
        return Ok(());
    }
    match group {
        Some(gid) if p.gid == gid || has_supplementary_group(p.pid, gid) => Ok(()),
        Some(gid) => Err(format!(
            "permission denied: uid {} is neither the emulator's (uid {me}) nor in the control \
             group (gid {gid})",
            p.uid
        )),
        None => Err(format!(
            "permission denied: uid {} is not the emulator's (uid {me})",
            p.uid
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_of_our_own_uid_is_admitted() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(check_peer(&a, None), Ok(()));
        assert_eq!(check_peer(&a, Some(54400)), Ok(()));
    }
}
