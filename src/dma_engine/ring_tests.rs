//! Unit tests of `ring.rs`: chain walks (direct, indirect, hostile) and notification
//! suppression with EVENT_IDX on and off.

use super::*;
use crate::dma_engine::GuestMem;
use std::sync::Arc;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};

const MEM: u64 = 0x10_0000;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

struct Fixture {
    mem: Arc<GuestMem>,
    q: Queue,
}

/// A 16-entry queue whose descriptor table holds `descs` as given and whose avail ring
/// offers head 0. (MockSplitQueue puts the used ring over the avail ring's last entries at
/// this size, which `SplitRing::map` refuses: the used ring is moved clear of it.)
fn fixture(descs: &[RawDescriptor]) -> Fixture {
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
    let vq = MockSplitQueue::new(&*mem, 16);
    for (i, d) in descs.iter().enumerate() {
        vq.desc_table().store(i as u16, *d).unwrap();
    }
    vq.avail().ring().ref_at(0).unwrap().store(0);
    vq.avail().idx().store(1);
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_used_ring_address(Some(0x400), Some(0));
    Fixture { mem, q }
}

fn walk(descs: &[RawDescriptor], dir: Direction) -> (Result<(), ChainError>, Segments) {
    let f = fixture(descs);
    let map = GuestMap::new(f.mem.clone());
    let ring = SplitRing::map(&f.q, &map).unwrap();
    assert_eq!(ring.avail_idx(), 1);
    let head = ring.avail_entry(0);
    let mut segs = Segments::default();
    let r = ring.walk(&map, head, dir, &mut segs);
    (r, segs)
}

const NEXT: u16 = VRING_DESC_F_NEXT;
const WRITE: u16 = VRING_DESC_F_WRITE;

#[test]
fn readable_chain_with_header_and_data() {
    let (r, s) = walk(
        &[desc(0x1000, 12, NEXT, 1), desc(0x2000, 1500, 0, 0)],
        Direction::Read,
    );
    assert_eq!(r, Ok(()));
    assert_eq!(s.total(), 1512);
    assert_eq!(s.as_slice().len(), 2);
    assert_eq!(s.head, 0);
}

#[test]
fn write_only_descriptor_on_tx_is_refused() {
    let (r, _) = walk(&[desc(0x1000, 100, WRITE, 0)], Direction::Read);
    assert_eq!(r, Err(ChainError::WrongDirection));
}

#[test]
fn readable_descriptor_on_rx_is_refused() {
    let (r, _) = walk(&[desc(0x1000, 100, 0, 0)], Direction::Write);
    assert_eq!(r, Err(ChainError::WrongDirection));
}

#[test]
fn region_past_the_end_of_memory_is_refused() {
    let (r, _) = walk(&[desc(MEM - 10, 100, WRITE, 0)], Direction::Write);
    assert_eq!(r, Err(ChainError::OutOfBounds));
}

#[test]
fn looped_chain_is_refused() {
    let (r, _) = walk(
        &[desc(0x1000, 10, NEXT, 1), desc(0x2000, 10, NEXT, 0)],
        Direction::Read,
    );
    assert_eq!(r, Err(ChainError::Loop));
}

#[test]
fn next_past_the_table_is_refused() {
    let (r, _) = walk(&[desc(0x1000, 10, NEXT, 40)], Direction::Read);
    assert_eq!(r, Err(ChainError::BadIndex));
}

#[test]
fn empty_descriptors_are_skipped() {
    let (r, s) = walk(
        &[desc(0x1000, 0, NEXT, 1), desc(0x2000, 10, 0, 0)],
        Direction::Read,
    );
    assert_eq!(r, Ok(()));
    assert_eq!(s.as_slice().len(), 1);
    assert_eq!(s.total(), 10);
}

