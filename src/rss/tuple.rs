//! The RSS hash input of a frame: IP addresses and, for unfragmented TCP/UDP, ports.

use super::toeplitz::MAX_INPUT;

const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// The flow a frame belongs to, as RSS and flow steering see it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct FlowTuple {
    /// 4 (IPv4), 6 (IPv6) or 0 (not IP).
    pub family: u8,
    /// TCP or UDP when the ports are part of the tuple, else 0.
    pub proto: u8,
    /// Source and destination addresses (IPv4 in the first 4 bytes).
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
}

impl FlowTuple {
    pub const NON_IP: FlowTuple = FlowTuple {
        family: 0,
        proto: 0,
        src: [0; 16],
        dst: [0; 16],
        sport: 0,
        dport: 0,
    };

    pub fn is_ip(&self) -> bool {
        self.family != 0
    }

    /// True when the ports are part of the hash (TCP/UDP, not a fragment).
    pub fn has_ports(&self) -> bool {
        self.proto != 0
    }

    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowTuple {
        FlowTuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..*self
        }
    }

    /// The Toeplitz input: source, destination, [source port, destination port].
    pub fn hash_input(&self, buf: &mut [u8; MAX_INPUT]) -> usize {
        // Fixed-size copies per family (a variable length would be two memcpy calls).
        let alen = if self.family == 4 {
            buf[..4].copy_from_slice(&self.src[..4]);
            buf[4..8].copy_from_slice(&self.dst[..4]);
            4
        } else {
            buf[..16].copy_from_slice(&self.src);
            buf[16..32].copy_from_slice(&self.dst);
            16
        };
        let mut n = 2 * alen;
        if self.has_ports() {
            buf[n..n + 2].copy_from_slice(&self.sport.to_be_bytes());
            buf[n + 2..n + 4].copy_from_slice(&self.dport.to_be_bytes());
            n += 4;
        }
        n
    }

    pub fn v4(proto: u8, src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> FlowTuple {
        let mut s = [0u8; 16];
        let mut d = [0u8; 16];
        s[..4].copy_from_slice(&src);
        d[..4].copy_from_slice(&dst);
        let (sport, dport) = if proto == 0 { (0, 0) } else { (sport, dport) };
        FlowTuple {
            family: 4,
            proto,
            src: s,
            dst: d,
            sport,
            dport,
        }
    }

    pub fn v6(proto: u8, src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> FlowTuple {
        let (sport, dport) = if proto == 0 { (0, 0) } else { (sport, dport) };
        FlowTuple {
            family: 6,
            proto,
            src,
            dst,
            sport,
            dport,
        }
    }

    /// Parses the leading bytes of an Ethernet frame. VLAN tags (802.1Q, 802.1ad, up to two)
    /// are skipped; IPv4/IPv6 fragments and other protocols give the 2-tuple; anything that is
    /// not IP (or is cut short) gives `NON_IP`.
    /// Where an IPv4 or IPv6 header starts in `head` (after up to two VLAN tags), with its
    /// EtherType, if the frame carries one `parse` can read.
    fn ip_header(head: &[u8]) -> Option<(u16, usize)> {
        let be16 = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*head.get(at)?, *head.get(at + 1)?]))
        };
        let mut ethertype = be16(12)?;
        let mut l3 = 14;
        for _ in 0..2 {
            if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
                break;
            }
            ethertype = be16(l3 + 2)?;
            l3 += 4;
        }
        let ok = match ethertype {
            ETHERTYPE_IPV4 => head
                .get(l3..l3 + 20)
                .is_some_and(|ip| ip[0] >> 4 == 4 && usize::from(ip[0] & 0x0f) * 4 >= 20),
            ETHERTYPE_IPV6 => head.get(l3..l3 + 40).is_some_and(|ip| ip[0] >> 4 == 6),
            _ => false,
        };
        ok.then_some((ethertype, l3))
    }

    /// `parse(head).is_ip()`, without extracting the tuple.
    #[inline]
    pub fn is_ip_frame(head: &[u8]) -> bool {
        Self::ip_header(head).is_some()
    }

    pub fn parse(head: &[u8]) -> FlowTuple {
        let be16 = |at: usize| -> Option<u16> {
            Some(u16::from_be_bytes([*head.get(at)?, *head.get(at + 1)?]))
        };
        let Some((ethertype, l3)) = Self::ip_header(head) else {
            return Self::NON_IP;
        };
        match ethertype {
            ETHERTYPE_IPV4 => {
                let Some(ip) = head.get(l3..l3 + 20) else {
                    return Self::NON_IP;
                };
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let src = [ip[12], ip[13], ip[14], ip[15]];
                let dst = [ip[16], ip[17], ip[18], ip[19]];
                let fragmented = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
                let proto = ip[9];
                match (fragmented, proto, be16(l3 + ihl), be16(l3 + ihl + 2)) {
                    (false, IPPROTO_TCP | IPPROTO_UDP, Some(sp), Some(dp)) => {
                        Self::v4(proto, src, dst, sp, dp)
                    }
                    _ => Self::v4(0, src, dst, 0, 0),
                }
            }
            ETHERTYPE_IPV6 => {
                let Some(ip) = head.get(l3..l3 + 40) else {
                    return Self::NON_IP;
                };
                let mut src = [0u8; 16];
                let mut dst = [0u8; 16];
                src.copy_from_slice(&ip[8..24]);
                dst.copy_from_slice(&ip[24..40]);
                let next = ip[6];
                match (next, be16(l3 + 40), be16(l3 + 42)) {
                    (IPPROTO_TCP | IPPROTO_UDP, Some(sp), Some(dp)) => {
                        Self::v6(next, src, dst, sp, dp)
                    }
                    _ => Self::v6(0, src, dst, 0, 0),
                }
            }
            _ => Self::NON_IP,
        }
    }
}

