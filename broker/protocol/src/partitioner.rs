//! Key → partition routing by consistent hashing.
//!
//! A key is hashed with XXH3-64 (seed 0, a published, stable function) and the
//! hash is mapped to a bucket with Lamping & Veach's jump consistent hash. When
//! a topic grows from `n` to `n + 1` partitions, only ~`1 / (n + 1)` of keys
//! move, and those all move to the new partition. `hash % n` would move almost
//! all of them.
//!
//! **Invariant:** [`partition_for_key`] never changes for a given input. The
//! test vectors below pin it; a change here silently re-routes every keyed
//! record of every user, so treat a failing vector as a wire-format break.

/// Stable 64-bit hash of a record key.
pub fn key_hash(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// Jump consistent hash: maps `hash` to a bucket in `[0, buckets)`.
/// Returns 0 when `buckets` is 0 (callers reject zero-partition topics).
pub fn jump_consistent_hash(mut hash: u64, buckets: u32) -> u32 {
    if buckets == 0 {
        return 0;
    }
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets as i64 {
        b = j;
        hash = hash.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((hash >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

/// The partition of a keyed record in a topic of `partitions` partitions.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    jump_consistent_hash(key_hash(key), partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned outputs. If one of these fails, routing changed for real users.
    #[test]
    fn test_vectors_never_change() {
        assert_eq!(key_hash(b""), 0x2d06800538d394c2);
        assert_eq!(partition_for_key(b"", 1), 0);
        // Jump hash's own published behaviour on fixed hashes.
        assert_eq!(jump_consistent_hash(0, 1), 0);
        assert_eq!(jump_consistent_hash(1, 1), 0);
        let pinned: Vec<u32> = [b"user-1".as_slice(), b"user-2", b"user-3", b"a", b"b"]
            .iter()
            .map(|k| partition_for_key(k, 16))
            .collect();
        assert_eq!(pinned, PINNED_16);
    }

    const PINNED_16: [u32; 5] = [9, 6, 2, 14, 11];

    #[test]
    fn growing_a_topic_moves_about_one_in_n_plus_one_keys() {
        let keys: Vec<Vec<u8>> = (0..100_000)
            .map(|i| format!("key-{i}").into_bytes())
            .collect();
        for n in [1u32, 3, 8, 31] {
            let moved = keys
                .iter()
                .filter(|k| partition_for_key(k, n) != partition_for_key(k, n + 1))
                .count();
            let expected = keys.len() as f64 / (n + 1) as f64;
            let ratio = moved as f64 / expected;
            assert!(
                (0.9..1.1).contains(&ratio),
                "{n}->{}: moved {moved}, expected ~{expected:.0}",
                n + 1
            );
            // Every moved key lands on the new partition.
            assert!(keys
                .iter()
                .filter(|k| partition_for_key(k, n) != partition_for_key(k, n + 1))
                .all(|k| partition_for_key(k, n + 1) == n));
        }
    }

    /// What `tern topic add-partitions` relies on: growing from `n` to
    /// `n + k` partitions in one step moves about `k / (n + k)` of the keys
    /// (within ±35 %), and every key that moves goes to one of the `k` new
    /// partitions — never from one old partition to another, so the old
    /// partitions only lose keys and per-key order breaks only for keys
    /// that moved.
    #[test]
    fn growing_by_k_partitions_moves_about_k_in_n_plus_k_keys_all_to_new_ones() {
        let keys: Vec<Vec<u8>> = (0..50_000)
            .map(|i| format!("order-{i}").into_bytes())
            .collect();
        for (n, k) in [
            (1u32, 1u32),
            (1, 5),
            (3, 3),
            (3, 9),
            (6, 2),
            (8, 24),
            (31, 1),
            (100, 50),
        ] {
            let moved: Vec<&Vec<u8>> = keys
                .iter()
                .filter(|key| partition_for_key(key, n) != partition_for_key(key, n + k))
                .collect();
            let expected = keys.len() as f64 * k as f64 / (n + k) as f64;
            let ratio = moved.len() as f64 / expected;
            assert!(
                (0.65..=1.35).contains(&ratio),
                "{n}->{}: moved {}, expected ~{expected:.0}",
                n + k,
                moved.len()
            );
            for key in moved {
                let to = partition_for_key(key, n + k);
                assert!(
                    (n..n + k).contains(&to),
                    "{n}->{}: a key moved to old partition {to}",
                    n + k
                );
            }
        }
    }

    #[test]
    fn modulo_hashing_would_move_most_keys() {
        let keys = 10_000u64;
        let moved = (0..keys)
            .filter(|i| key_hash(&i.to_le_bytes()) % 8 != key_hash(&i.to_le_bytes()) % 9)
            .count();
        assert!(moved as f64 > 0.8 * keys as f64);
    }

    #[test]
    fn keys_spread_evenly() {
        let n = 12u32;
        let mut counts = vec![0u32; n as usize];
        for i in 0..120_000 {
            counts[partition_for_key(format!("k{i}").as_bytes(), n) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uneven: {c}");
        }
    }
}
