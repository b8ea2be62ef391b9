//! Who may connect to a socket the emulator serves: its group and mode.
//!
//! - `group_id`: a group name or numeric gid, resolved once at start (an unknown group is an
//!   error before anything listens).
//! - `SocketMode`: an octal permission mode (`0660`), from the command line or the config file.
//! - `SocketOwner`: the group and mode given to a socket right after it is bound; the port
//!   sockets (`--socket-group`, `--socket-mode`) and the control socket (`--control-group`)
//!   are both set through it.
//!
//! A process needs write permission on a unix socket to connect to it, so a group that is to
//! connect needs `g+w` (0660); libvirt's QEMU runs as `libvirt-qemu` in group `kvm`.

use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Why a group or mode cannot be used, or a socket could not be given them.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("unknown group {0:?} (a group name from /etc/group, or a numeric gid)")]
    UnknownGroup(String),
    #[error("bad socket mode {given:?}: {why} (an octal mode such as 0660)")]
    BadMode { given: String, why: &'static str },
    #[error("cannot give {path} to group {gid}")]
    Chown {
        path: PathBuf,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set {path}'s mode to {mode}")]
    Chmod {
        path: PathBuf,
        mode: SocketMode,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves a group name or a numeric gid.
pub fn group_id(name: &str) -> Result<u32, OwnershipError> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let unknown = || OwnershipError::UnknownGroup(name.to_string());
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

/// A socket's permission bits, 0..=0o777 (no setuid, setgid or sticky bit: they mean nothing
/// on a socket). Written and shown in octal: `0660`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(u32);

impl SocketMode {
    /// Owner and group read and write: what a group needs to connect.
    pub const OWNER_AND_GROUP: SocketMode = SocketMode(0o660);
    /// The owner alone.
    pub const OWNER_ONLY: SocketMode = SocketMode(0o600);

    /// The mode `bits`, if it has no bits beyond 0o777.
    pub fn new(bits: u32) -> Option<SocketMode> {
        (bits <= 0o777).then_some(SocketMode(bits))
    }

    pub fn bits(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for SocketMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

impl FromStr for SocketMode {
    type Err = OwnershipError;

    /// `0660`, `660` or `0o660`: octal digits, at most 0777.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why| OwnershipError::BadMode {
            given: s.to_string(),
            why,
        };
        let t = s.trim();
        let digits = t.strip_prefix("0o").unwrap_or(t);
        if digits.is_empty() {
            return Err(bad("no digits"));
        }
        if !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(bad("not octal digits"));
        }
        let bits = u32::from_str_radix(digits, 8).map_err(|_| bad("too large"))?;
        SocketMode::new(bits)
            .ok_or_else(|| bad("only permission bits (at most 0777) apply to a socket"))
    }
}

/// The config file takes `"0660"` (a string, read as octal) or TOML's octal integer `0o660`.
impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Number(i64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => s.parse().map_err(de::Error::custom),
            Raw::Number(n) => u32::try_from(n)
                .ok()
                .and_then(SocketMode::new)
                .ok_or_else(|| {
                    de::Error::custom(format!(
                        "bad socket mode {n} (decimal): write it in octal, \"0660\" or 0o660, \
                         at most 0777"
                    ))
                }),
        }
    }
}

/// The group and mode a socket gets once bound; `None`: left as bind(2) made it (the
/// process's group, 0777 less the umask).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketOwner {
    pub group: Option<u32>,
    pub mode: Option<SocketMode>,
}

impl SocketOwner {
    /// `group` and `mode` as given: a group without a mode gets 0660 (its members can
    /// connect), a mode without a group keeps the process's group, neither changes nothing.
    pub fn new(group: Option<u32>, mode: Option<SocketMode>) -> Self {
        SocketOwner {
            group,
            mode: mode.or(group.map(|_| SocketMode::OWNER_AND_GROUP)),
        }
    }

    /// Whether it changes anything.
    pub fn is_set(&self) -> bool {
        self.group.is_some() || self.mode.is_some()
    }

    /// Gives the socket at `path` the group, then the mode (a chown can clear mode bits).
    pub fn apply(&self, path: &Path) -> Result<(), OwnershipError> {
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| {
                OwnershipError::Chown {
                    path: path.to_path_buf(),
                    gid,
                    source,
                }
            })?;
        }
        if let Some(mode) = self.mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode.bits())).map_err(
                |source| OwnershipError::Chmod {
                    path: path.to_path_buf(),
                    mode,
                    source,
                },
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

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
    fn modes_are_octal_permission_bits() {
        for (s, bits) in [("0660", 0o660), ("660", 0o660), ("0o600", 0o600), ("0", 0)] {
            assert_eq!(s.parse::<SocketMode>().unwrap().bits(), bits, "{s}");
        }
        for (s, want) in [
            ("0999", "not octal digits"),
            ("rw-rw----", "not octal digits"),
            ("", "no digits"),
            ("0o", "no digits"),
            ("4660", "at most 0777"),
            ("77777777777777", "too large"),
            ("-660", "not octal digits"),
        ] {
            let e = s.parse::<SocketMode>().unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
            assert!(e.contains("an octal mode such as 0660"), "{s}: {e}");
        }
        assert_eq!(SocketMode::new(0o660).unwrap().to_string(), "0660");
        assert_eq!(SocketMode::new(0o1000), None);
    }

    #[test]
    fn the_config_file_takes_a_string_or_an_octal_integer() {
        #[derive(Deserialize)]
        struct T {
            m: SocketMode,
        }
        let m = |text: &str| toml::from_str::<T>(text).map(|t| t.m.bits());
        assert_eq!(m("m = \"0660\"").unwrap(), 0o660);
        assert_eq!(m("m = 0o640").unwrap(), 0o640);
        assert!(m("m = 660").unwrap_err().to_string().contains("decimal"));
        assert!(m("m = \"abc\"")
            .unwrap_err()
            .to_string()
            .contains("not octal digits"));
        assert!(m("m = true").is_err());
    }

    #[test]
    fn a_group_alone_opens_the_socket_to_it() {
        assert_eq!(SocketOwner::new(None, None), SocketOwner::default());
        assert!(!SocketOwner::default().is_set());
        let o = SocketOwner::new(Some(7), None);
        assert_eq!(o.mode, Some(SocketMode::OWNER_AND_GROUP));
        let o = SocketOwner::new(None, SocketMode::new(0o600));
        assert_eq!((o.group, o.mode.map(SocketMode::bits)), (None, Some(0o600)));
    }

    #[test]
    fn apply_sets_group_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let _l = std::os::unix::net::UnixListener::bind(&p).unwrap();
        // SAFETY: getegid(2) has no preconditions.
        let gid = unsafe { libc::getegid() };
        SocketOwner::new(Some(gid), SocketMode::new(0o640))
            .apply(&p)
            .unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o7777), (gid, 0o640));
        let e = SocketOwner::new(None, SocketMode::new(0o600))
            .apply(&dir.path().join("missing"))
            .unwrap_err();
        assert!(matches!(e, OwnershipError::Chmod { .. }), "{e}");
    }
}
