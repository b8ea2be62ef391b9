//! Frame faults on the frames a port sends into the switch: drop, delay, duplicate or corrupt
//! a share of them. Which frames is decided from the seed and the frame's number since the
//! fault was set (not from a clock or a thread), so the same seed picks the same frames again
//! for the same traffic. Delayed frames and duplicates wait in a bounded line, as copies, and
//! are sent from the port when due.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Most frames a port's delay line holds; a frame picked beyond it is sent at once.
pub const MAX_HELD: usize = 1024;

/// The frame faults, in the order they are decided: a dropped frame is not delayed, a
/// delayed one not duplicated; duplicate and corrupt may both hit one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Drop = 0,
    Delay = 1,
    Duplicate = 2,
    Corrupt = 3,
}

const KINDS: [FrameKind; 4] = [
    FrameKind::Drop,
    FrameKind::Delay,
    FrameKind::Duplicate,
    FrameKind::Corrupt,
];

impl FrameKind {
    fn name(self) -> &'static str {
        ["drop", "delay", "duplicate", "corrupt"][self as usize]
    }
}

/// One frame fault: its kind, the share of frames (parts per million), the seed, and for a
/// delay how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFault {
    pub kind: FrameKind,
    pub ppm: u32,
    pub seed: u64,
    pub delay_ns: u64,
}

/// What happens to one frame.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    pub drop: bool,
    /// Send it this much later instead of now.
    pub delay_ns: Option<u64>,
    pub duplicate: bool,
    /// Flip a bit: (a random number for `corrupt_offset`, the bit's mask).
    pub corrupt: Option<(u64, u8)>,
}

/// A frame waiting in the delay line.
#[derive(Debug)]
pub struct Held {
    /// When to send it (ns, `switch::now_ns`).
    pub due: u64,
    pub frame: Vec<u8>,
}

/// The delay line, shared by every version of a port's frame faults (held frames outlive a
/// change), with the buffers of frames already sent kept for reuse.
#[derive(Debug, Default)]
struct Line {
    held: VecDeque<Held>,
    spare: Vec<Vec<u8>>,
}

/// A port's frame faults.
#[derive(Debug, Default)]
pub struct FrameFaults {
    faults: [Option<FrameFault>; 4],
    /// Frames decided since the faults were set: the frame number of the choice.
    seq: AtomicU64,
    line: Arc<Mutex<Line>>,
}

/// splitmix64: a well-mixed 64-bit hash of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// First byte a corruption may hit: after the Ethernet header and one VLAN tag, so the frame
/// still goes where it was going and its receiver's checksums catch it.
const CORRUPT_FROM: usize = 18;

/// The byte a corruption drawn as `r` hits in a frame of which `len` bytes can be changed;
/// `None` if none is past the headers.
pub fn corrupt_offset(r: u64, len: usize) -> Option<usize> {
    let span = len.checked_sub(CORRUPT_FROM).filter(|s| *s > 0)?;
    Some(CORRUPT_FROM + (r % span as u64) as usize)
}

impl FrameFaults {
    /// These faults with `f` added (replacing one of its kind), the same line, numbering anew.
    pub fn with(&self, f: FrameFault) -> FrameFaults {
        let mut faults = self.faults;
        faults[f.kind as usize] = Some(f);
        FrameFaults {
            faults,
            seq: AtomicU64::new(0),
            line: self.line.clone(),
        }
    }

    /// These faults without `kind`.
    pub fn without(&self, kind: FrameKind) -> FrameFaults {
        let mut faults = self.faults;
        faults[kind as usize] = None;
        FrameFaults {
            faults,
            seq: AtomicU64::new(0),
            line: self.line.clone(),
        }
    }

    /// No fault, the line kept (its frames are still sent).
    pub fn none(&self) -> FrameFaults {
        FrameFaults {
            faults: [None; 4],
            seq: AtomicU64::new(0),
            line: self.line.clone(),
        }
    }

    /// Whether a fault is set (or only held frames remain).
    pub fn is_active(&self) -> bool {
        self.faults.iter().any(Option::is_some)
    }

    /// Numbers for `n` frames in a row: the first one's.
    pub fn number(&self, n: usize) -> u64 {
        self.seq.fetch_add(n as u64, Ordering::Relaxed)
    }

    /// What happens to frame number `k`.
    pub fn decide(&self, k: u64) -> Verdict {
        let mut v = Verdict::default();
        for kind in KINDS {
            let Some(f) = self.faults[kind as usize] else {
                continue;
            };
            let h = mix(f.seed ^ mix(k ^ ((kind as u64) << 56)));
            if h % 1_000_000 >= u64::from(f.ppm) {
                continue;
            }
            match kind {
                FrameKind::Drop => {
                    v.drop = true;
                    return v;
                }
                FrameKind::Delay => {
                    v.delay_ns = Some(f.delay_ns);
                    return v;
                }
                FrameKind::Duplicate => v.duplicate = true,
                FrameKind::Corrupt => {
                    let r = mix(h);
                    v.corrupt = Some((r >> 8, 1 << (r & 7)));
                }
            }
        }
        v
    }

