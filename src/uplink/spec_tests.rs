//! Unit tests of `spec.rs`: every accepted form, every error variant, the round trip through
//! `Display`, and the MTU arithmetic against Linux's vxlan defaults.

use super::*;

fn parse(s: &str) -> Result<UplinkSpec, SpecError> {
    s.parse()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn vxlan(s: &str) -> VxlanSpec {
    match parse(s) {
        Ok(UplinkSpec::Vxlan(v)) => v,
        other => panic!("{s}: {other:?}"),
    }
}

/// Parses, checks the error is `want`, and that its message shows the expected syntax.
fn refused(s: &str, want: SpecError) {
    let got = parse(s).expect_err(s);
    assert_eq!(got, want, "{s}");
    let msg = got.to_string();
    assert!(
        msg.contains("expected "),
        "{s}: message without syntax: {msg}"
    );
}

#[test]
fn tap_with_and_without_queues() {
    assert_eq!(
        parse("tap:tap0").unwrap(),
        UplinkSpec::Tap {
            name: "tap0".into(),
            queues: 1
        }
    );
    assert_eq!(
        parse("tap:sriov-uplink0,queues=4").unwrap(),
        UplinkSpec::Tap {
            name: "sriov-uplink0".into(),
            queues: 4
        }
    );
    assert_eq!(
        parse("tap:a,queues=256").unwrap(),
        UplinkSpec::Tap {
            name: "a".into(),
            queues: 256
        }
    );
    // 15 bytes is the longest name.
    assert!(parse("tap:abcdefghijklmno").is_ok());
}

#[test]
fn tap_names_linux_refuses_are_refused() {
    for (name, reason) in [
        ("", "is empty"),
        ("abcdefghijklmnop", "is longer than 15 bytes"),
        (".", "is . or .."),
        ("..", "is . or .."),
        ("a/b", "contains '/', ':', ',' or whitespace"),
        ("a b", "contains '/', ':', ',' or whitespace"),
        ("a\tb", "contains '/', ':', ',' or whitespace"),
        ("a:b", "contains '/', ':', ',' or whitespace"),
    ] {
        refused(
            &format!("tap:{name}"),
            SpecError::TapName {
                name: name.into(),
                reason,
            },
        );
    }
    // Multi-byte characters count as bytes: 8 x 2 bytes is too long.
    refused(
        "tap:éééééééé",
        SpecError::TapName {
            name: "éééééééé".into(),
            reason: "is longer than 15 bytes",
        },
    );
}

#[test]
fn tap_option_errors() {
    for q in ["0", "257", "x", "-1", "+2", " 2", "99999999999999999999999"] {
        refused(
            &format!("tap:t0,queues={q}"),
            SpecError::Queues { value: q.into() },
        );
    }
    refused(
        "tap:t0,queues=2,queues=2",
        SpecError::DuplicateKey {
            kind: "tap",
            key: "queues",
            syntax: TAP_SYNTAX,
        },
    );
    refused(
        "tap:t0,Queues=2",
        SpecError::UnknownKey {
            kind: "tap",
            key: "Queues".into(),
            syntax: TAP_SYNTAX,
        },
    );
    for item in ["", "queues", "queues=", "=2"] {
        refused(
            &format!("tap:t0,{item}"),
            SpecError::NotKeyValue {
                kind: "tap",
                item: item.into(),
                syntax: TAP_SYNTAX,
            },
        );
    }
}

#[test]
fn kind_errors() {
    refused(
        "tap0",
        SpecError::MissingKind {
            input: "tap0".into(),
        },
    );
    refused("", SpecError::MissingKind { input: "".into() });
    refused("TAP:tap0", SpecError::UnknownKind { kind: "TAP".into() });
    refused(
        "geneve:local=198.18.0.1:6081",
        SpecError::UnknownKind {
            kind: "geneve".into(),
        },
    );
}

#[test]
fn vxlan_ipv4_minimal() {
    let v = vxlan("vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=42");
    assert_eq!(
        v,
        VxlanSpec {
            local: sa("198.18.0.1:4789"),
            remotes: vec![sa("198.18.0.2:4789")],
            vni: 42,
            carrier: Carrier::AlwaysOn,
            offload: true,
        }
    );
}

#[test]
fn vxlan_ipv6_several_remotes_peer_carrier() {
    let v = vxlan(
        "vxlan:vni=16777215,remote=[2001:db8::2]:4789,local=[2001:db8::1]:4790,\
         remote=[2001:db8::3]:5000,carrier=peer",
    );
    assert_eq!(v.local, sa("[2001:db8::1]:4790"));
    assert_eq!(
        v.remotes,
        vec![sa("[2001:db8::2]:4789"), sa("[2001:db8::3]:5000")]
    );
    assert_eq!(v.vni, VNI_MAX);
    assert_eq!(
        v.carrier,
        Carrier::Peer {
            timeout: DEFAULT_PEER_TIMEOUT
        }
    );
}

#[test]
fn vxlan_carrier_forms() {
    let base = "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=0";
    assert_eq!(
        vxlan(&format!("{base},carrier=on")).carrier,
        Carrier::AlwaysOn
    );
    // The timeout may come before carrier=peer.
    assert_eq!(
        vxlan(&format!("{base},peer-timeout-ms=250,carrier=peer")).carrier,
        Carrier::Peer {
            timeout: Duration::from_millis(250)
        }
    );
    refused(
        &format!("{base},peer-timeout-ms=250"),
        SpecError::PeerTimeoutWithoutPeer,
    );
    refused(
        &format!("{base},carrier=on,peer-timeout-ms=250"),
        SpecError::PeerTimeoutWithoutPeer,
    );
    for t in ["0", "3600001", "1.5", "abc", "-5"] {
        refused(
            &format!("{base},carrier=peer,peer-timeout-ms={t}"),
            SpecError::PeerTimeout { value: t.into() },
        );
    }
    for c in ["off", "Peer", "ON", "1"] {
        refused(
            &format!("{base},carrier={c}"),
            SpecError::CarrierMode { value: c.into() },
        );
    }
}

#[test]
fn vxlan_missing_keys() {
    let missing = |key| SpecError::MissingKey {
        kind: "vxlan",
        key,
        syntax: VXLAN_SYNTAX,
    };
    refused("vxlan:", missing("local"));
    refused("vxlan:remote=198.18.0.2:4789,vni=1", missing("local"));
    refused("vxlan:local=198.18.0.1:4789,vni=1", missing("remote"));
    refused(
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789",
        missing("vni"),
    );
}

#[test]
fn vxlan_duplicate_and_unknown_keys() {
    let base = "local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=1";
    for (extra, key) in [
        ("local=198.18.0.3:4789", "local"),
        ("vni=2", "vni"),
        ("carrier=on", "carrier"),
    ] {
        let s = if key == "carrier" {
            format!("vxlan:{base},carrier=peer,{extra}")
        } else {
            format!("vxlan:{base},{extra}")
        };
        refused(
            &s,
            SpecError::DuplicateKey {
                kind: "vxlan",
                key,
                syntax: VXLAN_SYNTAX,
            },
        );
    }
    refused(
        &format!("vxlan:{base},offload=on,offload=off"),
        SpecError::DuplicateKey {
            kind: "vxlan",
            key: "offload",
            syntax: VXLAN_SYNTAX,
        },
    );
    for value in ["yes", "ON", "0"] {
        refused(
            &format!("vxlan:{base},offload={value}"),
            SpecError::Offload {
                value: value.to_string(),
            },
        );
    }
    refused(
        &format!("vxlan:{base},carrier=peer,peer-timeout-ms=1,peer-timeout-ms=2"),
        SpecError::DuplicateKey {
            kind: "vxlan",
            key: "peer-timeout-ms",
            syntax: VXLAN_SYNTAX,
        },
    );
    for key in ["VNI", "Local", "ttl", "dstport"] {
        let got = parse(&format!("vxlan:{base},{key}=1")).expect_err(key);
        assert_eq!(
            got,
            SpecError::UnknownKey {
                kind: "vxlan",
                key: key.into(),
                syntax: VXLAN_SYNTAX,
            }
        );
        assert!(got.to_string().contains(&format!("{key:?}")), "{got}");
    }
    for item in ["", "vni", "=1", "vni="] {
        refused(
            &format!("vxlan:{base},{item}"),
            SpecError::NotKeyValue {
                kind: "vxlan",
                item: item.into(),
                syntax: VXLAN_SYNTAX,
            },
        );
    }
}

#[test]
fn vxlan_address_errors() {
    let bad = |key: &'static str, value: &str| SpecError::Address {
        key,
        value: value.into(),
    };
    for value in [
        "198.18.0.1",        // no port
        "198.18.0.1:0",      // port 0
        "198.18.0.1:65536",  // port too big
        "2001:db8::1:4789",  // IPv6 without brackets
        "[2001:db8::1]",     // no port
        "host.example:4789", // not an IP
        "198.18.0.256:4789", // not an IP
        "[198.18.0.1]:4789", // IPv4 in brackets
        "198.18.0.1:4789 ",  // trailing space
    ] {
        refused(
            &format!("vxlan:local={value},remote=198.18.0.2:4789,vni=1"),
            bad("local", value),
        );
        refused(
            &format!("vxlan:local=198.18.0.2:4789,remote={value},vni=1"),
            bad("remote", value),
        );
    }
    for remote in ["0.0.0.0:4789", "224.0.0.1:4789", "255.255.255.255:4789"] {
        refused(
            &format!("vxlan:local=198.18.0.1:4789,remote={remote},vni=1"),
            SpecError::RemoteNotUnicast { remote: sa(remote) },
        );
    }
    for remote in ["[::]:4789", "[ff02::1]:4789"] {
        refused(
            &format!("vxlan:local=[2001:db8::1]:4789,remote={remote},vni=1"),
            SpecError::RemoteNotUnicast { remote: sa(remote) },
        );
    }
    // An unspecified local address binds to all addresses: allowed.
    assert_eq!(
        vxlan("vxlan:local=0.0.0.0:4789,remote=198.18.0.2:4789,vni=1").local,
        sa("0.0.0.0:4789")
    );
}

