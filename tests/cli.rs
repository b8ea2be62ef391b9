//! The `sriov-emu` binary: errors, signals, sockets, `qemu-args`.

mod common;

use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_sriov-emu");

fn run_args(dir: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.arg("run").arg("--socket-dir").arg(dir).args(extra);
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < WAIT, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Stops a child by its PID with a signal and returns its exit status code.
fn signal_and_wait(child: &mut Child, sig: i32) -> Option<i32> {
    // SAFETY: plain kill(2) on our own child's PID.
    unsafe { libc::kill(child.id() as i32, sig) };
    let t = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s.code();
        }
        if t.elapsed() > WAIT {
            let _ = child.kill();
            panic!("sriov-emu did not exit on signal {sig}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(c: Child) -> String {
    String::from_utf8_lossy(&c.wait_with_output().unwrap().stderr).into_owned()
}

#[test]
fn bad_numbers_are_clear_errors_with_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["--vfs", "255"], "numvfs 255 is out of range"),
        (
            vec!["--channels-per-vf", "0"],
            "channels per VF is out of range",
        ),
        (
            vec!["--vfs", "254", "--channels-per-vf", "9"],
            "not enough DMA channels: 2286 requested, 2048 of 2048 free",
        ),
        (vec!["--mtu", "10000"], "MTU 10000 is out of range"),
        (vec!["--vfs", "many"], "invalid value 'many'"),
        (
            vec!["--stats-interval", "0"],
            "--stats-interval must be at least 1",
        ),
        (vec!["--workers", "0"], "0 is not in 1..=64"),
        (vec!["--cpus", "3-1"], "the range is backwards"),
        (vec!["--cpus", "one"], "`one` is not a CPU number"),
        (vec!["--uplink", "wire:eth0"], "vxlan:local=IP:PORT"),
        (
            vec!["--uplink", "vxlan:local=127.0.0.1:4789,vni=5"],
            "remote",
        ),
        (
            vec![
                "--uplink",
                "vxlan:local=127.0.0.1:4789,remote=127.0.0.1:4790,vni=99999999",
            ],
            "vni",
        ),
        (vec!["--uplink", "tap:a/b"], "tap:IFNAME"),
        (
            vec!["--uplink-rate", "0"],
            "--uplink-rate 0 Mbit/s is out of range",
        ),
        (
            vec![
                "--uplink",
                "vxlan:local=127.0.0.1:4789,remote=127.0.0.1:4790,vni=5",
                "--uplink-mtu",
                "80",
            ],
            "leaves no room for a frame",
        ),
    ] {
        let out = run_args(dir.path(), &args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

#[test]
fn an_uplink_address_in_use_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap();
    let spec = format!("vxlan:local={at},remote=127.0.0.1:9,vni=5");
    let out = run_args(dir.path(), &["--uplink", &spec]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!(
            "cannot open the uplink: cannot bind the VXLAN socket to {at}"
        )),
        "{err}"
    );
    assert!(err.contains("in use"), "the cause is shown: {err}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "sockets left behind"
    );
}

#[test]
fn unwritable_socket_dir_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let out = run_args(&file.join("sub"), &[]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot create socket directory"), "{err}");
}

#[test]
fn errors_are_printed_with_their_causes() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "numvfs = [\n").unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"").unwrap();
    let under_file = file.join("sub");
    let control = dir.path().join("control.sock");
    let socket_dir = dir.path().join("s");
    let cases: [(Vec<&std::ffi::OsStr>, String); 4] = [
        (
            vec![
                "run".as_ref(),
                "--socket-dir".as_ref(),
                socket_dir.as_ref(),
                "--config".as_ref(),
                missing.as_ref(),
            ],
            format!(
                "sriov-emu: error: cannot read config file {}: No such file or directory",
                missing.display()
            ),
        ),
        (
            vec![
                "run".as_ref(),
                "--socket-dir".as_ref(),
                socket_dir.as_ref(),
                "--config".as_ref(),
                bad.as_ref(),
            ],
            format!(
                "sriov-emu: error: cannot parse config file {}: TOML parse error at line 1",
                bad.display()
            ),
        ),
        (
            vec![
                "run".as_ref(),
                "--socket-dir".as_ref(),
                under_file.as_os_str(),
            ],
            format!(
                "sriov-emu: error: cannot create socket directory {}: Not a directory",
                under_file.display()
            ),
        ),
        (
            vec![
                "ctl".as_ref(),
                "--control".as_ref(),
                control.as_ref(),
                "show".as_ref(),
            ],
            format!(
                "sriov-emu: error: cannot connect to the control socket {} (is sriov-emu running? \
                 see --control): No such file or directory",
                control.display()
            ),
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(BIN).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.starts_with(&want), "{args:?}: {err}");
        assert_eq!(err.matches("sriov-emu: error:").count(), 1, "{err}");
    }
}

