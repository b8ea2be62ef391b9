//! The VXLAN header (RFC 7348 section 5): 8 bytes before the inner Ethernet frame in a UDP
//! datagram. Built for sending, checked and stripped on receipt.
//!
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```

/// Length of the VXLAN header.
pub const VXLAN_HDR_LEN: usize = 8;
/// The IANA UDP port for VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// The I flag: the VNI is valid. The only flag RFC 7348 defines.
pub const FLAG_I: u8 = 0x08;
/// The shortest inner frame accepted: an Ethernet header.
pub const INNER_MIN_LEN: usize = 14;

/// Why a datagram is not a VXLAN packet this end takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VxlanError {
    #[error("vxlan datagram of {len} bytes is shorter than the header and an inner Ethernet header (22)")]
    DecodeTooShort { len: usize },
    #[error("vxlan header flags {flags:#04x} lack the I flag (0x08): no valid VNI")]
    DecodeNoVni { flags: u8 },
}

/// The header for `vni`: flags 0x08 (I), reserved bits zero, the VNI in bytes 4..7 big endian.
/// Only the low 24 bits of `vni` are used (`VxlanSpec` has checked the range).
#[inline]
pub fn encode(vni: u32) -> [u8; VXLAN_HDR_LEN] {
    let v = (vni & 0x00FF_FFFF).to_be_bytes();
    [FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The VNI and the inner frame of a received datagram. Refuses one shorter than the header
/// plus an inner Ethernet header, and one without the I flag. Reserved bits (the other flags,
/// bytes 1..4 and byte 7) are ignored, as RFC 7348 says receivers MUST.
#[inline]
pub fn decode(datagram: &[u8]) -> Result<(u32, &[u8]), VxlanError> {
    let (Some(hdr), Some(inner)) = (
        datagram.first_chunk::<VXLAN_HDR_LEN>(),
        datagram.get(VXLAN_HDR_LEN..),
    ) else {
        return Err(VxlanError::DecodeTooShort {
            len: datagram.len(),
        });
    };
    if inner.len() < INNER_MIN_LEN {
        return Err(VxlanError::DecodeTooShort {
            len: datagram.len(),
        });
    }
    if hdr[0] & FLAG_I == 0 {
        return Err(VxlanError::DecodeNoVni { flags: hdr[0] });
    }
    let vni = u32::from_be_bytes([0, hdr[4], hdr[5], hdr[6]]);
    Ok((vni, inner))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams Linux's vxlan device (vni 42, IPv4 underlay, kernel 6.x) sent in
    /// `tests/uplink_vxlan.rs`: its ARP reply from 198.18.251.2 (MAC d2:8d:40:d3:34:c0) to our
    /// 198.18.251.1 (02:00:00:00:99:01), and its echo reply. Linux pads neither to 60 bytes.
    const LINUX_ARP_REPLY: &str = "0800000000002a00 020000009901d28d40d334c00806 \
        0001080006040002d28d40d334c0c612fb02020000009901c612fb01";
    const LINUX_ECHO_REPLY: &str = "0800000000002a00 020000009901d28d40d334c00800 \
        45000054be6c000040013a13c612fb02c612fb01 0000f6b112340007 \
        000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f \
        202122232425262728292a2b2c2d2e2f3031323334353637";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    #[test]
    fn encode_sets_i_flag_and_vni_big_endian() {
        assert_eq!(encode(0), [0x08, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(42), [0x08, 0, 0, 0, 0, 0, 0x2a, 0]);
        assert_eq!(encode(0x12_3456), [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        assert_eq!(encode(0xFF_FFFF), [0x08, 0, 0, 0, 0xff, 0xff, 0xff, 0]);
        // Bits above 24 never reach the reserved byte 3.
        assert_eq!(encode(0xAB12_3456), encode(0x12_3456));
    }

    #[test]
    fn decode_round_trips_encode() {
        let frame = [0x5au8; 60];
        for vni in [0, 1, 42, 0x80_0000, 0xFF_FFFF] {
            let mut d = encode(vni).to_vec();
            d.extend_from_slice(&frame);
            let (got, inner) = decode(&d).unwrap();
            assert_eq!(got, vni);
            assert_eq!(inner, &frame);
        }
    }

    #[test]
    fn decode_refuses_short_datagrams() {
        for len in [0, 1, 7, 8, 21] {
            let mut d = vec![0u8; len];
            if let Some(b) = d.first_mut() {
                *b = FLAG_I;
            }
            assert_eq!(decode(&d), Err(VxlanError::DecodeTooShort { len }));
        }
        // Exactly a header and an Ethernet header is enough.
        let mut d = encode(3).to_vec();
        d.extend_from_slice(&[0; 14]);
        assert_eq!(decode(&d).map(|(v, f)| (v, f.len())), Ok((3, 14)));
    }

    #[test]
    fn decode_refuses_a_clear_i_flag() {
        let mut d = encode(3).to_vec();
        d.extend_from_slice(&[0; 14]);
        for flags in [0x00, 0xf7, 0x80] {
            d[0] = flags;
            assert_eq!(decode(&d), Err(VxlanError::DecodeNoVni { flags }));
        }
    }

    #[test]
    fn decode_ignores_reserved_bits() {
        let mut d = vec![0xff, 0xff, 0xff, 0xff, 0x00, 0x01, 0x02, 0xff];
        d.extend_from_slice(&[0; 14]);
        assert_eq!(decode(&d).map(|(v, _)| v), Ok(0x0102));
        // GBP / GPE style flags beside I: still a VNI.
        d[0] = 0x88;
        d[1..4].copy_from_slice(&[0x40, 0x12, 0x34]);
        assert_eq!(decode(&d).map(|(v, _)| v), Ok(0x0102));
    }

    #[test]
    fn decode_takes_what_linux_sent() {
        let d = hex(LINUX_ARP_REPLY);
        let (vni, inner) = decode(&d).unwrap();
        assert_eq!(vni, 42);
        assert_eq!(inner.len(), 42);
        assert_eq!(&inner[0..6], &[0x02, 0, 0, 0, 0x99, 0x01]);
        assert_eq!(&inner[12..14], &[0x08, 0x06]);
        assert_eq!(&inner[20..22], &[0, 2], "ARP reply");
        let d = hex(LINUX_ECHO_REPLY);
        let (vni, inner) = decode(&d).unwrap();
        assert_eq!(vni, 42);
        assert_eq!(inner.len(), 98);
        assert_eq!(inner[14 + 20], 0, "ICMP echo reply");
        // The header we build is the header Linux built.
        assert_eq!(d[..VXLAN_HDR_LEN], encode(42));
    }
}
