//! S3-FIFO (Yang et al., SOSP 2023): a small probationary FIFO (10 % of the
//! bytes), a main FIFO, and a ghost FIFO of recently evicted keys. New
//! batches enter the small queue; only those hit again (or remembered by the
//! ghost) reach the main queue, so a one-time scan of old data cannot flush
//! the hot tail out of the cache.

use std::collections::{HashMap, VecDeque};

use tern_plugin_abi::{define_cache_plugin, Admission, CacheStrategy};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

struct Entry {
    size: u64,
    freq: u8,
    queue: Queue,
    generation: u64,
}

/// S3-FIFO policy.
pub struct S3Fifo {
    capacity: u64,
    small_target: u64,
    small_used: u64,
    main_used: u64,
    generation: u64,
    entries: HashMap<u64, Entry>,
    small: VecDeque<(u64, u64)>,
    main: VecDeque<(u64, u64)>,
    ghost: VecDeque<u64>,
    ghost_set: HashMap<u64, u32>,
}

impl S3Fifo {
    fn ghost_limit(&self) -> usize {
        self.entries.len().max(64)
    }

    fn remember(&mut self, key: u64) {
        self.ghost.push_back(key);
        *self.ghost_set.entry(key).or_insert(0) += 1;
        while self.ghost.len() > self.ghost_limit() {
            let old = self.ghost.pop_front().expect("non-empty");
            if let Some(n) = self.ghost_set.get_mut(&old) {
                *n -= 1;
                if *n == 0 {
                    self.ghost_set.remove(&old);
                }
            }
        }
    }

    fn live(&self, key: u64, generation: u64, queue: Queue) -> bool {
        self.entries
            .get(&key)
            .is_some_and(|e| e.generation == generation && e.queue == queue)
    }

    /// Evicts one entry; returns the evicted key, or None if only moves happened.
    fn evict_one(&mut self) -> Option<Option<u64>> {
        if self.small_used > self.small_target || self.main.is_empty() {
            let (key, generation) = self.small.pop_front()?;
            if !self.live(key, generation, Queue::Small) {
                return Some(None);
            }
            let e = self.entries.get_mut(&key).expect("live");
            self.small_used -= e.size;
            if e.freq > 0 {
                e.freq = 0;
                e.queue = Queue::Main;
                self.main_used += e.size;
                self.main.push_back((key, generation));
                Some(None)
            } else {
                self.entries.remove(&key);
                self.remember(key);
                Some(Some(key))
            }
        } else {
            let (key, generation) = self.main.pop_front()?;
            if !self.live(key, generation, Queue::Main) {
                return Some(None);
            }
            let e = self.entries.get_mut(&key).expect("live");
            if e.freq > 0 {
                e.freq -= 1;
                self.main.push_back((key, generation));
                Some(None)
            } else {
                self.main_used -= e.size;
                self.entries.remove(&key);
                Some(Some(key))
            }
        }
    }
}

impl CacheStrategy for S3Fifo {
    fn new(capacity: u64) -> Self {
        S3Fifo {
            capacity,
            small_target: capacity / 10,
            small_used: 0,
            main_used: 0,
            generation: 0,
            entries: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashMap::new(),
        }
    }

    fn on_hit(&mut self, key: u64) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.freq = (e.freq + 1).min(3);
        }
    }

    fn admit(&mut self, key: u64, size: u64, evict: &mut Vec<u64>, max_evict: usize) -> Admission {
        if size > self.capacity {
            return Admission::Rejected;
        }
        self.remove(key);
        while self.small_used + self.main_used + size > self.capacity {
            if evict.len() >= max_evict {
                return Admission::Pending;
            }
            match self.evict_one() {
                Some(Some(victim)) => evict.push(victim),
                Some(None) => {}
                None => break,
            }
        }
        self.generation += 1;
        let queue = if self.ghost_set.contains_key(&key) {
            Queue::Main
        } else {
            Queue::Small
        };
        match queue {
            Queue::Small => {
                self.small_used += size;
                self.small.push_back((key, self.generation));
            }
            Queue::Main => {
                self.main_used += size;
                self.main.push_back((key, self.generation));
            }
        }
        self.entries.insert(
            key,
            Entry {
                size,
                freq: 0,
                queue,
                generation: self.generation,
            },
        );
        Admission::Admitted
    }

    fn remove(&mut self, key: u64) {
        if let Some(e) = self.entries.remove(&key) {
            match e.queue {
                Queue::Small => self.small_used -= e.size,
                Queue::Main => self.main_used -= e.size,
            }
        }
    }
}

/// Load-time self-check: a re-used batch survives a scan of new ones.
pub fn self_check() -> bool {
    let mut c = S3Fifo::new(100);
    let mut ev = Vec::new();
    c.admit(1, 10, &mut ev, 1000);
    c.on_hit(1);
    for k in 2..50 {
        c.admit(k, 10, &mut ev, 1000);
        c.on_hit(1);
    }
    !ev.contains(&1) && c.small_used + c.main_used <= 100
}

define_cache_plugin!(S3Fifo, "s3-fifo", self_check);
