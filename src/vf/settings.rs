//! The host's knobs of one VF (`ip link set DEV vf N ...`), validated as a whole.

use crate::switch::policy::{EdgePolicy, TPID_8021AD, TPID_8021Q};
use crate::wire::MacAddr;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Largest VLAN id.
pub const MAX_VLAN: u16 = 4095;
/// Largest 802.1p priority.
pub const MAX_QOS: u8 = 7;
/// Largest rate, in Mbit/s (the modelled adapter is 10G).
pub const MAX_RATE_MBPS: u32 = 10_000;

/// The VLAN protocol of a port VLAN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum VlanProto {
    #[default]
    #[serde(rename = "802.1Q")]
    Dot1Q,
    #[serde(rename = "802.1ad")]
    Dot1Ad,
}

impl VlanProto {
    pub fn tpid(self) -> u16 {
        match self {
            VlanProto::Dot1Q => TPID_8021Q,
            VlanProto::Dot1Ad => TPID_8021AD,
        }
    }
}

impl FromStr for VlanProto {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "802.1q" => Ok(VlanProto::Dot1Q),
            "802.1ad" => Ok(VlanProto::Dot1Ad),
            _ => Err(SettingsError::Proto(s.to_string())),
        }
    }
}

impl fmt::Display for VlanProto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VlanProto::Dot1Q => "802.1Q",
            VlanProto::Dot1Ad => "802.1ad",
        })
    }
}

/// `ip link ... vf N state auto|enable|disable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Follows the PF's uplink (up while there is no uplink).
    #[default]
    Auto,
    Enable,
    Disable,
}

impl FromStr for LinkState {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(LinkState::Auto),
            "enable" => Ok(LinkState::Enable),
            "disable" => Ok(LinkState::Disable),
            _ => Err(SettingsError::LinkState(s.to_string())),
        }
    }
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Auto => "auto",
            LinkState::Enable => "enable",
            LinkState::Disable => "disable",
        })
    }
}

/// Why a setting is refused. Nothing changes when one is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("invalid MAC address {0:?}: a VF MAC must be unicast and not zero")]
    Mac(String),
    #[error("VLAN {0} is out of range 0..={MAX_VLAN} (0 removes the port VLAN)")]
    Vlan(i64),
    #[error("QoS {0} is out of range 0..={MAX_QOS}")]
    Qos(i64),
    #[error("QoS and proto need a port VLAN (vlan 1..={MAX_VLAN})")]
    QosWithoutVlan,
    #[error("VLAN protocol {0:?} is not 802.1Q or 802.1ad")]
    Proto(String),
    #[error("link state {0:?} is not auto, enable or disable")]
    LinkState(String),
    #[error("{which} {value} Mbit/s is out of range 0..={MAX_RATE_MBPS} (0 = unlimited)")]
    Rate { which: &'static str, value: i64 },
    #[error("promiscuous mode needs a trusted VF: set trust on first (or in the same command)")]
    PromiscUntrusted,
    #[error("min_tx_rate {min} Mbit/s is above max_tx_rate {max} Mbit/s")]
    MinAboveMax { min: u32, max: u32 },
}

/// The settings of one VF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VfSettings {
    pub mac: MacAddr,
    /// Port VLAN id; 0 = none.
    pub vlan: u16,
    pub qos: u8,
    pub proto: VlanProto,
    pub spoofchk: bool,
    pub trust: bool,
    /// Promiscuous: the VF also receives unknown unicast of its VLAN. Trusted VFs only;
    /// taking trust away turns it off (as i40e does).
    pub promisc: bool,
    pub link_state: LinkState,
    /// Mbit/s, 0 = unlimited.
    pub max_tx_rate: u32,
    pub min_tx_rate: u32,
}

impl VfSettings {
    /// The defaults of a new VF: its MAC, no VLAN, spoof checking on, not trusted, link auto.
    pub fn new(mac: MacAddr) -> Self {
        VfSettings {
            mac,
            vlan: 0,
            qos: 0,
            proto: VlanProto::Dot1Q,
            spoofchk: true,
            trust: false,
            promisc: false,
            link_state: LinkState::Auto,
            max_tx_rate: 0,
            min_tx_rate: 0,
        }
    }

