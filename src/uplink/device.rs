//! `Uplink`: the PF's wire as the data plane shares it: the device (a TAP device, or a UDP
//! socket with its VXLAN remotes), the largest frame it carries, its carrier and its own
//! counters. Each data-plane worker reaches it through its own `UplinkIo` (`io.rs`).

use super::remotes::Remotes;
use super::spec::{Carrier, UplinkSpec};
use super::tap::{TapDevice, TapError};
use super::vxlan_header;
use crate::pf::UPLINK_PORT_ID;
use crate::port::TxPending;
use crate::stats::Counter;
use crate::switch::{PortId, TokenBucket};
use std::net::UdpSocket;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why the uplink cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum UplinkError {
    #[error("cannot open the TAP device")]
    Tap(#[from] TapError),
    #[error("cannot bind the VXLAN socket to {addr}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot set up the VXLAN socket")]
    Socket(#[source] std::io::Error),
    #[error(
        "an underlay MTU of {mtu} leaves no room for a frame after {overhead} bytes of \
         encapsulation (at least {min} is needed)"
    )]
    Mtu { mtu: u32, overhead: u32, min: u32 },
}

crate::stats::counters! {
    /// The uplink's own counters, beside its port counters.
    UplinkCounters {
        /// Datagrams that are not VXLAN (too short, I flag clear).
        drop_decap,
        /// VXLAN datagrams with another VNI.
        drop_vni,
        /// Datagrams from an address that is no remote of ours.
        drop_unknown_remote,
        /// Datagrams or TAP frames longer than a receive buffer.
        drop_truncated,
        /// Frames the TAP device gave with offload flags set (never asked for).
        drop_offloaded,
        /// Keepalives received from remotes (`carrier=peer`); not switched.
        keepalives_rx,
        /// Keepalives sent.
        keepalives_tx,
        /// Datagrams refused for their destination (no route, unreachable).
        send_errors,
        /// Reads or writes the device refused (it was deleted, or is down).
        device_errors,
        /// `recvmmsg` / TAP `read` calls, the empty ones included.
        rx_syscalls,
        /// `sendmmsg` / TAP `write` calls.
        tx_syscalls,
        /// Carrier changes seen.
        carrier_changes,
    }
}

/// The device behind the uplink.
pub enum Wire {
    Tap(TapDevice),
    Vxlan(Vxlan),
}

/// A VXLAN endpoint: the bound socket (each worker sends through its own clone of it) and
/// the remotes.
pub struct Vxlan {
    pub vni: u32,
    pub socket: UdpSocket,
    pub remotes: Remotes,
    pub carrier: Carrier,
    /// UDP GSO and GRO where the kernel has them (`offload=on`).
    pub offload: bool,
}

/// The PF's wire.
pub struct Uplink {
    spec: UplinkSpec,
    wire: Wire,
    /// The longest frame (Ethernet header included) the wire carries.
    max_frame: usize,
    pending: Arc<TxPending>,
    carrier: AtomicBool,
    /// Set when the device fails for good (a TAP deleted under us): its descriptors are no
    /// longer waited on.
    broken: AtomicBool,
    /// The line rate (`--uplink-rate`): every frame onto the wire is charged to it.
    rate: Mutex<TokenBucket>,
    pub counters: UplinkCounters,
}

/// A keepalive's inner frame: to the IEEE "nearest bridge" group (no bridge forwards it), from
/// no station, with the local experimental EtherType, so neither a Linux vxlan device nor a
/// peer's switch does anything with it but note that the remote is alive.
pub const KEEPALIVE_DST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
pub const KEEPALIVE_ETHERTYPE: u16 = 0x88b5;
const KEEPALIVE_LEN: usize = 60;

/// Receive slots per `recvmmsg`, and their size: room for a jumbo frame from any remote.
pub const RX_BUF: usize = 9216 + vxlan_header::VXLAN_HDR_LEN;

