//! The L2 header view the switch decides on.

use super::MacAddr;

/// Destination + source MAC + EtherType.
pub const ETH_HEADER_LEN: usize = 14;
/// How many leading bytes of a frame the data path copies out of guest memory, once, to make
/// every decision on: enough for two VLAN tags, an IPv4 header with options or an IPv6 header,
/// and the L4 ports.
pub const HEADER_COPY_LEN: usize = 128;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
