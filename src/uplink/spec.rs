//! The `--uplink` option value (and the config file's `uplink` string): which wire the PF has,
//! parsed into an [`UplinkSpec`], printed back in the same syntax, and the MTU arithmetic that
//! follows from it (what VXLAN adds on the wire).
//!
//! ```text
//! tap:IFNAME[,queues=N]
//! vxlan:local=IP:PORT,remote=IP:PORT[,remote=IP:PORT...],vni=N[,carrier=on|peer][,peer-timeout-ms=N]
//!       [,offload=on|off]
//! ```
//!
//! IPv6 addresses go in brackets (`[2001:db8::1]:4789`). Keys are case-sensitive; an unknown
//! key, a repeated key (other than `remote`) or a missing required key is an error.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// The TAP syntax, shown in error messages.
pub const TAP_SYNTAX: &str = "tap:IFNAME[,queues=N]";
/// The VXLAN syntax, shown in error messages.
pub const VXLAN_SYNTAX: &str = "vxlan:local=IP:PORT,remote=IP:PORT[,remote=IP:PORT...],vni=N\
                                [,carrier=on|peer][,peer-timeout-ms=N][,offload=on|off]";
/// Both syntaxes, for a value that is neither.
pub const UPLINK_SYNTAX: &str = "tap:IFNAME[,queues=N] or vxlan:local=IP:PORT,remote=IP:PORT\
                                 [,remote=IP:PORT...],vni=N[,carrier=on|peer][,peer-timeout-ms=N][,offload=on|off]";

/// Longest Linux interface name (IFNAMSIZ 16 less the NUL).
pub const IFNAME_MAX: usize = 15;
/// Most queues a Linux TAP device takes (MAX_TAP_QUEUES).
pub const TAP_QUEUES_MAX: u32 = 256;
/// Largest VXLAN network identifier (24 bits).
pub const VNI_MAX: u32 = 0x00FF_FFFF;
/// How long a remote stays "heard from" for `carrier=peer` unless `peer-timeout-ms` says.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_millis(3000);
/// Longest `peer-timeout-ms` accepted (one hour).
pub const PEER_TIMEOUT_MAX_MS: u64 = 3_600_000;
/// The underlay MTU when `--uplink-mtu` is not given.
pub const DEFAULT_UNDERLAY_MTU: u32 = 1500;

/// Ethernet header without VLAN tag or FCS.
const ETH_HDR: u32 = 14;
/// VXLAN header (RFC 7348).
const VXLAN_HDR: u32 = 8;
const UDP_HDR: u32 = 8;
const IPV4_HDR: u32 = 20;
const IPV6_HDR: u32 = 40;

/// The PF's wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UplinkSpec {
    /// A TAP device of the host (created if missing), with `queues` queues (IFF_MULTI_QUEUE
    /// when more than one).
    Tap { name: String, queues: u32 },
    /// VXLAN over UDP to other sriov-emu instances or Linux vxlan devices.
    Vxlan(VxlanSpec),
}

/// A VXLAN uplink: one local UDP endpoint, the remotes every flooded frame goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Where the UDP socket is bound.
    pub local: SocketAddr,
    /// The remote VTEPs, in the order given; at least one, no duplicates, the family of `local`.
    pub remotes: Vec<SocketAddr>,
    /// The VXLAN network identifier, 0..=0xFFFFFF.
    pub vni: u32,
    /// When the uplink reports carrier.
    pub carrier: Carrier,
    /// UDP GSO on send and GRO on receive where the kernel has them (`offload=on`, the
    /// default). Off, every datagram is its own send and receive: an underlay capture then
    /// shows each datagram as it is, where with GSO it shows trains of up to 64 KiB.
    pub offload: bool,
}

/// When a VXLAN uplink has carrier (the state a VF with link state `auto` follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Always (`carrier=on`, the default), like a Linux vxlan device.
    AlwaysOn,
    /// While at least one remote was heard from within `timeout` (`carrier=peer`).
    Peer { timeout: Duration },
}

impl Carrier {
    /// How often an emulator with this carrier sends its remotes keepalives: every second, or
    /// a third of the peer timeout when that is shorter (never under `min`, the carrier
    /// watcher's period), so that a peer counts as gone after about three missed keepalives,
    /// not when one comes a little late. `None` with `carrier=on` (no keepalives).
    pub fn keepalive_interval(&self, min: Duration) -> Option<Duration> {
        match self {
            Carrier::AlwaysOn => None,
            Carrier::Peer { timeout } => Some((*timeout / 3).min(Duration::from_secs(1)).max(min)),
        }
    }
}

