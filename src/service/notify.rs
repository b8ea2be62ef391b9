//! sd_notify(3) without libsystemd: one datagram of `KEY=VALUE` lines to the unix socket named
//! by `$NOTIFY_SOCKET`: a filesystem path (`/run/systemd/notify`) or, with a leading `@`, a
//! name in the abstract namespace.

use super::ServiceError;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable a service manager sets.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (`READY=1`, `STOPPING=1`, `STATUS=...`, newline-separated) to
/// `$NOTIFY_SOCKET`. Returns whether there was one to tell (unset or empty: nothing to do).
pub fn notify(state: &str) -> Result<bool, ServiceError> {
    match std::env::var(NOTIFY_SOCKET) {
        Ok(s) if !s.is_empty() => notify_to(&s, state).map(|()| true),
        _ => Ok(false),
    }
}

/// Sends `state` to the socket `socket` (`/path` or `@abstract`).
pub fn notify_to(socket: &str, state: &str) -> Result<(), ServiceError> {
    let addr = address(socket)?;
    let send_err = |source| ServiceError::NotifySend {
        socket: socket.to_string(),
        source,
    };
    let sock = UnixDatagram::unbound().map_err(send_err)?;
    sock.send_to_addr(state.as_bytes(), &addr)
        .map_err(send_err)?;
    Ok(())
}

fn address(socket: &str) -> Result<SocketAddr, ServiceError> {
    let bad = || ServiceError::NotifyAddress(socket.to_string());
    if let Some(name) = socket.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| bad())
    } else if socket.starts_with('/') {
        SocketAddr::from_pathname(socket).map_err(|_| bad())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn recv(s: &UnixDatagram) -> String {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = s.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn a_path_socket_gets_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("notify");
        let s = UnixDatagram::bind(&p).unwrap();
        notify_to(p.to_str().unwrap(), "READY=1\nSTATUS=x").unwrap();
        assert_eq!(recv(&s), "READY=1\nSTATUS=x");
    }

    #[test]
    fn an_abstract_socket_gets_the_state() {
        let name = format!("sriov-emu-test-notify-{}", std::process::id());
        let s = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        notify_to(&format!("@{name}"), "READY=1").unwrap();
        assert_eq!(recv(&s), "READY=1");
    }

    #[test]
    fn bad_addresses_and_absent_sockets_are_errors() {
        let e = notify_to("relative/path", "READY=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither an absolute path"), "{e}");
        let e = notify_to("/nonexistent/sriov-emu-notify", "READY=1").unwrap_err();
        assert!(matches!(e, ServiceError::NotifySend { .. }), "{e}");
    }
}
