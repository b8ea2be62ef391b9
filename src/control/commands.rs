//! The control commands. Every one validates all of its input before changing anything:
//! `parse_command` reads and type-checks a command's arguments without the daemon (and is
//! fuzzed on its own, `fuzzing::control_request`), then `execute` runs the parsed `Command`.

use super::qmp::{Args, QmpError};
use crate::daemon::{CaptureRequest, Daemon};
use crate::faults::{Fault, FaultKind, FaultSpec};
use crate::pf::PortKind;
use crate::rss::{EnabledQueues, FlowTuple, RssKey, IPPROTO_TCP, IPPROTO_UDP};
use crate::uplink::Uplink;
use crate::vf::{knobs, KnobValues, Port, SettingsUpdate, KNOBS};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

type CmdResult = Result<Value, QmpError>;

/// Every command with the arguments it takes; names are checked before a command runs, so a
/// misspelt argument changes nothing.
pub const COMMAND_ARGS: &[(&str, &[&str])] = &[
    ("qmp_capabilities", &["enable"]),
    ("query-version", &[]),
    ("query-commands", &[]),
    ("query-pf", &[]),
    ("query-vfs", &[]),
    ("set-numvfs", &["numvfs"]),
    // And every VF knob (KNOB_COMMANDS).
    ("vf-set", &["vf"]),
    ("vf-rss-set", &["vf", "key", "table", "flow-learning"]),
    ("vf-rss-query", &["vf"]),
    (
        "vf-rss-test",
        &["vf", "proto", "src", "dst", "src-port", "dst-port"],
    ),
    (
        "vf-flow-add",
        &["vf", "proto", "src", "dst", "src-port", "dst-port", "queue"],
    ),
    (
        "vf-flow-del",
        &["vf", "proto", "src", "dst", "src-port", "dst-port"],
    ),
    ("vf-flow-list", &["vf"]),
    ("query-stats", &["port"]),
    ("query-fdb", &[]),
    ("fdb-flush", &[]),
    ("capture-start", &["file", "ports", "snaplen", "max-mb"]),
    ("capture-stop", &["id"]),
    ("query-captures", &[]),
    (
        "fault-set",
        &[
            "port",
            "fault",
            "share",
            "seed",
            "delay-ms",
            "queue",
            "duration-ms",
            "down-ms",
            "up-ms",
            "count",
        ],
    ),
    ("fault-clear", &["port", "fault"]),
    ("query-faults", &[]),
    ("query-workers", &[]),
    ("quit", &[]),
];

/// Commands that take every VF knob (`vf::KNOBS`, by QMP name) besides their arguments.
const KNOB_COMMANDS: &[&str] = &["vf-set"];

/// Whether command `name`, whose own arguments are `args`, takes argument `arg`.
fn takes(name: &str, args: &[&str], arg: &str) -> bool {
    args.contains(&arg) || (KNOB_COMMANDS.contains(&name) && knobs::by_qmp(arg).is_some())
}

/// A command with its arguments read and type-checked: all that `execute` takes from the
/// client before it touches the daemon. (`qmp_capabilities` is the server's own.)
#[derive(Debug)]
pub enum Command {
    QueryVersion,
    QueryCommands,
    QueryPf,
    QueryVfs,
    SetNumvfs(u32),
    VfSet {
        vf: u32,
        knobs: KnobValues,
    },
    VfRssSet {
        vf: u32,
        key: Option<RssKey>,
        /// `Some(None)`: back to the default spread.
        table: Option<Option<Vec<u16>>>,
        learning: Option<bool>,
    },
    VfRssQuery(u32),
    VfRssTest {
        vf: u32,
        flow: FlowTuple,
    },
    VfFlowAdd {
        vf: u32,
        flow: FlowTuple,
        queue: u16,
    },
    VfFlowDel {
        vf: u32,
        flow: FlowTuple,
    },
    VfFlowList(u32),
    /// The port named, or all.
    QueryStats(Option<String>),
    QueryFdb,
    FdbFlush,
    CaptureStart(CaptureRequest),
    CaptureStop(u32),
    QueryCaptures,
    /// A fault, checked (`FaultSpec::check`) but not yet against the port.
    FaultSet {
        port: String,
        kind: FaultKind,
        fault: Fault,
    },
    FaultClear {
        port: String,
        kind: Option<FaultKind>,
    },
    QueryFaults,
    QueryWorkers,
    Quit,
}

