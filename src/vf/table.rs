//! The port table shared by the control side (which adds and removes ports) and the data
//! plane (which follows it through a generation counter, without locking on the fast path).

use super::Port;
use crate::switch::PortId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Ports by id; a slot is empty when its VF or PV port does not exist.
pub struct PortTable {
    slots: RwLock<Vec<Option<Arc<Port>>>>,
    generation: AtomicU64,
}

impl PortTable {
    pub fn new(slots: usize) -> Self {
        PortTable {
            slots: RwLock::new(vec![None; slots]),
            generation: AtomicU64::new(0),
        }
    }

    /// Bumped on every change.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Puts `port` in slot `id` (or empties it).
    pub fn set(&self, id: PortId, port: Option<Arc<Port>>) {
        let mut slots = self.slots.write().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = slots.get_mut(id.index()) {
            *slot = port;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn get(&self, id: PortId) -> Option<Arc<Port>> {
        self.slots
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id.index())
            .cloned()
            .flatten()
    }

    /// A copy of every slot.
    pub fn snapshot(&self) -> Vec<Option<Arc<Port>>> {
        self.slots.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The ports that exist, in id order.
    pub fn ports(&self) -> Vec<Arc<Port>> {
        self.snapshot().into_iter().flatten().collect()
    }

    /// The port named `vf3` / `pv0`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Port>> {
        self.ports().into_iter().find(|p| p.spec.name == name)
    }
}