impl Uplink {
    /// Opens the wire `spec` describes. `underlay_mtu`: VXLAN: the IP MTU towards the remotes;
    /// TAP: the MTU the TAP device is set to.
    pub fn open(spec: &UplinkSpec, underlay_mtu: u32) -> Result<Uplink, UplinkError> {
        let min = 68 + spec.overhead() + 14;
        if underlay_mtu < min || spec.max_frame_len(underlay_mtu) < 60 {
            return Err(UplinkError::Mtu {
                mtu: underlay_mtu,
                overhead: spec.overhead(),
                min,
            });
        }
        let (wire, max_frame) = match spec {
            UplinkSpec::Tap { name, queues } => {
                let tap = TapDevice::open(name, usize::try_from(*queues).unwrap_or(1))?;
                if tap.mtu()? != underlay_mtu {
                    tap.set_mtu(underlay_mtu)?;
                }
                // The kernel takes a tagged frame 4 bytes over the MTU, as on a real port.
                (
                    Wire::Tap(tap),
                    spec.max_frame_len(underlay_mtu) as usize + 4,
                )
            }
            UplinkSpec::Vxlan(v) => {
                // Each worker wraps its own clone in a `UdpBatch` (which sizes the socket's
                // buffers); the socket itself is bound once, here.
                let socket = UdpSocket::bind(v.local).map_err(|source| UplinkError::Bind {
                    addr: v.local,
                    source,
                })?;
                socket.set_nonblocking(true).map_err(UplinkError::Socket)?;
                (
                    Wire::Vxlan(Vxlan {
                        vni: v.vni,
                        socket,
                        remotes: Remotes::new(&v.remotes),
                        carrier: v.carrier,
                        offload: v.offload,
                    }),
                    spec.max_frame_len(underlay_mtu) as usize,
                )
            }
        };
        let up = Uplink {
            spec: spec.clone(),
            wire,
            max_frame,
            pending: Arc::default(),
            carrier: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            rate: Mutex::new(TokenBucket::new(0)),
            counters: UplinkCounters::default(),
        };
        up.carrier.store(up.sense_carrier(), Ordering::Release);
        Ok(up)
    }

    pub fn spec(&self) -> &UplinkSpec {
        &self.spec
    }

    pub fn wire(&self) -> &Wire {
        &self.wire
    }

    pub fn port_id(&self) -> PortId {
        UPLINK_PORT_ID
    }

    /// The longest frame the wire carries (Ethernet header included).
    #[inline]
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Queue pairs: the TAP's queues, or 1 (the socket).
    pub fn queues(&self) -> usize {
        match &self.wire {
            Wire::Tap(t) => t.queues(),
            Wire::Vxlan(_) => 1,
        }
    }

    /// The descriptor that is readable when queue `qp` has frames; `None` once the device
    /// failed for good.
    pub fn fd(&self, qp: usize) -> Option<RawFd> {
        if self.broken.load(Ordering::Acquire) {
            return None;
        }
        match &self.wire {
            Wire::Tap(t) => (qp < t.queues()).then(|| t.fd(qp)),
            Wire::Vxlan(v) => {
                use std::os::fd::AsRawFd;
                (qp == 0).then(|| v.socket.as_raw_fd())
            }
        }
    }

    /// The device failed for good (logged once).
    pub fn set_broken(&self, why: &dyn std::fmt::Display) {
        if !self.broken.swap(true, Ordering::AcqRel) {
            tracing::error!("uplink {}: {why}; the uplink stops", self.spec);
        }
    }

    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Sets the line rate, Mbit/s (0: unlimited).
    pub fn set_rate(&self, mbps: u32) {
        *self.rate() = TokenBucket::new(mbps);
    }

    /// The line rate's bucket.
    pub fn rate(&self) -> MutexGuard<'_, TokenBucket> {
        self.rate.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The TX queue pairs (frames from the wire) marked pending.
    pub fn tx_pending(&self) -> &Arc<TxPending> {
        &self.pending
    }

    /// The carrier as last sensed.
    #[inline]
    pub fn carrier(&self) -> bool {
        self.carrier.load(Ordering::Acquire)
    }

