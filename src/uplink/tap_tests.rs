//! Unit tests of `tap.rs` against the kernel: they need root and /dev/net/tun, and print
//! `SKIPPED:` without them. Each works with a TAP named `stap<pid>-<n>`, in a network namespace
//! of its own (`sriov-tap-test-<pid>-<n>`) where it needs addresses (198.18.0.0/24), and
//! removes both with a drop guard even when it fails.

use super::*;
use std::io::Write as _;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const NS_IP: [u8; 4] = [198, 18, 0, 1];
const OUR_IP: [u8; 4] = [198, 18, 0, 2];
const ETH_ARP: u16 = 0x0806;
const ETH_IPV4: u16 = 0x0800;

/// Skips (returns true after printing `SKIPPED:`) without /dev/net/tun or root.
fn skip(test: &str) -> bool {
    let missing = if !std::path::Path::new("/dev/net/tun").exists() {
        "/dev/net/tun is missing"
    // SAFETY: geteuid has no preconditions.
    } else if unsafe { libc::geteuid() } != 0 {
        "not root"
    } else {
        return false;
    };
    // Straight to stderr, past the harness's capture (as tests/common/skip.rs does).
    let _ = std::io::stderr().write_all(format!("\nSKIPPED: {test}: {missing}\n").as_bytes());
    true
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Names unique to this process and test, and their removal on drop. Declare it before the
/// `TapDevice` so that the device's fds close first.
struct Lab {
    ns: Option<String>,
    links: Vec<String>,
}

impl Lab {
    fn new(with_ns: bool) -> (Lab, String) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let ifname = format!("stap{pid}-{n}");
        assert!(ifname.len() <= MAX_NAME_LEN, "{ifname}");
        let mut lab = Lab {
            ns: None,
            links: vec![ifname.clone()],
        };
        if with_ns {
            let ns = format!("sriov-tap-test-{pid}-{n}");
            ip(&["netns", "add", &ns]);
            lab.ns = Some(ns);
        }
        (lab, ifname)
    }

    fn ns(&self) -> &str {
        self.ns.as_deref().expect("a lab with a namespace")
    }

    /// Moves `ifname` into the namespace, with 198.18.0.1/24, no IPv6 chatter, up.
    fn move_and_configure(&self, ifname: &str) {
        let ns = self.ns();
        ip(&["link", "set", ifname, "netns", ns]);
        ip(&["-n", ns, "link", "set", ifname, "addrgenmode", "none"]);
        ip(&["-n", ns, "addr", "add", "198.18.0.1/24", "dev", ifname]);
        ip(&["-n", ns, "link", "set", ifname, "up"]);
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip").args(args).output();
        };
        for link in &self.links {
            if link_exists(link) {
                quiet(&["link", "del", link]);
            }
        }
        if let Some(ns) = &self.ns {
            // Deleting the namespace deletes the TAPs moved into it.
            quiet(&["netns", "del", ns]);
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(98);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

fn arp_request(mac: [u8; 6], ip: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = eth([0xff; 6], mac, ETH_ARP);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]); // Ethernet, IPv4, request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

/// An ICMP echo request with 56 bytes of payload: a 98-byte frame.
fn echo_request(dst_mac: [u8; 6], src: ([u8; 6], [u8; 4]), dst: [u8; 4], id: u16) -> Vec<u8> {
    let mut f = eth(dst_mac, src.0, ETH_IPV4);
    let mut ip = vec![0x45, 0, 0, 84, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip.extend_from_slice(&src.1);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend((0..56u8).map(|i| i ^ 0x5a));
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

fn is_echo_reply(f: &[u8]) -> bool {
    f.len() >= 42 && ethertype(f) == ETH_IPV4 && f[23] == 1 && f[34] == 0
}

/// Checks `f` is the echo reply to `request`: addresses swapped (the MACs unless the request
/// was broadcast), same id, sequence and
/// payload, both checksums complete and right.
fn check_echo_reply(f: &[u8], request: &[u8]) {
    assert_eq!(f.len(), request.len(), "reply length");
    assert_eq!(f[0..6], request[6..12], "dst MAC = requester's");
    if request[0] & 1 == 0 {
        assert_eq!(f[6..12], request[0..6], "src MAC = the requested");
    }
    assert_eq!(ethertype(f), ETH_IPV4);
    assert_eq!(f[26..30], request[30..34], "src IP");
    assert_eq!(f[30..34], request[26..30], "dst IP");
    assert_eq!(checksum(&f[14..34]), 0, "IPv4 header checksum");
    assert_eq!((f[34], f[35]), (0, 0), "echo reply");
    assert_eq!(checksum(&f[34..]), 0, "ICMP checksum");
    assert_eq!(f[38..], request[38..], "id, sequence, payload");
}

/// Reads frames from `queue` until one satisfies `want` (others, e.g. IPv6 chatter, are
/// skipped), for at most 2 s.
fn wait_frame(tap: &TapDevice, queue: usize, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    loop {
        if let Some(len) = tap.read_frame(queue, &mut buf).expect("read_frame") {
            if want(&buf[..len]) {
                return buf[..len].to_vec();
            }
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no matching frame on queue {queue} within 2 s"
        );
        let mut pfd = libc::pollfd {
            fd: tap.fd(queue),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, valid for the call.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(100) as libc::c_int) };
    }
}

/// Waits up to 2 s for `queue` to have a frame.
fn wait_readable(tap: &TapDevice, queue: usize) {
    let mut pfd = libc::pollfd {
        fd: tap.fd(queue),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    let n = unsafe { libc::poll(&mut pfd, 1, 2000) };
    assert_eq!(n, 1, "queue {queue} readable within 2 s");
}

#[test]
fn names_and_queue_counts_are_checked() {
    for bad in [
        "",
        "sixteen-bytes-xx",
        "a/b",
        "a b",
        "a:b",
        "a\tb",
        "a\0b",
        ".",
        "..",
    ] {
        assert!(
            matches!(TapDevice::open(bad, 1), Err(TapError::Name(n)) if n == bad),
            "{bad:?}"
        );
    }
    assert!(matches!(TapDevice::open("ok", 0), Err(TapError::NoQueues)));
    assert!(check_name("fifteen-bytes-x").is_ok());
}

#[test]
fn frames_cross_both_ways_after_a_move_to_another_namespace() {
    if skip("frames_cross_both_ways_after_a_move_to_another_namespace") {
        return;
    }
    let (lab, ifname) = Lab::new(true);
    let tap = TapDevice::open(&ifname, 1).expect("open");
    assert!(tap.created());
    assert_eq!((tap.name(), tap.queues()), (ifname.as_str(), 1));
    // Our fd keeps working after the move.
    lab.move_and_configure(&ifname);

    // ARP: our request in, the kernel's reply out.
    let req = arp_request(OUR_MAC, OUR_IP, NS_IP);
    assert!(tap
        .write_frame(0, &[&req[..14], &req[14..]])
        .expect("write"));
    let reply = wait_frame(&tap, 0, |f| ethertype(f) == ETH_ARP && f[21] == 2);
    assert_eq!(reply.len(), 42, "ARP reply, no padding");
    assert_eq!(reply[0..6], OUR_MAC);
    assert_eq!(reply[28..32], NS_IP, "sender IP");
    assert_eq!(reply[32..38], OUR_MAC, "target MAC");
    assert_eq!(reply[38..42], OUR_IP, "target IP");
    let ns_mac: [u8; 6] = reply[22..28].try_into().expect("6 bytes");
    assert_eq!(reply[6..12], ns_mac);

    // ICMP echo, written in three slices; the kernel knows our MAC from the ARP request.
    let req = echo_request(ns_mac, (OUR_MAC, OUR_IP), NS_IP, 7);
    assert!(tap
        .write_frame(0, &[&req[..14], &req[14..34], &req[34..]])
        .expect("write"));
    let reply = wait_frame(&tap, 0, is_echo_reply);
    check_echo_reply(&reply, &req);

    // A frame longer than the buffer is consumed and reported, not passed on cut short.
    assert!(tap.write_frame(0, &[&req]).expect("write"));
    wait_readable(&tap, 0);
    let mut small = [0u8; 60];
    assert!(matches!(
        tap.read_frame(0, &mut small),
        Err(TapError::Truncated { queue: 0, cap: 60 })
    ));
    assert!(matches!(tap.read_frame(0, &mut small), Ok(None)));
    // A buffer of exactly the frame's length is not "truncated".
    assert!(tap.write_frame(0, &[&req]).expect("write"));
    wait_readable(&tap, 0);
    let mut exact = vec![0u8; req.len()];
    assert_eq!(
        tap.read_frame(0, &mut exact).expect("read"),
        Some(req.len())
    );
    check_echo_reply(&exact, &req);

    // Refused by us or by the kernel, cleanly.
    let too_many: [&[u8]; 4] = [&req[..14], &req[14..34], &req[34..40], &req[40..]];
    assert!(matches!(
        tap.write_frame(0, &too_many),
        Err(TapError::Parts { parts: 4 })
    ));
    match tap.write_frame(0, &[&req[..10]]) {
        Err(TapError::Write { queue: 0, source }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
        }
        other => panic!("a 10-byte frame: {other:?}"),
    }
    assert!(matches!(
        tap.write_frame(1, &[&req]),
        Err(TapError::Queue {
            queue: 1,
            queues: 1
        })
    ));
    assert!(matches!(
        tap.read_frame(1, &mut small),
        Err(TapError::Queue { .. })
    ));
}

#[test]
fn is_up_follows_the_link_through_a_move_a_rename_and_a_delete() {
    if skip("is_up_follows_the_link_through_a_move_a_rename_and_a_delete") {
        return;
    }
    let (mut lab, ifname) = Lab::new(true);
    let tap = TapDevice::open(&ifname, 1).expect("open");
    assert!(!tap.is_up().expect("is_up"));
    lab.move_and_configure(&ifname);
    let ns = lab.ns().to_string();
    assert!(tap.is_up().expect("is_up after the move"));
    assert_eq!(tap.mtu().expect("mtu"), 1500);

    ip(&["-n", &ns, "link", "set", &ifname, "down"]);
    assert!(!tap.is_up().expect("is_up"));
    // Down: the kernel refuses writes with EIO, and reads find nothing.
    let req = echo_request([0xff; 6], (OUR_MAC, OUR_IP), NS_IP, 1);
    match tap.write_frame(0, &[&req]) {
        Err(TapError::Write { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EIO))
        }
        other => panic!("write while down: {other:?}"),
    }
    let mut buf = [0u8; 2048];
    assert!(matches!(tap.read_frame(0, &mut buf), Ok(None)));

    let renamed = format!("r{}", &ifname[1..]);
    lab.links.push(renamed.clone());
    ip(&["-n", &ns, "link", "set", &ifname, "name", &renamed]);
    ip(&["-n", &ns, "link", "set", &renamed, "up"]);
    assert!(tap.is_up().expect("is_up after a rename"));
    assert!(tap.write_frame(0, &[&req]).expect("write when up again"));
    tap.set_mtu(9000).expect("set_mtu");
    assert_eq!(tap.mtu().expect("mtu"), 9000);
    tap.set_mtu(65521).expect("the largest MTU");
    assert!(matches!(
        tap.set_mtu(65522),
        Err(TapError::SetMtu { mtu: 65522, .. })
    ));
    assert!(matches!(
        tap.set_mtu(u32::MAX),
        Err(TapError::SetMtu { .. })
    ));

    // Deleted under us: every operation fails with EBADFD, and poll says POLLERR (a
    // poll loop that only waits for POLLIN would spin).
    ip(&["-n", &ns, "link", "del", &renamed]);
    let ebadfd = |e: &io::Error| e.raw_os_error() == Some(libc::EBADFD);
    assert!(matches!(tap.is_up(), Err(TapError::Flags { source, .. }) if ebadfd(&source)));
    assert!(matches!(tap.mtu(), Err(TapError::Mtu { source, .. }) if ebadfd(&source)));
    assert!(matches!(
        tap.read_frame(0, &mut buf),
        Err(TapError::Read { source, .. }) if ebadfd(&source)
    ));
    assert!(matches!(
        tap.write_frame(0, &[&req]),
        Err(TapError::Write { source, .. }) if ebadfd(&source)
    ));
    let mut pfd = libc::pollfd {
        fd: tap.fd(0),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one pollfd, valid for the call.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 0) }, 1);
    assert_ne!(pfd.revents & libc::POLLERR, 0, "revents {:#x}", pfd.revents);
}

