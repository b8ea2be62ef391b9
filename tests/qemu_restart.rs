//! Crash and restart with real QEMU 10 guests (issue 13): the emulator, started with a
//! `--config` file, is killed with SIGKILL under traffic and started again with the same
//! arguments, three times, while two guests on vf0 and vf1 ping each other every 200 ms (and
//! every 20 ms with 1200 bytes besides, unwatched: traffic in the rings at each kill). QEMU
//! (`reconnect-ms`, as `qemu-args` prints it) reattaches by itself; the pings must come back
//! within 5 s of each restart, no guest may reboot, and every VF setting of the config file is
//! back after each restart (a change made at run time is not: only the file is kept).
//!
//! The test prints its timeline (kill, restart, serving, QEMU reattached, first reply each way)
//! and writes it to `target/tmp/restart/timeline.txt`.
//!
//! A missing QEMU 10 fails the test (SRIOV_SKIP_QEMU=1 skips it, printing `SKIPPED:`).

#[path = "common/emulator.rs"]
mod emulator;
#[path = "common/qemu.rs"]
mod qemu;

use emulator::Emulator;
use qemu::{Guest, GuestConfig, PingWatch};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
/// The acceptance bound: pings both ways within this long of the restart.
const RESUME_LIMIT: Duration = Duration::from_secs(5);
/// How long the test waits for the pings before it gives up (to report what it saw).
const RESUME_GIVE_UP: Duration = Duration::from_secs(20);
/// How long the emulator stays dead before each restart: a supervisor's short delay; longer
/// than QEMU's reconnect interval (1 s), so QEMU has tried and failed once or twice; and one
/// in between.
const DEAD: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_millis(2500),
    Duration::from_millis(1000),
];

/// The VF settings the emulator starts with: every knob the file has, on the two VFs with
/// guests (who ping each other on VLAN 100, tagged and stripped by the switch) and on one
/// without. vf1's 4 channels matter to QEMU: its device has 4 queue pairs, and a port that
/// came back with fewer would be refused at the reconnect.
const CONFIG: &str = r#"
numvfs = 3
pv_ports = 0
channels_per_vf = 2
fdb_aging = 120

[[vf]]
index = 0
vlan = 100
qos = 3
proto = "802.1Q"
spoofchk = true
max_tx_rate = 1000
min_tx_rate = 100

[[vf]]
index = 1
vlan = 100
mac = "02:00:00:00:aa:01"
trust = true
promisc = true
link_state = "enable"
channels = 4

[[vf]]
index = 2
vlan = 200
qos = 1
proto = "802.1ad"
spoofchk = false
link_state = "disable"
max_tx_rate = 500
"#;

/// What the config file says, as `query-vfs` shows it (VF index, field, value).
fn expected_settings() -> Vec<(usize, &'static str, Value)> {
    vec![
        (0, "vlan", json!(100)),
        (0, "qos", json!(3)),
        (0, "proto", json!("802.1Q")),
        (0, "spoofchk", json!(true)),
        (0, "max-tx-rate", json!(1000)),
        (0, "min-tx-rate", json!(100)),
        (0, "channels", json!(2)),
        (1, "vlan", json!(100)),
        (1, "mac", json!("02:00:00:00:aa:01")),
        (1, "trust", json!(true)),
        (1, "promisc", json!(true)),
        (1, "link-state", json!("enable")),
        (1, "channels", json!(4)),
        (2, "vlan", json!(200)),
        (2, "qos", json!(1)),
        (2, "proto", json!("802.1ad")),
        (2, "spoofchk", json!(false)),
        (2, "link-state", json!("disable")),
        (2, "max-tx-rate", json!(500)),
    ]
}

/// `query-vfs` without what describes the frontends of the moment (attached, enabled queues):
/// the VFs' settings.
fn vf_settings(emu: &Emulator) -> Value {
    let mut vfs = emu.qmp("query-vfs", json!({}));
    for vf in vfs.as_array_mut().into_iter().flatten() {
        if let Some(o) = vf.as_object_mut() {
            o.remove("attached");
            o.remove("enabled-queues");
        }
    }
    vfs
}

