//! [`ByteLru`]: a least-recently-used map bounded by total bytes, the one LRU shared by the
//! memory and disk stores, the memory action cache and the worker's file cache.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

use lru::LruCache;

type Hasher = foldhash::fast::RandomState;

/// Entries keyed by `K`, each with a cost in bytes; the total stays within a budget.
///
/// An entry may be *kept* until a time ([`keep`](Self::keep)): eviction passes it over until
/// [`release`](Self::release) is called with a later time, and [`fits`](Self::fits) tells a
/// caller whether the entries that may go leave room for a new one. Times are the caller's
/// (seconds since the epoch for the disk store); nothing here reads a clock.
#[derive(Debug)]
pub struct ByteLru<K: Hash + Eq, V> {
    /// The entries eviction may take, least recently used first.
    entries: LruCache<K, (u64, V), Hasher>,
    /// The entries kept: cost, value and the time they are kept until.
    kept: HashMap<K, (u64, V, u64), Hasher>,
    /// When each keep ends, in the order the keeps were made; an entry whose keep was extended
    /// since is skipped when its old time comes.
    expiries: VecDeque<(u64, K)>,
    bytes: u64,
    kept_bytes: u64,
    budget: u64,
    evicted: u64,
}

impl<K: Hash + Eq + Clone, V> ByteLru<K, V> {
    /// An empty map holding at most `budget` bytes (by the costs given on insertion).
    pub fn new(budget: u64) -> Self {
        Self {
            entries: LruCache::unbounded_with_hasher(Hasher::default()),
            kept: HashMap::with_hasher(Hasher::default()),
            expiries: VecDeque::new(),
            bytes: 0,
            kept_bytes: 0,
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
            referenced_bytes: self.kept_bytes,
            ..Default::default()
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

    /// Changes the budget, evicting least recently used entries (never kept ones) to fit it;
    /// returns what was evicted.
    pub fn set_budget(&mut self, budget: u64) -> Vec<(K, V)> {
        self.budget = budget;
        self.evict_to_budget()
    }

    /// The total cost of the entries kept.
    pub fn kept_bytes(&self) -> u64 {
        self.kept_bytes
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.entries.len() + self.kept.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.kept.is_empty()
    }

    /// Looks up and marks as recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.get_mut(key).map(|v| &*v)
    }

    /// Looks up for a change and marks as recently used.
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if let Some((_, v, _)) = self.kept.get_mut(key) {
            return Some(v);
        }
        self.entries.get_mut(key).map(|(_, v)| v)
    }

    /// Whether the key is present; marks it as recently used.
    pub fn touch(&mut self, key: &K) -> bool {
        self.get_mut(key).is_some()
    }

    /// The time `key` is kept until, if it is kept.
    pub fn kept_until(&self, key: &K) -> Option<u64> {
        self.kept.get(key).map(|(_, _, until)| *until)
    }

    /// Keeps `key` from eviction until `until` (or later, if it is kept longer already) and
    /// marks it as used; `false` if it is absent. Keeps are best made with times that never go
    /// down from one call to the next (now plus a constant): a keep made with an earlier time
    /// than one made before it ends no sooner than that one.
    pub fn keep(&mut self, key: &K, until: u64) -> bool {
        if let Some((_, _, old)) = self.kept.get_mut(key) {
            if until > *old {
                *old = until;
                self.expiries.push_back((until, key.clone()));
                self.compact_expiries();
            }
            return true;
        }
        let Some((cost, value)) = self.entries.pop(key) else {
            return false;
        };
        self.kept_bytes += cost;
        self.kept.insert(key.clone(), (cost, value, until));
        self.expiries.push_back((until, key.clone()));
        self.compact_expiries();
        true
    }

    /// Extended keeps leave stale times behind: past twice the keeps, starts the queue afresh.
    fn compact_expiries(&mut self) {
        if self.expiries.len() > 2 * self.kept.len() + 1024 {
            let mut fresh: Vec<_> = self
                .kept
                .iter()
                .map(|(k, (_, _, u))| (*u, k.clone()))
                .collect();
            fresh.sort_by_key(|(u, _)| *u);
            self.expiries = fresh.into();
        }
    }

    /// Ends the keeps due at or before `now`: those entries may be evicted again, as the most
    /// recently used ones.
    pub fn release(&mut self, now: u64) {
        while let Some((until, _)) = self.expiries.front() {
            if *until > now {
                break;
            }
            let Some((until, key)) = self.expiries.pop_front() else {
                break;
            };
            // A keep extended since has a later entry of its own.
            if self.kept.get(&key).is_some_and(|(_, _, u)| *u == until)
                && let Some((cost, value, _)) = self.kept.remove(&key)
            {
                self.kept_bytes -= cost;
                self.entries.put(key, (cost, value));
            }
        }
    }

    /// Whether an entry of `cost` under `key` would fit once every entry not kept (but `key`'s
    /// own) were evicted: `false` means kept entries fill the budget.
    pub fn fits(&self, key: &K, cost: u64) -> bool {
        let own = self.kept.get(key).map_or(0, |(c, _, _)| *c);
        self.kept_bytes - own + cost <= self.budget
    }

