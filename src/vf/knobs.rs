//! The VF knobs, listed once: `KNOBS` gives each knob's name in every vocabulary (QMP `vf-set`
//! argument and `query-vfs` field, `[[vf]]` key of the config file, `ip link` words of
//! `ctl vf N set`), its value type, and where its value goes (`SettingsUpdate`) and comes from
//! (`VfSettings`), or that it is one of the VF's PF resources: its channel count (changed by
//! `Daemon::set_vf_channels`) or the socket it connects to in client mode
//! (`Daemon::set_vf_client_path`). The control commands, the ctl client and the config file read
//! the knobs through this table, so a knob added here reaches all of them.
//!
//! Only the type is checked here; the values are checked as a whole by
//! `SettingsUpdate::apply` (ranges, and rules between knobs such as qos needing a vlan), and the
//! channel count by the PF.

use super::settings::{SettingsUpdate, VfSettings};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// Where a settings knob's value goes and where it is read back from.
pub struct Field<T> {
    /// Puts a value given by a user into an update.
    pub set: fn(&mut SettingsUpdate, T),
    /// The current value, as `query-vfs` shows it.
    pub get: fn(&VfSettings) -> T,
}

/// A knob's value type, and what the knob changes.
pub enum Kind {
    /// A MAC address: a string (`xx:xx:xx:xx:xx:xx`).
    Mac(Field<String>),
    /// An integer.
    Int(Field<i64>),
    /// A boolean: `true`/`false` in JSON and TOML, `on`/`off` as an `ip link` word.
    OnOff(Field<bool>),
    /// One of these words, as a string.
    Choice(&'static [&'static str], Field<String>),
    /// The VF's queue pairs, an integer: taken from the PF's channel pool, not a setting.
    Channels,
    /// The socket the VF connects to in client mode (QEMU serves it), a string; `""`: the VF
    /// listens on its own socket. A PF resource, not a setting.
    ClientPath,
}

/// A VF's PF resources, shown among its knobs.
#[derive(Debug, Clone, Copy)]
pub struct VfResources<'a> {
    pub channels: u16,
    pub client_path: Option<&'a Path>,
}

/// One VF knob.
pub struct Knob {
    /// The `vf-set` argument and the `query-vfs` field.
    pub qmp: &'static str,
    /// The key in a `[[vf]]` table of the config file.
    pub toml: &'static str,
    /// The `ctl vf N set` words: the `ip link` name first, then aliases.
    pub words: &'static [&'static str],
    pub kind: Kind,
    /// A read-only field `query-vfs` shows right after this knob.
    pub shown_with: Option<Derived>,
}

/// A read-only `query-vfs` field computed from the settings.
pub struct Derived {
    pub name: &'static str,
    pub get: fn(&VfSettings) -> Value,
}