/// Why an `--uplink` value is refused. Each message names the fault and shows the syntax.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("uplink {input:?} has no kind: expected {UPLINK_SYNTAX}")]
    MissingKind { input: String },
    #[error("uplink kind {kind:?} is unknown: expected {UPLINK_SYNTAX}")]
    UnknownKind { kind: String },
    #[error("tap interface name {name:?} {reason}: expected {TAP_SYNTAX}")]
    TapName { name: String, reason: &'static str },
    /// An item between commas that is not `key=value` (or is empty).
    #[error("{kind} uplink option {item:?} is not key=value: expected {syntax}")]
    NotKeyValue {
        kind: &'static str,
        item: String,
        syntax: &'static str,
    },
    #[error(
        "{kind} uplink option {key:?} is unknown (keys are case-sensitive): expected {syntax}"
    )]
    UnknownKey {
        kind: &'static str,
        key: String,
        syntax: &'static str,
    },
    #[error("{kind} uplink option {key:?} is given twice: expected {syntax}")]
    DuplicateKey {
        kind: &'static str,
        key: &'static str,
        syntax: &'static str,
    },
    #[error("{kind} uplink option {key:?} is missing: expected {syntax}")]
    MissingKey {
        kind: &'static str,
        key: &'static str,
        syntax: &'static str,
    },
    #[error("tap uplink queues={value:?} is not a number in 1..={TAP_QUEUES_MAX}: expected {TAP_SYNTAX}")]
    Queues { value: String },
    #[error("vxlan uplink {key}={value:?} is not IP:PORT (IPv6 in brackets, port 1..=65535): expected {VXLAN_SYNTAX}")]
    Address { key: &'static str, value: String },
    #[error("vxlan uplink remote {remote} is not a unicast address: expected {VXLAN_SYNTAX}")]
    RemoteNotUnicast { remote: SocketAddr },
    #[error("vxlan uplink remote {remote} is given twice: expected {VXLAN_SYNTAX}")]
    DuplicateRemote { remote: SocketAddr },
    #[error("vxlan uplink remote {remote} is not of the address family of local {local}: expected {VXLAN_SYNTAX}")]
    FamilyMismatch {
        local: SocketAddr,
        remote: SocketAddr,
    },
    #[error("vxlan uplink vni={value:?} is not a number in 0..={VNI_MAX} (24 bits): expected {VXLAN_SYNTAX}")]
    Vni { value: String },
    #[error("vxlan uplink carrier={value:?} is neither on nor peer: expected {VXLAN_SYNTAX}")]
    CarrierMode { value: String },
    #[error("vxlan uplink peer-timeout-ms={value:?} is not a number in 1..={PEER_TIMEOUT_MAX_MS}: expected {VXLAN_SYNTAX}")]
    PeerTimeout { value: String },
    #[error("vxlan uplink peer-timeout-ms is given without carrier=peer: expected {VXLAN_SYNTAX}")]
    PeerTimeoutWithoutPeer,
    #[error("vxlan uplink offload={value:?} is neither on nor off: expected {VXLAN_SYNTAX}")]
    Offload { value: String },
}

impl UplinkSpec {
    /// Bytes the uplink adds on the wire around a frame (the inner Ethernet header is part of
    /// the frame): 0 for TAP; for VXLAN 8 (VXLAN) + 8 (UDP) + 20 (IPv4) = 36, or + 40 (IPv6)
    /// = 56, after the family of `local`.
    pub fn overhead(&self) -> u32 {
        match self {
            UplinkSpec::Tap { .. } => 0,
            UplinkSpec::Vxlan(v) => {
                let ip = if v.local.is_ipv4() {
                    IPV4_HDR
                } else {
                    IPV6_HDR
                };
                VXLAN_HDR + UDP_HDR + ip
            }
        }
    }

    /// The longest frame (Ethernet header included, FCS not) the uplink carries.
    ///
    /// VXLAN: `underlay_mtu` is the IP MTU of the path to the remotes (`--uplink-mtu`, default
    /// 1500), and a frame fits when `frame_len + overhead() <= underlay_mtu`: 1464 over IPv4 and
    /// 1444 over IPv6 with the default. TAP: `underlay_mtu` is the TAP device's own MTU, which
    /// counts no Ethernet header, so the longest frame is `underlay_mtu + 14`.
    pub fn max_frame_len(&self, underlay_mtu: u32) -> u32 {
        match self {
            UplinkSpec::Tap { .. } => underlay_mtu.saturating_add(ETH_HDR),
            UplinkSpec::Vxlan(_) => underlay_mtu.saturating_sub(self.overhead()),
        }
    }

