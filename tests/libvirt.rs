//! libvirt (11.3, bookworm-backports) with QEMU 10 under TCG, as a user of libvirt runs the
//! emulator (issue 15): QEMU is started by libvirtd as the unprivileged `libvirt-qemu`, never
//! as root, and reaches the VFs in both ways the emulator offers.
//!
//! 1. Socket group: the emulator runs with `--socket-group kvm`; a domain (q35, memfd shared
//!    memory, the project's guest image booted directly) has vf0's `<interface
//!    type='vhostuser'>` from `sriov-emu qemu-args vf 0 --libvirt` (QEMU connects), and pings a
//!    second guest (plain QEMU, started by the test) on vf2. Then `virsh attach-device --live`
//!    of vf1's element: the emulator's events show vf1 attached, the guest pings the second
//!    guest over it; `virsh detach-device --live`: the events show vf1 detached and the guest
//!    loses the NIC.
//! 2. Client mode: the emulator runs with `--vf-client-dir DIR`; the domain's element has
//!    `mode='server'` (QEMU, as `libvirt-qemu`, makes the socket and the emulator connects);
//!    the guest pings a second guest on vf1.
//!
//! The test runs libvirtd and virtlogd of its own, never the system's: both in a private mount
//! namespace (`unshare --mount`) where a temporary directory stands in for /etc/libvirt,
//! /run/libvirt, /var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt (and a tmpfs for
//! /run), with libvirtd's own sockets in that directory, reached with
//! `virsh -c 'qemu:///system?socket=...'`. No file outside the temporary directory is written.
//! Domains are destroyed and undefined, the daemons stopped by their PIDs, the directory
//! removed. The private qemu.conf only turns off cgroups (`cgroup_controllers = [ ]`); the
//! user and group QEMU runs as are Debian's defaults.
//!
//! A missing QEMU 10 or libvirt fails the test (SRIOV_SKIP_QEMU=1 skips it, printing
//! `SKIPPED:`); `./scripts/setup` installs both.

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/qemu.rs"]
mod qemu;

use emulator::Emulator;
use qemu::{Guest, GuestConfig};
use serde_json::Value;
use sriov_emu::control::client::Client;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A guest's boot and its first pings (TCG: a few seconds; generous for a loaded machine).
const BOOT: Duration = Duration::from_secs(120);
/// One step after the boot: an event, a hot-plugged NIC's pings, an unplug.
const STEP: Duration = Duration::from_secs(60);
/// libvirtd's start, with its probe of QEMU's capabilities (7 s here).
const DAEMON_START: Duration = Duration::from_secs(90);
/// The longest a virsh command may take (a domain's start with its QEMU's, or a destroy).
const VIRSH: Duration = Duration::from_secs(60);
/// The `SKIPPED:` / failure name.
const TEST: &str =
    "libvirt_runs_qemu_as_libvirt_qemu_on_vfs_by_socket_group_client_mode_and_hot_plug";

/// Why libvirt cannot be used, or `None`.
fn libvirt_missing() -> Option<String> {
    for bin in ["libvirtd", "virtlogd", "virsh", "unshare", "nsenter"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{bin} is not installed (libvirt 11 from bookworm-backports)"
            ));
        }
    }
    if id("-u").is_none() {
        return Some("there is no libvirt-qemu user (libvirt-daemon-driver-qemu)".into());
    }
    let Ok(out) = Command::new("libvirtd").arg("--version").output() else {
        return Some("libvirtd --version cannot be run".into());
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let major: u32 = text
        .rsplit(' ')
        .next()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(0);
    (major < 11).then(|| format!("libvirtd is too old ({}), need 11", text.trim()))
}

