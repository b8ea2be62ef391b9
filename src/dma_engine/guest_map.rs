//! Guest-physical to host address translation for the data path.
//!
//! A snapshot of one guest's memory table: a handful of (guest address, length, host address)
//! ranges, searched linearly (QEMU maps guest RAM as one to three regions). The snapshot holds
//! the memory's `Arc`, so the mappings stay valid while it lives even if SET_MEM_TABLE replaces
//! the table; the data plane compares pointers once per batch and rebuilds on change.

use std::sync::Arc;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Dirty-page bitmap type for vm-memory's own accesses. `()`: the data plane writes guest
/// memory through host pointers, not vm-memory, and marks the dirty log itself
/// (`dirty_log.rs`); vhost-user-backend's `BitmapMmapRegion` would take an RwLock on every
/// write even while logging is off (about 10% of the data plane's time under load, measured
/// with perf).
pub type GuestBitmap = ();
/// Guest memory as the backend maps it.
pub type GuestMem = vm_memory::GuestMemoryMmap<GuestBitmap>;
/// Guest memory that SET_MEM_TABLE can replace under the data plane.
pub type GuestMemAtomic = vm_memory::GuestMemoryAtomic<GuestMem>;

/// One mapped range of guest memory.
#[derive(Debug, Clone, Copy)]
struct MapRegion {
    gpa: u64,
    len: u64,
    host: usize,
}

/// Translation table of one guest memory snapshot.
#[derive(Debug, Clone)]
pub struct GuestMap {
    regions: Box<[MapRegion]>,
    mem: Arc<GuestMem>,
}

impl GuestMap {
    pub fn new(mem: Arc<GuestMem>) -> Self {
        let regions = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some(MapRegion {
                    gpa: r.start_addr().0,
                    len: r.len(),
                    host: host as usize,
                })
            })
            .collect();
        GuestMap { regions, mem }
    }

    /// The memory this map translates into: holding it keeps every host address the map
    /// gives mapped.
    #[inline]
    pub(super) fn mem(&self) -> &Arc<GuestMem> {
        &self.mem
    }

    /// True if this map was built from `mem`.
    #[inline]
    pub fn is_of(&self, mem: &GuestMem) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.mem), mem)
    }

    /// Host address of `gpa` and how many bytes from there are mapped contiguously (at most
    /// `len`); `None` if `gpa` is outside guest memory.
    #[inline]
    pub fn translate(&self, gpa: u64, len: u64) -> Option<(usize, u64)> {
        for r in self.regions.iter() {
            let off = gpa.wrapping_sub(r.gpa);
            if off < r.len {
                return Some((r.host + off as usize, len.min(r.len - off)));
            }
        }
        None
    }

    /// The guest-physical address of host address `host`, if it is in guest memory.
    #[inline]
    pub fn gpa_of(&self, host: usize) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = host.wrapping_sub(r.host) as u64;
            (off < r.len).then(|| r.gpa + off)
        })
    }

    /// Host address of `[gpa, gpa + len)` if the whole range is mapped in one piece.
    #[inline]
    pub fn contiguous(&self, gpa: u64, len: u64) -> Option<usize> {
        match self.translate(gpa, len) {
            Some((host, n)) if n == len => Some(host),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn translates_within_and_across_regions() {
        let mem = Arc::new(
            GuestMem::from_ranges(&[
                (GuestAddress(0), 0x1000),
                (GuestAddress(0x1000), 0x1000),
                (GuestAddress(0x10_0000), 0x2000),
            ])
            .unwrap(),
        );
        // A different pattern at each address (and at every byte), written through vm-memory's
        // own translation: reading it back through `translate` catches a wrong region or offset.
        let pattern = |seed: u8, n: usize| -> Vec<u8> {
            (0..n).map(|i| seed.wrapping_add((i % 251) as u8)).collect()
        };
        let (p0, p1, p2) = (pattern(1, 0x800), pattern(101, 0x40), pattern(201, 0x10));
        mem.write_slice(&p0, GuestAddress(0x800)).unwrap();
        mem.write_slice(&p1, GuestAddress(0x1000)).unwrap();
        mem.write_slice(&p2, GuestAddress(0x10_1ff0)).unwrap();
        let map = GuestMap::new(mem.clone());
        let (h0, n0) = map.translate(0x800, 0x1000).unwrap();
        assert_eq!(n0, 0x800, "stops at the end of the first region");
        // SAFETY: `translate` returned n0 mapped bytes at h0; `map` and `mem` keep them
        // mapped until the end of the test, and nothing writes to them meanwhile.
        let got = unsafe { std::slice::from_raw_parts(h0 as *const u8, n0 as usize) };
        assert_eq!(got, &p0[..]);
        let (h1, n1) = map.translate(0x1000, 0x40).unwrap();
        assert_eq!(n1, 0x40);
        // SAFETY: as above, n1 mapped bytes at h1.
        let got = unsafe { std::slice::from_raw_parts(h1 as *const u8, n1 as usize) };
        assert_eq!(got, &p1[..]);
        assert!(map.contiguous(0x1000, 0x1000).is_some());
        assert_eq!(map.contiguous(0x1800, 0x1000), None);
        assert_eq!(map.translate(0x5000, 1), None);
        assert_eq!(map.translate(0x10_2000, 1), None);
        let (h2, n2) = map.translate(0x10_1ff0, 0x100).unwrap();
        assert_eq!(n2, 0x10);
        // SAFETY: as above, n2 mapped bytes at h2.
        let got = unsafe { std::slice::from_raw_parts(h2 as *const u8, n2 as usize) };
        assert_eq!(got, &p2[..]);
        assert_eq!(map.contiguous(0x10_1ff8, 8), Some(h2 + 8));
    }

    #[test]
    fn host_addresses_translate_back_to_guest_addresses() {
        let mem = Arc::new(
            GuestMem::from_ranges(&[(GuestAddress(0), 0x1000), (GuestAddress(0x10_0000), 0x2000)])
                .unwrap(),
        );
        let map = GuestMap::new(mem);
        for gpa in [0, 0xfff, 0x10_0000, 0x10_1fff] {
            let (host, _) = map.translate(gpa, 1).unwrap();
            assert_eq!(map.gpa_of(host), Some(gpa));
        }
        let (end, _) = map.translate(0xfff, 1).unwrap();
        assert_eq!(map.gpa_of(end + 1).filter(|g| *g < 0x1000), None);
        assert_eq!(map.gpa_of(0), None);
    }

    #[test]
    fn knows_its_snapshot() {
        let a = Arc::new(GuestMem::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap());
        let b = GuestMem::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let map = GuestMap::new(a.clone());
        assert!(map.is_of(&a));
        assert!(!map.is_of(&b));
    }
}
