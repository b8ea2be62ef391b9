//! Criterion micro-benchmarks of the hot pieces of the data path, to catch regressions:
//! descriptor chain walk, Toeplitz hash, flow tuple parsing, FDB forwarding decision, edge
//! policy, and one switched packet end to end (userspace frontend -> emulator -> frontend).
//!
//!     cargo bench --bench hot_paths

#[path = "common/mod.rs"]
mod common;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sriov_emu::dma_engine::{Direction, GuestMap, Segments, SplitRing};
use sriov_emu::frontend::FrontendConfig;
use sriov_emu::pf::default_vf_mac;
use sriov_emu::rss::{
    toeplitz_reference, EnabledQueues, FlowTuple, ToeplitzTable, VfRss, DEFAULT_KEY, MAX_INPUT,
};
use sriov_emu::switch::{policy, FromPort, PortId, PortRole, Switch};
use sriov_emu::vf::VfSettings;
use sriov_emu::wire::{FrameHeader, MacAddr};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

fn udp_frame(dst: MacAddr, src: MacAddr, sport: u16, len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[..6].copy_from_slice(&dst.0);
    f[6..12].copy_from_slice(&src.0);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[23] = 17;
    f[26..30].copy_from_slice(&[198, 18, 0, 1]);
    f[30..34].copy_from_slice(&[198, 18, 0, 2]);
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f[36..38].copy_from_slice(&53u16.to_be_bytes());
    f
}

fn toeplitz(c: &mut Criterion) {
    let t = ToeplitzTable::new(DEFAULT_KEY);
    let v4 = FlowTuple::v4(6, [198, 18, 0, 1], [198, 18, 0, 2], 1000, 80);
    let v6 = FlowTuple::v6(6, [0x20; 16], [0x21; 16], 1000, 80);
    let mut g = c.benchmark_group("toeplitz");
    for (name, tuple) in [("ipv4_tcp", v4), ("ipv6_tcp", v6)] {
        let mut buf = [0u8; MAX_INPUT];
        let n = tuple.hash_input(&mut buf);
        g.bench_function(format!("table_{name}"), |b| {
            b.iter(|| t.hash(black_box(&buf[..n])))
        });
        g.bench_function(format!("bitwise_{name}"), |b| {
            b.iter(|| toeplitz_reference(&DEFAULT_KEY, black_box(&buf[..n])))
        });
    }
    g.finish();
}

fn parse_and_switch(c: &mut Criterion) {
    let f = udp_frame(default_vf_mac(1), default_vf_mac(0), 1000, 64);
    c.bench_function("flow_tuple_parse", |b| {
        b.iter(|| FlowTuple::parse(black_box(&f)))
    });
    let mut sw = Switch::new(300);
    for i in 0..1024u16 {
        let m = MacAddr([2, 0, 0, (i >> 8) as u8, i as u8, 1]);
        let h = FrameHeader {
            dst: MacAddr::BROADCAST,
            src: m,
            ethertype: 0x0800,
        };
        // Learned on PV ports (VF MACs are static entries).
        let pv = FromPort {
            port: PortId(254 + i % 64),
            role: PortRole::Pv,
            remote: 0,
            vlan: 0,
        };
        sw.forward(&pv, &h, 0);
    }
    sw.port_attached(PortId(1), Some((default_vf_mac(1), 0)));
    let hdr = FrameHeader::parse(&f, f.len()).unwrap();
    let vf0 = FromPort {
        port: PortId(0),
        role: PortRole::Vf { promisc: false },
        remote: 0,
        vlan: 0,
    };
    c.bench_function("fdb_forward_1024_macs", |b| {
        b.iter(|| sw.forward(&vf0, black_box(&hdr), 1))
    });
    let s = VfSettings::new(default_vf_mac(0)).edge_policy(true, true);
    c.bench_function("edge_policy_ingress", |b| {
        b.iter(|| policy::ingress(black_box(&s), black_box(&hdr)))
    });
}

