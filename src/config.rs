//! `--config FILE.toml`: the emulator's start configuration (PF, ports, per-VF knobs), checked
//! with the same validation as the control commands. Flags on the command line win over the
//! file. Example: fixtures/config.toml.

use crate::daemon::Daemon;
use crate::pf::{default_vf_mac, PfError};
use crate::vf::knobs::{self, Knob, KnobValues, KNOBS};
use crate::vf::{SettingsUpdate, VfSettings};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// Why a configuration file is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {msg}")]
    Parse { path: PathBuf, msg: String },
    #[error("config file: vf {index}: {msg}")]
    Vf { index: u32, msg: String },
}

/// The file's contents. Unknown keys are errors (a typo must not be silently ignored).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub socket_dir: Option<PathBuf>,
    pub control: Option<PathBuf>,
    pub numvfs: Option<u32>,
    pub pv_ports: Option<u32>,
    pub channels_per_vf: Option<u32>,
    pub mtu: Option<u32>,
    pub fdb_aging: Option<u64>,
    pub flow_learning: Option<bool>,
    pub stats_interval: Option<u64>,
    #[serde(default)]
    pub vf: Vec<VfConfig>,
}

/// One `[[vf]]` table: `index` and the knobs of `ip link set ... vf N`, by their config file
/// keys (`vf::KNOBS`). Unknown keys and values of the wrong type are errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VfConfig {
    pub index: u32,
    pub knobs: KnobValues,
}

/// The keys a `[[vf]]` table may have.
static VF_KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    std::iter::once("index")
        .chain(KNOBS.iter().map(|k| k.toml))
        .collect()
});

/// A key of a `[[vf]]` table. Read on its own so that the parser points at a wrong key.
enum VfKey {
    Index,
    Knob(&'static Knob),
}

impl<'de> Deserialize<'de> for VfKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        if key == "index" {
            return Ok(VfKey::Index);
        }
        knobs::by_toml(&key)
            .map(VfKey::Knob)
            .ok_or_else(|| de::Error::unknown_field(&key, &VF_KEYS))
    }
}

/// The value of a knob in a `[[vf]]` table, put into `out`. The type is checked while the
/// value is read, so that the parser points at a wrong value.
struct KnobValue<'a> {
    knob: &'static Knob,
    out: &'a mut KnobValues,
}

impl<'de> de::DeserializeSeed<'de> for KnobValue<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        self.knob
            .set_json(&v, self.out)
            .map_err(|e| de::Error::custom(format!("`{}` {e}, not {v}", self.knob.toml)))
    }
}