const IP: [&str; 2] = ["198.18.90.1", "198.18.90.2"];

/// The guest on VF `vf`: it pings the other every 200 ms (the pings the test follows) and
/// every 20 ms with 1200 bytes, quietly (so the rings always have frames in flight when the
/// emulator dies), and prints its uptime every second and its carrier whenever it changes
/// (read with shell builtins: no fork per look).
fn guest_config(emu: &Emulator, vf: usize) -> GuestConfig {
    let peer = IP[1 - vf];
    GuestConfig::new(&format!("restart-g{vf}"))
        .qemu_args(emu.nic_args(vf as u32, &[]))
        .ip(&format!("{}/24", IP[vf]))
        .script("serve")
        .cmd(&format!(
            "(c=x; while :; do read u _ < /proc/uptime; n=-; read n 2>/dev/null \
             < /sys/class/net/eth0/carrier; [ \"$n\" = \"$c\" ] || echo \"CARRIER $n at $u\"; \
             c=$n; sleep 0.1; done) &\n\
             (while :; do read u _ < /proc/uptime; echo \"UPTIME $u\"; sleep 1; done) &\n\
             until ping -c 1 -W 1 {peer} >/dev/null 2>&1; do sleep 0.2; done\n\
             ping -q -i 0.02 -s 1200 {peer} >/dev/null 2>&1 &\n\
             echo GUEST-PINGING\nping -i 0.2 {peer}\n"
        ))
        .log(emu.path().join(format!("guest{vf}.log")))
}

/// One kill and restart, as seen by the test (times since the guests started pinging).
#[derive(Default)]
struct Round {
    killed: Duration,
    restarted: Duration,
    /// The restarted emulator answers on its control socket.
    serving: Duration,
    /// QEMU reattached both VFs (`query-vfs` says `attached`), if seen.
    attached: Option<Duration>,
    /// The first ping reply after the restart, of guest 0 and of guest 1.
    first_reply: [Option<Duration>; 2],
    /// Pings lost around the kill, each way.
    lost: [usize; 2],
}

impl Round {
    /// From the restart to the replies both ways.
    fn back_after(&self) -> Option<Duration> {
        let [Some(a), Some(b)] = self.first_reply else {
            return None;
        };
        Some(a.max(b).saturating_sub(self.restarted))
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()))
}

struct Scenario {
    emu: Emulator,
    guests: [Guest; 2],
    pings: PingWatch,
    t0: Instant,
    rounds: Vec<Round>,
    _config: tempfile::TempDir,
}

