//! Sticky: every member gets `floor(P/n)` or `ceil(P/n)` partitions, and a
//! partition keeps its current owner whenever that owner is still a member
//! with room, so a membership change moves as few partitions as possible.

use std::collections::HashMap;

use tern_plugin_abi::{define_balancer_plugin, BalancerStrategy, Member, UNOWNED};

/// Sticky balancer.
pub struct Sticky;

impl BalancerStrategy for Sticky {
    fn assign(members: &[Member], current: &[u64]) -> Vec<u64> {
        let n = members.len();
        let p = current.len();
        let mut owned: HashMap<u64, usize> = members.iter().map(|m| (m.id, 0)).collect();
        for owner in current {
            if let Some(c) = owned.get_mut(owner) {
                *c += 1;
            }
        }
        // The extra partitions (P mod n) go to the members that own most now,
        // so they have to give up the least. Ties by id: deterministic.
        let mut order: Vec<&Member> = members.iter().collect();
        order.sort_by_key(|m| (std::cmp::Reverse(owned[&m.id]), m.id));
        let quota: HashMap<u64, usize> = order
            .iter()
            .enumerate()
            .map(|(i, m)| (m.id, p / n + usize::from(i < p % n)))
            .collect();
        let mut load: HashMap<u64, usize> = members.iter().map(|m| (m.id, 0)).collect();
        let mut out = vec![UNOWNED; p];
        for (i, owner) in current.iter().enumerate() {
            if let Some(l) = load.get_mut(owner) {
                if *l < quota[owner] {
                    *l += 1;
                    out[i] = *owner;
                }
            }
        }
        let mut room = order.iter().map(|m| m.id).cycle();
        for slot in out.iter_mut().filter(|o| **o == UNOWNED) {
            loop {
                let id = room.next().expect("cycle is infinite");
                if load[&id] < quota[&id] {
                    *load.get_mut(&id).expect("member") += 1;
                    *slot = id;
                    break;
                }
            }
        }
        out
    }
}

/// Load-time self-check: adding a member moves only what it must take.
pub fn self_check() -> bool {
    let two = [Member { id: 1, weight: 1 }, Member { id: 2, weight: 1 }];
    let three = [two[0], two[1], Member { id: 3, weight: 1 }];
    let a = Sticky::assign(&two, &[UNOWNED; 6]);
    let b = Sticky::assign(&three, &a);
    let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    moved == 2 && b.iter().filter(|o| **o == 3).count() == 2
}

define_balancer_plugin!(Sticky, "sticky", self_check);
