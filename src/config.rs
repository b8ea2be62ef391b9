//! `--config FILE.toml`: the emulator's start configuration (PF, ports, per-VF knobs), checked
//! with the same validation as the control commands. Flags on the command line win over the
//! file. Example: fixtures/config.toml.

use crate::daemon::{Daemon, DaemonError};
use crate::faults::FaultSpec;
use crate::pf::{default_vf_mac, PfError};
use crate::vf::knobs::{self, Knob, KnobError, KnobValues, KNOBS};
use crate::vf::{SettingsError, SettingsUpdate, VfSettings};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

/// Why a configuration file is refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the file's keys and types (`path` is `None` for `ConfigFile::parse`).
    #[error("cannot parse config file{}", at(path.as_deref()))]
    Parse {
        path: Option<PathBuf>,
        #[source]
        source: toml::de::Error,
    },
    #[error("config file: vf {index}: does not exist: numvfs is {numvfs}")]
    NoSuchVf { index: u32, numvfs: u16 },
    #[error("config file: vf {index}: is configured twice")]
    VfTwice { index: u32 },
    /// A `[[vf]]` table's knobs, refused before anything starts.
    #[error("config file: vf {index}")]
    VfCheck {
        index: u32,
        #[source]
        source: VfKnobError,
    },
    /// A `[[fault]]` table refused (checked before anything starts, or by the emulator).
    #[error("config file: fault {index} (port {port})")]
    Fault {
        index: usize,
        port: String,
        #[source]
        source: DaemonError,
    },
    /// A `[[vf]]` table refused by the running emulator.
    #[error("config file: vf {index}")]
    VfApply {
        index: u32,
        #[source]
        source: DaemonError,
    },
}

/// Why a `[[vf]]` table's knob values are refused.
#[derive(Debug, thiserror::Error)]
pub enum VfKnobError {
    #[error(transparent)]
    Knob(#[from] KnobError),
    #[error(transparent)]
    Channels(#[from] PfError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

/// ` PATH` for a message about a file, or nothing.
fn at(path: Option<&Path>) -> String {
    path.map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// The file's contents. Unknown keys are errors (a typo must not be silently ignored).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub socket_dir: Option<PathBuf>,
    pub vf_client_dir: Option<PathBuf>,
    pub control: Option<PathBuf>,
    pub control_group: Option<String>,
    /// `--socket-group`: a group name or gid for every port socket.
    pub socket_group: Option<String>,
    /// `--socket-mode`: `"0660"` or `0o660`.
    pub socket_mode: Option<crate::ownership::SocketMode>,
    /// `--metrics-listen`: `"127.0.0.1:9464"`.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub numvfs: Option<u32>,
    pub pv_ports: Option<u32>,
    pub channels_per_vf: Option<u32>,
    pub mtu: Option<u32>,
    pub pv_channels: Option<u32>,
    pub pv_mtu: Option<u32>,
    pub fdb_aging: Option<u64>,
    pub flow_learning: Option<bool>,
    pub stats_interval: Option<u64>,
    /// `--uplink`'s value, as a string.
    pub uplink: Option<crate::uplink::UplinkSpec>,
    pub uplink_mtu: Option<u32>,
    pub uplink_rate: Option<u32>,
    #[serde(default)]
    pub vf: Vec<VfConfig>,
    /// Faults injected from the start (`fault-set`'s arguments, keys in either case).
    #[serde(default)]
    pub fault: Vec<FaultSpec>,
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
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: Some(path.to_path_buf()),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse { path: None, source })
    }

    /// Checks every `[[vf]]` against `numvfs` and the settings rules, before anything starts.
    pub fn check_vfs(&self, numvfs: u16) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for v in &self.vf {
            let index = v.index;
            if index >= u32::from(numvfs) {
                return Err(ConfigError::NoSuchVf { index, numvfs });
            }
            if !seen.insert(index) {
                return Err(ConfigError::VfTwice { index });
            }
            let check = |source: VfKnobError| ConfigError::VfCheck { index, source };
            if let Some(c) = v.knobs.channels().map_err(|e| check(e.into()))? {
                if !(1..=u32::from(crate::pf::MAX_CHANNELS_PER_VF)).contains(&c) {
                    return Err(check(PfError::Channels(c).into()));
                }
            }
            v.knobs.client_path().map_err(|e| check(e.into()))?;
            let mac = default_vf_mac(index as u16);
            v.knobs
                .settings
                .apply(&VfSettings::new(mac))
                .map_err(|e| check(e.into()))?;
        }
        Ok(())
    }

    /// The client-mode sockets the `[[vf]]` tables give (None: the VF's own socket), for the
    /// PF's configuration, so those VFs connect from the start.
    pub fn vf_client_paths(&self) -> std::collections::BTreeMap<u16, Option<PathBuf>> {
        self.vf
            .iter()
            .filter_map(|v| Some((u16::try_from(v.index).ok()?, v.knobs.client_path().ok()??)))
            .collect()
    }