    /// The MTU a guest may use on this uplink: [`max_frame_len`](Self::max_frame_len) less the
    /// 14-byte Ethernet header. No room is kept for a VLAN tag, as Linux keeps none: a vxlan
    /// device over a 1500-byte underlay gets MTU 1450 (IPv4) or 1430 (IPv6), and so does this.
    /// A full-size frame with a VLAN tag is 4 bytes over `max_frame_len` and does not fit.
    pub fn guest_mtu(&self, underlay_mtu: u32) -> u32 {
        self.max_frame_len(underlay_mtu).saturating_sub(ETH_HDR)
    }
}

impl fmt::Display for UplinkSpec {
    /// The canonical form: options in the syntax's order, defaults left out. Parsing it gives
    /// back the same value for any value `from_str` made (a hand-built one with a VNI over 24
    /// bits or a sub-millisecond timeout prints, but does not parse back the same).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UplinkSpec::Tap { name, queues } => {
                write!(f, "tap:{name}")?;
                if *queues != 1 {
                    write!(f, ",queues={queues}")?;
                }
                Ok(())
            }
            UplinkSpec::Vxlan(v) => {
                write!(f, "vxlan:local={}", v.local)?;
                for r in &v.remotes {
                    write!(f, ",remote={r}")?;
                }
                write!(f, ",vni={}", v.vni)?;
                if let Carrier::Peer { timeout } = v.carrier {
                    write!(f, ",carrier=peer")?;
                    if timeout != DEFAULT_PEER_TIMEOUT {
                        write!(f, ",peer-timeout-ms={}", timeout.as_millis())?;
                    }
                }
                if !v.offload {
                    write!(f, ",offload=off")?;
                }
                Ok(())
            }
        }
    }
}

impl FromStr for UplinkSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, SpecError> {
        let Some((kind, rest)) = s.split_once(':') else {
            return Err(SpecError::MissingKind {
                input: s.to_string(),
            });
        };
        match kind {
            "tap" => parse_tap(rest),
            "vxlan" => parse_vxlan(rest).map(UplinkSpec::Vxlan),
            _ => Err(SpecError::UnknownKind {
                kind: kind.to_string(),
            }),
        }
    }
}

impl serde::Serialize for UplinkSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for UplinkSpec {
    /// From a string in the `--uplink` syntax (the config file's `uplink = "..."`).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `key=value` items after the kind, split on commas; `None` for an empty item or one without
/// `=` (or with an empty key or value).
fn items(rest: &str) -> impl Iterator<Item = (&str, Option<(&str, &str)>)> {
    rest.split(',').map(|item| {
        let kv = item
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty());
        (item, kv)
    })
}

/// A decimal number made of ASCII digits only (no sign, no spaces), at most `max`.
fn decimal(value: &str, max: u64) -> Option<u64> {
    if value.is_empty() || value.len() > 20 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u64>().ok().filter(|n| *n <= max)
}

/// Why `name` cannot be a Linux interface name, if it cannot.
fn ifname_fault(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > IFNAME_MAX {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c == ',' || c.is_whitespace())
    {
        Some("contains '/', ':', ',' or whitespace")
    } else {
        None
    }
}

fn parse_tap(rest: &str) -> Result<UplinkSpec, SpecError> {
    const KIND: &str = "tap";
    let (name, opts) = match rest.split_once(',') {
        Some((name, opts)) => (name, Some(opts)),
        None => (rest, None),
    };
    if let Some(reason) = ifname_fault(name) {
        return Err(SpecError::TapName {
            name: name.to_string(),
            reason,
        });
    }
    let mut queues = None;
    for (item, kv) in opts.into_iter().flat_map(items) {
        let Some((key, value)) = kv else {
            return Err(SpecError::NotKeyValue {
                kind: KIND,
                item: item.to_string(),
                syntax: TAP_SYNTAX,
            });
        };
        match key {
            "queues" => {
                if queues.is_some() {
                    return Err(SpecError::DuplicateKey {
                        kind: KIND,
                        key: "queues",
                        syntax: TAP_SYNTAX,
                    });
                }
                let n = decimal(value, TAP_QUEUES_MAX.into())
                    .filter(|n| *n >= 1)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| SpecError::Queues {
                        value: value.to_string(),
                    })?;
                queues = Some(n);
            }
            _ => {
                return Err(SpecError::UnknownKey {
                    kind: KIND,
                    key: key.to_string(),
                    syntax: TAP_SYNTAX,
                })
            }
        }
    }
    Ok(UplinkSpec::Tap {
        name: name.to_string(),
        queues: queues.unwrap_or(1),
    })
}

