//! The event loop's memory of rendered F(n) values, and the bookkeeping that
//! lets concurrent requests for one n share a single computation.
//!
//! F(n) never changes, so a rendered value stays correct forever and the only
//! question is memory: [`FibCache`] is bounded in bytes and forgets the least
//! recently used values first. [`SingleFlight`] bounds how many requests may
//! wait at all. Both are sans-IO and single-threaded (values are `Rc`, shared
//! with the replies that send them); starting computations and answering
//! waiters belong to the caller.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::rc::Rc;

use crate::base::recency::Recency;

/// Bytes charged per cached value on top of its digits: the hash-map entry
/// (key, slot index, control byte: ~17 B, rounded up for load factor), the
/// slot (n, `Rc` fat pointer, two links: 40 B) and the `Rc` header (two
/// counts: 16 B). An estimate rounded up, so many tiny values cannot exceed
/// the budget by much.
pub const ENTRY_OVERHEAD_BYTES: usize = 96;

/// One value, or a free slot (`digits` is `None`).
struct Slot {
    n: u64,
    digits: Option<Rc<[u8]>>,
}

/// Decimal digits of F(n) by n, bounded in bytes, least recently used first
/// out.
///
/// A hash map finds a value's slot and [`Recency`] keeps the slots' order,
/// so a hit, an insert and an eviction are each O(1) and a hit allocates
/// nothing. Freed slots are reused, so the `Vec` never grows past the most
/// values held at once.
pub struct FibCache {
    bytes_max: usize,
    bytes: usize,
    index: HashMap<u64, usize>,
    slots: Vec<Slot>,
    recency: Recency,
    free: Vec<usize>,
}

impl FibCache {
    pub fn new(bytes_max: usize) -> FibCache {
        FibCache {
            bytes_max,
            bytes: 0,
            index: HashMap::new(),
            slots: Vec::new(),
            recency: Recency::default(),
            free: Vec::new(),
        }
    }

    /// Whether F(n) is held, without touching the eviction order.
    pub fn contains(&self, n: u64) -> bool {
        self.index.contains_key(&n)
    }

    /// The digits of F(n), if held; a hit makes n the last to be evicted.
    pub fn get(&mut self, n: u64) -> Option<Rc<[u8]>> {
        let slot = *self.index.get(&n)?;
        self.recency.touch(slot);
        self.slots.get(slot)?.digits.clone()
    }

    /// Keeps `digits` as F(n), evicting the least recently used values until
    /// the total fits `bytes_max`.
    ///
    /// A value costing more than a quarter of `bytes_max` is not kept: one
    /// huge F(n) must not flush every other value, and asking for it again
    /// costs a worker computation, not event-loop time.
    pub fn insert(&mut self, n: u64, digits: Rc<[u8]>) {
        self.remove(n);
        let cost = entry_cost(&digits);
        if cost > self.bytes_max / 4 {
            return;
        }
        while self.bytes.saturating_add(cost) > self.bytes_max {
            let oldest = self.recency.oldest().and_then(|slot| self.slots.get(slot));
            let Some(oldest_n) = oldest.map(|s| s.n) else {
                break;
            };
            self.remove(oldest_n);
        }
        let slot = self.allocate(n, digits);
        self.recency.touch(slot);
        self.index.insert(n, slot);
        self.bytes += cost;
    }

    /// Bytes charged for the values held: their digits plus
    /// [`ENTRY_OVERHEAD_BYTES`] each.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn remove(&mut self, n: u64) {
        let Some(slot) = self.index.remove(&n) else {
            return;
        };
        self.recency.remove(slot);
        if let Some(digits) = self.slots.get_mut(slot).and_then(|s| s.digits.take()) {
            self.bytes -= entry_cost(&digits);
        }
        self.free.push(slot);
    }

    /// A slot holding `digits`, reusing a freed one when there is one.
    fn allocate(&mut self, n: u64, digits: Rc<[u8]>) -> usize {
        let fresh = Slot {
            n,
            digits: Some(digits),
        };
        match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot) {
                    *s = fresh;
                }
                slot
            }
            None => {
                self.slots.push(fresh);
                self.slots.len() - 1
            }
        }
    }
}

fn entry_cost(digits: &[u8]) -> usize {
    digits.len().saturating_add(ENTRY_OVERHEAD_BYTES)
}

/// What [`SingleFlight::join`] means for the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Joined {
    /// First to ask for this n: the caller must start the computation.
    Leader,
    /// A computation for this n is already under way; just wait.
    Follower,
}

/// Requests waiting for the same n share one computation.
///
/// Without this, a burst of requests for one large n would queue the same
/// seconds-long computation once per request. `W` is whatever the caller
/// needs to answer a waiter later (a connection token, say). The total
/// number of waiters is bounded so a flood of slow requests is refused
/// early instead of holding memory and connections without limit.
pub struct SingleFlight<W> {
    waiters_max: usize,
    waiters: usize,
    flights: HashMap<u64, Vec<W>>,
}

