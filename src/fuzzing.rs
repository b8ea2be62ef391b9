//! Fuzz targets: one entry function per target, from arbitrary bytes to the code that parses
//! what a guest or a user hands the emulator. None may panic, whatever the bytes: a panic,
//! including a failed invariant check below, is a finding (a bug in the code under test, or
//! in the check).
//!
//! - `desc_chain`: guest memory, two split rings and their indices; TX chains popped and
//!   walked as a VF's TX queue does (direct and indirect), their heads switched, then written
//!   into the RX ring with mergeable buffers or not, and completed.
//! - `frame_parse`: a frame's head as the switch and RSS parse it (Ethernet, 802.1Q/802.1ad,
//!   IPv4, IPv6, TCP, UDP; optionally inside a VXLAN datagram from the uplink), the edge
//!   policy's tag insert and strip, the FDB, the Toeplitz hash and the RX queue choice.
//! - `control_request`: bytes from a control socket client (the stream splitter, QMP
//!   requests, every command's arguments) and `ctl`'s `vf N ...` words.
//! - `config_file`: a `--config` file, the PF built from it, its `[[vf]]` tables checked.
//!
//! The libFuzzer targets in `fuzz/` and the stable smoke test (`tests/fuzz_smoke.rs`) both call
//! [`TARGETS`]; docs/fuzzing.md says how to run them. Each entry function returns the stages
//! the input [`Reached`], so the smoke test can check that the seed corpus (fixtures/fuzz/)
//! goes deep into each target rather than being refused at the door.

use crate::config::ConfigFile;
use crate::control::client::vf_command;
use crate::control::{parse_command, parse_request, Piece, Splitter, COMMAND_ARGS};
use crate::dma_engine::rx::{RxFill, RxScratch, UsedShadow};
use crate::dma_engine::tx::walk_tx;
use crate::dma_engine::{
    vnet_hdr_len, Direction, FrameView, GuestMap, GuestMem, Segments, SplitRing, MAX_SEGMENTS,
};
use crate::pf::{self, default_vf_mac, Pf, PfConfig};
use crate::port::TxFrame;
use crate::rss::{
    toeplitz_reference, EnabledQueues, FlowTuple, ToeplitzTable, VfRss, DEFAULT_KEY, MAX_INPUT,
};
use crate::switch::policy::{self, EdgePolicy, Egress, Ingress, PolicyDrop};
use crate::switch::{vlan, FromPort, PortId, PortRole, Switch, Verdict};
use crate::uplink::{vxlan_header, UplinkSpec};
use crate::vf::knobs::{self, KnobValues, KNOBS};
use crate::vf::VfSettings;
use crate::wire::{write_rarp_announce, FrameHeader, MacAddr, HEADER_COPY_LEN, RARP_FRAME_LEN};
use serde_json::{Map, Value};
use std::sync::Arc;
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The stages of a target one input reached: bit `i` is the target's `stages[i]`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reached(pub u32);

impl Reached {
    fn set(&mut self, stage: u32) {
        self.0 |= 1 << stage;
    }

    pub fn has(self, stage: usize) -> bool {
        self.0 & (1 << stage) != 0
    }
}

impl std::ops::BitOrAssign for Reached {
    fn bitor_assign(&mut self, o: Reached) {
        self.0 |= o.0;
    }
}

/// One fuzz target.
pub struct Target {
    /// The cargo-fuzz target's name, and its corpus directory under fixtures/fuzz/.
    pub name: &'static str,
    pub run: fn(&[u8]) -> Reached,
    /// What each bit of `Reached` means.
    pub stages: &'static [&'static str],
}

/// Every target.
pub static TARGETS: &[Target] = &[
    Target {
        name: "desc_chain",
        run: desc_chain,
        stages: DESC_STAGES,
    },
    Target {
        name: "frame_parse",
        run: frame_parse,
        stages: FRAME_STAGES,
    },
    Target {
        name: "control_request",
        run: control_request,
        stages: CONTROL_STAGES,
    },
    Target {
        name: "config_file",
        run: config_file,
        stages: CONFIG_STAGES,
    },
];

/// `N` bytes at `at`, zeros past the end of `data`.
fn bytes<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut b = [0u8; N];
    for (i, v) in b.iter_mut().enumerate() {
        *v = data.get(at + i).copied().unwrap_or(0);
    }
    b
}

fn le16(data: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(bytes(data, at))
}

fn le32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes(data, at))
}

// ---------------------------------------------------------------------------------------------
// desc_chain