impl std::fmt::Display for FlowTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::net::{Ipv4Addr, Ipv6Addr};
        let addr = |a: &[u8; 16]| -> String {
            if self.family == 4 {
                Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
            } else {
                Ipv6Addr::from(*a).to_string()
            }
        };
        match (self.family, self.proto) {
            (0, _) => f.write_str("non-ip"),
            (_, 0) => write!(f, "ip {} > {}", addr(&self.src), addr(&self.dst)),
            (_, p) => {
                let name = if p == IPPROTO_TCP { "tcp" } else { "udp" };
                write!(
                    f,
                    "{name} {}:{} > {}:{}",
                    addr(&self.src),
                    self.sport,
                    addr(&self.dst),
                    self.dport
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn ipv4(proto: u8, frag: u16) -> Vec<u8> {
        let mut ip = vec![0u8; 28];
        ip[0] = 0x45;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = proto;
        ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
        ip[20..22].copy_from_slice(&1000u16.to_be_bytes());
        ip[22..24].copy_from_slice(&53u16.to_be_bytes());
        ip
    }

    #[test]
    fn tcp_and_udp_give_the_four_tuple() {
        for proto in [IPPROTO_TCP, IPPROTO_UDP] {
            let t = FlowTuple::parse(&eth(0x0800, &ipv4(proto, 0)));
            assert_eq!(
                t,
                FlowTuple::v4(proto, [198, 18, 0, 1], [198, 18, 0, 2], 1000, 53)
            );
            assert!(t.has_ports());
        }
    }

    #[test]
    fn fragments_and_other_protocols_give_the_two_tuple() {
        let frag = FlowTuple::parse(&eth(0x0800, &ipv4(IPPROTO_UDP, 0x2000)));
        let icmp = FlowTuple::parse(&eth(0x0800, &ipv4(1, 0)));
        let two = FlowTuple::v4(0, [198, 18, 0, 1], [198, 18, 0, 2], 0, 0);
        assert_eq!(frag, two);
        assert_eq!(icmp, two);
    }

    #[test]
    fn vlan_tags_are_skipped() {
        let plain = FlowTuple::parse(&eth(0x0800, &ipv4(IPPROTO_TCP, 0)));
        let mut tagged = eth(0x8100, &[0x00, 0x05, 0x08, 0x00]);
        tagged.extend_from_slice(&ipv4(IPPROTO_TCP, 0));
        let mut qinq = eth(0x88a8, &[0x00, 0x07, 0x81, 0x00, 0x00, 0x05, 0x08, 0x00]);
        qinq.extend_from_slice(&ipv4(IPPROTO_TCP, 0));
        assert_eq!(FlowTuple::parse(&tagged), plain);
        assert_eq!(FlowTuple::parse(&qinq), plain);
    }

    #[test]
    fn ipv6_and_non_ip() {
        let mut ip6 = vec![0u8; 44];
        ip6[0] = 0x60;
        ip6[6] = IPPROTO_UDP;
        ip6[8] = 0x20;
        ip6[24] = 0x20;
        ip6[40..42].copy_from_slice(&7u16.to_be_bytes());
        ip6[42..44].copy_from_slice(&9u16.to_be_bytes());
        let t = FlowTuple::parse(&eth(0x86dd, &ip6));
        assert_eq!(
            (t.family, t.proto, t.sport, t.dport),
            (6, IPPROTO_UDP, 7, 9)
        );
        ip6[6] = 44; // fragment header: 2-tuple
        assert!(!FlowTuple::parse(&eth(0x86dd, &ip6)).has_ports());
        assert_eq!(FlowTuple::parse(&eth(0x0806, &[0; 28])), FlowTuple::NON_IP);
        assert_eq!(FlowTuple::parse(&[0u8; 10]), FlowTuple::NON_IP);
    }

    #[test]
    fn is_ip_frame_agrees_with_parse_on_every_prefix_and_corruption() {
        let mut ip6 = eth(0x86dd, &[0u8; 44]);
        ip6[14] = 0x60;
        let mut tagged = eth(0x8100, &[0x00, 0x05, 0x08, 0x00]);
        tagged.extend_from_slice(&ipv4(IPPROTO_TCP, 0));
        let frames = [eth(0x0800, &ipv4(IPPROTO_UDP, 0)), ip6, tagged];
        let mut checked = 0;
        for f in &frames {
            for len in 0..=f.len() {
                for corrupt in [None, Some(14usize), Some(18)] {
                    let mut h = f[..len].to_vec();
                    if let Some(at) = corrupt.filter(|&a| a < h.len()) {
                        h[at] ^= 0xf3;
                    }
                    assert_eq!(
                        FlowTuple::is_ip_frame(&h),
                        FlowTuple::parse(&h).is_ip(),
                        "{h:02x?}"
                    );
                    checked += usize::from(FlowTuple::is_ip_frame(&h));
                }
            }
        }
        assert!(checked > 30, "the IP cases are exercised: {checked}");
    }

    #[test]
    fn reversed_swaps_ends() {
        let t = FlowTuple::v4(IPPROTO_TCP, [1, 1, 1, 1], [2, 2, 2, 2], 10, 20);
        let r = t.reversed();
        assert_eq!((r.src[0], r.dst[0], r.sport, r.dport), (2, 1, 20, 10));
        assert_eq!(r.reversed(), t);
    }
}