impl<W> SingleFlight<W> {
    /// `waiters_max` counts waiters across every n, leaders included.
    pub fn new(waiters_max: usize) -> Self {
        SingleFlight {
            waiters_max,
            waiters: 0,
            flights: HashMap::new(),
        }
    }

    /// Adds `waiter` to n's flight, starting one if there is none.
    ///
    /// Gives the waiter back when `waiters_max` are already waiting, so the
    /// caller can answer it (503) at once.
    pub fn join(&mut self, n: u64, waiter: W) -> Result<Joined, W> {
        if self.waiters >= self.waiters_max {
            return Err(waiter);
        }
        self.waiters += 1;
        match self.flights.entry(n) {
            Entry::Occupied(mut flight) => {
                flight.get_mut().push(waiter);
                Ok(Joined::Follower)
            }
            Entry::Vacant(slot) => {
                slot.insert(vec![waiter]);
                Ok(Joined::Leader)
            }
        }
    }

    /// Ends n's flight with a result: everyone to answer, in arrival order.
    pub fn complete(&mut self, n: u64) -> Vec<W> {
        self.take(n)
    }

    /// Ends n's flight without a result (the computation could not start,
    /// e.g. the worker queue was full): everyone to answer with an error, in
    /// arrival order. A later request for n starts afresh as leader.
    pub fn abandon(&mut self, n: u64) -> Vec<W> {
        self.take(n)
    }

    /// Distinct n being computed.
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    fn take(&mut self, n: u64) -> Vec<W> {
        let waiters = self.flights.remove(&n).unwrap_or_default();
        self.waiters -= waiters.len();
        waiters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digits(len: usize, fill: u8) -> Rc<[u8]> {
        vec![fill; len].into()
    }

    /// A budget that holds exactly `count` values of `len` digits.
    fn budget(count: usize, len: usize) -> usize {
        count * (len + ENTRY_OVERHEAD_BYTES)
    }

    fn held(cache: &FibCache, ns: std::ops::Range<u64>) -> Vec<u64> {
        ns.filter(|&n| cache.index.contains_key(&n)).collect()
    }

    #[test]
    fn empty_cache_misses() {
        let mut cache = FibCache::new(1 << 20);
        assert!(cache.is_empty());
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.get(5), None);
    }

