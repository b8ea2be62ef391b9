//! RSS and flow steering per VF. No guest memory here: decisions on a parsed `FlowTuple`.
//!
//! - `toeplitz.rs`: the Microsoft RSS Toeplitz hash (40-byte key), table-driven.
//! - `tuple.rs`: the hash input of a frame (IPv4/IPv6, TCP/UDP ports, VLAN-aware).
//! - `flow_table.rs`: exact-match flow steering: explicit rules and learned entries (LRU).
//! - this file: `VfRss`, one VF's key, 128-entry indirection table and flow table, and the
//!   queue decision ("where would this packet go") shared by the data path and `explain`.

mod flow_table;
mod toeplitz;
mod tuple;

pub use flow_table::{
    FlowError, FlowSource, FlowTable, Learn, DEFAULT_LEARNED_CAPACITY, MAX_RULES,
};
pub use toeplitz::{
    toeplitz_reference, KeyParseError, RssKey, ToeplitzTable, DEFAULT_KEY, KEY_LEN, MAX_INPUT,
};
pub use tuple::{FlowTuple, IPPROTO_TCP, IPPROTO_UDP};

use std::fmt;
use std::sync::Arc;

/// Entries in the indirection table.
pub const TABLE_SIZE: usize = 128;
/// Most queues a port has (the enabled set is a u64 mask).
pub const MAX_QUEUES: usize = 64;

/// The RX queues a guest has enabled, in queue order.
#[derive(Debug, Clone, Copy)]
pub struct EnabledQueues {
    list: [u8; MAX_QUEUES],
    n: usize,
    mask: u64,
    /// The default indirection table over these queues: entry i is `list[i % n]`
    /// (precomputed: a division per frame costs more than the rest of the lookup).
    spread: [u8; TABLE_SIZE],
}

impl EnabledQueues {
    pub const NONE: EnabledQueues = EnabledQueues {
        list: [0; MAX_QUEUES],
        n: 0,
        mask: 0,
        spread: [0; TABLE_SIZE],
    };

    pub fn from_mask(mask: u64) -> Self {
        let mut e = EnabledQueues { mask, ..Self::NONE };
        for q in 0..MAX_QUEUES {
            if mask & (1 << q) != 0 {
                e.list[e.n] = q as u8;
                e.n += 1;
            }
        }
        if e.n > 0 {
            for (i, s) in e.spread.iter_mut().enumerate() {
                *s = e.list[i % e.n];
            }
        }
        e
    }

    /// The first `n` queues (a Linux guest enables min(pairs, vCPUs) from 0).
    pub fn first(n: usize) -> Self {
        Self::from_mask(if n >= 64 { u64::MAX } else { (1u64 << n) - 1 })
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    pub fn contains(&self, q: u16) -> bool {
        q < 64 && self.mask & (1 << q) != 0
    }

    pub fn mask(&self) -> u64 {
        self.mask
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.list[..self.n]
    }

    /// `q` if enabled, else a deterministic enabled stand-in.
    #[inline]
    fn or_fallback(&self, q: u16) -> (u16, bool) {
        if self.contains(q) || self.n == 0 {
            (q, false)
        } else {
            (u16::from(self.list[usize::from(q) % self.n]), true)
        }
    }
}

/// What chose the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// An explicit flow steering rule.
    FlowRule,
    /// A flow learned from the VF's own transmit queue.
    FlowLearned,
    /// The RSS hash and the indirection table.
    Rss,
    /// Not IP: queue 0.
    NonIp,
}

impl fmt::Display for Steering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Steering::FlowRule => "flow-rule",
            Steering::FlowLearned => "flow-learned",
            Steering::Rss => "rss",
            Steering::NonIp => "non-ip",
        })
    }
}

/// The answer to "where would this packet go".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub tuple: FlowTuple,
    /// The Toeplitz hash (IP frames).
    pub hash: Option<u32>,
    /// Indirection table index (`hash % 128`).
    pub index: Option<usize>,
    /// The queue the rule or table named, before falling back from a disabled queue.
    pub wanted: u16,
    /// The RX queue the frame is delivered to.
    pub queue: u16,
    pub by: Steering,
    /// The wanted queue is disabled: a deterministic enabled queue stands in.
    pub fell_back: bool,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: queue {} by {}", self.tuple, self.queue, self.by)?;
        if let (Some(h), Some(i)) = (self.hash, self.index) {
            write!(f, " (hash {h:#010x}, table index {i})")?;
        }
        if self.fell_back {
            write!(f, " (queue {} is disabled)", self.wanted)?;
        }
        Ok(())
    }
}