/// The guest memory of `desc_chain`: (guest address, bytes). Two adjacent regions (a buffer
/// may run from one into the next: two segments), one after a gap, and one at the top of the
/// address space (an address plus a length wraps).
pub const DESC_MEMORY: [(u64, usize); 4] = [
    (0, 0x3000),
    (0x3000, 0x1000),
    (0x1_0000, 0x1000),
    (0xffff_ffff_ffff_e000, 0x1000),
];

/// Bytes of `desc_chain`'s header; guest memory contents follow it.
pub const DESC_HEADER: usize = 40;
/// `desc_chain` header byte 0: the flags.
pub const DESC_F_EVENT_IDX: u8 = 1;
pub const DESC_F_MRG_RXBUF: u8 = 2;
pub const DESC_F_VERSION_1: u8 = 4;
/// Deliver a RARP announcement from a host buffer too (what a port injects after migration).
pub const DESC_F_HOST_FRAME: u8 = 8;
/// Insert an 802.1Q tag into each TX frame's head (a port VLAN at ingress).
pub const DESC_F_INSERT_TAG: u8 = 16;
/// Strip the outer tag from each tagged frame's head on delivery (a port VLAN at egress).
pub const DESC_F_STRIP_TAG: u8 = 32;
/// Most TX chains popped per input.
const DESC_MAX_POP: usize = 16;

const DESC_STAGES: &[&str] = &[
    "tx ring mapped",
    "tx chain valid",
    "tx chain refused",
    "tx indirect chain valid",
    "rx ring mapped",
    "rx frame delivered",
    "rx frame refused",
    "rx more buffers than frames",
    "tx segment list split at a region end",
];

/// The `desc_chain` input header, decoded. Bytes (little endian): 0 flags (`DESC_F_*`), 1 and 2
/// log2 of the TX and RX ring sizes (low 4 bits), 3 chains to pop (mod 17), 4..12 the device's
/// TX next_avail, TX next_used, RX next_avail, RX next_used, 12..14 the largest frame, 14..16
/// unused, 16..40 the guest addresses of the TX desc, avail and used rings, then the RX ones.
struct DescHeader {
    flags: u8,
    tx_size: u16,
    rx_size: u16,
    pop: usize,
    tx_next_avail: u16,
    tx_next_used: u16,
    rx_next_avail: u16,
    rx_next_used: u16,
    max_frame: usize,
    /// TX desc, avail, used; RX desc, avail, used.
    rings: [u32; 6],
}

impl DescHeader {
    fn parse(d: &[u8]) -> DescHeader {
        DescHeader {
            flags: bytes::<1>(d, 0)[0],
            tx_size: 1 << (bytes::<1>(d, 1)[0] & 15),
            rx_size: 1 << (bytes::<1>(d, 2)[0] & 15),
            pop: usize::from(bytes::<1>(d, 3)[0]) % (DESC_MAX_POP + 1),
            tx_next_avail: le16(d, 4),
            tx_next_used: le16(d, 6),
            rx_next_avail: le16(d, 8),
            rx_next_used: le16(d, 10),
            max_frame: usize::from(le16(d, 12)),
            rings: std::array::from_fn(|i| le32(d, 16 + 4 * i)),
        }
    }

    fn features(&self) -> u64 {
        let mut f = 0;
        if self.flags & DESC_F_MRG_RXBUF != 0 {
            f |= 1 << VIRTIO_NET_F_MRG_RXBUF;
        }
        if self.flags & DESC_F_VERSION_1 != 0 {
            f |= 1 << VIRTIO_F_VERSION_1;
        }
        f
    }

    /// The queue as the vhost-user handler would have configured it.
    fn queue(&self, size: u16, rings: &[u32]) -> Option<Queue> {
        let mut q = Queue::new(32768).ok()?;
        q.set_size(size);
        q.set_desc_table_address(Some(rings[0]), Some(0));
        q.set_avail_ring_address(Some(rings[1]), Some(0));
        q.set_used_ring_address(Some(rings[2]), Some(0));
        q.set_event_idx(self.flags & DESC_F_EVENT_IDX != 0);
        q.set_ready(true);
        Some(q)
    }
}

