//! `sriov-emu run`: the PF's ports, their sockets, the data plane; numvfs and channel changes
//! at run time.

mod faults;

use crate::capture::{CaptureHub, CaptureSession, PcapngOut, PortSet};
use crate::datapath::busy::{Cycles, WorkerSnapshot};
use crate::datapath::DataPlane;
use crate::events::EventBus;
use crate::ownership::SocketOwner;
use crate::pf::{self, Pf, PfConfig, PfError, PortSpec};
use crate::port::Waker;
use crate::switch::{PortId, Switch};
use crate::uplink::{Uplink, UplinkError, UplinkSpec};
use crate::vf::{
    port_event_data, remove_own_socket, ControlLoop, LinkState, LoopError, Port, PortServer,
    PortTable, ServerError, ServerHandle, SettingsError, SettingsUpdate, VfSettings,
};
use crate::wire::MacAddr;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the emulator cannot start or a change is refused.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create socket directory {path}")]
    SocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket directory {path} is not writable")]
    SocketDirNotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Pf(#[from] PfError),
    #[error(
        "min_tx_rate {asked} Mbit/s for vf {vf}: the VFs' guarantees would add up to {total} \
         Mbit/s, more than the wire's {line} Mbit/s"
    )]
    MinRateOversubscribed {
        vf: u32,
        asked: u32,
        total: u64,
        line: u32,
    },
    #[error(transparent)]
    Port(#[from] ServerError),
    #[error("cannot start serving the ports' sockets")]
    ControlLoop(#[from] LoopError),
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot create the data-plane workers' eventfds")]
    Waker(#[source] std::io::Error),
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot open the uplink")]
    Uplink(#[source] UplinkError),
    #[error("cannot start the capture into {path}")]
    Capture {
        path: PathBuf,
        #[source]
        source: crate::capture::PcapngError,
    },
    #[error("cannot start the capture's writer thread")]
    CaptureThread(#[source] std::io::Error),
    #[error(transparent)]
    Fault(#[from] crate::faults::FaultError),
    #[error("port {0:?} does not exist")]
    NoPort(String),
    #[error("VF {vf} is busy (a reset is in progress: an injected fault), try again in {ms} ms")]
    Busy { vf: u32, ms: u64 },
    #[error("no port {0:?} to capture (ports: vfN, pvN, uplink, drops)")]
    CapturePort(String),
    #[error("no capture {0}")]
    NoCapture(u32),
}

/// One FDB entry as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbRow {
    pub mac: MacAddr,
    /// 0: untagged.
    pub vlan: u16,
    /// The port's name (`vf0`, `pv0`, `uplink`).
    pub port: String,
    pub is_static: bool,
    /// Where behind the port the MAC lives (a VXLAN remote's address).
    pub remote: Option<String>,
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub pf: PfConfig,
    pub fdb_aging_secs: u64,
    /// Log the counters this often (until the control plane exists).
    pub stats_interval: Option<Duration>,
    /// Learn flow steering entries from each VF's transmit queues (off by default).
    pub flow_learning: bool,
    /// Busy-poll the rings instead of sleeping until a kick.
    pub poll: bool,
    /// Data-plane worker threads (at least one).
    pub workers: usize,
    /// Pin worker i to `cpus[i % len]`; empty: no pinning.
    pub cpus: Vec<usize>,
    /// The PF's wire, if any.
    pub uplink: Option<UplinkSpec>,
    /// Its MTU (TAP: the device's; VXLAN: the underlay's).
    pub uplink_mtu: u32,
    /// Its line rate, Mbit/s.
    pub uplink_rate: u32,
    /// A capture from the start (`--pcap`).
    pub pcap: Option<CaptureRequest>,
    /// The group and mode of every port socket (`--socket-group`, `--socket-mode`).
    pub socket_owner: SocketOwner,
}

/// A capture to start: into `path` (a ring of files under `max_bytes` when given), of `ports`
/// (names: `vf0`, `pv0`, `uplink`, `drops`; all when `None`), frames cut to `snaplen` bytes.
#[derive(Debug, Clone)]
pub struct CaptureRequest {
    pub path: PathBuf,
    pub ports: Option<Vec<String>>,
    pub snaplen: usize,
    pub max_bytes: Option<u64>,
}

/// The default snap length: the largest frame (MTU 9000 and two VLAN tags).
pub const DEFAULT_SNAPLEN: usize = 9000 + 14 + 8;

/// A running capture as the control plane shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureInfo {
    pub id: u32,
    pub path: PathBuf,
    pub captured: u64,
    pub dropped: u64,
    /// Why the capture stopped writing (its file or pipe failed), if it did.
    pub error: Option<String>,
}

impl DaemonConfig {
    /// The defaults of `sriov-emu run` for `pf`: FDB aging 300 s, no stats log, no flow
    /// learning, event-driven data plane.
    pub fn new(pf: PfConfig) -> Self {
        DaemonConfig {
            pf,
            fdb_aging_secs: crate::switch::DEFAULT_AGING_SECS,
            stats_interval: None,
            flow_learning: false,
            poll: false,
            workers: 1,
            cpus: Vec::new(),
            uplink: None,
            uplink_mtu: crate::uplink::spec::DEFAULT_UNDERLAY_MTU,
            uplink_rate: 10_000,
            pcap: None,
            socket_owner: SocketOwner::default(),
        }
    }
}

/// A running emulator.
pub struct Daemon {
    pf: Mutex<Pf>,
    table: Arc<PortTable>,
    servers: Arc<Mutex<HashMap<PortId, ServerHandle>>>,
    /// Serves every port's vhost-user socket (one thread, plus one for the kicks).
    control: Arc<ControlLoop>,
    switch: Arc<Mutex<Switch>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    socket_dir: PathBuf,
    /// Given to every port socket when it is bound.
    socket_owner: SocketOwner,
    flow_learning: bool,
    events: Arc<EventBus>,
    uplink: Option<Arc<Uplink>>,
    /// The uplink's MTU as configured (TAP: the device's; VXLAN: the underlay's), from which
    /// the guest MTU that fits the wire follows.
    uplink_mtu: u32,
    /// The PF's carrier: the uplink's, or up when there is none. VFs with link state `auto`
    /// follow it.
    carrier: Arc<AtomicBool>,
    /// The running captures (the data plane's tap reads them).
    captures: Arc<CaptureHub>,
    /// The workers' busy and idle cycles.
    cycles: Arc<Cycles>,
    /// How the workers run: busy-polling, and the CPU each is pinned to.
    poll: bool,
    worker_cpus: Vec<Option<usize>>,
}

/// The data-plane workers as `query-workers` shows them.
#[derive(Debug, Clone)]
pub struct WorkersInfo {
    /// What the cycles count (`tsc`, or `monotonic-ns` off x86_64), and its rate.
    pub clock: &'static str,
    pub hz: u64,
    pub poll: bool,
    /// Per worker: its CPU (if pinned) and counters.
    pub workers: Vec<(Option<usize>, WorkerSnapshot)>,
}

fn check_socket_dir(dir: &Path) -> Result<(), DaemonError> {
    std::fs::create_dir_all(dir).map_err(|source| DaemonError::SocketDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let probe = dir.join(format!(".sriov-emu-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(|source| DaemonError::SocketDirNotWritable {
        path: dir.to_path_buf(),
        source,
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// Raises the open-file limit to its hard maximum: every attached port holds a socket, its
/// guest memory and two eventfds per queue.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

impl Daemon {
    /// Binds every port's socket and starts serving. Nothing is left bound on error.
    pub fn start(cfg: DaemonConfig) -> Result<Daemon, DaemonError> {
        check_socket_dir(&cfg.pf.socket_dir)?;
        raise_fd_limit();
        let pf = Pf::new(cfg.pf.clone())?;
        let waker = Arc::new(Waker::new(cfg.workers).map_err(DaemonError::Waker)?);
        let table = Arc::new(PortTable::new(pf::PORT_SLOTS));
        let switch = Arc::new(Mutex::new(Switch::new(cfg.fdb_aging_secs)));
        let stop = Arc::new(AtomicBool::new(false));
        let uplink = match &cfg.uplink {
            Some(spec) => Some(Arc::new(
                Uplink::open(spec, cfg.uplink_mtu).map_err(DaemonError::Uplink)?,
            )),
            None => None,
        };
        let carrier = Arc::new(AtomicBool::new(uplink.as_ref().is_none_or(|u| u.carrier())));
        let worker_cpus: Vec<Option<usize>> = (0..waker.workers())
            .map(|w| (!cfg.cpus.is_empty()).then(|| cfg.cpus[w % cfg.cpus.len()]))
            .collect();
        let daemon = Daemon {
            table: table.clone(),
            servers: Arc::new(Mutex::new(HashMap::new())),
            control: ControlLoop::start()?,
            switch: switch.clone(),
            waker: waker.clone(),
            stop: stop.clone(),
            socket_dir: cfg.pf.socket_dir.clone(),
            socket_owner: cfg.socket_owner,
            flow_learning: cfg.flow_learning,
            events: EventBus::new(),
            pf: Mutex::new(pf.clone()),
            uplink: uplink.clone(),
            uplink_mtu: cfg.uplink_mtu,
            carrier: carrier.clone(),
            captures: Arc::default(),
            cycles: Cycles::new(waker.workers()),
            poll: cfg.poll,
            worker_cpus: worker_cpus.clone(),
        };
        if let Some(req) = &cfg.pcap {
            daemon.capture_start(req)?;
        }
        daemon.add_ports(pf.port_specs())?;
        if let Some(up) = &uplink {
            up.set_rate(cfg.uplink_rate);
            let mtu = u16::try_from(up.max_frame().saturating_sub(14)).unwrap_or(u16::MAX);
            let queues = u16::try_from(up.queues()).unwrap_or(1);
            let port =
                Arc::new(Port::new(pf::uplink_spec(queues, mtu)).with_carrier(carrier.clone()));
            daemon.table.set(port.spec.id, Some(port));
            tracing::info!(
                uplink = %up.spec(),
                max_frame = up.max_frame(),
                carrier = up.carrier(),
                "uplink open"
            );
            let fits = up.spec().guest_mtu(cfg.uplink_mtu);
            let mtu = cfg.pf.mtu.max(cfg.pf.pv_mtu);
            if u32::from(mtu) > fits {
                tracing::warn!(
                    "the ports' MTU {mtu} is above what the uplink carries (guest MTU {fits}): \
                     larger frames to the wire are dropped and counted (drop_mtu); run with \
                     --mtu {fits} (and --pv-mtu) and give guests host_mtu={fits} \
                     (`qemu-args --uplink ...`)"
                );
            }
        }
        for (w, cpu) in worker_cpus.into_iter().enumerate() {
            DataPlane::new(
                table.clone(),
                switch.clone(),
                waker.clone(),
                stop.clone(),
                daemon.events.clone(),
            )
            .with_uplink(uplink.clone())
            .with_captures(daemon.captures.clone())
            .with_cycles(daemon.cycles.clone())
            .worker(w)
            .polling(cfg.poll)
            .on_cpu(cpu)
            .spawn()
            .map_err(DaemonError::Thread)?;
        }
        if let Some(up) = uplink {
            let (table, events, carrier, stop) = (
                table.clone(),
                daemon.events.clone(),
                carrier.clone(),
                stop.clone(),
            );
            let servers = daemon.servers.clone();
            std::thread::Builder::new()
                .name("uplink-carrier".into())
                .spawn(move || watch_carrier(&up, &table, &events, &carrier, &servers, &stop))
                .map_err(DaemonError::Thread)?;
        }
        if let Some(every) = cfg.stats_interval {
            std::thread::Builder::new()
                .name("stats".into())
                .spawn(move || log_stats(&table, every, &stop))
                .map_err(DaemonError::Thread)?;
        }
        tracing::info!(
            dir = %cfg.pf.socket_dir.display(),
            vfs = pf.numvfs(),
            pv_ports = cfg.pf.pv_ports,
            channels_used = pf.pool().used(),
            channels_free = pf.pool().free(),
            "serving"
        );
        Ok(daemon)
    }

    /// Creates, binds and starts `specs`; on error stops the ones already started.
    fn add_ports(&self, specs: Vec<PortSpec>) -> Result<(), DaemonError> {
        let mut bound = Vec::with_capacity(specs.len());
        for spec in specs {
            let port = Arc::new(Port::new(spec).with_carrier(self.carrier.clone()));
            port.rss().set_learning(self.flow_learning);
            match PortServer::bind(
                port,
                &self.socket_owner,
                self.waker.clone(),
                self.events.clone(),
                self.switch.clone(),
            ) {
                Ok(s) => bound.push(s),
                Err(e) => {
                    // Dropping an unstarted server closes its listener; remove its socket.
                    for s in bound {
                        let port = s.port().clone();
                        drop(s);
                        remove_own_socket(&port.spec);
                    }
                    return Err(e.into());
                }
            }
        }
        let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
        for s in bound {
            let port = s.port().clone();
            let handle = s.spawn(&self.control)?;
            self.table.set(port.spec.id, Some(port.clone()));
            servers.insert(port.spec.id, handle);
        }
        self.waker.wake();
        Ok(())
    }

    /// Stops the servers of `ids` (disconnecting their frontends) and empties their slots.
    fn remove_ports(&self, ids: impl IntoIterator<Item = PortId>) {
        let handles: Vec<ServerHandle> = {
            let mut servers = self.servers.lock().unwrap_or_else(|e| e.into_inner());
            ids.into_iter()
                .filter_map(|id| servers.remove(&id))
                .collect()
        };
        for h in &handles {
            self.table.set(h.port().spec.id, None);
        }
        self.waker.wake();
        for h in handles {
            h.stop();
        }
    }

    /// Sets numvfs (through 0 for a non-zero change, as with sysfs). VFs that go away are
    /// disconnected and their sockets removed; new VFs listen at once.
    pub fn set_numvfs(&self, n: u32) -> Result<(), DaemonError> {
        let mut pf = self.pf.lock().unwrap_or_else(|e| e.into_inner());
        let change = pf.set_numvfs(n)?;
        self.remove_ports(change.removed.clone().map(pf::vf_port_id));
        let specs: Vec<PortSpec> = change
            .added
            .clone()
            .filter_map(|vf| pf.vf_spec(vf))
            .collect();
        if let Err(e) = self.add_ports(specs) {
            // Could not bind every new socket: back to 0 VFs, nothing half-done.
            let _ = pf.set_numvfs(0);
            return Err(e);
        }
        tracing::info!(
            numvfs = pf.numvfs(),
            channels_free = pf.pool().free(),
            "numvfs changed"
        );
        if !change.removed.is_empty() || !change.added.is_empty() {
            let old = if change.removed.is_empty() {
                0
            } else {
                change.removed.end
            };
            self.events.emit(
                "NUMVFS_CHANGED",
                serde_json::json!({"numvfs": pf.numvfs(), "old": old}),
            );
        }
        Ok(())
    }

    /// Changes VF `vf`'s channels (queue pairs). The VF must be detached; the channels come
    /// from the pool, and the error says how many are free.
    pub fn set_vf_channels(&self, vf: u32, channels: u32) -> Result<(), DaemonError> {
        let mut pf = self.pf.lock().unwrap_or_else(|e| e.into_inner());
        let id = pf.vf_index(vf)?;
        if self
            .table
            .get(pf::vf_port_id(id))
            .is_some_and(|p| p.is_attached())
        {
            return Err(PfError::VfAttached(id).into());
        }
        let old = pf.vf_channels(id).unwrap_or(0);
        pf.set_vf_channels(vf, channels)?;
        // Its counters start again with the new queue layout.
        self.remake_vf_port(&mut pf, id, |pf| {
            let _ = pf.set_vf_channels(vf, u32::from(old));
        })
    }

    /// Makes VF `id`'s port anew from `pf`'s description of it, after a change of its
    /// channels or socket; the VF keeps its knobs. If the new port cannot be made, `undo`
    /// puts `pf` back and the port is made again as it was (if that fails too, the VF has no
    /// port until the next numvfs change).
    fn remake_vf_port(
        &self,
        pf: &mut Pf,
        id: u16,
        undo: impl FnOnce(&mut Pf),
    ) -> Result<(), DaemonError> {
        let old_port = self.table.get(pf::vf_port_id(id));
        self.remove_ports([pf::vf_port_id(id)]);
        let result = self.add_ports(pf.vf_spec(id).into_iter().collect());
        if result.is_err() {
            undo(pf);
            let _ = self.add_ports(pf.vf_spec(id).into_iter().collect());
        }
        if let (Some(old_port), Some(new_port)) = (old_port, self.table.get(pf::vf_port_id(id))) {
            new_port.inherit_config(&old_port);
        }
        result
    }

    /// Makes VF `vf` connect to `path` (client mode: QEMU serves it) or, with None, listen on
    /// its own socket. A frontend attached now is disconnected; the VF keeps its knobs.
    pub fn set_vf_client_path(&self, vf: u32, path: Option<PathBuf>) -> Result<(), DaemonError> {
        let mut pf = self.pf.lock().unwrap_or_else(|e| e.into_inner());
        let id = pf.vf_index(vf)?;
        let old = pf.vf_client_path(id).map(Path::to_path_buf);
        if old == path {
            return Ok(());
        }
        pf.set_vf_client_path(vf, path)?;
        self.remake_vf_port(&mut pf, id, |pf| {
            let _ = pf.set_vf_client_path(vf, old);
        })?;
        tracing::info!(vf = id, client = ?pf.vf_client_path(id), "VF socket changed");
        Ok(())
    }

    /// Applies `update` to VF `vf` as a whole (nothing changes on error). Disabling the link
    /// closes the frontend's connection, which is how QEMU shows a guest NO-CARRIER.
    pub fn vf_set(&self, vf: u32, update: &SettingsUpdate) -> Result<VfSettings, DaemonError> {
        let port = self.vf_port(vf)?;
        if update.min_tx_rate.is_some() {
            self.check_guarantees(vf, &port, update)?;
        }
        let (old, new) = port.update_settings(update)?;
        if (old.mac, old.vlan) != (new.mac, new.vlan) {
            self.switch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .vf_address_changed(port.spec.id, new.mac, new.vlan);
        }
        self.waker.wake();
        let carrier = self.carrier.load(Ordering::Acquire);
        let (was_up, is_up) = (old.link_up(carrier), new.link_up(carrier));
        if was_up != is_up {
            let why = ("link-state", serde_json::json!(new.link_state.to_string()));
            link_changed(&self.events, &self.servers, &port, is_up, why);
        }
        tracing::info!(port = %port.spec.name, ?new, "VF settings changed");
        Ok(new)
    }

    /// Refuses a `min_tx_rate` that would make the VFs' guarantees add up to more than the
    /// wire carries (the uplink's line rate; the adapter's 10 Gbit/s without one), as a NIC's
    /// driver does: a guarantee that cannot be kept is an error, not a surprise.
    pub fn check_guarantees(
        &self,
        vf: u32,
        port: &Port,
        update: &SettingsUpdate,
    ) -> Result<(), DaemonError> {
        let asked = update.apply(&port.settings())?.min_tx_rate;
        let others: u64 = self
            .table
            .ports()
            .iter()
            .filter(|p| p.spec.kind.is_vf() && p.spec.id != port.spec.id)
            .map(|p| u64::from(p.settings().min_tx_rate))
            .sum();
        let line = self
            .uplink
            .as_ref()
            .map_or(crate::vf::MAX_RATE_MBPS, |u| u.rate().rate_mbps());
        let total = others + u64::from(asked);
        if line != 0 && total > u64::from(line) {
            return Err(DaemonError::MinRateOversubscribed {
                vf,
                asked,
                total,
                line,
            });
        }
        Ok(())
    }

    /// The port of VF `vf`, or the error a user should see.
    pub fn vf_port(&self, vf: u32) -> Result<Arc<Port>, DaemonError> {
        let numvfs = self.pf.lock().unwrap_or_else(|e| e.into_inner()).numvfs();
        u16::try_from(vf)
            .ok()
            .filter(|v| *v < numvfs)
            .and_then(|v| self.table.get(pf::vf_port_id(v)))
            .ok_or(PfError::NoSuchVf { vf, numvfs }.into())
    }

    /// The uplink, if the PF has one.
    pub fn uplink(&self) -> Option<&Arc<Uplink>> {
        self.uplink.as_ref()
    }

    /// The uplink's MTU as configured (`--uplink-mtu`: TAP: the device's MTU; VXLAN: the
    /// underlay's IP MTU); meaningful only with an uplink.
    pub fn uplink_mtu(&self) -> u32 {
        self.uplink_mtu
    }

    /// The event bus (control clients subscribe to it).
    pub fn events(&self) -> &Arc<EventBus> {
        &self.events
    }

    /// Forgets every learned FDB entry (static VF MACs stay).
    pub fn fdb_flush(&self) {
        self.switch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
    }

    /// A copy of the PF's resource state.
    pub fn pf_snapshot(&self) -> Pf {
        self.pf.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// (numvfs, channels used, channels free) of the VF pool.
    pub fn pf_summary(&self) -> (u16, u32, u32) {
        let pf = self.pf.lock().unwrap_or_else(|e| e.into_inner());
        (pf.numvfs(), pf.pool().used(), pf.pool().free())
    }

    /// Every existing port, in id order.
    pub fn ports(&self) -> Vec<Arc<Port>> {
        self.table.ports()
    }

    /// The port named `vf3` / `pv0`.
    pub fn port(&self, name: &str) -> Option<Arc<Port>> {
        self.table.by_name(name)
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The FDB, sorted by port, VLAN and MAC.
    pub fn fdb(&self) -> Vec<FdbRow> {
        let sw = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        sw.fdb()
            .entries()
            .into_iter()
            .map(|(k, e)| {
                let port = self.table.get(e.port);
                FdbRow {
                    mac: k.mac,
                    vlan: k.vlan,
                    port: port
                        .as_ref()
                        .map(|p| p.spec.name.clone())
                        .unwrap_or_default(),
                    is_static: e.is_static,
                    remote: self
                        .uplink
                        .as_ref()
                        .filter(|_| e.port == pf::UPLINK_PORT_ID)
                        .and_then(|u| u.remote_name(e.remote)),
                }
            })
            .collect()
    }

    /// Starts a capture; returns its id.
    pub fn capture_start(&self, req: &CaptureRequest) -> Result<u32, DaemonError> {
        let ports = match &req.ports {
            None => PortSet::all(),
            Some(names) => {
                let mut ids = Vec::new();
                let mut drops = false;
                for n in names {
                    match n.as_str() {
                        "drops" => drops = true,
                        _ => ids.push(
                            pf::port_id_by_name(n)
                                .ok_or_else(|| DaemonError::CapturePort(n.clone()))?
                                .0,
                        ),
                    }
                }
                PortSet::of(ids, drops)
            }
        };
        if let Some(dir) = req.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| DaemonError::Capture {
                path: req.path.clone(),
                source: crate::capture::PcapngError::Create {
                    path: dir.display().to_string(),
                    source,
                },
            })?;
        }
        let out =
            PcapngOut::create(&req.path, req.snaplen as u32, req.max_bytes).map_err(|source| {
                DaemonError::Capture {
                    path: req.path.clone(),
                    source,
                }
            })?;
        let session = CaptureSession::start(
            out,
            req.path.clone(),
            ports,
            req.snaplen,
            crate::capture::session::DEFAULT_SLOTS,
            Box::new(|p| pf::port_name(PortId(p))),
        )
        .map_err(DaemonError::CaptureThread)?;
        let id = self.captures.add(session);
        tracing::info!(id, path = %req.path.display(), "capture started");
        Ok(id)
    }

    /// Stops capture `id`: its queue is written and its files flushed. Returns what it
    /// counted and the files it wrote.
    pub fn capture_stop(&self, id: u32) -> Result<(CaptureInfo, Vec<PathBuf>), DaemonError> {
        let s = self.captures.remove(id).ok_or(DaemonError::NoCapture(id))?;
        let (out, _) = s.stop();
        let info = capture_info(id, &s);
        let mut files = out.map(|o| o.files()).unwrap_or_default();
        if files.is_empty() {
            files.push(s.path.clone());
        }
        tracing::info!(
            id,
            captured = info.captured,
            dropped = info.dropped,
            "capture stopped"
        );
        Ok((info, files))
    }

    /// The data-plane workers: mode, CPUs, busy and idle cycles.
    pub fn workers(&self) -> WorkersInfo {
        WorkersInfo {
            clock: crate::datapath::busy::CLOCK,
            hz: self.cycles.hz(),
            poll: self.poll,
            workers: self
                .worker_cpus
                .iter()
                .copied()
                .zip(self.cycles.snapshot())
                .collect(),
        }
    }

    /// The running captures.
    pub fn captures(&self) -> Vec<CaptureInfo> {
        self.captures
            .list()
            .iter()
            .map(|(id, s)| capture_info(*id, s))
            .collect()
    }

    /// Stops the data plane, disconnects every frontend and removes the sockets.
    pub fn shutdown(&self) {
        if self.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        self.waker.wake();
        let ids: Vec<PortId> = self
            .servers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        self.remove_ports(ids);
        self.control.stop();
        // Last, so the captures hold every frame switched until now; each file ends at a block
        // boundary (a SIGTERM leaves readable files).
        for (id, _) in self.captures.list() {
            if let Ok((info, files)) = self.capture_stop(id) {
                for f in files {
                    tracing::info!(id = info.id, file = %f.display(), "capture written");
                }
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// What the control plane shows of capture `id`.
fn capture_info(id: u32, s: &CaptureSession) -> CaptureInfo {
    let st = s.stats();
    CaptureInfo {
        id,
        path: s.path.clone(),
        captured: st.captured,
        dropped: st.dropped,
        error: s.error(),
    }
}

/// Follows the uplink's carrier (every 100 ms) and sends its keepalives (every second, or a
/// third of the peer timeout: `Carrier::keepalive_interval`). On a
/// change every port re-reads its edge policy, and the VFs with link state `auto` follow: down,
/// their frontends are disconnected and refused (QEMU shows the guest NO-CARRIER); up, they
/// are accepted again (QEMU reconnects).
fn watch_carrier(
    up: &Uplink,
    table: &PortTable,
    events: &EventBus,
    carrier: &AtomicBool,
    servers: &Mutex<HashMap<PortId, ServerHandle>>,
    stop: &AtomicBool,
) {
    const TICK: Duration = Duration::from_millis(100);
    let keepalive_ticks = up
        .keepalive_interval(TICK)
        .map(|d| (d.as_millis() / TICK.as_millis()).max(1) as u64);
    let mut tick = 0u64;
    while !stop.load(Ordering::Acquire) {
        if keepalive_ticks.is_some_and(|k| tick.is_multiple_of(k)) {
            up.send_keepalives();
        }
        tick += 1;
        std::thread::sleep(TICK);
        let Some(now) = up.check_carrier(carrier) else {
            continue;
        };
        let state = if now { "up" } else { "down" };
        tracing::info!(uplink = %up.spec(), "uplink carrier {state}");
        events.emit(
            "UPLINK_CARRIER",
            serde_json::json!({"port": "uplink", "carrier": state}),
        );
        for p in table.ports() {
            p.touch_settings();
            let s = p.settings();
            if !p.spec.kind.is_vf() || s.link_state != LinkState::Auto {
                continue;
            }
            link_changed(
                events,
                servers,
                &p,
                now,
                ("link-state", serde_json::json!("auto")),
            );
        }
    }
}

/// Port `port`'s link went up or down: `VF_LINK_CHANGE` (its data with `why`, the field that
/// says what changed it), and, when down, the frontend's connection closed: QEMU shows a guest
/// NO-CARRIER while its vhost-user connection is closed, and the port refuses frontends until
/// the link is back.
fn link_changed(
    events: &EventBus,
    servers: &Mutex<HashMap<PortId, ServerHandle>>,
    port: &Port,
    up: bool,
    why: (&str, serde_json::Value),
) {
    let mut data = port_event_data(port, if up { "up" } else { "down" });
    data[why.0] = why.1;
    events.emit("VF_LINK_CHANGE", data);
    if !up {
        let servers = servers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = servers.get(&port.spec.id) {
            h.disconnect_frontend();
        }
    }
}

fn log_stats(table: &PortTable, every: Duration, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(every);
        for p in table.ports() {
            let nonzero: Vec<String> = p
                .counters
                .snapshot()
                .into_iter()
                .filter(|(_, v)| *v != 0)
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            if !nonzero.is_empty() {
                tracing::info!(port = %p.spec.name, attached = p.is_attached(), "{}", nonzero.join(" "));
            }
        }
    }
}
