//! virtio-net header layouts.

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;

/// The largest header: `virtio_net_hdr_v1` / `virtio_net_hdr_mrg_rxbuf`.
pub const VNET_HDR_MAX: usize = 12;

/// Header length implied by negotiated features: 12 bytes with VERSION_1 or MRG_RXBUF
/// (the `num_buffers` field is present), else the legacy 10 bytes.
pub fn vnet_hdr_len(features: u64) -> usize {
    if features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)) != 0 {
        12
    } else {
        10
    }
}

/// The header written in front of a received frame: no checksum or GSO work asked of the
/// guest, and `num_buffers` (little endian) when the layout has it.
pub fn rx_header(num_buffers: u16) -> [u8; VNET_HDR_MAX] {
    let mut h = [0u8; VNET_HDR_MAX];
    h[10..12].copy_from_slice(&num_buffers.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(vnet_hdr_len(0), 10);
        assert_eq!(vnet_hdr_len(1 << VIRTIO_NET_F_MRG_RXBUF), 12);
        assert_eq!(vnet_hdr_len(1 << VIRTIO_F_VERSION_1), 12);
        assert_eq!(rx_header(3)[10..], [3, 0]);
    }
}