/// Guest memory with `contents` written from guest address 0 up, region after region.
fn desc_memory(contents: &[u8]) -> Option<Arc<GuestMem>> {
    let ranges: Vec<(GuestAddress, usize)> = DESC_MEMORY
        .iter()
        .map(|&(a, n)| (GuestAddress(a), n))
        .collect();
    let mem = GuestMem::from_ranges(&ranges).ok()?;
    let mut rest = contents;
    for &(gpa, len) in &DESC_MEMORY {
        let n = rest.len().min(len);
        mem.write_slice(&rest[..n], GuestAddress(gpa)).ok()?;
        rest = &rest[n..];
    }
    Some(Arc::new(mem))
}

/// Every segment of a walked chain (even one refused half-way) lies inside one mapped region
/// of guest memory, is not empty, and their lengths add up to the chain's total. Returns
/// whether a segment other than the last ends where a region does (a buffer split across
/// regions, or a chain going on elsewhere).
fn check_segments(map: &GuestMap, segs: &Segments) -> bool {
    let mut total = 0usize;
    let mut split = false;
    let n = segs.as_slice().len();
    assert!(n <= MAX_SEGMENTS);
    for (i, s) in segs.as_slice().iter().enumerate() {
        assert!(s.len > 0, "empty segment in {segs:?}");
        let len = s.len as usize;
        let (Some(first), Some(last)) = (map.gpa_of(s.host), map.gpa_of(s.host + (len - 1))) else {
            panic!("segment {s:?} outside guest memory");
        };
        assert_eq!(
            last.wrapping_sub(first),
            len as u64 - 1,
            "segment {s:?} spans mappings"
        );
        let end = last.wrapping_add(1);
        if i + 1 < n
            && DESC_MEMORY
                .iter()
                .any(|&(a, l)| a.wrapping_add(l as u64) == end)
        {
            split = true;
        }
        total += len;
    }
    assert_eq!(total, segs.total(), "segment lengths vs total");
    split
}

/// Whether descriptor `head` of the table at `desc` is an indirect one (read as the guest
/// wrote it).
fn is_indirect(mem: &GuestMem, desc: u32, head: u16) -> bool {
    let at = u64::from(desc) + 16 * u64::from(head) + 12;
    mem.read_obj::<u16>(GuestAddress(at))
        .is_ok_and(|flags| flags & 4 != 0)
}

/// Guest memory and two rings from bytes (`DESC_HEADER` bytes of header, then the memory):
/// TX chains popped, walked and switched as a VF's TX queue does, written into the RX ring,
/// then completed. Every segment a walk yields must lie in guest memory.
pub fn desc_chain(data: &[u8]) -> Reached {
    let mut r = Reached::default();
    let h = DescHeader::parse(data);
    let Some(mem) = desc_memory(data.get(DESC_HEADER..).unwrap_or(&[])) else {
        return r;
    };
    let map = GuestMap::new(mem.clone());
    let features = h.features();
    let hdr_len = vnet_hdr_len(features);
    let mut frames: Vec<TxFrame> = (0..h.pop).map(|_| TxFrame::default()).collect();

    // TX: pop, walk, copy the heads out (vf::io's `pop`).
    let tx = h
        .queue(h.tx_size, &h.rings[..3])
        .and_then(|q| SplitRing::map(&q, &map));
    let mut popped = 0;
    let mut tx_next = h.tx_next_avail;
    if let Some(ring) = &tx {
        r.set(0);
        let pending = ring.avail_idx().wrapping_sub(tx_next);
        if pending <= ring.size() {
            popped = usize::from(pending).min(frames.len());
            for f in &mut frames[..popped] {
                let head = ring.avail_entry(tx_next);
                ring.prefetch_desc(head);
                ring.prefetch_buffer(&map, head, hdr_len);
                tx_next = tx_next.wrapping_add(1);
                f.returnable = head < ring.size();
                let len = walk_tx(ring, &map, head, hdr_len, h.max_frame, &mut f.segs);
                assert_eq!(f.segs.head, head);
                if check_segments(&map, &f.segs) {
                    r.set(8);
                }
                let Ok(len) = len else {
                    r.set(2);
                    continue;
                };
                assert_eq!(f.segs.total(), hdr_len + len);
                assert!(len >= crate::wire::ETH_HEADER_LEN && len <= h.max_frame);
                r.set(1);
                if is_indirect(&mem, h.rings[0], head) {
                    r.set(3);
                }
                // SAFETY: `f.segs` were walked just above with `map`, which lives (and keeps
                // `mem` mapped) until the end of this function.
                let ok = unsafe { f.take_head(hdr_len, len) };
                assert!(ok, "the walked chain holds the frame's head");
                switch_tx_head(f, h.flags);
            }
        }
    }

    // RX: each available chain walked once on its own (checked), then the frames written
    // into the ring (vf::io's `VhostRx`).
    let rx = h
        .queue(h.rx_size, &h.rings[3..])
        .and_then(|q| SplitRing::map(&q, &map));
    if let Some(ring) = &rx {
        r.set(4);
        let pending = ring.avail_idx().wrapping_sub(h.rx_next_avail);
        let mut segs = Segments::default();
        for i in 0..pending.min(ring.size()).min(DESC_MAX_POP as u16) {
            let head = ring.avail_entry(h.rx_next_avail.wrapping_add(i));
            let _ = ring.walk(&map, head, Direction::Write, &mut segs);
            check_segments(&map, &segs);
        }
        let expected = popped + usize::from(h.flags & DESC_F_HOST_FRAME != 0);
        let mut shadow = UsedShadow::default();
        if let Ok(fill) = RxFill::open(
            &map,
            ring,
            h.rx_next_avail,
            h.rx_next_used,
            features,
            expected,
            &mut shadow,
        ) {
            r |= fill_rx(fill, ring.size(), &h, &frames[..popped]);
        }
    }

    // TX completion (vf::io's `complete`), after delivery as in the pipeline.
    if let Some(ring) = &tx {
        let old = h.tx_next_used;
        let mut used = old;
        for f in frames[..popped].iter().filter(|f| f.returnable) {
            ring.write_used(used, f.segs.head, 0);
            used = used.wrapping_add(1);
        }
        ring.publish_used(used);
        let _ = ring.needs_notification(old, used);
        ring.disable_notification();
        let _ = ring.enable_notification(tx_next);
    }
    r
}

