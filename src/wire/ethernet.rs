//! The L2 header view the switch decides on, and a flow hash over L3/L4 fields.

use super::MacAddr;

/// Destination + source MAC + EtherType.
pub const ETH_HEADER_LEN: usize = 14;
/// How many leading bytes of a frame the data path copies out of guest memory, once, to make
/// every decision on: enough for two VLAN tags, an IPv4 header with options or an IPv6 header,
/// and the L4 ports.
pub const HEADER_COPY_LEN: usize = 128;

const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Why a frame cannot be switched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    TooShort(usize),
}

/// The fields of an Ethernet header the switch needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub dst: MacAddr,
    pub src: MacAddr,
    /// Outer EtherType (0x8100/0x88a8 when tagged).
    pub ethertype: u16,
}

impl FrameHeader {
    /// Parses the leading bytes of a frame (`head` is the copied prefix; `frame_len` the whole
    /// frame's length, which may exceed `head.len()`).
    pub fn parse(head: &[u8], frame_len: usize) -> Result<FrameHeader, ParseError> {
        if frame_len < ETH_HEADER_LEN || head.len() < ETH_HEADER_LEN {
            return Err(ParseError::TooShort(frame_len));
        }
        Ok(FrameHeader {
            dst: MacAddr([head[0], head[1], head[2], head[3], head[4], head[5]]),
            src: MacAddr([head[6], head[7], head[8], head[9], head[10], head[11]]),
            ethertype: u16::from_be_bytes([head[12], head[13]]),
        })
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Finalizer of MurmurHash3: a cheap, well-mixed 32-bit hash step.
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

fn hash_bytes(mut h: u32, bytes: &[u8]) -> u32 {
    for chunk in bytes.chunks(4) {
        let mut w = [0u8; 4];
        w[..chunk.len()].copy_from_slice(chunk);
        h = mix(h ^ u32::from_le_bytes(w)).wrapping_add(0x9e37_79b9);
    }
    h
}

/// A hash of a frame's flow: IP addresses plus TCP/UDP ports (unfragmented), IP addresses
/// alone for other IP traffic, 0 for non-IP frames. VLAN tags are skipped. Used to pick an RX
/// queue so one flow always lands on one queue.
pub fn flow_hash(head: &[u8]) -> u32 {
    let Some(mut ethertype) = be16(head, 12) else {
        return 0;
    };
    let mut l3 = ETH_HEADER_LEN;
    for _ in 0..2 {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        let Some(inner) = be16(head, l3 + 2) else {
            return 0;
        };
        ethertype = inner;
        l3 += 4;
    }
    let (addrs, proto, l4) = match ethertype {
        ETHERTYPE_IPV4 => {
            let Some(&vihl) = head.get(l3) else { return 0 };
            let ihl = usize::from(vihl & 0x0f) * 4;
            let (Some(addrs), Some(frag)) = (head.get(l3 + 12..l3 + 20), be16(head, l3 + 6)) else {
                return 0;
            };
            // More-fragments set or a non-zero offset: ports are not in every fragment.
            let fragmented = frag & 0x3fff != 0;
            let proto = if fragmented { 0 } else { head[l3 + 9] };
            (addrs, proto, l3 + ihl)
        }
        ETHERTYPE_IPV6 => {
            let Some(addrs) = head.get(l3 + 8..l3 + 40) else {
                return 0;
            };
            (addrs, head[l3 + 6], l3 + 40)
        }
        _ => return 0,
    };
    let h = hash_bytes(0x5bd1_e995, addrs);
    match proto {
        IPPROTO_TCP | IPPROTO_UDP => match head.get(l4..l4 + 4) {
            Some(ports) => hash_bytes(h ^ u32::from(proto), ports),
            None => h,
        },
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4(src_port: u16, dst_port: u16) -> Vec<u8> {
        let mut f = vec![0u8; 14 + 20 + 8];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        f[14] = 0x45;
        f[14 + 9] = IPPROTO_UDP;
        f[26..30].copy_from_slice(&[198, 18, 0, 1]);
        f[30..34].copy_from_slice(&[198, 18, 0, 2]);
        f[34..36].copy_from_slice(&src_port.to_be_bytes());
        f[36..38].copy_from_slice(&dst_port.to_be_bytes());
        f
    }

    #[test]
    fn parses_addresses() {
        let mut f = [0u8; 60];
        f[..6].copy_from_slice(&[2, 0, 0, 0, 1, 1]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 2, 1]);
        f[12] = 0x08;
        let h = FrameHeader::parse(&f, 60).unwrap();
        assert_eq!(h.dst.to_string(), "02:00:00:00:01:01");
        assert_eq!(h.src.to_string(), "02:00:00:00:02:01");
        assert_eq!(h.ethertype, 0x0800);
        assert_eq!(
            FrameHeader::parse(&f[..13], 13),
            Err(ParseError::TooShort(13))
        );
    }

    #[test]
    fn flow_hash_depends_on_ports_and_is_stable() {
        assert_eq!(flow_hash(&udp4(1000, 53)), flow_hash(&udp4(1000, 53)));
        assert_ne!(flow_hash(&udp4(1000, 53)), flow_hash(&udp4(1001, 53)));
        assert_eq!(flow_hash(&[0u8; 10]), 0);
    }

    #[test]
    fn flow_hash_skips_vlan_tags() {
        let plain = udp4(7, 9);
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&plain[12..]);
        assert_eq!(flow_hash(&plain), flow_hash(&tagged));
    }

    #[test]
    fn fragments_hash_on_addresses_only() {
        let mut a = udp4(1, 2);
        let mut b = udp4(3, 4);
        for f in [&mut a, &mut b] {
            f[14 + 6] = 0x20; // more fragments
        }
        assert_eq!(flow_hash(&a), flow_hash(&b));
    }
}