    /// Whether the VF's link is up, given the PF uplink's state.
    pub fn link_up(&self, uplink_up: bool) -> bool {
        match self.link_state {
            LinkState::Enable => true,
            LinkState::Disable => false,
            LinkState::Auto => uplink_up,
        }
    }
}

impl VfSettings {
    /// What the switch enforces at the port's edge (`is_vf`: the VF knobs apply; a PV port
    /// has none), with the PF's carrier `carrier` (which link state `auto` follows).
    pub fn edge_policy(&self, is_vf: bool, carrier: bool) -> EdgePolicy {
        EdgePolicy {
            is_vf,
            link_up: self.link_up(carrier),
            mac: self.mac,
            spoofchk: self.spoofchk,
            trust: self.trust,
            promisc: self.promisc && self.trust,
            vlan: self.vlan,
            qos: self.qos,
            tpid: self.proto.tpid(),
            max_tx_rate: self.max_tx_rate,
            min_tx_rate: self.min_tx_rate,
        }
    }
}

/// A change to some of the settings, in raw form as a user gave it (filled through
/// `knobs::KNOBS` by the control commands and the config file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsUpdate {
    pub mac: Option<String>,
    pub vlan: Option<i64>,
    pub qos: Option<i64>,
    pub proto: Option<String>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub promisc: Option<bool>,
    pub link_state: Option<String>,
    pub max_tx_rate: Option<i64>,
    pub min_tx_rate: Option<i64>,
}

fn rate(which: &'static str, v: i64) -> Result<u32, SettingsError> {
    u32::try_from(v)
        .ok()
        .filter(|r| *r <= MAX_RATE_MBPS)
        .ok_or(SettingsError::Rate { which, value: v })
}

