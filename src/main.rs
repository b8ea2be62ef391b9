//! The `sriov-emu` command line: `run`, `qemu-args`, `ctl`, `replay`, and `completions` and
//! `man`, which generate shell completions and manual pages from this same definition.

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use sriov_emu::config::{ConfigError, ConfigFile};
use sriov_emu::control::client::{self, Client, ClientError};
use sriov_emu::control::render;
use sriov_emu::control::{ControlError, ControlServer, MetricsError, MetricsServer};
use sriov_emu::daemon::{CaptureRequest, Daemon, DaemonConfig, DaemonError, DEFAULT_SNAPLEN};
use sriov_emu::ownership::{group_id, OwnershipError, SocketMode, SocketOwner};
use sriov_emu::pf::{self, PfConfig, PfError};
use sriov_emu::service::{self, PidFile, ServiceError};
use sriov_emu::switch::DEFAULT_AGING_SECS;
use sriov_emu::ErrorChain;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Why a command failed. `main` prints it with its causes (`ErrorChain`).
#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Pf(#[from] PfError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Ctl(#[from] ClientError),
    #[error("socket directory {dir} is relative and the current directory is unknown")]
    CurrentDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--stats-interval must be at least 1 second")]
    StatsInterval,
    #[error("--fdb-aging must be at least 1 second")]
    FdbAging,
    #[error("--uplink-rate {0} Mbit/s is out of range 1..=100000")]
    UplinkRate(u32),
    #[error("{kind}{index} does not exist: there are {count} {kind} ports (indices 0..{count})")]
    NoSuchPort {
        kind: String,
        index: u32,
        count: u16,
    },
    #[error(transparent)]
    Replay(#[from] sriov_emu::capture::replay::ReplayError),
    #[error("cannot attach to {path} (is the port free? replay takes it as a guest would)")]
    ReplayAttach {
        path: PathBuf,
        #[source]
        source: sriov_emu::frontend::FrontendError,
    },
    #[error("frame {index} of {file} was not sent")]
    ReplaySend {
        index: usize,
        file: PathBuf,
        #[source]
        source: sriov_emu::frontend::FrontendError,
    },
    #[error("--rate must be at least 1 frame per second")]
    ReplayRate,
    #[error("cannot use the port sockets' group (--socket-group, socket_group)")]
    SocketGroup(#[source] OwnershipError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Service(#[from] ServiceError),
    #[error("cannot write to standard output")]
    Stdout(#[source] std::io::Error),
    #[error("cannot write the manual pages into {dir}")]
    Man {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A software SR-IOV 10G adapter for QEMU guests: VFs and PV ports are vhost-user virtio-net
/// backends joined by an embedded L2 switch.
#[derive(Parser, Debug)]
#[command(name = "sriov-emu", version, about, long_about = None)]
struct Cli {
    /// How log lines on stderr look: `text` for people, `json` for a log collector (one JSON
    /// object per line: timestamp, level, target, message and the event's fields).
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text,
          global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the emulator: listen on DIR/vfN.sock and DIR/pvN.sock for QEMU (vhost-user).
    Run(RunArgs),
    /// Print the QEMU options that attach a VF or PV port (chardev, netdev, virtio-net-pci
    /// device with its MAC, queues and host_mtu).
    QemuArgs(QemuArgsCmd),
    /// Manage a running emulator through its control socket (`ip link ... vf N ...` words).
    Ctl(CtlArgs),
    /// Send the frames of a pcap or pcapng file into a port as if its guest had transmitted
    /// them (through its vhost-user socket, which must be free: no QEMU on it).
    Replay(ReplayArgs),
    /// Print a shell completion script: `sriov-emu completions bash >
    /// /etc/bash_completion.d/sriov-emu` (zsh: a `_sriov-emu` file on $fpath; fish:
    /// ~/.config/fish/completions/sriov-emu.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page sriov-emu(1) in roff (`sriov-emu man | man -l -`), or write it
    /// and one page per subcommand (sriov-emu-run(1), sriov-emu-ctl-stats(1), ...) into DIR.
    Man {
        /// Write every page into this directory (e.g. /usr/local/share/man/man1).
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// The capture (pcap or pcapng, Ethernet).
    file: PathBuf,
    /// The port that sends them: vf0, pv0, ...
    #[arg(long, value_name = "PORT")]
    port: String,
    /// The emulator's socket directory [default: $XDG_RUNTIME_DIR/sriov-emu or /run/sriov-emu].
    #[arg(long, value_name = "DIR")]
    socket_dir: Option<PathBuf>,
    /// Frames per second [default: as fast as the port takes them].
    #[arg(long, value_name = "PPS")]
    rate: Option<u64>,
    /// Send the whole file N times.
    #[arg(long = "loop", value_name = "N", default_value_t = 1)]
    loops: u32,
}

#[derive(Args, Debug)]
struct CtlArgs {
    /// The control socket [default: <socket dir>/control.sock].
    #[arg(long, value_name = "PATH", global = true)]
    control: Option<PathBuf>,
    /// The emulator's socket directory (to find control.sock).
    #[arg(long, value_name = "DIR", global = true)]
    socket_dir: Option<PathBuf>,
    #[command(subcommand)]
    cmd: CtlCmd,
}

#[derive(Subcommand, Debug)]
enum CtlCmd {
    /// The PF, its uplink (if any) and one line per VF, like `ip link show`.
    Show {
        /// JSON (query-pf and query-vfs).
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Set sriov_numvfs (a non-zero count changes only through 0).
    Numvfs { n: u32 },
    /// VF settings: `vf N set mac M | vlan V [qos Q] [proto 802.1Q|802.1ad] | spoofchk on|off |
    /// trust on|off | promisc on|off | state auto|enable|disable | max_tx_rate MBPS |
    /// min_tx_rate MBPS | channels N`; `vf N rss [key HEX] [table Q...|default] [learning on|off]`;
    /// `vf N rss test PROTO SRC[:PORT] DST[:PORT]`; `vf N flow add|del|list ...`.
    Vf {
        vf: u32,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        words: Vec<String>,
    },
    /// Counters of every port (or one), like `ethtool -S`.
    Stats {
        /// Only this port (vf0, pv1, uplink, ...).
        port: Option<String>,
        #[arg(short = 'j', long)]
        json: bool,
        /// text, json or openmetrics.
        #[arg(long, value_parser = ["text", "json", "openmetrics"], default_value = "text")]
        format: String,
    },
    /// The forwarding database; `fdb flush` forgets learned entries.
    Fdb {
        #[arg(value_parser = ["show", "flush"], default_value = "show")]
        action: String,
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Print events (VF_ATTACHED, VF_LINK_CHANGE, UPLINK_CARRIER, FDB_MOVE, ...) as they happen,
    /// one JSON per line.
    Events,
    /// Capture ports into a pcapng file or stream one: `ctl capture vf1 -w - | tshark -i -`
    /// (or `| wireshark -k -i -`) shows the frames live, until the reader goes or Ctrl-C;
    /// `ctl capture vf0,pv0,drops -w /tmp/x.pcapng` captures until Ctrl-C (or --duration).
    /// Interfaces: one per port and `drops`; every frame carries the switch's decision.
    Capture {
        /// Ports to capture, e.g. `vf0,pv0,uplink,drops` [default: every port and drops].
        ports: Option<String>,
        /// Where to: a file, or `-` for standard output.
        #[arg(short = 'w', long = "write", value_name = "FILE|-")]
        write: String,
        /// Bytes kept of each frame, 1..=65535 [default: the largest frame].
        #[arg(short = 's', long, value_name = "BYTES")]
        snaplen: Option<u32>,
        /// Stop after SECS seconds.
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
    },
    /// Inject a fault into a port for your own tests, or clear it: `fault vf0 drop share 10%
    /// seed 7`, `fault vf0 delay share 0.5 delay-ms 20`, `fault vf0 duplicate share 5%`,
    /// `fault vf0 corrupt share 1%`, `fault vf0 stall queue tx0 duration-ms 2000`,
    /// `fault vf0 link-flap down-ms 500 up-ms 1000 count 3`, `fault vf0 busy duration-ms 3000`,
    /// `fault vf0 clear [KIND]`. Each fault is counted on the port (`fault_*` in stats).
    Fault {
        port: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        words: Vec<String>,
    },
    /// The faults set on every port.
    Faults,
    /// The data-plane workers: thread id, CPU, cycles (TSC) spent in rounds that moved frames
    /// (busy) and elsewhere (idle), and the clock's rate.
    Workers {
        /// Pretty JSON (query-workers).
        #[arg(short = 'j', long)]
        json: bool,
    },
    /// Run any control command: `ctl qmp query-vfs '{"...": ...}'`.
    Qmp {
        command: String,
        /// Arguments as a JSON object.
        arguments: Option<String>,
    },
}

#[derive(Args, Debug, Clone)]
struct PfArgs {
    /// A TOML configuration file (example: fixtures/config.toml); flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Directory for the port sockets [default: $XDG_RUNTIME_DIR/sriov-emu or /run/sriov-emu].
    #[arg(long, value_name = "DIR")]
    socket_dir: Option<PathBuf>,
    /// Number of VFs (sriov_numvfs), 0..=254 [default: 4].
    #[arg(long, value_name = "N")]
    vfs: Option<u32>,
    /// Number of PV (software path) ports [default: 1].
    #[arg(long, value_name = "N")]
    pv_ports: Option<u32>,
    /// DMA channels (virtio-net queue pairs) per VF, 1..=64 [default: 2].
    #[arg(long, value_name = "N")]
    channels_per_vf: Option<u32>,
    /// MTU of every port, 68..=9000 [default: 1500]. With an uplink, keep it at or below the
    /// guest MTU the uplink carries (see --uplink-mtu): longer frames to the wire are dropped.
    #[arg(long, value_name = "BYTES")]
    mtu: Option<u32>,
    /// Queue pairs of each PV port, 1..=64 [default: --channels-per-vf]. The PV NIC migrates
    /// with the guest: keep it the same on every host, whatever their VFs.
    #[arg(long, value_name = "N")]
    pv_channels: Option<u32>,
    /// MTU of the PV ports, 68..=9000 [default: --mtu]. Like --pv-channels: the same on every
    /// host a guest migrates between.
    #[arg(long, value_name = "BYTES")]
    pv_mtu: Option<u32>,
    /// Client mode for the VFs (OVS's dpdkvhostuserclient): VF N connects to DIR/vfN.sock,
    /// which QEMU serves (`-chardev socket,...,server=on`; libvirt `mode='server'`), retries
    /// every second until QEMU is there and reconnects after either side restarts, instead of
    /// listening on its own socket. The emulator then needs no access granted to QEMU.
    #[arg(long, value_name = "DIR")]
    vf_client_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    pf: PfArgs,
    /// FDB aging time in seconds [default: 300].
    #[arg(long, value_name = "SECS")]
    fdb_aging: Option<u64>,
    /// Log the non-zero counters of every port every SECS seconds.
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u64>,
    /// Busy-poll the guests' rings on the data-plane workers (no kicks, lowest latency, one
    /// core at 100% per worker) instead of sleeping until a guest kicks. A worker that finds
    /// nothing for a few microseconds yields its CPU to any other thread waiting for it.
    #[arg(long)]
    poll: bool,
    /// Data-plane worker threads. Queue pair q of port p is served by worker (p + q) mod N,
    /// so 2 workers split two single-queue VFs, or the 2 queue pairs of one VF.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Pin the workers to these CPUs, worker i on the i-th (cycling): `1`, `0,1`, `2-5`.
    #[arg(long, value_name = "LIST", value_parser = parse_cpu_list)]
    cpus: Option<CpuList>,
    /// The control socket (QMP) [default: <socket dir>/control.sock].
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// Open the control socket to a group (a name or a gid): mode 0660 and that group, and its
    /// members are served. Without it only the emulator's own user and root are (mode 0600).
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// Give every port socket (vfN.sock, pvN.sock; also those made again when numvfs or a VF's
    /// channels change) to this group (a name or a gid), so that a QEMU running as another user
    /// in it can connect: libvirt runs QEMU as `libvirt-qemu`, group `kvm`. The mode is then
    /// 0660 unless --socket-mode says otherwise. The socket directory must let the group in
    /// (search permission). Without it the sockets keep the emulator's group.
    #[arg(long, value_name = "GROUP")]
    socket_group: Option<String>,
    /// The port sockets' permission bits, in octal: `0660` lets the group connect (connecting
    /// needs write permission), `0666` anyone [default: 0660 with --socket-group, else as
    /// bind(2) makes them: 0777 less the umask]. The control socket keeps its own mode (0600,
    /// or 0660 with --control-group).
    #[arg(long, value_name = "MODE", value_parser = clap::value_parser!(SocketMode))]
    socket_mode: Option<SocketMode>,
    /// Serve the counters to Prometheus: `GET http://ADDR:PORT/metrics` answers with the
    /// OpenMetrics text of `ctl stats --format openmetrics`. Off by default; bind it to
    /// loopback (127.0.0.1:9464) unless the network is trusted: it has no authentication.
    /// Port 0 takes a free port (logged: "metrics endpoint listening").
    #[arg(long, value_name = "ADDR:PORT")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// Write the process id into PATH once every socket listens; removed at a clean exit
    /// (SIGTERM, SIGINT, `quit`). Readiness is also announced to a service manager: `READY=1`
    /// to $NOTIFY_SOCKET (systemd `Type=notify`; contrib/sriov-emu.service) when it is set.
    #[arg(long, value_name = "PATH")]
    pid_file: Option<PathBuf>,
    /// Learn flow steering from each VF's transmit queues: replies of a flow a guest sends on
    /// TX queue k arrive on RX queue k (accelerated RFS). Off: RSS and explicit rules only.
    #[arg(long)]
    flow_learning: bool,
    /// The PF's wire, a port named `uplink`. `tap:IFNAME[,queues=N]`: a TAP device of this
    /// host (created if missing) carries the traffic to the host's network stack; it has
    /// carrier while the device is up.
    /// `vxlan:local=IP:PORT,remote=IP:PORT[,remote=IP:PORT...],vni=N[,carrier=on|peer][,peer-timeout-ms=N][,offload=on|off]`:
    /// VXLAN (RFC 7348) to other sriov-emu instances or Linux vxlan devices (IPv6 in
    /// brackets); floods go to every remote; carrier always (`on`, the default), or while a
    /// remote was heard from within peer-timeout-ms (`peer`, default 3000; sriov-emu peers
    /// send keepalives every second, or three per timeout if it is shorter). `offload=on` (the default) sends runs of frames to one
    /// remote as UDP GSO messages and receives UDP GRO trains; `off` makes every datagram its
    /// own send and receive (an underlay capture then shows no 64 KiB trains). VFs with link
    /// state `auto` follow the carrier; without an uplink they are up.
    #[arg(long, value_name = "SPEC")]
    uplink: Option<sriov_emu::uplink::UplinkSpec>,
    /// The uplink's MTU. TAP: the device's MTU (set on it), which is the guest MTU that fits.
    /// VXLAN: the IP MTU of the path to the remotes, of which 36 bytes (56 over IPv6) go to
    /// encapsulation besides the guest's 14-byte Ethernet header, so 1500 carries guest MTU
    /// 1450 (1430 over IPv6). Frames that do not fit are dropped and counted (`drop_mtu`),
    /// never fragmented [default: 1500].
    #[arg(long, value_name = "BYTES")]
    uplink_mtu: Option<u32>,
    /// The uplink's line rate in Mbit/s, 1..=100000: frames onto the wire are shaped to it
    /// (held in the guests' rings, never dropped), and a VF's min_tx_rate is a guaranteed share
    /// of it [default: 10000: a 10G adapter].
    #[arg(long, value_name = "MBPS")]
    uplink_rate: Option<u32>,
    /// Capture from the start into DIR/sriov-emu.pcapng: pcapng with an interface per port
    /// (and `drops`), each frame's direction and the switch's decision as its comment
    /// (Wireshark and tshark read it as it is). Written off the data path; frames a slow disk
    /// cannot take are counted, not waited for. Flushed at exit (SIGTERM included).
    #[arg(long, value_name = "DIR")]
    pcap: Option<PathBuf>,
    /// With --pcap: only these ports, e.g. `vf0,pv0,uplink,drops` [default: every port and
    /// drops].
    #[arg(long, value_name = "LIST", value_delimiter = ',', requires = "pcap")]
    pcap_ports: Option<Vec<String>>,
    /// With --pcap: keep the capture under this many MiB, as a ring of 4 files
    /// (DIR/sriov-emu-00001.pcapng, ...; the oldest goes) [default: no limit].
    #[arg(long, value_name = "MB", requires = "pcap",
          value_parser = clap::value_parser!(u64).range(1..))]
    pcap_max_mb: Option<u64>,
}

#[derive(Args, Debug)]
struct QemuArgsCmd {
    /// Port kind: `vf` or `pv`.
    #[arg(value_parser = ["vf", "pv"])]
    kind: String,
    /// Port index.
    index: u32,
    #[command(flatten)]
    pf: PfArgs,
    /// The emulator's uplink, as given to `run` (or in the config file): `host_mtu` is then
    /// lowered, if needed, to the largest guest MTU whose frames fit the wire (1450 for VXLAN
    /// over IPv4 with the default --uplink-mtu 1500), with a note on stderr.
    #[arg(long, value_name = "SPEC")]
    uplink: Option<sriov_emu::uplink::UplinkSpec>,
    /// The uplink's MTU, as given to `run` [default: 1500].
    #[arg(long, value_name = "BYTES")]
    uplink_mtu: Option<u32>,
    /// Instead of command-line options, print the QMP commands that hot-plug the port into a
    /// running QEMU (`plug`: chardev-add, netdev_add, device_add on --bus), that unplug it
    /// (`unplug`: device_del, then, once QEMU sent DEVICE_DELETED, netdev_del, which removes
    /// the chardev too), or both with comments (no value). One JSON command per line.
    #[arg(long, value_name = "STEP", num_args = 0..=1, default_missing_value = "both",
          value_parser = ["plug", "unplug", "both"])]
    hotplug: Option<String>,
    /// Instead of command-line options, print the `<interface type='vhostuser'>` element for
    /// a libvirt domain's XML or `virsh attach-device` (MAC, source path and mode, reconnect,
    /// virtio model, queues; an MTU other than 1500 as a comment: libvirt cannot set it on a
    /// vhostuser interface outside OVS). The domain needs shared memory (docs/libvirt.md).
    #[arg(long, conflicts_with = "hotplug")]
    libvirt: bool,
    /// With --hotplug: the free pcie-root-port the NIC goes on (q35 hot-plugs into root
    /// ports: start QEMU with e.g. `-device pcie-root-port,id=rp0,chassis=1,slot=1`).
    #[arg(long, value_name = "ID", default_value = "rp0", requires = "hotplug")]
    bus: String,
}

fn default_socket_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("sriov-emu"),
        _ => PathBuf::from("/run/sriov-emu"),
    }
}

/// The PF configuration from flags, then the config file, then defaults.
fn pf_config(a: &PfArgs) -> Result<(PfConfig, ConfigFile), MainError> {
    let file = match &a.config {
        Some(p) => ConfigFile::load(p)?,
        None => ConfigFile::default(),
    };
    let dir = a
        .socket_dir
        .clone()
        .or(file.socket_dir.clone())
        .unwrap_or_else(default_socket_dir);
    let dir = absolute(dir)?;
    let client_dir = match a.vf_client_dir.clone().or(file.vf_client_dir.clone()) {
        Some(d) => Some(absolute(d)?),
        None => None,
    };
    let mut pf = PfConfig::new(
        dir,
        a.vfs.or(file.numvfs).unwrap_or(pf::DEFAULT_VFS.into()),
        a.pv_ports
            .or(file.pv_ports)
            .unwrap_or(pf::DEFAULT_PV_PORTS.into()),
        a.channels_per_vf
            .or(file.channels_per_vf)
            .unwrap_or(pf::DEFAULT_CHANNELS.into()),
        a.mtu.or(file.mtu).unwrap_or(pf::DEFAULT_MTU.into()),
    )?
    .with_pv_ports(a.pv_channels.or(file.pv_channels), a.pv_mtu.or(file.pv_mtu))?;
    pf.vf_client_dir = client_dir;
    file.check_vfs(pf.numvfs)?;
    pf.vf_client_paths = file.vf_client_paths();
    file.check_faults()?;
    Ok((pf, file))
}

/// `dir` made absolute against the current directory.
fn absolute(dir: PathBuf) -> Result<PathBuf, MainError> {
    if dir.is_absolute() {
        return Ok(dir);
    }
    match std::env::current_dir() {
        Ok(cwd) => Ok(cwd.join(dir)),
        Err(source) => Err(MainError::CurrentDir { dir, source }),
    }
}

/// Blocks SIGINT/SIGTERM in this thread (and every thread spawned after), so `wait_signal`
/// can take them synchronously.
fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; the calls only read and write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t) -> i32 {
    let mut sig = 0;
    // SAFETY: `set` is initialised and `sig` is a valid out-pointer.
    unsafe { libc::sigwait(set, &mut sig) };
    sig
}