impl Command {
    /// The VF a management command changes (refused while an injected `busy` lasts on it).
    fn managed_vf(&self) -> Option<u32> {
        match self {
            Command::VfSet { vf, .. }
            | Command::VfRssSet { vf, .. }
            | Command::VfFlowAdd { vf, .. }
            | Command::VfFlowDel { vf, .. } => Some(*vf),
            _ => None,
        }
    }
}

/// Reads command `name`'s `arguments`: unknown commands and arguments, missing ones and values
/// of the wrong type or range are refused here, before anything runs.
pub fn parse_command(name: &str, arguments: Map<String, Value>) -> Result<Command, QmpError> {
    let allowed = COMMAND_ARGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| QmpError::not_found(name))?;
    if let Some(k) = arguments.keys().find(|k| !takes(name, allowed, k)) {
        return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
    }
    if name == "fault-set" {
        // Its arguments are a `FaultSpec`, as a `[[fault]]` table's are.
        let spec: FaultSpec = serde_json::from_value(Value::Object(arguments))
            .map_err(|e| QmpError::generic(format!("fault-set: {e}")))?;
        let (kind, fault) = spec.check().map_err(|e| QmpError::generic(e.to_string()))?;
        return Ok(Command::FaultSet {
            port: spec.port,
            kind,
            fault,
        });
    }
    let mut a = Args::new(arguments);
    let cmd = match name {
        "query-version" => Command::QueryVersion,
        "query-commands" => Command::QueryCommands,
        "query-pf" => Command::QueryPf,
        "query-vfs" => Command::QueryVfs,
        "set-numvfs" => Command::SetNumvfs(a.u32("numvfs")?),
        "vf-set" => Command::VfSet {
            vf: a.u32("vf")?,
            knobs: knob_args(&mut a)?,
        },
        "vf-rss-set" => rss_set_args(&mut a)?,
        "vf-rss-query" => Command::VfRssQuery(a.u32("vf")?),
        "vf-rss-test" => Command::VfRssTest {
            vf: a.u32("vf")?,
            flow: flow_arg(&mut a)?,
        },
        "vf-flow-add" => {
            let (vf, flow) = (a.u32("vf")?, flow_arg(&mut a)?);
            let queue = a.u32("queue")?;
            let queue = u16::try_from(queue)
                .map_err(|_| QmpError::generic(format!("queue {queue} is out of range")))?;
            Command::VfFlowAdd { vf, flow, queue }
        }
        "vf-flow-del" => Command::VfFlowDel {
            vf: a.u32("vf")?,
            flow: flow_arg(&mut a)?,
        },
        "vf-flow-list" => Command::VfFlowList(a.u32("vf")?),
        "query-stats" => Command::QueryStats(a.opt_str("port")?),
        "query-fdb" => Command::QueryFdb,
        "fdb-flush" => Command::FdbFlush,
        "capture-start" => Command::CaptureStart(capture_args(&mut a)?),
        "capture-stop" => Command::CaptureStop(a.u32("id")?),
        "query-captures" => Command::QueryCaptures,
        "fault-clear" => Command::FaultClear {
            port: a.str("port")?,
            kind: a
                .opt_str("fault")?
                .map(|k| FaultKind::parse(&k))
                .transpose()
                .map_err(|e| QmpError::generic(e.to_string()))?,
        },
        "query-faults" => Command::QueryFaults,
        "query-workers" => Command::QueryWorkers,
        "quit" => Command::Quit,
        _ => return Err(QmpError::not_found(name)),
    };
    a.finish()?;
    Ok(cmd)
}