#[test]
fn an_idle_tap_reads_nothing_and_a_created_one_vanishes_on_drop() {
    if skip("an_idle_tap_reads_nothing_and_a_created_one_vanishes_on_drop") {
        return;
    }
    let (_lab, ifname) = Lab::new(false);
    let tap = TapDevice::open(&ifname, 1).expect("open");
    assert!(tap.created() && link_exists(&ifname));
    assert!(!tap.is_up().expect("is_up"));
    let mut buf = [0u8; 2048];
    assert!(matches!(tap.read_frame(0, &mut buf), Ok(None)));
    drop(tap);
    // Not always at once: a test running beside this one may fork (`ip`) and hold a copy
    // of the fd until its exec closes it (O_CLOEXEC).
    let deadline = Instant::now() + Duration::from_secs(1);
    while link_exists(&ifname) {
        assert!(
            Instant::now() < deadline,
            "a TAP we created goes with its fds"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn attaches_to_a_persistent_single_queue_tap() {
    if skip("attaches_to_a_persistent_single_queue_tap") {
        return;
    }
    let (_lab, ifname) = Lab::new(false);
    ip(&["tuntap", "add", "dev", &ifname, "mode", "tap", "vnet_hdr"]);
    match TapDevice::open(&ifname, 2) {
        Err(TapError::SetIff {
            queue: 0, source, ..
        }) => assert_eq!(source.raw_os_error(), Some(libc::EINVAL)),
        other => panic!("2 queues on a single-queue TAP: {:?}", other.map(|_| ())),
    }
    let tap = TapDevice::open(&ifname, 1).expect("attach");
    assert!(!tap.created());
    match TapDevice::open(&ifname, 1) {
        Err(TapError::SetIff { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EBUSY))
        }
        other => panic!("a second fd on a single queue: {:?}", other.map(|_| ())),
    }
    ip(&["link", "set", &ifname, "up"]);
    assert!(tap.is_up().expect("is_up"));
    let req = echo_request([0xff; 6], (OUR_MAC, OUR_IP), NS_IP, 1);
    assert!(tap.write_frame(0, &[&req]).expect("write"));
    drop(tap);
    assert!(link_exists(&ifname), "a persistent TAP stays");
    match TapDevice::open("lo", 1) {
        Err(TapError::SetIff { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL))
        }
        other => panic!("lo is no TAP: {:?}", other.map(|_| ())),
    }
}

#[test]
fn multi_queue_every_queue_writes_and_reads() {
    if skip("multi_queue_every_queue_writes_and_reads") {
        return;
    }
    let (lab, ifname) = Lab::new(true);
    let tap = TapDevice::open(&ifname, 2).expect("open 2 queues");
    assert_eq!(tap.queues(), 2);
    assert_ne!(tap.fd(0), tap.fd(1));
    lab.move_and_configure(&ifname);
    let ns = lab.ns();
    // 16 flows (sources 198.18.0.2..=17, static neighbours so no ARP), written on the two
    // queues in turn. The kernel picks a reply's queue by a hash of the flow, not by the
    // queue the request came from: expect every reply, on either queue, and both queues used.
    let mut requests = Vec::new();
    for i in 2..18u8 {
        let mac = [2, 0, 0, 0, 0, i];
        let lladdr = format!("02:00:00:00:00:{i:02x}");
        let addr = format!("198.18.0.{i}");
        ip(&[
            "-n",
            ns,
            "neigh",
            "add",
            &addr,
            "lladdr",
            &lladdr,
            "dev",
            &ifname,
            "nud",
            "permanent",
        ]);
        let req = echo_request([0xff; 6], (mac, [198, 18, 0, i]), NS_IP, u16::from(i));
        assert!(tap.write_frame(usize::from(i % 2), &[&req]).expect("write"));
        requests.push(req);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut per_queue = [0usize; 2];
    let mut buf = [0u8; 2048];
    let mut left = requests.len();
    while left > 0 {
        assert!(
            Instant::now() < deadline,
            "{left} replies missing: {per_queue:?}"
        );
        let mut got = false;
        for (q, count) in per_queue.iter_mut().enumerate() {
            let Some(len) = tap.read_frame(q, &mut buf).expect("read") else {
                continue;
            };
            got = true;
            let f = &buf[..len];
            if !is_echo_reply(f) {
                continue;
            }
            let req = &requests[usize::from(f[33]) - 2];
            check_echo_reply(f, req);
            *count += 1;
            left -= 1;
        }
        if !got {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(
        per_queue.iter().all(|&n| n > 0),
        "replies per queue: {per_queue:?}"
    );
}
