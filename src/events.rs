//! Asynchronous events (QMP style): emitted by the data plane, the port servers and the
//! management plane; delivered to every subscriber (control clients) without blocking the
//! emitter: a subscriber that does not keep up loses events, never stalls the switch.

use serde_json::Value;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Events buffered per subscriber before new ones are dropped for it.
const SUBSCRIBER_BUFFER: usize = 4096;

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: &'static str,
    pub data: Value,
    pub timestamp: SystemTime,
}

impl Event {
    /// The QMP wire form: `{"event":..., "data":..., "timestamp":{"seconds":..,"microseconds":..}}`.
    pub fn to_qmp(&self) -> Value {
        let t = self
            .timestamp
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        serde_json::json!({
            "event": self.name,
            "data": self.data,
            "timestamp": {"seconds": t.as_secs(), "microseconds": t.subsec_micros()},
        })
    }
}

/// Fan-out of events to subscribers.
#[derive(Debug, Default)]
pub struct EventBus {
    subscribers: Mutex<Vec<SyncSender<Arc<Event>>>>,
}

impl EventBus {
    pub fn new() -> Arc<EventBus> {
        Arc::new(EventBus::default())
    }

    pub fn subscribe(&self) -> Receiver<Arc<Event>> {
        let (tx, rx) = sync_channel(SUBSCRIBER_BUFFER);
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        rx
    }

    pub fn emit(&self, name: &'static str, data: Value) {
        tracing::debug!(event = name, %data, "event");
        let ev = Arc::new(Event {
            name,
            data,
            timestamp: SystemTime::now(),
        });
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| match s.try_send(ev.clone()) {
            Ok(()) | Err(TrySendError::Full(_)) => true,
            Err(TrySendError::Disconnected(_)) => false,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subscriber_gets_events_and_gone_ones_are_dropped() {
        let bus = EventBus::new();
        let a = bus.subscribe();
        let b = bus.subscribe();
        drop(b);
        bus.emit("NUMVFS_CHANGED", serde_json::json!({"numvfs": 4}));
        let e = a.try_recv().unwrap();
        assert_eq!(e.name, "NUMVFS_CHANGED");
        let q = e.to_qmp();
        assert_eq!(q["data"]["numvfs"], 4);
        assert!(q["timestamp"]["seconds"].as_u64().unwrap() > 1_700_000_000);
        assert_eq!(bus.subscribers.lock().unwrap().len(), 1);
    }
}
