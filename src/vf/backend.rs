//! `NetBackend`: the vhost-user virtio-net device of one port, for one connection.
//!
//! The vhost-user glue only does control work here (on the control loop's thread and the
//! kick thread, `control_loop.rs`, `kicks.rs`): it negotiates features and, on a kick, tells
//! the data plane which queue has work. All ring processing happens in the
//! data plane (dma_engine), which owns the rings for the connection's lifetime.

use super::port::{port_event_data, Connection, Port, TX_STOP_WAIT, VRINGS_PER_THREAD};
use super::{GuestBitmap, GuestMemAtomic, Vring};
use crate::dma_engine::LogArea;
use crate::events::EventBus;
use crate::pf::PortKind;
use crate::port::Waker;
use crate::switch::Switch;
use crate::wire::MacAddr;
use std::fs::File;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::VhostUserBackend;
use virtio_bindings::bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_MQ, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
};
use virtio_bindings::bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
use vmm_sys_util::epoll::EventSet;

/// Largest ring the device accepts (QEMU's rx/tx_queue_size maximum).
pub const MAX_QUEUE_SIZE: usize = 1024;

/// vhost's "log all writes" feature (VHOST_F_LOG_ALL): the frontend turns dirty-page logging
/// on by acking it, off by acking without it. Offered (with the LOG_SHMFD protocol feature) so
/// that QEMU allows live migration.
pub const VHOST_F_LOG_ALL: u64 = 1 << 26;

/// virtio-net device features offered on every port.
///
/// IN_ORDER: both rings use chains in the order the driver made them available (TX completes
/// a prefix of each batch and hands the rest back; RX takes and completes chains in ring
/// order), so a driver that acks it may skip reading used elements. DPDK's virtio PMD does
/// (its in-order TX and RX paths, the default for virtio-user), as DPDK's own vhost library
/// offers it; QEMU's virtio-net leaves it off unless `in_order=on`.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_F_IN_ORDER)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_RING_F_INDIRECT_DESC)
    | (1 << VIRTIO_NET_F_MTU)
    | (1 << VIRTIO_NET_F_STATUS);

/// The backend of one connection. Cloned into each of its vring epoll handlers.
#[derive(Clone)]
pub struct NetBackend {
    port: Arc<Port>,
    conn: Arc<Connection>,
    waker: Arc<Waker>,
    events: Arc<EventBus>,
    switch: Arc<Mutex<Switch>>,
}

impl NetBackend {
    pub fn new(
        port: Arc<Port>,
        conn: Arc<Connection>,
        waker: Arc<Waker>,
        events: Arc<EventBus>,
        switch: Arc<Mutex<Switch>>,
    ) -> Self {
        NetBackend {
            port,
            conn,
            waker,
            events,
            switch,
        }
    }

    /// Pins a VF's MAC to it in the switch again (`pin`), or withdraws the pin. Nothing for a
    /// PV port (it has no static entry) or when the pin is already as asked.
    fn set_mac_pinned(&self, pin: bool) {
        if !matches!(self.port.spec.kind, PortKind::Vf(_)) {
            return;
        }
        let mut sw = self.switch.lock().unwrap_or_else(|e| e.into_inner());
        if self.conn.mac_pinned.swap(pin, Ordering::AcqRel) == pin || !self.port.is_attached() {
            return;
        }
        if pin {
            self.port.pin_mac(&mut sw);
        } else {
            sw.port_unpinned(self.port.spec.id);
            self.port.set_pin_on_tx(false);
        }
        tracing::debug!(
            port = %self.port.spec.name,
            "MAC {}",
            if pin { "pinned again (the device runs)" } else { "unpinned (the device stopped)" }
        );
    }

