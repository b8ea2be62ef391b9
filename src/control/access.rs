//! Who may use the control socket: the emulator's own uid, root, and, with `--control-group`,
//! members of that group. The socket's mode says the same (0600, or 0660 with the group), but
//! a mode can be opened by hand: every peer is checked again by its credentials (SO_PEERCRED),
//! as libvirt and OVS check theirs.

use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Why a group cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("unknown group {0:?} (a group name from /etc/group, or a numeric gid)")]
    UnknownGroup(String),
    #[error("cannot give {path} to group {gid}")]
    Chown {
        path: String,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set {path}'s mode to {mode:o}")]
    Mode {
        path: String,
        mode: u32,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves a group name or a numeric gid.
pub fn group_id(name: &str) -> Result<u32, AccessError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let unknown = || AccessError::UnknownGroup(name.to_string());
    let c = CString::new(name).map_err(|_| unknown())?;
    let mut grp: libc::group = empty_group();
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: getgrnam_r(3) with a NUL-terminated name, a group struct and a buffer we own
    // (the buffer's length passed), and `out` to write the result pointer into.
    let r =
        unsafe { libc::getgrnam_r(c.as_ptr(), &mut grp, buf.as_mut_ptr(), buf.len(), &mut out) };
    if r != 0 || out.is_null() {
        return Err(unknown());
    }
    Ok(grp.gr_gid)
}

fn empty_group() -> libc::group {
    libc::group {
        gr_name: std::ptr::null_mut(),
        gr_passwd: std::ptr::null_mut(),
        gr_gid: 0,
        gr_mem: std::ptr::null_mut(),
    }
}

/// The socket's owner group and mode: 0600 for the owner alone, 0660 with a group.
pub fn restrict(path: &Path, group: Option<u32>) -> Result<(), AccessError> {
    let shown = || path.display().to_string();
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| AccessError::Chown {
            path: shown(),
            gid,
            source,
        })?;
    }
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        AccessError::Mode {
            path: shown(),
            mode,
            source,
        }
    })
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
    fn groups_by_name_or_number() {
        assert_eq!(group_id("0").unwrap(), 0);
        assert_eq!(group_id("root").unwrap(), 0);
        assert_eq!(group_id("54400").unwrap(), 54400);
        let e = group_id("no-such-group-here").unwrap_err().to_string();
        assert!(e.contains("unknown group \"no-such-group-here\""), "{e}");
        assert!(group_id("bad\0name").is_err());
    }

    #[test]
    fn a_process_of_our_own_uid_is_admitted() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(check_peer(&a, None), Ok(()));
        assert_eq!(check_peer(&a, Some(54400)), Ok(()));
    }
}