impl<'de> Deserialize<'de> for VfConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Table;
        impl<'de> de::Visitor<'de> for Table {
            type Value = VfConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a [[vf]] table")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<VfConfig, A::Error> {
                let mut index = None;
                let mut knobs = KnobValues::default();
                while let Some(key) = map.next_key::<VfKey>()? {
                    match key {
                        VfKey::Index => index = Some(map.next_value::<u32>()?),
                        VfKey::Knob(knob) => map.next_value_seed(KnobValue {
                            knob,
                            out: &mut knobs,
                        })?,
                    }
                }
                let index = index.ok_or_else(|| de::Error::missing_field("index"))?;
                Ok(VfConfig { index, knobs })
            }
        }
        d.deserialize_map(Table)
    }
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|msg| ConfigError::Parse {
            path: path.to_path_buf(),
            msg,
        })
    }

    pub fn parse(text: &str) -> Result<ConfigFile, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks every `[[vf]]` against `numvfs` and the settings rules, before anything starts.
    pub fn check_vfs(&self, numvfs: u16) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for v in &self.vf {
            let err = |msg: String| ConfigError::Vf {
                index: v.index,
                msg,
            };
            if v.index >= u32::from(numvfs) {
                return Err(err(format!("does not exist: numvfs is {numvfs}")));
            }
            if !seen.insert(v.index) {
                return Err(err("is configured twice".into()));
            }
            if let Some(c) = v.knobs.channels().map_err(|e| err(e.to_string()))? {
                if !(1..=u32::from(crate::pf::MAX_CHANNELS_PER_VF)).contains(&c) {
                    return Err(err(PfError::Channels(c).to_string()));
                }
            }
            let mac = default_vf_mac(v.index as u16);
            v.knobs
                .settings
                .apply(&VfSettings::new(mac))
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    }

    /// Applies the `[[vf]]` tables to a running daemon (the control commands' code path).
    pub fn apply_vfs(&self, d: &Daemon) -> Result<(), ConfigError> {
        for v in &self.vf {
            let err = |e: &dyn std::error::Error| ConfigError::Vf {
                index: v.index,
                msg: e.to_string(),
            };
            if let Some(c) = v.knobs.channels().map_err(|e| err(&e))? {
                d.set_vf_channels(v.index, c).map_err(|e| err(&e))?;
            }
            let update = &v.knobs.settings;
            if *update != SettingsUpdate::default() {
                d.vf_set(v.index, update).map_err(|e| err(&e))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_fixture_parses_and_checks() {
        let text = include_str!("../fixtures/config.toml");
        let c = ConfigFile::parse(text).unwrap();
        assert_eq!(c.numvfs, Some(8));
        assert!(c.vf.iter().any(|v| v.knobs.settings.vlan == Some(100)));
        c.check_vfs(8).unwrap();
    }

    #[test]
    fn bad_files_are_clear_errors() {
        assert!(ConfigFile::parse("numvfs = \"four\"")
            .unwrap_err()
            .contains("numvfs"));
        assert!(ConfigFile::parse("numvfz = 4")
            .unwrap_err()
            .contains("numvfz"));
        let c = ConfigFile::parse("[[vf]]\nindex = 9\nvlan = 5").unwrap();
        assert!(c
            .check_vfs(4)
            .unwrap_err()
            .to_string()
            .contains("vf 9: does not exist"));
        let c = ConfigFile::parse("[[vf]]\nindex = 1\nvlan = 5000").unwrap();
        assert!(c
            .check_vfs(4)
            .unwrap_err()
            .to_string()
            .contains("VLAN 5000 is out of range"));
        let c = ConfigFile::parse("[[vf]]\nindex = 1\n[[vf]]\nindex = 1").unwrap();
        assert!(c.check_vfs(4).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn vf_tables_refuse_unknown_keys_and_wrong_types() {
        for (text, want) in [
            ("[[vf]]\nindex = 1\nvlna = 5", "unknown field `vlna`"),
            (
                "[[vf]]\nindex = 1\nvlan = \"five\"",
                "`vlan` expects an integer",
            ),
            (
                "[[vf]]\nindex = 1\nspoofchk = 1",
                "`spoofchk` expects a boolean",
            ),
            (
                "[[vf]]\nindex = 1\nlink_state = true",
                "`link_state` expects a string",
            ),
            (
                "[[vf]]\nindex = 1\nmax_tx_rate = 1.5",
                "`max_tx_rate` expects an integer",
            ),
            (
                "[[vf]]\nindex = 1\nchannels = \"4\"",
                "`channels` expects an integer",
            ),
            // QMP and ip link names are not config keys.
            (
                "[[vf]]\nindex = 1\nlink-state = \"auto\"",
                "unknown field `link-state`",
            ),
            ("[[vf]]\nindex = 1\nrate = 5", "unknown field `rate`"),
            ("[[vf]]\nvlan = 5", "missing field `index`"),
            ("[[vf]]\nindex = -1", "index"),
        ] {
            let e = ConfigFile::parse(text).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // The message lists the keys a [[vf]] table takes.
        let e = ConfigFile::parse("[[vf]]\nindex = 1\nvlna = 5").unwrap_err();
        assert!(e.contains("expected one of `index`, `mac`, `vlan`"), "{e}");
        let c = ConfigFile::parse("[[vf]]\nindex = 1\nchannels = -3").unwrap();
        assert!(c
            .check_vfs(4)
            .unwrap_err()
            .to_string()
            .contains("-3 channels per VF is out of range"));
    }
}