/// Why an RSS or flow setting is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RssError {
    #[error("queue {queue} does not exist: the VF has {queue_pairs} queues (0..{queue_pairs})")]
    QueueOutOfRange { queue: u16, queue_pairs: u16 },
    #[error("an indirection table has 1..={TABLE_SIZE} entries (repeated to fill {TABLE_SIZE}), got {0}")]
    TableLen(usize),
    #[error("a flow rule needs an IP flow, got {0}")]
    NotIp(String),
    #[error(transparent)]
    Flow(#[from] FlowError),
}

/// One VF's RSS configuration and flow table.
#[derive(Debug)]
pub struct VfRss {
    toeplitz: Arc<ToeplitzTable>,
    /// A table set by the user (queue numbers); `None` = the default spread.
    user_table: Option<Box<[u16; TABLE_SIZE]>>,
    queue_pairs: u16,
    /// Learn flows from the TX queue (accelerated RFS / Flow Director ATR). Off by default,
    /// like ntuple/aRFS: a guest whose interrupts all land on one CPU transmits every reply on
    /// one queue, and learning would then pull every flow onto that queue.
    learning: bool,
    flows: FlowTable,
}

impl VfRss {
    pub fn new(queue_pairs: u16) -> Self {
        VfRss {
            toeplitz: ToeplitzTable::default_shared(),
            user_table: None,
            queue_pairs,
            learning: false,
            flows: FlowTable::new(DEFAULT_LEARNED_CAPACITY),
        }
    }

    pub fn key(&self) -> RssKey {
        *self.toeplitz.key()
    }

    /// A copy of what steering reads, when nothing in it changes on the data path (learning
    /// off): the data path then steers with `SteeringSnapshot::steer` on its own copy, without
    /// this lock, and takes a new snapshot when the control plane changes the configuration.
    pub fn snapshot(&self) -> Option<SteeringSnapshot> {
        (!self.learning && self.flows.learned_len() == 0).then(|| SteeringSnapshot {
            toeplitz: self.toeplitz.clone(),
            user_table: self.user_table.clone(),
            rules: self.flows.rule_map().clone(),
        })
    }

    pub fn set_key(&mut self, key: RssKey) {
        self.toeplitz = if key == DEFAULT_KEY {
            ToeplitzTable::default_shared()
        } else {
            Arc::new(ToeplitzTable::new(key))
        };
    }

    /// Sets the indirection table from 1..=128 queue numbers (repeated to fill 128), or back
    /// to the default spread with `None`. Nothing changes on error.
    pub fn set_table(&mut self, entries: Option<&[u16]>) -> Result<(), RssError> {
        let Some(entries) = entries else {
            self.user_table = None;
            return Ok(());
        };
        if entries.is_empty() || entries.len() > TABLE_SIZE {
            return Err(RssError::TableLen(entries.len()));
        }
        if let Some(&queue) = entries.iter().find(|q| **q >= self.queue_pairs) {
            return Err(RssError::QueueOutOfRange {
                queue,
                queue_pairs: self.queue_pairs,
            });
        }
        self.user_table = Some(Box::new(std::array::from_fn(|i| {
            entries[i % entries.len()]
        })));
        Ok(())
    }

    /// Takes over `old`'s key, learning switch, and the table and rules that still fit this
    /// VF's queues (after a channel count change).
    pub fn inherit(&mut self, old: &VfRss) {
        self.toeplitz = old.toeplitz.clone();
        self.learning = old.learning;
        if let Some(t) = &old.user_table {
            if t.iter().all(|q| *q < self.queue_pairs) {
                self.user_table = Some(t.clone());
            }
        }
        for (flow, q) in old.flows.rules() {
            if q < self.queue_pairs {
                let _ = self.flows.add_rule(flow, q);
            }
        }
    }

    pub fn has_user_table(&self) -> bool {
        self.user_table.is_some()
    }

    /// The table in effect for the enabled queues: entry i is the queue it delivers to.
    pub fn effective_table(&self, enabled: &EnabledQueues) -> Vec<u16> {
        (0..TABLE_SIZE)
            .map(|i| self.table_entry(i, enabled).0)
            .collect()
    }

    pub fn learning(&self) -> bool {
        self.learning
    }

