//! The VXLAN uplink's byte-level pieces (`uplink::udp_batch`, `uplink::vxlan_header`) against a
//! Linux vxlan device, both ways, over IPv4 and IPv6 underlays; and `UdpBatch::flush` facing a
//! destination without a route and a full socket buffer.
//!
//! Everything happens inside network namespaces the test creates (a veth pair between two of
//! them) and deletes in a `Drop` guard, even on failure; the host's own namespace is not
//! touched. Our socket lives in its namespace because the thread that creates it first joins
//! that namespace (`setns` affects the calling thread only). Needs root and `ip`; without `ip`
//! the test prints `SKIPPED:` and passes.

mod common;

use common::netns::{in_netns, ip, run, skip_without_ip, Netns};
use sriov_emu::uplink::udp_batch::{UdpBatch, UdpCounters};
use sriov_emu::uplink::vxlan_header::{self, VXLAN_HDR_LEN, VXLAN_PORT};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x99, 0x01];
const OUR_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 251, 1);
const LINUX_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 251, 2);
const VNI: u32 = 42;

fn csum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&OUR_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&LINUX_IP.octets());
    f
}

fn icmp_echo(dst_mac: &[u8], seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0, 1, 0, 0, 64, 1, 0, 0]);
    iph.extend_from_slice(&OUR_IP.octets());
    iph.extend_from_slice(&LINUX_IP.octets());
    let c = csum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&iph);
    f.extend_from_slice(&icmp);
    f
}

fn wait_readable(b: &UdpBatch, ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd: b.fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is one valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, ms) == 1 }
}

/// What came back for one request: the whole datagram, its source, and how many other
/// datagrams (IPv6 neighbour discovery, MLD from the vxlan device) were passed over.
struct Reply {
    datagram: Vec<u8>,
    src: SocketAddr,
    others: usize,
}

