//! `Pf`: the run-time resource state of the adapter.

use super::{
    ChannelPool, PfConfig, PfError, PortSpec, MAX_CHANNELS_PER_VF, PV_CHANNEL_BUDGET,
    TOTAL_CHANNELS, TOTAL_VFS,
};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What a numvfs change did: VFs in `removed` went away, VFs in `added` were created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumVfsChange {
    pub removed: Range<u16>,
    pub added: Range<u16>,
}

/// numvfs, each VF's channels, and the pools.
#[derive(Debug, Clone)]
pub struct Pf {
    cfg: PfConfig,
    /// Channels of VF i, for i in 0..numvfs.
    vf_channels: Vec<u16>,
    /// The socket VF i connects to in client mode (None: it listens on its own).
    vf_client: Vec<Option<PathBuf>>,
    pool: ChannelPool,
    pv_pool: ChannelPool,
}

impl Pf {
    /// The adapter as `cfg` starts it: `cfg.numvfs` VFs and the PV ports, channels taken.
    pub fn new(cfg: PfConfig) -> Result<Pf, PfError> {
        let mut pv_pool = ChannelPool::new(PV_CHANNEL_BUDGET);
        pv_pool.take(u32::from(cfg.pv_ports) * u32::from(cfg.pv_channels))?;
        let mut pf = Pf {
            vf_channels: Vec::new(),
            vf_client: Vec::new(),
            pool: ChannelPool::new(TOTAL_CHANNELS),
            pv_pool,
            cfg,
        };
        let n = pf.cfg.numvfs;
        pf.cfg.numvfs = 0;
        pf.set_numvfs(u32::from(n))?;
        Ok(pf)
    }

    pub fn config(&self) -> &PfConfig {
        &self.cfg
    }

    pub fn numvfs(&self) -> u16 {
        self.vf_channels.len() as u16
    }

    pub fn pool(&self) -> &ChannelPool {
        &self.pool
    }

    pub fn pv_pool(&self) -> &ChannelPool {
        &self.pv_pool
    }

    /// Sets numvfs. Like sysfs `sriov_numvfs`: a non-zero count changes only through 0. New
    /// VFs take the default channel count each; all of them must fit in the pool.
    pub fn set_numvfs(&mut self, n: u32) -> Result<NumVfsChange, PfError> {
        let n = u16::try_from(n)
            .ok()
            .filter(|n| *n <= TOTAL_VFS)
            .ok_or(PfError::NumVfs(n))?;
        let current = self.numvfs();
        if n == current {
            return Ok(NumVfsChange {
                removed: 0..0,
                added: 0..0,
            });
        }
        if current != 0 && n != 0 {
            return Err(PfError::NumVfsBusy {
                current,
                requested: n,
            });
        }
        if n == 0 {
            let freed: u32 = self.vf_channels.iter().map(|c| u32::from(*c)).sum();
            self.pool.give_back(freed);
            self.vf_channels.clear();
            self.vf_client.clear();
            return Ok(NumVfsChange {
                removed: 0..current,
                added: 0..0,
            });
        }
        let per_vf = self.cfg.channels_per_vf;
        self.pool.take(u32::from(n) * u32::from(per_vf))?;
        self.vf_channels = vec![per_vf; usize::from(n)];
        self.vf_client = (0..n).map(|vf| self.cfg.vf_client_path(vf)).collect();
        Ok(NumVfsChange {
            removed: 0..0,
            added: 0..n,
        })
    }

    /// Changes VF `vf`'s channel count; the difference comes from (or goes back to) the pool.
    /// The caller makes sure the VF is detached.
    pub fn set_vf_channels(&mut self, vf: u32, channels: u32) -> Result<(), PfError> {
        let slot = usize::from(self.vf_index(vf)?);
        let new = u16::try_from(channels)
            .ok()
            .filter(|c| (1..=MAX_CHANNELS_PER_VF).contains(c))
            .ok_or(PfError::Channels(channels))?;
        let old = self.vf_channels[slot];
        if new > old {
            self.pool.take(u32::from(new - old))?;
        } else {
            self.pool.give_back(u32::from(old - new));
        }
        self.vf_channels[slot] = new;
        Ok(())
    }