/// Runs command `name` with `arguments`; `quit` is what the `quit` command does.
pub fn execute(
    d: &Daemon,
    name: &str,
    arguments: Map<String, Value>,
    quit: &(dyn Fn() + Sync),
) -> CmdResult {
    let cmd = parse_command(name, arguments)?;
    if let Some(vf) = cmd.managed_vf() {
        d.check_vf_busy(vf)?;
    }
    match cmd {
        Command::QueryVersion => query_version(),
        Command::QueryCommands => Ok(json!(COMMAND_ARGS
            .iter()
            .map(|(c, _)| json!({"name": c}))
            .collect::<Vec<_>>())),
        Command::QueryPf => query_pf(d),
        Command::QueryVfs => query_vfs(d),
        Command::SetNumvfs(n) => {
            d.set_numvfs(n)?;
            Ok(json!({}))
        }
        Command::VfSet { vf, knobs } => vf_set(d, vf, &knobs),
        Command::VfRssSet {
            vf,
            key,
            table,
            learning,
        } => vf_rss_set(d, vf, key, table, learning),
        Command::VfRssQuery(vf) => rss_json(&*d.vf_port(vf)?),
        Command::VfRssTest { vf, flow } => vf_rss_test(d, vf, &flow),
        Command::VfFlowAdd { vf, flow, queue } => {
            d.vf_port(vf)?.rss().add_flow_rule(flow, queue)?;
            Ok(json!({}))
        }
        Command::VfFlowDel { vf, flow } => {
            d.vf_port(vf)?.rss().del_flow_rule(&flow)?;
            Ok(json!({}))
        }
        Command::VfFlowList(vf) => vf_flow_list(d, vf),
        Command::QueryStats(port) => query_stats(d, port.as_deref()),
        Command::QueryFdb => query_fdb(d),
        Command::FdbFlush => {
            d.fdb_flush();
            Ok(json!({}))
        }
        Command::CaptureStart(req) => Ok(json!({ "id": d.capture_start(&req)? })),
        Command::CaptureStop(id) => capture_stop(d, id),
        Command::QueryCaptures => Ok(Value::Array(
            d.captures().iter().map(capture_info).collect(),
        )),
        Command::FaultSet { port, kind, fault } => {
            d.fault_set(&port, kind, fault)?;
            Ok(json!({}))
        }
        Command::FaultClear { port, kind } => {
            d.fault_clear(&port, kind)?;
            Ok(json!({}))
        }
        Command::QueryFaults => Ok(Value::Array(
            d.faults()
                .into_iter()
                .map(|(port, faults)| json!({"port": port, "faults": faults}))
                .collect(),
        )),
        Command::QueryWorkers => query_workers(d),
        Command::Quit => {
            quit();
            Ok(json!({}))
        }
    }
}

fn query_version() -> CmdResult {
    let v: Vec<u64> = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    Ok(json!({
        "qemu": {"major": v.first(), "minor": v.get(1), "micro": v.get(2)},
        "package": concat!("sriov-emu ", env!("CARGO_PKG_VERSION")),
    }))
}

fn query_workers(d: &Daemon) -> CmdResult {
    let w = d.workers();
    Ok(json!({
        "clock": w.clock,
        "hz": w.hz,
        "poll": w.poll,
        "workers": w.workers.iter().enumerate().map(|(i, (cpu, c))| json!({
            "worker": i,
            "tid": c.tid,
            "cpu": cpu,
            "busy-cycles": c.busy_cycles,
            "idle-cycles": c.idle_cycles,
            "busy-rounds": c.busy_rounds,
            "idle-rounds": c.idle_rounds,
        })).collect::<Vec<_>>(),
    }))
}

fn query_pf(d: &Daemon) -> CmdResult {
    let pf = d.pf_snapshot();
    let cfg = pf.config();
    let pv: Vec<Value> = d
        .ports()
        .iter()
        .filter(|p| matches!(p.spec.kind, PortKind::Pv(_)))
        .map(|p| {
            json!({
                "name": p.spec.name,
                "channels": p.spec.queue_pairs,
                "attached": p.is_attached(),
                "enabled-queues": p.enabled_rx_queues().as_slice(),
                "socket": p.spec.socket,
            })
        })
        .collect();
    let mut out = json!({
        "totalvfs": crate::pf::TOTAL_VFS,
        "numvfs": pf.numvfs(),
        "channels": {"total": pf.pool().total(), "used": pf.pool().used(), "free": pf.pool().free()},
        "pv-channels": {"total": pf.pv_pool().total(), "used": pf.pv_pool().used(), "free": pf.pv_pool().free()},
        "default-channels": cfg.channels_per_vf,
        "mtu": cfg.mtu,
        "socket-dir": cfg.socket_dir,
        "pv-ports": pv,
    });
    if let Some(up) = d.uplink() {
        out["uplink"] = uplink_json(up, d.uplink_mtu());
    }
    Ok(out)
}

