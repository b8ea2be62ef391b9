//! The RARP a migrated guest is announced with (what QEMU's `qemu_announce_self` sends for a
//! NIC whose back-end cannot announce, and what a vhost-user back-end sends on SEND_RARP):
//! broadcast, EtherType 0x8035, "reverse request" with the guest's MAC as sender and target.
//! Every switch on the path learns the MAC at its new place from it.

use super::MacAddr;

/// The RARP frame's length (padded to the Ethernet minimum without FCS).
pub const RARP_FRAME_LEN: usize = 60;
/// EtherType of RARP.
pub const ETHERTYPE_RARP: u16 = 0x8035;
/// ARP opcode 3: reverse request.
const RARP_REQUEST_REVERSE: u16 = 3;

/// Writes the announcement of `mac` into `buf`.
pub fn write_rarp_announce(mac: MacAddr, buf: &mut [u8; RARP_FRAME_LEN]) {
    buf.fill(0);
    buf[0..6].copy_from_slice(&[0xff; 6]);
    buf[6..12].copy_from_slice(&mac.0);
    buf[12..14].copy_from_slice(&ETHERTYPE_RARP.to_be_bytes());
    buf[14..16].copy_from_slice(&1u16.to_be_bytes()); // hardware: Ethernet
    buf[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // protocol: IPv4
    buf[18] = 6; // hardware address length
    buf[19] = 4; // protocol address length
    buf[20..22].copy_from_slice(&RARP_REQUEST_REVERSE.to_be_bytes());
    buf[22..28].copy_from_slice(&mac.0); // sender hardware address; sender IP 0
    buf[32..38].copy_from_slice(&mac.0); // target hardware address; target IP 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announcement_is_qemus_rarp() {
        // QEMU's announce_self_create for 52:54:00:12:34:56.
        let mac = MacAddr([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        let mut buf = [0xaa; RARP_FRAME_LEN];
        write_rarp_announce(mac, &mut buf);
        let mut want = vec![0xff; 6];
        want.extend_from_slice(&mac.0);
        want.extend_from_slice(&[0x80, 0x35, 0, 1, 8, 0, 6, 4, 0, 3]);
        want.extend_from_slice(&mac.0);
        want.extend_from_slice(&[0; 4]);
        want.extend_from_slice(&mac.0);
        want.extend_from_slice(&[0; 4]);
        want.resize(RARP_FRAME_LEN, 0);
        assert_eq!(buf.to_vec(), want);
    }
}
