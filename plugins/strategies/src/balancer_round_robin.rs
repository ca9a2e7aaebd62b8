//! Round-robin: partition `i` goes to member `i mod n` (members sorted by
//! id). Simple and perfectly balanced; moves many partitions on any change.

use tern_plugin_abi::{define_balancer_plugin, BalancerStrategy, Member};

/// Round-robin balancer.
pub struct RoundRobin;

impl BalancerStrategy for RoundRobin {
    fn assign(members: &[Member], current: &[u64]) -> Vec<u64> {
        (0..current.len())
            .map(|i| members[i % members.len()].id)
            .collect()
    }
}

/// Load-time self-check.
pub fn self_check() -> bool {
    let m = [Member { id: 1, weight: 1 }, Member { id: 2, weight: 1 }];
    RoundRobin::assign(&m, &[u64::MAX; 3]) == vec![1, 2, 1]
}

define_balancer_plugin!(RoundRobin, "round-robin", self_check);
