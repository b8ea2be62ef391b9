//! The Toeplitz hash of Microsoft RSS, with a per-key lookup table.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

/// RSS key length (bytes), as on 82599/ixgbe-class adapters.
pub const KEY_LEN: usize = 40;
/// Longest hash input: IPv6 source + destination + two ports.
pub const MAX_INPUT: usize = 36;

/// The key of the Microsoft RSS verification suite, also the default of many drivers.
pub const DEFAULT_KEY: RssKey = RssKey([
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
]);

/// A 40-byte RSS key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RssKey(pub [u8; KEY_LEN]);

/// Why a string is not an RSS key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an RSS key is {KEY_LEN} bytes written as 80 hex digits (colons allowed), got {0:?}")]
pub struct KeyParseError(pub String);

impl FromStr for RssKey {
    type Err = KeyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        let err = || KeyParseError(s.to_string());
        if hex.len() != 2 * KEY_LEN || !hex.is_ascii() {
            return Err(err());
        }
        let mut k = [0u8; KEY_LEN];
        for (i, b) in k.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(RssKey(k))
    }
}

impl fmt::Display for RssKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RssKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Bit-by-bit Toeplitz hash, the definition (used to check the table).
pub fn toeplitz_reference(key: &RssKey, input: &[u8]) -> u32 {
    let mut result = 0u32;
    let k = &key.0;
    // The 32-bit window of the key starting at the current input bit.
    let mut window = u32::from_be_bytes([k[0], k[1], k[2], k[3]]);
    for (i, byte) in input.iter().enumerate() {
        for b in 0..8 {
            if byte & (0x80 >> b) != 0 {
                result ^= window;
            }
            let next_bit_index = (i + 4) * 8 + b;
            let next = k
                .get(next_bit_index / 8)
                .map_or(0, |kb| (kb >> (7 - next_bit_index % 8)) & 1);
            window = (window << 1) | u32::from(next);
        }
    }
    result
}

/// A key expanded into a lookup table: the hash is one XOR per input byte.
pub struct ToeplitzTable {
    key: RssKey,
    table: Box<[[u32; 256]; MAX_INPUT]>,
}

impl fmt::Debug for ToeplitzTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToeplitzTable")
            .field("key", &self.key)
            .finish()
    }
}

impl ToeplitzTable {
    pub fn new(key: RssKey) -> Self {
        let mut padded = [0u8; KEY_LEN + 8];
        padded[..KEY_LEN].copy_from_slice(&key.0);
        let mut table = Box::new([[0u32; 256]; MAX_INPUT]);
        for (pos, row) in table.iter_mut().enumerate() {
            let w = u64::from_be_bytes(padded[pos..pos + 8].try_into().unwrap_or([0; 8]));
            // Window for bit b (MSB first) of the byte at `pos`.
            let bit_window: [u32; 8] = std::array::from_fn(|b| ((w << b) >> 32) as u32);
            for (v, slot) in row.iter_mut().enumerate() {
                *slot = (0..8)
                    .filter(|b| v & (0x80 >> b) != 0)
                    .fold(0, |h, b| h ^ bit_window[b]);
            }
        }
        ToeplitzTable { key, table }
    }

