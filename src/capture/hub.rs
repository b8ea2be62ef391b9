//! The captures running in the emulator, as the control plane starts and stops them and as
//! each data-plane worker sees them. While none runs, a worker's whole cost is one relaxed load
//! per batch (`active`); a start or stop bumps a generation, and a worker takes the new list at
//! its next batch (`HubView::sync`), without a lock on the fast path.

use super::session::CaptureSession;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The running captures, by id.
#[derive(Default)]
pub struct CaptureHub {
    sessions: Mutex<Vec<(u32, Arc<CaptureSession>)>>,
    running: AtomicUsize,
    generation: AtomicU64,
    next_id: AtomicU64,
}

/// A worker's copy of the running captures.
#[derive(Default)]
pub struct HubView {
    generation: u64,
    pub sessions: Vec<Arc<CaptureSession>>,
}

impl CaptureHub {
    /// Whether any capture runs (the data path's one check per batch).
    #[inline]
    pub fn active(&self) -> bool {
        self.running.load(Ordering::Relaxed) != 0
    }

    /// Adds a running capture; returns its id.
    pub fn add(&self, s: CaptureSession) -> u32 {
        let id = u32::try_from(self.next_id.fetch_add(1, Ordering::Relaxed) + 1).unwrap_or(0);
        let mut list = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        list.push((id, Arc::new(s)));
        self.generation.fetch_add(1, Ordering::Release);
        self.running.store(list.len(), Ordering::Release);
        id
    }

    /// Takes capture `id` out (the caller stops it: workers still holding it see it stopped).
    pub fn remove(&self, id: u32) -> Option<Arc<CaptureSession>> {
        let mut list = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let i = list.iter().position(|(i, _)| *i == id)?;
        let (_, s) = list.remove(i);
        self.generation.fetch_add(1, Ordering::Release);
        self.running.store(list.len(), Ordering::Release);
        Some(s)
    }

    /// The running captures with their ids.
    pub fn list(&self) -> Vec<(u32, Arc<CaptureSession>)> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Brings `view` up to date if a capture started or stopped since it was taken.
    #[inline]
    pub fn sync(&self, view: &mut HubView) {
        let g = self.generation.load(Ordering::Acquire);
        if g != view.generation {
            view.sessions = self
                .sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(_, s)| s.clone())
                .collect();
            view.generation = g;
        }
    }
}
