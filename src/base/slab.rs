//! A table of values under small integer keys, with a free list: inserting
//! reuses the lowest-cost free slot, so keys stay dense and the table never
//! grows past the most values held at once. The loop keeps its client
//! connections in one (a key is the connection's mio token) and the
//! outbound client its upstream connections in another.
//!
//! Keys are reused after a removal; a holder that must tell a reused key from
//! the old one pairs it with a serial of its own (see `reply::park::ConnId`).

/// Values by key; `len` counts the occupied slots.
#[derive(Debug)]
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `value` and returns its key.
    pub fn insert(&mut self, value: T) -> usize {
        self.insert_with(|_| value)
    }

    /// Stores the value `make` builds from the key it will have (a value
    /// that names itself), and returns the key.
    pub fn insert_with(&mut self, make: impl FnOnce(usize) -> T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(key) => {
                self.slots[key] = Some(make(key));
                key
            }
            None => {
                let key = self.slots.len();
                self.slots.push(Some(make(key)));
                key
            }
        }
    }

    pub fn get(&self, key: usize) -> Option<&T> {
        self.slots.get(key).and_then(Option::as_ref)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut T> {
        self.slots.get_mut(key).and_then(Option::as_mut)
    }

    /// Takes the value out; its key may be handed out again.
    pub fn remove(&mut self, key: usize) -> Option<T> {
        let value = self.slots.get_mut(key)?.take()?;
        self.free.push(key);
        self.len -= 1;
        Some(value)
    }

    /// One more than the highest key ever handed out: keys are below it.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The occupied keys, in key order (collected, so the caller may change
    /// the table while it walks them).
    pub fn keys(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&key| self.slots[key].is_some())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_reused_and_a_removed_value_is_gone() {
        let mut slab = Slab::default();
        let a = slab.insert('a');
        let b = slab.insert('b');
        assert_ne!(a, b);
        assert_eq!(slab.remove(a), Some('a'));
        assert_eq!(slab.remove(a), None, "only once");
        assert_eq!(slab.get(a), None);
        let c = slab.insert('c');
        assert_eq!(c, a, "the freed key first");
        assert_eq!(slab.len(), 2);
        assert_eq!(slab.capacity(), 2, "no growth while a slot is free");
        assert_eq!(slab.keys(), vec![a, b]);
        *slab.get_mut(b).unwrap() = 'B';
        assert_eq!(slab.get(b), Some(&'B'));
    }
}
