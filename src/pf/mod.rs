//! PF resources: the VF table, numvfs, per-port queue pairs, MACs and socket paths.
//!
//! - `pool.rs`: a pool of DMA channels (2048 for VFs; a separate software budget for PV ports).
//! - `resources.rs`: `Pf`, the run-time state: numvfs (changed through 0, like sysfs), each
//!   VF's channel count, and the pools they come from.
//! - this file: limits, errors, the static start configuration and port descriptions.
//!
//! Port ids are fixed: VF i is port i, PV port j is port `TOTAL_VFS + j`, whatever numvfs is,
//! and the uplink (when there is one) is the last port, `UPLINK_PORT_ID`.

mod pool;
mod resources;

pub use pool::ChannelPool;
pub use resources::{NumVfsChange, Pf};

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
/// Queue pairs PV ports may take in all: the software path's budget, apart from the pool.
pub const PV_CHANNEL_BUDGET: u32 = 512;

/// Why a PF configuration or change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PfError {
    #[error("numvfs {0} is out of range: the adapter has 0..={TOTAL_VFS} VFs")]
    NumVfs(u32),
    #[error("{0} PV ports is out of range 0..={MAX_PV_PORTS}")]
    PvPorts(u32),
    #[error("{0} channels per VF is out of range 1..={MAX_CHANNELS_PER_VF}")]
    Channels(u32),
    #[error("not enough DMA channels: {requested} requested, {free} of {total} free")]
    ChannelsExhausted {
        requested: u32,
        free: u32,
        total: u32,
    },
    #[error("MTU {0} is out of range {MIN_MTU}..={MAX_MTU}")]
    Mtu(u32),
    #[error("{0} channels per PV port is out of range 1..={MAX_CHANNELS_PER_VF}")]
    PvChannels(u32),
    #[error("PV port MTU {0} is out of range {MIN_MTU}..={MAX_MTU}")]
    PvMtu(u32),
    #[error(
        "numvfs is {current}: set it to 0 before setting {requested} (as with sysfs sriov_numvfs)"
    )]
    NumVfsBusy { current: u16, requested: u16 },
    #[error("vf {vf} does not exist: numvfs is {numvfs}")]
    NoSuchVf { vf: u32, numvfs: u16 },
    #[error("vf {0} is attached to a frontend: detach it before changing its channels")]
    VfAttached(u16),
}

/// What kind of port, and its index among its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    Vf(u16),
    Pv(u16),
    /// The PF's wire (a TAP device or a VXLAN tunnel).
    Uplink,
}

impl PortKind {
    /// A VF (the VF knobs apply), not a PV port.
    pub fn is_vf(self) -> bool {
        matches!(self, PortKind::Vf(_))
    }
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
    /// The vhost-user socket: ours to bind, or with `client` the frontend's to connect to.
    pub socket: PathBuf,
    /// Client mode (OVS's `dpdkvhostuserclient`): QEMU serves `socket` (`server=on`) and the
    /// port connects to it, and again after either side restarts.
    pub client: bool,
}

/// The validated PF configuration.
#[derive(Debug, Clone)]
pub struct PfConfig {
    pub socket_dir: PathBuf,
    pub numvfs: u16,
    pub pv_ports: u16,
    pub channels_per_vf: u16,
    /// Queue pairs of each PV port (default: `channels_per_vf`).
    pub pv_channels: u16,
    /// MTU of the VFs.
    pub mtu: u16,
    /// MTU of the PV ports (default: `mtu`). The PV NIC is the device that migrates with the
    /// guest, so hosts whose adapters differ (VF channels, MTU) keep it the same.
    pub pv_mtu: u16,
    /// New VFs connect to `DIR/vfN.sock` (client mode) instead of listening in `socket_dir`.
    pub vf_client_dir: Option<PathBuf>,
    /// Per VF, the socket it connects to (None: its own socket), over `vf_client_dir`.
    pub vf_client_paths: std::collections::BTreeMap<u16, Option<PathBuf>>,
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
            pv_mtu: mtu,
            vf_client_dir: None,
            vf_client_paths: Default::default(),
        })
    }

    /// The PV ports' own queue pairs and MTU where given (else those of the VFs).
    pub fn with_pv_ports(
        mut self,
        channels: Option<u32>,
        mtu: Option<u32>,
    ) -> Result<PfConfig, PfError> {
        if let Some(c) = channels {
            self.pv_channels = u16::try_from(c)
                .ok()
                .filter(|n| (1..=MAX_CHANNELS_PER_VF).contains(n))
                .ok_or(PfError::PvChannels(c))?;
        }
        if let Some(m) = mtu {
            self.pv_mtu = u16::try_from(m)
                .ok()
                .filter(|m| (MIN_MTU..=MAX_MTU).contains(m))
                .ok_or(PfError::PvMtu(m))?;
        }
        Ok(self)
    }

    /// The socket a new VF `vf` connects to in client mode, if VFs start in client mode.
    pub fn vf_client_path(&self, vf: u16) -> Option<PathBuf> {
        if let Some(p) = self.vf_client_paths.get(&vf) {
            return p.clone();
        }
        let dir = self.vf_client_dir.as_ref()?;
        Some(socket_path(dir, &port_name(vf_port_id(vf))))
    }

    /// The description of VF `vf` with `channels` queue pairs, connecting to `client` if given
    /// (else listening on its socket in `socket_dir`).
    pub fn vf_spec(&self, vf: u16, channels: u16, client: Option<&Path>) -> PortSpec {
        let name = port_name(vf_port_id(vf));
        PortSpec {
            id: vf_port_id(vf),
            kind: PortKind::Vf(vf),
            socket: client.map_or_else(|| socket_path(&self.socket_dir, &name), Path::to_path_buf),
            client: client.is_some(),
            name,
            mac: Some(default_vf_mac(vf)),
            queue_pairs: channels,
            mtu: self.mtu,
        }
    }

    /// The description of PV port `pv`.
    pub fn pv_spec(&self, pv: u16) -> PortSpec {
        let name = port_name(pv_port_id(pv));
        PortSpec {
            id: pv_port_id(pv),
            kind: PortKind::Pv(pv),
            socket: socket_path(&self.socket_dir, &name),
            client: false,
            name,
            mac: None,
            queue_pairs: self.pv_channels,
            mtu: self.pv_mtu,
        }
    }
}