impl SettingsUpdate {
    /// The settings after this update, or the first problem. As with `ip link`, setting a VLAN
    /// without qos/proto resets them to 0 / 802.1Q.
    pub fn apply(&self, cur: &VfSettings) -> Result<VfSettings, SettingsError> {
        let mut s = *cur;
        if let Some(m) = &self.mac {
            let mac: MacAddr = m.parse().map_err(|_| SettingsError::Mac(m.clone()))?;
            if !mac.is_assignable() {
                return Err(SettingsError::Mac(m.clone()));
            }
            s.mac = mac;
        }
        if let Some(v) = self.vlan {
            s.vlan = u16::try_from(v)
                .ok()
                .filter(|v| *v <= MAX_VLAN)
                .ok_or(SettingsError::Vlan(v))?;
            s.qos = 0;
            s.proto = VlanProto::Dot1Q;
        }
        if let Some(q) = self.qos {
            s.qos = u8::try_from(q)
                .ok()
                .filter(|q| *q <= MAX_QOS)
                .ok_or(SettingsError::Qos(q))?;
        }
        if let Some(p) = &self.proto {
            s.proto = p.parse()?;
        }
        if s.vlan == 0 && (s.qos != 0 || s.proto != VlanProto::Dot1Q) {
            return Err(SettingsError::QosWithoutVlan);
        }
        if let Some(b) = self.spoofchk {
            s.spoofchk = b;
        }
        if let Some(b) = self.trust {
            s.trust = b;
            if !b {
                s.promisc = false;
            }
        }
        if let Some(b) = self.promisc {
            if b && !s.trust {
                return Err(SettingsError::PromiscUntrusted);
            }
            s.promisc = b;
        }
        if let Some(l) = &self.link_state {
            s.link_state = l.parse()?;
        }
        if let Some(r) = self.max_tx_rate {
            s.max_tx_rate = rate("max_tx_rate", r)?;
        }
        if let Some(r) = self.min_tx_rate {
            s.min_tx_rate = rate("min_tx_rate", r)?;
        }
        if s.max_tx_rate != 0 && s.min_tx_rate > s.max_tx_rate {
            return Err(SettingsError::MinAboveMax {
                min: s.min_tx_rate,
                max: s.max_tx_rate,
            });
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> VfSettings {
        VfSettings::new("02:00:00:00:00:01".parse().unwrap())
    }

    #[test]
    fn defaults_are_like_a_new_vf() {
        let s = base();
        assert!(s.spoofchk && !s.trust && s.vlan == 0 && s.link_state == LinkState::Auto);
        assert!(s.link_up(true) && !s.link_up(false));
    }

    #[test]
    fn valid_updates_apply() {
        let u = SettingsUpdate {
            vlan: Some(100),
            qos: Some(5),
            proto: Some("802.1ad".into()),
            max_tx_rate: Some(100),
            min_tx_rate: Some(10),
            link_state: Some("disable".into()),
            ..Default::default()
        };
        let s = u.apply(&base()).unwrap();
        assert_eq!(
            (s.vlan, s.qos, s.proto, s.max_tx_rate, s.min_tx_rate),
            (100, 5, VlanProto::Dot1Ad, 100, 10)
        );
        assert_eq!(s.proto.tpid(), 0x88a8);
        assert!(!s.link_up(true));
        // A new VLAN without qos/proto resets them, as ip link does.
        let s2 = SettingsUpdate {
            vlan: Some(7),
            ..Default::default()
        }
        .apply(&s)
        .unwrap();
        assert_eq!((s2.vlan, s2.qos, s2.proto), (7, 0, VlanProto::Dot1Q));
    }

    #[test]
    fn promiscuous_mode_needs_trust_and_leaves_with_it() {
        let on = SettingsUpdate {
            trust: Some(true),
            promisc: Some(true),
            ..Default::default()
        }
        .apply(&base())
        .unwrap();
        assert!(on.promisc && on.edge_policy(true, true).promisc);
        let off = SettingsUpdate {
            trust: Some(false),
            ..Default::default()
        }
        .apply(&on)
        .unwrap();
        assert!(!off.promisc && !off.edge_policy(true, true).promisc);
    }

    #[test]
    fn bad_values_are_refused() {
        let cases: Vec<(SettingsUpdate, SettingsError)> = vec![
            (
                SettingsUpdate {
                    mac: Some("01:00:5e:00:00:01".into()),
                    ..Default::default()
                },
                SettingsError::Mac("01:00:5e:00:00:01".into()),
            ),
            (
                SettingsUpdate {
                    mac: Some("00:00:00:00:00:00".into()),
                    ..Default::default()
                },
                SettingsError::Mac("00:00:00:00:00:00".into()),
            ),
            (
                SettingsUpdate {
                    mac: Some("nonsense".into()),
                    ..Default::default()
                },
                SettingsError::Mac("nonsense".into()),
            ),
            (
                SettingsUpdate {
                    vlan: Some(4096),
                    ..Default::default()
                },
                SettingsError::Vlan(4096),
            ),
            (
                SettingsUpdate {
                    vlan: Some(-1),
                    ..Default::default()
                },
                SettingsError::Vlan(-1),
            ),
            (
                SettingsUpdate {
                    vlan: Some(5),
                    qos: Some(8),
                    ..Default::default()
                },
                SettingsError::Qos(8),
            ),
            (
                SettingsUpdate {
                    qos: Some(3),
                    ..Default::default()
                },
                SettingsError::QosWithoutVlan,
            ),
            (
                SettingsUpdate {
                    vlan: Some(5),
                    proto: Some("802.1x".into()),
                    ..Default::default()
                },
                SettingsError::Proto("802.1x".into()),
            ),
            (
                SettingsUpdate {
                    link_state: Some("up".into()),
                    ..Default::default()
                },
                SettingsError::LinkState("up".into()),
            ),
            (
                SettingsUpdate {
                    promisc: Some(true),
                    ..Default::default()
                },
                SettingsError::PromiscUntrusted,
            ),
            (
                SettingsUpdate {
                    trust: Some(false),
                    promisc: Some(true),
                    ..Default::default()
                },
                SettingsError::PromiscUntrusted,
            ),
            (
                SettingsUpdate {
                    max_tx_rate: Some(-5),
                    ..Default::default()
                },
                SettingsError::Rate {
                    which: "max_tx_rate",
                    value: -5,
                },
            ),
            (
                SettingsUpdate {
                    max_tx_rate: Some(100),
                    min_tx_rate: Some(200),
                    ..Default::default()
                },
                SettingsError::MinAboveMax { min: 200, max: 100 },
            ),
        ];
        for (u, want) in cases {
            assert_eq!(u.apply(&base()), Err(want.clone()), "{u:?}");
            assert!(!want.to_string().is_empty());
        }
    }
}
