//! Client mode (`--vf-client-dir`): the frontend serves the socket (QEMU's `server=on`,
//! libvirt's `mode='server'`) and the emulator connects to it, retries until it is there, and
//! reconnects after either side restarts.

mod common;

use common::*;
use serde_json::json;
use sriov_emu::frontend::VirtioNetFrontend;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::{Duration, Instant};

/// The emulator retries a refused connection every second; a frontend waits this long for it.
const RECONNECT: Duration = Duration::from_secs(4);

fn listen(dir: &Path, vf: u16) -> UnixListener {
    let path = dir.join(format!("vf{vf}.sock"));
    let _ = std::fs::remove_file(&path);
    UnixListener::bind(&path).unwrap()
}

/// A frontend on VF `vf`'s socket in `dir`, once the emulator has connected to it.
fn serve(l: &UnixListener) -> VirtioNetFrontend {
    VirtioNetFrontend::accept(l, pairs(1, 1), RECONNECT).expect("the emulator did not connect")
}

/// Frames both ways between the frontends of vf0 (`a`) and vf1 (`b`), each checked byte for
/// byte.
fn exchange(a: &mut VirtioNetFrontend, b: &mut VirtioNetFrontend, seq: u32) {
    one_way(a, b, 0, 1, seq);
    one_way(b, a, 1, 0, seq + 1000);
}

fn one_way(tx: &mut VirtioNetFrontend, rx: &mut VirtioNetFrontend, from: u16, to: u16, seq: u32) {
    for i in 0..16 {
        let f = udp_frame(vf_mac(to), vf_mac(from), 7, 9, seq + i, 200);
        tx.send_wait(0, &f, WAIT).unwrap();
        let got = rx
            .recv_timeout(0, WAIT)
            .unwrap_or_else(|| panic!("vf{to} got nothing from vf{from}"));
        assert_eq!(got, f);
    }
}

fn attached(emu: &Emu, vf: usize) -> bool {
    let vfs = emu.control().execute("query-vfs", json!({})).unwrap();
    vfs[vf]["attached"] == true
}