#[test]
fn vxlan_remote_rules() {
    refused(
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,remote=198.18.0.2:4789,vni=1",
        SpecError::DuplicateRemote {
            remote: sa("198.18.0.2:4789"),
        },
    );
    // Same IP, another port: a different remote.
    assert_eq!(
        vxlan("vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,remote=198.18.0.2:4790,vni=1")
            .remotes
            .len(),
        2
    );
    refused(
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,remote=[2001:db8::2]:4789,vni=1",
        SpecError::FamilyMismatch {
            local: sa("198.18.0.1:4789"),
            remote: sa("[2001:db8::2]:4789"),
        },
    );
    refused(
        "vxlan:local=[2001:db8::1]:4789,remote=198.18.0.2:4789,vni=1",
        SpecError::FamilyMismatch {
            local: sa("[2001:db8::1]:4789"),
            remote: sa("198.18.0.2:4789"),
        },
    );
}

#[test]
fn vxlan_vni_range() {
    let base = "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789";
    assert_eq!(vxlan(&format!("{base},vni=0")).vni, 0);
    assert_eq!(vxlan(&format!("{base},vni=16777215")).vni, 0xFF_FFFF);
    for v in ["16777216", "4294967296", "0x2a", "-1", "+1", "1e3", " 1"] {
        refused(
            &format!("{base},vni={v}"),
            SpecError::Vni { value: v.into() },
        );
    }
}

