//! The seed corpus of fixtures/fuzz/, made here so it can be read and remade: real frames
//! (fixtures/captures/mixed.pcap and hand-made ones with VLAN, QinQ, IPv6 extension headers,
//! VXLAN), ring layouts, QMP lines, `ctl` words and config files. `write_seed_corpus` (ignored)
//! writes them; `the_seed_corpus_is_the_one_made_here` checks the files are there. Inputs a
//! fuzzer found (regressions) sit beside them under other names.

use sriov_emu::fuzzing::*;
use std::path::Path;

/// (target, file name, bytes) of every seed.
pub fn all() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in desc_chain() {
        out.push(("desc_chain", name, bytes));
    }
    for (name, bytes) in frame_parse() {
        out.push(("frame_parse", name, bytes));
    }
    for (name, bytes) in control_request() {
        out.push(("control_request", name, bytes));
    }
    for (name, bytes) in config_file() {
        out.push(("config_file", name, bytes));
    }
    out
}

// --- frames -------------------------------------------------------------------------------

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0x02, 0x01];

fn eth(tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = MAC_B.to_vec();
    f.extend_from_slice(&MAC_A);
    for &(tpid, tci) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&tci.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 header (with `options` 4-byte words of options) and `l4`.
fn ipv4(proto: u8, frag: u16, options: usize, l4: &[u8]) -> Vec<u8> {
    let ihl = 5 + options;
    let mut ip = vec![0u8; 4 * ihl];
    ip[0] = 0x40 | ihl as u8;
    let total = (ip.len() + l4.len()) as u16;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[6..8].copy_from_slice(&frag.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
    for o in 0..options {
        ip[20 + 4 * o] = 1; // NOP
    }
    let sum = sriov_emu::wire::checksum::fold(sriov_emu::wire::checksum::ones_sum(&ip, 0));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(l4);
    ip
}

/// An IPv6 header whose next header is `next`, then `rest`.
fn ipv6(next: u8, rest: &[u8]) -> Vec<u8> {
    let mut ip = vec![0u8; 40];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&(rest.len() as u16).to_be_bytes());
    ip[6] = next;
    ip[7] = 64;
    ip[8..12].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    ip[23] = 1;
    ip[24..28].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    ip[39] = 2;
    ip.extend_from_slice(rest);
    ip
}

fn udp(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut u = sport.to_be_bytes().to_vec();
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

fn tcp_syn(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&65535u16.to_be_bytes());
    t
}

const IPV4: u16 = 0x0800;
const IPV6: u16 = 0x86dd;
const Q: u16 = 0x8100;
const AD: u16 = 0x88a8;

/// Hand-made frames: (name, frame).
fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let payload = [0x5a; 32];
    // Hop-by-hop options (8 bytes) then UDP: RSS sees a 2-tuple.
    let mut hbh = vec![17, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&udp(1234, 5678, &payload));
    // A fragment header then UDP.
    let mut frag6 = vec![17, 0, 0, 1, 0, 0, 0, 7];
    frag6.extend_from_slice(&udp(1234, 5678, &payload));
    vec![
        (
            "udp4",
            eth(&[], IPV4, &ipv4(17, 0, 0, &udp(1234, 5678, &payload))),
        ),
        (
            "tcp4_options",
            eth(&[], IPV4, &ipv4(6, 0, 2, &tcp_syn(1234, 80))),
        ),
        (
            "udp4_fragment",
            eth(&[], IPV4, &ipv4(17, 0x2000, 0, &udp(1, 2, &payload))),
        ),
        (
            "tcp4_vlan",
            eth(&[(Q, 0x6064)], IPV4, &ipv4(6, 0, 0, &tcp_syn(1234, 80))),
        ),
        (
            "udp4_qinq",
            eth(
                &[(AD, 0x0064), (Q, 0x0005)],
                IPV4,
                &ipv4(17, 0, 0, &udp(53, 1000, &payload)),
            ),
        ),
        (
            "udp6",
            eth(&[], IPV6, &ipv6(17, &udp(1234, 5678, &payload))),
        ),
        (
            "tcp6_vlan",
            eth(&[(Q, 0x0007)], IPV6, &ipv6(6, &tcp_syn(1234, 80))),
        ),
        ("udp6_hop_by_hop", eth(&[], IPV6, &ipv6(0, &hbh))),
        (
            "udp6_fragment_qinq",
            eth(&[(AD, 0x0064), (Q, 0x0005)], IPV6, &ipv6(44, &frag6)),
        ),
        ("arp", {
            let mut a = eth(&[], 0x0806, &[0, 1, 8, 0, 6, 4, 0, 1]);
            a.resize(60, 0);
            a
        }),
        (
            "short",
            MAC_B[..].iter().chain(&MAC_A[..4]).copied().collect(),
        ),
    ]
}