/// Choosing the RX queue of one frame on the data path: the lock-free snapshot with the
/// default table (one or two enabled queues) and with a user table and 16 flow rules that do
/// not match, against the locked decision (the path taken with flow learning on).
fn steering(c: &mut Criterion) {
    let tuple = FlowTuple::v4(17, [198, 18, 0, 1], [198, 18, 0, 2], 1000, 53);
    let (one, two) = (EnabledQueues::first(1), EnabledQueues::first(2));
    let mut rss = VfRss::new(2);
    let plain = rss.snapshot().unwrap();
    rss.set_table(Some(&[0, 1])).unwrap();
    for i in 0..16u8 {
        let f = FlowTuple::v4(17, [198, 19, 0, i], [198, 19, 9, i], 9, 9);
        rss.add_flow_rule(f, 1).unwrap();
    }
    let configured = rss.snapshot().unwrap();
    let locked = std::sync::Mutex::new(rss);
    let mut g = c.benchmark_group("steering");
    g.bench_function("snapshot_default_table_1_queue", |b| {
        b.iter(|| plain.steer(black_box(&tuple), &one))
    });
    g.bench_function("snapshot_default_table_2_queues", |b| {
        b.iter(|| plain.steer(black_box(&tuple), &two))
    });
    g.bench_function("snapshot_user_table_16_rules", |b| {
        b.iter(|| configured.steer(black_box(&tuple), &two))
    });
    g.bench_function("locked_user_table_16_rules", |b| {
        b.iter(|| locked.lock().unwrap().decide(black_box(&tuple), &two).queue)
    });
    g.finish();
}

fn chain_walk(c: &mut Criterion) {
    let mem =
        Arc::new(GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap());
    let vq = MockSplitQueue::new(&*mem, 256);
    let descs = [
        RawDescriptor::from(SplitDescriptor::new(0x1000, 12, 1, 1)),
        RawDescriptor::from(SplitDescriptor::new(0x2000, 1500, 0, 0)),
    ];
    vq.build_desc_chain(&descs).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    // MockSplitQueue puts the used ring over the avail ring's last bytes, which `SplitRing::map`
    // refuses (since issue 13): the walk never looks at the used ring, so move it away.
    q.set_used_ring_address(Some(0x8_0000), Some(0));
    let map = GuestMap::new(mem.clone());
    let ring = SplitRing::map(&q, &map).unwrap();
    let mut segs = Segments::default();
    c.bench_function("chain_walk_2_descriptors", |b| {
        b.iter(|| {
            let head = ring.avail_entry(black_box(0));
            let _ = ring.walk(&map, head, Direction::Read, &mut segs);
            black_box(segs.total())
        })
    });
    // The peer: the same walk through virtio-queue's DescriptorChain and vm-memory checks, as
    // the data path did before its own ring code.
    c.bench_function("chain_walk_2_descriptors_virtio_queue", |b| {
        b.iter(|| {
            let chain = q.iter(&*mem).unwrap().next().unwrap();
            let mut total = 0usize;
            for d in chain {
                if mem.check_range(d.addr(), d.len() as usize) {
                    total += d.len() as usize;
                }
            }
            q.go_to_previous_position();
            black_box(total)
        })
    });
}

fn end_to_end(c: &mut Criterion) {
    let mut g = c.benchmark_group("switched_packet");
    g.throughput(Throughput::Elements(1));
    for (mode, poll) in [("event", false), ("poll", true)] {
        let cfg = FrontendConfig {
            queue_size: 256,
            ..FrontendConfig::default()
        };
        let (_dir, d, mut a, mut b) = common::two_vfs(poll, cfg);
        let f = udp_frame(default_vf_mac(1), default_vf_mac(0), 1000, 64);
        g.bench_function(
            format!("frontend_to_frontend_64B_batches_of_64_{mode}"),
            |bench| {
                bench.iter_custom(|iters| {
                    let start = Instant::now();
                    let mut left = iters;
                    while left > 0 {
                        let n = left.min(64) as usize;
                        let sent = a.send_batch(0, std::iter::repeat_n(&f[..], n)).unwrap();
                        let mut got = 0;
                        while got < sent {
                            if b.recv(0).is_some() {
                                got += 1;
                            } else if start.elapsed() > Duration::from_secs(60) {
                                panic!("frames lost");
                            }
                        }
                        left -= sent as u64;
                    }
                    start.elapsed()
                })
            },
        );
        d.shutdown();
    }
    g.finish();
}

criterion_group!(
    benches,
    toeplitz,
    parse_and_switch,
    steering,
    chain_walk,
    end_to_end
);
criterion_main!(benches);