/// The PF's wire as `query-pf` shows it; `underlay_mtu` is `--uplink-mtu`.
fn uplink_json(up: &Uplink, underlay_mtu: u32) -> Value {
    json!({
        "spec": up.spec().to_string(),
        "carrier": up.carrier(),
        "max-frame": up.max_frame(),
        "guest-mtu": up.spec().guest_mtu(underlay_mtu),
        "rate-mbps": up.rate().rate_mbps(),
        "remotes": up.remote_addrs(),
    })
}

fn vf_json(p: &Port) -> Value {
    let vf = match p.spec.kind {
        PortKind::Vf(i) => i,
        PortKind::Pv(_) | PortKind::Uplink => 0,
    };
    let mut m = Map::new();
    m.insert("vf".into(), json!(vf));
    m.insert("name".into(), json!(p.spec.name));
    let resources = knobs::VfResources {
        channels: p.spec.queue_pairs,
        client_path: p.spec.client.then_some(p.spec.socket.as_path()),
    };
    m.extend(knobs::json_fields(&p.settings(), &resources));
    // The link as it is now: `auto` follows the uplink's carrier.
    m.insert("link-up".into(), json!(p.link_up()));
    m.insert(
        "enabled-queues".into(),
        json!(p.enabled_rx_queues().as_slice()),
    );
    m.insert("attached".into(), json!(p.is_attached()));
    m.insert("socket".into(), json!(p.spec.socket));
    // `client`: the port connects to `socket`, which the frontend (QEMU) serves.
    m.insert(
        "socket-mode".into(),
        json!(if p.spec.client { "client" } else { "server" }),
    );
    Value::Object(m)
}

fn query_vfs(d: &Daemon) -> CmdResult {
    let vfs: Vec<Value> = d
        .ports()
        .iter()
        .filter(|p| matches!(p.spec.kind, PortKind::Vf(_)))
        .map(|p| vf_json(p))
        .collect();
    Ok(Value::Array(vfs))
}

/// The VF knobs among the arguments (type-checked only).
fn knob_args(a: &mut Args) -> Result<KnobValues, QmpError> {
    let mut vals = KnobValues::default();
    for k in KNOBS {
        if let Some(v) = a.opt_value(k.qmp) {
            k.set_json(&v, &mut vals)
                .map_err(|e| QmpError::generic(format!("Parameter '{}' {e}", k.qmp)))?;
        }
    }
    Ok(vals)
}

fn vf_set(d: &Daemon, vf: u32, vals: &KnobValues) -> CmdResult {
    let port = d.vf_port(vf)?;
    // Check everything before changing anything (the channels go first, then the settings).
    vals.settings.apply(&port.settings())?;
    if vals.settings.min_tx_rate.is_some() {
        d.check_guarantees(vf, &port, &vals.settings)?;
    }
    let client_path = vals.client_path()?;
    if let Some(c) = vals.channels()? {
        if c != u32::from(port.spec.queue_pairs) {
            d.set_vf_channels(vf, c)?;
        }
    }
    if let Some(path) = client_path {
        d.set_vf_client_path(vf, path)?;
    }
    if vals.settings != SettingsUpdate::default() {
        d.vf_set(vf, &vals.settings)?;
    }
    Ok(vf_json(&*d.vf_port(vf)?))
}

