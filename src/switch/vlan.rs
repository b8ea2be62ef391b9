//! VLAN edits on a frame's head copy: a port VLAN's tag inserted at ingress, stripped at
//! egress. Only the copied head changes; the rest of the frame stays where the sender left it.

/// Bytes of an 802.1Q/802.1ad tag.
pub const TAG_LEN: usize = 4;

/// Inserts the tag (`tpid`, `tci`) after the MAC addresses of the first `len` bytes of `head`;
/// returns the new length, or `None` if `head` has no room or `len` is shorter than the
/// addresses.
pub fn insert_tag(head: &mut [u8], len: usize, tpid: u16, tci: u16) -> Option<usize> {
    if len < 12 || head.len() < len + TAG_LEN {
        return None;
    }
    head.copy_within(12..len, 12 + TAG_LEN);
    head[12..14].copy_from_slice(&tpid.to_be_bytes());
    head[14..16].copy_from_slice(&tci.to_be_bytes());
    Some(len + TAG_LEN)
}

/// Writes `head` without its outer tag into `out`; returns the length written, or `None` if
/// `head` is too short to hold a tag or `out` too small.
pub fn strip_outer_tag(head: &[u8], out: &mut [u8]) -> Option<usize> {
    let n = head.len().checked_sub(TAG_LEN).filter(|n| *n >= 12)?;
    let out = out.get_mut(..n)?;
    out[..12].copy_from_slice(&head[..12]);
    out[12..].copy_from_slice(&head[12 + TAG_LEN..]);
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_then_strip_gives_the_frame_back() {
        let frame: Vec<u8> = (0..40u8).collect();
        let mut head = [0u8; 64];
        head[..40].copy_from_slice(&frame);
        let n = insert_tag(&mut head, 40, 0x88a8, 0x2064).unwrap();
        assert_eq!(n, 44);
        assert_eq!(head[..12], frame[..12]);
        assert_eq!(head[12..16], [0x88, 0xa8, 0x20, 0x64]);
        assert_eq!(head[16..44], frame[12..]);
        let mut out = [0u8; 64];
        assert_eq!(strip_outer_tag(&head[..n], &mut out), Some(40));
        assert_eq!(out[..40], frame[..]);
    }

    #[test]
    fn no_room_or_too_short_is_refused() {
        let mut head = [0u8; 20];
        assert_eq!(insert_tag(&mut head, 18, 0x8100, 1), None);
        assert_eq!(insert_tag(&mut head, 10, 0x8100, 1), None);
        assert_eq!(strip_outer_tag(&head[..14], &mut [0u8; 20]), None);
        assert_eq!(strip_outer_tag(&head, &mut [0u8; 8]), None);
    }
}
