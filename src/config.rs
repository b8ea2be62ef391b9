//! `--config FILE.toml`: the emulator's start configuration (PF, ports, per-VF knobs), checked
//! with the same validation as the control commands. Flags on the command line win over the
//! file. Example: fixtures/config.toml.

use crate::daemon::{Daemon, DaemonError};
use crate::pf::{default_vf_mac, PfError};
use crate::vf::{SettingsUpdate, VfSettings};
use serde::Deserialize;
use std::path::{Path, PathBuf};

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

/// One `[[vf]]` table: the knobs of `ip link set ... vf N`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VfConfig {
    pub index: u32,
    pub mac: Option<String>,
    pub vlan: Option<i64>,
    pub qos: Option<i64>,
    pub proto: Option<String>,
    pub spoofchk: Option<bool>,
    pub trust: Option<bool>,
    pub link_state: Option<String>,
    pub max_tx_rate: Option<i64>,
    pub min_tx_rate: Option<i64>,
    pub channels: Option<u32>,
}

impl VfConfig {
    pub fn update(&self) -> SettingsUpdate {
        SettingsUpdate {
            mac: self.mac.clone(),
            vlan: self.vlan,
            qos: self.qos,
            proto: self.proto.clone(),
            spoofchk: self.spoofchk,
            trust: self.trust,
            link_state: self.link_state.clone(),
            max_tx_rate: self.max_tx_rate,
            min_tx_rate: self.min_tx_rate,
        }
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
            if let Some(c) = v.channels {
                if !(1..=u32::from(crate::pf::MAX_CHANNELS_PER_VF)).contains(&c) {
                    return Err(err(PfError::Channels(c).to_string()));
                }
            }
            let mac = default_vf_mac(v.index as u16);
            v.update()
                .apply(&VfSettings::new(mac))
                .map_err(|e| err(e.to_string()))?;
        }
        Ok(())
    }

    /// Applies the `[[vf]]` tables to a running daemon (the control commands' code path).
    pub fn apply_vfs(&self, d: &Daemon) -> Result<(), ConfigError> {
        for v in &self.vf {
            let err = |e: DaemonError| ConfigError::Vf {
                index: v.index,
                msg: e.to_string(),
            };
            if let Some(c) = v.channels {
                d.set_vf_channels(v.index, c).map_err(err)?;
            }
            let update = v.update();
            if update != SettingsUpdate::default() {
                d.vf_set(v.index, &update).map_err(err)?;
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
        assert!(c.vf.iter().any(|v| v.vlan == Some(100)));
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
}
