//! The `sriov-emu ctl` renderings of control replies: `ip link show`, `ethtool -S`,
//! OpenMetrics, `bridge fdb` text and the workers' cycles. Pure functions of the JSON the commands return.

use serde_json::Value;

/// `ip link show`-like text for `query-pf` + `query-vfs`: the PF line, the uplink's line if
/// the PF has one, one line per VF.
pub fn render_show(pf: &Value, vfs: &Value) -> String {
    let mut out = format!(
        "pf: numvfs {}/{} channels {} used, {} free of {} mtu {}\n",
        pf["numvfs"],
        pf["totalvfs"],
        pf["channels"]["used"],
        pf["channels"]["free"],
        pf["channels"]["total"],
        pf["mtu"]
    );
    let up = &pf["uplink"];
    if up.is_object() {
        out += &format!(
            "uplink: {} carrier {}, guest mtu {}, rate {}Mbps\n",
            up["spec"].as_str().unwrap_or("?"),
            if up["carrier"].as_bool() == Some(true) {
                "up"
            } else {
                "down"
            },
            up["guest-mtu"],
            up["rate-mbps"]
        );
    }
    for v in vfs.as_array().into_iter().flatten() {
        let mut line = format!(
            "    vf {:<5} link/ether {} brd ff:ff:ff:ff:ff:ff",
            v["vf"].to_string(),
            v["mac"].as_str().unwrap_or("?")
        );
        if v["vlan"].as_u64().unwrap_or(0) != 0 {
            line += &format!(", vlan {}, qos {}", v["vlan"], v["qos"]);
            if v["proto"].as_str() == Some("802.1ad") {
                line += ", vlan protocol 802.1ad";
            }
        }
        let onoff = |b: &Value| {
            if b.as_bool() == Some(true) {
                "on"
            } else {
                "off"
            }
        };
        line += &format!(
            ", spoof checking {}, link-state {}, trust {}, promisc {}",
            onoff(&v["spoofchk"]),
            v["link-state"].as_str().unwrap_or("?"),
            onoff(&v["trust"]),
            onoff(&v["promisc"])
        );
        if v["max-tx-rate"].as_u64().unwrap_or(0) != 0
            || v["min-tx-rate"].as_u64().unwrap_or(0) != 0
        {
            line += &format!(
                ", max_tx_rate {}Mbps, min_tx_rate {}Mbps",
                v["max-tx-rate"], v["min-tx-rate"]
            );
        }
        let attached = if v["attached"].as_bool() == Some(true) {
            "attached"
        } else {
            "detached"
        };
        line += &format!(", channels {}", v["channels"]);
        if let Some(path) = v["client-path"].as_str().filter(|p| !p.is_empty()) {
            line += &format!(", client of {path}");
        }
        line += &format!(", {attached}\n");
        out += &line;
    }
    out
}

/// `ethtool -S`-like text for `query-stats`.
pub fn render_stats(stats: &Value) -> String {
    let mut out = String::new();
    for p in stats.as_array().into_iter().flatten() {
        out += &format!("{}:\n", p["port"].as_str().unwrap_or("?"));
        for (k, v) in p["counters"].as_object().into_iter().flatten() {
            out += &format!("     {k}: {v}\n");
        }
    }
    out
}

/// OpenMetrics text for `query-stats`: totals as `sriov_emu_<name>_total{port=...}`, per-queue
/// counters as `sriov_emu_queue_<rx|tx>_<what>_total{port=...,queue=...}`.
pub fn render_openmetrics(stats: &Value) -> String {
    let mut families: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for p in stats.as_array().into_iter().flatten() {
        let port = p["port"].as_str().unwrap_or("?");
        for (k, v) in p["counters"].as_object().into_iter().flatten() {
            let parsed = k.split_once("_queue_").and_then(|(dir, rest)| {
                let (q, what) = rest.split_once('_')?;
                q.parse::<u32>()
                    .ok()
                    .map(|q| (format!("queue_{dir}_{what}"), Some(q)))
            });
            let (name, queue) = parsed.unwrap_or((k.clone(), None));
            let labels = match queue {
                Some(q) => format!("port=\"{port}\",queue=\"{q}\""),
                None => format!("port=\"{port}\""),
            };
            families
                .entry(format!("sriov_emu_{name}"))
                .or_default()
                .push(format!("{{{labels}}} {v}"));
        }
    }
    let mut out = String::new();
    for (name, samples) in families {
        out += &format!("# TYPE {name} counter\n");
        for s in samples {
            out += &format!("{name}_total{s}\n");
        }
    }
    out += "# EOF\n";
    out
}

/// `bridge fdb`-like text for `query-fdb`.
pub fn render_fdb(fdb: &Value) -> String {
    let mut out = String::new();
    for e in fdb.as_array().into_iter().flatten() {
        let kind = if e["static"].as_bool() == Some(true) {
            " static"
        } else {
            ""
        };
        let vlan = match e["vlan"].as_u64() {
            Some(v) if v != 0 => format!(" vlan {v}"),
            _ => String::new(),
        };
        let dst = e["remote"]
            .as_str()
            .map_or(String::new(), |r| format!(" dst {r}"));
        out += &format!(
            "{} port {}{vlan}{dst}{kind}\n",
            e["mac"].as_str().unwrap_or("?"),
            e["port"].as_str().unwrap_or("?")
        );
    }
    out
}

