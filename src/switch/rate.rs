//! A token bucket in bits, for `max_tx_rate`.

/// Burst allowance: this long at the configured rate (and at least two jumbo frames). It must
/// cover the time a worker may be off the CPU on a busy machine (as Linux's tbf wants a burst
/// of at least one timer tick): the frames that queued meanwhile are judged at once when it
/// runs again, and with a 2 ms bucket a 10-60 ms stall threw away the tokens earned in it
/// (82 Mbit/s delivered of 100 with two busy loops beside the emulator; 99-100 with 20 ms).
const BURST_NS: u64 = 20_000_000;
const MIN_BURST_BITS: u64 = 2 * 9022 * 8;

/// Tokens refill at `rate` Mbit/s up to a small burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    rate_mbps: u32,
    tokens: u64,
    capacity: u64,
    last_ns: u64,
}

impl TokenBucket {
    /// A bucket for `rate_mbps` (0 = unlimited), starting full.
    pub fn new(rate_mbps: u32) -> Self {
        let capacity = (u64::from(rate_mbps) * BURST_NS / 1000).max(MIN_BURST_BITS);
        TokenBucket {
            rate_mbps,
            tokens: capacity,
            capacity,
            last_ns: 0,
        }
    }

    pub fn rate_mbps(&self) -> u32 {
        self.rate_mbps
    }

    /// Takes `bits` at time `now_ns` (monotonic), or returns false without taking any.
    pub fn take(&mut self, bits: u64, now_ns: u64) -> bool {
        if self.rate_mbps == 0 {
            return true;
        }
        let elapsed = now_ns.saturating_sub(self.last_ns);
        // Mbit/s = bits per microsecond.
        let refill = elapsed.saturating_mul(u64::from(self.rate_mbps)) / 1000;
        if refill > 0 {
            self.tokens = (self.tokens + refill).min(self.capacity);
            self.last_ns = now_ns;
        }
        if self.tokens >= bits {
            self.tokens -= bits;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_passes() {
        let mut b = TokenBucket::new(0);
        assert!((0..1000).all(|i| b.take(1_000_000, i)));
    }

    #[test]
    fn long_run_rate_matches() {
        let mut b = TokenBucket::new(100);
        let mut sent = 0u64;
        let mut t = 0u64;
        // Offer 1 Gbit/s of 12,000-bit frames for 5 s.
        while t < 5_000_000_000 {
            if b.take(12_000, t) {
                sent += 12_000;
            }
            t += 12_000;
        }
        let mbps = sent as f64 / 5.0 / 1e6;
        assert!((99.0..=101.5).contains(&mbps), "{mbps}");
    }
}