    /// VF `vf`'s index, if it exists; else the error that says how many there are.
    pub fn vf_index(&self, vf: u32) -> Result<u16, PfError> {
        let numvfs = self.numvfs();
        u16::try_from(vf)
            .ok()
            .filter(|v| *v < numvfs)
            .ok_or(PfError::NoSuchVf { vf, numvfs })
    }

    /// Channels of VF `vf`, if it exists.
    pub fn vf_channels(&self, vf: u16) -> Option<u16> {
        self.vf_channels.get(usize::from(vf)).copied()
    }

    /// Makes VF `vf` connect to `path` (client mode), or listen on its own socket (None).
    pub fn set_vf_client_path(&mut self, vf: u32, path: Option<PathBuf>) -> Result<(), PfError> {
        let slot = usize::from(self.vf_index(vf)?);
        self.vf_client[slot] = path;
        Ok(())
    }

    /// The socket VF `vf` connects to, if it exists and is in client mode.
    pub fn vf_client_path(&self, vf: u16) -> Option<&Path> {
        self.vf_client.get(usize::from(vf))?.as_deref()
    }

    /// The description of VF `vf`, if it exists.
    pub fn vf_spec(&self, vf: u16) -> Option<PortSpec> {
        self.vf_channels(vf)
            .map(|c| self.cfg.vf_spec(vf, c, self.vf_client_path(vf)))
    }

    /// Every existing VF and PV port.
    pub fn port_specs(&self) -> Vec<PortSpec> {
        let vfs = (0..self.numvfs()).filter_map(|i| self.vf_spec(i));
        let pvs = (0..self.cfg.pv_ports).map(|j| self.cfg.pv_spec(j));
        vfs.chain(pvs).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pf(numvfs: u32, per_vf: u32) -> Result<Pf, PfError> {
        Pf::new(PfConfig::new(PathBuf::from("/s"), numvfs, 1, per_vf, 1500)?)
    }

    #[test]
    fn full_scale_takes_2032_channels_and_refuses_one_too_many() {
        let mut p = pf(254, 8).unwrap();
        assert_eq!(
            (p.numvfs(), p.pool().used(), p.pool().free()),
            (254, 2032, 16)
        );
        let e = p.set_vf_channels(0, 8 + 17).unwrap_err();
        assert_eq!(
            e,
            PfError::ChannelsExhausted {
                requested: 17,
                free: 16,
                total: 2048
            }
        );
        assert_eq!(p.vf_channels(0), Some(8), "nothing changed");
        p.set_vf_channels(0, 24).unwrap();
        assert_eq!(p.pool().free(), 0);
        p.set_vf_channels(0, 1).unwrap();
        assert_eq!(p.pool().free(), 23);
    }

    #[test]
    fn start_beyond_the_pool_is_refused_with_the_free_count() {
        let e = pf(254, 9).unwrap_err();
        assert_eq!(
            e,
            PfError::ChannelsExhausted {
                requested: 2286,
                free: 2048,
                total: 2048
            }
        );
    }

    #[test]
    fn numvfs_changes_through_zero() {
        let mut p = pf(254, 8).unwrap();
        assert_eq!(
            p.set_numvfs(16).unwrap_err(),
            PfError::NumVfsBusy {
                current: 254,
                requested: 16
            }
        );
        assert_eq!(
            p.set_numvfs(254).unwrap(),
            NumVfsChange {
                removed: 0..0,
                added: 0..0
            }
        );
        assert_eq!(
            p.set_numvfs(0).unwrap(),
            NumVfsChange {
                removed: 0..254,
                added: 0..0
            }
        );
        assert_eq!(p.pool().used(), 0);
        assert_eq!(
            p.set_numvfs(16).unwrap(),
            NumVfsChange {
                removed: 0..0,
                added: 0..16
            }
        );
        assert_eq!((p.pool().used(), p.port_specs().len()), (128, 17));
        assert_eq!(p.set_numvfs(255).unwrap_err(), PfError::NumVfs(255));
        assert!(p.set_vf_channels(16, 2).is_err());
        assert_eq!(p.set_vf_channels(0, 65).unwrap_err(), PfError::Channels(65));
    }
}
