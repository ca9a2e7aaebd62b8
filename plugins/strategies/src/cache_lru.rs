//! LRU: evicts the least recently used batches until the new one fits.
//! Admits every batch no larger than the whole cache.

use std::collections::{BTreeMap, HashMap};

use tern_plugin_abi::{define_cache_plugin, Admission, CacheStrategy};

/// Least-recently-used policy.
pub struct Lru {
    capacity: u64,
    used: u64,
    tick: u64,
    /// key → (last use tick, size)
    entries: HashMap<u64, (u64, u64)>,
    /// last use tick → key, oldest first
    order: BTreeMap<u64, u64>,
}

impl CacheStrategy for Lru {
    fn new(capacity: u64) -> Self {
        Lru {
            capacity,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
        }
    }

    fn on_hit(&mut self, key: u64) {
        if let Some((t, _)) = self.entries.get_mut(&key) {
            self.order.remove(t);
            self.tick += 1;
            *t = self.tick;
            self.order.insert(self.tick, key);
        }
    }

    fn admit(&mut self, key: u64, size: u64, evict: &mut Vec<u64>, max_evict: usize) -> Admission {
        if size > self.capacity {
            return Admission::Rejected;
        }
        self.remove(key);
        while self.used + size > self.capacity {
            if evict.len() >= max_evict {
                return Admission::Pending;
            }
            let (_, victim) = self.order.pop_first().expect("used > 0 implies entries");
            let (_, s) = self
                .entries
                .remove(&victim)
                .expect("order and entries agree");
            self.used -= s;
            evict.push(victim);
        }
        self.tick += 1;
        self.entries.insert(key, (self.tick, size));
        self.order.insert(self.tick, key);
        self.used += size;
        Admission::Admitted
    }

    fn remove(&mut self, key: u64) {
        if let Some((t, s)) = self.entries.remove(&key) {
            self.order.remove(&t);
            self.used -= s;
        }
    }
}

/// Load-time self-check: the least recently used key goes first.
pub fn self_check() -> bool {
    let mut c = Lru::new(3);
    let mut ev = Vec::new();
    for k in 1..=3 {
        c.admit(k, 1, &mut ev, 8);
    }
    c.on_hit(1);
    c.admit(4, 1, &mut ev, 8) == Admission::Admitted && ev == vec![2]
}

define_cache_plugin!(Lru, "lru", self_check);
