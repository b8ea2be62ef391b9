//! A worker's view of the ports: which exist (following the port table), which are attached,
//! their settings as the switch enforces them, their RSS steering, and the TX queues this
//! worker serves. Refreshed on every wake-up (every `POLL_SYNC_ROUNDS` when polling) without
//! locks on the fast path: each piece has a generation counter that is compared first.

use super::ports::PortIo;
use crate::pf::PortKind;
use crate::port::{RxQueues, TxPending, WaitFd, Waker};
use crate::rss::{EnabledQueues, SteeringSnapshot};
use crate::switch::{EdgePolicy, PortRole};
use crate::uplink::{Uplink, UplinkIo};
use crate::vf::{Port, PortTable, VhostIo};
use std::sync::Arc;

/// A worker's view of one port.
pub struct PortView {
    pub port: Arc<Port>,
    /// `port.generation()` when the connection was last looked at.
    generation: u64,
    /// The port's pending TX queue pairs (a vhost-user frontend's kicks, a readable uplink),
    /// while attached.
    pub pending: Option<Arc<TxPending>>,
    /// The port's queues, while attached (an uplink always is).
    pub io: Option<PortIo>,
    /// The uplink, for the uplink's view.
    uplink: Option<Arc<Uplink>>,
    /// RX queues that can take frames, refreshed with the view.
    pub enabled: EnabledQueues,
    /// The port's settings as the switch enforces them, re-read when they change.
    pub policy: EdgePolicy,
    /// What the port is to the switch (follows `policy`: a VF's promiscuous mode).
    pub role: PortRole,
    settings_gen: u64,
    /// The TX queue pairs this worker owns (bit q).
    pub own_tx: u64,
    /// Steering without the RSS lock (`VfRss::snapshot`: flow learning off), taken again
    /// when the port's RSS generation moves.
    pub rss_fast: Option<Box<SteeringSnapshot>>,
    rss_gen: u64,
    /// A broken queue was reported (once per connection).
    warned: bool,
    /// Its TX is held back by a rate until then (ns, `datapath::now_ns`); 0: it is not.
    pub throttled_until: u64,
    poll: bool,
}

impl PortView {
    fn new(port: Arc<Port>, own_tx: u64, poll: bool, uplink: Option<Arc<Uplink>>) -> Self {
        let policy = port.edge_policy();
        PortView {
            generation: u64::MAX,
            pending: None,
            io: None,
            uplink: uplink.filter(|_| port.spec.kind == PortKind::Uplink),
            enabled: EnabledQueues::NONE,
            role: role(&port, &policy),
            policy,
            settings_gen: port.settings_generation(),
            own_tx,
            rss_fast: None,
            rss_gen: u64::MAX,
            warned: false,
            throttled_until: 0,
            poll,
            port,
        }
    }

    /// Follows an attach or detach of the port's frontend: takes the current connection and
    /// forgets the old queues. False if nothing changed since the last look.
    pub fn sync_connection(&mut self) -> bool {
        let g = self.port.generation();
        if g == self.generation {
            return false;
        }
        self.generation = g;
        let spec = &self.port.spec;
        (self.io, self.pending) = match &self.uplink {
            Some(up) => (
                Some(PortIo::Uplink(UplinkIo::new(up.clone(), self.poll))),
                Some(up.tx_pending().clone()),
            ),
            None => match self.port.connection() {
                Some(c) => (
                    Some(PortIo::Vhost(VhostIo::new(
                        c.clone(),
                        Arc::from(spec.name.as_str()),
                        spec.mtu,
                        spec.queue_pairs,
                        self.poll,
                    ))),
                    Some(c.tx_pending().clone()),
                ),
                None => (None, None),
            },
        };
        self.warned = false;
        if let Some(p) = &self.pending {
            // Frames may have been queued before this view saw the connection.
            p.mark_mask(self.own_tx);
        }
        self.refresh_enabled();
        true
    }

    /// Re-reads which RX queues can take frames.
    pub fn refresh_enabled(&mut self) {
        self.enabled = self
            .io
            .as_ref()
            .map_or(EnabledQueues::NONE, |io| io.enabled());
    }

    /// Re-reads settings and RSS steering if they changed.
    fn refresh_config(&mut self) {
        let rg = self.port.rss_generation();
        if rg != self.rss_gen {
            self.rss_gen = rg;
            self.rss_fast = self.port.rss_data_path().snapshot().map(Box::new);
        }
        let sg = self.port.settings_generation();
        if sg != self.settings_gen {
            self.settings_gen = sg;
            self.policy = self.port.edge_policy();
            self.role = role(&self.port, &self.policy);
        }
    }

    /// Logs a broken queue once per connection.
    pub fn warn_broken_queue(&mut self, what: &dyn std::fmt::Display) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(port = %self.port.spec.name, "{what}; the queue is skipped");
        }
    }
}

/// The port's role in the switch under `policy`.
fn role(port: &Port, policy: &EdgePolicy) -> PortRole {
    match port.spec.kind {
        PortKind::Vf(_) => PortRole::Vf {
            promisc: policy.promisc,
        },
        PortKind::Pv(_) => PortRole::Pv,
        PortKind::Uplink => PortRole::Uplink,
    }
}

