//! Guest-physical to host address translation for the data path.
//!
//! A snapshot of one guest's memory table: a handful of (guest address, length, host address)
//! ranges, searched linearly (QEMU maps guest RAM as one to three regions). The snapshot holds
//! the memory's `Arc`, so the mappings stay valid while it lives even if SET_MEM_TABLE replaces
//! the table; the data plane compares pointers once per batch and rebuilds on change.

use crate::vf::GuestMem;
use std::sync::Arc;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

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
    use vm_memory::GuestAddress;

    #[test]
    fn translates_within_and_across_regions() {
        let mem = GuestMem::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
            (GuestAddress(0x10_0000), 0x2000),
        ])
        .unwrap();
        let map = GuestMap::new(Arc::new(mem));
        let (h0, n0) = map.translate(0x800, 0x1000).unwrap();
        assert_eq!(n0, 0x800, "stops at the end of the first region");
        let (h1, _) = map.translate(0x1000, 1).unwrap();
        assert_ne!(h0 + 0x800, 0);
        assert!(map.contiguous(0x1000, 0x1000).is_some());
        assert_eq!(map.contiguous(0x1800, 0x1000), None);
        assert_eq!(map.translate(0x5000, 1), None);
        assert_eq!(map.translate(0x10_2000, 1), None);
        let (h2, n2) = map.translate(0x10_1ff0, 0x100).unwrap();
        assert_eq!(n2, 0x10);
        assert!(h1 != h2);
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