/// Every VF knob, in the order `query-vfs` shows them.
pub static KNOBS: &[Knob] = &[
    Knob {
        qmp: "mac",
        toml: "mac",
        words: &["mac"],
        kind: Kind::Mac(Field {
            set: |u, v| u.mac = Some(v),
            get: |s| s.mac.to_string(),
        }),
        shown_with: None,
    },
    Knob {
        qmp: "vlan",
        toml: "vlan",
        words: &["vlan"],
        kind: Kind::Int(Field {
            set: |u, v| u.vlan = Some(v),
            get: |s| i64::from(s.vlan),
        }),
        shown_with: None,
    },
    Knob {
        qmp: "qos",
        toml: "qos",
        words: &["qos"],
        kind: Kind::Int(Field {
            set: |u, v| u.qos = Some(v),
            get: |s| i64::from(s.qos),
        }),
        shown_with: None,
    },
    Knob {
        qmp: "proto",
        toml: "proto",
        words: &["proto"],
        kind: Kind::Choice(
            &["802.1Q", "802.1ad"],
            Field {
                set: |u, v| u.proto = Some(v),
                get: |s| s.proto.to_string(),
            },
        ),
        shown_with: None,
    },
    Knob {
        qmp: "spoofchk",
        toml: "spoofchk",
        words: &["spoofchk"],
        kind: Kind::OnOff(Field {
            set: |u, v| u.spoofchk = Some(v),
            get: |s| s.spoofchk,
        }),
        shown_with: None,
    },
    Knob {
        qmp: "trust",
        toml: "trust",
        words: &["trust"],
        kind: Kind::OnOff(Field {
            set: |u, v| u.trust = Some(v),
            get: |s| s.trust,
        }),
        shown_with: None,
    },
    Knob {
        qmp: "promisc",
        toml: "promisc",
        words: &["promisc"],
        kind: Kind::OnOff(Field {
            set: |u, v| u.promisc = Some(v),
            get: |s| s.promisc,
        }),
        shown_with: None,
    },
    Knob {
        qmp: "link-state",
        toml: "link_state",
        words: &["state"],
        kind: Kind::Choice(
            &["auto", "enable", "disable"],
            Field {
                set: |u, v| u.link_state = Some(v),
                get: |s| s.link_state.to_string(),
            },
        ),
        // `auto` as if the uplink had carrier; `query-vfs` shows the port's actual link.
        shown_with: Some(Derived {
            name: "link-up",
            get: |s| json!(s.link_up(true)),
        }),
    },
    Knob {
        qmp: "max-tx-rate",
        toml: "max_tx_rate",
        words: &["max_tx_rate", "rate"],
        kind: Kind::Int(Field {
            set: |u, v| u.max_tx_rate = Some(v),
            get: |s| i64::from(s.max_tx_rate),
        }),
        shown_with: None,
    },
    Knob {
        qmp: "min-tx-rate",
        toml: "min_tx_rate",
        words: &["min_tx_rate"],
        kind: Kind::Int(Field {
            set: |u, v| u.min_tx_rate = Some(v),
            get: |s| i64::from(s.min_tx_rate),
        }),
        shown_with: None,
    },
    Knob {
        qmp: "channels",
        toml: "channels",
        words: &["channels"],
        kind: Kind::Channels,
        shown_with: None,
    },
    Knob {
        qmp: "client-path",
        toml: "client_path",
        words: &["client_path"],
        kind: Kind::ClientPath,
        shown_with: None,
    },
];

/// The knob whose QMP name is `name`.
pub fn by_qmp(name: &str) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.qmp == name)
}

/// The knob whose config file key is `key`.
pub fn by_toml(key: &str) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.toml == key)
}

/// The knob that the `ctl vf N set` word `word` names.
pub fn by_word(word: &str) -> Option<&'static Knob> {
    KNOBS.iter().find(|k| k.words.contains(&word))
}

/// The `ctl vf N set` words, for messages: `mac, vlan, ..., max_tx_rate|rate, ...`.
pub fn word_list() -> String {
    KNOBS
        .iter()
        .map(|k| k.words.join("|"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON or TOML value of the wrong type for a knob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("expects {expected}")]
pub struct WrongType {
    /// `a string`, `an integer` or `a boolean`.
    pub expected: &'static str,
}

/// Why `ctl vf N set` words or a channel count are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KnobError {
    #[error("unknown VF setting {0:?} (the settings are {list})", list = word_list())]
    UnknownWord(String),
    #[error("{0} needs a value")]
    NoValue(String),
    #[error("{word} takes {expected}, not {value:?}")]
    BadWord {
        word: String,
        expected: &'static str,
        value: String,
    },
    #[error("{0} channels per VF is out of range")]
    Channels(i64),
    #[error(
        "client-path {0:?} is not an absolute socket path of at most 107 bytes \
         (or \"\" for the VF's own socket)"
    )]
    ClientPath(String),
}

/// Values given for some knobs, as a user gave them: only their types are checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KnobValues {
    /// The settings knobs.
    pub settings: SettingsUpdate,
    /// The channel count, unchecked (see `channels`).
    pub channels: Option<i64>,
    /// The client-mode socket, unchecked (see `client_path`).
    pub client_path: Option<String>,
}

impl KnobValues {
    /// No knob is given.
    pub fn is_empty(&self) -> bool {
        *self == KnobValues::default()
    }

    /// The channel count if one is given, refused if it cannot be one (the PF checks its
    /// range and the pool).
    pub fn channels(&self) -> Result<Option<u32>, KnobError> {
        self.channels
            .map(|c| u32::try_from(c).map_err(|_| KnobError::Channels(c)))
            .transpose()
    }

    /// The client-mode socket if one is given: `Some(None)` for `""` (the VF listens on its
    /// own socket), refused unless absolute and short enough for a unix socket address.
    pub fn client_path(&self) -> Result<Option<Option<PathBuf>>, KnobError> {
        let Some(p) = &self.client_path else {
            return Ok(None);
        };
        if p.is_empty() {
            return Ok(Some(None));
        }
        let path = PathBuf::from(p);
        // sun_path holds 108 bytes with the terminating zero.
        if !path.is_absolute() || p.len() > 107 {
            return Err(KnobError::ClientPath(p.clone()));
        }
        Ok(Some(Some(path)))
    }
}