/// `id OPT libvirt-qemu` as a number (`-u`: the uid, `-g`: the primary gid).
fn id(opt: &str) -> Option<u32> {
    let out = Command::new("id")
        .args([opt, "libvirt-qemu"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The gid of group `name`.
fn gid(name: &str) -> u32 {
    let out = Command::new("getent")
        .args(["group", name])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .nth(2)
        .and_then(|g| g.trim().parse().ok())
        .unwrap_or_else(|| panic!("no group {name}"))
}

fn mkdir(path: &Path, mode: u32) -> PathBuf {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

/// A private libvirtd and virtlogd (see the module doc), stopped by their PIDs on drop after
/// every domain it defined is destroyed and undefined.
struct Libvirt {
    base: tempfile::TempDir,
    virtlogd: Child,
    libvirtd: Child,
    domains: Vec<String>,
}

impl Libvirt {
    fn start() -> Libvirt {
        let base = tempfile::Builder::new()
            .prefix("sriov-libvirt-")
            .tempdir()
            .unwrap();
        let b = base.path();
        // libvirt-qemu opens the kernel, initrd and sockets below it.
        mkdir(b, 0o755);
        for d in ["etc", "run", "lib", "cache", "log", "sock", "img", "serial"] {
            mkdir(&b.join(d), 0o755);
        }
        fs::write(
            b.join("etc/libvirtd.conf"),
            format!(
                "unix_sock_dir = \"{}\"\n\
                 unix_sock_rw_perms = \"0700\"\n\
                 unix_sock_ro_perms = \"0700\"\n\
                 unix_sock_admin_perms = \"0700\"\n\
                 auth_unix_rw = \"none\"\n\
                 auth_unix_ro = \"none\"\n",
                b.join("sock").display()
            ),
        )
        .unwrap();
        fs::write(b.join("etc/virtlogd.conf"), "").unwrap();
        // No cgroups: the machine's are not libvirt's to change.
        fs::write(b.join("etc/qemu.conf"), "cgroup_controllers = [ ]\n").unwrap();

        let out = |name: &str| fs::File::create(b.join(name)).unwrap();
        // The namespace: what libvirt's paths name is in the temporary directory.
        let script = "set -e\n\
             B=$1\n\
             mount -t tmpfs -o mode=0755 tmpfs /run\n\
             mkdir /run/libvirt\n\
             mount --bind $B/run /run/libvirt\n\
             mount --bind $B/etc /etc/libvirt\n\
             mount --bind $B/lib /var/lib/libvirt\n\
             mount --bind $B/cache /var/cache/libvirt\n\
             mount --bind $B/log /var/log/libvirt\n\
             exec virtlogd --pid-file $B/virtlogd.pid --config $B/etc/virtlogd.conf\n";
        let mut virtlogd = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(b)
            .stdin(Stdio::null())
            .stdout(out("virtlogd.out"))
            .stderr(out("virtlogd.out"))
            .spawn()
            .expect("unshare virtlogd");
        let t = Instant::now();
        while !b.join("run/virtlogd-sock").exists() {
            if let Ok(Some(st)) = virtlogd.try_wait() {
                panic!(
                    "virtlogd exited ({st}):\n{}",
                    fs::read_to_string(b.join("virtlogd.out")).unwrap_or_default()
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "virtlogd did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // libvirtd in virtlogd's namespace (nsenter execs it: the child is libvirtd).
        let libvirtd = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", virtlogd.id()))
            .args(["--", "libvirtd", "--pid-file"])
            .arg(b.join("libvirtd.pid"))
            .arg("--config")
            .arg(b.join("etc/libvirtd.conf"))
            .stdin(Stdio::null())
            .stdout(out("libvirtd.out"))
            .stderr(out("libvirtd.out"))
            .spawn()
            .expect("nsenter libvirtd");
        let mut lv = Libvirt {
            base,
            virtlogd,
            libvirtd,
            domains: Vec::new(),
        };
        let t = Instant::now();
        loop {
            if let Ok(Some(st)) = lv.libvirtd.try_wait() {
                panic!("libvirtd exited ({st}):\n{}", lv.report(None));
            }
            if lv.virsh(&["version"]).is_ok() {
                break;
            }
            assert!(
                t.elapsed() < DAEMON_START,
                "libvirtd did not answer:\n{}",
                lv.report(None)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("libvirtd and virtlogd up in {:.1?}", t.elapsed());
        lv
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.base.path().join(rel)
    }

    /// `virsh -c qemu:///system?socket=... ARGS`: its stdout, or its output as the error;
    /// killed (by its PID) after [`VIRSH`]. A `virsh start` whose QEMU cannot reach a socket
    /// it connects to with reconnect on waits for it for ever (QEMU waits at its start).
    fn virsh(&self, args: &[&str]) -> Result<String, String> {
        let uri = format!(
            "qemu:///system?socket={}",
            self.path("sock/libvirt-sock").display()
        );
        let (out, err) = (self.path("virsh.out"), self.path("virsh.err"));
        let mut child = Command::new("virsh")
            .args(["-q", "-c", &uri])
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).unwrap())
            .stderr(fs::File::create(&err).unwrap())
            .spawn()
            .map_err(|e| format!("virsh: {e}"))?;
        let t = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().map_err(|e| format!("virsh: {e}"))? {
                break Some(st);
            }
            if t.elapsed() > VIRSH {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = fs::read_to_string(&out).unwrap_or_default();
        let stderr = fs::read_to_string(&err).unwrap_or_default();
        match status {
            Some(st) if st.success() => Ok(stdout),
            Some(st) => Err(format!("virsh {args:?} failed ({st}): {stdout}{stderr}")),
            None => Err(format!(
                "virsh {args:?} did not return within {VIRSH:?}: {stdout}{stderr}"
            )),
        }
    }

    /// Copies the guest image where `libvirt-qemu` may read it; returns (kernel, initrd).
    fn image(&self) -> (PathBuf, PathBuf) {
        let (kernel, initrd) = qemu::guest_image().expect("guest image");
        let copy = |from: &Path, name: &str| {
            let to = self.path("img").join(name);
            if !to.exists() {
                fs::copy(from, &to).unwrap();
                fs::set_permissions(&to, fs::Permissions::from_mode(0o644)).unwrap();
            }
            to
        };
        (copy(&kernel, "vmlinuz"), copy(&initrd, "initramfs.cpio.gz"))
    }

    /// Defines domain `name` from `xml` and starts it.
    fn define_and_start(&mut self, name: &str, xml: &str) {
        let file = self.path(&format!("{name}.xml"));
        fs::write(&file, xml).unwrap();
        self.virsh(&["define", file.to_str().unwrap()])
            .unwrap_or_else(|e| panic!("{e}\n{xml}"));
        self.domains.push(name.to_string());
        if let Err(e) = self.virsh(&["start", name]) {
            panic!("{e}\n{}", self.report(Some(name)));
        }
    }

    fn destroy_and_undefine(&mut self, name: &str) {
        self.virsh(&["destroy", name])
            .unwrap_or_else(|e| panic!("{e}\n{}", self.report(Some(name))));
        self.virsh(&["undefine", name]).unwrap();
        self.domains.retain(|d| d != name);
    }

    /// The PID of domain `name`'s QEMU (libvirt's PID file).
    fn qemu_pid(&self, name: &str) -> u32 {
        let file = self.path(&format!("run/qemu/{name}.pid"));
        fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap()
    }

    fn serial(&self, name: &str) -> PathBuf {
        self.path(&format!("serial/{name}.log"))
    }

    fn serial_log(&self, name: &str) -> String {
        fs::read(self.serial(name))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until domain `name`'s serial console has a line containing `marker`.
    fn wait_for_line(&self, name: &str, marker: &str, within: Duration) -> String {
        let t = Instant::now();
        loop {
            if let Some(l) = self.serial_log(name).lines().find(|l| l.contains(marker)) {
                return l.to_string();
            }
            assert!(
                t.elapsed() < within,
                "domain {name} printed no {marker:?} within {within:?}\n{}",
                self.report(Some(name))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// libvirtd's output, and for a domain libvirt's log of its QEMU and its serial console.
    fn report(&self, domain: Option<&str>) -> String {
        let tail = |p: PathBuf| {
            let text = fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().rev().take(30).collect();
            format!(
                "--- {} ---\n{}\n",
                p.display(),
                lines.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        };
        let mut s = tail(self.path("libvirtd.out"));
        if let Some(d) = domain {
            s += &tail(self.path(&format!("log/qemu/{d}.log")));
            s += &tail(self.serial(d));
        }
        s
    }

    /// Keeps the logs of a failed run in `target/tmp/guests/failed-libvirt-PID`.
    fn keep_logs(&self) {
        let keep = qemu::scratch_dir().join(format!("failed-libvirt-{}", std::process::id()));
        let _ = fs::create_dir_all(&keep);
        let mut files = vec![self.path("libvirtd.out"), self.path("virtlogd.out")];
        for dir in ["log/qemu", "serial"] {
            if let Ok(entries) = fs::read_dir(self.path(dir)) {
                files.extend(entries.flatten().map(|e| e.path()));
            }
        }
        if let Ok(entries) = fs::read_dir(self.base.path()) {
            files.extend(
                entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "xml")),
            );
        }
        for f in files {
            if let Some(n) = f.file_name() {
                let _ = fs::copy(&f, keep.join(n));
            }
        }
        eprintln!("libvirt logs kept in {}", keep.display());
    }
}

/// SIGTERM to `child` (by its PID), SIGKILL after 10 s; reaped.
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(None)) {
        // SAFETY: kill(2) on our own child's PID, not yet reaped.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
    }
    let _ = child.wait();
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        for d in std::mem::take(&mut self.domains) {
            let _ = self.virsh(&["destroy", &d]);
            let _ = self.virsh(&["undefine", &d]);
        }
        // A QEMU that libvirt did not stop (its PID file is still there, the process is QEMU).
        if let Ok(entries) = fs::read_dir(self.path("run/qemu")) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "pid") {
                    continue;
                }
                let Some(pid) = fs::read_to_string(&p)
                    .ok()
                    .and_then(|s| s.trim().parse::<i32>().ok())
                else {
                    continue;
                };
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                if comm.starts_with("qemu") {
                    // SAFETY: kill(2) on the PID of the QEMU our libvirtd started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        stop(&mut self.libvirtd);
        stop(&mut self.virtlogd);
        // The namespace, and its mounts, ended with its last process; the TempDir goes next.
    }
}

/// The whole domain (the one docs/libvirt.md shows): TCG, q35, 256 MiB of memfd memory shared
/// with the vhost-user backend, the guest image booted directly, the serial console to a file,
/// two spare PCIe root ports for hot-plug, and `interface` (from `qemu-args --libvirt`).
fn domain_xml(
    name: &str,
    image: &(PathBuf, PathBuf),
    cmdline: &str,
    serial: &Path,
    interface: &str,
) -> String {
    let interface: String = interface.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features>
    <acpi/>
  </features>
  <cpu mode='maximum' match='exact'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='usb' model='none'/>
    <serial type='file'>
      <source path='{serial}'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
{interface}  </devices>
</domain>
",
        kernel = image.0.display(),
        initrd = image.1.display(),
        serial = serial.display(),
    )
}

/// The guest's kernel command line, as `qemu::Guest` builds it: `ip` on eth0, `cmd` run by the
/// `serve` script, which then keeps the guest up.
fn cmdline(name: &str, ip: &str, cmd: &str) -> String {
    let cmd = qemu::base64_encode(cmd.as_bytes());
    assert!(
        cmd.len() < 1024,
        "guest command too long for the command line"
    );
    format!(
        "console=ttyS0 quiet panic=-1 sriov.name={name} sriov.ip={ip} sriov.script=serve \
         sriov.cmd={cmd}"
    )
}

/// Guest lines: ping `peer` until it answers, then 5 pings, the summary line and `marker`.
fn ping_then(peer: &str, marker: &str) -> String {
    format!(
        "until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do sleep 0.2; done\n\
         ping -c 5 -i 0.2 -W 5 {peer} | grep transmitted\n\
         echo {marker}\n"
    )
}

/// Asserts that `line` (a ping summary) says 5 of 5 answered.
fn all_answered(line: &str, what: &str) {
    assert!(
        line.contains("5 packets transmitted, 5 packets received"),
        "{what}: {line}"
    );
}

/// Waits for `event` with `data.port == port` (and `data.state == state` if given).
fn wait_event(
    ctl: &mut Client,
    event: &str,
    port: &str,
    state: Option<&str>,
    emu: &Emulator,
) -> Value {
    let t = Instant::now();
    loop {
        let left = STEP.saturating_sub(t.elapsed());
        let ev = ctl.next_event_timeout(left).unwrap_or_else(|e| {
            panic!(
                "no {event} {port} {state:?} within {STEP:?}: {e}\n{}",
                emu.report()
            )
        });
        if ev["event"] == event
            && ev["data"]["port"] == port
            && state.is_none_or(|s| ev["data"]["state"] == s)
        {
            eprintln!("emulator event: {ev}");
            return ev;
        }
    }
}

/// Checks that domain `name`'s QEMU runs as `libvirt-qemu`, with group `kvm` among its
/// groups; returns its `Uid:`/`Groups:` lines.
fn assert_runs_as_libvirt_qemu(lv: &Libvirt, name: &str) -> String {
    let pid = lv.qemu_pid(name);
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |key: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let uid = id("-u").expect("libvirt-qemu's uid");
    let uids = field("Uid:");
    assert!(
        uids.iter().all(|&u| u == uid) && uid != 0,
        "QEMU (pid {pid}) of {name} runs as uids {uids:?}, not libvirt-qemu ({uid})"
    );
    let kvm = gid("kvm");
    let groups = field("Groups:");
    let gids = field("Gid:");
    assert!(
        groups.contains(&kvm) || gids.contains(&kvm),
        "QEMU (pid {pid}) is not in group kvm ({kvm}): gids {gids:?}, groups {groups:?}"
    );
    // What the domain asked for reached QEMU: TCG with -cpu max, the RAM a shared memfd.
    let cmd = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let cmd: Vec<String> = cmd
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let has = |w: &[&str]| {
        cmd.windows(w.len())
            .any(|c| c.iter().zip(w).all(|(a, b)| a == b))
    };
    let memfd = cmd
        .iter()
        .any(|a| a.contains("memory-backend-memfd") && a.contains("\"share\":true"));
    assert!(
        has(&["-accel", "tcg"]) && has(&["-cpu", "max"]) && memfd,
        "QEMU's command line: {cmd:?}"
    );
    format!(
        "pid {pid}, uid {uid} (libvirt-qemu), gid {}, groups {groups:?}",
        gids[0]
    )
}

#[test]
fn libvirt_runs_qemu_as_libvirt_qemu_on_vfs_by_socket_group_client_mode_and_hot_plug() {
    if !qemu::require_qemu(TEST) {
        return;
    }
    if let Some(missing) = libvirt_missing() {
        qemu::skip::skip_or_fail(TEST, &missing);
        return;
    }
    let started = Instant::now();
    let mut lv = Libvirt::start();
    let image = lv.image();

    // 1. Socket group: QEMU (libvirt-qemu, group kvm) connects to root's sockets of group kvm.
    let emu = Emulator::start(&["--vfs", "3", "--pv-ports", "0", "--socket-group", "kvm"]);
    // The sockets' directory must let group kvm through (a temporary one is 0700).
    fs::set_permissions(emu.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let sock = fs::metadata(emu.path().join("vf0.sock")).unwrap();
    assert_eq!(
        (sock.gid(), sock.mode() & 0o777),
        (gid("kvm"), 0o660),
        "vf0.sock's group and mode"
    );
    let peer = Guest::spawn(
        GuestConfig::new("lv-peer")
            .qemu_args(emu.nic_args(2, &[]))
            .ip("198.18.92.2/24")
            .script("serve")
            .cmd("ip addr add 198.18.93.2/24 dev eth0\n")
            .log(emu.path().join("peer.log")),
    )
    .expect("spawn the second guest");
    let mut ctl = emu.control();
    let vf0 = emu.qemu_args("vf", 0, &["--libvirt"]);
    assert!(vf0.contains("mode='client'"), "{vf0}");
    let cmd = ping_then("198.18.92.2", "LV-PINGED-VF0")
        + "i=0\n\
           while [ ! -e /sys/class/net/eth1 ]; do\n\
           \x20   sleep 0.2; i=$((i + 1)); [ $i -lt 600 ] || { echo LV-NO-ETH1; exit 1; }\n\
           done\n\
           echo LV-ETH1 $(cat /sys/class/net/eth1/address)\n\
           ip addr add 198.18.93.1/24 dev eth1\n\
           ip link set eth1 up\n"
        + &ping_then("198.18.93.2", "LV-PINGED-VF1")
        + "i=0\n\
           while [ -e /sys/class/net/eth1 ]; do\n\
           \x20   sleep 0.2; i=$((i + 1)); [ $i -lt 600 ] || { echo LV-ETH1-STAYS; exit 1; }\n\
           done\n\
           echo LV-ETH1-GONE\n";
    let xml = domain_xml(
        "sriov-lv-group",
        &image,
        &cmdline("sriov-lv-group", "198.18.92.1/24", &cmd),
        &lv.serial("sriov-lv-group"),
        &vf0,
    );
    lv.define_and_start("sriov-lv-group", &xml);
    let who = assert_runs_as_libvirt_qemu(&lv, "sriov-lv-group");
    eprintln!("socket group: the domain's QEMU is {who}");
    wait_event(&mut ctl, "VF_ATTACHED", "vf0", Some("driver-ready"), &emu);
    lv.wait_for_line("sriov-lv-group", "LV-PINGED-VF0", BOOT);
    let log = lv.serial_log("sriov-lv-group");
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("transmitted")).collect();
    all_answered(
        summaries[0],
        "the domain's pings to the second guest over vf0",
    );
    let vf0_stats = emu.stats("vf0")["counters"].clone();
    eprintln!(
        "socket group: the domain pinged the second guest over vf0 at {:.1?} ({})",
        started.elapsed(),
        summaries[0]
    );
    assert!(
        vf0_stats["rx_packets"].as_u64() >= Some(5) && vf0_stats["tx_packets"].as_u64() >= Some(5),
        "vf0's counters: {vf0_stats}"
    );

    // Hot-plug of vf1 with virsh, seen in the emulator's events and carrying traffic.
    let vf1 = emu.qemu_args("vf", 1, &["--libvirt"]);
    let vf1_file = lv.path("vf1.xml");
    fs::write(&vf1_file, &vf1).unwrap();
    let vf1_path = vf1_file.to_str().unwrap();
    lv.virsh(&["attach-device", "sriov-lv-group", vf1_path, "--live"])
        .unwrap_or_else(|e| panic!("{e}\n{}", lv.report(Some("sriov-lv-group"))));
    wait_event(&mut ctl, "VF_ATTACHED", "vf1", Some("connected"), &emu);
    wait_event(&mut ctl, "VF_ATTACHED", "vf1", Some("driver-ready"), &emu);
    let mac = emu.vf_mac(1);
    let line = lv.wait_for_line("sriov-lv-group", "LV-ETH1 ", STEP);
    assert!(
        line.ends_with(&mac),
        "the plugged NIC has vf1's MAC {mac}: {line}"
    );
    lv.wait_for_line("sriov-lv-group", "LV-PINGED-VF1", STEP);
    let log = lv.serial_log("sriov-lv-group");
    let summaries: Vec<&str> = log.lines().filter(|l| l.contains("transmitted")).collect();
    all_answered(
        summaries[1],
        "the domain's pings to the second guest over vf1",
    );
    eprintln!(
        "attach-device --live: VF_ATTACHED vf1, pings over it ({})",
        summaries[1]
    );
    assert!(emu.vf_attached(1));

    lv.virsh(&["detach-device", "sriov-lv-group", vf1_path, "--live"])
        .unwrap_or_else(|e| panic!("{e}\n{}", lv.report(Some("sriov-lv-group"))));
    wait_event(&mut ctl, "VF_DETACHED", "vf1", Some("gone"), &emu);
    lv.wait_for_line("sriov-lv-group", "LV-ETH1-GONE", STEP);
    let ifaces = lv.virsh(&["domiflist", "sriov-lv-group"]).unwrap();
    assert!(
        ifaces.contains("vf0.sock") && !ifaces.contains("vf1.sock"),
        "{ifaces}"
    );
    assert!(!emu.vf_attached(1) && emu.vf_attached(0));
    eprintln!(
        "detach-device --live: VF_DETACHED vf1, the NIC gone from the guest ({:.1?})",
        started.elapsed()
    );
    lv.destroy_and_undefine("sriov-lv-group");
    wait_event(&mut ctl, "VF_DETACHED", "vf0", Some("gone"), &emu);
    drop(peer);
    drop(ctl);
    drop(emu);

    // 2. Client mode: QEMU serves the socket in a directory group kvm may write to; the
    //    emulator connects.
    let client_dir = mkdir(&lv.path("vhost"), 0o770);
    std::os::unix::fs::chown(&client_dir, None, Some(gid("kvm"))).unwrap();
    let dir = client_dir.to_str().unwrap();
    let emu = Emulator::start(&["--vfs", "2", "--pv-ports", "0", "--vf-client-dir", dir]);
    let mut ctl = emu.control();
    let peer = Guest::spawn(
        GuestConfig::new("lv-peer-client")
            .qemu_args(emu.nic_args(1, &["--vf-client-dir", dir]))
            .ip("198.18.94.2/24")
            .script("serve")
            .log(emu.path().join("peer-client.log")),
    )
    .expect("spawn the second guest");
    let vf0 = emu.qemu_args("vf", 0, &["--libvirt", "--vf-client-dir", dir]);
    assert!(vf0.contains("mode='server'"), "{vf0}");
    let xml = domain_xml(
        "sriov-lv-client",
        &image,
        &cmdline(
            "sriov-lv-client",
            "198.18.94.1/24",
            &ping_then("198.18.94.2", "LV-PINGED-CLIENT"),
        ),
        &lv.serial("sriov-lv-client"),
        &vf0,
    );
    lv.define_and_start("sriov-lv-client", &xml);
    let who = assert_runs_as_libvirt_qemu(&lv, "sriov-lv-client");
    let sock = fs::metadata(client_dir.join("vf0.sock")).unwrap();
    assert_eq!(
        sock.uid(),
        id("-u").unwrap(),
        "vf0.sock is made by QEMU, as libvirt-qemu"
    );
    eprintln!("client mode: the domain's QEMU is {who}, and serves vf0.sock");
    wait_event(&mut ctl, "VF_ATTACHED", "vf0", Some("driver-ready"), &emu);
    let line = lv.wait_for_line("sriov-lv-client", "transmitted", BOOT);
    all_answered(
        &line,
        "the domain's pings to the second guest over vf0 (client mode)",
    );
    lv.wait_for_line("sriov-lv-client", "LV-PINGED-CLIENT", STEP);
    eprintln!("client mode: the domain pinged the second guest over vf0 ({line})");
    lv.destroy_and_undefine("sriov-lv-client");
    wait_event(&mut ctl, "VF_DETACHED", "vf0", Some("gone"), &emu);
    drop(peer);
    drop(lv);
    eprintln!("libvirt test done in {:.1?}", started.elapsed());
}
