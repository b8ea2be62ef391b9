//! The emulator binary for the QEMU guest tests: started with its sockets in a temporary
//! directory, stopped by its PID on drop, its logs kept when a test fails; its control socket,
//! counters and `qemu-args`; killed with SIGKILL and started again in the same directory, as a
//! crash and a supervisor's restart. Included with `#[path]` beside `qemu.rs` (as
//! `crate::qemu`).
#![allow(dead_code)]

use serde_json::{json, Value};
use sriov_emu::control::client::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The emulator binary, stopped by its PID on drop; its log and the guests' logs (kept in
/// its directory) are copied to `target/tmp/guests/failed-*` when the test fails.
pub struct Emulator {
    child: Child,
    dir: PathBuf,
    /// The `run` arguments after `--socket-dir DIR`, for `restart`.
    args: Vec<String>,
    /// The PF options it was started with that `qemu-args` takes too (so the NIC options it
    /// prints match this emulator's ports: channels, MTU, uplink).
    pf_flags: Vec<String>,
    _tmp: tempfile::TempDir,
}

/// The `run` options `qemu-args` also takes (each with a value).
const PF_FLAGS: [&str; 9] = [
    "--config",
    "--vfs",
    "--pv-ports",
    "--channels-per-vf",
    "--mtu",
    "--pv-channels",
    "--pv-mtu",
    "--uplink",
    "--uplink-mtu",
];

impl Emulator {
    pub fn start(args: &[&str]) -> Emulator {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let pf_flags = args
            .windows(2)
            .filter(|w| PF_FLAGS.contains(&w[0].as_str()))
            .flat_map(|w| [w[0].clone(), w[1].clone()])
            .collect();
        let child = spawn(&dir, &args);
        let mut emu = Emulator {
            child,
            dir,
            args,
            pf_flags,
            _tmp: tmp,
        };
        emu.wait_serving();
        emu
    }

    /// Waits until the emulator answers on its control socket (a stale socket file of a killed
    /// one does not count); panics with its log if it exits or takes more than 10 s.
    fn wait_serving(&mut self) {
        let t = Instant::now();
        while Client::connect(&self.dir.join("control.sock")).is_err() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("emulator {:?} exited ({st}):\n{}", self.args, self.log());
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "emulator {:?} did not start:\n{}",
                self.args,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the emulator with SIGKILL (by its PID), as a crash: no cleanup, its sockets
    /// stay behind. Returns when it is reaped.
    pub fn kill_hard(&mut self) {
        // SAFETY: kill(2) on our own child's PID, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
        let _ = self.child.wait();
    }

    /// Starts the emulator again with the same arguments and socket directory (its log goes on
    /// in the same file), and returns when it answers on its control socket.
    pub fn restart(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill_hard();
        }
        self.child = spawn(&self.dir, &self.args);
        self.wait_serving();
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What `sriov-emu qemu-args KIND N --socket-dir DIR EXTRA...` prints, with the PF
    /// options the emulator was started with (those not in `extra`).
    pub fn qemu_args(&self, kind: &str, n: u32, extra: &[&str]) -> String {
        let inherited: Vec<&String> = self
            .pf_flags
            .chunks(2)
            .filter(|f| !extra.contains(&f[0].as_str()))
            .flatten()
            .collect();
        let out = Command::new(crate::qemu::sriov_emu_bin())
            .args(["qemu-args", kind, &n.to_string(), "--socket-dir"])
            .arg(&self.dir)
            .args(inherited)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `sriov-emu qemu-args vf N --socket-dir DIR EXTRA...`, split.
    pub fn nic_args(&self, vf: u32, extra: &[&str]) -> Vec<String> {
        crate::qemu::split_args(&self.qemu_args("vf", vf, extra))
    }

    /// The options of PV port `n`, its NIC with the MAC `mac` (the plug-in model's guest MAC,
    /// which its VF also has).
    pub fn pv_nic_args(&self, n: u32, mac: &str) -> Vec<String> {
        crate::qemu::split_args(&self.qemu_args("pv", n, &[]))
            .into_iter()
            .map(|w| {
                if w.starts_with("virtio-net-pci,") {
                    format!("{w},mac={mac}")
                } else {
                    w
                }
            })
            .collect()
    }

    /// VF `vf`'s MAC, from `query-vfs`.
    pub fn vf_mac(&self, vf: usize) -> String {
        self.qmp("query-vfs", json!({}))[vf]["mac"]
            .as_str()
            .expect("a VF's MAC")
            .to_string()
    }

    /// Whether VF `vf` has a frontend, from `query-vfs`.
    pub fn vf_attached(&self, vf: usize) -> bool {
        self.qmp("query-vfs", json!({}))[vf]["attached"] == json!(true)
    }

    /// The QMP commands of `sriov-emu qemu-args vf N --hotplug STEP --bus rp0`: (execute,
    /// arguments) of each printed line.
    pub fn hotplug_commands(&self, vf: u32, step: &str) -> Vec<(String, String)> {
        self.qemu_args("vf", vf, &["--hotplug", step, "--bus", "rp0"])
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON command: {l:?}: {e}"));
                (
                    v["execute"].as_str().expect("execute").to_string(),
                    v["arguments"].to_string(),
                )
            })
            .collect()
    }