    /// Applies the `[[vf]]` tables to a running daemon (the control commands' code path).
    pub fn apply_vfs(&self, d: &Daemon) -> Result<(), ConfigError> {
        for v in &self.vf {
            let index = v.index;
            let apply = |source| ConfigError::VfApply { index, source };
            let channels = v.knobs.channels().map_err(|e| ConfigError::VfCheck {
                index,
                source: e.into(),
            })?;
            if let Some(c) = channels {
                d.set_vf_channels(index, c).map_err(apply)?;
            }
            // `client_path` is not applied here: it is in the PF's configuration from the
            // start (`vf_client_paths`), so the VF never listens on a socket of its own first.
            let update = &v.knobs.settings;
            if *update != SettingsUpdate::default() {
                d.vf_set(index, update).map_err(apply)?;
            }
        }
        Ok(())
    }

    /// Checks the `[[fault]]` tables' arguments (before anything starts).
    pub fn check_faults(&self) -> Result<(), ConfigError> {
        self.fault.iter().enumerate().try_for_each(|(index, f)| {
            f.check()
                .map(drop)
                .map_err(|e| fault_error(index, f, e.into()))
        })
    }

    /// Sets the `[[fault]]` tables' faults on a running daemon (`fault-set`'s code path).
    pub fn apply_faults(&self, d: &Daemon) -> Result<(), ConfigError> {
        for (index, f) in self.fault.iter().enumerate() {
            let (kind, fault) = f.check().map_err(|e| fault_error(index, f, e.into()))?;
            d.fault_set(&f.port, kind, fault)
                .map_err(|e| fault_error(index, f, e))?;
        }
        Ok(())
    }
}

/// `[[fault]]` table `index` (`f`) refused.
fn fault_error(index: usize, f: &FaultSpec, source: DaemonError) -> ConfigError {
    ConfigError::Fault {
        index,
        port: f.port.clone(),
        source,
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
        // The commented-out top-level keys parse too, uncommented.
        let top = &text[..text.find("[[vf]]").unwrap()];
        let all: String = top
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(k) if k.starts_with(|c: char| c.is_ascii_lowercase()) && k.contains(" = ") => {
                    k
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = ConfigFile::parse(&all).unwrap_or_else(|e| panic!("{all}\n{e}"));
        assert_eq!(c.socket_group.as_deref(), Some("kvm"));
        assert_eq!(c.socket_mode.map(|m| m.bits()), Some(0o660));
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    }

    /// The error and its causes, as `main` prints them.
    fn chain(e: ConfigError) -> String {
        crate::ErrorChain(&e).to_string()
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let e = chain(ConfigFile::parse("numvfs = \"four\"").unwrap_err());
        assert!(e.starts_with("cannot parse config file: "), "{e}");
        assert!(e.contains("numvfs"), "{e}");
        assert!(chain(ConfigFile::parse("numvfz = 4").unwrap_err()).contains("numvfz"));
        let c = ConfigFile::parse("[[vf]]\nindex = 9\nvlan = 5").unwrap();
        assert!(chain(c.check_vfs(4).unwrap_err()).contains("vf 9: does not exist"));
        let c = ConfigFile::parse("[[vf]]\nindex = 1\nvlan = 5000").unwrap();
        let e = chain(c.check_vfs(4).unwrap_err());
        assert!(
            e.starts_with("config file: vf 1: VLAN 5000 is out of range"),
            "{e}"
        );
        let c = ConfigFile::parse("[[vf]]\nindex = 1\n[[vf]]\nindex = 1").unwrap();
        assert!(chain(c.check_vfs(4).unwrap_err()).contains("twice"));
        let c = ConfigFile::parse("[[vf]]\nindex = 1\nchannels = 65").unwrap();
        assert!(chain(c.check_vfs(4).unwrap_err())
            .contains("vf 1: 65 channels per VF is out of range 1..=64"));
    }

    #[test]
    fn a_file_that_cannot_be_read_or_parsed_is_named_with_the_cause() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = ConfigFile::load(&missing).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        let e = chain(e);
        assert!(
            e.starts_with(&format!("cannot read config file {}: ", missing.display())),
            "{e}"
        );
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "numvfs = [").unwrap();
        let e = ConfigFile::load(&bad).unwrap_err();
        let ConfigError::Parse { path, source } = &e else {
            panic!("{e:?}");
        };
        assert_eq!(path.as_deref(), Some(bad.as_path()));
        assert!(std::error::Error::source(&e).is_some());
        let e = chain(ConfigFile::load(&bad).unwrap_err());
        assert!(
            e.starts_with(&format!("cannot parse config file {}: ", bad.display())),
            "{e}"
        );
        assert!(e.ends_with(&source.to_string()), "{e}");
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
            let e = chain(ConfigFile::parse(text).unwrap_err());
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // The message lists the keys a [[vf]] table takes.
        let e = chain(ConfigFile::parse("[[vf]]\nindex = 1\nvlna = 5").unwrap_err());
        assert!(e.contains("expected one of `index`, `mac`, `vlan`"), "{e}");
        let c = ConfigFile::parse("[[vf]]\nindex = 1\nchannels = -3").unwrap();
        assert!(
            chain(c.check_vfs(4).unwrap_err()).contains("vf 1: -3 channels per VF is out of range")
        );
    }
}
