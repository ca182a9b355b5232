//! Deadlines in time order, for tables whose entries may be settled before
//! their deadline comes: a settled entry's deadline is not searched for and
//! removed (that would cost O(n)); it stays in the heap and is skipped when
//! it surfaces (lazy deletion). So the heap would grow without bound at a
//! high rate of entries settled early; it is rebuilt, dropping those, once
//! they outnumber the live entries ([`Deadlines::push`]). The parked-request
//! table, the outbound client's calls and the /api/smart hedge timers each
//! keep one.
//!
//! Sans-clock: `now` is an argument.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Dead entries tolerated beyond twice the live ones before a rebuild.
const GARBAGE_SLACK: usize = 64;

#[derive(Debug)]
pub struct Deadlines<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord + Copy> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Deadlines<K> {
    /// Adds `key`'s deadline. `live` says which keys are still waiting and
    /// `live_count` how many: when dead entries outnumber them the heap is
    /// rebuilt first, so it holds at most about twice the live entries.
    pub fn push(&mut self, at: Instant, key: K, live_count: usize, live: impl Fn(&K) -> bool) {
        if self.heap.len() > GARBAGE_SLACK + 2 * live_count {
            self.heap.retain(|Reverse((_, k))| live(k));
        }
        self.heap.push(Reverse((at, key)));
    }

    /// The earliest deadline of a live key, for the loop's sleep.
    pub fn next(&mut self, live: impl Fn(&K) -> bool) -> Option<Instant> {
        self.drop_dead(&live);
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// A live key whose deadline is at or before `now`; its entry is gone
    /// from the heap, the key's own table still holds it.
    pub fn pop_due(&mut self, now: Instant, live: impl Fn(&K) -> bool) -> Option<K> {
        self.drop_dead(&live);
        let &Reverse((at, key)) = self.heap.peek()?;
        if at > now {
            return None;
        }
        self.heap.pop();
        Some(key)
    }

    /// Drops every entry: nothing is live any more.
    pub fn clear(&mut self) {
        self.heap.clear();
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn drop_dead(&mut self, live: &impl Fn(&K) -> bool) {
        while let Some(Reverse((_, key))) = self.heap.peek() {
            if live(key) {
                return;
            }
            self.heap.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    #[test]
    fn due_keys_come_in_time_order_and_dead_ones_never() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut live: HashSet<u32> = [1, 2, 4].into_iter().collect();
        let mut d = Deadlines::default();
        for (key, at) in [(1, 30), (2, 10), (3, 5), (4, 20)] {
            d.push(t0 + ms(at), key, live.len(), |k| live.contains(k));
        }
        assert_eq!(d.next(|k| live.contains(k)), Some(t0 + ms(10)), "3 is dead");
        assert_eq!(d.pop_due(t0 + ms(9), |k| live.contains(k)), None);
        assert_eq!(d.pop_due(t0 + ms(25), |k| live.contains(k)), Some(2));
        live.remove(&4);
        assert_eq!(d.pop_due(t0 + ms(25), |k| live.contains(k)), None);
        assert_eq!(d.pop_due(t0 + ms(30), |k| live.contains(k)), Some(1));
        assert_eq!(d.next(|k| live.contains(k)), None);
    }

    #[test]
    fn entries_settled_early_do_not_pile_up() {
        let far = Instant::now() + Duration::from_secs(60);
        let mut d = Deadlines::default();
        d.push(far, 0u32, 1, |_| true);
        for key in 1..10_000u32 {
            // Only key 0 and the one being pushed are live.
            d.push(far, key, 2, |k| *k == 0 || *k == key);
        }
        assert!(d.len() <= GARBAGE_SLACK + 2 * 2 + 1, "{}", d.len());
        assert_eq!(d.next(|k| *k == 0), Some(far));
    }
}