/// What the pipeline does to a popped frame's head before delivery: parse it, and insert a
/// port VLAN's tag if asked.
fn switch_tx_head(f: &mut TxFrame, flags: u8) {
    let _ = check_frame(f.head(), f.len, &FrameKnobs::OPEN);
    if flags & DESC_F_INSERT_TAG != 0 {
        let old = f.head().to_vec();
        let Some(n) = vlan::insert_tag(&mut f.head, f.head_len, policy::TPID_8021Q, 0x2005) else {
            panic!("no room for a tag in a head of {} bytes", f.head_len);
        };
        assert_eq!(n, f.head_len + vlan::TAG_LEN);
        f.head_len = n;
        f.len += vlan::TAG_LEN;
        let mut back = [0u8; crate::dma_engine::frame::MAX_HEAD];
        assert_eq!(vlan::strip_outer_tag(f.head(), &mut back), Some(old.len()));
        assert_eq!(back[..old.len()], old[..], "insert then strip");
    }
}

/// Writes `frames` (and a RARP from a host buffer, if asked) into an open RX group; checks
/// the ring's indices moved consistently.
fn fill_rx(mut fill: RxFill<'_>, size: u16, h: &DescHeader, frames: &[TxFrame]) -> Reached {
    let mut r = Reached::default();
    let mut scratch = RxScratch::default();
    let mut delivered = 0usize;
    let mut stripped = [0u8; crate::dma_engine::frame::MAX_HEAD];
    for f in frames.iter().filter(|f| f.ok) {
        // SAFETY: the frame's segments were walked with the caller's `GuestMap`, alive (and
        // keeping guest memory mapped) for this whole call.
        let mut view = unsafe { f.view() };
        if h.flags & DESC_F_STRIP_TAG != 0 && policy::outer_tag(f.head()).is_some() {
            if let Some(n) = vlan::strip_outer_tag(f.head(), &mut stripped) {
                view = view.with_head(&stripped[..n], f.len - vlan::TAG_LEN);
            }
        }
        match fill.deliver(&view, &mut scratch) {
            Ok(()) => {
                delivered += 1;
                r.set(5);
            }
            Err(_) => r.set(6),
        }
    }
    let mut rarp = [0u8; RARP_FRAME_LEN];
    if h.flags & DESC_F_HOST_FRAME != 0 {
        write_rarp_announce(MacAddr([2, 0, 0, 0, 1, 1]), &mut rarp);
        let mut segs = Segments::default();
        segs.reset(0);
        // SAFETY: `rarp` outlives `segs` and `view` (both dropped at the end of this block)
        // and is not touched but through them meanwhile.
        let pushed = unsafe { segs.push_host(rarp.as_ptr() as usize, rarp.len()) };
        assert!(pushed.is_ok());
        // SAFETY: as above: `segs` points at `rarp`, alive and only read while `view` lives.
        let view = unsafe { FrameView::new(&[], 0, rarp.len(), &segs) };
        match fill.deliver(&view, &mut scratch) {
            Ok(()) => {
                delivered += 1;
                r.set(5);
            }
            Err(_) => r.set(6),
        }
    }
    let (next_avail, next_used, _) = fill.finish();
    let taken = next_avail.wrapping_sub(h.rx_next_avail);
    let used = next_used.wrapping_sub(h.rx_next_used);
    assert!(taken <= size, "took {taken} buffers from a ring of {size}");
    assert!(
        used <= taken,
        "{used} used entries for {taken} buffers taken"
    );
    if usize::from(used) > delivered && delivered > 0 {
        r.set(7);
    }
    r
}