/// The frames of fixtures/captures/mixed.pcap (ARP, UDP, TCP, IPv6, VLAN, QinQ, jumbo,
/// malformed), the jumbo one cut to 256 bytes.
fn captured() -> Vec<Vec<u8>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/captures/mixed.pcap");
    let frames = sriov_emu::capture::replay::read_frames(&path).expect("mixed.pcap");
    frames
        .frames
        .into_iter()
        .map(|mut f| {
            f.truncate(256);
            f
        })
        .collect()
}

// --- frame_parse ----------------------------------------------------------------------------

/// The `frame_parse` header: flags, port VLAN TCI, extra length, enabled queues, table size.
fn frame_header(flags: u8, tci: u16, extra: u16, enabled: u16, table: u8) -> Vec<u8> {
    let mut h = vec![flags];
    h.extend_from_slice(&tci.to_le_bytes());
    h.extend_from_slice(&extra.to_le_bytes());
    h.extend_from_slice(&enabled.to_le_bytes());
    h.push(table);
    assert_eq!(h.len(), FRAME_HEADER);
    h
}

fn frame_parse() -> Vec<(String, Vec<u8>)> {
    let up = FRAME_F_LINK_UP;
    let vf = FRAME_F_VF | FRAME_F_LINK_UP;
    let mut out = Vec::new();
    for (i, f) in captured().into_iter().enumerate() {
        let mut b = frame_header(up, 0, 0, 0x000f, 0);
        b.extend_from_slice(&f);
        out.push((format!("pcap_{i}"), b));
    }
    // Each hand-made frame from a PV port with 4 queues, from a VF with a port VLAN (802.1Q,
    // qos 3) and a user table, from a QinQ port VLAN VF with spoof checking.
    for (name, f) in frames() {
        for (tag, h) in [
            ("pv", frame_header(up, 0, 0, 0x000f, 0)),
            ("vf_vlan", frame_header(vf, 0x6064, 0, 0x00ff, 5)),
            (
                "vf_qinq_spoofchk",
                frame_header(
                    vf | FRAME_F_QINQ | FRAME_F_SPOOFCHK,
                    0x0064,
                    1400,
                    0x0003,
                    0,
                ),
            ),
        ] {
            let mut b = h;
            b.extend_from_slice(&f);
            out.push((format!("{name}_{tag}"), b));
        }
    }
    // Inside VXLAN from the uplink (VNI 5).
    for (name, f) in frames()
        .into_iter()
        .filter(|(n, _)| ["udp4", "tcp6_vlan"].contains(n))
    {
        let mut b = frame_header(up | FRAME_F_VXLAN, 0, 0, 0x0003, 0);
        b.extend_from_slice(&sriov_emu::uplink::vxlan_header::encode(5));
        b.extend_from_slice(&f);
        out.push((format!("vxlan_{name}"), b));
    }
    // A trusted, promiscuous VF with its link down.
    let mut b = frame_header(FRAME_F_VF | FRAME_F_TRUST | FRAME_F_PROMISC, 0, 0, 1, 0);
    b.extend_from_slice(&frames()[0].1);
    out.push(("udp4_link_down".into(), b));
    out
}

// --- desc_chain -----------------------------------------------------------------------------

const NEXT: u16 = 1;
const WRITE: u16 = 2;
const INDIRECT: u16 = 4;