impl Knob {
    /// The type a JSON or TOML value of this knob must have, for messages.
    pub fn expects(&self) -> &'static str {
        match self.kind {
            Kind::Mac(_) | Kind::Choice(..) | Kind::ClientPath => "a string",
            Kind::Int(_) | Kind::Channels => "an integer",
            Kind::OnOff(_) => "a boolean",
        }
    }

    /// Puts a JSON value (a QMP argument, or a config file value) for this knob into `out`.
    pub fn set_json(&self, v: &Value, out: &mut KnobValues) -> Result<(), WrongType> {
        let wrong = || WrongType {
            expected: self.expects(),
        };
        let u = &mut out.settings;
        match &self.kind {
            Kind::Mac(f) | Kind::Choice(_, f) => (f.set)(u, v.as_str().ok_or_else(wrong)?.into()),
            Kind::Int(f) => (f.set)(u, v.as_i64().ok_or_else(wrong)?),
            Kind::OnOff(f) => (f.set)(u, v.as_bool().ok_or_else(wrong)?),
            Kind::Channels => out.channels = Some(v.as_i64().ok_or_else(wrong)?),
            Kind::ClientPath => out.client_path = Some(v.as_str().ok_or_else(wrong)?.into()),
        }
        Ok(())
    }

    /// The JSON value (QMP argument) of `ctl vf N set WORD VALUE`, `word` being one of this
    /// knob's words.
    pub fn word_value(&self, word: &str, value: &str) -> Result<Value, KnobError> {
        let bad = |expected| KnobError::BadWord {
            word: word.into(),
            expected,
            value: value.into(),
        };
        Ok(match self.kind {
            Kind::Mac(_) | Kind::Choice(..) | Kind::ClientPath => json!(value),
            Kind::Int(_) | Kind::Channels => {
                json!(value.parse::<i64>().map_err(|_| bad("a number"))?)
            }
            Kind::OnOff(_) => match value {
                "on" => json!(true),
                "off" => json!(false),
                _ => return Err(bad("on or off")),
            },
        })
    }

    /// The knob's current value as `query-vfs` shows it, of a VF with settings `s` and PF
    /// resources `r`.
    pub fn to_json(&self, s: &VfSettings, r: &VfResources<'_>) -> Value {
        match &self.kind {
            Kind::Mac(f) | Kind::Choice(_, f) => json!((f.get)(s)),
            Kind::Int(f) => json!((f.get)(s)),
            Kind::OnOff(f) => json!((f.get)(s)),
            Kind::Channels => json!(r.channels),
            Kind::ClientPath => json!(r
                .client_path
                .map_or(String::new(), |p| p.display().to_string())),
        }
    }

    /// A valid value of this knob other than `v` (its current value in `query-vfs`), for tests
    /// that go through every knob. Integers go up by one, so the current value must leave room.
    #[cfg(test)]
    pub fn other_value(&self, v: &Value) -> Value {
        match &self.kind {
            Kind::Mac(_) if v == "02:00:00:00:aa:01" => json!("02:00:00:00:bb:01"),
            Kind::Mac(_) => json!("02:00:00:00:aa:01"),
            Kind::Int(_) | Kind::Channels => json!(v.as_i64().unwrap_or(0) + 1),
            Kind::OnOff(_) => json!(!v.as_bool().unwrap_or(false)),
            Kind::Choice(c, _) => json!(c.iter().find(|w| v != *w).unwrap_or(&c[0])),
            Kind::ClientPath if v == "" => json!("/tmp/sriov-emu-test/qemu/vf.sock"),
            Kind::ClientPath => json!(""),
        }
    }

    /// The `ctl vf N set` value word for the JSON value `v`.
    #[cfg(test)]
    pub fn value_word(v: &Value) -> String {
        match v {
            Value::Bool(true) => "on".into(),
            Value::Bool(false) => "off".into(),
            Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }
}

