//! Writes the small captures the replay tests use, `fixtures/captures/mixed.pcapng` and the same
//! frames as classic pcap in `mixed.pcap`: from vf0's MAC (02:00:00:00:00:01) to vf1's
//! (02:00:00:00:01:01) unless broadcast, with test addresses only (198.18.0.0/15,
//! 2001:db8::/32): an ARP request, IPv4 UDP and TCP, IPv6 UDP and TCP, an 802.1Q-tagged and an
//! 802.1ad (QinQ) frame, a 9014-byte jumbo frame and a malformed 10-byte one.
//!
//!     cargo run --release --example capture_fixtures     # rewrites fixtures/captures/

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, TsResolution};
use sriov_emu::wire::checksum::{fold, ones_sum as sum};
use std::borrow::Cow;
use std::time::Duration;

const SRC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DST: [u8; 6] = [2, 0, 0, 0, 1, 1];

fn eth(dst: [u8; 6], tags: &[(u16, u16)], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = dst.to_vec();
    f.extend_from_slice(&SRC);
    for &(tpid, vid) in tags {
        f.extend_from_slice(&tpid.to_be_bytes());
        f.extend_from_slice(&vid.to_be_bytes());
    }
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    while f.len() < 60 {
        f.push(0);
    }
    f
}

/// An IPv4 packet carrying `l4` (protocol `proto`) with its L4 checksum at `csum_at`.
fn ipv4(proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let (src, dst) = ([198, 18, 0, 1], [198, 18, 0, 2]);
    let len = 20 + l4.len();
    let mut pseudo = src.to_vec();
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let c = fold(sum(&l4, sum(&pseudo, 0)));
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut h = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, proto, 0, 0];
    h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    let c = fold(sum(&h, 0));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h.extend_from_slice(&l4);
    h
}

fn ipv6(proto: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let mut src = [0u8; 16];
    src[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    let mut dst = src;
    src[15] = 1;
    dst[15] = 2;
    let mut pseudo = src.to_vec();
    pseudo.extend_from_slice(&dst);
    pseudo.extend_from_slice(&(l4.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, proto]);
    let c = fold(sum(&l4, sum(&pseudo, 0)));
    l4[csum_at..csum_at + 2].copy_from_slice(&c.to_be_bytes());
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[proto, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(&l4);
    h
}

fn udp(payload: usize) -> Vec<u8> {
    let mut u = vec![0x04, 0xd2, 0x16, 0x2e, 0, 0, 0, 0];
    u[4..6].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
    u.extend((0..payload).map(|i| i as u8));
    u
}

fn tcp_syn() -> Vec<u8> {
    // Ports 1234 -> 80, seq 1, SYN, window 65535, data offset 5.
    vec![
        0x04, 0xd2, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]
}

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let arp = [
        0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 198, 18, 0, 2,
    ];
    let v4udp = ipv4(17, udp(32), 6);
    vec![
        ("arp request", eth([0xff; 6], &[], 0x0806, &arp)),
        ("ipv4 udp", eth(DST, &[], 0x0800, &v4udp)),
        (
            "ipv4 tcp syn",
            eth(DST, &[], 0x0800, &ipv4(6, tcp_syn(), 16)),
        ),
        ("ipv6 udp", eth(DST, &[], 0x86dd, &ipv6(17, udp(32), 6))),
        (
            "ipv6 tcp syn",
            eth(DST, &[], 0x86dd, &ipv6(6, tcp_syn(), 16)),
        ),
        (
            "802.1Q vlan 100",
            eth(DST, &[(0x8100, 100)], 0x0800, &v4udp),
        ),
        (
            "802.1ad 200 over 802.1Q 100",
            eth(DST, &[(0x88a8, 200), (0x8100, 100)], 0x0800, &v4udp),
        ),
        (
            "jumbo",
            eth(DST, &[], 0x0800, &ipv4(17, udp(9014 - 14 - 20 - 8), 6)),
        ),
        (
            "malformed (10 bytes)",
            DST.iter().chain(&SRC[..4]).copied().collect(),
        ),
    ]
}

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/captures");
    std::fs::create_dir_all(&dir)?;
    let frames = frames();
    let ts = |i: usize| Duration::from_secs(1_800_000_000) + Duration::from_millis(i as u64);
    let mut ng = PcapNgWriter::new(std::fs::File::create(dir.join("mixed.pcapng"))?)
        .map_err(std::io::Error::other)?;
    ng.write_pcapng_block(InterfaceDescriptionBlock {
        linktype: DataLink::ETHERNET,
        snaplen: 65535,
        options: vec![InterfaceDescriptionOption::IfTsResol(9)],
    })
    .map_err(std::io::Error::other)?;
    for (i, (_, f)) in frames.iter().enumerate() {
        ng.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: ts(i),
            original_len: f.len() as u32,
            data: Cow::Borrowed(f),
            options: vec![],
        })
        .map_err(std::io::Error::other)?;
    }
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        snaplen: 65535,
        ..PcapHeader::default()
    };
    let mut pcap = PcapWriter::with_header(std::fs::File::create(dir.join("mixed.pcap"))?, header)
        .map_err(std::io::Error::other)?;
    for (i, (_, f)) in frames.iter().enumerate() {
        pcap.write_packet(&PcapPacket::new(ts(i), f.len() as u32, f))
            .map_err(std::io::Error::other)?;
    }
    for (name, f) in &frames {
        println!("{:>5} bytes  {name}", f.len());
    }
    Ok(())
}