#[test]
fn a_chain_longer_than_the_queue_is_refused_even_if_its_descriptors_are_empty() {
    // 16-entry queue; an indirect table of 17 descriptors, 16 of them empty.
    let f = fixture(&[desc(0x8000, 17 * 16, VRING_DESC_F_INDIRECT, 0)]);
    let write_table = |n: u16| {
        for i in 0..n {
            let d = if i + 1 < n {
                desc(0x1000, 0, NEXT, i + 1)
            } else {
                desc(0x2000, 60, 0, 0)
            };
            f.mem
                .write_obj(d, GuestAddress(0x8000 + 16 * u64::from(i)))
                .unwrap();
        }
    };
    write_table(17);
    let map = GuestMap::new(f.mem.clone());
    let ring = SplitRing::map(&f.q, &map).unwrap();
    let mut segs = Segments::default();
    assert_eq!(
        ring.walk(&map, 0, Direction::Read, &mut segs),
        Err(ChainError::TooLong)
    );
    // The queue's size is allowed.
    f.mem
        .write_obj(
            desc(0x8000, 16 * 16, VRING_DESC_F_INDIRECT, 0),
            GuestAddress(f.q.desc_table()),
        )
        .unwrap();
    write_table(16);
    assert_eq!(ring.walk(&map, 0, Direction::Read, &mut segs), Ok(()));
    assert_eq!(segs.total(), 60);
}

#[test]
fn indirect_table_is_followed() {
    let f = fixture(&[desc(0x8000, 32, VRING_DESC_F_INDIRECT, 0)]);
    f.mem
        .write_obj(desc(0x1000, 12, NEXT, 1), GuestAddress(0x8000))
        .unwrap();
    f.mem
        .write_obj(desc(0x2000, 100, 0, 0), GuestAddress(0x8010))
        .unwrap();
    let map = GuestMap::new(f.mem.clone());
    let ring = SplitRing::map(&f.q, &map).unwrap();
    let mut segs = Segments::default();
    assert_eq!(ring.walk(&map, 0, Direction::Read, &mut segs), Ok(()));
    assert_eq!(segs.total(), 112);
    // An indirect descriptor inside an indirect table is refused.
    f.mem
        .write_obj(
            desc(0x8000, 32, VRING_DESC_F_INDIRECT, 0),
            GuestAddress(0x8010),
        )
        .unwrap();
    assert_eq!(
        ring.walk(&map, 0, Direction::Read, &mut segs),
        Err(ChainError::BadIndirect)
    );
}

#[test]
fn used_ring_and_notification_follow_the_driver() {
    let f = fixture(&[desc(0x1000, 10, 0, 0)]);
    let map = GuestMap::new(f.mem.clone());
    let ring = SplitRing::map(&f.q, &map).unwrap();
    ring.write_used(0, 0, 10);
    ring.publish_used(1);
    let used = f.q.used_ring();
    let idx: u16 = f.mem.read_obj(GuestAddress(used + 2)).unwrap();
    let elem: [u32; 2] = f.mem.read_obj(GuestAddress(used + 4)).unwrap();
    assert_eq!((idx, elem), (1, [0, 10]));
    // No EVENT_IDX, no NO_INTERRUPT flag: notify whenever something was used.
    assert!(ring.needs_notification(0, 1));
    assert!(!ring.needs_notification(1, 1));
    let avail = f.q.avail_ring();
    f.mem.write_obj(1u16, GuestAddress(avail)).unwrap();
    assert!(!ring.needs_notification(0, 1), "NO_INTERRUPT is honoured");
    // The rings moved: the mapping no longer describes the queue.
    assert!(ring.is_of(&f.q));
    let mut q = f.q;
    q.set_desc_table_address(Some(0x4_0000), Some(0));
    assert!(!ring.is_of(&q));
}

/// A 16-entry queue laid out by hand (MockSplitQueue's used ring overlaps `used_event` at
/// this size), with `avail` entries made available.
fn spaced_queue(event_idx: bool, avail: u16) -> (Arc<GuestMem>, Queue) {
    let mem = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), MEM as usize)]).unwrap());
    mem.write_obj(avail, GuestAddress(0x2002)).unwrap();
    let mut q = Queue::new(16).unwrap();
    q.set_size(16);
    q.set_desc_table_address(Some(0x1000), Some(0));
    q.set_avail_ring_address(Some(0x2000), Some(0));
    q.set_used_ring_address(Some(0x3000), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    (mem, q)
}

