//! Dirty-page logging for live migration (vhost-user `VHOST_F_LOG_ALL` with the `LOG_SHMFD`
//! protocol feature).
//!
//! While QEMU migrates a guest it copies guest memory in rounds and needs to know which pages
//! changed since it last looked. Pages the guest's vCPUs write QEMU tracks itself; pages this
//! back-end writes (received frames, used-ring entries and indices, notification fields) it
//! learns from a shared bitmap QEMU hands over with `SET_LOG_BASE`: one bit per 4 KiB page of
//! guest-physical memory, bit `page % 8` of byte `page / 8`, set with an atomic OR (QEMU takes
//! and clears the bitmap in 64-bit words at the same time).
//!
//! Logging costs nothing while it is off: the data plane looks at [`LogSwitch::epoch`] once
//! per batch (one atomic load, under the vring lock it takes anyway) and keeps the log it found
//! in a plain `Option`; a write with no log is a branch on that `Option`. See
//! `vf/io.rs` for where the writes are marked and `vf/port.rs` for how a change waits until no
//! batch uses the previous log.

use super::guest_map::GuestMap;
use super::segments::Segment;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Bytes of guest memory per bit of the log.
pub const LOG_PAGE: u64 = 4096;
/// Largest log accepted: 1 GiB of bitmap covers 32 TiB of guest memory.
pub const LOG_MAX_BYTES: u64 = 1 << 30;

/// Why a log from the frontend was refused.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("dirty log of {size} bytes is not in 1..={LOG_MAX_BYTES}")]
    Size { size: u64 },
    #[error("dirty log offset {offset} is not page-aligned")]
    Offset { offset: u64 },
    #[error("dirty log of {size} bytes at offset {offset} runs past the end of its file ({file_len} bytes)")]
    PastEnd {
        size: u64,
        offset: u64,
        file_len: u64,
    },
    #[error("cannot read the dirty log file's size")]
    Stat(#[source] io::Error),
    #[error("cannot map the dirty log ({size} bytes at offset {offset})")]
    Map {
        size: u64,
        offset: u64,
        #[source]
        source: io::Error,
    },
}

/// The frontend's dirty bitmap, mapped shared into this process.
pub struct LogArea {
    base: NonNull<AtomicU8>,
    len: usize,
}

// SAFETY: the mapping is shared memory that lives until `Drop`; every access to it goes
// through `AtomicU8`, so any number of threads may mark pages at once.
unsafe impl Send for LogArea {}
// SAFETY: as above.
unsafe impl Sync for LogArea {}