// ---------------------------------------------------------------------------------------------
// frame_parse

/// Bytes of `frame_parse`'s header; the frame follows it.
pub const FRAME_HEADER: usize = 8;
/// `frame_parse` header byte 0: the sender's edge policy, and how to read the rest.
pub const FRAME_F_VF: u8 = 1;
pub const FRAME_F_LINK_UP: u8 = 2;
pub const FRAME_F_SPOOFCHK: u8 = 4;
pub const FRAME_F_TRUST: u8 = 8;
pub const FRAME_F_PROMISC: u8 = 16;
/// The port VLAN's tag is 802.1ad (else 802.1Q).
pub const FRAME_F_QINQ: u8 = 32;
/// The frame is a VXLAN datagram's payload from the uplink: decoded, then its inner frame
/// parsed.
pub const FRAME_F_VXLAN: u8 = 64;

const FRAME_STAGES: &[&str] = &[
    "ethernet header",
    "policy passed",
    "port VLAN tag inserted",
    "ipv4",
    "ipv6",
    "tcp/udp ports",
    "802.1Q or 802.1ad tagged",
    "two tags",
    "vxlan decoded",
    "learned and answered",
    "user indirection table",
];

/// What `frame_parse`'s header says about the sender's port and the receiver's queues. Bytes
/// (little endian): 0 flags (`FRAME_F_*`), 1..3 the port VLAN's TCI (VLAN id, qos in the top 3
/// bits), 3..5 the frame's length beyond the bytes given, 5..7 the enabled RX queues (a mask),
/// 7 the user indirection table's length (0: the default spread).
struct FrameKnobs {
    policy: EdgePolicy,
    /// The receiving VF's enabled RX queues.
    enabled: u64,
    /// Entries of a user indirection table (0: the default spread).
    table: usize,
}

impl FrameKnobs {
    const OPEN: FrameKnobs = FrameKnobs {
        policy: EdgePolicy::OPEN,
        enabled: 1,
        table: 0,
    };

    fn parse(d: &[u8]) -> FrameKnobs {
        let f = bytes::<1>(d, 0)[0];
        let tci = le16(d, 1);
        FrameKnobs {
            policy: EdgePolicy {
                is_vf: f & FRAME_F_VF != 0,
                link_up: f & FRAME_F_LINK_UP != 0,
                mac: MacAddr([2, 0, 0, 0, 1, 1]),
                spoofchk: f & FRAME_F_SPOOFCHK != 0,
                trust: f & FRAME_F_TRUST != 0,
                promisc: f & FRAME_F_PROMISC != 0,
                vlan: tci & 0x0fff,
                qos: (tci >> 13) as u8,
                tpid: if f & FRAME_F_QINQ != 0 {
                    policy::TPID_8021AD
                } else {
                    policy::TPID_8021Q
                },
                max_tx_rate: 0,
                min_tx_rate: 0,
            },
            enabled: u64::from(le16(d, 5)),
            table: usize::from(bytes::<1>(d, 7)[0]),
        }
    }
}

/// Header bytes (`FRAME_HEADER`: edge policy, port VLAN, extra length, enabled queues,
/// indirection table) then a frame: parsed, policed, switched and steered as the pipeline
/// does, on the head copy the data path would take.
pub fn frame_parse(data: &[u8]) -> Reached {
    let knobs = FrameKnobs::parse(data);
    let flags = bytes::<1>(data, 0)[0];
    let extra = usize::from(le16(data, 3));
    let mut frame = data.get(FRAME_HEADER..).unwrap_or(&[]);
    let mut r = Reached::default();
    if flags & FRAME_F_VXLAN != 0 {
        let Ok((vni, inner)) = vxlan_header::decode(frame) else {
            return r;
        };
        assert!(inner.len() >= vxlan_header::INNER_MIN_LEN);
        assert_eq!(inner, &frame[vxlan_header::VXLAN_HDR_LEN..]);
        assert_eq!(vxlan_header::encode(vni)[4..7], frame[4..7]);
        r.set(8);
        frame = inner;
    }
    let len = frame.len() + extra;
    let head = &frame[..frame.len().min(HEADER_COPY_LEN)];
    r |= check_frame(head, len, &knobs);
    r
}