#[test]
fn sigterm_and_sigint_remove_the_sockets() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let dir = tempfile::tempdir().unwrap();
        let mut child = run_args(dir.path(), &["--vfs", "3", "--pv-ports", "2"])
            .spawn()
            .unwrap();
        for s in ["vf0", "vf1", "vf2", "pv0", "pv1"] {
            wait_for(&dir.path().join(format!("{s}.sock")));
        }
        assert!(!dir.path().join("vf3.sock").exists());
        assert_eq!(signal_and_wait(&mut child, sig), Some(0));
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(left.is_empty(), "sockets left after signal {sig}: {left:?}");
    }
}

#[test]
fn a_socket_in_use_by_a_live_emulator_is_refused_and_a_stale_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = run_args(dir.path(), &["--vfs", "1", "--pv-ports", "0"])
        .spawn()
        .unwrap();
    wait_for(&dir.path().join("vf0.sock"));
    let second = run_args(dir.path(), &["--vfs", "1", "--pv-ports", "0"])
        .spawn()
        .unwrap();
    let out = second.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by a running process"), "{err}");
    // The refused start did not remove the live emulator's socket.
    assert!(dir.path().join("vf0.sock").exists());
    // SIGKILL leaves a stale socket: the next start replaces it.
    signal_and_wait(&mut first, libc::SIGKILL);
    assert!(dir.path().join("vf0.sock").exists());
    let mut third = run_args(dir.path(), &["--vfs", "1", "--pv-ports", "0"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        third.try_wait().unwrap().is_none(),
        "restart over a stale socket failed: {}",
        {
            let _ = third.kill();
            stderr_of(third)
        }
    );
    let mut fe = connect(dir.path(), "vf0", pairs(1, 1));
    fe.send(0, &broadcast(vf_mac(0))).unwrap();
    assert_eq!(signal_and_wait(&mut third, libc::SIGTERM), Some(0));
}

#[test]
fn real_binary_switches_between_frontends() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = run_args(
        dir.path(),
        &[
            "--vfs",
            "2",
            "--pv-ports",
            "1",
            "--stats-interval",
            "1",
            "--workers",
            "2",
            "--cpus",
            "0-1",
        ],
    )
    .spawn()
    .unwrap();
    wait_for(&dir.path().join("pv0.sock"));
    let mut a = connect(dir.path(), "vf0", pairs(2, 2));
    let mut p = connect(dir.path(), "pv0", pairs(1, 1));
    // The PV port has no assigned MAC: the guest uses its own (here the VF's, as a plug-in
    // guest's backup NIC does).
    p.send(0, &broadcast(vf_mac(1))).unwrap();
    assert!(a.recv_any(WAIT).is_some());
    let f = udp_frame(vf_mac(1), vf_mac(0), 3, 4, 1, 1000);
    a.send(1, &f).unwrap();
    assert!(p.recv_timeout(0, WAIT).unwrap() == f);
    std::thread::sleep(Duration::from_millis(2500));
    let mut child_err = {
        signal_and_wait(&mut child, libc::SIGTERM);
        child.stderr.take().unwrap()
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child_err, &mut log).unwrap();
    assert!(log.contains("frontend connected"), "{log}");
    // The port's accept thread logs in the port's span.
    assert!(
        log.lines()
            .any(|l| l.contains("port{port=pv0}") && l.contains("frontend connected")),
        "{log}"
    );
    // Two workers, pinned to CPUs 0 and 1 (or a clear warning where a CPU is missing).
    for w in 0..2 {
        assert!(log.contains(&format!("worker={w} cpu={w}")), "{log}");
    }
    assert!(
        log.contains("tx_queue_1_packets=1"),
        "stats log shows per-queue counters: {log}"
    );
}

