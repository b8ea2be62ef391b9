//! The control commands. Every one validates all of its input before changing anything.

use super::qmp::{Args, QmpError};
use crate::daemon::Daemon;
use crate::pf::PortKind;
use crate::rss::{EnabledQueues, FlowTuple, RssKey, IPPROTO_TCP, IPPROTO_UDP};
use crate::vf::{Port, SettingsUpdate};
use serde_json::{json, Map, Value};
use std::net::IpAddr;

type CmdResult = Result<Value, QmpError>;

/// Every command with the arguments it takes; names are checked before a command runs, so a
/// misspelt argument changes nothing.
const COMMAND_ARGS: &[(&str, &[&str])] = &[
    ("qmp_capabilities", &["enable"]),
    ("query-version", &[]),
    ("query-commands", &[]),
    ("query-pf", &[]),
    ("query-vfs", &[]),
    ("set-numvfs", &["numvfs"]),
    (
        "vf-set",
        &[
            "vf",
            "mac",
            "vlan",
            "qos",
            "proto",
            "spoofchk",
            "trust",
            "link-state",
            "max-tx-rate",
            "min-tx-rate",
            "channels",
        ],
    ),
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
    ("quit", &[]),
];

/// Runs command `name` with `arguments`; `quit` is what the `quit` command does.
pub fn execute(
    d: &Daemon,
    name: &str,
    arguments: Map<String, Value>,
    quit: &(dyn Fn() + Sync),
) -> CmdResult {
    let allowed = COMMAND_ARGS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| QmpError::not_found(name))?;
    if let Some(k) = arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(QmpError::generic(format!("Parameter '{k}' is unexpected")));
    }
    let mut a = Args::new(arguments);
    let r = match name {
        "query-version" => query_version(),
        "query-commands" => Ok(json!(COMMAND_ARGS
            .iter()
            .map(|(c, _)| json!({"name": c}))
            .collect::<Vec<_>>())),
        "query-pf" => query_pf(d),
        "query-vfs" => query_vfs(d),
        "set-numvfs" => set_numvfs(d, &mut a),
        "vf-set" => vf_set(d, &mut a),
        "vf-rss-set" => vf_rss_set(d, &mut a),
        "vf-rss-query" => vf_rss_query(d, &mut a),
        "vf-rss-test" => vf_rss_test(d, &mut a),
        "vf-flow-add" => vf_flow_add(d, &mut a),
        "vf-flow-del" => vf_flow_del(d, &mut a),
        "vf-flow-list" => vf_flow_list(d, &mut a),
        "query-stats" => query_stats(d, &mut a),
        "query-fdb" => query_fdb(d),
        "fdb-flush" => {
            d.fdb_flush();
            Ok(json!({}))
        }
        "quit" => {
            quit();
            Ok(json!({}))
        }
        _ => return Err(QmpError::not_found(name)),
    }?;
    a.finish()?;
    Ok(r)
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
    Ok(json!({
        "totalvfs": crate::pf::TOTAL_VFS,
        "numvfs": pf.numvfs(),
        "channels": {"total": pf.pool().total(), "used": pf.pool().used(), "free": pf.pool().free()},
        "pv-channels": {"total": pf.pv_pool().total(), "used": pf.pv_pool().used(), "free": pf.pv_pool().free()},
        "default-channels": cfg.channels_per_vf,
        "mtu": cfg.mtu,
        "socket-dir": cfg.socket_dir,
        "pv-ports": pv,
    }))
}

