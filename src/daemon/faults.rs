//! The daemon's side of fault injection (`fault-set`, `fault-clear`, `query-faults`, the
//! config file's `[[fault]]`): a fault checked against its port and put in place, a link
//! flap run on its own thread, the busy window checked before a VF's management commands.

use super::{link_changed, Daemon, DaemonError};
use crate::events::EventBus;
use crate::faults::{Fault, FaultError, FaultKind};
use crate::pf::PortKind;
use crate::port::Waker;
use crate::switch::PortId;
use crate::vf::{Port, ServerHandle};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

impl Daemon {
    /// Sets `fault` (of `kind`, checked: `FaultSpec::check`) on port `name`.
    pub fn fault_set(&self, name: &str, kind: FaultKind, fault: Fault) -> Result<(), DaemonError> {
        let port = self
            .port(name)
            .ok_or_else(|| DaemonError::NoPort(name.to_string()))?;
        let is_vhost = matches!(port.spec.kind, PortKind::Vf(_) | PortKind::Pv(_));
        match fault {
            Fault::Frame(f) => port.faults.set_frame_fault(f),
            Fault::Stall { queue, ns } => {
                if !is_vhost || !port.faults.stall(queue, ns) {
                    return Err(FaultError::NoQueue {
                        port: name.to_string(),
                        queue: queue.index(),
                    }
                    .into());
                }
                self.waker.wake();
            }
            Fault::LinkFlap {
                down_ns,
                up_ns,
                count,
            } => {
                if !is_vhost {
                    return Err(FaultError::VfOnly { kind }.into());
                }
                let stop = port.faults.start_flap();
                let flap = Flap {
                    port: port.clone(),
                    stop,
                    down: Duration::from_nanos(down_ns),
                    up: Duration::from_nanos(up_ns),
                    count,
                    events: self.events.clone(),
                    servers: self.servers.clone(),
                    waker: self.waker.clone(),
                };
                std::thread::Builder::new()
                    .name(format!("flap-{}", port.spec.name))
                    .spawn(move || flap.run())
                    .map_err(DaemonError::Thread)?;
            }
            Fault::Busy { ns } => {
                if !port.spec.kind.is_vf() {
                    return Err(FaultError::VfOnly { kind }.into());
                }
                port.faults.set_busy(ns);
            }
        }
        tracing::info!(port = %name, ?fault, "fault injected");
        Ok(())
    }

    /// Clears fault `kind` (every fault if `None`) of port `name`.
    pub fn fault_clear(&self, name: &str, kind: Option<FaultKind>) -> Result<(), DaemonError> {
        let port = self
            .port(name)
            .ok_or_else(|| DaemonError::NoPort(name.to_string()))?;
        port.faults.clear(kind);
        self.waker.wake();
        Ok(())
    }

    /// Every port with a fault set: its name and the faults.
    pub fn faults(&self) -> Vec<(String, Vec<serde_json::Value>)> {
        self.ports()
            .iter()
            .map(|p| (p.spec.name.clone(), p.faults.describe()))
            .filter(|(_, f)| !f.is_empty())
            .collect()
    }

    /// Refuses a management command on VF `vf` while an injected busy window lasts, as a PF
    /// driver answers -EBUSY while a VF resets (counted in the VF's `fault_busy`).
    pub fn check_vf_busy(&self, vf: u32) -> Result<(), DaemonError> {
        let Ok(port) = self.vf_port(vf) else {
            return Ok(());
        };
        match port.faults.busy_ms() {
            Some(ms) => {
                port.counters.totals.fault_busy.inc();
                Err(DaemonError::Busy { vf, ms })
            }
            None => Ok(()),
        }
    }
}

/// A link flap: down, up, `count` times.
struct Flap {
    port: Arc<Port>,
    stop: Arc<AtomicBool>,
    down: Duration,
    up: Duration,
    count: u64,
    events: Arc<EventBus>,
    servers: Arc<Mutex<HashMap<PortId, ServerHandle>>>,
    waker: Arc<Waker>,
}

impl Flap {
    /// Sleeps `d` unless stopped first; false if stopped.
    fn sleep(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stop.load(Ordering::Acquire) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(20)));
        }
        false
    }

    fn set(&self, down: bool) {
        let p = &self.port;
        p.faults.hold_link_down(down);
        p.touch_settings();
        if down {
            p.counters.totals.fault_link_flap.inc();
        }
        // As for a disabled link (`link_changed`).
        let why = ("reason", serde_json::json!("fault"));
        link_changed(&self.events, &self.servers, p, !down, why);
        self.waker.wake();
    }

    fn run(self) {
        for i in 0..self.count {
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            self.set(true);
            let went_on = self.sleep(self.down);
            self.set(false);
            if !went_on || (i + 1 < self.count && !self.sleep(self.up)) {
                break;
            }
        }
        self.port.faults.flap_ended(&self.stop);
    }
}