/// A `desc_chain` input under construction: its header fields and guest memory.
struct Rings {
    flags: u8,
    tx_log2: u8,
    rx_log2: u8,
    pop: u8,
    /// TX next_avail, next_used, RX next_avail, next_used.
    idx: [u16; 4],
    max_frame: u16,
    /// TX desc, avail, used; RX desc, avail, used.
    rings: [u32; 6],
    mem: Vec<u8>,
}

impl Rings {
    /// 16-entry rings: TX at 0x0/0x100/0x200, RX at 0x400/0x500/0x600.
    fn new(flags: u8) -> Rings {
        Rings {
            flags,
            tx_log2: 4,
            rx_log2: 4,
            pop: 8,
            idx: [0; 4],
            max_frame: 1518,
            rings: [0x000, 0x100, 0x200, 0x400, 0x500, 0x600],
            mem: Vec::new(),
        }
    }

    /// Writes `b` at guest address `gpa`: the input's memory section holds the regions of
    /// `DESC_MEMORY` one after the other.
    fn put(&mut self, gpa: u64, b: &[u8]) {
        for (i, v) in b.iter().enumerate() {
            let a = gpa + i as u64;
            let mut base = 0usize;
            let at = DESC_MEMORY.iter().find_map(|&(start, len)| {
                let hit = (start..start + len as u64).contains(&a);
                let at = base + (a.wrapping_sub(start)) as usize;
                base += len;
                hit.then_some(at)
            });
            let at = at.unwrap_or_else(|| panic!("{a:#x} is not in the fuzz target's memory"));
            if self.mem.len() <= at {
                self.mem.resize(at + 1, 0);
            }
            self.mem[at] = *v;
        }
    }

    fn desc_at(&mut self, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = addr.to_le_bytes().to_vec();
        d.extend_from_slice(&len.to_le_bytes());
        d.extend_from_slice(&flags.to_le_bytes());
        d.extend_from_slice(&next.to_le_bytes());
        self.put(table + 16 * u64::from(i), &d);
    }

    /// Descriptor `i` of the TX (`rx` false) or RX table.
    fn desc(&mut self, rx: bool, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let table = u64::from(self.rings[if rx { 3 } else { 0 }]);
        self.desc_at(table, i, addr, len, flags, next);
    }

    /// Makes `heads` available on the TX or RX ring, from its next_avail on.
    fn avail(&mut self, rx: bool, heads: &[u16]) {
        let ring = u64::from(self.rings[if rx { 4 } else { 1 }]);
        let size = 1u16 << if rx { self.rx_log2 } else { self.tx_log2 };
        let start = self.idx[if rx { 2 } else { 0 }];
        for (k, h) in heads.iter().enumerate() {
            let slot = start.wrapping_add(k as u16) & (size - 1);
            self.put(ring + 4 + 2 * u64::from(slot), &h.to_le_bytes());
        }
        let idx = start.wrapping_add(heads.len() as u16);
        self.put(ring + 2, &idx.to_le_bytes());
    }

    /// A TX frame: virtio-net header (12 bytes, zero) and `frame`, at `gpa`.
    fn frame(&mut self, gpa: u64, frame: &[u8]) -> u32 {
        let mut b = vec![0u8; 12];
        b.extend_from_slice(frame);
        self.put(gpa, &b);
        b.len() as u32
    }

    /// `n` RX buffers of `len` bytes from `gpa`, descriptors 0..n, all made available.
    fn rx_buffers(&mut self, n: u16, gpa: u64, len: u32) {
        for i in 0..n {
            self.desc(true, i, gpa + u64::from(i) * u64::from(len), len, WRITE, 0);
        }
        self.avail(true, &(0..n).collect::<Vec<_>>());
    }