/// Port id of VF `vf`.
pub fn vf_port_id(vf: u16) -> PortId {
    PortId(vf)
}

/// Port id of PV port `pv` (after every possible VF).
pub fn pv_port_id(pv: u16) -> PortId {
    PortId(TOTAL_VFS + pv)
}

/// Port id of the uplink.
pub const UPLINK_PORT_ID: PortId = PortId(TOTAL_VFS + MAX_PV_PORTS);

/// The name of the port with id `id` (`vf3`, `pv0`, `uplink`): its spec's, its socket's and
/// its capture interface's.
pub fn port_name(id: PortId) -> String {
    match id.0 {
        v if v < TOTAL_VFS => format!("vf{v}"),
        p if p < TOTAL_VFS + MAX_PV_PORTS => format!("pv{}", p - TOTAL_VFS),
        _ if id == UPLINK_PORT_ID => "uplink".to_string(),
        other => format!("port{other}"),
    }
}

/// The id of the port named `name` (`vf3`, `pv0`, `uplink`), the inverse of `port_name`.
pub fn port_id_by_name(name: &str) -> Option<PortId> {
    if name == "uplink" {
        return Some(UPLINK_PORT_ID);
    }
    let num = |rest: &str| rest.parse::<u16>().ok().filter(|_| !rest.starts_with('+'));
    if let Some(v) = name.strip_prefix("vf").and_then(num) {
        return (v < TOTAL_VFS).then(|| vf_port_id(v));
    }
    let p = name.strip_prefix("pv").and_then(num)?;
    (p < MAX_PV_PORTS).then(|| pv_port_id(p))
}

/// Number of port ids: every possible VF and PV port, and the uplink.
pub const PORT_SLOTS: usize = (TOTAL_VFS + MAX_PV_PORTS + 1) as usize;

/// The description of the uplink port: `queues` queue pairs (TAP queues; 1 for VXLAN),
/// frames up to `mtu` bytes of payload.
pub fn uplink_spec(queues: u16, mtu: u16) -> PortSpec {
    PortSpec {
        id: UPLINK_PORT_ID,
        kind: PortKind::Uplink,
        name: port_name(UPLINK_PORT_ID),
        mac: None,
        queue_pairs: queues,
        mtu,
        socket: PathBuf::new(),
        client: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_and_ids_match() {
        for id in [
            vf_port_id(0),
            vf_port_id(253),
            pv_port_id(0),
            pv_port_id(63),
            UPLINK_PORT_ID,
        ] {
            assert_eq!(port_id_by_name(&port_name(id)), Some(id));
        }
        for bad in ["vf254", "pv64", "vf", "vf+1", "eth0", "uplink0", "pv-1"] {
            assert_eq!(port_id_by_name(bad), None, "{bad}");
        }
    }

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
        assert_eq!(
            PfConfig::new(d.clone(), 255, 1, 2, 1500).unwrap_err(),
            PfError::NumVfs(255)
        );
        assert_eq!(
            PfConfig::new(d.clone(), 4, 1, 0, 1500).unwrap_err(),
            PfError::Channels(0)
        );
        assert_eq!(
            PfConfig::new(d.clone(), 4, 1, 65, 1500).unwrap_err(),
            PfError::Channels(65)
        );
        assert_eq!(
            PfConfig::new(d.clone(), 4, 1, 2, 9001).unwrap_err(),
            PfError::Mtu(9001)
        );
        assert!(PfConfig::new(d.clone(), 254, 1, 8, 9000).is_ok());
        let base = PfConfig::new(d, 4, 1, 4, 9000).unwrap();
        let pv = base.clone().with_pv_ports(Some(2), Some(1450)).unwrap();
        assert_eq!((pv.pv_spec(0).queue_pairs, pv.pv_spec(0).mtu), (2, 1450));
        assert_eq!(
            (
                pv.vf_spec(0, 4, None).queue_pairs,
                pv.vf_spec(0, 4, None).mtu
            ),
            (4, 9000)
        );
        let same = base.clone().with_pv_ports(None, None).unwrap();
        assert_eq!(
            (same.pv_spec(0).queue_pairs, same.pv_spec(0).mtu),
            (4, 9000)
        );
        assert_eq!(
            base.clone()
                .with_pv_ports(Some(65), None)
                .unwrap_err()
                .to_string(),
            "65 channels per PV port is out of range 1..=64"
        );
        assert_eq!(
            base.with_pv_ports(None, Some(67)).unwrap_err().to_string(),
            "PV port MTU 67 is out of range 68..=9000"
        );
    }

    #[test]
    fn port_ids_are_fixed_vfs_then_pv() {
        let c = PfConfig::new(PathBuf::from("/s"), 2, 1, 2, 1500).unwrap();
        let vf = c.vf_spec(1, 4, None);
        assert_eq!(
            (vf.name.as_str(), vf.id, vf.queue_pairs),
            ("vf1", PortId(1), 4)
        );
        assert_eq!(vf.socket, PathBuf::from("/s/vf1.sock"));
        let pv = c.pv_spec(0);
        assert_eq!(
            (pv.kind, pv.id, pv.mac),
            (PortKind::Pv(0), PortId(254), None)
        );
    }
}