/// Whether an EtherType is a VLAN tag's.
fn is_tag(ethertype: u16) -> bool {
    ethertype == policy::TPID_8021Q || ethertype == policy::TPID_8021AD
}

/// The checks of one frame head (`len`: the whole frame's length): what the switch, the edge
/// policy and RSS make of it, against each other.
fn check_frame(head: &[u8], len: usize, k: &FrameKnobs) -> Reached {
    let mut r = Reached::default();
    let tuple = check_tuple(head, k, &mut r);
    let hdr = match FrameHeader::parse(head, len) {
        Ok(h) => h,
        Err(_) => {
            assert!(len < 14 || head.len() < 14);
            return r;
        }
    };
    r.set(0);
    assert_eq!(hdr.dst.0, head[..6]);
    assert_eq!(hdr.src.0, head[6..12]);
    assert_eq!(hdr.ethertype, u16::from_be_bytes([head[12], head[13]]));
    assert_eq!(hdr.src.to_string().parse::<MacAddr>().ok(), Some(hdr.src));
    let tags = usize::from(is_tag(hdr.ethertype))
        + usize::from(
            is_tag(hdr.ethertype)
                && head
                    .get(16..18)
                    .is_some_and(|t| is_tag(u16::from_be_bytes([t[0], t[1]]))),
        );
    if tags > 0 {
        r.set(6);
    }
    if tags > 1 {
        r.set(7);
    }

    // The sender's edge policy; a port VLAN's tag goes into a copy of the head.
    let p = &k.policy;
    let mut tagged = [0u8; crate::dma_engine::frame::MAX_HEAD];
    let mut head_len = head.len();
    tagged[..head_len].copy_from_slice(head);
    match policy::ingress(p, &hdr) {
        Err(drop) => {
            assert!(p.link_up || drop == PolicyDrop::LinkDown);
            return r;
        }
        Ok(Ingress::Pass) => {
            assert!(p.link_up && (!p.is_vf || p.vlan == 0));
        }
        Ok(Ingress::InsertTag(tpid, tci)) => {
            assert!(p.is_vf && p.vlan != 0 && tags == 0);
            let Some(n) = vlan::insert_tag(&mut tagged, head_len, tpid, tci) else {
                panic!("no room for a tag after a head of {head_len} bytes");
            };
            head_len = n;
            r.set(2);
            let head2 = &tagged[..head_len];
            assert_eq!(policy::outer_tag(head2), Some((tpid, p.vlan)));
            // The same VF receiving it: the tag is its own, so it is stripped, and what is
            // left is the frame as sent.
            assert_eq!(policy::egress(p, head2), Ok(Egress::StripTag));
            let mut back = [0u8; crate::dma_engine::frame::MAX_HEAD];
            assert_eq!(vlan::strip_outer_tag(head2, &mut back), Some(head.len()));
            assert_eq!(back[..head.len()], head[..]);
            // RSS sees through one more tag: the flow is the one sent.
            assert_eq!(
                check_tuple(head2, k, &mut r),
                tuple,
                "tagged vs untagged flow"
            );
        }
    }
    r.set(1);
    let head = &tagged[..head_len];
    let vlan_id = policy::outer_tag(head).map_or(0, |(_, v)| v);
    if let Ok(Egress::StripTag) = policy::egress(p, head) {
        let mut out = [0u8; crate::dma_engine::frame::MAX_HEAD];
        assert_eq!(
            vlan::strip_outer_tag(head, &mut out),
            Some(head.len() - vlan::TAG_LEN)
        );
    }

    // The FDB: a source learned on the uplink is where a reply from a PV port goes.
    let mut sw = Switch::new(crate::switch::DEFAULT_AGING_SECS);
    let from = |port, role| FromPort {
        port: PortId(port),
        role,
        remote: 3,
        vlan: vlan_id,
    };
    let (v, _) = sw.forward(&from(9, PortRole::Uplink), &hdr, 100);
    if hdr.dst.is_multicast() {
        assert_eq!(v, Verdict::Flood);
    }
    // (A frame to its own source teaches the FDB nothing about the reply: learning the
    // reply's source moves the address itself.)
    if hdr.src.is_assignable() && hdr.src != hdr.dst {
        let reply = FrameHeader {
            dst: hdr.src,
            src: hdr.dst,
            ethertype: hdr.ethertype,
        };
        let (v, _) = sw.forward(&from(1, PortRole::Pv), &reply, 101);
        assert_eq!(
            v,
            Verdict::Unicast(PortId(9), 3),
            "reply to a learned source"
        );
        r.set(9);
    }
    r
}