    /// The shared table of `DEFAULT_KEY`.
    pub fn default_shared() -> Arc<ToeplitzTable> {
        static DEFAULT: OnceLock<Arc<ToeplitzTable>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| Arc::new(ToeplitzTable::new(DEFAULT_KEY)))
            .clone()
    }

    pub fn key(&self) -> &RssKey {
        &self.key
    }

    /// The hash of a flow (its `FlowTuple::hash_input` bytes).
    #[inline]
    pub fn hash_tuple(&self, t: &super::FlowTuple) -> u32 {
        let mut buf = [0u8; MAX_INPUT];
        let n = t.hash_input(&mut buf);
        self.hash(&buf[..n])
    }

    /// Hash of `input` (at most `MAX_INPUT` bytes; more are ignored).
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        input
            .iter()
            .zip(self.table.iter())
            .fold(0, |h, (b, row)| h ^ row[usize::from(*b)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    // Microsoft "Verifying the RSS Hash Calculation": (destination, dport, source, sport,
    // IP-only hash, TCP 4-tuple hash). Input order is source, destination, sport, dport.
    const V4: [(&str, u16, &str, u16, u32, u32); 5] = [
        (
            "161.142.100.80",
            1766,
            "66.9.149.187",
            2794,
            0x323e8fc2,
            0x51ccc178,
        ),
        (
            "65.69.140.83",
            4739,
            "199.92.111.2",
            14230,
            0xd718262a,
            0xc626b0ea,
        ),
        (
            "12.22.207.184",
            38024,
            "24.19.198.95",
            12898,
            0xd2d0a5de,
            0x5c2b394a,
        ),
        (
            "209.142.163.6",
            2217,
            "38.27.205.30",
            48228,
            0x82989176,
            0xafc7327f,
        ),
        (
            "202.188.127.2",
            1303,
            "153.39.163.191",
            44251,
            0x5d1809c5,
            0x10e828a2,
        ),
    ];
    const V6: [(&str, u16, &str, u16, u32, u32); 3] = [
        (
            "3ffe:2501:200:3::1",
            1766,
            "3ffe:2501:200:1fff::7",
            2794,
            0x2cc18cd5,
            0x40207d3d,
        ),
        (
            "ff02::1",
            4739,
            "3ffe:501:8::260:97ff:fe40:efab",
            14230,
            0x0f0c461c,
            0xdde51bbf,
        ),
        (
            "fe80::200:f8ff:fe21:67cf",
            38024,
            "3ffe:1900:4545:3:200:f8ff:fe21:67cf",
            44251,
            0x4b61e985,
            0x02d1feef,
        ),
    ];

    fn input(src: &[u8], dst: &[u8], ports: Option<(u16, u16)>) -> Vec<u8> {
        let mut v = [src, dst].concat();
        if let Some((s, d)) = ports {
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn microsoft_ipv4_vectors() {
        let t = ToeplitzTable::new(DEFAULT_KEY);
        for (dst, dport, src, sport, ip, tcp) in V4 {
            let (s, d) = (
                src.parse::<Ipv4Addr>().unwrap().octets(),
                dst.parse::<Ipv4Addr>().unwrap().octets(),
            );
            assert_eq!(t.hash(&input(&s, &d, None)), ip, "{src} -> {dst}");
            assert_eq!(
                t.hash(&input(&s, &d, Some((sport, dport)))),
                tcp,
                "{src}:{sport} -> {dst}:{dport}"
            );
            assert_eq!(
                toeplitz_reference(&DEFAULT_KEY, &input(&s, &d, Some((sport, dport)))),
                tcp
            );
        }
    }

    #[test]
    fn microsoft_ipv6_vectors() {
        let t = ToeplitzTable::new(DEFAULT_KEY);
        for (dst, dport, src, sport, ip, tcp) in V6 {
            let (s, d) = (
                src.parse::<Ipv6Addr>().unwrap().octets(),
                dst.parse::<Ipv6Addr>().unwrap().octets(),
            );
            assert_eq!(t.hash(&input(&s, &d, None)), ip, "{src} -> {dst}");
            assert_eq!(
                t.hash(&input(&s, &d, Some((sport, dport)))),
                tcp,
                "{src}:{sport} -> {dst}:{dport}"
            );
            assert_eq!(toeplitz_reference(&DEFAULT_KEY, &input(&s, &d, None)), ip);
        }
    }

    #[test]
    fn table_matches_reference_for_another_key() {
        let key = RssKey(std::array::from_fn(|i| {
            (i as u8).wrapping_mul(37).wrapping_add(11)
        }));
        let t = ToeplitzTable::new(key);
        let data: Vec<u8> = (0..36u8).map(|i| i.wrapping_mul(91)).collect();
        for n in [0, 1, 8, 12, 36] {
            assert_eq!(
                t.hash(&data[..n]),
                toeplitz_reference(&key, &data[..n]),
                "{n} bytes"
            );
        }
    }

    #[test]
    fn key_parses_and_prints() {
        let s = DEFAULT_KEY.to_string();
        assert_eq!(s.parse::<RssKey>().unwrap(), DEFAULT_KEY);
        assert_eq!(s.replace(':', "").parse::<RssKey>().unwrap(), DEFAULT_KEY);
        assert!("6d5a".parse::<RssKey>().is_err());
        assert!("zz".repeat(40).parse::<RssKey>().is_err());
    }
}
