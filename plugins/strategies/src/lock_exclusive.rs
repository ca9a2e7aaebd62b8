//! Exclusive lease: one holder at a time; waiters are granted strictly in
//! arrival order, one at a time (no herd). A holder that acquires again
//! renews its lease (keepalive) and keeps its token. An expired lease frees
//! the lock for the next waiter. Every grant's fencing token is the host's
//! log index of the deciding event, so tokens only grow.

use std::collections::VecDeque;

use tern_plugin_abi::{define_lock_plugin, Grant, LockStrategy, LOCK_EXCLUSIVE};

/// Exclusive lease lock.
#[derive(Default)]
pub struct Exclusive {
    holder: Option<Grant>,
    waiters: VecDeque<(u64, u64)>,
}

impl Exclusive {
    fn grant_next(&mut self, now_ms: u64, token: u64, grants: &mut Vec<Grant>) {
        if self.holder.is_none() {
            if let Some((owner, lease_ms)) = self.waiters.pop_front() {
                let g = Grant {
                    owner,
                    token,
                    expires_ms: now_ms.saturating_add(lease_ms),
                    mode: LOCK_EXCLUSIVE,
                };
                self.holder = Some(g);
                grants.push(g);
            }
        }
    }
}

impl LockStrategy for Exclusive {
    fn acquire(
        &mut self,
        owner: u64,
        _mode: u32,
        lease_ms: u64,
        now_ms: u64,
        token: u64,
        grants: &mut Vec<Grant>,
    ) -> bool {
        self.expire(now_ms, token, grants);
        if let Some(h) = &mut self.holder {
            if h.owner == owner {
                h.expires_ms = now_ms.saturating_add(lease_ms);
                return true;
            }
        }
        if !self.waiters.iter().any(|(o, _)| *o == owner) {
            self.waiters.push_back((owner, lease_ms));
        }
        self.grant_next(now_ms, token, grants);
        self.holder.is_some_and(|h| h.owner == owner)
    }

    fn release(&mut self, owner: u64, now_ms: u64, token: u64, grants: &mut Vec<Grant>) {
        if self.holder.is_some_and(|h| h.owner == owner) {
            self.holder = None;
        }
        self.waiters.retain(|(o, _)| *o != owner);
        self.grant_next(now_ms, token, grants);
    }

    fn expire(&mut self, now_ms: u64, token: u64, grants: &mut Vec<Grant>) {
        if self.holder.is_some_and(|h| h.expires_ms <= now_ms) {
            self.holder = None;
        }
        self.grant_next(now_ms, token, grants);
    }

    fn holders(&self) -> Vec<Grant> {
        self.holder.into_iter().collect()
    }
}

/// Load-time self-check: FIFO hand-over with growing tokens.
pub fn self_check() -> bool {
    let mut l = Exclusive::default();
    let mut g = Vec::new();
    let a = l.acquire(1, LOCK_EXCLUSIVE, 100, 0, 1, &mut g);
    let b = l.acquire(2, LOCK_EXCLUSIVE, 100, 1, 2, &mut g);
    l.release(1, 2, 3, &mut g);
    a && !b && g.len() == 2 && g[1].owner == 2 && g[1].token > g[0].token
}

define_lock_plugin!(Exclusive, "exclusive", self_check);
