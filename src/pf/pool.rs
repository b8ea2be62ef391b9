//! A pool of DMA channels.

use super::PfError;

/// Channels taken and free. Nothing is ever clamped: a request that does not fit fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPool {
    total: u32,
    used: u32,
}

impl ChannelPool {
    pub fn new(total: u32) -> Self {
        ChannelPool { total, used: 0 }
    }

    pub fn total(&self) -> u32 {
        self.total
    }

    pub fn used(&self) -> u32 {
        self.used
    }

    pub fn free(&self) -> u32 {
        self.total - self.used
    }

    /// Takes `n` channels, or says how many are free.
    pub fn take(&mut self, n: u32) -> Result<(), PfError> {
        if n > self.free() {
            return Err(PfError::ChannelsExhausted {
                requested: n,
                free: self.free(),
                total: self.total,
            });
        }
        self.used += n;
        Ok(())
    }

    pub fn give_back(&mut self, n: u32) {
        self.used = self.used.saturating_sub(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_says_how_many_are_free() {
        let mut p = ChannelPool::new(2048);
        p.take(2032).unwrap();
        assert_eq!(p.free(), 16);
        let e = p.take(17).unwrap_err();
        assert_eq!(
            e,
            PfError::ChannelsExhausted {
                requested: 17,
                free: 16,
                total: 2048
            }
        );
        assert!(e.to_string().contains("16 of 2048 free"), "{e}");
        assert_eq!(p.used(), 2032, "a refused request takes nothing");
        p.take(16).unwrap();
        p.give_back(8);
        assert_eq!(p.free(), 8);
    }
}