/// RSS's view of a head: the flow tuple, its hash (table-driven against the definition) and
/// the RX queue chosen (the data path's and the control plane's answers against each other).
fn check_tuple(head: &[u8], k: &FrameKnobs, r: &mut Reached) -> FlowTuple {
    let t = FlowTuple::parse(head);
    assert_eq!(FlowTuple::is_ip_frame(head), t.is_ip());
    assert_eq!(t.reversed().reversed(), t);
    let _ = t.to_string();
    match t.family {
        0 => return t,
        4 => r.set(3),
        _ => r.set(4),
    }
    if t.has_ports() {
        r.set(5);
    }
    let mut input = [0u8; MAX_INPUT];
    let n = t.hash_input(&mut input);
    let want = match (t.family, t.has_ports()) {
        (4, false) => 8,
        (4, true) => 12,
        (_, false) => 32,
        (_, true) => 36,
    };
    assert_eq!(n, want);
    let hash = ToeplitzTable::default_shared().hash_tuple(&t);
    assert_eq!(hash, toeplitz_reference(&DEFAULT_KEY, &input[..n]));

    let enabled = EnabledQueues::from_mask(k.enabled);
    let mut rss = VfRss::new(16);
    if k.table > 0 {
        let entries: Vec<u16> = (0..k.table.min(128))
            .map(|i| ((i * 7 + k.table) % 16) as u16)
            .collect();
        assert!(rss.set_table(Some(&entries)).is_ok());
        r.set(10);
    }
    let explained = rss.explain(&t, &enabled);
    let decided = rss.decide(&t, &enabled);
    assert_eq!(decided.queue, explained.queue);
    assert_eq!(explained.hash, Some(hash));
    if !enabled.is_empty() {
        assert!(enabled.contains(decided.queue), "{decided}");
    }
    if let Some(snap) = rss.snapshot() {
        let (q, by, _) = snap.steer(&t, &enabled);
        assert_eq!((q, by), (decided.queue, decided.by));
    }
    let _ = explained.to_string();
    t
}

// ---------------------------------------------------------------------------------------------
// control_request

const CONTROL_STAGES: &[&str] = &[
    "message split",
    "request parsed",
    "command parsed",
    "arguments of a chosen command parsed",
    "ctl words translated",
    "ctl command parsed by the server",
];