    fn bytes(&self) -> Vec<u8> {
        let mut h = vec![self.flags, self.tx_log2, self.rx_log2, self.pop];
        for i in self.idx {
            h.extend_from_slice(&i.to_le_bytes());
        }
        h.extend_from_slice(&self.max_frame.to_le_bytes());
        h.extend_from_slice(&[0, 0]);
        for r in self.rings {
            h.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(h.len(), DESC_HEADER);
        h.extend_from_slice(&self.mem);
        h
    }
}

fn desc_chain() -> Vec<(String, Vec<u8>)> {
    let f = frames();
    let frame = |name: &str| {
        f.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    };
    let v1 = DESC_F_VERSION_1;
    let mut out = Vec::new();

    // Header and frame in separate descriptors, and in one; mergeable 64-byte RX buffers.
    let mut r = Rings::new(v1 | DESC_F_MRG_RXBUF);
    r.desc(false, 0, 0x800, 12, NEXT, 1);
    let n = r.frame(0x800, &frame("udp4")) - 12;
    r.desc(false, 1, 0x80c, n, 0, 0);
    let n = r.frame(0x900, &frame("tcp6_vlan"));
    r.desc(false, 2, 0x900, n, 0, 0);
    r.avail(false, &[0, 2]);
    r.rx_buffers(8, 0x1000, 64);
    out.push(("split_and_whole_mergeable".to_string(), r.bytes()));

    // An indirect TX chain; big RX buffers without mergeable buffers, EVENT_IDX, a tag
    // inserted on TX and stripped on RX, a RARP from a host buffer.
    let mut r = Rings::new(
        v1 | DESC_F_EVENT_IDX | DESC_F_HOST_FRAME | DESC_F_INSERT_TAG | DESC_F_STRIP_TAG,
    );
    r.desc(false, 0, 0x700, 32, INDIRECT, 0);
    r.desc_at(0x700, 0, 0x800, 12, NEXT, 1);
    let n = r.frame(0x800, &frame("udp4_qinq")) - 12;
    r.desc_at(0x700, 1, 0x80c, n, 0, 0);
    r.avail(false, &[0]);
    r.rx_buffers(4, 0x1000, 1600);
    out.push(("indirect_event_idx_tags".to_string(), r.bytes()));

    // A frame across the end of the first memory region (two segments), legacy 10-byte
    // header, ring indices near wrapping.
    let mut r = Rings::new(DESC_F_MRG_RXBUF);
    r.idx = [0xfffe, 0xfffe, 0xffff, 0xffff];
    let mut b = vec![0u8; 10];
    b.extend_from_slice(&frame("udp6"));
    r.put(0x2fc0, &b);
    r.desc(false, 3, 0x2fc0, b.len() as u32, 0, 0);
    r.avail(false, &[3]);
    r.rx_buffers(4, 0x1000, 256);
    out.push(("across_regions_wrapping".to_string(), r.bytes()));

    // Hostile chains: a loop, a write-only TX descriptor, next past the table, a buffer past
    // the end of memory, one at the top of the address space, an indirect table inside an
    // indirect table, a head past the ring; RX with a read-only buffer.
    let mut r = Rings::new(v1 | DESC_F_MRG_RXBUF);
    r.pop = 16;
    r.desc(false, 0, 0x800, 12, NEXT, 1);
    r.desc(false, 1, 0x80c, 60, NEXT, 0);
    r.desc(false, 2, 0x800, 72, WRITE, 0);
    r.desc(false, 3, 0x800, 72, NEXT, 40);
    r.desc(false, 4, 0x1_0f00, 0x200, 0, 0);
    r.desc(false, 5, 0xffff_ffff_ffff_ef00, 0x1000, 0, 0);
    r.desc(false, 6, 0x700, 32, INDIRECT, 0);
    r.desc_at(0x700, 0, 0x700, 16, INDIRECT, 0);
    r.desc(false, 7, 0x700, 20, INDIRECT, 0);
    r.frame(0x800, &frame("udp4"));
    r.avail(false, &[0, 2, 3, 4, 5, 6, 7, 99]);
    r.desc(true, 0, 0x1000, 128, 0, 0);
    r.desc(true, 1, 0x1100, 128, WRITE, 0);
    r.avail(true, &[0, 1]);
    out.push(("hostile".to_string(), r.bytes()));

    // The avail index more than a ring ahead on both rings.
    let mut r = Rings::new(v1);
    r.put(0x102, &40u16.to_le_bytes());
    r.put(0x502, &40u16.to_le_bytes());
    out.push(("avail_overrun".to_string(), r.bytes()));

    // 256-entry rings elsewhere (the TX table fills the region after the gap), one RX buffer
    // too small for the frame without mergeable buffers, then one big enough.
    let mut r = Rings::new(v1);
    r.tx_log2 = 8;
    r.rx_log2 = 8;
    r.rings = [0x1_0000, 0x0, 0x400, 0x1000, 0x2000, 0x2400];
    let n = r.frame(0x2d00, &frame("tcp4_options"));
    r.desc(false, 0, 0x2d00, n, 0, 0);
    r.avail(false, &[0]);
    r.desc(true, 0, 0x3000, 40, WRITE, 0);
    r.desc(true, 1, 0x3100, 200, WRITE, 0);
    r.avail(true, &[0, 1]);
    out.push(("big_rings_short_buffer".to_string(), r.bytes()));
    out
}

// --- control_request ------------------------------------------------------------------------

/// The index of a command in `COMMAND_ARGS`, as `control_request`'s first byte.
fn sel(name: &str) -> u8 {
    let i = sriov_emu::control::COMMAND_ARGS
        .iter()
        .position(|(n, _)| *n == name)
        .expect(name);
    i as u8
}

fn control_request() -> Vec<(String, Vec<u8>)> {
    let key = sriov_emu::rss::DEFAULT_KEY.to_string();
    let lines: Vec<(&str, u8, String)> = vec![
        ("negotiate", 0, r#"{"execute":"qmp_capabilities"}"#.into()),
        ("query_vfs_id", 1, r#"{"execute":"query-vfs","id":"x1"}{"execute":"query-pf"}"#.into()),
        ("vf_set_all", 2, r#"{"execute":"vf-set","arguments":{"vf":3,"mac":"02:00:00:00:03:09","vlan":10,"qos":3,"proto":"802.1ad","spoofchk":false,"trust":true,"promisc":true,"link-state":"disable","max-tx-rate":100,"min-tx-rate":10,"channels":4}}"#.into()),
        ("vf_rss_set", 3, format!(r#"{{"execute":"vf-rss-set","arguments":{{"vf":1,"key":"{key}","table":[0,1,1,0],"flow-learning":true}}}}"#)),
        ("vf_rss_default", 4, r#"{"execute":"vf-rss-set","arguments":{"vf":1,"table":"default"}}"#.into()),
        ("vf_flow_add", 5, r#"{"execute":"vf-flow-add","arguments":{"vf":0,"proto":"tcp","src":"198.18.0.1","dst":"198.18.0.2","src-port":1000,"dst-port":80,"queue":1}}"#.into()),
        ("vf_rss_test_v6", 6, r#"{"execute":"vf-rss-test","arguments":{"vf":2,"proto":"udp","src":"2001:db8::1","dst":"2001:db8::2","src-port":53}}"#.into()),
        ("capture_start", 7, r#"{"execute":"capture-start","arguments":{"file":"/tmp/x.pcapng","ports":["vf0","drops"],"snaplen":128,"max-mb":4}}"#.into()),
        ("numvfs_stats_fdb", 8, "{\"execute\":\"set-numvfs\",\"arguments\":{\"numvfs\":8}}\n{\"execute\":\"query-stats\",\"arguments\":{\"port\":\"vf0\"}}\n{\"execute\":\"query-fdb\"} {\"execute\":\"capture-stop\",\"arguments\":{\"id\":1}}".into()),
        ("errors", 9, r#"{"execute":"vf-set","arguments":{"vf":-1,"vlan":"ten"},"id":[1,{"a":null}]} {"execute":5} {"arguments":{}} [1,2] {"execute":"nope","bogus":1} stray {"execute":"vf-flow-del","arguments":{"vf":1,"proto":"sctp","src":"1.2.3.4","dst":"::1"}}"#.into()),
        ("strings_and_escapes", 10, r#"{"execute":"query-stats","arguments":{"port":"v\"f}{\u0030\\"}}{"#.into()),
        ("args_flow_add", sel("vf-flow-add"), r#"{"vf":1,"proto":"udp","src":"198.18.0.1","dst":"198.18.0.2","src-port":53,"dst-port":1000,"queue":1}"#.into()),
        ("args_capture_start", sel("capture-start"), r#"{"file":"/tmp/c.pcapng","snaplen":65535}"#.into()),
        ("args_vf_set", sel("vf-set"), r#"{"vf":7,"link-state":"auto","rate":5,"vlan":4095,"qos":7}"#.into()),
        ("ctl_set", 3, "set mac 02:00:00:00:03:09 vlan 10 qos 3 proto 802.1ad spoofchk off trust on state disable max_tx_rate 100 min_tx_rate 10 channels 4".into()),
        ("ctl_rss", 1, format!("rss key {key} table 0 1 1 learning on")),
        ("ctl_rss_test", 2, "rss test tcp 198.18.0.1:1000 198.18.0.2:80".into()),
        ("ctl_flow_add_v6", 4, "flow add udp [2001:db8::1]:53 2001:db8::2 queue 3".into()),
        ("ctl_flow_del_list", 5, "flow del ip 198.18.0.1 198.18.0.2".into()),
        ("ctl_flow_list", 6, "flow list".into()),
        ("ctl_rss_table_default", 7, "rss table default learning off".into()),
    ];
    lines
        .into_iter()
        .map(|(name, s, text)| {
            let mut b = vec![s];
            b.extend_from_slice(text.as_bytes());
            (name.to_string(), b)
        })
        .collect()
}

// --- config_file ----------------------------------------------------------------------------

fn config_file() -> Vec<(String, Vec<u8>)> {
    let example = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/config.toml"))
        .expect("fixtures/config.toml");
    let texts: Vec<(&str, &str)> = vec![
        ("empty", ""),
        ("pf_only", "numvfs = 254\npv_ports = 2\nchannels_per_vf = 8\nmtu = 9000\npv_channels = 4\npv_mtu = 1500\nfdb_aging = 60\nflow_learning = true\nstats_interval = 10\n"),
        ("vxlan_v4", "numvfs = 2\nuplink = \"vxlan:local=198.18.0.1:4789,remote=198.18.0.2:4789,remote=198.18.0.3:4790,vni=5,carrier=peer,peer-timeout-ms=2500,offload=off\"\nuplink_mtu = 1500\nuplink_rate = 1000\n"),
        ("vxlan_v6", "uplink = \"vxlan:local=[2001:db8::1]:4789,remote=[2001:db8::2]:4789,vni=16777215,carrier=on\"\n"),
        ("tap", "uplink = \"tap:sriov0,queues=4\"\nsocket_dir = \"/run/sriov-emu\"\ncontrol = \"/run/sriov-emu/control.sock\"\n"),
        ("vf_tables", "numvfs = 4\n[[vf]]\nindex = 0\nmac = \"02:00:00:00:aa:01\"\nvlan = 4095\nqos = 7\nproto = \"802.1ad\"\nspoofchk = false\ntrust = true\npromisc = true\nlink_state = \"enable\"\nmax_tx_rate = 10000\nmin_tx_rate = 10000\nchannels = 64\n[[vf]]\nindex = 3\nlink_state = \"auto\"\n"),
        ("inline_tables", "numvfs = 3\nvf = [{index = 1, vlan = 7}, {index = 2, trust = true, promisc = false}]\n"),
        ("bad_values", "numvfs = 4\n[[vf]]\nindex = 1\nvlan = 5000\n[[vf]]\nindex = 1\nchannels = -3\npromisc = true\n"),
        ("bad_syntax", "numvfs = [\n[[vf]]\nindex = 'x'\nvlna = 5\nuplink = \"vxlan:local=nope\"\n"),
    ];
    let mut out = vec![("example".to_string(), example)];
    out.extend(
        texts
            .into_iter()
            .map(|(n, t)| (n.to_string(), t.as_bytes().to_vec())),
    );
    out
}