    pub fn set_learning(&mut self, on: bool) {
        self.learning = on;
        if !on {
            self.flows.clear_learned();
        }
    }

    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }

    /// Adds an explicit flow steering rule: frames of `flow` go to RX queue `queue`.
    pub fn add_flow_rule(&mut self, flow: FlowTuple, queue: u16) -> Result<(), RssError> {
        if queue >= self.queue_pairs {
            return Err(RssError::QueueOutOfRange {
                queue,
                queue_pairs: self.queue_pairs,
            });
        }
        if !flow.is_ip() {
            return Err(RssError::NotIp(flow.to_string()));
        }
        Ok(self.flows.add_rule(flow, queue)?)
    }

    pub fn del_flow_rule(&mut self, flow: &FlowTuple) -> Result<(), RssError> {
        Ok(self.flows.del_rule(flow)?)
    }

    /// The VF sent `flow` on TX queue `txq`: steer the reverse direction to RX queue `txq`.
    /// Returns what learning did, `None` when learning is off or the frame is not IP.
    #[inline]
    pub fn learn_tx(&mut self, flow: &FlowTuple, txq: u16) -> Option<Learn> {
        (self.learning && flow.is_ip()).then(|| self.flows.learn(flow.reversed(), txq))
    }

    /// Chooses the RX queue for a frame of `tuple` (refreshing a learned flow's recency).
    /// When one queue is enabled and no rule or user table applies, the hash is not computed
    /// (`hash` and `index` are `None`); `explain` always computes it.
    #[inline]
    pub fn decide(&mut self, tuple: &FlowTuple, enabled: &EnabledQueues) -> Decision {
        let hit = tuple.is_ip().then(|| self.flows.lookup(tuple)).flatten();
        let table = self.user_table.as_deref();
        choose(&self.toeplitz, table, tuple, enabled, hit, false)
    }

    /// The RSS hash of `tuple` with this VF's key (`None` for a frame that is not IP).
    pub fn hash(&self, tuple: &FlowTuple) -> Option<u32> {
        tuple.is_ip().then(|| self.toeplitz.hash_tuple(tuple))
    }

    /// Like `decide`, without side effects, and always with the hash: the debugging answer.
    pub fn explain(&self, tuple: &FlowTuple, enabled: &EnabledQueues) -> Decision {
        let hit = tuple.is_ip().then(|| self.flows.peek(tuple)).flatten();
        let table = self.user_table.as_deref();
        choose(&self.toeplitz, table, tuple, enabled, hit, true)
    }

    /// (queue delivered to, queue named before fallback, fell back).
    #[inline]
    fn table_entry(&self, i: usize, enabled: &EnabledQueues) -> (u16, u16, bool) {
        table_entry(self.user_table.as_deref(), i, enabled)
    }
}

/// Steering's view of a VF without learned flows: the hash table, the user table and the flow
/// rules, copied for the data path (`VfRss::snapshot`).
#[derive(Debug, Clone)]
pub struct SteeringSnapshot {
    toeplitz: Arc<ToeplitzTable>,
    user_table: Option<Box<[u16; TABLE_SIZE]>>,
    rules: flow_table::RuleMap,
}

impl SteeringSnapshot {
    /// The RX queue for `tuple`: (queue, what chose it, fell back), as `VfRss::decide` does.
    #[inline]
    pub fn steer(&self, tuple: &FlowTuple, enabled: &EnabledQueues) -> (u16, Steering, bool) {
        // `choose` without the parts of a `Decision` the data path does not use; the tests
        // check that both agree.
        if !tuple.is_ip() {
            let (q, fb) = enabled.or_fallback(0);
            return (q, Steering::NonIp, fb);
        }
        if !self.rules.is_empty() {
            if let Some(&q) = self.rules.get(tuple) {
                let (q, fb) = enabled.or_fallback(q);
                return (q, Steering::FlowRule, fb);
            }
        }
        if self.user_table.is_none() && enabled.len() <= 1 {
            return (u16::from(enabled.list[0]), Steering::Rss, false);
        }
        let i = self.toeplitz.hash_tuple(tuple) as usize % TABLE_SIZE;
        let (q, _, fb) = table_entry(self.user_table.as_deref(), i, enabled);
        (q, Steering::Rss, fb)
    }

    /// The RSS hash of `tuple` with this VF's key (`None` for a frame that is not IP): what a
    /// capture shows beside the queue.
    pub fn hash(&self, tuple: &FlowTuple) -> Option<u32> {
        tuple.is_ip().then(|| self.toeplitz.hash_tuple(tuple))
    }