/// One byte (which command a JSON object is given to as arguments, the `vf N` of the words,
/// how the stream is cut), then bytes from a client: split into messages as the server reads
/// them, each parsed as a QMP request and its command's arguments, and as `ctl vf N` words.
pub fn control_request(data: &[u8]) -> Reached {
    let mut r = Reached::default();
    let sel = bytes::<1>(data, 0)[0];
    let text = data.get(1..).unwrap_or(&[]);

    // The splitter gives the same messages however the stream is cut into reads.
    let mut whole = Vec::new();
    Splitter::default().feed(text, |p| whole.push(p));
    let mut cut = Vec::new();
    let mut s = Splitter::default();
    for chunk in text.chunks(usize::from(sel % 7) + 1) {
        s.feed(chunk, |p| cut.push(p));
    }
    assert_eq!(whole, cut, "messages depend on how the stream was read");

    for piece in &whole {
        let Piece::Message(msg) = piece else {
            continue;
        };
        r.set(0);
        let line = String::from_utf8_lossy(msg);
        if let Ok(req) = parse_request(&line) {
            r.set(1);
            if parse_command(&req.execute, req.arguments).is_ok() {
                r.set(2);
            }
        }
        // The object as the arguments of a command chosen by `sel`: every command's
        // argument parsing is reached without guessing its name.
        if let Ok(Value::Object(args)) = serde_json::from_str::<Value>(&line) {
            let (name, _) = COMMAND_ARGS[usize::from(sel) % COMMAND_ARGS.len()];
            if parse_command(name, args).is_ok() {
                r.set(3);
            }
        }
    }

    // `ctl vf N WORDS`: what the client sends must be a command the server takes, with
    // arguments it knows (their values may still be refused).
    let words: Vec<String> = String::from_utf8_lossy(text)
        .split_whitespace()
        .map(String::from)
        .collect();
    if let Ok((cmd, args)) = vf_command(u32::from(sel), &words) {
        r.set(4);
        let Value::Object(args) = args else {
            panic!("{cmd}: arguments {args} are not an object");
        };
        match parse_command(cmd, args) {
            Ok(_) => r.set(5),
            Err(e) => assert!(
                e.class == "GenericError" && !e.desc.contains("is unexpected"),
                "ctl's {cmd} is not the server's: {}",
                e.desc
            ),
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// config_file

const CONFIG_STAGES: &[&str] = &[
    "file parsed",
    "pf config valid",
    "pf built",
    "vf tables checked",
    "vf settings round trip",
    "uplink round trip",
];

/// A config file (UTF-8, as `ConfigFile::load` reads it): parsed, the PF configuration built
/// from it as `sriov-emu run` does without flags, its `[[vf]]` tables checked; what passes
/// is shown (`query-vfs`'s fields, the uplink's canonical form) and read back the same.
pub fn config_file(data: &[u8]) -> Reached {
    let mut r = Reached::default();
    let Ok(text) = std::str::from_utf8(data) else {
        return r;
    };
    let Ok(file) = ConfigFile::parse(text) else {
        return r;
    };
    r.set(0);
    if let Some(spec) = &file.uplink {
        let shown = spec.to_string();
        assert_eq!(shown.parse::<UplinkSpec>().as_ref(), Ok(spec), "{shown}");
        let mtu = file.uplink_mtu.unwrap_or(1500);
        assert!(spec.guest_mtu(mtu) <= spec.max_frame_len(mtu));
        r.set(5);
    }
    // Other VF counts than the file's: no panic either way.
    for n in [0, 1, pf::TOTAL_VFS] {
        let _ = file.check_vfs(n);
    }
    let Ok(cfg) = PfConfig::new(
        "/nonexistent/sriov-emu-fuzz".into(),
        file.numvfs.unwrap_or(pf::DEFAULT_VFS.into()),
        file.pv_ports.unwrap_or(pf::DEFAULT_PV_PORTS.into()),
        file.channels_per_vf.unwrap_or(pf::DEFAULT_CHANNELS.into()),
        file.mtu.unwrap_or(pf::DEFAULT_MTU.into()),
    )
    .and_then(|c| c.with_pv_ports(file.pv_channels, file.pv_mtu)) else {
        return r;
    };
    r.set(1);
    if Pf::new(cfg.clone()).is_ok() {
        r.set(2);
    }
    if file.check_vfs(cfg.numvfs).is_err() {
        return r;
    }
    r.set(3);
    for v in &file.vf {
        let Ok(index) = u16::try_from(v.index) else {
            panic!("vf {} passed check_vfs", v.index);
        };
        let Ok(s) = v
            .knobs
            .settings
            .apply(&VfSettings::new(default_vf_mac(index)))
        else {
            panic!("vf {index}: settings that passed check_vfs are refused");
        };
        let channels = match v.knobs.channels() {
            Ok(Some(c)) => c as u16,
            _ => cfg.channels_per_vf,
        };
        assert_eq!(settings_round_trip(&s, channels), Some((s, channels)));
        r.set(4);
    }
    r
}

/// Settings as `query-vfs` shows them, given back to `vf-set` (on a VF with other settings):
/// the settings and channel count they make.
fn settings_round_trip(s: &VfSettings, channels: u16) -> Option<(VfSettings, u16)> {
    let res = knobs::VfResources {
        channels,
        client_path: None,
    };
    let shown: Map<String, Value> = knobs::json_fields(s, &res);
    let mut vals = KnobValues::default();
    for k in KNOBS {
        k.set_json(shown.get(k.qmp)?, &mut vals).ok()?;
    }
    let mut other = VfSettings::new(MacAddr([2, 0, 0, 0xee, 0xee, 1]));
    other.trust = !s.trust;
    let back = vals.settings.apply(&other).ok()?;
    let ch = u16::try_from(vals.channels().ok()??).ok()?;
    // "" (no client path) given back is the VF's own socket again.
    if vals.client_path().ok()? != Some(None) {
        return None;
    }
    Some((back, ch))
}
