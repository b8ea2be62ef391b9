//! Deliveries grouped by destination RX ring in one pass, keeping each ring's frame order.
//!
//! A batch's deliveries come out of the switch frame by frame (a broadcast frame to 253 ports
//! is 253 deliveries in a row). The data plane writes them ring by ring: one lock, one used
//! index store and one notification per ring. Grouping links each delivery to the previous one
//! of its ring: linear in the number of deliveries, whatever the number of destinations, with
//! no allocation once the buffers have grown to the largest batch seen.

/// No entry.
const NIL: u32 = u32::MAX;

/// One destination RX ring of a batch and its deliveries, as a linked list.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    pub port: u16,
    pub queue: u16,
    /// Deliveries in the group.
    pub len: u32,
    first: u32,
    last: u32,
    /// The members are `first..=last` with nothing between them (the common unicast batch):
    /// they are walked as a range, without following the links.
    contiguous: bool,
    /// The next group of the same port (another queue).
    next_of_port: u32,
}

/// Groups of one batch. `add` in delivery order, then `groups()` and `members()`.
#[derive(Debug)]
pub struct Groups {
    groups: Vec<Group>,
    /// Per delivery: the next delivery of its group.
    next: Vec<u32>,
    /// Per port slot: its first group in this batch.
    by_port: Box<[u32]>,
    /// The group of the previous delivery (consecutive deliveries often share their ring).
    recent: u32,
}

impl Groups {
    /// Groups for ports `0..ports`.
    pub fn new(ports: usize) -> Self {
        Groups {
            groups: Vec::new(),
            next: Vec::new(),
            by_port: vec![NIL; ports].into_boxed_slice(),
            recent: NIL,
        }
    }

    /// Adds the next delivery (numbered 0, 1, 2, ... in the order of the calls) for RX queue
    /// `queue` of `port`. A port beyond the slots given to `new` belongs to no group.
    #[inline]
    pub fn add(&mut self, port: u16, queue: u16) {
        let i = self.next.len() as u32;
        self.next.push(NIL);
        if let Some(group) = self.groups.get_mut(self.recent as usize) {
            if group.port == port && group.queue == queue {
                self.next[group.last as usize] = i;
                group.contiguous &= group.last + 1 == i;
                group.last = i;
                group.len += 1;
                return;
            }
        }
        let Some(slot) = self.by_port.get_mut(usize::from(port)) else {
            return;
        };
        // Most ports have one or two RX queues in a batch: a short walk.
        let mut g = *slot;
        while g != NIL {
            let group = &mut self.groups[g as usize];
            if group.queue == queue {
                self.next[group.last as usize] = i;
                group.contiguous &= group.last + 1 == i;
                group.last = i;
                group.len += 1;
                self.recent = g;
                return;
            }
            g = group.next_of_port;
        }
        self.groups.push(Group {
            port,
            queue,
            len: 1,
            first: i,
            last: i,
            contiguous: true,
            next_of_port: *slot,
        });
        *slot = (self.groups.len() - 1) as u32;
        self.recent = *slot;
    }

    /// The groups, in the order their first delivery was added.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The deliveries of `group`, in the order they were added.
    pub fn members(&self, group: &Group) -> Members<'_> {
        if group.contiguous {
            Members::Range(group.first as usize..group.last as usize + 1)
        } else {
            Members::Linked {
                next: &self.next,
                at: group.first,
            }
        }
    }

    /// Empties the batch (only the touched port slots are reset).
    pub fn clear(&mut self) {
        for g in &self.groups {
            if let Some(s) = self.by_port.get_mut(usize::from(g.port)) {
                *s = NIL;
            }
        }
        self.groups.clear();
        self.next.clear();
        self.recent = NIL;
    }
}

/// The deliveries of one group.
pub enum Members<'a> {
    /// Added one after the other.
    Range(std::ops::Range<usize>),
    /// Interleaved with other groups': follow the links.
    Linked { next: &'a [u32], at: u32 },
}

impl Iterator for Members<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        match self {
            Members::Range(r) => r.next(),
            Members::Linked { next, at } => {
                if *at == NIL {
                    return None;
                }
                let i = *at as usize;
                *at = next.get(i).copied().unwrap_or(NIL);
                Some(i)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(g: &Groups) -> Vec<(u16, u16, Vec<usize>)> {
        g.groups()
            .iter()
            .map(|x| (x.port, x.queue, g.members(x).collect()))
            .collect()
    }

    #[test]
    fn groups_by_port_and_queue_in_order() {
        let mut g = Groups::new(8);
        let adds = [(3, 0), (1, 0), (3, 1), (3, 0), (1, 0), (5, 2), (3, 1)];
        for (p, q) in adds {
            g.add(p, q);
        }
        assert_eq!(
            collect(&g),
            vec![
                (3, 0, vec![0, 3]),
                (1, 0, vec![1, 4]),
                (3, 1, vec![2, 6]),
                (5, 2, vec![5]),
            ]
        );
        assert_eq!(g.groups()[0].len, 2);
        g.clear();
        assert!(g.groups().is_empty());
        g.add(3, 1);
        assert_eq!(
            collect(&g),
            vec![(3, 1, vec![0])],
            "a cleared batch starts fresh"
        );
    }

    #[test]
    fn a_group_added_in_one_run_then_interleaved_keeps_its_order() {
        let mut g = Groups::new(8);
        for (p, q) in [(2, 0), (2, 0), (2, 0), (4, 1), (2, 0), (4, 1)] {
            g.add(p, q);
        }
        assert_eq!(
            collect(&g),
            vec![(2, 0, vec![0, 1, 2, 4]), (4, 1, vec![3, 5])]
        );
        g.clear();
        for _ in 0..5 {
            g.add(6, 3);
        }
        assert_eq!(collect(&g), vec![(6, 3, vec![0, 1, 2, 3, 4])]);
    }

    #[test]
    fn a_broadcast_batch_is_one_group_per_port() {
        let (frames, ports) = (64usize, 254u16);
        let mut g = Groups::new(318);
        for _ in 0..frames {
            for p in 1..ports {
                g.add(p, 0);
            }
        }
        assert_eq!(g.groups().len(), usize::from(ports) - 1);
        for (k, grp) in g.groups().iter().enumerate() {
            let m: Vec<usize> = g.members(grp).collect();
            assert_eq!(m.len(), frames);
            // Frame f's delivery to this port is number f * 253 + k.
            assert!(m.iter().enumerate().all(|(f, &d)| d == f * 253 + k));
        }
    }

    #[test]
    fn ports_beyond_the_slots_are_ignored() {
        let mut g = Groups::new(2);
        g.add(7, 0);
        g.add(1, 0);
        assert_eq!(collect(&g), vec![(1, 0, vec![1])]);
    }
}