    /// Senses the carrier now (TAP: the device is administratively up; VXLAN: always, or a
    /// remote was heard from within the timeout with `carrier=peer`). Returns the new state
    /// if it changed. `ports` (the carrier the ports' link state `auto` follows) is updated
    /// first, so that whoever sees the uplink's carrier change also sees the VFs' links
    /// follow (a test reading one then the other once caught them apart). One caller, the
    /// carrier watcher.
    pub fn check_carrier(&self, ports: &AtomicBool) -> Option<bool> {
        let now = self.sense_carrier();
        if self.carrier.load(Ordering::Acquire) == now {
            return None;
        }
        ports.store(now, Ordering::Release);
        self.carrier.store(now, Ordering::Release);
        self.counters.carrier_changes.inc();
        Some(now)
    }

    fn sense_carrier(&self) -> bool {
        if self.is_broken() {
            return false;
        }
        match &self.wire {
            Wire::Tap(t) => match t.is_up() {
                Ok(up) => up,
                Err(e) => {
                    tracing::warn!("uplink {}: cannot read its state: {e}", self.spec);
                    false
                }
            },
            Wire::Vxlan(v) => match v.carrier {
                Carrier::AlwaysOn => true,
                Carrier::Peer { timeout } => v.remotes.any_heard_within(timeout),
            },
        }
    }

    /// How often to send keepalives (`Carrier::keepalive_interval`); `None` without them.
    pub fn keepalive_interval(&self, min: std::time::Duration) -> Option<std::time::Duration> {
        match &self.wire {
            Wire::Vxlan(v) => v.carrier.keepalive_interval(min),
            Wire::Tap(_) => None,
        }
    }

    /// With `carrier=peer`, tells every remote we are alive (one datagram each; called every
    /// `keepalive_interval`). Nothing otherwise.
    pub fn send_keepalives(&self) {
        let Wire::Vxlan(v) = &self.wire else {
            return;
        };
        if v.carrier == Carrier::AlwaysOn {
            return;
        }
        let mut dgram = [0u8; vxlan_header::VXLAN_HDR_LEN + KEEPALIVE_LEN];
        dgram[..8].copy_from_slice(&vxlan_header::encode(v.vni));
        dgram[8..14].copy_from_slice(&KEEPALIVE_DST);
        dgram[20..22].copy_from_slice(&KEEPALIVE_ETHERTYPE.to_be_bytes());
        dgram[22..40].copy_from_slice(b"sriov-emu alive\0\0\0");
        for r in v.remotes.iter() {
            if v.socket.send_to(&dgram, r.addr).is_ok() {
                self.counters.keepalives_tx.inc();
            }
        }
    }

    /// The address of remote `r` (VXLAN), for the FDB's view.
    pub fn remote_name(&self, r: u16) -> Option<String> {
        match &self.wire {
            Wire::Vxlan(v) => v.remotes.get(usize::from(r)).map(|x| x.addr.to_string()),
            Wire::Tap(_) => None,
        }
    }

    /// Every uplink counter and per-remote counter with its name (`remote_0_tx_packets`).
    pub fn for_each_counter(&self, mut f: impl FnMut(String, u64)) {
        self.counters.for_each(|n, v| f(n.to_string(), v));
        if let Wire::Vxlan(v) = &self.wire {
            for (i, r) in v.remotes.iter().enumerate() {
                let c = &r.counters;
                f(format!("remote_{i}_rx_packets"), c.rx_packets.get());
                f(format!("remote_{i}_rx_bytes"), c.rx_bytes.get());
                f(format!("remote_{i}_tx_packets"), c.tx_packets.get());
                f(format!("remote_{i}_tx_bytes"), c.tx_bytes.get());
            }
        }
    }

    /// The remotes' addresses, in index order (VXLAN).
    pub fn remote_addrs(&self) -> Vec<String> {
        match &self.wire {
            Wire::Vxlan(v) => v.remotes.iter().map(|r| r.addr.to_string()).collect(),
            Wire::Tap(_) => Vec::new(),
        }
    }
}

impl std::fmt::Debug for Uplink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Uplink")
            .field("spec", &self.spec.to_string())
            .field("max_frame", &self.max_frame)
            .field("carrier", &self.carrier())
            .finish()
    }
}
