//! [`ByteLru`]: a least-recently-used map bounded by total bytes, the one LRU shared by the
//! memory and disk stores, the memory action cache and the worker's file cache.

use std::hash::Hash;

use lru::LruCache;

/// Entries keyed by `K`, each with a cost in bytes; the total stays within a budget.
#[derive(Debug)]
pub struct ByteLru<K: Hash + Eq, V> {
    entries: LruCache<K, (u64, V), foldhash::fast::RandomState>,
    bytes: u64,
    budget: u64,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> ByteLru<K, V> {
    /// An empty map holding at most `budget` bytes (by the costs given on insertion).
    pub fn new(budget: u64) -> Self {
        Self {
            entries: LruCache::unbounded_with_hasher(foldhash::fast::RandomState::default()),
            bytes: 0,
            budget,
            evicted: 0,
        }
    }

    /// The byte budget.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// The bytes held, the budget and the bytes evicted, as a store reports them.
    pub fn usage(&self) -> crate::StoreUsage {
        crate::StoreUsage {
            used_bytes: self.bytes,
            limit_bytes: self.budget,
            evicted_bytes: self.evicted,
        }
    }

    /// The total cost of the entries evicted to stay within the budget, ever.
    pub fn evicted_bytes(&self) -> u64 {
        self.evicted
    }

    /// The total cost of the entries held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks up and marks as recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(_, v)| v)
    }

    /// Looks up for a change and marks as recently used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    /// Whether the key is present; marks it as recently used.
    pub fn touch(&mut self, key: &K) -> bool {
        self.entries.get(key).is_some()
    }

    /// Inserts or replaces, then evicts least recently used entries (never the new one) until
    /// the total fits. Returns what was replaced or evicted.
    pub fn insert(&mut self, key: K, cost: u64, value: V) -> Vec<(K, V)> {
        let mut removed = Vec::new();
        if let Some((old_cost, old)) = self.entries.put(key.clone(), (cost, value)) {
            self.bytes -= old_cost;
            removed.push((key.clone(), old));
        }
        self.bytes += cost;
        while self.bytes > self.budget {
            match self.entries.peek_lru() {
                Some((k, _)) if *k == key => break,
                Some(_) => {}
                None => break,
            }
            if let Some((k, (c, v))) = self.entries.pop_lru() {
                self.bytes -= c;
                self.evicted += c;
                removed.push((k, v));
            }
        }
        removed
    }

    /// Adds an entry as the most recently used one without evicting; rebuilding an index inserts
    /// entries oldest first and then calls [`evict_to_budget`](Self::evict_to_budget).
    pub fn insert_unbounded(&mut self, key: K, cost: u64, value: V) {
        if let Some((old_cost, _)) = self.entries.put(key, (cost, value)) {
            self.bytes -= old_cost;
        }
        self.bytes += cost;
    }

    /// Evicts least recently used entries until the total fits.
    pub fn evict_to_budget(&mut self) -> Vec<(K, V)> {
        let mut removed = Vec::new();
        while self.bytes > self.budget {
            let Some((k, (c, v))) = self.entries.pop_lru() else {
                break;
            };
            self.bytes -= c;
            self.evicted += c;
            removed.push((k, v));
        }
        removed
    }

    /// Every key, without changing their order of use.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.entries.iter().map(|(k, _)| k)
    }

    /// Removes an entry, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (cost, v) = self.entries.pop(key)?;
        self.bytes -= cost;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recent_within_budget() {
        let mut idx = ByteLru::new(10);
        assert!(idx.insert("a", 4, ()).is_empty());
        assert!(idx.insert("b", 4, ()).is_empty());
        assert!(idx.touch(&"a"));
        let evicted: Vec<_> = idx.insert("c", 4, ()).into_iter().map(|(k, _)| k).collect();
        assert_eq!(evicted, vec!["b"]);
        assert_eq!(idx.bytes(), 8);
        // An entry larger than the budget stays alone rather than evicting itself.
        let evicted = idx.insert("huge", 20, ());
        assert_eq!(evicted.len(), 2);
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.remove(&"huge"), Some(()));
        assert_eq!(idx.bytes(), 0);
    }
}
