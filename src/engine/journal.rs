//! Undo journals for the engine's collections, so that a batch whose writes the store refused can
//! be taken back whole.
//!
//! The shell applies a batch of inputs, writes what they changed, and only then sends anything.
//! When the write fails, nobody has been told anything, so the engine must be exactly as it was
//! before the batch: not only the records and agents that are on disk, but calls, parties,
//! connection bindings, deadlines and pending logouts too. Each collection here remembers, while a
//! batch is open, what it looked like before the batch changed it: a map keeps the first value
//! each key had (one clone per entry touched, however often the batch touches it), a set keeps the
//! insertions and removals it really made. Outside a batch they cost nothing extra.
//!
//! Reads go through `Deref` to the plain collection; every change goes through a method here, so
//! no change can escape the journal.

use std::borrow::Borrow;
use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

/// Entries a journal keeps room for between batches; a batch that needed more gives it back.
const JOURNAL_KEPT_CAPACITY: usize = 1024;

pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A hash map whose changes during an open batch can be undone.
#[derive(Debug, Clone)]
pub(crate) struct JMap<K, V> {
    map: FastMap<K, V>,
    /// Key -> its value before the batch first changed it (`None`: it was absent).
    undo: FastMap<K, Option<V>>,
    open: bool,
}

impl<K, V> Default for JMap<K, V> {
    fn default() -> Self {
        JMap {
            map: FastMap::default(),
            undo: FastMap::default(),
            open: false,
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> JMap<K, V> {
    /// Notes the value of `key` before its first change in the open batch.
    fn note<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if self.open && !self.undo.contains_key(key) {
            let before = self.map.get(key).cloned();
            self.undo.insert(key.to_owned(), before);
        }
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if !self.map.contains_key(key) {
            return None;
        }
        self.note(key);
        self.map.get_mut(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.note(&key);
        self.map.insert(key, value)
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        if !self.map.contains_key(key) {
            return None;
        }
        self.note(key);
        self.map.remove(key)
    }

    /// The value of `key`, inserted as `V::default()` if absent.
    pub(crate) fn get_or_default<Q>(&mut self, key: &Q) -> &mut V
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
        V: Default,
    {
        self.note(key);
        if !self.map.contains_key(key) {
            self.map.insert(key.to_owned(), V::default());
        }
        self.map.get_mut(key).expect("present or inserted above")
    }

    /// Replaces everything; only outside a batch (a restore is not undone).
    pub(crate) fn replace_all(&mut self, map: FastMap<K, V>) {
        assert!(!self.open, "a restore cannot be part of a batch");
        self.map = map;
    }

    pub(crate) fn begin(&mut self) {
        assert!(self.undo.is_empty(), "a batch opens with an empty journal");
        self.open = true;
    }

    pub(crate) fn commit(&mut self) {
        // Clearing costs as much as the table is large, not as full: after one big batch (a
        // restore's aftermath, a burst of attaches) the journal would make every small batch
        // after it pay for that size, so a large one is let go instead.
        if self.undo.capacity() > JOURNAL_KEPT_CAPACITY {
            self.undo = FastMap::default();
        } else {
            self.undo.clear();
        }
        self.open = false;
    }

    /// Puts back every entry the batch changed; returns whether anything changed.
    pub(crate) fn rollback(&mut self) -> bool {
        let changed = !self.undo.is_empty();
        for (k, before) in self.undo.drain() {
            match before {
                Some(v) => {
                    self.map.insert(k, v);
                }
                None => {
                    self.map.remove(&k);
                }
            }
        }
        self.open = false;
        changed
    }
}

impl<K, V> std::ops::Deref for JMap<K, V> {
    type Target = FastMap<K, V>;
    fn deref(&self) -> &FastMap<K, V> {
        &self.map
    }
}

impl<K, V, Q> std::ops::Index<&Q> for JMap<K, V>
where
    K: Eq + Hash + Borrow<Q>,
    Q: Eq + Hash + ?Sized,
{
    type Output = V;
    fn index(&self, key: &Q) -> &V {
        &self.map[key]
    }
}

/// An ordered set whose changes during an open batch can be undone.
#[derive(Debug, Clone)]
pub(crate) struct JSet<T> {
    set: BTreeSet<T>,
    /// The changes the open batch made, in order: `(value, true)` was inserted, `false` removed.
    log: Vec<(T, bool)>,
    open: bool,
}

impl<T> Default for JSet<T> {
    fn default() -> Self {
        JSet {
            set: BTreeSet::new(),
            log: Vec::new(),
            open: false,
        }
    }
}

impl<T: Ord + Clone> JSet<T> {
    pub(crate) fn insert(&mut self, value: T) -> bool {
        if self.open {
            if self.set.contains(&value) {
                return false;
            }
            self.log.push((value.clone(), true));
        }
        self.set.insert(value)
    }

    pub(crate) fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        match self.set.take(value) {
            Some(v) => {
                if self.open {
                    self.log.push((v, false));
                }
                true
            }
            None => false,
        }
    }

    pub(crate) fn pop_first(&mut self) -> Option<T> {
        let v = self.set.pop_first()?;
        if self.open {
            self.log.push((v.clone(), false));
        }
        Some(v)
    }

    /// Empties the set; only outside a batch (a restore is not undone).
    pub(crate) fn clear(&mut self) {
        assert!(!self.open, "a restore cannot be part of a batch");
        self.set.clear();
    }

    pub(crate) fn begin(&mut self) {
        assert!(self.log.is_empty(), "a batch opens with an empty journal");
        self.open = true;
    }

    pub(crate) fn commit(&mut self) {
        if self.log.capacity() > JOURNAL_KEPT_CAPACITY {
            self.log = Vec::new();
        } else {
            self.log.clear();
        }
        self.open = false;
    }

    pub(crate) fn rollback(&mut self) {
        while let Some((v, inserted)) = self.log.pop() {
            if inserted {
                self.set.remove(&v);
            } else {
                self.set.insert(v);
            }
        }
        self.open = false;
    }
}

impl<T> std::ops::Deref for JSet<T> {
    type Target = BTreeSet<T>;
    fn deref(&self) -> &BTreeSet<T> {
        &self.set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_map_is_as_before_the_batch() {
        let mut m: JMap<String, u32> = JMap::default();
        m.insert("a".into(), 1);
        m.insert("b".into(), 2);
        m.begin();
        *m.get_mut("a").unwrap() += 10;
        *m.get_mut("a").unwrap() += 10;
        m.remove("b");
        m.insert("c".into(), 3);
        *m.get_or_default("d") += 4;
        m.remove("c");
        m.rollback();
        let mut all: Vec<(String, u32)> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort();
        assert_eq!(all, vec![("a".into(), 1), ("b".into(), 2)]);
    }

    #[test]
    fn a_committed_map_keeps_the_batch_and_forgets_the_journal() {
        let mut m: JMap<String, u32> = JMap::default();
        m.begin();
        m.insert("a".into(), 1);
        m.commit();
        m.begin();
        m.rollback();
        assert_eq!(m.get("a"), Some(&1));
    }

    #[test]
    fn a_rolled_back_set_is_as_before_the_batch() {
        let mut s: JSet<u32> = JSet::default();
        s.insert(1);
        s.insert(5);
        s.begin();
        s.insert(2);
        s.remove(&1);
        assert_eq!(s.pop_first(), Some(2));
        s.insert(1);
        s.insert(7);
        s.remove(&5);
        s.rollback();
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![1, 5]);
    }
}