    /// Plugs VF `vf` into the running `guest` (`step` "plug") or unplugs it ("unplug") with
    /// those commands; an unplug waits for QEMU to release the device (what DEVICE_DELETED
    /// says: gone from its peripherals once the guest let go) before `netdev_del`.
    pub fn hotplug(&self, guest: &crate::qemu::Guest, vf: u32, step: &str) {
        const RELEASE: Duration = Duration::from_secs(60);
        let dev = format!("\"vf{vf}dev\"");
        for (cmd, args) in self.hotplug_commands(vf, step) {
            if cmd == "netdev_del" {
                let t = Instant::now();
                while guest
                    .qmp("qom-list", r#"{"path":"/machine/peripheral"}"#)
                    .is_ok_and(|r| r.contains(&dev))
                {
                    assert!(
                        t.elapsed() < RELEASE,
                        "the guest never released {dev}\n{}",
                        self.report()
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            guest
                .qmp(&cmd, &args)
                .unwrap_or_else(|e| panic!("{cmd}: {e}\n{}", self.report()));
        }
    }

    pub fn control(&self) -> Client {
        Client::connect(&self.dir.join("control.sock")).expect("control socket")
    }

    pub fn qmp(&self, cmd: &str, args: Value) -> Value {
        self.control()
            .execute(cmd, args.clone())
            .unwrap_or_else(|e| panic!("{cmd} {args}: {e}"))
    }

    /// One port's `query-stats` entry.
    pub fn stats(&self, port: &str) -> Value {
        self.qmp("query-stats", json!({"port": port}))[0].clone()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("emulator.log")).unwrap_or_default()
    }

    /// What a failure message shows of the emulator: every port's counters (`ctl stats -j`),
    /// the FDB and the log's tail.
    pub fn report(&self) -> String {
        let (stats, fdb) = match self.dir.join("control.sock").exists() {
            true => (
                self.control().execute("query-stats", json!({})).ok(),
                self.control().execute("query-fdb", json!({})).ok(),
            ),
            false => (None, None),
        };
        let log = self.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "--- emulator {} query-stats ---\n{}\n--- query-fdb ---\n{}\n--- log tail ---\n{}",
            self.dir.display(),
            stats.map(|s| s.to_string()).unwrap_or_default(),
            fdb.map(|s| s.to_string()).unwrap_or_default(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// Copies the logs out of the temporary directory (removed next) for a look afterwards.
    pub fn keep_logs(&self) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let keep = crate::qemu::scratch_dir().join(format!("failed-{}-{n}", std::process::id()));
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let _ = std::fs::create_dir_all(&keep);
        for e in entries.flatten() {
            let p = e.path();
            if p.extension()
                .is_some_and(|x| x == "log" || x == "txt" || x == "pcapng")
            {
                let _ = std::fs::copy(&p, keep.join(e.file_name()));
            }
        }
        eprintln!("logs kept in {}", keep.display());
    }
}

/// `sriov-emu run --socket-dir DIR ARGS...`, its output appended to `DIR/emulator.log`.
fn spawn(dir: &Path, args: &[String]) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("emulator.log"))
        .unwrap();
    Command::new(crate::qemu::sriov_emu_bin())
        .arg("run")
        .arg("--socket-dir")
        .arg(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Drop for Emulator {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.keep_logs();
        }
    }
}
