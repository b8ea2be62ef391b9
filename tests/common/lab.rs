//! The plug-in lab: two hosts (two emulators joined by a VXLAN uplink), a peer guest on host
//! A's vf1 and the guest under test, which boots on A's PV port in an active-backup bond
//! (fixtures/guest/plugin-watch.sh). Both ping each other every 100 ms the whole time. A
//! scenario is a list of phases (plug, unplug, migrate, link changes); each phase is recorded
//! with its times, the frames on the guest's VF and PV ports and the pings lost in it, and the
//! whole is printed as a timeline and written to `target/tmp/lab/SCENARIO.txt` (scripts/lab
//! collects them).
//!
//! Lost pings are placed in time from the replies (`qemu::PingWatch`): a reply line is stamped when it appears in
//! the console log (polled every 10 ms), and a missing sequence number gets the time between
//! the replies around it. Pings are not sent while QEMU has the guest stopped (its clock stops),
//! so a migration's downtime costs pings only through the traffic that moves.
//!
//! Included with `#[path]` beside `emulator.rs` and `qemu.rs` (as `crate::emulator`,
//! `crate::qemu`).
#![allow(dead_code)]

use crate::emulator::Emulator;
use crate::qemu::{self, Guest, GuestConfig, PingWatch, Replies};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(120);
const STEP: Duration = Duration::from_secs(30);
/// How long a phase holds once its traffic moved: the last second's frames say where the
/// guest's traffic runs at the phase's end.
pub const HOLD: Duration = Duration::from_secs(1);
const GUEST_IP: &str = "198.18.80.1";
const PEER_IP: &str = "198.18.80.2";

/// The scenarios run one at a time: each has two or three TCG guests.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which host.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Host {
    A,
    B,
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Host::A => "A",
            Host::B => "B",
        })
    }
}

/// Frame counters of the guest's two ports (summed over both hosts: the guest is on one).
#[derive(Clone, Copy, Default, Debug)]
pub struct Frames {
    pub vf_tx: u64,
    pub vf_rx: u64,
    pub pv_tx: u64,
    pub pv_rx: u64,
}

impl std::ops::Sub for Frames {
    type Output = Frames;
    fn sub(self, o: Frames) -> Frames {
        Frames {
            vf_tx: self.vf_tx.saturating_sub(o.vf_tx),
            vf_rx: self.vf_rx.saturating_sub(o.vf_rx),
            pv_tx: self.pv_tx.saturating_sub(o.pv_tx),
            pv_rx: self.pv_rx.saturating_sub(o.pv_rx),
        }
    }
}

/// One phase of the timeline.
#[derive(Clone, Debug)]
pub struct Phase {
    pub name: String,
    pub start: Duration,
    pub end: Duration,
    /// Over the whole phase.
    pub frames: Frames,
    /// Over its last `HOLD`: where the guest's traffic runs at its end.
    pub last: Frames,
    /// Pings lost (guest -> peer, peer -> guest), placed in this phase.
    pub lost_out: u32,
    pub lost_in: u32,
    pub note: String,
}

/// A counter of `port`'s `query-stats`, 0 if the port does not exist (a host without VFs).
fn port_counter(emu: &Emulator, port: &str, name: &str) -> u64 {
    emu.control()
        .execute("query-stats", json!({"port": port}))
        .ok()
        .and_then(|v| v[0]["counters"][name].as_u64())
        .unwrap_or(0)
}