    /// Holds a copy of a frame, written by `fill` into a buffer of `len` bytes, until `due`.
    /// False (nothing held) when the line is full or `fill` fails.
    pub fn hold(&self, due: u64, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> bool {
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        if line.held.len() >= MAX_HELD {
            return false;
        }
        let mut buf = line.spare.pop().unwrap_or_default();
        buf.resize(len, 0);
        if !fill(&mut buf) {
            line.spare.push(buf);
            return false;
        }
        line.held.push_back(Held { due, frame: buf });
        true
    }

    /// Moves up to `max` frames due at `now` into `out`, in the order they were held.
    pub fn take_due(&self, now: u64, max: usize, out: &mut Vec<Held>) {
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        let mut i = 0;
        while i < line.held.len() && out.len() < max {
            if line.held[i].due <= now {
                if let Some(h) = line.held.remove(i) {
                    out.push(h);
                }
            } else {
                i += 1;
            }
        }
    }

    /// Puts frames taken but not sent back at the front of the line, due at once.
    pub fn put_back(&self, frames: impl DoubleEndedIterator<Item = Held>) {
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        for h in frames.rev() {
            line.held.push_front(h);
        }
    }

    /// Keeps a sent frame's buffer for the next frame held.
    pub fn recycle(&self, buf: Vec<u8>) {
        let mut line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        if line.spare.len() < MAX_HELD {
            line.spare.push(buf);
        }
    }

    /// When the next held frame is due.
    pub fn next_due(&self) -> Option<u64> {
        let line = self.line.lock().unwrap_or_else(|e| e.into_inner());
        line.held.iter().map(|h| h.due).min()
    }

    /// Frames held now.
    pub fn held(&self) -> usize {
        self.line
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .held
            .len()
    }

    /// The faults set, for `query-faults`.
    pub fn describe(&self) -> Vec<Value> {
        let held = self.held();
        self.faults
            .iter()
            .flatten()
            .map(|f| {
                let mut v = json!({"fault": f.kind.name(), "share": f64::from(f.ppm) / 1e6,
                                   "seed": f.seed});
                if f.kind == FrameKind::Delay {
                    v["delay-ms"] = json!(f.delay_ns / 1_000_000);
                    v["held"] = json!(held);
                }
                v
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(kind: FrameKind, ppm: u32, seed: u64) -> FrameFaults {
        FrameFaults::default().with(FrameFault {
            kind,
            ppm,
            seed,
            delay_ns: 5,
        })
    }

    #[test]
    fn the_same_seed_picks_the_same_frames_and_the_share_holds() {
        let a = faults(FrameKind::Drop, 100_000, 42);
        let b = faults(FrameKind::Drop, 100_000, 42);
        let c = faults(FrameKind::Drop, 100_000, 43);
        let picks =
            |f: &FrameFaults| -> Vec<u64> { (0..100_000).filter(|&k| f.decide(k).drop).collect() };
        let (pa, pb, pc) = (picks(&a), picks(&b), picks(&c));
        assert_eq!(pa, pb);
        assert_ne!(pa, pc);
        assert!(
            (9_500..10_500).contains(&pa.len()),
            "{} of 100000",
            pa.len()
        );
        assert!(picks(&faults(FrameKind::Drop, 0, 1)).is_empty());
        assert_eq!(picks(&faults(FrameKind::Drop, 1_000_000, 1)).len(), 100_000);
    }

    #[test]
    fn a_dropped_frame_is_not_delayed_and_corruption_stays_past_the_header() {
        let f = faults(FrameKind::Drop, 1_000_000, 1)
            .with(FrameFault {
                kind: FrameKind::Delay,
                ppm: 1_000_000,
                seed: 1,
                delay_ns: 5,
            })
            .with(FrameFault {
                kind: FrameKind::Corrupt,
                ppm: 1_000_000,
                seed: 1,
                delay_ns: 0,
            });
        assert_eq!(
            f.decide(3),
            Verdict {
                drop: true,
                ..Verdict::default()
            }
        );
        let g = f.without(FrameKind::Drop).without(FrameKind::Delay);
        for k in 0..1000 {
            let (r, mask) = g.decide(k).corrupt.unwrap();
            let at = corrupt_offset(r, 60).unwrap();
            assert!((CORRUPT_FROM..60).contains(&at));
            assert_eq!(mask.count_ones(), 1);
        }
        assert_eq!(corrupt_offset(5, CORRUPT_FROM), None);
    }

    #[test]
    fn the_delay_line_is_bounded_and_gives_frames_back_when_due() {
        let f = faults(FrameKind::Delay, 1_000_000, 0);
        for i in 0..MAX_HELD {
            assert!(f.hold(100 + i as u64 % 2, 3, |b| {
                b.copy_from_slice(&[i as u8; 3]);
                true
            }));
        }
        assert!(!f.hold(100, 3, |_| true), "held past the limit");
        assert_eq!(f.next_due(), Some(100));
        let mut out = Vec::new();
        f.take_due(99, 64, &mut out);
        assert!(out.is_empty());
        f.take_due(100, 64, &mut out);
        assert_eq!(out.len(), 64);
        assert!(out.iter().all(|h| h.due == 100));
        assert_eq!(out[1].frame, vec![2u8; 3]);
        // A change of faults keeps the line.
        let g = f.without(FrameKind::Delay);
        g.put_back(out.drain(..));
        assert_eq!(g.held(), MAX_HELD);
        assert!(!g.is_active());
    }
}