#[test]
fn display_round_trips() {
    for s in [
        "tap:tap0",
        "tap:t,queues=8",
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=42",
        "vxlan:local=[2001:db8::1]:4789,remote=[2001:db8::2]:4789,remote=[2001:db8::3]:1,vni=0",
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=7,carrier=peer",
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=7,carrier=peer,peer-timeout-ms=1",
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=7,offload=off",
    ] {
        let x = parse(s).unwrap();
        assert_eq!(x.to_string(), s, "canonical form");
        assert_eq!(parse(&x.to_string()).unwrap(), x);
    }
    // Non-canonical inputs print canonically and still round-trip.
    for (s, canonical) in [
        ("tap:tap0,queues=1", "tap:tap0"),
        (
            "vxlan:vni=9,carrier=on,remote=198.18.0.2:4789,local=198.18.0.1:4789",
            "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=9",
        ),
        (
            "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=9,carrier=peer,peer-timeout-ms=3000",
            "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=9,carrier=peer",
        ),
        (
            "vxlan:local=[2001:DB8:0::1]:4789,remote=[2001:db8::2]:4789,vni=007",
            "vxlan:local=[2001:db8::1]:4789,remote=[2001:db8::2]:4789,vni=7",
        ),
    ] {
        let x = parse(s).unwrap();
        assert_eq!(x.to_string(), canonical);
        assert_eq!(parse(&x.to_string()).unwrap(), x);
    }
}