/// The options of host A, and of host B unless a scenario gives its own (`Lab::start`).
pub fn host_args(local: u16, remote: u16) -> Vec<String> {
    [
        "--vfs",
        "2",
        "--pv-ports",
        "1",
        "--mtu",
        "1450",
        "--uplink",
        &format!("vxlan:local=127.0.0.1:{local},remote=127.0.0.1:{remote},vni=80"),
    ]
    .map(String::from)
    .to_vec()
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The running lab.
pub struct Lab {
    pub name: String,
    pub a: Emulator,
    pub b: Emulator,
    peer: Guest,
    /// The QEMU the guest runs in now, and where.
    guest: Guest,
    pub host: Host,
    /// QEMUs the guest ran in before (stopped after the migration; kept for their logs).
    old: Vec<Guest>,
    /// The guest's MAC (vf0's on host A; the PV NIC carries it too).
    pub mac: String,
    /// Whether the guest's current QEMU has a VF plugged, and which host's.
    pub vf: Option<Host>,
    /// Plugs done (the watcher's PLUGIN-ENSLAVED count to wait for).
    plugs: u32,
    unplugs: u32,
    pings: PingWatch,
    pub t0: Instant,
    pub phases: Vec<Phase>,
    /// The frame counters at the end of the last phase (where the next one counts from).
    counted: Option<Frames>,
    /// Migration figures (`migrate`): total time, QEMU downtime in ms.
    pub migrations: Vec<(Duration, u64)>,
    describe_b: String,
}

impl Lab {
    /// Starts host A (`host_args`) and host B (`host_args` then `b_extra`, whose flags win),
    /// the peer on A's vf1 and the guest on A's PV port, and waits until both ping.
    pub fn start(name: &str, b_extra: &[&str]) -> Lab {
        qemu::guest_image().expect("guest image");
        let (pa, pb) = (free_udp_port(), free_udp_port());
        let a_args = host_args(pa, pb);
        let mut b_args = host_args(pb, pa);
        for pair in b_extra.chunks(2) {
            match b_args.iter().position(|w| w == pair[0]) {
                Some(i) => b_args[i + 1] = pair[1].to_string(),
                None => b_args.extend(pair.iter().map(|w| w.to_string())),
            }
        }
        fn refs(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        let a = Emulator::start(&refs(&a_args));
        let b = Emulator::start(&refs(&b_args));
        let mac = a.vf_mac(0);
        let peer = Guest::spawn(
            GuestConfig::new(&format!("{name}-peer"))
                .qemu_args(a.nic_args(1, &[]))
                .ip(&format!("{PEER_IP}/24"))
                .script("serve")
                .cmd(&format!(
                    "until ping -c 1 -W 1 {GUEST_IP} >/dev/null 2>&1; do sleep 0.2; done\n\
                     echo PEER-PINGING\nping -i 0.1 -W 1 {GUEST_IP}\n"
                ))
                .log(a.path().join("peer.log")),
        )
        .expect("spawn the peer");
        let guest = Guest::spawn(Self::guest_config(name, &a, Host::A, &mac, None, None))
            .expect("spawn the guest");
        let pings = PingWatch::start();
        pings.watch(&a.path().join("peer.log"), true);
        pings.watch(&a.path().join("guest-A.log"), false);
        let describe_b = if b_extra.is_empty() {
            "like host A".to_string()
        } else {
            b_extra.join(" ")
        };
        let lab = Lab {
            name: name.to_string(),
            a,
            b,
            peer,
            guest,
            host: Host::A,
            old: Vec::new(),
            mac,
            vf: None,
            plugs: 0,
            unplugs: 0,
            pings,
            t0: Instant::now(),
            phases: Vec::new(),
            counted: None,
            migrations: Vec::new(),
            describe_b,
        };
        lab.guest
            .wait_for_line("GUEST-PINGING", BOOT)
            .unwrap_or_else(|e| lab.fail(&e));
        lab.peer
            .wait_for_line("PEER-PINGING", BOOT)
            .unwrap_or_else(|e| lab.fail(&e));
        let mut lab = lab;
        lab.t0 = Instant::now();
        lab.phase("on A's pv0 (booted there)", |l| {
            l.wait_traffic(l.host, "pv0");
            String::new()
        });
        lab
    }

    /// The guest's QEMU on `host`: its PV NIC (with the guest's MAC), a free root port, and
    /// with `vf` that host's vf0 already on the root port (a migration's destination with the
    /// VF attached: the same devices as the source).
    fn guest_config(
        name: &str,
        emu: &Emulator,
        host: Host,
        mac: &str,
        vf: Option<&Emulator>,
        incoming: Option<&Path>,
    ) -> GuestConfig {
        let mut args = emu.pv_nic_args(0, mac);
        args.extend(qemu::pcie_root_ports(1));
        if let Some(v) = vf {
            args.extend(v.nic_args(0, &[]).into_iter().map(|w| {
                if w.starts_with("virtio-net-pci,") {
                    format!("{w},bus=rp0")
                } else {
                    w
                }
            }));
        }
        if let Some(sock) = incoming {
            args.extend(["-incoming".to_string(), format!("unix:{}", sock.display())]);
        }
        GuestConfig::new(&format!("{name}-guest"))
            .qemu_args(args)
            .sriov("bondip", &format!("{GUEST_IP}/24"))
            .script("serve")
            .cmd(&format!(
                "sh /tests/plugin-watch.sh &\n\
                 until ping -c 1 -W 1 {PEER_IP} >/dev/null 2>&1; do sleep 0.2; done\n\
                 echo GUEST-PINGING\nping -i 0.1 -W 1 {PEER_IP}\n"
            ))
            .qmp_socket(emu.path().join(format!("guest-{host}.qmp")))
            .log(emu.path().join(format!("guest-{host}.log")))
    }

    pub fn emu(&self, h: Host) -> &Emulator {
        match h {
            Host::A => &self.a,
            Host::B => &self.b,
        }
    }

    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    /// Panics with `what`, the timeline so far and both hosts' reports.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n{}\nA:\n{}\nB:\n{}",
            self.render(),
            self.a.report(),
            self.b.report()
        )
    }

    fn frames(&self) -> Frames {
        let mut f = Frames::default();
        for e in [&self.a, &self.b] {
            f.vf_tx += port_counter(e, "vf0", "tx_packets");
            f.vf_rx += port_counter(e, "vf0", "rx_packets");
            f.pv_tx += port_counter(e, "pv0", "tx_packets");
            f.pv_rx += port_counter(e, "pv0", "rx_packets");
        }
        f
    }

    /// Waits until `port` of `host` took at least 5 more frames from the guest (its traffic
    /// runs there); fails after 5 s.
    pub fn wait_traffic(&self, host: Host, port: &str) -> Duration {
        let emu = self.emu(host);
        let from = port_counter(emu, port, "tx_packets");
        let t = Instant::now();
        while port_counter(emu, port, "tx_packets") < from + 5 {
            if t.elapsed() > Duration::from_secs(5) {
                self.fail(&format!(
                    "the guest's traffic is not on host {host}'s {port} within 5 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        t.elapsed()
    }

    /// Runs one phase: `act` does it (and returns a note), then the phase holds for `HOLD`.
    pub fn phase(&mut self, name: &str, act: impl FnOnce(&mut Lab) -> String) -> &Phase {
        // Phases are contiguous (what a test checks between two phases belongs to the next),
        // so every lost ping falls in one.
        let start = self.phases.last().map_or(Duration::ZERO, |p| p.end);
        let before = self.counted.unwrap_or_else(|| self.frames());
        let note = act(self);
        let mid = self.frames();
        std::thread::sleep(HOLD);
        let after = self.frames();
        self.counted = Some(after);
        self.phases.push(Phase {
            name: name.to_string(),
            start,
            end: self.t0.elapsed(),
            frames: after - before,
            last: after - mid,
            lost_out: 0,
            lost_in: 0,
            note,
        });
        println!(
            "lab {}: {name} done at {:.1?}",
            self.name,
            self.t0.elapsed()
        );
        self.phases.last().expect("just pushed")
    }

    fn wait_watcher(&self, marker: &str, n: u32) -> String {
        let t = Instant::now();
        loop {
            let log = self.guest.log();
            if let Some(l) = log
                .lines()
                .filter(|l| l.contains(marker))
                .nth(n as usize - 1)
            {
                return l.trim().to_string();
            }
            if t.elapsed() > STEP {
                self.fail(&format!("{marker} not seen {n} times within {STEP:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Hot-plugs the guest's host's vf0 and waits until the guest's traffic runs on it.
    pub fn plug(&mut self) -> String {
        let h = self.host;
        self.emu(h).hotplug(&self.guest, 0, "plug");
        self.plugs += 1;
        self.vf = Some(h);
        self.wait_watcher("PLUGIN-ENSLAVED", self.plugs);
        let t = self.wait_traffic(h, "vf0");
        let queues = self.vf0(h)["enabled-queues"].as_array().map_or(0, Vec::len);
        format!(
            "plugged {h}'s vf0 ({queues} queue pairs enabled); traffic on it {t:.1?} after the \
             watcher enslaved it"
        )
    }

    /// Unplugs the guest's VF and waits until its traffic runs on the PV port.
    pub fn unplug(&mut self) -> String {
        let h = self.vf.unwrap_or(self.host);
        let t = Instant::now();
        self.emu(h).hotplug(&self.guest, 0, "unplug");
        let released = t.elapsed();
        self.vf = None;
        self.unplugs += 1;
        let on_pv = self.wait_traffic(self.host, "pv0");
        // The watcher of the QEMU the guest runs in now counts from its boot.
        format!("QEMU released it in {released:.1?}; traffic on pv0 {on_pv:.1?} later")
    }

    /// `vf-set` of the guest's host's vf0 (`link-state`).
    pub fn set_link(&mut self, state: &str) -> String {
        let h = self.host;
        self.emu(h)
            .qmp("vf-set", json!({"vf": 0, "link-state": state}));
        let port = if state == "disable" { "pv0" } else { "vf0" };
        let t = self.wait_traffic(h, port);
        format!("link-state {state}: traffic on {port} {t:.1?} later")
    }

    /// Live-migrates the guest to a QEMU on host B (its PV NIC, and B's vf0 too with
    /// `with_vf`: the source has A's vf0 plugged, the destination the same device on B's). The
    /// source QEMU is stopped once the migration completed.
    pub fn migrate(&mut self, with_vf: bool) -> String {
        assert_eq!(self.host, Host::A, "the lab migrates from host A to host B");
        let sock = self.b.path().join("migration.sock");
        let cfg = Self::guest_config(
            &self.name,
            &self.b,
            Host::B,
            &self.mac,
            with_vf.then_some(&self.b),
            Some(&sock),
        );
        let dst = Guest::spawn(cfg).unwrap_or_else(|e| self.fail(&e));
        self.pings.watch(&self.b.path().join("guest-B.log"), false);
        let t = Instant::now();
        let status = self
            .guest
            .migrate_unix(&sock, STEP)
            .unwrap_or_else(|e| self.fail(&e));
        let took = t.elapsed();
        let downtime: u64 = status
            .split("\"downtime\": ")
            .nth(1)
            .and_then(|r| r.split([',', '}']).next())
            .and_then(|d| d.trim().parse().ok())
            .unwrap_or(0);
        // QEMU announces the guest (SEND_RARP on each NIC, 5 rounds over about half a second):
        // the phase's traffic is judged after the announcements, which are frames of the ports.
        let announced = self.wait_announcements();
        let src = std::mem::replace(&mut self.guest, dst);
        src.kill();
        self.old.push(src);
        self.host = Host::B;
        self.vf = with_vf.then_some(Host::B);
        // The destination's console log starts empty: the watcher's lines are counted anew.
        self.plugs = 0;
        self.unplugs = 0;
        let port = if with_vf { "vf0" } else { "pv0" };
        let on = self.wait_traffic(Host::B, port);
        self.migrations.push((took, downtime));
        format!(
            "migration {took:.1?}, QEMU downtime {downtime} ms; {announced} SEND_RARP; traffic \
             on B's {port} {on:.1?} later"
        )
    }

    /// Waits until host B's log shows no new SEND_RARP for the guest for 600 ms (at most 3 s: QEMU's
    /// rounds are up to 550 ms apart);
    /// returns how many it shows.
    fn wait_announcements(&self) -> usize {
        let line = format!("announcing {} (SEND_RARP)", self.mac);
        let count = || self.b.log().matches(&line).count();
        let (t, mut n, mut since) = (Instant::now(), count(), Instant::now());
        while t.elapsed() < Duration::from_secs(3)
            && (n == 0 || since.elapsed() < Duration::from_millis(600))
        {
            std::thread::sleep(Duration::from_millis(50));
            let m = count();
            if m != n {
                (n, since) = (m, Instant::now());
            }
        }
        n
    }

    /// Places the lost pings in the phases (call once the last phase is done).
    fn place_losses(&mut self) {
        let replies = self.pings.replies();
        for p in &mut self.phases {
            p.lost_out = 0;
            p.lost_in = 0;
        }
        for (dir, r) in replies.iter().enumerate() {
            for (_, at) in r.lost() {
                let t = at.saturating_duration_since(self.t0);
                let Some(p) = self.phases.iter_mut().find(|p| t >= p.start && t < p.end) else {
                    continue;
                };
                if dir == 1 {
                    p.lost_in += 1;
                } else {
                    p.lost_out += 1;
                }
            }
        }
    }

    /// (sent, answered) of the guest's pings and of the peer's within the phases (from the
    /// first phase's start to the last one's end).
    pub fn ping_totals(&self) -> ((u32, u32), (u32, u32)) {
        let r = self.pings.replies();
        let (Some(first), Some(last)) = (self.phases.first(), self.phases.last()) else {
            return ((0, 0), (0, 0));
        };
        let inside = |at: Instant| {
            let t = at.saturating_duration_since(self.t0);
            t >= first.start && t < last.end
        };
        let count = |r: &Replies| {
            let mut seen: Vec<(u32, Instant)> = r.seen.clone();
            seen.sort_by_key(|&(s, _)| s);
            seen.dedup_by_key(|&mut (s, _)| s);
            let ok = seen.iter().filter(|&&(_, t)| inside(t)).count() as u32;
            let lost = r.lost().iter().filter(|&&(_, t)| inside(t)).count() as u32;
            (ok + lost, ok)
        };
        (count(&r[0]), count(&r[1]))
    }

    /// The timeline as a table.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lab scenario {}: host A --vfs 2 --pv-ports 1 --mtu 1450 (VXLAN uplink); host B {}; \
             guest MAC {}; pings every 100 ms both ways",
            self.name, self.describe_b, self.mac
        );
        let _ = writeln!(
            s,
            "{:<40} {:>7} {:>7} {:>6} {:>6} {:>6} {:>6} {:>5} {:>5}  note",
            "phase", "start", "end", "VF tx", "VF rx", "PV tx", "PV rx", "lost>", "lost<"
        );
        for p in &self.phases {
            let _ = writeln!(
                s,
                "{:<40} {:>6.1}s {:>6.1}s {:>6} {:>6} {:>6} {:>6} {:>5} {:>5}  {}",
                p.name,
                p.start.as_secs_f64(),
                p.end.as_secs_f64(),
                p.frames.vf_tx,
                p.frames.vf_rx,
                p.frames.pv_tx,
                p.frames.pv_rx,
                p.lost_out,
                p.lost_in,
                p.note
            );
        }
        let ((o_sent, o_ok), (i_sent, i_ok)) = self.ping_totals();
        let _ = writeln!(
            s,
            "pings guest -> peer: {o_ok} of {o_sent} answered; peer -> guest: {i_ok} of {i_sent} \
             (lost> counts the guest's pings lost, lost< the peer's; VF/PV: the guest's vf0 and \
             pv0, tx = frames the guest sent)"
        );
        s
    }

    /// Places the losses, prints the timeline and writes it to `target/tmp/lab/NAME.txt`.
    pub fn finish(&mut self) -> String {
        self.phase("settle", |_| String::new());
        self.place_losses();
        let text = self.render();
        println!("{text}");
        let dir = option_env!("CARGO_TARGET_TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join("lab");
        let _ = std::fs::create_dir_all(&dir);
        let file = dir.join(format!("{}.txt", self.name));
        if let Err(e) = std::fs::write(&file, &text) {
            eprintln!("cannot write {}: {e}", file.display());
        }
        text
    }

    /// The emulator's log of `host` (for its SEND_RARP lines).
    pub fn log(&self, h: Host) -> String {
        self.emu(h).log()
    }

    /// Query-vfs entry of `host`'s vf0.
    pub fn vf0(&self, h: Host) -> Value {
        self.emu(h).qmp("query-vfs", json!({}))[0].clone()
    }
}