impl LogArea {
    /// Maps `size` bytes of `file` from `offset` (the `VhostUserLog` of `SET_LOG_BASE`).
    pub fn map(file: &File, offset: u64, size: u64) -> Result<Self, LogError> {
        if size == 0 || size > LOG_MAX_BYTES {
            return Err(LogError::Size { size });
        }
        if !offset.is_multiple_of(LOG_PAGE) {
            return Err(LogError::Offset { offset });
        }
        // A shared mapping past the end of a file maps without complaint, and the first
        // mark there would be SIGBUS, killing the process: refuse a log its file cannot hold.
        // (Pipes and sockets are left to mmap, which refuses them.)
        let meta = file.metadata().map_err(LogError::Stat)?;
        if meta.file_type().is_file() && offset.saturating_add(size) > meta.len() {
            return Err(LogError::PastEnd {
                size,
                offset,
                file_len: meta.len(),
            });
        }
        let len = usize::try_from(size).map_err(|_| LogError::Size { size })?;
        let off = libc::off_t::try_from(offset).map_err(|_| LogError::Offset { offset })?;
        // SAFETY: a fresh shared mapping of an fd we hold; the kernel checks the range. Nothing
        // else refers to the address it returns.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(LogError::Map {
                size,
                offset,
                source: io::Error::last_os_error(),
            });
        }
        let base = NonNull::new(p.cast()).ok_or(LogError::Size { size })?;
        Ok(LogArea { base, len })
    }

    /// Bytes of bitmap: pages `0..8 * len()` of guest memory are covered.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Marks the pages of guest-physical `[gpa, gpa + len)` dirty. Pages past the end of the
    /// log are not marked (QEMU sizes the log to the top of guest memory, so a write there
    /// would not be to guest RAM).
    pub fn mark(&self, gpa: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = gpa / LOG_PAGE;
        let last = gpa.saturating_add(len - 1) / LOG_PAGE;
        // Make the data the bits stand for visible before the bits (QEMU reads the bits, then
        // the pages).
        std::sync::atomic::fence(Ordering::Release);
        let mut page = first;
        while page <= last {
            let Ok(byte) = usize::try_from(page / 8) else {
                return;
            };
            if byte >= self.len {
                return;
            }
            // Whole bytes at a time where a range covers them.
            let bits_here = (8 - page % 8).min(last - page + 1);
            let mask = (((1u16 << bits_here) - 1) << (page % 8)) as u8;
            // SAFETY: `byte < len`, inside the mapping, which lives as long as `self`.
            unsafe { (*self.base.as_ptr().add(byte)).fetch_or(mask, Ordering::Relaxed) };
            page += bits_here;
        }
    }

    /// Clears every bit, as QEMU does when it takes the log for a round.
    pub fn clear(&self) {
        for i in 0..self.len {
            // SAFETY: `i < len`, inside the mapping, which lives as long as `self`.
            unsafe { (*self.base.as_ptr().add(i)).store(0, Ordering::Relaxed) };
        }
    }

    /// Whether the page holding `gpa` is marked (for tests and checks).
    pub fn is_dirty(&self, gpa: u64) -> bool {
        let page = gpa / LOG_PAGE;
        let Ok(byte) = usize::try_from(page / 8) else {
            return false;
        };
        if byte >= self.len {
            return false;
        }
        // SAFETY: as in `mark`.
        let b = unsafe { (*self.base.as_ptr().add(byte)).load(Ordering::Relaxed) };
        b & (1 << (page % 8)) != 0
    }
}

impl Drop for LogArea {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once; no reference into it outlives
        // `self` (`mark` and `is_dirty` borrow `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl std::fmt::Debug for LogArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogArea").field("len", &self.len).finish()
    }
}

/// Marks the guest pages under `segs` (host addresses `map` gave) in `log`.
pub fn mark_segments(log: &LogArea, map: &GuestMap, segs: &[Segment]) {
    for s in segs {
        if let Some(gpa) = map.gpa_of(s.host) {
            log.mark(gpa, u64::from(s.len));
        }
    }
}

/// Whether one connection logs, and into which area: set by the vhost-user handler
/// (`SET_LOG_BASE`, `SET_FEATURES` with or without `VHOST_F_LOG_ALL`), read by the data plane.
#[derive(Debug, Default)]
pub struct LogSwitch {
    /// Changes with every change of `state`; the data plane compares it once per batch.
    epoch: AtomicU64,
    state: Mutex<LogState>,
}

#[derive(Debug, Default)]
struct LogState {
    /// The area of the last SET_LOG_BASE.
    area: Option<Arc<LogArea>>,
    /// VHOST_F_LOG_ALL is acked.
    on: bool,
}

impl LogSwitch {
    /// The current epoch: a data-plane copy of [`active`](Self::active) is current while the
    /// epoch it was taken at is.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The log to mark now (`None` while logging is off) and the epoch it belongs to.
    pub fn active(&self) -> (Option<Arc<LogArea>>, u64) {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let log = if st.on { st.area.clone() } else { None };
        (log, self.epoch.load(Ordering::Acquire))
    }

    /// A new area from SET_LOG_BASE (replacing the previous one).
    pub fn set_area(&self, area: LogArea) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.area = Some(Arc::new(area));
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// VHOST_F_LOG_ALL acked (`true`) or not. Returns whether this changed anything.
    pub fn set_on(&self, on: bool) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.on == on {
            return false;
        }
        st.on = on;
        self.epoch.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// A data-plane worker's copy of one connection's log, refreshed when the epoch moves.
#[derive(Debug, Default)]
pub struct LogView {
    log: Option<Arc<LogArea>>,
    epoch: u64,
}

impl LogView {
    /// Brings the copy up to date with `switch` (one atomic load when nothing changed). Call
    /// it under the vring lock, before the writes of a batch: a change that waits for the lock
    /// (`Connection::quiesce`) then knows no batch marks the previous log after it.
    #[inline]
    pub fn sync(&mut self, switch: &LogSwitch) {
        if switch.epoch() != self.epoch {
            (self.log, self.epoch) = switch.active();
        }
    }