/// `vf-rss-set`'s arguments.
fn rss_set_args(a: &mut Args) -> Result<Command, QmpError> {
    let vf = a.u32("vf")?;
    let key: Option<RssKey> = a.opt_str("key")?.map(|k| k.parse()).transpose()?;
    let table: Option<Option<Vec<u16>>> = match a.opt_value("table") {
        None => None,
        Some(Value::String(s)) if s == "default" => Some(None),
        Some(Value::Array(v)) => Some(Some(
            v.iter()
                .map(|q| q.as_u64().and_then(|q| u16::try_from(q).ok()))
                .collect::<Option<Vec<u16>>>()
                .ok_or_else(|| QmpError::generic("Parameter 'table' expects queue numbers"))?,
        )),
        Some(_) => {
            return Err(QmpError::generic(
                "Parameter 'table' expects a list of queues or \"default\"",
            ))
        }
    };
    let learning = a.opt_bool("flow-learning")?;
    Ok(Command::VfRssSet {
        vf,
        key,
        table,
        learning,
    })
}

fn vf_rss_set(
    d: &Daemon,
    vf: u32,
    key: Option<RssKey>,
    table: Option<Option<Vec<u16>>>,
    learning: Option<bool>,
) -> CmdResult {
    let port = d.vf_port(vf)?;
    let mut rss = port.rss();
    // The table is the only part that can fail: set it first.
    if let Some(t) = &table {
        rss.set_table(t.as_deref())?;
    }
    if let Some(k) = key {
        rss.set_key(k);
    }
    if let Some(l) = learning {
        rss.set_learning(l);
    }
    drop(rss);
    rss_json(&port)
}

fn rss_json(port: &Port) -> CmdResult {
    let enabled = port.enabled_rx_queues();
    let rss = port.rss();
    Ok(json!({
        "key": rss.key().to_string(),
        "table": rss.effective_table(&enabled),
        "user-table": rss.has_user_table(),
        "flow-learning": rss.learning(),
        "enabled-queues": enabled.as_slice(),
    }))
}

/// A flow from arguments: proto ("tcp" | "udp" | "ip"), src, dst, src-port, dst-port.
fn flow_arg(a: &mut Args) -> Result<FlowTuple, QmpError> {
    let proto = a.str("proto")?;
    let proto = match proto.as_str() {
        "tcp" => IPPROTO_TCP,
        "udp" => IPPROTO_UDP,
        "ip" => 0,
        p => {
            return Err(QmpError::generic(format!(
                "proto {p:?} is not tcp, udp or ip"
            )))
        }
    };
    let addr = |a: &mut Args, n: &str| -> Result<IpAddr, QmpError> {
        let s = a.str(n)?;
        s.parse()
            .map_err(|_| QmpError::generic(format!("Parameter '{n}': {s:?} is not an IP address")))
    };
    let (src, dst) = (addr(a, "src")?, addr(a, "dst")?);
    let port = |a: &mut Args, n: &str| -> Result<u16, QmpError> {
        let p = a.opt_int(n)?.unwrap_or(0);
        u16::try_from(p)
            .map_err(|_| QmpError::generic(format!("Parameter '{n}': port {p} is out of range")))
    };
    let (sp, dp) = (port(a, "src-port")?, port(a, "dst-port")?);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Ok(FlowTuple::v4(proto, s.octets(), d.octets(), sp, dp)),
        (IpAddr::V6(s), IpAddr::V6(d)) => Ok(FlowTuple::v6(proto, s.octets(), d.octets(), sp, dp)),
        _ => Err(QmpError::generic(
            "src and dst must both be IPv4 or both IPv6",
        )),
    }
}

fn vf_flow_list(d: &Daemon, vf: u32) -> CmdResult {
    let port = d.vf_port(vf)?;
    let rss = port.rss();
    let rules: Vec<Value> = rss
        .flows()
        .rules()
        .into_iter()
        .map(|(f, q)| json!({"flow": f.to_string(), "queue": q}))
        .collect();
    Ok(json!({
        "rules": rules,
        "learned": rss.flows().learned_len(),
        "learned-inserts": rss.flows().learned_inserts(),
        "evictions": rss.flows().evictions(),
        "flow-learning": rss.learning(),
    }))
}