    /// True when only the hash and the default spread are involved.
    pub fn is_plain(&self) -> bool {
        self.user_table.is_none() && self.rules.is_empty()
    }
}

/// (queue delivered to, queue named before fallback, fell back) for table entry `i`.
#[inline]
fn table_entry(
    user_table: Option<&[u16; TABLE_SIZE]>,
    i: usize,
    enabled: &EnabledQueues,
) -> (u16, u16, bool) {
    match user_table {
        Some(t) => {
            let (q, fb) = enabled.or_fallback(t[i]);
            (q, t[i], fb)
        }
        None if enabled.is_empty() => (0, 0, false),
        // Default: entry i -> i mod (enabled queues), over the enabled queues.
        None => {
            let q = u16::from(enabled.spread[i % TABLE_SIZE]);
            (q, q, false)
        }
    }
}

/// The steering decision: a flow table hit, else RSS (hash and table) for IP, else queue 0.
/// Without `need_hash`, one enabled queue under the default table skips the hash (it could
/// only pick that queue).
#[inline]
fn choose(
    toeplitz: &ToeplitzTable,
    user_table: Option<&[u16; TABLE_SIZE]>,
    tuple: &FlowTuple,
    enabled: &EnabledQueues,
    hit: Option<(u16, FlowSource)>,
    need_hash: bool,
) -> Decision {
    let shortcut = !need_hash && hit.is_none() && user_table.is_none() && enabled.len() == 1;
    let hash = (tuple.is_ip() && !shortcut).then(|| toeplitz.hash_tuple(tuple));
    let index = hash.map(|h| h as usize % TABLE_SIZE);
    let (queue, wanted, fell_back, by) = match (hit, index) {
        (Some((q, src)), _) => {
            let (queue, fb) = enabled.or_fallback(q);
            let by = if src == FlowSource::Rule {
                Steering::FlowRule
            } else {
                Steering::FlowLearned
            };
            (queue, q, fb, by)
        }
        (None, Some(i)) => {
            let (q, w, fb) = table_entry(user_table, i, enabled);
            (q, w, fb, Steering::Rss)
        }
        (None, None) if tuple.is_ip() => {
            // The shortcut: the only enabled queue.
            let q = u16::from(enabled.list[0]);
            (q, q, false, Steering::Rss)
        }
        (None, None) => {
            let (q, fb) = enabled.or_fallback(0);
            (q, 0, fb, Steering::NonIp)
        }
    };
    Decision {
        tuple: *tuple,
        hash,
        index,
        wanted,
        queue,
        by,
        fell_back,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(sport: u16) -> FlowTuple {
        FlowTuple::v4(
            IPPROTO_TCP,
            [66, 9, 149, 187],
            [161, 142, 100, 80],
            sport,
            1766,
        )
    }

    #[test]
    fn snapshot_steering_matches_the_full_decision() {
        let mut rss = VfRss::new(8);
        let check = |rss: &mut VfRss, what: &str| {
            let snap = rss.snapshot().expect("learning is off");
            for mask in [0b1u64, 0b10, 0b11, 0b1011, 0xff, 0b1000_0000] {
                let en = EnabledQueues::from_mask(mask);
                for sport in 0..200u16 {
                    for tuple in [tcp(sport), FlowTuple::NON_IP] {
                        let d = rss.explain(&tuple, &en);
                        let want = (d.queue, d.by, d.fell_back);
                        assert_eq!(snap.steer(&tuple, &en), want, "{what}: {mask:#b} {sport}");
                        let d2 = rss.decide(&tuple, &en);
                        assert_eq!((d2.queue, d2.by, d2.fell_back), want, "{what}");
                    }
                }
            }
        };
        check(&mut rss, "default");
        assert!(rss.snapshot().unwrap().is_plain());
        rss.add_flow_rule(tcp(7), 3).unwrap();
        rss.add_flow_rule(tcp(9), 6).unwrap();
        check(&mut rss, "rules");
        rss.set_table(Some(&[1, 5, 2])).unwrap();
        check(&mut rss, "rules and a user table");
        assert!(!rss.snapshot().unwrap().is_plain());
        rss.set_learning(true);
        assert!(
            rss.snapshot().is_none(),
            "learned flows change on the data path"
        );
    }

    #[test]
    fn hash_of_a_tuple_in_place_matches_the_input_bytes() {
        let t = ToeplitzTable::new(DEFAULT_KEY);
        let v6 = FlowTuple::v6(IPPROTO_UDP, [0x20; 16], [0x21; 16], 7, 9);
        let v6_two = FlowTuple::v6(0, [0x20; 16], [0x22; 16], 0, 0);
        for tuple in [
            tcp(2794),
            v6,
            v6_two,
            FlowTuple::v4(0, [1, 2, 3, 4], [5, 6, 7, 8], 0, 0),
        ] {
            let mut buf = [0u8; MAX_INPUT];
            let n = tuple.hash_input(&mut buf);
            assert_eq!(t.hash_tuple(&tuple), t.hash(&buf[..n]), "{tuple}");
        }
    }

    #[test]
    fn explain_shows_hash_index_and_queue() {
        let rss = VfRss::new(8);
        let d = rss.explain(&tcp(2794), &EnabledQueues::first(8));
        assert_eq!(d.hash, Some(0x51ccc178));
        assert_eq!(d.index, Some(0x51ccc178 % 128));
        assert_eq!(d.queue, (0x51ccc178 % 128 % 8) as u16);
        assert_eq!(d.by, Steering::Rss);
        assert!(d.to_string().contains("0x51ccc178"), "{d}");
    }

    #[test]
    fn default_table_follows_the_enabled_queues() {
        let rss = VfRss::new(8);
        let t8 = rss.effective_table(&EnabledQueues::first(8));
        assert!((0..TABLE_SIZE).all(|i| t8[i] == (i % 8) as u16));
        let t2 = rss.effective_table(&EnabledQueues::first(2));
        assert!((0..TABLE_SIZE).all(|i| t2[i] == (i % 2) as u16));
        let odd = rss.effective_table(&EnabledQueues::from_mask(0b1010));
        assert!(odd.iter().all(|q| *q == 1 || *q == 3));
    }

    #[test]
    fn user_table_is_kept_and_disabled_entries_fall_back_deterministically() {
        let mut rss = VfRss::new(8);
        rss.set_table(Some(&[7, 6])).unwrap();
        let all = EnabledQueues::first(8);
        assert_eq!(&rss.effective_table(&all)[..4], &[7, 6, 7, 6]);
        let two = EnabledQueues::first(2);
        let t = rss.effective_table(&two);
        assert!(t.iter().all(|q| *q < 2), "{t:?}");
        assert_eq!(t, rss.effective_table(&two), "deterministic");
        // Enabling all queues again brings the user's table back unchanged.
        assert_eq!(&rss.effective_table(&all)[..2], &[7, 6]);
        assert_eq!(
            rss.set_table(Some(&[8])),
            Err(RssError::QueueOutOfRange {
                queue: 8,
                queue_pairs: 8
            })
        );
        assert_eq!(rss.set_table(Some(&[])), Err(RssError::TableLen(0)));
        assert_eq!(
            &rss.effective_table(&all)[..2],
            &[7, 6],
            "a refused table changes nothing"
        );
    }

    #[test]
    fn flow_rules_and_learning_override_rss() {
        let mut rss = VfRss::new(4);
        let all = EnabledQueues::first(4);
        let f = tcp(1);
        rss.learn_tx(&f.reversed(), 3);
        assert_eq!(
            rss.decide(&f, &all).by,
            Steering::Rss,
            "learning is off by default"
        );
        rss.set_learning(true);
        rss.learn_tx(&f.reversed(), 3);
        assert_eq!(rss.decide(&f, &all).by, Steering::FlowLearned);
        assert_eq!(rss.decide(&f, &all).queue, 3);
        rss.add_flow_rule(f, 2).unwrap();
        let d = rss.decide(&f, &all);
        assert_eq!((d.queue, d.by), (2, Steering::FlowRule));
        // A rule to a disabled queue falls back to an enabled one.
        let d = rss.decide(&f, &EnabledQueues::first(2));
        assert!(d.fell_back && d.queue < 2);
        assert!(rss.add_flow_rule(f, 4).is_err());
        assert!(rss.add_flow_rule(FlowTuple::NON_IP, 0).is_err());
        rss.set_learning(false);
        rss.learn_tx(&tcp(9).reversed(), 1);
        assert_eq!(rss.decide(&tcp(9), &all).by, Steering::Rss);
    }

    #[test]
    fn non_ip_goes_to_queue_zero() {
        let mut rss = VfRss::new(4);
        let d = rss.decide(&FlowTuple::NON_IP, &EnabledQueues::first(4));
        assert_eq!((d.queue, d.by, d.hash), (0, Steering::NonIp, None));
    }
}