    #[test]
    fn get_returns_the_shared_value() {
        let mut cache = FibCache::new(1 << 20);
        let value: Rc<[u8]> = Rc::from(&b"12586269025"[..]);
        cache.insert(50, value.clone());
        let got = cache.get(50).unwrap();
        assert!(Rc::ptr_eq(&got, &value), "a hit must not copy the digits");
        assert_eq!(cache.get(51), None);
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut cache = FibCache::new(budget(4, 10));
        for n in 0..4 {
            cache.insert(n, digits(10, b'0' + n as u8));
        }
        assert_eq!(cache.len(), 4);
        // Touch 0 and 2: the order, oldest first, is now 1, 3, 0, 2.
        assert!(cache.get(0).is_some());
        assert!(cache.get(2).is_some());
        cache.insert(4, digits(10, b'4'));
        assert_eq!(held(&cache, 0..5), [0, 2, 3, 4]);
        cache.insert(5, digits(10, b'5'));
        assert_eq!(held(&cache, 0..6), [0, 2, 4, 5]);
        cache.insert(6, digits(10, b'6'));
        assert_eq!(held(&cache, 0..7), [2, 4, 5, 6]);
        assert_eq!(cache.get(2).unwrap()[..], [b'2'; 10]);
        assert_eq!(cache.get(6).unwrap()[..], [b'6'; 10]);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.bytes(), budget(4, 10));
    }

    #[test]
    fn a_bigger_value_evicts_as_many_as_it_needs() {
        let mut cache = FibCache::new(budget(16, 10));
        for n in 0..16 {
            cache.insert(n, digits(10, b'x'));
        }
        // Costs two small entries' worth plus one byte, so three go.
        let big = 2 * (10 + ENTRY_OVERHEAD_BYTES) + 1 - ENTRY_OVERHEAD_BYTES;
        cache.insert(100, digits(big, b'y'));
        assert_eq!(held(&cache, 0..16), (3..16).collect::<Vec<_>>());
        assert_eq!(cache.get(100).map(|d| d.len()), Some(big));
        assert_eq!(cache.bytes(), budget(13, 10) + big + ENTRY_OVERHEAD_BYTES);
        assert!(cache.bytes() <= budget(16, 10));
    }

    #[test]
    fn byte_accounting_follows_inserts_and_evictions() {
        let mut cache = FibCache::new(10_000);
        let mut expected = 0;
        for (n, len) in [(1, 1), (2, 100), (3, 7), (4, 2000)] {
            cache.insert(n, digits(len, b'1'));
            expected += len + ENTRY_OVERHEAD_BYTES;
            assert_eq!(cache.bytes(), expected, "after inserting {n}");
        }
        // Fill up with values of 1000 digits; the total never exceeds the max.
        for n in 10..100 {
            cache.insert(n, digits(1000, b'2'));
            assert!(cache.bytes() <= 10_000, "after inserting {n}");
        }
        let sum: usize = (0..100)
            .filter_map(|n| cache.get(n))
            .map(|d| d.len() + ENTRY_OVERHEAD_BYTES)
            .sum();
        assert_eq!(cache.bytes(), sum);
    }

    #[test]
    fn oversize_values_are_not_cached_and_flush_nothing() {
        let max = budget(8, 10);
        let mut cache = FibCache::new(max);
        for n in 0..4 {
            cache.insert(n, digits(10, b'x'));
        }
        let before = cache.bytes();
        let at_limit = max / 4 - ENTRY_OVERHEAD_BYTES;
        cache.insert(100, digits(at_limit + 1, b'y'));
        assert_eq!(cache.get(100), None);
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.bytes(), before);
        cache.insert(101, digits(at_limit, b'y'));
        assert_eq!(cache.get(101).map(|d| d.len()), Some(at_limit));

        // A zero budget keeps nothing and never panics.
        let mut none = FibCache::new(0);
        none.insert(1, digits(0, b'1'));
        none.insert(2, digits(10, b'1'));
        assert!(none.is_empty());
        assert_eq!(none.bytes(), 0);
    }

    #[test]
    fn reinsert_replaces_and_refreshes() {
        let mut cache = FibCache::new(budget(4, 10));
        for (n, fill) in [(1, b'a'), (2, b'b'), (3, b'c'), (4, b'd')] {
            cache.insert(n, digits(10, fill));
        }
        // Reinserting 1 makes it the newest and charges it once.
        cache.insert(1, digits(10, b'A'));
        assert_eq!(cache.len(), 4);
        assert_eq!(cache.bytes(), budget(4, 10));
        assert_eq!(cache.get(1).unwrap()[..], [b'A'; 10]);
        cache.insert(5, digits(10, b'e'));
        assert_eq!(held(&cache, 0..6), [1, 3, 4, 5]);
        // Reinserting at a different size is charged at the new size.
        cache.insert(3, digits(5, b'C'));
        assert_eq!(cache.bytes(), budget(4, 10) - 5);
        // An oversize reinsert drops the old value instead of keeping a stale one.
        cache.insert(4, digits(1000, b'D'));
        assert_eq!(cache.get(4), None);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.bytes(), budget(3, 10) - 5);
    }

    #[test]
    fn slots_are_reused() {
        let mut cache = FibCache::new(budget(4, 10));
        for n in 0..1000 {
            cache.insert(n, digits(10, b'z'));
        }
        assert_eq!(cache.len(), 4);
        assert!(cache.slots.len() <= 5, "{} slots", cache.slots.len());
        assert_eq!(held(&cache, 990..1000), [996, 997, 998, 999]);
    }

    #[test]
    fn single_flight_has_one_leader_per_n() {
        let mut flights = SingleFlight::new(10);
        assert_eq!(flights.join(7, "a"), Ok(Joined::Leader));
        assert_eq!(flights.join(7, "b"), Ok(Joined::Follower));
        assert_eq!(flights.join(9, "c"), Ok(Joined::Leader));
        assert_eq!(flights.join(7, "d"), Ok(Joined::Follower));
        assert_eq!(flights.in_flight(), 2);
        assert_eq!(flights.complete(7), ["a", "b", "d"]);
        assert_eq!(flights.in_flight(), 1);
        assert_eq!(flights.complete(7), Vec::<&str>::new());
        // After completion a new request for 7 leads a fresh computation.
        assert_eq!(flights.join(7, "e"), Ok(Joined::Leader));
        assert_eq!(flights.abandon(9), ["c"]);
        assert_eq!(flights.abandon(9), Vec::<&str>::new());
        assert_eq!(flights.complete(7), ["e"]);
        assert_eq!(flights.in_flight(), 0);
    }

    #[test]
    fn single_flight_limits_waiters_across_all_n() {
        let mut flights = SingleFlight::new(3);
        assert_eq!(flights.join(1, 10), Ok(Joined::Leader));
        assert_eq!(flights.join(1, 11), Ok(Joined::Follower));
        assert_eq!(flights.join(2, 20), Ok(Joined::Leader));
        assert_eq!(flights.join(1, 12), Err(12));
        assert_eq!(flights.join(3, 30), Err(30));
        assert_eq!(flights.in_flight(), 2);
        // Answering waiters frees their places.
        assert_eq!(flights.abandon(1), [10, 11]);
        assert_eq!(flights.join(3, 30), Ok(Joined::Leader));
        assert_eq!(flights.join(3, 31), Ok(Joined::Follower));
        assert_eq!(flights.join(3, 32), Err(32));

        let mut closed = SingleFlight::new(0);
        assert_eq!(closed.join(1, ()), Err(()));
        assert_eq!(closed.in_flight(), 0);
    }
}