fn vf_json(p: &Port) -> Value {
    let s = p.settings();
    let vf = match p.spec.kind {
        PortKind::Vf(i) => i,
        PortKind::Pv(_) => 0,
    };
    let enabled = p.enabled_rx_queues();
    json!({
        "vf": vf,
        "name": p.spec.name,
        "mac": s.mac,
        "vlan": s.vlan,
        "qos": s.qos,
        "proto": s.proto.to_string(),
        "spoofchk": s.spoofchk,
        "trust": s.trust,
        "link-state": s.link_state.to_string(),
        "link-up": s.link_up(true),
        "max-tx-rate": s.max_tx_rate,
        "min-tx-rate": s.min_tx_rate,
        "channels": p.spec.queue_pairs,
        "enabled-queues": enabled.as_slice(),
        "attached": p.is_attached(),
        "socket": p.spec.socket,
    })
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

fn set_numvfs(d: &Daemon, a: &mut Args) -> CmdResult {
    let n = a.u32("numvfs")?;
    d.set_numvfs(n)?;
    Ok(json!({}))
}

fn vf_set(d: &Daemon, a: &mut Args) -> CmdResult {
    let vf = a.u32("vf")?;
    let update = SettingsUpdate {
        mac: a.opt_str("mac")?,
        vlan: a.opt_int("vlan")?,
        qos: a.opt_int("qos")?,
        proto: a.opt_str("proto")?,
        spoofchk: a.opt_bool("spoofchk")?,
        trust: a.opt_bool("trust")?,
        link_state: a.opt_str("link-state")?,
        max_tx_rate: a.opt_int("max-tx-rate")?,
        min_tx_rate: a.opt_int("min-tx-rate")?,
    };
    let channels = a.opt_int("channels")?;
    let port = d.vf_port(vf)?;
    // Check everything before changing anything.
    update.apply(&port.settings())?;
    if let Some(c) = channels {
        let c = u32::try_from(c)
            .map_err(|_| QmpError::generic(format!("{c} channels per VF is out of range")))?;
        if c != u32::from(port.spec.queue_pairs) {
            d.set_vf_channels(vf, c)?;
        }
    }
    if update != SettingsUpdate::default() {
        d.vf_set(vf, &update)?;
    }
    Ok(vf_json(&*d.vf_port(vf)?))
}

fn vf_rss_set(d: &Daemon, a: &mut Args) -> CmdResult {
    let port = d.vf_port(a.u32("vf")?)?;
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

fn vf_rss_query(d: &Daemon, a: &mut Args) -> CmdResult {
    rss_json(&*d.vf_port(a.u32("vf")?)?)
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

fn vf_flow_add(d: &Daemon, a: &mut Args) -> CmdResult {
    let port = d.vf_port(a.u32("vf")?)?;
    let flow = flow_arg(a)?;
    let queue = a.u32("queue")?;
    let queue = u16::try_from(queue)
        .map_err(|_| QmpError::generic(format!("queue {queue} is out of range")))?;
    port.rss().add_flow_rule(flow, queue)?;
    Ok(json!({}))
}

fn vf_flow_del(d: &Daemon, a: &mut Args) -> CmdResult {
    let port = d.vf_port(a.u32("vf")?)?;
    let flow = flow_arg(a)?;
    port.rss().del_flow_rule(&flow)?;
    Ok(json!({}))
}

fn vf_flow_list(d: &Daemon, a: &mut Args) -> CmdResult {
    let port = d.vf_port(a.u32("vf")?)?;
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

fn vf_rss_test(d: &Daemon, a: &mut Args) -> CmdResult {
    let port = d.vf_port(a.u32("vf")?)?;
    let flow = flow_arg(a)?;
    let enabled = port.enabled_rx_queues();
    // A detached VF: answer for the queues it would enable (all of them).
    let enabled = if enabled.is_empty() {
        EnabledQueues::first(usize::from(port.spec.queue_pairs))
    } else {
        enabled
    };
    let dec = port.rss().explain(&flow, &enabled);
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

fn query_stats(d: &Daemon, a: &mut Args) -> CmdResult {
    let want = a.opt_str("port")?;
    let ports = d.ports();
    if let Some(w) = &want {
        if !ports.iter().any(|p| &p.spec.name == w) {
            return Err(QmpError::generic(format!("port {w:?} does not exist")));
        }
    }
    let out: Vec<Value> = ports
        .iter()
        .filter(|p| want.as_ref().is_none_or(|w| &p.spec.name == w))
        .map(|p| {
            let counters: Map<String, Value> = p
                .counters
                .snapshot()
                .into_iter()
                .map(|(n, v)| (n, json!(v)))
                .collect();
            json!({"port": p.spec.name, "attached": p.is_attached(), "counters": counters})
        })
        .collect();
    Ok(Value::Array(out))
}

fn query_fdb(d: &Daemon) -> CmdResult {
    let entries: Vec<Value> = d
        .fdb()
        .into_iter()
        .map(|(mac, port, st)| json!({"mac": mac, "port": port, "static": st}))
        .collect();
    Ok(Value::Array(entries))
}
