//! The `<interface type='vhostuser'>` element of a libvirt domain for one port
//! (`sriov-emu qemu-args vf N --libvirt`): what `qemu-args` prints as QEMU options, in the
//! form libvirt takes in a domain's XML and in `virsh attach-device`.

use crate::pf::PortSpec;
use std::fmt::Write as _;

/// Ethernet's MTU, the one a guest uses when the device tells it none.
const ETHERNET_MTU: u32 = 1500;

/// The element for port `p` whose guest MTU is `mtu`. With the port in client mode, QEMU
/// serves the socket (`mode='server'`); otherwise QEMU connects (`mode='client'`) and
/// reconnects every second after the emulator restarts.
pub fn interface_xml(p: &PortSpec, mtu: u32) -> String {
    let mut x = String::from("<interface type='vhostuser'>\n");
    if let Some(mac) = p.mac {
        let _ = writeln!(x, "  <mac address='{mac}'/>");
    }
    let path = escape(&p.socket.display().to_string());
    if p.client {
        let _ = writeln!(x, "  <source type='unix' path='{path}' mode='server'/>");
    } else {
        let _ = writeln!(x, "  <source type='unix' path='{path}' mode='client'>");
        x.push_str("    <reconnect enabled='yes' timeout='1'/>\n");
        x.push_str("  </source>\n");
    }
    x.push_str("  <model type='virtio'/>\n");
    if p.queue_pairs > 1 {
        let _ = writeln!(x, "  <driver queues='{}'/>", p.queue_pairs);
    }
    // No `<mtu>`: libvirt (11.3) applies it to the host interface of a vhostuser port, an
    // OVS port, and with none (`ifname` empty) the domain fails to start or the device to
    // attach ("Cannot set interface MTU on '': No such device"). So the guest learns no MTU
    // from the device, and one other than Ethernet's is set in the guest.
    if mtu != ETHERNET_MTU {
        let _ = writeln!(
            x,
            "  <!-- the port's MTU is {mtu}: set it in the guest (ip link set DEV mtu {mtu}); \
             libvirt cannot pass it to a vhostuser interface outside OVS -->"
        );
    }
    x.push_str("</interface>\n");
    x
}

/// `s` as an XML attribute value between single quotes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pf::PfConfig;
    use std::path::{Path, PathBuf};

    #[test]
    fn a_vf_as_libvirt_takes_it_in_both_socket_modes() {
        let pf = PfConfig::new(PathBuf::from("/run/sriov-emu"), 4, 1, 2, 1500).unwrap();
        assert_eq!(
            interface_xml(&pf.vf_spec(1, 2, None), 1500),
            "<interface type='vhostuser'>\n\
             \x20 <mac address='02:00:00:00:01:01'/>\n\
             \x20 <source type='unix' path='/run/sriov-emu/vf1.sock' mode='client'>\n\
             \x20   <reconnect enabled='yes' timeout='1'/>\n\
             \x20 </source>\n\
             \x20 <model type='virtio'/>\n\
             \x20 <driver queues='2'/>\n\
             </interface>\n"
        );
        let client = pf.vf_spec(0, 1, Some(Path::new("/var/lib/q/it's&<x>.sock")));
        assert_eq!(
            interface_xml(&client, 1450),
            "<interface type='vhostuser'>\n\
             \x20 <mac address='02:00:00:00:00:01'/>\n\
             \x20 <source type='unix' path='/var/lib/q/it&apos;s&amp;&lt;x&gt;.sock' mode='server'/>\n\
             \x20 <model type='virtio'/>\n\
             \x20 <!-- the port's MTU is 1450: set it in the guest (ip link set DEV mtu 1450); \
             libvirt cannot pass it to a vhostuser interface outside OVS -->\n\
             </interface>\n"
        );
        let pv = interface_xml(&pf.pv_spec(0), 1500);
        assert!(!pv.contains("<mac"), "a PV port's MAC is the guest's: {pv}");
    }
}
