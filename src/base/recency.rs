//! A least-recently-used order over slot indices, in O(1) per operation.
//!
//! The /v1/fib cache and the rate limiter both keep their entries in a `Vec`
//! of slots found through a hash map, and both evict from the least recently
//! used end. This owns only that order (a doubly linked list by index, kept
//! beside the owner's slots); what a slot holds, and when it is evicted, stays
//! with the owner.

/// Marks a missing neighbour. Never a valid slot index (no `Vec` holds
/// `usize::MAX` elements), so `links.get(NIL)` is `None` and needs no check.
const NIL: usize = usize::MAX;

#[derive(Clone, Copy, Debug)]
struct Link {
    /// Toward the most recently used end.
    newer: usize,
    /// Toward the least recently used end.
    older: usize,
}

const UNLINKED: Link = Link {
    newer: NIL,
    older: NIL,
};

#[derive(Debug)]
pub struct Recency {
    links: Vec<Link>,
    newest: usize,
    oldest: usize,
}

impl Default for Recency {
    fn default() -> Self {
        Recency {
            links: Vec::new(),
            newest: NIL,
            oldest: NIL,
        }
    }
}

impl Recency {
    /// Makes `slot` the most recently used, linked or not before.
    pub fn touch(&mut self, slot: usize) {
        if slot >= self.links.len() {
            self.links.resize(slot + 1, UNLINKED);
        }
        self.remove(slot);
        let previous = self.newest;
        if let Some(link) = self.links.get_mut(slot) {
            *link = Link {
                newer: NIL,
                older: previous,
            };
        }
        match self.links.get_mut(previous) {
            Some(link) => link.newer = slot,
            None => self.oldest = slot,
        }
        self.newest = slot;
    }

    /// Takes `slot` out of the order; a slot not in it is left alone.
    pub fn remove(&mut self, slot: usize) {
        let Some(link) = self.links.get_mut(slot) else {
            return;
        };
        let Link { newer, older } = std::mem::replace(link, UNLINKED);
        match self.links.get_mut(newer) {
            Some(n) => n.older = older,
            None if self.newest == slot => self.newest = older,
            None => {}
        }
        match self.links.get_mut(older) {
            Some(o) => o.newer = newer,
            None if self.oldest == slot => self.oldest = newer,
            None => {}
        }
    }

    /// The least recently used slot.
    pub fn oldest(&self) -> Option<usize> {
        (self.oldest != NIL).then_some(self.oldest)
    }

    /// The slot used next after `slot`, walking from the oldest end.
    pub fn newer(&self, slot: usize) -> Option<usize> {
        self.links
            .get(slot)
            .map(|link| link.newer)
            .filter(|&n| n != NIL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(r: &Recency) -> Vec<usize> {
        let mut order = Vec::new();
        let mut slot = r.oldest();
        while let Some(s) = slot {
            order.push(s);
            slot = r.newer(s);
        }
        order
    }

    /// Naive oracle: a Vec where touching moves a slot to the end.
    #[test]
    fn order_matches_a_naive_list_under_every_shape() {
        let mut r = Recency::default();
        let mut oracle: Vec<usize> = Vec::new();
        let script = [
            (true, 3),
            (true, 0),
            (true, 3),
            (false, 0),
            (true, 7),
            (false, 5),
            (true, 1),
            (true, 7),
            (false, 3),
            (false, 7),
            (false, 1),
            (true, 2),
        ];
        for (touch, slot) in script {
            oracle.retain(|&s| s != slot);
            if touch {
                r.touch(slot);
                oracle.push(slot);
            } else {
                r.remove(slot);
            }
            assert_eq!(walk(&r), oracle, "after {touch} {slot}");
        }
    }

    #[test]
    fn empty_has_no_oldest() {
        let mut r = Recency::default();
        assert_eq!(r.oldest(), None);
        r.touch(0);
        r.remove(0);
        assert_eq!((r.oldest(), walk(&r)), (None, vec![]));
    }
}