impl Scenario {
    fn since(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.t0)
    }

    /// The guests' console lines that start with `prefix` (each guest's, in order).
    fn console(&self, vf: usize, prefix: &str) -> Vec<String> {
        self.guests[vf]
            .log()
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(prefix))
            .map(str::to_string)
            .collect()
    }

    fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "restart: sriov-emu run --config (3 VFs: vf0 and vf1 on VLAN 100 with guests \
             pinging each other every 200 ms and every 20 ms with 1200 bytes; every knob set), \
             SIGKILL and restart {} times",
            self.rounds.len()
        );
        let _ = writeln!(
            s,
            "{:<5} {:>8} {:>6} {:>9} {:>8} {:>9} {:>10} {:>10} {:>10} {:>5} {:>5}",
            "kill",
            "killed",
            "dead",
            "restarted",
            "serving",
            "attached",
            "reply g0",
            "reply g1",
            "back after",
            "lost0",
            "lost1"
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let _ = writeln!(
                s,
                "{:<5} {:>8} {:>6} {:>9} {:>8} {:>9} {:>10} {:>10} {:>10} {:>5} {:>5}",
                i + 1,
                secs(Some(r.killed)),
                secs(Some(r.restarted.saturating_sub(r.killed))),
                secs(Some(r.restarted)),
                secs(Some(r.serving)),
                secs(r.attached),
                secs(r.first_reply[0]),
                secs(r.first_reply[1]),
                secs(r.back_after()),
                r.lost[0],
                r.lost[1]
            );
        }
        for vf in 0..2 {
            let _ = writeln!(
                s,
                "guest {vf}: carrier changes seen by the guest (value at uptime): {}",
                self.console(vf, "CARRIER ").join(", ")
            );
        }
        let _ = writeln!(
            s,
            "(times from the moment both guests pinged; dead = killed to restarted; back after = \
             restart to the first reply both ways; lost = pings without a reply around the kill)"
        );
        s
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\n{}\n{}\n{}\n{}",
            self.render(),
            self.emu.report(),
            self.guests[0].failure("at the failure"),
            self.guests[1].failure("at the failure")
        )
    }

    /// The time of the first reply of guest `vf`'s pings stamped after `after`.
    fn first_reply_after(&self, vf: usize, after: Instant) -> Option<Instant> {
        self.pings.replies()[vf]
            .seen
            .iter()
            .map(|&(_, t)| t)
            .filter(|&t| t > after)
            .min()
    }

    /// Replies of guest `vf`'s pings stamped after `after`.
    fn replies_after(&self, vf: usize, after: Instant) -> usize {
        self.pings.replies()[vf]
            .seen
            .iter()
            .filter(|&&(_, t)| t > after)
            .count()
    }

    /// Kills the emulator, leaves it dead for `dead`, starts it again; returns the round once
    /// the pings run both ways again (5 replies each after the first).
    fn kill_and_restart(&mut self, dead: Duration) -> Round {
        let mut r = Round::default();
        let killed = Instant::now();
        self.emu.kill_hard();
        r.killed = self.since(killed);
        std::thread::sleep(dead);
        let restarted = Instant::now();
        r.restarted = self.since(restarted);
        self.emu.restart();
        r.serving = self.since(Instant::now());
        loop {
            let now = Instant::now();
            if r.attached.is_none()
                && (0..2).all(|vf| self.emu.qmp("query-vfs", json!({}))[vf]["attached"] == true)
            {
                r.attached = Some(self.since(now));
            }
            for vf in 0..2 {
                if r.first_reply[vf].is_none() {
                    r.first_reply[vf] =
                        self.first_reply_after(vf, restarted).map(|t| self.since(t));
                }
            }
            let steady = r.first_reply.iter().all(Option::is_some)
                && (0..2).all(|vf| self.replies_after(vf, restarted) >= 6);
            if steady && r.attached.is_some() {
                break;
            }
            if now.duration_since(restarted) > RESUME_GIVE_UP {
                self.rounds.push(r);
                self.fail(&format!(
                    "the pings did not come back within {RESUME_GIVE_UP:?} of restart {}",
                    self.rounds.len()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let replies = self.pings.replies();
        for (vf, rep) in replies.iter().enumerate() {
            r.lost[vf] = rep
                .lost()
                .iter()
                .filter(|&&(_, t)| t + Duration::from_secs(1) > killed)
                .count();
        }
        r
    }

    /// Both guests' QEMUs still run, each booted once, and their uptime only grew.
    fn check_no_reboot(&self, pids: [u32; 2]) {
        for (vf, g) in self.guests.iter().enumerate() {
            if let Some(st) = g.try_exit_status() {
                self.fail(&format!("guest {vf}'s QEMU exited ({st})"));
            }
            if g.pid() != pids[vf] {
                self.fail(&format!("guest {vf}'s QEMU is another process"));
            }
            let boots = g.log().matches(qemu::READY_MARKER).count();
            if boots != 1 {
                self.fail(&format!("guest {vf} booted {boots} times"));
            }
            let up: Vec<f64> = self
                .console(vf, "UPTIME ")
                .iter()
                .filter_map(|u| u.trim().parse().ok())
                .collect();
            if up.windows(2).any(|w| w[1] < w[0]) {
                self.fail(&format!("guest {vf}'s uptime went back: {up:?}"));
            }
        }
    }
}

#[test]
fn sigkill_and_restart_under_traffic_three_times_pings_resume_within_5_s_no_guest_reboot() {
    if !qemu::require_qemu(
        "sigkill_and_restart_under_traffic_three_times_pings_resume_within_5_s_no_guest_reboot",
    ) {
        return;
    }
    qemu::guest_image().expect("guest image");
    let config = tempfile::tempdir().unwrap();
    let file = config.path().join("restart.toml");
    std::fs::write(&file, CONFIG).unwrap();
    let emu = Emulator::start(&["--config", file.to_str().unwrap()]);
    let qemu_args = emu.qemu_args("vf", 0, &[]);
    assert!(
        qemu_args.contains("reconnect-ms="),
        "QEMU reconnects a client chardev only with reconnect-ms: {qemu_args}"
    );

    // The settings as the config file gave them, before anything else happens.
    let vfs = emu.qmp("query-vfs", json!({}));
    for (vf, field, want) in expected_settings() {
        assert_eq!(
            vfs[vf][field], want,
            "vf{vf} {field} from the config file: {vfs}"
        );
    }
    let settings = vf_settings(&emu);

    let guests = [0, 1].map(|vf| Guest::spawn(guest_config(&emu, vf)).expect("spawn QEMU"));
    let pings = PingWatch::start();
    pings.watch(guests[0].log_path(), false);
    pings.watch(guests[1].log_path(), true);
    let mut s = Scenario {
        emu,
        guests,
        pings,
        t0: Instant::now(),
        rounds: Vec::new(),
        _config: config,
    };
    for vf in 0..2 {
        if let Err(e) = s.guests[vf].wait_for_line("GUEST-PINGING", BOOT) {
            s.fail(&e);
        }
    }
    s.t0 = Instant::now();
    let pids = [s.guests[0].pid(), s.guests[1].pid()];

    for (round, dead) in DEAD.into_iter().enumerate() {
        // Traffic flows both ways before the kill.
        let from = Instant::now();
        while (0..2).any(|vf| s.replies_after(vf, from) < 3) {
            if from.elapsed() > Duration::from_secs(10) {
                s.fail(&format!("no pings both ways before kill {}", round + 1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // A change made at run time, which the restart does not keep.
        s.emu.qmp("vf-set", json!({"vf": 2, "max-tx-rate": 300}));

        let r = s.kill_and_restart(dead);
        s.rounds.push(r);
        let r = s.rounds.last().unwrap();
        match r.back_after() {
            Some(d) if d < RESUME_LIMIT => {}
            d => s.fail(&format!(
                "restart {}: pings back after {} (limit {RESUME_LIMIT:?})",
                round + 1,
                secs(d)
            )),
        }
        let now = vf_settings(&s.emu);
        if now != settings {
            s.fail(&format!(
                "restart {}: the VF settings differ from the config file's:\n  before: \
                 {settings}\n  now:    {now}",
                round + 1
            ));
        }
        s.check_no_reboot(pids);
    }
    // The guests saw their link come back (QEMU sets it down at the disconnect, up at the
    // reconnect), and their uptime covers the whole run.
    for vf in 0..2 {
        if s.console(vf, "CARRIER ")
            .last()
            .map(|c| c.starts_with("1 "))
            != Some(true)
        {
            s.fail(&format!("guest {vf} does not have carrier at the end"));
        }
    }
    let text = s.render();
    let _ = std::io::stderr().write_all(format!("\n{text}").as_bytes());
    let dir = option_env!("CARGO_TARGET_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join("restart");
    let _ = std::fs::create_dir_all(&dir);
    if let Err(e) = std::fs::write(dir.join("timeline.txt"), &text) {
        eprintln!("cannot write {}: {e}", dir.join("timeline.txt").display());
    }
}
