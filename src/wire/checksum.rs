//! The Internet checksum (RFC 1071): what test frames and fixtures need to be frames a real
//! stack accepts. The switch itself never computes one.

/// Adds `data` to the running one's-complement sum `acc` (16-bit big-endian words; an odd last
/// byte is padded with zero).
pub fn ones_sum(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        acc += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    acc
}

/// The checksum field for the running sum `acc`: carries folded in, complemented.
pub fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv4_header_checks_out() {
        // RFC 1071's classic example header (checksum field zeroed): 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(ones_sum(&h, 0)), 0xb861);
        // With the checksum in place the sum folds to zero.
        let mut full = h;
        full[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(fold(ones_sum(&full, 0)), 0);
        // Odd length: the last byte is the high half of a word.
        assert_eq!(ones_sum(&[1, 2, 3], 0), 0x0102 + 0x0300);
    }
}