/// A list of CPUs (`--cpus`); a newtype so clap takes it as one value.
#[derive(Debug, Clone)]
struct CpuList(Vec<usize>);

/// Why a `--cpus` list is refused.
#[derive(Debug, thiserror::Error)]
enum CpuListError {
    #[error("`{0}` is not a CPU number (a list looks like 1 or 0,2-3)")]
    NotANumber(String),
    #[error("`{0}`: the range is backwards")]
    Backwards(String),
    #[error("CPU {0} is out of range 0..=1023")]
    OutOfRange(usize),
}

/// Parses a CPU list as taskset and /sys do: `1`, `0,2`, `4-7`, `0,2-3`.
fn parse_cpu_list(s: &str) -> Result<CpuList, CpuListError> {
    let cpu = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| CpuListError::NotANumber(t.to_string()))
    };
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (cpu(a)?, cpu(b)?),
            None => (cpu(part)?, cpu(part)?),
        };
        if lo > hi {
            return Err(CpuListError::Backwards(part.to_string()));
        }
        if hi >= 1024 {
            return Err(CpuListError::OutOfRange(hi));
        }
        cpus.extend(lo..=hi);
    }
    Ok(CpuList(cpus))
}

/// The modelled adapter's line rate, Mbit/s.
const DEFAULT_UPLINK_RATE: u32 = 10_000;