    /// The log to mark, while logging is on.
    #[inline]
    pub fn get(&self) -> Option<&LogArea> {
        self.log.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn memfd(len: usize) -> File {
        // SAFETY: a C string literal; memfd_create returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"dirty-log-test".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd we own.
        let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(&vec![0u8; len]).unwrap();
        f
    }

    #[test]
    fn marks_every_page_of_a_range_and_nothing_else() {
        let f = memfd(4096);
        let log = LogArea::map(&f, 0, 64).unwrap();
        // One byte in page 3; a range from the last byte of page 7 to the first of page 18
        // (crossing two byte boundaries of the bitmap).
        log.mark(3 * LOG_PAGE + 100, 1);
        log.mark(7 * LOG_PAGE + 4095, 10 * LOG_PAGE + 2);
        for page in 0..64 * 8 {
            let want = page == 3 || (7..=18).contains(&page);
            assert_eq!(log.is_dirty(page * LOG_PAGE), want, "page {page}");
        }
        // The bytes as QEMU reads them: bit page%8 of byte page/8.
        let mut raw = [0u8; 3];
        // SAFETY: reading our own mapping's first bytes.
        unsafe { ptr::copy_nonoverlapping(log.base.as_ptr().cast::<u8>(), raw.as_mut_ptr(), 3) };
        assert_eq!(raw, [0b1000_1000, 0xff, 0b0000_0111]);
    }

    #[test]
    fn writes_past_the_log_and_empty_ranges_mark_nothing() {
        let f = memfd(4096);
        let log = LogArea::map(&f, 0, 1).unwrap(); // pages 0..8
        log.mark(6 * LOG_PAGE, 100 * LOG_PAGE);
        log.mark(0, 0);
        log.mark(u64::MAX - 10, 100);
        assert!(!log.is_dirty(0));
        assert!(log.is_dirty(6 * LOG_PAGE) && log.is_dirty(7 * LOG_PAGE));
        assert!(!log.is_dirty(8 * LOG_PAGE));
    }

    #[test]
    fn bad_sizes_and_offsets_are_refused() {
        let f = memfd(8192);
        assert!(matches!(LogArea::map(&f, 0, 0), Err(LogError::Size { .. })));
        assert!(matches!(
            LogArea::map(&f, 0, LOG_MAX_BYTES + 1),
            Err(LogError::Size { .. })
        ));
        assert!(matches!(
            LogArea::map(&f, 100, 8),
            Err(LogError::Offset { .. })
        ));
        let log = LogArea::map(&f, 4096, 4096).unwrap();
        assert_eq!(log.len(), 4096);
        // Past the end of the file: the first mark there would be SIGBUS.
        assert!(matches!(
            LogArea::map(&f, 4096, 8192),
            Err(LogError::PastEnd { file_len: 8192, .. })
        ));
        assert!(matches!(
            LogArea::map(&memfd(0), 0, 8),
            Err(LogError::PastEnd { .. })
        ));
    }

    #[test]
    fn a_view_follows_the_switch() {
        let sw = LogSwitch::default();
        let mut v = LogView::default();
        v.sync(&sw);
        assert!(v.get().is_none());
        sw.set_area(LogArea::map(&memfd(4096), 0, 8).unwrap());
        v.sync(&sw);
        assert!(
            v.get().is_none(),
            "an area without LOG_ALL is not logged to"
        );
        assert!(sw.set_on(true));
        assert!(!sw.set_on(true));
        v.sync(&sw);
        assert!(v.get().is_some());
        sw.set_on(false);
        v.sync(&sw);
        assert!(v.get().is_none());
    }
}
