//! PF resources: the VF table, numvfs, per-port queue pairs, MACs and socket paths.
//!
//! This model is static: the ports are fixed at start. The channel pool and run-time
//! numvfs changes build on `PfConfig` and `PortSpec`.

use crate::switch::PortId;
use crate::wire::MacAddr;
use std::path::{Path, PathBuf};

/// `sriov_totalvfs` of the modelled adapter.
pub const TOTAL_VFS: u16 = 254;
/// DMA channels (queue pairs) in the adapter's pool.
pub const TOTAL_CHANNELS: u32 = 2048;
/// Most queue pairs one VF can take.
pub const MAX_CHANNELS_PER_VF: u16 = 64;
/// Most PV ports.
pub const MAX_PV_PORTS: u16 = 64;
/// MTU bounds (the virtio-net MTU feature).
pub const MIN_MTU: u16 = 68;
pub const MAX_MTU: u16 = 9000;
pub const DEFAULT_MTU: u16 = 1500;
pub const DEFAULT_CHANNELS: u16 = 2;
pub const DEFAULT_VFS: u16 = 4;
pub const DEFAULT_PV_PORTS: u16 = 1;

/// Why a PF configuration is refused.
#[derive(Debug, thiserror::Error)]
pub enum PfError {
    #[error("numvfs {0} is out of range: the adapter has 0..={TOTAL_VFS} VFs")]
    NumVfs(u32),
    #[error("{0} PV ports is out of range 0..={MAX_PV_PORTS}")]
    PvPorts(u32),
    #[error("{0} channels per VF is out of range 1..={MAX_CHANNELS_PER_VF}")]
    Channels(u32),
    #[error("{requested} channels requested ({numvfs} VFs x {per_vf}) but the pool has {TOTAL_CHANNELS}")]
    ChannelPool {
        requested: u32,
        numvfs: u16,
        per_vf: u16,
    },
    #[error("MTU {0} is out of range {MIN_MTU}..={MAX_MTU}")]
    Mtu(u32),
}

/// What kind of port, and its index among its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Vf(u16),
    Pv(u16),
}

/// The static description of one switch port.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub id: PortId,
    pub kind: PortKind,
    /// `vf3`, `pv0`: the socket's file stem and the name in logs and counters.
    pub name: String,
    /// The MAC assigned by the host (VFs only).
    pub mac: Option<MacAddr>,
    pub queue_pairs: u16,
    pub mtu: u16,
    pub socket: PathBuf,
}

/// The validated PF configuration.
#[derive(Debug, Clone)]
pub struct PfConfig {
    pub socket_dir: PathBuf,
    pub numvfs: u16,
    pub pv_ports: u16,
    pub channels_per_vf: u16,
    pub pv_channels: u16,
    pub mtu: u16,
}

/// The default MAC of VF `index`: locally administered, stable, `02:00:00:00:<vf>:01`.
pub fn default_vf_mac(index: u16) -> MacAddr {
    let [hi, lo] = index.to_be_bytes();
    MacAddr([0x02, 0x00, 0x00, hi, lo, 0x01])
}

/// The socket path of a port in `dir`.
pub fn socket_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

impl PfConfig {
    /// Validates the numbers; every limit is a clear error, nothing is clamped.
    pub fn new(
        socket_dir: PathBuf,
        numvfs: u32,
        pv_ports: u32,
        channels_per_vf: u32,
        mtu: u32,
    ) -> Result<PfConfig, PfError> {
        let numvfs = u16::try_from(numvfs)
            .ok()
            .filter(|n| *n <= TOTAL_VFS)
            .ok_or(PfError::NumVfs(numvfs))?;
        let pv_ports = u16::try_from(pv_ports)
            .ok()
            .filter(|n| *n <= MAX_PV_PORTS)
            .ok_or(PfError::PvPorts(pv_ports))?;
        let per_vf = u16::try_from(channels_per_vf)
            .ok()
            .filter(|n| (1..=MAX_CHANNELS_PER_VF).contains(n))
            .ok_or(PfError::Channels(channels_per_vf))?;
        let requested = u32::from(numvfs) * u32::from(per_vf);
        if requested > TOTAL_CHANNELS {
            return Err(PfError::ChannelPool {
                requested,
                numvfs,
                per_vf,
            });
        }
        let mtu = u16::try_from(mtu)
            .ok()
            .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
            .ok_or(PfError::Mtu(mtu))?;
        Ok(PfConfig {
            socket_dir,
            numvfs,
            pv_ports,
            channels_per_vf: per_vf,
            pv_channels: per_vf,
            mtu,
        })
    }

    /// Every port: VFs first, then PV ports.
    pub fn ports(&self) -> Vec<PortSpec> {
        let vfs = (0..self.numvfs).map(|i| {
            let name = format!("vf{i}");
            PortSpec {
                id: PortId(i),
                kind: PortKind::Vf(i),
                socket: socket_path(&self.socket_dir, &name),
                name,
                mac: Some(default_vf_mac(i)),
                queue_pairs: self.channels_per_vf,
                mtu: self.mtu,
            }
        });
        let pvs = (0..self.pv_ports).map(|i| {
            let name = format!("pv{i}");
            PortSpec {
                id: PortId(self.numvfs + i),
                kind: PortKind::Pv(i),
                socket: socket_path(&self.socket_dir, &name),
                name,
                mac: None,
                queue_pairs: self.pv_channels,
                mtu: self.mtu,
            }
        });
        vfs.chain(pvs).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_macs_are_stable_and_local() {
        assert_eq!(default_vf_mac(0).to_string(), "02:00:00:00:00:01");
        assert_eq!(default_vf_mac(5).to_string(), "02:00:00:00:05:01");
        assert_eq!(default_vf_mac(253).to_string(), "02:00:00:00:fd:01");
        assert!(default_vf_mac(7).is_local() && default_vf_mac(7).is_assignable());
    }

    #[test]
    fn limits_are_errors_not_clamps() {
        let d = PathBuf::from("/tmp/x");
        assert!(matches!(
            PfConfig::new(d.clone(), 255, 1, 2, 1500),
            Err(PfError::NumVfs(255))
        ));
        assert!(matches!(
            PfConfig::new(d.clone(), 4, 1, 0, 1500),
            Err(PfError::Channels(0))
        ));
        assert!(matches!(
            PfConfig::new(d.clone(), 4, 1, 65, 1500),
            Err(PfError::Channels(65))
        ));
        assert!(matches!(
            PfConfig::new(d.clone(), 254, 1, 9, 1500),
            Err(PfError::ChannelPool { .. })
        ));
        assert!(matches!(
            PfConfig::new(d.clone(), 4, 1, 2, 9001),
            Err(PfError::Mtu(9001))
        ));
        assert!(PfConfig::new(d, 254, 1, 8, 9000).is_ok());
    }

    #[test]
    fn ports_are_vfs_then_pv() {
        let c = PfConfig::new(PathBuf::from("/s"), 2, 1, 2, 1500).unwrap();
        let p = c.ports();
        assert_eq!(p.len(), 3);
        assert_eq!(p[1].name, "vf1");
        assert_eq!(p[1].socket, PathBuf::from("/s/vf1.sock"));
        assert_eq!(p[2].kind, PortKind::Pv(0));
        assert_eq!(p[2].id, PortId(2));
        assert_eq!(p[2].mac, None);
    }
}