/// A worker's views of every port slot.
pub struct Views {
    table: Arc<PortTable>,
    table_generation: u64,
    worker: usize,
    waker: Arc<Waker>,
    poll: bool,
    uplink: Option<Arc<Uplink>>,
    /// One slot per port id, following `table`.
    pub slots: Vec<Option<PortView>>,
    /// The attached ports with TX queues this worker owns: (slot, pending queue pairs, owned
    /// queue pairs), rebuilt by `refresh` so a round clones no `Arc`.
    pub active: Vec<(usize, Arc<TxPending>, u64)>,
    /// The file descriptors a sleeping worker waits on besides its eventfd (the uplink's
    /// queues it owns), rebuilt with `active`.
    pub wait_fds: Vec<WaitFd>,
    /// A view's connection or the table changed since `active` was built.
    active_stale: bool,
    /// The uplink had failed for good when `wait_fds` was built (its descriptors are left out:
    /// a deleted TAP is always "ready" to poll).
    uplink_broken: bool,
}

impl Views {
    pub fn new(
        table: Arc<PortTable>,
        worker: usize,
        waker: Arc<Waker>,
        poll: bool,
        uplink: Option<Arc<Uplink>>,
    ) -> Self {
        Views {
            table,
            table_generation: u64::MAX,
            worker,
            waker,
            poll,
            uplink,
            slots: Vec::new(),
            active: Vec::new(),
            wait_fds: Vec::new(),
            active_stale: true,
            uplink_broken: false,
        }
    }

    /// The TX queue pairs of `port` this worker owns.
    fn own_mask(&self, port: &Port) -> u64 {
        let qps = usize::from(port.spec.queue_pairs).min(64);
        let p = port.spec.id.index();
        (0..qps)
            .filter(|&q| self.waker.owner(p, q) == self.worker)
            .fold(0, |m, q| m | (1u64 << q))
    }

    /// Follows ports added, removed or replaced (numvfs and channel changes).
    pub fn sync_table(&mut self) {
        let g = self.table.generation();
        if g == self.table_generation {
            return;
        }
        self.table_generation = g;
        self.active_stale = true;
        let slots = self.table.snapshot();
        self.slots.resize_with(slots.len(), || None);
        for (k, slot) in slots.into_iter().enumerate() {
            let same = match (&self.slots[k], &slot) {
                (Some(v), Some(p)) => Arc::ptr_eq(&v.port, p),
                (None, None) => true,
                _ => false,
            };
            if !same {
                self.slots[k] = slot.map(|p| {
                    let own = self.own_mask(&p);
                    PortView::new(p, own, self.poll, self.uplink.clone())
                });
            }
        }
    }

    /// Picks up attach/detach of frontends, enabled RX queues, changed settings and steering.
    pub fn refresh(&mut self) {
        let mut stale = false;
        for v in self.slots.iter_mut().flatten() {
            v.refresh_config();
            if let Some(io) = &mut v.io {
                io.refresh();
            }
            stale |= v.sync_connection();
            v.refresh_enabled();
        }
        let broken = self.uplink.as_ref().is_some_and(|u| u.is_broken());
        if broken != self.uplink_broken {
            self.uplink_broken = broken;
            stale = true;
        }
        if std::mem::take(&mut self.active_stale) || stale {
            self.active.clear();
            self.wait_fds = self.uplink_wait_fds();
            for (i, v) in self.slots.iter().enumerate() {
                if let Some(PortView {
                    pending: Some(c),
                    own_tx,
                    ..
                }) = v
                {
                    if *own_tx != 0 {
                        self.active.push((i, c.clone(), *own_tx));
                    }
                }
            }
        }
    }

    /// The uplink's descriptors for the TX queues this worker owns (none once it failed).
    fn uplink_wait_fds(&self) -> Vec<WaitFd> {
        let Some(up) = &self.uplink else {
            return Vec::new();
        };
        let own = self.get(up.port_id().index()).map_or(0, |v| v.own_tx);
        (0..64)
            .filter(|qp| own & (1u64 << qp) != 0)
            .filter_map(|qp| {
                up.fd(qp).map(|fd| WaitFd {
                    fd,
                    pending: up.tx_pending().clone(),
                    qp,
                })
            })
            .collect()
    }

    /// Port `d`'s role if it is attached. A view that looks detached is checked against the
    /// port first: a frontend that attached since the last refresh (which the control plane and
    /// the guest already see) must not lose frames to a stale view.
    #[inline]
    pub fn attached(&mut self, d: usize) -> Option<PortRole> {
        let v = self.slots.get_mut(d).and_then(Option::as_mut)?;
        if v.io.is_none() && v.sync_connection() {
            self.active_stale = true;
        }
        v.io.as_ref().map(|_| v.role)
    }

    #[inline]
    pub fn get(&self, i: usize) -> Option<&PortView> {
        self.slots.get(i).and_then(Option::as_ref)
    }

    #[inline]
    pub fn get_mut(&mut self, i: usize) -> Option<&mut PortView> {
        self.slots.get_mut(i).and_then(Option::as_mut)
    }

    /// The uplink, if the PF has one.
    pub fn uplink(&self) -> Option<&Arc<Uplink>> {
        self.uplink.as_ref()
    }

    /// The name of the port in slot `i`.
    pub fn name(&self, i: usize) -> Option<String> {
        self.get(i).map(|v| v.port.spec.name.clone())
    }
}