fn run(args: RunArgs) -> Result<(), MainError> {
    sriov_emu::malloc_arenas::limit();
    let (pf, file) = pf_config(&args.pf)?;
    let fdb_aging = args
        .fdb_aging
        .or(file.fdb_aging)
        .unwrap_or(DEFAULT_AGING_SECS);
    let stats_interval = match args.stats_interval.or(file.stats_interval) {
        Some(0) => return Err(MainError::StatsInterval),
        s => s.map(Duration::from_secs),
    };
    if fdb_aging == 0 {
        return Err(MainError::FdbAging);
    }
    let control_path = args
        .control
        .clone()
        .or(file.control.clone())
        .unwrap_or_else(|| pf.socket_dir.join("control.sock"));
    let control_group = match args.control_group.as_ref().or(file.control_group.as_ref()) {
        Some(g) => Some(group_id(g).map_err(ControlError::from)?),
        None => None,
    };
    let socket_group = match args.socket_group.as_ref().or(file.socket_group.as_ref()) {
        Some(g) => Some(group_id(g).map_err(MainError::SocketGroup)?),
        None => None,
    };
    let socket_owner = SocketOwner::new(socket_group, args.socket_mode.or(file.socket_mode));
    if let (Some(gid), Some(mode)) = (socket_owner.group, socket_owner.mode) {
        if mode.bits() & 0o020 == 0 {
            tracing::warn!(
                "--socket-mode {mode} gives group {gid} no write permission: its members \
                 cannot connect to the port sockets"
            );
        }
    }
    let metrics_listen = args.metrics_listen.or(file.metrics_listen);
    let signals = block_signals();
    let daemon = Daemon::start(DaemonConfig {
        pf,
        fdb_aging_secs: fdb_aging,
        stats_interval,
        flow_learning: args.flow_learning || file.flow_learning.unwrap_or(false),
        poll: args.poll,
        workers: usize::from(args.workers),
        cpus: args.cpus.clone().map(|c| c.0).unwrap_or_default(),
        uplink: args.uplink.clone().or(file.uplink.clone()),
        uplink_mtu: args
            .uplink_mtu
            .or(file.uplink_mtu)
            .unwrap_or(sriov_emu::uplink::spec::DEFAULT_UNDERLAY_MTU),
        uplink_rate: match args
            .uplink_rate
            .or(file.uplink_rate)
            .unwrap_or(DEFAULT_UPLINK_RATE)
        {
            r @ 1..=100_000 => r,
            r => return Err(MainError::UplinkRate(r)),
        },
        pcap: args.pcap.as_ref().map(|dir| CaptureRequest {
            path: dir.join("sriov-emu.pcapng"),
            ports: args.pcap_ports.clone(),
            snaplen: DEFAULT_SNAPLEN,
            max_bytes: args.pcap_max_mb.map(|mb| mb << 20),
        }),
        socket_owner,
    })?;
    let daemon = Arc::new(daemon);
    if let Err(e) = file
        .apply_vfs(&daemon)
        .and_then(|()| file.apply_faults(&daemon))
    {
        daemon.shutdown();
        return Err(e.into());
    }
    // `quit` ends the process the same way a signal does.
    let quit = Arc::new(|| {
        // SAFETY: kill(2) on our own PID with a signal this process waits for.
        unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
    });
    let control = match ControlServer::start(&control_path, control_group, daemon.clone(), quit) {
        Ok(c) => c,
        Err(e) => {
            daemon.shutdown();
            return Err(e.into());
        }
    };
    let ready = metrics_listen
        .map(|addr| MetricsServer::start(addr, daemon.clone()))
        .transpose()
        .map_err(MainError::from)
        .and_then(|metrics| {
            let pid = args.pid_file.as_deref().map(PidFile::create).transpose()?;
            Ok((metrics, pid))
        });
    let (metrics, pid_file) = match ready {
        Ok(r) => r,
        Err(e) => {
            drop(control);
            daemon.shutdown();
            return Err(e);
        }
    };
    // Every socket listens: tell whoever waits.
    let pf = daemon.pf_snapshot();
    let status = format!(
        "STATUS=serving {} VFs and {} PV ports in {}",
        pf.numvfs(),
        pf.config().pv_ports,
        daemon.socket_dir().display()
    );
    match service::notify(&format!("READY=1\n{status}")) {
        Ok(true) => tracing::info!("readiness sent to the service manager (NOTIFY_SOCKET)"),
        Ok(false) => {}
        Err(e) => tracing::warn!("{}", ErrorChain(&e)),
    }
    let sig = wait_signal(&signals);
    tracing::info!(signal = sig, "shutting down");
    if let Err(e) = service::notify("STOPPING=1") {
        tracing::warn!("{}", ErrorChain(&e));
    }
    drop(metrics);
    drop(control);
    daemon.shutdown();
    drop(pid_file);
    Ok(())
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn ctl(a: CtlArgs) -> Result<(), ClientError> {
    let path = a.control.unwrap_or_else(|| {
        a.socket_dir
            .unwrap_or_else(default_socket_dir)
            .join("control.sock")
    });
    let mut c = Client::connect(&path)?;
    let none = serde_json::json!({});
    match a.cmd {
        CtlCmd::Show { json } => {
            let pf = c.execute("query-pf", none.clone())?;
            let vfs = c.execute("query-vfs", none)?;
            if json {
                print_json(&serde_json::json!({"pf": pf, "vfs": vfs}));
            } else {
                print!("{}", render::render_show(&pf, &vfs));
            }
        }
        CtlCmd::Numvfs { n } => {
            c.execute("set-numvfs", serde_json::json!({"numvfs": n}))?;
        }
        CtlCmd::Vf { vf, words } => {
            let (cmd, args) = client::vf_command(vf, &words)?;
            let r = c.execute(cmd, args)?;
            match cmd {
                "vf-rss-test" => println!("{}", r["text"].as_str().unwrap_or_default()),
                "vf-set" | "vf-flow-add" | "vf-flow-del" => {}
                _ => print_json(&r),
            }
        }
        CtlCmd::Stats { port, json, format } => {
            let args = port.map(|p| serde_json::json!({"port": p})).unwrap_or(none);
            let s = c.execute("query-stats", args)?;
            match (json, format.as_str()) {
                (true, _) | (_, "json") => print_json(&s),
                (_, "openmetrics") => print!("{}", render::render_openmetrics(&s)),
                _ => print!("{}", render::render_stats(&s)),
            }
        }
        CtlCmd::Fdb { action, json } => {
            if action == "flush" {
                c.execute("fdb-flush", none)?;
            } else {
                let f = c.execute("query-fdb", none)?;
                if json {
                    print_json(&f);
                } else {
                    print!("{}", render::render_fdb(&f));
                }
            }
        }
        CtlCmd::Events => loop {
            let ev = c.next_event()?;
            println!("{ev}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
        },
        CtlCmd::Capture {
            ports,
            write,
            snaplen,
            duration,
        } => ctl_capture(&mut c, ports, &write, snaplen, duration)?,
        CtlCmd::Fault { port, words } => {
            let (cmd, args) = client::fault_command(&port, &words)?;
            c.execute(cmd, args)?;
        }
        CtlCmd::Faults => print_json(&c.execute("query-faults", none)?),
        CtlCmd::Workers { json } => {
            let w = c.execute("query-workers", none)?;
            if json {
                print_json(&w);
            } else {
                print!("{}", render::render_workers(&w));
            }
        }
        CtlCmd::Qmp { command, arguments } => {
            let args = match arguments {
                Some(s) => serde_json::from_str(&s)
                    .map_err(|e| ClientError::Usage(format!("arguments are not JSON: {e}")))?,
                None => none,
            };
            print_json(&c.execute(&command, args)?);
        }
    }
    Ok(())
}

/// `ctl capture`: starts a capture into `write` (a file, or `-`: a FIFO the emulator writes
/// and this copies to standard output), waits for Ctrl-C, `duration`, or (streaming) the end of
/// the stream or of its reader, then stops it.
fn ctl_capture(
    c: &mut Client,
    ports: Option<String>,
    write: &str,
    snaplen: Option<u32>,
    duration: Option<u64>,
) -> Result<(), ClientError> {
    let signals = block_signals();
    let stream = write == "-";
    let (file, fifo) = if stream {
        let dir = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|d| d.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let path = dir.join(format!("sriov-emu-capture-{}.fifo", std::process::id()));
        let fifo = capture_fifo(&path).map_err(|e| {
            ClientError::Usage(format!("cannot make the FIFO {}: {e}", path.display()))
        })?;
        (path, Some(fifo))
    } else {
        let p = PathBuf::from(write);
        let p = if p.is_absolute() {
            p
        } else {
            std::env::current_dir().map_err(ClientError::Io)?.join(p)
        };
        (p, None)
    };
    let mut args = serde_json::json!({ "file": file });
    if let Some(p) = &ports {
        args["ports"] = serde_json::json!(p.split(',').map(str::trim).collect::<Vec<_>>());
    }
    if let Some(n) = snaplen {
        args["snaplen"] = serde_json::json!(n);
    }
    let started = c.execute("capture-start", args);
    if fifo.is_some() {
        // The emulator has it open (or failed): the name is no longer needed.
        let _ = std::fs::remove_file(&file);
    }
    let id = started?["id"].as_u64().unwrap_or(0);
    let copier = fifo.map(|f| {
        std::thread::spawn(move || {
            let r = copy_stream(f);
            // Wake the main thread, waiting for a signal.
            // SAFETY: kill(2) on our own PID with a signal the main thread waits for.
            unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            r
        })
    });
    match duration {
        Some(secs) => wait_signal_for(&signals, Duration::from_secs(secs)),
        None => {
            wait_signal(&signals);
        }
    }
    let stopped = c.execute("capture-stop", serde_json::json!({ "id": id }));
    if let Some(t) = copier {
        let _ = t.join();
    }
    let st = stopped?;
    eprintln!(
        "captured {} frames ({} dropped: the writer was behind) into {}",
        st["captured"],
        st["capture_dropped"],
        if stream {
            "standard output".to_string()
        } else {
            st["files"].to_string()
        }
    );
    if let Some(e) = st.get("error") {
        eprintln!("the capture stopped writing: {e}");
    }
    Ok(())
}

/// Makes a FIFO at `path` and opens it for reading without waiting for a writer.
fn capture_fifo(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Copies the capture from the FIFO to standard output until the emulator closes it or the
/// reader of standard output goes.
fn copy_stream(f: std::fs::File) -> std::io::Result<()> {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    // Blocking from now on: the writer is there.
    // SAFETY: fcntl(2) on a descriptor we own.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    let (mut f, mut out) = (f, std::io::stdout().lock());
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        out.write_all(&buf[..n])?;
        out.flush()?;
    }
}

/// Waits for SIGINT/SIGTERM, at most `timeout`.
fn wait_signal_for(set: &libc::sigset_t, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: `set` and `ts` are initialised and live across the call.
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
}

/// `replay`: the file's frames into the port's TX queue, paced by `--rate`.
fn replay(a: ReplayArgs) -> Result<(), MainError> {
    if a.rate == Some(0) {
        return Err(MainError::ReplayRate);
    }
    let got = sriov_emu::capture::replay::read_frames(&a.file)?;
    let path = a
        .socket_dir
        .unwrap_or_else(default_socket_dir)
        .join(format!("{}.sock", a.port));
    let cfg = sriov_emu::frontend::FrontendConfig::default();
    let mut fe = sriov_emu::frontend::VirtioNetFrontend::connect(&path, cfg).map_err(|source| {
        MainError::ReplayAttach {
            path: path.clone(),
            source,
        }
    })?;
    let start = std::time::Instant::now();
    let (mut sent, mut bytes) = (0u64, 0u64);
    for _ in 0..a.loops {
        for (i, f) in got.frames.iter().enumerate() {
            if let Some(pps) = a.rate {
                let due = start + Duration::from_secs_f64(sent as f64 / pps as f64);
                if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            fe.send_wait(0, f, Duration::from_secs(5))
                .map_err(|source| MainError::ReplaySend {
                    index: i,
                    file: a.file.clone(),
                    source,
                })?;
            sent += 1;
            bytes += f.len() as u64;
        }
    }
    // The last frames are taken from the ring before the port goes.
    let t = std::time::Instant::now();
    while fe.tx_in_flight(0) > 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    eprintln!(
        "replayed {sent} frames ({bytes} bytes) into {} in {:.2?}{}",
        a.port,
        start.elapsed(),
        if got.truncated > 0 {
            format!(
                "; {} were cut by the capture's snap length and sent as captured",
                got.truncated
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

fn qemu_args(a: QemuArgsCmd) -> Result<(), MainError> {
    let (pf, file) = pf_config(&a.pf)?;
    let vf_conf = |i: u16| file.vf.iter().find(|v| v.index == u32::from(i));
    let (count, spec) = match a.kind.as_str() {
        "vf" => (
            pf.numvfs,
            u16::try_from(a.index).ok().map(|i| {
                // The config file may give this VF its own channels and MAC.
                let c = vf_conf(i);
                let channels = c
                    .and_then(|c| c.knobs.channels)
                    .and_then(|n| u16::try_from(n).ok());
                let client = pf.vf_client_path(i);
                let mut spec =
                    pf.vf_spec(i, channels.unwrap_or(pf.channels_per_vf), client.as_deref());
                if let Some(m) = c
                    .and_then(|c| c.knobs.settings.mac.as_deref())
                    .and_then(|m| m.parse().ok())
                {
                    spec.mac = Some(m);
                }
                spec
            }),
        ),
        _ => (
            pf.pv_ports,
            u16::try_from(a.index).ok().map(|i| pf.pv_spec(i)),
        ),
    };
    let p = spec
        .filter(|_| a.index < u32::from(count))
        .ok_or_else(|| MainError::NoSuchPort {
            kind: a.kind.clone(),
            index: a.index,
            count,
        })?;
    let qp = p.queue_pairs;
    let mut mtu = u32::from(p.mtu);
    if let Some(up) = a.uplink.as_ref().or(file.uplink.as_ref()) {
        let underlay = a
            .uplink_mtu
            .or(file.uplink_mtu)
            .unwrap_or(sriov_emu::uplink::spec::DEFAULT_UNDERLAY_MTU);
        let fits = up.guest_mtu(underlay);
        if fits < mtu {
            eprintln!(
                "note: the uplink ({up}, MTU {underlay}) carries frames of a guest MTU up to \
                 {fits}: host_mtu={fits} (the port's MTU is {mtu})"
            );
            mtu = fits;
        }
    }
    // MSI-X vectors: one per queue, plus config and control queue (as libvirt computes it).
    let vectors = 2 * u32::from(qp) + 2;
    if let Some(step) = &a.hotplug {
        let nic = HotplugNic {
            name: &p.name,
            socket: &p.socket,
            server: p.client,
            queue_pairs: qp,
            mac: p.mac.map(|m| m.to_string()),
            vectors,
            mtu,
            bus: &a.bus,
        };
        print!("{}", nic.qmp(step));
        return Ok(());
    }
    if a.libvirt {
        print!("{}", sriov_emu::libvirt::interface_xml(&p, mtu));
        return Ok(());
    }
    let mac = p.mac.map(|m| format!(",mac={m}")).unwrap_or_default();
    let mq = if qp > 1 { ",mq=on" } else { "" };
    // In client mode QEMU serves the socket (and waits for the emulator at start);
    // otherwise it connects, and reconnects every second after the emulator restarts.
    let side = if p.client {
        "server=on"
    } else {
        "reconnect-ms=1000"
    };
    println!(
        "-chardev socket,id={n},path={s},{side} -netdev vhost-user,id={n},chardev={n},queues={qp} \
         -device virtio-net-pci,netdev={n},id={n}dev{mac}{mq},vectors={vectors},host_mtu={mtu}",
        n = p.name,
        s = p.socket.display(),
    );
    Ok(())
}

/// A port as QMP hot-plugs it: the same chardev, netdev and device as the command-line options.
struct HotplugNic<'a> {
    name: &'a str,
    socket: &'a std::path::Path,
    /// QEMU serves the socket (the port is in client mode).
    server: bool,
    queue_pairs: u16,
    mac: Option<String>,
    vectors: u32,
    mtu: u32,
    bus: &'a str,
}

impl HotplugNic<'_> {
    /// The QMP commands of `step` (`plug`, `unplug` or `both` with comments), a line each.
    fn qmp(&self, step: &str) -> String {
        use serde_json::json;
        let n = self.name;
        let dev = format!("{n}dev");
        let mut device = json!({
            "driver": "virtio-net-pci", "id": dev, "netdev": n, "bus": self.bus,
            "vectors": self.vectors, "host_mtu": self.mtu,
        });
        if let Some(mac) = &self.mac {
            device["mac"] = json!(mac);
        }
        if self.queue_pairs > 1 {
            device["mq"] = json!(true);
        }
        let plug = [
            json!({"execute": "chardev-add", "arguments": {"id": n, "backend": {
                "type": "socket", "data": {
                    "addr": {"type": "unix", "data": {"path": self.socket.display().to_string()}},
                    "server": self.server, "reconnect-ms": if self.server { 0 } else { 1000 }}}}}),
            json!({"execute": "netdev_add", "arguments": {
                "type": "vhost-user", "id": n, "chardev": n, "queues": self.queue_pairs}}),
            json!({"execute": "device_add", "arguments": device}),
        ];
        let unplug = [
            json!({"execute": "device_del", "arguments": {"id": dev}}),
            json!({"execute": "netdev_del", "arguments": {"id": n}}),
        ];
        let lines = |cmds: &[serde_json::Value]| -> String {
            cmds.iter().map(|c| format!("{c}\n")).collect()
        };
        match step {
            "plug" => lines(&plug),
            "unplug" => lines(&unplug),
            _ => format!(
                "# Plug {n} into a running QEMU (QMP; {bus} must be a free pcie-root-port):\n{}\
                 # Unplug: device_del, wait for the DEVICE_DELETED event of {dev} (the guest \
                 released it), then netdev_del (it removes the chardev too):\n{}{}",
                lines(&plug),
                lines(&unplug[..1]),
                lines(&unplug[1..]),
                bus = self.bus,
            ),
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`), as text or JSON lines.
fn init_logging(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_ansi(false)
            .init(),
    }
}

/// `completions SHELL`: the script for `shell`, from the command definition.
fn completions(shell: clap_complete::Shell) -> Result<(), MainError> {
    let mut cmd = Cli::command();
    let name = cmd.get_name().to_string();
    // Into memory first: the generator panics if its writer fails (`| head`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    to_stdout(&script)
}

/// `man [--out-dir DIR]`: sriov-emu(1) on stdout, or every page into `dir`.
fn man(out_dir: Option<PathBuf>) -> Result<(), MainError> {
    let cmd = Cli::command();
    match out_dir {
        Some(dir) => {
            let err = |source| MainError::Man {
                dir: dir.clone(),
                source,
            };
            std::fs::create_dir_all(&dir).map_err(err)?;
            clap_mangen::generate_to(cmd, &dir).map_err(err)?;
            eprintln!("manual pages written into {}", dir.display());
            Ok(())
        }
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut page)
                .map_err(MainError::Stdout)?;
            to_stdout(&page)
        }
    }
}

/// Writes `bytes` to standard output; a reader that went away early (`| head`) is no error.
fn to_stdout(bytes: &[u8]) -> Result<(), MainError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(MainError::Stdout(e)),
        _ => Ok(()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let r = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::QemuArgs(a) => qemu_args(a),
        Cmd::Ctl(a) => ctl(a).map_err(MainError::from),
        Cmd::Replay(a) => replay(a),
        Cmd::Completions { shell } => completions(shell),
        Cmd::Man { out_dir } => man(out_dir),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if cli.log_format == LogFormat::Json => {
            tracing::error!(error = %ErrorChain(&e), "sriov-emu: error");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sriov-emu: error: {}", ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}
