//! Flow steering (RFS): exact-match 5-tuple -> RX queue, from explicit rules and from learning.

use super::tuple::FlowTuple;
// hashbrown's seeded foldhash, not SipHash: a rule lookup runs per frame once rules exist.
use hashbrown::HashMap;
use std::num::NonZeroUsize;

/// Default capacity of the learned table (like a Flow Director ATR table).
pub const DEFAULT_LEARNED_CAPACITY: usize = 4096;
/// Most explicit rules per VF.
pub const MAX_RULES: usize = 1024;

/// Why a rule cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    #[error("the flow table already holds {MAX_RULES} rules")]
    Full,
    #[error("no rule for {0}")]
    NoSuchRule(String),
}

/// Where a flow table hit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowSource {
    Rule,
    Learned,
}

/// What `learn` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Learn {
    Updated,
    Inserted,
    /// Inserted, and the least recently used entry was evicted to make room.
    InsertedEvicting,
}

/// Explicit rules: flow -> RX queue.
pub type RuleMap = HashMap<FlowTuple, u16>;

/// The table of one VF.
#[derive(Debug)]
pub struct FlowTable {
    rules: RuleMap,
    learned: lru::LruCache<FlowTuple, u16>,
    evictions: u64,
    learned_inserts: u64,
}

impl FlowTable {
    pub fn new(learned_capacity: usize) -> Self {
        let cap = NonZeroUsize::new(learned_capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        FlowTable {
            rules: HashMap::new(),
            learned: lru::LruCache::new(cap),
            evictions: 0,
            learned_inserts: 0,
        }
    }

    /// Adds or replaces an explicit rule.
    pub fn add_rule(&mut self, flow: FlowTuple, queue: u16) -> Result<(), FlowError> {
        if self.rules.len() >= MAX_RULES && !self.rules.contains_key(&flow) {
            return Err(FlowError::Full);
        }
        self.rules.insert(flow, queue);
        Ok(())
    }

    pub fn del_rule(&mut self, flow: &FlowTuple) -> Result<(), FlowError> {
        self.rules
            .remove(flow)
            .map(|_| ())
            .ok_or_else(|| FlowError::NoSuchRule(flow.to_string()))
    }

    /// Explicit rules, sorted for stable output.
    pub fn rules(&self) -> Vec<(FlowTuple, u16)> {
        let mut v: Vec<_> = self.rules.iter().map(|(f, q)| (*f, *q)).collect();
        v.sort_by_key(|(f, _)| (f.family, f.proto, f.src, f.dst, f.sport, f.dport));
        v
    }

    /// Learns that `flow` belongs on `queue` (the reverse of a flow the VF sent on TX queue
    /// `queue`). The least recently used entry is evicted when the table is full.
    pub fn learn(&mut self, flow: FlowTuple, queue: u16) -> Learn {
        if let Some(q) = self.learned.get_mut(&flow) {
            *q = queue;
            return Learn::Updated;
        }
        self.learned_inserts += 1;
        if self.learned.push(flow, queue).is_some() {
            self.evictions += 1;
            return Learn::InsertedEvicting;
        }
        Learn::Inserted
    }

    /// Looks a flow up (rules first), refreshing a learned entry's recency.
    pub fn lookup(&mut self, flow: &FlowTuple) -> Option<(u16, FlowSource)> {
        // The common case on the data path: no rules, no learning; skip hashing the tuple.
        if self.rules.is_empty() && self.learned.is_empty() {
            return None;
        }
        if let Some(q) = self.rules.get(flow) {
            return Some((*q, FlowSource::Rule));
        }
        if self.learned.is_empty() {
            return None;
        }
        self.learned.get(flow).map(|q| (*q, FlowSource::Learned))
    }

    /// Looks a flow up without touching recency.
    pub fn peek(&self, flow: &FlowTuple) -> Option<(u16, FlowSource)> {
        if let Some(q) = self.rules.get(flow) {
            return Some((*q, FlowSource::Rule));
        }
        self.learned.peek(flow).map(|q| (*q, FlowSource::Learned))
    }

    /// The rules as a map (for `SteeringSnapshot`).
    pub fn rule_map(&self) -> &RuleMap {
        &self.rules
    }

    pub fn learned_len(&self) -> usize {
        self.learned.len()
    }

    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn learned_inserts(&self) -> u64 {
        self.learned_inserts
    }

    pub fn clear_learned(&mut self) {
        self.learned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(i: u16) -> FlowTuple {
        FlowTuple::v4(6, [198, 18, 0, 1], [198, 18, 0, 2], i, 80)
    }

    #[test]
    fn rules_win_over_learned_entries() {
        let mut t = FlowTable::new(8);
        t.learn(flow(1), 3);
        assert_eq!(t.lookup(&flow(1)), Some((3, FlowSource::Learned)));
        t.add_rule(flow(1), 5).unwrap();
        assert_eq!(t.lookup(&flow(1)), Some((5, FlowSource::Rule)));
        t.del_rule(&flow(1)).unwrap();
        assert_eq!(t.lookup(&flow(1)), Some((3, FlowSource::Learned)));
        assert!(t.del_rule(&flow(1)).is_err());
    }

    #[test]
    fn learned_entries_are_bounded_with_lru_eviction() {
        let mut t = FlowTable::new(4);
        for i in 0..4 {
            t.learn(flow(i), 0);
        }
        t.lookup(&flow(0)); // flow 0 becomes most recent: flow 1 is evicted next
        t.learn(flow(10), 1);
        assert_eq!(t.learned_len(), 4);
        assert_eq!(t.evictions(), 1);
        assert!(t.peek(&flow(1)).is_none());
        assert!(t.peek(&flow(0)).is_some());
        t.learn(flow(10), 2); // an update is not an insert
        assert_eq!((t.learned_inserts(), t.evictions()), (5, 1));
        assert_eq!(t.peek(&flow(10)), Some((2, FlowSource::Learned)));
    }

    #[test]
    fn rule_count_is_bounded() {
        let mut t = FlowTable::new(4);
        for i in 0..MAX_RULES as u16 {
            t.add_rule(flow(i), 0).unwrap();
        }
        assert_eq!(t.add_rule(flow(60000), 0), Err(FlowError::Full));
        t.add_rule(flow(0), 1).unwrap(); // replacing is fine
    }
}