fn vf_rss_test(d: &Daemon, vf: u32, flow: &FlowTuple) -> CmdResult {
    let port = d.vf_port(vf)?;
    let enabled = port.enabled_rx_queues();
    // A detached VF: answer for the queues it would enable (all of them).
    let enabled = if enabled.is_empty() {
        EnabledQueues::first(usize::from(port.spec.queue_pairs))
    } else {
        enabled
    };
    let dec = port.rss().explain(flow, &enabled);
    Ok(json!({
        "flow": flow.to_string(),
        "hash": dec.hash.map(|h| format!("{h:#010x}")),
        "index": dec.index,
        "queue": dec.queue,
        "by": dec.by.to_string(),
        "fell-back": dec.fell_back,
        "wanted": dec.wanted,
        "enabled-queues": enabled.as_slice(),
        "text": dec.to_string(),
    }))
}

fn query_stats(d: &Daemon, want: Option<&str>) -> CmdResult {
    let ports = d.ports();
    if let Some(w) = want {
        if !ports.iter().any(|p| p.spec.name == w) {
            return Err(QmpError::generic(format!("port {w:?} does not exist")));
        }
    }
    let out: Vec<Value> = ports
        .iter()
        .filter(|p| want.is_none_or(|w| p.spec.name == w))
        .map(|p| {
            let is_uplink = p.spec.kind == PortKind::Uplink;
            let mut counters: Map<String, Value> = p
                .counters
                .snapshot()
                .into_iter()
                .filter(|(n, _)| !is_uplink || applies_to_wire(n))
                .map(|(n, v)| (if is_uplink { wire_name(&n) } else { n }, json!(v)))
                .collect();
            match d.uplink().filter(|_| is_uplink) {
                Some(up) => {
                    up.for_each_counter(|n, v| {
                        counters.insert(n, json!(v));
                    });
                    json!({"port": p.spec.name, "attached": true, "carrier": up.carrier(),
                           "remotes": up.remote_addrs(), "counters": counters})
                }
                None => {
                    json!({"port": p.spec.name, "attached": p.is_attached(), "counters": counters})
                }
            }
        })
        .collect();
    Ok(Value::Array(out))
}

/// Whether a port counter means something for the uplink: RX steering, flow learning,
/// per-queue counts (its "queues" are the remotes, counted per remote instead), rate holds
/// (no rate holds frames from the wire) and vhost-user protocol errors (it has no vhost-user
/// connection) do not.
fn applies_to_wire(n: &str) -> bool {
    ![
        "rx_steer_",
        "flow_",
        "rx_queue_",
        "tx_queue_",
        "tx_throttled",
        "rx_malformed_buffers",
        "protocol_errors",
    ]
    .iter()
    .any(|p| n.starts_with(p))
}

/// An uplink counter's name as the PF's `ethtool -S` has it: `rx_*` came in from the wire,
/// `tx_*` went out onto it. (A vhost-user port's are named from its guest's side, where `tx`
/// is what the guest sent into the switch; the uplink's "guest" is the wire.)
fn wire_name(n: &str) -> String {
    let swapped = |rest: &str, to: &str| format!("{to}{rest}");
    if let Some(rest) = n.strip_prefix("tx_") {
        swapped(rest, "rx_")
    } else if let Some(rest) = n.strip_prefix("rx_").filter(|r| !r.starts_with("steer")) {
        swapped(rest, "tx_")
    } else {
        n.to_string()
    }
}

fn query_fdb(d: &Daemon) -> CmdResult {
    let entries: Vec<Value> = d
        .fdb()
        .into_iter()
        .map(|r| {
            let mut e =
                json!({"mac": r.mac, "vlan": r.vlan, "port": r.port, "static": r.is_static});
            if let Some(remote) = r.remote {
                e["remote"] = json!(remote);
            }
            e
        })
        .collect();
    Ok(Value::Array(entries))
}

/// The largest snap length a capture takes (a jumbo frame with two VLAN tags fits the default).
const MAX_SNAPLEN: u32 = 65_535;

