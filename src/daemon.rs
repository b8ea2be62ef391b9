//! `sriov-emu run`: builds the ports, binds their sockets, starts the data plane.

use crate::dma_engine::{DataPlane, Waker};
use crate::pf::PfConfig;
use crate::switch::Switch;
use crate::vf::{Port, PortServer, ServerError};
use crate::wire::MacAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why the emulator cannot start.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot create socket directory {path}: {source}")]
    SocketDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("socket directory {path} is not writable: {source}")]
    SocketDirNotWritable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Port(#[from] ServerError),
    #[error("cannot start a thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub pf: PfConfig,
    pub fdb_aging_secs: u64,
    /// Log the counters this often (until the control plane exists).
    pub stats_interval: Option<Duration>,
}

/// A running emulator.
pub struct Daemon {
    ports: Vec<Arc<Port>>,
    switch: Arc<Mutex<Switch>>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    socket_dir: PathBuf,
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

impl Daemon {
    /// Binds every port's socket and starts serving. Nothing is left bound on error.
    pub fn start(cfg: DaemonConfig) -> Result<Daemon, DaemonError> {
        check_socket_dir(&cfg.pf.socket_dir)?;
        let waker = Arc::new(Waker::new().map_err(DaemonError::Thread)?);
        let ports: Vec<Arc<Port>> = cfg
            .pf
            .ports()
            .into_iter()
            .map(|s| Arc::new(Port::new(s)))
            .collect();
        let mut servers = Vec::with_capacity(ports.len());
        for p in &ports {
            match PortServer::bind(p.clone(), waker.clone()) {
                Ok(s) => servers.push(s),
                Err(e) => {
                    for done in &ports[..servers.len()] {
                        let _ = std::fs::remove_file(&done.spec.socket);
                    }
                    return Err(e.into());
                }
            }
        }
        let switch = Arc::new(Mutex::new(Switch::new(cfg.fdb_aging_secs)));
        let stop = Arc::new(AtomicBool::new(false));
        DataPlane::new(ports.clone(), switch.clone(), waker.clone(), stop.clone())
            .spawn()
            .map_err(DaemonError::Thread)?;
        for s in servers {
            s.spawn()?;
        }
        if let Some(every) = cfg.stats_interval {
            let ports = ports.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("stats".into())
                .spawn(move || log_stats(&ports, every, &stop))
                .map_err(DaemonError::Thread)?;
        }
        tracing::info!(
            dir = %cfg.pf.socket_dir.display(),
            vfs = cfg.pf.numvfs,
            pv_ports = cfg.pf.pv_ports,
            "serving"
        );
        Ok(Daemon {
            ports,
            switch,
            waker,
            stop,
            socket_dir: cfg.pf.socket_dir,
        })
    }

    pub fn ports(&self) -> &[Arc<Port>] {
        &self.ports
    }

    /// The port named `vf3` / `pv0`.
    pub fn port(&self, name: &str) -> Option<&Arc<Port>> {
        self.ports.iter().find(|p| p.spec.name == name)
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The FDB: (MAC, port name, static).
    pub fn fdb(&self) -> Vec<(MacAddr, String, bool)> {
        let sw = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        sw.fdb()
            .entries()
            .into_iter()
            .map(|(m, e)| {
                let name = self
                    .ports
                    .get(e.port.index())
                    .map(|p| p.spec.name.clone())
                    .unwrap_or_default();
                (m, name, e.is_static)
            })
            .collect()
    }

    /// Stops the data plane and removes the sockets.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        for p in &self.ports {
            let _ = std::fs::remove_file(&p.spec.socket);
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn log_stats(ports: &[Arc<Port>], every: Duration, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(every);
        for p in ports {
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