#[test]
fn qemu_args_prints_options_that_attach_the_vf() {
    let out = Command::new(BIN)
        .args([
            "qemu-args",
            "vf",
            "3",
            "--socket-dir",
            "/tmp/sriov-x",
            "--channels-per-vf",
            "4",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(s.lines().count(), 1);
    for want in [
        "-chardev socket,id=vf3,path=/tmp/sriov-x/vf3.sock,reconnect-ms=1000",
        "-netdev vhost-user,id=vf3,chardev=vf3,queues=4",
        "-device virtio-net-pci,netdev=vf3,id=vf3dev,mac=02:00:00:00:03:01,mq=on,vectors=10",
    ] {
        assert!(s.contains(want), "missing {want:?} in {s}");
    }
    let out = Command::new(BIN)
        .args(["qemu-args", "vf", "4"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("vf4 does not exist"));
}

#[test]
fn qemu_args_hotplug_prints_qmp_commands_that_match_the_options() {
    let run = |extra: &[&str]| {
        let mut args = vec!["qemu-args", "vf", "3", "--socket-dir", "/tmp/sriov-x"];
        args.extend_from_slice(extra);
        Command::new(BIN).args(&args).output().unwrap()
    };
    let out = run(&[
        "--channels-per-vf",
        "4",
        "--hotplug",
        "plug",
        "--bus",
        "rp7",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmds: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON command per line"))
        .collect();
    let names: Vec<&str> = cmds.iter().filter_map(|c| c["execute"].as_str()).collect();
    assert_eq!(names, ["chardev-add", "netdev_add", "device_add"]);
    let a = &cmds[0]["arguments"];
    assert_eq!(a["id"], "vf3");
    assert_eq!(
        a["backend"]["data"]["addr"]["data"]["path"],
        "/tmp/sriov-x/vf3.sock"
    );
    assert_eq!(cmds[1]["arguments"]["queues"], 4);
    let d = &cmds[2]["arguments"];
    assert_eq!(
        (
            &d["id"],
            &d["netdev"],
            &d["bus"],
            &d["mac"],
            &d["vectors"],
            &d["mq"]
        ),
        (
            &"vf3dev".into(),
            &"vf3".into(),
            &"rp7".into(),
            &"02:00:00:00:03:01".into(),
            &10.into(),
            &true.into()
        )
    );
    let out = run(&["--hotplug", "unplug"]);
    let s = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        s,
        "{\"execute\":\"device_del\",\"arguments\":{\"id\":\"vf3dev\"}}\n\
         {\"execute\":\"netdev_del\",\"arguments\":{\"id\":\"vf3\"}}\n"
    );
    // Both steps with comments; --bus alone is refused.
    let s = String::from_utf8(run(&["--hotplug"]).stdout).unwrap();
    assert_eq!(s.lines().filter(|l| l.starts_with('{')).count(), 5, "{s}");
    assert!(s.contains("DEVICE_DELETED"), "{s}");
    let out = run(&["--bus", "rp1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hotplug"));
    let out = run(&["--hotplug", "now"]);
    assert!(!out.status.success());
}

#[test]
fn config_file_sets_the_pf_and_vf_knobs_and_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/config.toml");
    let mut child = run_args(dir.path(), &["--config", config, "--pv-ports", "2"])
        .spawn()
        .unwrap();
    wait_for(&dir.path().join("control.sock"));
    let out = Command::new(BIN)
        .args(["ctl", "--socket-dir"])
        .arg(dir.path())
        .args(["show", "-j"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["pf"]["numvfs"], 8);
    assert_eq!(
        j["pf"]["pv-ports"].as_array().unwrap().len(),
        2,
        "the flag wins over the file"
    );
    let vfs = &j["vfs"];
    assert_eq!(
        (
            vfs[0]["vlan"].as_u64(),
            vfs[0]["qos"].as_u64(),
            vfs[0]["max-tx-rate"].as_u64()
        ),
        (Some(100), Some(3), Some(1000))
    );
    assert_eq!(
        (
            vfs[1]["mac"].as_str(),
            vfs[1]["trust"].as_bool(),
            vfs[1]["channels"].as_u64()
        ),
        (Some("02:00:00:00:aa:01"), Some(true), Some(4))
    );
    assert_eq!(
        (vfs[2]["spoofchk"].as_bool(), vfs[2]["link-state"].as_str()),
        (Some(false), Some("disable"))
    );
    assert_eq!(signal_and_wait(&mut child, libc::SIGTERM), Some(0));
    // qemu-args follows the file too.
    let out = Command::new(BIN)
        .args(["qemu-args", "vf", "1", "--config", config])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("mac=02:00:00:00:aa:01") && s.contains("queues=4"),
        "{s}"
    );
    // A bad file: a clear error, no sockets left.
    let bad = dir.path().join("bad.toml");
    for (text, want) in [
        (
            "numvfs = 2\n[[vf]]\nindex = 1\nvlan = 4096\n",
            "vf 1: VLAN 4096 is out of range",
        ),
        ("numvfs = 2\n[[vf]]\nindex = 5\n", "vf 5: does not exist"),
        ("numvfz = 2\n", "unknown field `numvfz`"),
    ] {
        std::fs::write(&bad, text).unwrap();
        let out = run_args(dir.path(), &["--config", bad.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{text:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