fn wait_attached(emu: &Emu, vf: usize, want: bool) {
    let t = Instant::now();
    while attached(emu, vf) != want {
        assert!(t.elapsed() < WAIT, "vf{vf} attached != {want}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vfs_connect_to_the_frontends_sockets_and_come_back_after_either_side_restarts() {
    let qemu_dir = tempfile::tempdir().unwrap();
    let args = ["--vfs", "2", "--pv-ports", "0"];
    let client_dir = qemu_dir.path().to_str().unwrap();
    let start = || {
        let mut a = args.to_vec();
        a.extend(["--vf-client-dir", client_dir]);
        Emu::start(&a)
    };
    // The emulator first: nothing to connect to yet, it keeps trying.
    let emu = start();
    let vfs = emu.control().execute("query-vfs", json!({})).unwrap();
    for vf in 0..2 {
        let v = &vfs[vf];
        assert_eq!(v["socket-mode"], "client", "{v}");
        assert_eq!(
            v["socket"],
            json!(qemu_dir.path().join(format!("vf{vf}.sock"))),
            "{v}"
        );
        assert_eq!(v["attached"], false);
        assert!(
            !emu.path().join(format!("vf{vf}.sock")).exists(),
            "a client-mode VF binds no socket of its own"
        );
    }
    std::thread::sleep(Duration::from_millis(1500));
    let (l0, l1) = (listen(qemu_dir.path(), 0), listen(qemu_dir.path(), 1));
    let (mut a, mut b) = (serve(&l0), serve(&l1));
    wait_attached(&emu, 0, true);
    exchange(&mut a, &mut b, 0);

    // "QEMU" of vf0 restarts: its socket goes away for a while, then it serves a new one.
    drop((a, l0));
    std::fs::remove_file(qemu_dir.path().join("vf0.sock")).unwrap();
    wait_attached(&emu, 0, false);
    std::thread::sleep(Duration::from_millis(1500));
    let l0 = listen(qemu_dir.path(), 0);
    let mut a = serve(&l0);
    exchange(&mut a, &mut b, 100);

    assert!(
        emu.log().contains("client mode: cannot connect to"),
        "the refused connection is said: {}",
        emu.log()
    );

    // The emulator restarts: both frontends see it go and take its new
    // connections.
    drop(emu);
    let emu = start();
    let (mut a, mut b) = (serve(&l0), serve(&l1));
    wait_attached(&emu, 1, true);
    exchange(&mut a, &mut b, 200);

    // Leaving removes nothing of the frontends'.
    drop(emu);
    for vf in 0..2 {
        assert!(qemu_dir.path().join(format!("vf{vf}.sock")).exists());
    }
}

#[test]
fn one_vf_switches_to_client_mode_and_back_through_the_control_socket_and_the_config_file() {
    let qemu_dir = tempfile::tempdir().unwrap();
    let qsock = qemu_dir.path().join("guest-a.sock");
    let config = qemu_dir.path().join("emu.toml");
    std::fs::write(
        &config,
        format!(
            "numvfs = 2\npv_ports = 0\n[[vf]]\nindex = 1\nclient_path = \"{}\"\n",
            qemu_dir.path().join("guest-b.sock").display()
        ),
    )
    .unwrap();
    let emu = Emu::start(&["--config", config.to_str().unwrap()]);
    let mut ctl = emu.control();
    // vf1 is a client from the start (the config file); vf0 listens.
    let vfs = ctl.execute("query-vfs", json!({})).unwrap();
    assert_eq!(vfs[1]["socket-mode"], "client", "{}", vfs[1]);
    assert_eq!(
        vfs[1]["client-path"],
        json!(qemu_dir.path().join("guest-b.sock"))
    );
    assert!(!emu.path().join("vf1.sock").exists());
    assert_eq!(vfs[0]["client-path"], "");
    assert!(emu.path().join("vf0.sock").exists());

    // vf0 gets a VLAN, then becomes a client of guest-a.sock: its own socket goes, the VLAN
    // stays, and it connects.
    ctl.execute("vf-set", json!({"vf": 0, "vlan": 42})).unwrap();
    let l = UnixListener::bind(&qsock).unwrap();
    let v = ctl
        .execute("vf-set", json!({"vf": 0, "client-path": qsock}))
        .unwrap();
    assert_eq!(
        (&v["socket-mode"], &v["client-path"], &v["vlan"]),
        (&json!("client"), &json!(qsock), &json!(42)),
        "{v}"
    );
    assert!(!emu.path().join("vf0.sock").exists());
    let fe = serve(&l);
    wait_attached(&emu, 0, true);
    // Back to its own socket: the frontend is let go, vf0.sock is there again and takes one.
    let v = ctl
        .execute("vf-set", json!({"vf": 0, "client-path": ""}))
        .unwrap();
    assert_eq!(v["socket-mode"], "server", "{v}");
    drop(fe);
    wait_attached(&emu, 0, false);
    let _fe = VirtioNetFrontend::connect(emu.path().join("vf0.sock"), pairs(1, 1)).unwrap();
    wait_attached(&emu, 0, true);

    // A relative path is refused, and nothing changes.
    let e = ctl
        .execute("vf-set", json!({"vf": 0, "client-path": "vf0.sock"}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an absolute socket path"), "{e}");
    assert!(attached(&emu, 0));

    // qemu-args with the same config file makes QEMU the server for vf1 only.
    let args = |vf: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sriov-emu"))
            .args(["qemu-args", "vf", vf, "--config", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(
        args("1").contains("guest-b.sock,server=on"),
        "{}",
        args("1")
    );
    assert!(args("0").contains("reconnect-ms=1000"), "{}", args("0"));
}
