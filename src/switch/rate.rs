//! Token buckets in bits for the TX schedulers: a VF's `max_tx_rate`, its guaranteed share of
//! the wire (`min_tx_rate`), the uplink's line rate.
//!
//! They shape, as a NIC's TX scheduler does, rather than police: a queue may send while its
//! bucket is not in debt, and what it sends is charged even past zero; a queue in debt waits
//! (its frames stay in the guest's ring, which fills, and the guest's driver stops the queue)
//! until the debt is repaid at the configured rate. Nothing is dropped for a rate, and over
//! any long interval exactly the rate goes through.

/// Burst allowance: this long at the configured rate (and at least two jumbo frames). It must
/// cover the time a worker may be off the CPU on a busy machine (as Linux's tbf wants a burst
/// of at least one timer tick): the tokens of a longer stall are lost.
const BURST_NS: u64 = 20_000_000;
const MIN_BURST_BITS: i64 = 2 * 9022 * 8;

/// Tokens refill at `rate` Mbit/s up to a small burst; a charge may take them below zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    rate_mbps: u32,
    tokens: i64,
    capacity: i64,
    last_ns: u64,
}

impl TokenBucket {
    /// A bucket for `rate_mbps` (0 = unlimited), starting full.
    pub fn new(rate_mbps: u32) -> Self {
        let capacity = i64::try_from(u64::from(rate_mbps) * BURST_NS / 1000)
            .unwrap_or(i64::MAX)
            .max(MIN_BURST_BITS);
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

    pub fn is_unlimited(&self) -> bool {
        self.rate_mbps == 0
    }

    /// Adds the tokens earned since the last refill (`now_ns` is monotonic, on one clock for
    /// every thread that uses the bucket).
    #[inline]
    pub fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.last_ns);
        // Mbit/s = bits per microsecond.
        let earned = elapsed.saturating_mul(u64::from(self.rate_mbps)) / 1000;
        if earned > 0 {
            let earned = i64::try_from(earned).unwrap_or(i64::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.capacity);
            // Time for the tokens credited only, so no fraction of a bit is lost.
            self.last_ns += u64::try_from(earned).unwrap_or(0) * 1000 / u64::from(self.rate_mbps);
            if self.tokens == self.capacity {
                self.last_ns = now_ns;
            }
        }
    }

    /// Whether the bucket may send now (not in debt). Refill first.
    #[inline]
    pub fn may_send(&self) -> bool {
        self.rate_mbps == 0 || self.tokens >= 0
    }

    /// Whether tokens are left above zero (a guaranteed share not yet used up).
    #[inline]
    pub fn has_credit(&self) -> bool {
        self.rate_mbps != 0 && self.tokens > 0
    }

    /// Charges `bits` sent, even past zero.
    #[inline]
    pub fn charge(&mut self, bits: u64) {
        if self.rate_mbps != 0 {
            self.tokens = self
                .tokens
                .saturating_sub(i64::try_from(bits).unwrap_or(i64::MAX));
        }
    }

    /// Gives back `bits` charged for frames that were not sent after all (held back further
    /// on, to be charged again when they go).
    #[inline]
    pub fn refund(&mut self, bits: u64) {
        if self.rate_mbps != 0 {
            let bits = i64::try_from(bits).unwrap_or(i64::MAX);
            self.tokens = self.tokens.saturating_add(bits).min(self.capacity);
        }
    }

    /// When (on the refill clock) the bucket has tokens above zero again; `now_ns` if it has.
    pub fn ready_at(&self, now_ns: u64) -> u64 {
        if self.rate_mbps == 0 || self.tokens > 0 {
            return now_ns;
        }
        let missing = u64::try_from(1 - self.tokens).unwrap_or(u64::MAX);
        let ns = missing
            .saturating_mul(1000)
            .div_ceil(u64::from(self.rate_mbps));
        self.last_ns
            .max(now_ns.min(self.last_ns))
            .saturating_add(ns)
            .max(now_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_always_sends() {
        let mut b = TokenBucket::new(0);
        for i in 0..1000 {
            b.refill(i);
            assert!(b.may_send());
            b.charge(1_000_000);
        }
        assert_eq!(b.ready_at(5), 5);
    }

    /// A sender that sends a 12,000-bit frame whenever the bucket lets it, and waits until
    /// `ready_at` otherwise, gets exactly the rate over a long run.
    #[test]
    fn a_shaped_sender_gets_the_rate() {
        for (rate, bits) in [(100u32, 12_000u64), (200, 512), (1000, 12_144), (7, 512)] {
            let mut b = TokenBucket::new(rate);
            let (mut sent, mut t) = (0u64, 0u64);
            let end = 5_000_000_000u64;
            b.refill(0);
            let burst = b.tokens as u64;
            while t < end {
                b.refill(t);
                if b.may_send() {
                    b.charge(bits);
                    sent += bits;
                    t += 100; // the next frame is ready 100 ns later
                } else {
                    t = b.ready_at(t).max(t + 1);
                }
            }
            let mbps = (sent - burst) as f64 / 5.0 / 1e6;
            let want = f64::from(rate);
            assert!(
                (mbps - want).abs() <= want * 0.005 + bits as f64 / 5e6,
                "{rate} Mbit/s with {bits}-bit frames: {mbps}"
            );
        }
    }

    #[test]
    fn debt_is_repaid_before_the_next_send() {
        let mut b = TokenBucket::new(100);
        b.refill(0);
        let cap = b.tokens as u64;
        b.charge(cap + 100_000); // 1 ms of debt at 100 Mbit/s
        assert!(!b.may_send());
        let at = b.ready_at(0);
        assert!((1_000_000..=1_000_020).contains(&at), "{at}");
        b.refill(at - 20);
        assert!(!b.has_credit());
        b.refill(at);
        assert!(b.may_send() && b.has_credit());
    }

    #[test]
    fn a_refund_gives_back_what_was_charged() {
        let mut b = TokenBucket::new(100);
        b.refill(0);
        let full = b.tokens;
        b.charge(1000);
        b.refund(1000);
        assert_eq!(b.tokens, full);
        b.refund(1000);
        assert_eq!(b.tokens, full, "never above the burst");
    }

    #[test]
    fn a_stall_earns_at_most_the_burst() {
        let mut b = TokenBucket::new(100);
        b.refill(0);
        b.charge(b.tokens as u64);
        b.refill(1_000_000_000);
        assert_eq!(b.tokens, b.capacity, "1 s idle: capped at 20 ms");
        assert_eq!(b.capacity, 2_000_000);
    }
}