/// Every knob of a VF as `query-vfs` shows it, in table order, each followed by its
/// `shown_with` field.
pub fn json_fields(s: &VfSettings, r: &VfResources<'_>) -> Map<String, Value> {
    let mut m = Map::new();
    for k in KNOBS {
        m.insert(k.qmp.into(), k.to_json(s, r));
        if let Some(d) = &k.shown_with {
            m.insert(d.name.into(), (d.get)(s));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    /// Defaults with room for every knob to change alone (qos needs a VLAN, min <= max,
    /// promisc trust).
    fn base() -> VfSettings {
        SettingsUpdate {
            vlan: Some(100),
            trust: Some(true),
            max_tx_rate: Some(1000),
            ..Default::default()
        }
        .apply(&VfSettings::new("02:00:00:00:00:01".parse().unwrap()))
        .unwrap()
    }

    #[test]
    fn names_are_unique_in_each_vocabulary() {
        let mut qmp = HashSet::from(["vf"]);
        let mut toml = HashSet::from(["index"]);
        let mut words = HashSet::new();
        for k in KNOBS {
            assert!(qmp.insert(k.qmp), "QMP name {} twice", k.qmp);
            assert!(toml.insert(k.toml), "TOML key {} twice", k.toml);
            assert!(!k.words.is_empty(), "{} has no ctl word", k.qmp);
            for w in k.words {
                assert!(words.insert(*w), "ctl word {w} twice");
            }
            assert_eq!(by_qmp(k.qmp).map(|b| b.qmp), Some(k.qmp));
            assert_eq!(by_toml(k.toml).map(|b| b.qmp), Some(k.qmp));
        }
    }

    /// What is set is what is read back, for each knob on its own.
    #[test]
    fn every_knob_reads_back_what_was_set() {
        let base = base();
        let res = VfResources {
            channels: 2,
            client_path: None,
        };
        for k in KNOBS {
            let want = k.other_value(&k.to_json(&base, &res));
            let mut vals = KnobValues::default();
            k.set_json(&want, &mut vals).unwrap();
            assert!(!vals.is_empty(), "{}", k.qmp);
            let s = vals.settings.apply(&base).unwrap();
            let channels = vals
                .channels()
                .unwrap()
                .map_or(2, |c| u16::try_from(c).unwrap());
            let client = vals.client_path().unwrap().flatten();
            let res = VfResources {
                channels,
                client_path: client.as_deref(),
            };
            assert_eq!(k.to_json(&s, &res), want, "{}", k.qmp);
            let fields = json_fields(&s, &res);
            assert_eq!(fields.get(k.qmp), Some(&want), "{}", k.qmp);
        }
    }

    #[test]
    fn every_choice_is_accepted() {
        for k in KNOBS {
            if let Kind::Choice(choices, _) = k.kind {
                for c in choices {
                    let mut vals = KnobValues::default();
                    k.set_json(&json!(c), &mut vals).unwrap();
                    let s = vals.settings.apply(&base()).unwrap();
                    let res = VfResources {
                        channels: 2,
                        client_path: None,
                    };
                    assert_eq!(k.to_json(&s, &res), json!(c), "{}", k.qmp);
                }
            }
        }
    }

    #[test]
    fn wrong_types_and_words_are_refused() {
        let mut vals = KnobValues::default();
        let vlan = by_qmp("vlan").unwrap();
        assert_eq!(
            vlan.set_json(&json!("ten"), &mut vals)
                .unwrap_err()
                .to_string(),
            "expects an integer"
        );
        let trust = by_qmp("trust").unwrap();
        assert!(trust.set_json(&json!(1), &mut vals).is_err());
        assert!(by_qmp("mac")
            .unwrap()
            .set_json(&json!(1), &mut vals)
            .is_err());
        assert!(vals.is_empty());
        assert_eq!(
            by_word("spoofchk")
                .unwrap()
                .word_value("spoofchk", "maybe")
                .unwrap_err()
                .to_string(),
            "spoofchk takes on or off, not \"maybe\""
        );
        assert_eq!(
            by_word("rate")
                .unwrap()
                .word_value("rate", "fast")
                .unwrap_err()
                .to_string(),
            "rate takes a number, not \"fast\""
        );
        let c = KnobValues {
            channels: Some(-3),
            ..Default::default()
        };
        assert_eq!(
            c.channels().unwrap_err().to_string(),
            "-3 channels per VF is out of range"
        );
        let path = |p: &str| KnobValues {
            client_path: Some(p.into()),
            ..Default::default()
        };
        assert!(path("vf0.sock").client_path().is_err(), "relative");
        assert!(path(&format!("/{}", "a".repeat(107)))
            .client_path()
            .is_err());
        assert_eq!(path("").client_path().unwrap(), Some(None));
        assert_eq!(
            path("/run/q/vf0.sock").client_path().unwrap(),
            Some(Some(PathBuf::from("/run/q/vf0.sock")))
        );
    }
}