    fn queue_pairs(&self) -> usize {
        usize::from(self.port.spec.queue_pairs)
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = GuestBitmap;
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        2 * self.queue_pairs()
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        let mq = if self.queue_pairs() > 1 {
            1 << VIRTIO_NET_F_MQ
        } else {
            0
        };
        DEVICE_FEATURES | mq | VHOST_F_LOG_ALL | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// SET_FEATURES. With VHOST_F_LOG_ALL the frontend starts dirty-page logging (it sent
    /// SET_LOG_BASE first), without it stops it; the change holds for every write after the
    /// reply (`Connection::quiesce`).
    fn acked_features(&self, features: u64) {
        self.conn.set_acked_features(features);
        let on = features & VHOST_F_LOG_ALL != 0;
        if self.conn.log.set_on(on) {
            self.conn.quiesce();
            tracing::info!(
                port = %self.port.spec.name,
                "dirty-page logging {}",
                if on { "on (migration)" } else { "off" }
            );
        }
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::LOG_SHMFD
            | VhostUserProtocolFeatures::RARP
    }

    /// SEND_RARP: on a live migration's destination QEMU asks the back-end to announce the
    /// guest (whose driver cannot, without VIRTIO_NET_F_GUEST_ANNOUNCE, which is not offered).
    /// The data plane sends a RARP from the port with the guest's MAC as source, as if the
    /// guest had sent it: every FDB on the path learns where the guest is now, the uplink's
    /// remote hosts included, before the guest sends anything itself.
    fn send_rarp(&self, mac: [u8; 6]) -> io::Result<()> {
        let mac = MacAddr(mac);
        self.conn.request_announce(mac);
        tracing::info!(port = %self.port.spec.name, "announcing {mac} (SEND_RARP)");
        let mut data = port_event_data(&self.port, "announced");
        data["mac"] = serde_json::Value::String(mac.to_string());
        self.events.emit("GUEST_ANNOUNCED", data);
        if self.conn.mark_tx_pending(0) {
            self.waker.wake_tx(self.port.spec.id.index(), 0);
        }
        Ok(())
    }

    /// SET_LOG_BASE: the frontend's dirty bitmap, mapped here and marked by the data plane
    /// itself (`dma_engine/dirty_log.rs`). A replaced log is no longer written once this
    /// returns (the frontend reads and frees it on the reply).
    fn set_log_base(&self, mmap_offset: u64, mmap_size: u64, file: &File) -> io::Result<bool> {
        let area = LogArea::map(file, mmap_offset, mmap_size).map_err(|e| {
            tracing::warn!(port = %self.port.spec.name, "SET_LOG_BASE refused: {e}");
            io::Error::other(e)
        })?;
        tracing::debug!(
            port = %self.port.spec.name,
            "dirty log of {mmap_size} bytes (guest memory up to {} MiB)",
            (mmap_size * 8 * crate::dma_engine::dirty_log::LOG_PAGE) >> 20
        );
        self.conn.log.set_area(area);
        self.conn.quiesce();
        Ok(true)
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The handler configures each vring; the data plane reads it from the queue.
    }

    fn update_memory(&self, _mem: GuestMemAtomic) -> io::Result<()> {
        // `conn.mem` is the same GuestMemoryAtomic the handler just updated.
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        let n = self.num_queues();
        (0..n.div_ceil(VRINGS_PER_THREAD))
            .map(|t| {
                let in_thread = (n - t * VRINGS_PER_THREAD).min(VRINGS_PER_THREAD);
                if in_thread == 64 {
                    u64::MAX
                } else {
                    (1u64 << in_thread) - 1
                }
            })
            .collect()
    }

    /// GET_VRING_BASE: the handler has marked the ring not ready, so no new batch is popped;
    /// a TX batch already popped is completed before the index is reported, so no buffer the
    /// guest handed over is lost across a stop (migration, reconnect).
    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        let index = queue_index as usize;
        if index >= self.num_queues() {
            return Ok(());
        }
        if index.is_multiple_of(2) {
            // The guest no longer takes frames here (reset, unplug, migration): frames to its
            // MAC go to the PV ports until it runs again.
            self.set_mac_pinned(false);
            return Ok(());
        }
        if !self.conn.stop_tx(index / 2) {
            tracing::warn!(
                port = %self.port.spec.name,
                queue = index,
                "stopping a TX queue: the data plane did not complete its batch in {TX_STOP_WAIT:?}; its buffers are not returned"
            );
        }
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[Vring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        if self.conn.set_thread_vrings(thread_id, vrings) && thread_id == 0 {
            // The first ring enabled: the guest driver is up.
            let data = port_event_data(&self.port, "driver-ready");
            self.events.emit("VF_ATTACHED", data);
        }
        let queue = thread_id * VRINGS_PER_THREAD + usize::from(device_event);
        if queue >= self.num_queues() {
            return Ok(());
        }
        if !self.conn.mac_pinned.load(Ordering::Acquire) {
            // A kick after a stop: the driver runs the device again.
            self.set_mac_pinned(true);
        }
        // Odd queues are TX. RX kicks (new buffers) need nothing: frames are never held back
        // waiting for buffers, so there is nothing to resume.
        if queue % 2 == 1 && self.conn.mark_tx_pending(queue / 2) {
            self.waker.wake_tx(self.port.spec.id.index(), queue / 2);
        }
        Ok(())
    }
}