/// `capture-start`'s arguments.
fn capture_args(a: &mut Args) -> Result<CaptureRequest, QmpError> {
    let file = std::path::PathBuf::from(a.str("file")?);
    if !file.is_absolute() {
        return Err(QmpError::generic(
            "Parameter 'file' must be an absolute path (the emulator's working directory is not \
             the client's)",
        ));
    }
    let ports = match a.opt_value("ports") {
        None => None,
        Some(Value::Array(v)) => Some(
            v.iter()
                .map(|p| {
                    p.as_str().map(str::to_string).ok_or_else(|| {
                        QmpError::generic("Parameter 'ports' expects a list of port names")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => {
            return Err(QmpError::generic(
                "Parameter 'ports' expects a list of port names",
            ))
        }
    };
    let snaplen = match a.opt_int("snaplen")? {
        None => crate::daemon::DEFAULT_SNAPLEN,
        Some(n) if (1..=i64::from(MAX_SNAPLEN)).contains(&n) => n as usize,
        Some(n) => {
            return Err(QmpError::generic(format!(
                "Parameter 'snaplen' is out of range 1..={MAX_SNAPLEN}: {n}"
            )))
        }
    };
    let max_bytes = match a.opt_int("max-mb")? {
        None => None,
        Some(n) if n >= 1 => Some((n as u64) << 20),
        Some(n) => {
            return Err(QmpError::generic(format!(
                "Parameter 'max-mb' must be at least 1: {n}"
            )))
        }
    };
    Ok(CaptureRequest {
        path: file,
        ports,
        snaplen,
        max_bytes,
    })
}

fn capture_stop(d: &Daemon, id: u32) -> CmdResult {
    let (info, files) = d.capture_stop(id)?;
    let mut v = capture_info(&info);
    v["files"] = json!(files);
    Ok(v)
}

fn capture_info(c: &crate::daemon::CaptureInfo) -> Value {
    let mut v = json!({
        "id": c.id,
        "file": c.path,
        "captured": c.captured,
        "capture_dropped": c.dropped,
    });
    if let Some(e) = &c.error {
        v["error"] = json!(e);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigFile;
    use crate::control::client::vf_command;
    use crate::pf::{vf_port_id, PortSpec};
    use crate::vf::Knob;

    fn port() -> Port {
        Port::new(PortSpec {
            id: vf_port_id(3),
            kind: PortKind::Vf(3),
            name: "vf3".into(),
            mac: Some("02:00:00:00:03:01".parse().unwrap()),
            queue_pairs: 2,
            mtu: 1500,
            socket: "/tmp/sriov-emu-test/vf3.sock".into(),
            client: false,
        })
    }

    /// The fields of `query-vfs` and `vf-set`, in order (docs/control.md and clients rely on it).
    #[test]
    fn vf_json_fields_and_order_are_stable() {
        let v = vf_json(&port());
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "vf",
                "name",
                "mac",
                "vlan",
                "qos",
                "proto",
                "spoofchk",
                "trust",
                "promisc",
                "link-state",
                "link-up",
                "max-tx-rate",
                "min-tx-rate",
                "channels",
                "client-path",
                "enabled-queues",
                "attached",
                "socket",
                "socket-mode"
            ]
        );
        assert_eq!(
            v,
            json!({"vf": 3, "name": "vf3", "mac": "02:00:00:00:03:01", "vlan": 0, "qos": 0,
                   "proto": "802.1Q", "spoofchk": true, "trust": false, "promisc": false,
                   "link-state": "auto",
                   "link-up": true, "max-tx-rate": 0, "min-tx-rate": 0, "channels": 2,
                   "client-path": "", "enabled-queues": [], "attached": false,
                   "socket": "/tmp/sriov-emu-test/vf3.sock", "socket-mode": "server"})
        );
    }

    /// A knob added to `vf::KNOBS` reaches every vocabulary; one wired by hand somewhere and
    /// missing elsewhere fails here.
    #[test]
    fn every_knob_is_taken_by_vf_set_ctl_and_the_config_file_and_shown() {
        let shown = vf_json(&port());
        let vf_set_args = COMMAND_ARGS
            .iter()
            .find(|(n, _)| *n == "vf-set")
            .map(|(_, a)| *a)
            .unwrap();
        for k in KNOBS {
            let cur = shown
                .get(k.qmp)
                .unwrap_or_else(|| panic!("query-vfs does not show {}", k.qmp));
            let v = k.other_value(cur);
            // vf-set takes the argument and reads its value.
            assert!(takes("vf-set", vf_set_args, k.qmp), "{}", k.qmp);
            let mut a = Args::new(json!({ k.qmp: v }).as_object().unwrap().clone());
            let from_qmp = knob_args(&mut a).unwrap();
            a.finish().unwrap();
            assert!(!from_qmp.is_empty(), "{}", k.qmp);
            // Each ctl word becomes that argument.
            for w in k.words {
                let words = ["set".to_string(), w.to_string(), Knob::value_word(&v)];
                assert_eq!(
                    vf_command(3, &words).unwrap(),
                    ("vf-set", json!({"vf": 3, k.qmp: v})),
                    "ctl word {w}"
                );
            }
            // The config file key gives the same values.
            let text = format!("[[vf]]\nindex = 3\n{} = {v}\n", k.toml);
            let c = ConfigFile::parse(&text)
                .unwrap_or_else(|e| panic!("{text}: {}", crate::ErrorChain(&e)));
            assert_eq!(c.vf[0].knobs, from_qmp, "{text}");
        }
        // Other commands do not take the knobs.
        assert!(!takes("vf-rss-set", &["vf"], "vlan"));
    }

    /// Every argument is read and checked without a daemon: what `execute` runs is typed.
    #[test]
    fn commands_parse_without_a_daemon() {
        let args = |v: Value| v.as_object().unwrap().clone();
        let c = parse_command(
            "vf-flow-add",
            args(
                json!({"vf": 1, "proto": "udp", "src": "198.18.0.1", "dst": "198.18.0.2",
                        "dst-port": 53, "queue": 2}),
            ),
        )
        .unwrap();
        let Command::VfFlowAdd { vf, flow, queue } = c else {
            panic!("{c:?}");
        };
        assert_eq!(
            (vf, queue, flow.to_string().as_str()),
            (1, 2, "udp 198.18.0.1:0 > 198.18.0.2:53")
        );
        let err = |name: &str, v: Value| parse_command(name, args(v)).unwrap_err().desc;
        assert_eq!(
            err(
                "vf-flow-add",
                json!({"vf": 1, "proto": "tcp", "src": "198.18.0.1", "dst": "::1", "queue": 0})
            ),
            "src and dst must both be IPv4 or both IPv6"
        );
        assert_eq!(
            err("vf-rss-set", json!({"vf": 1, "table": [1, 70000]})),
            "Parameter 'table' expects queue numbers"
        );
        assert!(err("capture-start", json!({"file": "relative.pcapng"})).contains("absolute path"));
        assert_eq!(
            err("set-numvfs", json!({"numvfs": 2, "x": 1})),
            "Parameter 'x' is unexpected"
        );
        assert_eq!(
            parse_command("nope", Map::new()).unwrap_err().class,
            "CommandNotFound"
        );
        // The server answers qmp_capabilities itself.
        assert_eq!(
            parse_command("qmp_capabilities", Map::new())
                .unwrap_err()
                .class,
            "CommandNotFound"
        );
    }

    #[test]
    fn vf_set_arguments_of_the_wrong_type_are_named() {
        for (args, want) in [
            (
                json!({"vlan": "ten"}),
                "Parameter 'vlan' expects an integer",
            ),
            (
                json!({"spoofchk": "on"}),
                "Parameter 'spoofchk' expects a boolean",
            ),
            (json!({"mac": 2}), "Parameter 'mac' expects a string"),
            (
                json!({"link-state": false}),
                "Parameter 'link-state' expects a string",
            ),
            (
                json!({"channels": 1.5}),
                "Parameter 'channels' expects an integer",
            ),
        ] {
            let mut a = Args::new(args.as_object().unwrap().clone());
            assert_eq!(knob_args(&mut a).unwrap_err().desc, want);
        }
        // null is "not given", as for every argument.
        let mut a = Args::new(json!({"vlan": null}).as_object().unwrap().clone());
        assert!(knob_args(&mut a).unwrap().is_empty());
    }
}