/// `IP:PORT` with a port other than 0.
fn socket_addr(key: &'static str, value: &str) -> Result<SocketAddr, SpecError> {
    value
        .parse::<SocketAddr>()
        .ok()
        .filter(|a| a.port() != 0)
        .ok_or_else(|| SpecError::Address {
            key,
            value: value.to_string(),
        })
}

fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !a.is_unspecified() && !a.is_multicast() && !a.is_broadcast(),
        IpAddr::V6(a) => !a.is_unspecified() && !a.is_multicast(),
    }
}

fn parse_vxlan(rest: &str) -> Result<VxlanSpec, SpecError> {
    const KIND: &str = "vxlan";
    let dup = |key| SpecError::DuplicateKey {
        kind: KIND,
        key,
        syntax: VXLAN_SYNTAX,
    };
    let mut local = None;
    let mut remotes: Vec<SocketAddr> = Vec::new();
    let mut vni = None;
    let mut peer_carrier = None;
    let mut timeout = None;
    let mut offload = None;
    // `vxlan:` alone lacks `local` first, rather than having an empty option.
    let opts = (!rest.is_empty()).then_some(rest);
    for (item, kv) in opts.into_iter().flat_map(items) {
        let Some((key, value)) = kv else {
            return Err(SpecError::NotKeyValue {
                kind: KIND,
                item: item.to_string(),
                syntax: VXLAN_SYNTAX,
            });
        };
        match key {
            "local" => {
                if local.is_some() {
                    return Err(dup("local"));
                }
                local = Some(socket_addr("local", value)?);
            }
            "remote" => {
                let r = socket_addr("remote", value)?;
                if !is_unicast(r.ip()) {
                    return Err(SpecError::RemoteNotUnicast { remote: r });
                }
                if remotes.contains(&r) {
                    return Err(SpecError::DuplicateRemote { remote: r });
                }
                remotes.push(r);
            }
            "vni" => {
                if vni.is_some() {
                    return Err(dup("vni"));
                }
                let n = decimal(value, VNI_MAX.into())
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| SpecError::Vni {
                        value: value.to_string(),
                    })?;
                vni = Some(n);
            }
            "carrier" => {
                if peer_carrier.is_some() {
                    return Err(dup("carrier"));
                }
                peer_carrier = Some(match value {
                    "on" => false,
                    "peer" => true,
                    _ => {
                        return Err(SpecError::CarrierMode {
                            value: value.to_string(),
                        })
                    }
                });
            }
            "peer-timeout-ms" => {
                if timeout.is_some() {
                    return Err(dup("peer-timeout-ms"));
                }
                let ms = decimal(value, PEER_TIMEOUT_MAX_MS)
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| SpecError::PeerTimeout {
                        value: value.to_string(),
                    })?;
                timeout = Some(Duration::from_millis(ms));
            }
            "offload" => {
                if offload.is_some() {
                    return Err(dup("offload"));
                }
                offload = Some(match value {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(SpecError::Offload {
                            value: value.to_string(),
                        })
                    }
                });
            }
            _ => {
                return Err(SpecError::UnknownKey {
                    kind: KIND,
                    key: key.to_string(),
                    syntax: VXLAN_SYNTAX,
                })
            }
        }
    }
    let missing = |key| SpecError::MissingKey {
        kind: KIND,
        key,
        syntax: VXLAN_SYNTAX,
    };
    let local = local.ok_or_else(|| missing("local"))?;
    if remotes.is_empty() {
        return Err(missing("remote"));
    }
    if let Some(r) = remotes.iter().find(|r| r.is_ipv4() != local.is_ipv4()) {
        return Err(SpecError::FamilyMismatch { local, remote: *r });
    }
    let vni = vni.ok_or_else(|| missing("vni"))?;
    let carrier = match (peer_carrier.unwrap_or(false), timeout) {
        (true, t) => Carrier::Peer {
            timeout: t.unwrap_or(DEFAULT_PEER_TIMEOUT),
        },
        (false, None) => Carrier::AlwaysOn,
        (false, Some(_)) => return Err(SpecError::PeerTimeoutWithoutPeer),
    };
    Ok(VxlanSpec {
        local,
        remotes,
        vni,
        carrier,
        offload: offload.unwrap_or(true),
    })
}

#[cfg(test)]
#[path = "spec_tests.rs"]
mod tests;