#[test]
fn overhead_and_mtu_match_linux_vxlan() {
    let v4 = parse("vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=1").unwrap();
    let v6 = parse("vxlan:local=[2001:db8::1]:4789,remote=[2001:db8::2]:4789,vni=1").unwrap();
    let tap = parse("tap:tap0").unwrap();
    assert_eq!(v4.overhead(), 36);
    assert_eq!(v6.overhead(), 56);
    assert_eq!(tap.overhead(), 0);
    // Linux: `ip link add type vxlan ... dev <1500-byte link>` gets MTU 1450 (IPv4), 1430 (IPv6).
    assert_eq!(v4.guest_mtu(DEFAULT_UNDERLAY_MTU), 1450);
    assert_eq!(v6.guest_mtu(DEFAULT_UNDERLAY_MTU), 1430);
    assert_eq!(v4.max_frame_len(1500), 1464);
    assert_eq!(v6.max_frame_len(1500), 1444);
    assert_eq!(v4.max_frame_len(9000), 8964);
    // A TAP device's MTU counts no Ethernet header.
    assert_eq!(tap.max_frame_len(1500), 1514);
    assert_eq!(tap.guest_mtu(1500), 1500);
    // Nonsense underlays saturate instead of wrapping.
    assert_eq!(v6.max_frame_len(20), 0);
    assert_eq!(v6.guest_mtu(60), 0);
    assert_eq!(tap.max_frame_len(u32::MAX), u32::MAX);
}

#[test]
fn serde_uses_the_string_form() {
    #[derive(serde::Deserialize)]
    struct File {
        uplink: UplinkSpec,
    }
    let f: File =
        toml::from_str("uplink = \"vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=5\"")
            .unwrap();
    assert_eq!(
        f.uplink.to_string(),
        "vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,vni=5"
    );
    let e = toml::from_str::<File>("uplink = \"tap:\"").err().unwrap();
    assert!(e.to_string().contains("tap interface name"), "{e}");
    assert_eq!(
        serde_json::to_string(&parse("tap:t0,queues=2").unwrap()).unwrap(),
        "\"tap:t0,queues=2\""
    );
}

#[test]
fn keepalives_go_three_times_per_peer_timeout_at_most_once_a_second() {
    let tick = Duration::from_millis(100);
    let peer = |ms| Carrier::Peer {
        timeout: Duration::from_millis(ms),
    };
    assert_eq!(Carrier::AlwaysOn.keepalive_interval(tick), None);
    assert_eq!(
        peer(3000).keepalive_interval(tick),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        peer(60_000).keepalive_interval(tick),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        peer(1000).keepalive_interval(tick),
        Some(Duration::from_nanos(333_333_333))
    );
    assert_eq!(peer(250).keepalive_interval(tick), Some(tick));
}