/// Sends `frame` to `remote` in a VXLAN header and waits (5 s at most) for a datagram whose
/// inner frame `is_reply` accepts.
fn exchange(
    b: &mut UdpBatch,
    remote: SocketAddr,
    frame: &[u8],
    is_reply: impl Fn(&[u8]) -> bool,
) -> Reply {
    assert!(b
        .push(remote, &[&vxlan_header::encode(VNI), frame])
        .unwrap());
    let r = b.flush().unwrap();
    assert_eq!((r.sent, r.dropped, r.failed), (1, 0, 0), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut others = 0;
    while Instant::now() < deadline {
        if b.recv().unwrap() == 0 {
            wait_readable(b, 100);
            continue;
        }
        for d in b.datagrams() {
            assert!(!d.truncated);
            match vxlan_header::decode(d.data) {
                Ok((VNI, inner)) if is_reply(inner) => {
                    return Reply {
                        datagram: d.data.to_vec(),
                        src: d.src,
                        others,
                    }
                }
                _ => others += 1,
            }
        }
    }
    panic!("no reply from Linux's vxlan device in 5 s ({others} other datagrams)");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Our socket in namespace 0 on `ours`, a Linux vxlan device `vx0` (vni 42, 198.18.251.2/24)
/// in namespace 1 over `linux`; ARP and ICMP echo through it.
fn linux_vxlan_interop(v6: bool) {
    let (ours, linux, prefix) = if v6 {
        ("2001:db8:250::1", "2001:db8:250::2", "64")
    } else {
        ("198.18.250.1", "198.18.250.2", "24")
    };
    let ns = Netns::new(2);
    let (a, b) = (ns.name(0).to_string(), ns.name(1).to_string());
    ip(&[
        "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b,
    ]);
    let addr_args = |n: &str, dev: &str, addr: &str| {
        let cidr = format!("{addr}/{prefix}");
        let mut args = vec!["-n", n, "addr", "add", &cidr, "dev", dev];
        if v6 {
            args.push("nodad");
        }
        ip(&args);
        ip(&["-n", n, "link", "set", dev, "up"]);
    };
    addr_args(&a, "va", ours);
    addr_args(&b, "vb", linux);
    let port = VXLAN_PORT.to_string();
    ip(&[
        "-n", &b, "link", "add", "vx0", "type", "vxlan", "id", "42", "local", linux, "remote",
        ours, "dstport", &port, "dev", "vb",
    ]);
    ip(&["-n", &b, "addr", "add", "198.18.251.2/24", "dev", "vx0"]);
    ip(&["-n", &b, "link", "set", "vx0", "up"]);
    let details = ip(&["-n", &b, "-d", "-j", "link", "show", "vx0"]);
    let j: serde_json::Value = serde_json::from_str(&details).unwrap();
    let linux_mac: Vec<u8> = j[0]["address"]
        .as_str()
        .unwrap()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    println!(
        "Linux vx0: mtu {} address {}",
        j[0]["mtu"],
        j[0]["address"].as_str().unwrap_or("?")
    );

    let local: SocketAddr = SocketAddr::new(ours.parse().unwrap(), VXLAN_PORT);
    let remote: SocketAddr = SocketAddr::new(linux.parse().unwrap(), VXLAN_PORT);
    let mac = linux_mac.clone();
    let (arp, echo, counters) = in_netns(&a, move || {
        let mut sock = UdpBatch::bind(local, 32, 2048).unwrap();
        let arp = exchange(&mut sock, remote, &arp_request(), |f| {
            f.len() >= 42
                && f[0..6] == OUR_MAC
                && f[12..14] == [0x08, 0x06]
                && f[20..22] == [0, 2]
                && f[32..42] == [&OUR_MAC[..], &OUR_IP.octets()].concat()[..]
                && f[28..32] == LINUX_IP.octets()
        });
        let payload: Vec<u8> = (0..56u8).collect();
        let req = icmp_echo(&mac, 7, &payload);
        let want = payload.clone();
        let echo = exchange(&mut sock, remote, &req, move |f| {
            f.len() >= 42 + want.len()
                && f[0..6] == OUR_MAC
                && f[12..14] == [0x08, 0x00]
                && f[23] == 1
                && f[26..30] == LINUX_IP.octets()
                && f[30..34] == OUR_IP.octets()
                && f[34] == 0
                && f[38..42] == [0x12, 0x34, 0, 7]
                && f[42..42 + want.len()] == want[..]
        });
        (arp, echo, sock.counters())
    });

    for (what, r) in [("ARP reply", &arp), ("echo reply", &echo)] {
        // Decoded again here: the VNI, and the header Linux built is the one we build.
        let (vni, inner) = vxlan_header::decode(&r.datagram).unwrap();
        assert_eq!(vni, VNI);
        assert_eq!(r.datagram[..VXLAN_HDR_LEN], vxlan_header::encode(VNI));
        assert_eq!(inner[6..12], linux_mac[..], "{what} from vx0's MAC");
        assert_eq!(r.src.ip(), remote.ip());
        println!(
            "{what}: from {} ({} bytes, {} other datagrams before it): {}",
            r.src,
            r.datagram.len(),
            r.others,
            hex(&r.datagram)
        );
    }
    // The echo reply's IPv4 header checksum is valid.
    let (_, inner) = vxlan_header::decode(&echo.datagram).unwrap();
    assert_eq!(csum(&inner[14..34]), 0);
    print_syscalls("interop", counters);

    // Linux learned our MAC behind our address (vxlan learning is on by default).
    let fdb = run(
        "ip",
        &["netns", "exec", &b, "bridge", "fdb", "show", "dev", "vx0"],
    );
    println!("Linux vx0 fdb:\n{fdb}");
    assert!(
        fdb.lines()
            .any(|l| l.starts_with("02:00:00:00:99:01") && l.contains(&format!("dst {ours}"))),
        "our MAC not learned: {fdb}"
    );
}

fn print_syscalls(what: &str, c: UdpCounters) {
    println!(
        "{what}: {} recvmmsg for {} datagrams, {} sendmmsg for {} datagrams",
        c.recv_syscalls, c.rx_datagrams, c.send_syscalls, c.tx_datagrams
    );
}

#[test]
fn linux_vxlan_interop_ipv4() {
    if skip_without_ip("linux_vxlan_interop_ipv4") {
        return;
    }
    linux_vxlan_interop(false);
}

#[test]
fn linux_vxlan_interop_ipv6() {
    if skip_without_ip("linux_vxlan_interop_ipv6") {
        return;
    }
    linux_vxlan_interop(true);
}

/// A namespace with a veth pair `va` (198.18.250.1/24) - `vb`, both up, and a static neighbour
/// entry for 198.18.250.2 on `va`, so datagrams to it leave without ARP (and go nowhere).
fn veth_namespace() -> (Netns, String) {
    let ns = Netns::new(1);
    let a = ns.name(0).to_string();
    ip(&[
        "-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb",
    ]);
    ip(&["-n", &a, "addr", "add", "198.18.250.1/24", "dev", "va"]);
    ip(&["-n", &a, "link", "set", "va", "up"]);
    ip(&["-n", &a, "link", "set", "vb", "up"]);
    ip(&[
        "-n",
        &a,
        "neigh",
        "add",
        "198.18.250.2",
        "lladdr",
        "02:00:00:00:99:02",
        "dev",
        "va",
    ]);
    (ns, a)
}

/// A destination without a route fails alone; the datagrams around it are still sent. A full
/// socket buffer (tiny SO_SNDBUF behind a slow qdisc) drops the rest of the batch.
#[test]
fn flush_reports_unroutable_destinations_and_drops_on_a_full_buffer() {
    if skip_without_ip("flush_reports_unroutable_destinations_and_drops_on_a_full_buffer") {
        return;
    }
    let (_ns, a) = veth_namespace(); // deleted when dropped, at the end of the test
    run(
        "tc",
        &[
            "-n", &a, "qdisc", "add", "dev", "va", "root", "tbf", "rate", "64kbit", "burst",
            "1600", "latency", "10s",
        ],
    );
    in_netns(&a, || {
        let mut b = UdpBatch::bind("198.18.250.1:0".parse().unwrap(), 64, 2048).unwrap();
        let good: SocketAddr = "198.18.250.2:9".parse().unwrap();
        let unroutable: SocketAddr = "198.18.99.1:4789".parse().unwrap();
        for dst in [good, unroutable, good] {
            assert!(b.push(dst, &[&[0u8; 100]]).unwrap());
        }
        let r = b.flush().unwrap();
        assert_eq!((r.sent, r.failed, r.dropped), (2, 1, 0), "{r:?}");
        let f = r.first_failure.unwrap();
        assert_eq!(f.dst, unroutable);
        assert_eq!(f.errno, libc::ENETUNREACH, "{}", f.error());
        println!("unroutable: {r:?}");

        let one: libc::c_int = 1;
        // SAFETY: `b.fd()` is an open socket; the value is a c_int that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                b.fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                std::ptr::from_ref(&one).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        for _ in 0..64 {
            assert!(b.push(good, &[&[0u8; 1400]]).unwrap());
        }
        let r = b.flush().unwrap();
        println!("full buffer: {r:?}");
        assert!(r.dropped > 0, "{r:?}");
        assert_eq!(r.sent + r.dropped, 64);
        // Each call but the last sent something; the last met EAGAIN and ended the flush.
        assert!(r.syscalls <= r.sent + 1, "{r:?}");
        assert_eq!(b.queued(), 0);
        let c = b.counters();
        assert_eq!(c.tx_dropped, r.dropped as u64);
        assert_eq!(c.tx_failed, 1);
    });
}

/// A route whose MTU is below the datagram size makes the kernel refuse a GSO message
/// (EINVAL): the flush sends the same datagrams one by one instead (the kernel fragments them),
/// none lost, and GSO stays off for that batch.
#[test]
fn a_gso_message_the_route_refuses_is_sent_datagram_by_datagram() {
    if skip_without_ip("a_gso_message_the_route_refuses_is_sent_datagram_by_datagram") {
        return;
    }
    let (_ns, a) = veth_namespace(); // deleted when dropped, at the end of the test
    ip(&[
        "-n",
        &a,
        "route",
        "add",
        "198.18.250.2/32",
        "dev",
        "va",
        "mtu",
        "lock",
        "1000",
    ]);
    in_netns(&a, || {
        let mut b = UdpBatch::bind("198.18.250.1:0".parse().unwrap(), 64, 2048).unwrap();
        b.enable_gso().expect("UDP GSO");
        let dst: SocketAddr = "198.18.250.2:9".parse().unwrap();
        for _ in 0..10 {
            assert!(b.push(dst, &[&[0u8; 1200]]).unwrap());
        }
        let r = b.flush().unwrap();
        println!("refused GSO: {r:?}");
        assert_eq!((r.sent, r.failed, r.dropped), (10, 0, 0), "{r:?}");
        assert!(!b.gso(), "GSO is off after the kernel refused it");
        assert_eq!(b.counters().tx_messages, 10);
        // Within the route's MTU nothing is refused: GSO would have been used.
        let mut c = UdpBatch::bind("198.18.250.1:0".parse().unwrap(), 64, 2048).unwrap();
        c.enable_gso().unwrap();
        for _ in 0..10 {
            assert!(c.push(dst, &[&[0u8; 900]]).unwrap());
        }
        assert_eq!(c.flush().unwrap().sent, 10);
        assert!(c.gso());
        assert_eq!(c.counters().tx_messages, 1);
    });
}