    /// Inserts or replaces, then evicts least recently used entries (never the new one) until
    /// the total fits. Returns what was replaced or evicted.
    /// Kept entries are never evicted; a kept entry replaced stays kept.
    pub fn insert(&mut self, key: K, cost: u64, value: V) -> Vec<(K, V)> {
        let mut removed = Vec::new();
        if let Some((old_cost, old, _)) = self.kept.get_mut(&key) {
            let old = std::mem::replace(old, value);
            self.bytes = self.bytes - *old_cost + cost;
            self.kept_bytes = self.kept_bytes - *old_cost + cost;
            *old_cost = cost;
            removed.push((key.clone(), old));
            removed.extend(self.evict_to_budget());
            return removed;
        }
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
    /// entries oldest first and then calls [`evict_to_budget`](Self::evict_to_budget). Returns
    /// the value replaced, if any.
    pub fn insert_unbounded(&mut self, key: K, cost: u64, value: V) -> Option<V> {
        let mut replaced = None;
        if let Some((old_cost, old, _)) = self.kept.remove(&key) {
            self.bytes -= old_cost;
            self.kept_bytes -= old_cost;
            replaced = Some(old);
        }
        if let Some((old_cost, old)) = self.entries.put(key, (cost, value)) {
            self.bytes -= old_cost;
            replaced = Some(old);
        }
        self.bytes += cost;
        replaced
    }

    /// Looks up without marking as used.
    pub fn peek(&self, key: &K) -> Option<&V> {
        if let Some((_, v, _)) = self.kept.get(key) {
            return Some(v);
        }
        self.entries.peek(key).map(|(_, v)| v)
    }

    /// Looks up for a change without marking as used.
    pub fn peek_mut(&mut self, key: &K) -> Option<&mut V> {
        if let Some((_, v, _)) = self.kept.get_mut(key) {
            return Some(v);
        }
        self.entries.peek_mut(key).map(|(_, v)| v)
    }

    /// Every entry, without changing their order of use.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        let kept = self.kept.iter().map(|(k, (_, v, _))| (k, v));
        kept.chain(self.entries.iter().map(|(k, (_, v))| (k, v)))
    }

    /// Evicts least recently used entries, never kept ones, until the total fits or only kept
    /// entries are left.
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
        self.kept.keys().chain(self.entries.iter().map(|(k, _)| k))
    }

    /// Removes an entry, kept or not, returning its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        if let Some((cost, v, _)) = self.kept.remove(key) {
            self.bytes -= cost;
            self.kept_bytes -= cost;
            return Some(v);
        }
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

    #[test]
    fn kept_entries_are_passed_over_until_released() {
        let mut idx = ByteLru::new(10);
        idx.insert("a", 4, 'a');
        idx.insert("b", 4, 'b');
        assert!(idx.keep(&"a", 100));
        assert!(!idx.keep(&"absent", 100));
        assert_eq!(idx.kept_until(&"a"), Some(100));
        assert_eq!((idx.kept_bytes(), idx.usage().referenced_bytes), (4, 4));
        // "a" is the least recently used, but kept: "b" goes.
        let evicted: Vec<_> = idx
            .insert("c", 4, 'c')
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(evicted, vec!["b"]);
        assert_eq!(idx.get(&"a"), Some(&'a'));
        assert_eq!(idx.len(), 2);
        // Room for 6 more once "c" went, not for 7.
        assert!(idx.fits(&"d", 6));
        assert!(!idx.fits(&"d", 7));
        // A keep extended outlives its first time.
        assert!(idx.keep(&"c", 120));
        assert!(idx.keep(&"a", 200));
        assert!(idx.keep(&"a", 150), "an earlier time does not shorten it");
        assert!(!idx.fits(&"d", 3));
        idx.release(150);
        assert_eq!(idx.kept_until(&"a"), Some(200));
        assert_eq!(idx.kept_until(&"c"), None);
        assert_eq!(idx.kept_bytes(), 4);
        // Replacing a kept entry keeps it; removing it frees its bytes.
        idx.insert("a", 5, 'A');
        assert_eq!((idx.kept_bytes(), idx.bytes()), (5, 9));
        let keys: std::collections::HashSet<_> = idx.keys().copied().collect();
        assert_eq!(keys, ["a", "c"].into());
        idx.release(200);
        assert_eq!(idx.kept_bytes(), 0);
        assert_eq!(idx.remove(&"a"), Some('A'));
        assert_eq!((idx.bytes(), idx.len()), (4, 1));
        // Only kept entries left over the budget: nothing is evicted.
        let mut full = ByteLru::new(8);
        full.insert("x", 8, ());
        full.keep(&"x", 10);
        assert_eq!(full.evict_to_budget().len(), 0);
        assert_eq!(
            full.insert("y", 4, ()).len(),
            0,
            "the new entry is never evicted"
        );
        assert_eq!(full.bytes(), 12);
    }
}