#[test]
fn kicks_are_asked_for_and_suppressed_in_both_notification_modes() {
    for event_idx in [false, true] {
        let (mem, q) = spaced_queue(event_idx, 3);
        let map = GuestMap::new(mem.clone());
        let ring = SplitRing::map(&q, &map).unwrap();
        let flags = || mem.read_obj::<u16>(GuestAddress(0x3000)).unwrap();
        let avail_event = || {
            mem.read_obj::<u16>(GuestAddress(0x3000 + 4 + 8 * 16))
                .unwrap()
        };
        // Three buffers wait beyond 0: enabling reports them so the device keeps going.
        assert!(ring.enable_notification(0), "event_idx {event_idx}");
        // None beyond 3: the device may sleep, the driver will kick.
        assert!(!ring.enable_notification(3), "event_idx {event_idx}");
        if event_idx {
            assert_eq!(avail_event(), 3, "kick me when you pass 3");
            ring.disable_notification();
            assert_eq!(flags(), 0, "with EVENT_IDX the flag is not used");
        } else {
            assert_eq!(flags(), 0, "kicks on");
            ring.disable_notification();
            assert_eq!(flags(), VRING_USED_F_NO_NOTIFY, "kicks off");
        }
    }
}

#[test]
fn interrupts_follow_used_event_or_the_no_interrupt_flag() {
    for event_idx in [false, true] {
        let (mem, q) = spaced_queue(event_idx, 0);
        let map = GuestMap::new(mem.clone());
        let ring = SplitRing::map(&q, &map).unwrap();
        if event_idx {
            // used_event = 5: moving the used index from 2 to 4 does not cross it, 4 to 6 does.
            mem.write_obj(5u16, GuestAddress(0x2000 + 4 + 2 * 16))
                .unwrap();
            assert!(!ring.needs_notification(2, 4));
            assert!(ring.needs_notification(4, 6));
        } else {
            assert!(ring.needs_notification(2, 4));
            mem.write_obj(VRING_AVAIL_F_NO_INTERRUPT, GuestAddress(0x2000))
                .unwrap();
            assert!(!ring.needs_notification(2, 4));
        }
        assert!(
            !ring.needs_notification(4, 4),
            "nothing used, nothing to say"
        );
    }
}

#[test]
fn rings_outside_guest_memory_are_not_mapped() {
    let f = fixture(&[]);
    let map = GuestMap::new(f.mem.clone());
    let mut q = f.q;
    assert!(SplitRing::map(&q, &map).is_some());
    q.set_used_ring_address(Some((MEM - 8) as u32), Some(0));
    assert!(SplitRing::map(&q, &map).is_none());
    let f = fixture(&[]);
    let mut q = f.q;
    q.set_avail_ring_address(Some((MEM - 4) as u32), Some(0));
    assert!(SplitRing::map(&q, &map).is_none());
}

#[test]
fn overlapping_rings_are_not_mapped() {
    let f = fixture(&[]);
    let map = GuestMap::new(f.mem.clone());
    let (desc, avail, used) = (f.q.desc_table(), f.q.avail_ring(), f.q.used_ring());
    let lo = |a: u64| Some(a as u32);
    let mut q = f.q;
    // The used ring over the descriptor table, over the avail ring, sharing its last byte.
    for at in [desc, avail, avail + 6 + 2 * 16 - 4] {
        q.set_used_ring_address(lo(at), Some(0));
        assert!(SplitRing::map(&q, &map).is_none(), "used ring at {at:#x}");
    }
    // The avail ring inside the descriptor table.
    q.set_used_ring_address(lo(used), Some(0));
    q.set_avail_ring_address(lo(desc + 16), Some(0));
    assert!(SplitRing::map(&q, &map).is_none());
    // Right behind one another is fine.
    q.set_avail_ring_address(lo(desc + 16 * 16), Some(0));
    q.set_used_ring_address(lo(desc + 16 * 16 + 6 + 2 * 16 + 2), Some(0));
    assert!(SplitRing::map(&q, &map).is_some());
}