/// One line per worker for `query-workers`: the share of its counted time spent in rounds
/// that moved frames, the cycles and rounds behind it, and the clock.
pub fn render_workers(w: &Value) -> String {
    let hz = w["hz"].as_u64().unwrap_or(0);
    let mut out = format!(
        "clock {} {:.1} MHz, {}\n",
        w["clock"].as_str().unwrap_or("?"),
        hz as f64 / 1e6,
        if w["poll"].as_bool() == Some(true) {
            "busy-polling"
        } else {
            "event mode"
        }
    );
    for x in w["workers"].as_array().into_iter().flatten() {
        let n = |k: &str| x[k].as_u64().unwrap_or(0);
        let (busy, idle) = (n("busy-cycles"), n("idle-cycles"));
        let share = if busy + idle > 0 {
            100.0 * busy as f64 / (busy + idle) as f64
        } else {
            0.0
        };
        let cpu = x["cpu"]
            .as_u64()
            .map_or(String::new(), |c| format!(" cpu {c}"));
        out += &format!(
            "worker {} tid {}{cpu}: busy {share:.1}%, {busy} busy cycles in {} rounds, {idle} idle \
             cycles in {} rounds\n",
            x["worker"],
            x["tid"],
            n("busy-rounds"),
            n("idle-rounds")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_render_one_line_each() {
        let w = json!({"clock": "tsc", "hz": 2_596_000_000u64, "poll": true, "workers": [
            {"worker": 0, "tid": 7, "cpu": 1, "busy-cycles": 300, "idle-cycles": 100,
             "busy-rounds": 3, "idle-rounds": 10}]});
        assert_eq!(
            render_workers(&w),
            "clock tsc 2596.0 MHz, busy-polling\nworker 0 tid 7 cpu 1: busy 75.0%, 300 busy \
             cycles in 3 rounds, 100 idle cycles in 10 rounds\n"
        );
    }
    use serde_json::{json, Map};

    /// `ctl show` shows every knob: changing any one of them changes the VF's line.
    #[test]
    fn show_renders_every_knob() {
        use crate::vf::{knobs, SettingsUpdate, VfSettings, KNOBS};
        // A port VLAN and a rate, so that qos and min_tx_rate are shown too.
        let s = SettingsUpdate {
            vlan: Some(100),
            max_tx_rate: Some(1000),
            ..Default::default()
        }
        .apply(&VfSettings::new("02:00:00:00:00:01".parse().unwrap()))
        .unwrap();
        let res = knobs::VfResources {
            channels: 2,
            client_path: None,
        };
        let mut vf = knobs::json_fields(&s, &res);
        vf.insert("vf".into(), json!(0));
        vf.insert("attached".into(), json!(false));
        let pf = json!({"numvfs": 1, "totalvfs": 254, "mtu": 1500,
                        "channels": {"used": 2, "free": 2046, "total": 2048}});
        let show = |vf: &Map<String, Value>| render_show(&pf, &json!([vf]));
        let before = show(&vf);
        assert_eq!(
            before.lines().nth(1).unwrap(),
            "    vf 0     link/ether 02:00:00:00:00:01 brd ff:ff:ff:ff:ff:ff, vlan 100, qos 0, \
             spoof checking on, link-state auto, trust off, promisc off, max_tx_rate 1000Mbps, \
             min_tx_rate 0Mbps, channels 2, detached"
        );
        for k in KNOBS {
            let mut changed = vf.clone();
            changed.insert(k.qmp.into(), k.other_value(&vf[k.qmp]));
            assert_ne!(show(&changed), before, "ctl show does not show {}", k.qmp);
        }
    }

    /// The uplink's line follows the PF's, only when `query-pf` has an uplink.
    #[test]
    fn show_has_an_uplink_line_after_the_pf_line() {
        let mut pf = json!({"numvfs": 0, "totalvfs": 254, "mtu": 1450,
                            "channels": {"used": 0, "free": 2048, "total": 2048}});
        assert_eq!(render_show(&pf, &json!([])).lines().count(), 1);
        pf["uplink"] = json!({
            "spec": "vxlan:local=127.0.0.1:47890,remote=127.0.0.1:47891,vni=5",
            "carrier": true, "max-frame": 1464, "guest-mtu": 1450, "rate-mbps": 10000,
            "remotes": ["127.0.0.1:47891"]});
        let show = render_show(&pf, &json!([]));
        let lines: Vec<&str> = show.lines().collect();
        assert_eq!(lines.len(), 2, "{show}");
        assert!(lines[0].starts_with("pf: numvfs 0/254"), "{show}");
        assert_eq!(
            lines[1],
            "uplink: vxlan:local=127.0.0.1:47890,remote=127.0.0.1:47891,vni=5 carrier up, \
             guest mtu 1450, rate 10000Mbps"
        );
        pf["uplink"]["carrier"] = json!(false);
        pf["uplink"]["spec"] = json!("tap:sriov0");
        pf["uplink"]["rate-mbps"] = json!(100);
        assert_eq!(
            render_show(&pf, &json!([])).lines().nth(1),
            Some("uplink: tap:sriov0 carrier down, guest mtu 1450, rate 100Mbps")
        );
    }

    #[test]
    fn openmetrics_names_and_labels() {
        let stats =
            json!([{"port": "vf0", "counters": {"rx_packets": 5, "rx_queue_1_packets": 2}}]);
        let om = render_openmetrics(&stats);
        assert!(
            om.contains(
                "# TYPE sriov_emu_rx_packets counter\nsriov_emu_rx_packets_total{port=\"vf0\"} 5\n"
            ),
            "{om}"
        );
        assert!(
            om.contains("sriov_emu_queue_rx_packets_total{port=\"vf0\",queue=\"1\"} 2"),
            "{om}"
        );
        assert!(om.ends_with("# EOF\n"));
    }
}
