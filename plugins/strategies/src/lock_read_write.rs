//! Read-write: many shared holders or one exclusive holder. Requests queue
//! in arrival order; a new reader does not overtake a waiting writer, so
//! writers are never starved. Consecutive readers at the head of the queue
//! are granted together. Tokens are the host's log index of the event.

use std::collections::VecDeque;

use tern_plugin_abi::{define_lock_plugin, Grant, LockStrategy, LOCK_EXCLUSIVE, LOCK_SHARED};

/// Read-write lock.
#[derive(Default)]
pub struct ReadWrite {
    holders: Vec<Grant>,
    waiters: VecDeque<(u64, u32, u64)>,
}

impl ReadWrite {
    fn grant_waiters(&mut self, now_ms: u64, token: u64, grants: &mut Vec<Grant>) {
        while let Some(&(owner, mode, lease_ms)) = self.waiters.front() {
            let compatible = match mode {
                LOCK_SHARED => self.holders.iter().all(|h| h.mode == LOCK_SHARED),
                _ => self.holders.is_empty(),
            };
            if !compatible {
                break;
            }
            self.waiters.pop_front();
            let g = Grant {
                owner,
                token,
                expires_ms: now_ms.saturating_add(lease_ms),
                mode,
            };
            self.holders.push(g);
            grants.push(g);
            if mode == LOCK_EXCLUSIVE {
                break;
            }
        }
    }
}

impl LockStrategy for ReadWrite {
    fn acquire(
        &mut self,
        owner: u64,
        mode: u32,
        lease_ms: u64,
        now_ms: u64,
        token: u64,
        grants: &mut Vec<Grant>,
    ) -> bool {
        self.expire(now_ms, token, grants);
        if let Some(h) = self.holders.iter_mut().find(|h| h.owner == owner) {
            h.expires_ms = now_ms.saturating_add(lease_ms);
            return true;
        }
        if !self.waiters.iter().any(|(o, _, _)| *o == owner) {
            self.waiters.push_back((owner, mode, lease_ms));
        }
        self.grant_waiters(now_ms, token, grants);
        self.holders.iter().any(|h| h.owner == owner)
    }

    fn release(&mut self, owner: u64, now_ms: u64, token: u64, grants: &mut Vec<Grant>) {
        self.holders.retain(|h| h.owner != owner);
        self.waiters.retain(|(o, _, _)| *o != owner);
        self.grant_waiters(now_ms, token, grants);
    }

    fn expire(&mut self, now_ms: u64, token: u64, grants: &mut Vec<Grant>) {
        self.holders.retain(|h| h.expires_ms > now_ms);
        self.grant_waiters(now_ms, token, grants);
    }

    fn holders(&self) -> Vec<Grant> {
        self.holders.clone()
    }
}

/// Load-time self-check: readers share, a writer waits, a late reader queues behind it.
pub fn self_check() -> bool {
    let mut l = ReadWrite::default();
    let mut g = Vec::new();
    let r1 = l.acquire(1, LOCK_SHARED, 100, 0, 1, &mut g);
    let r2 = l.acquire(2, LOCK_SHARED, 100, 0, 2, &mut g);
    let w = l.acquire(3, LOCK_EXCLUSIVE, 100, 0, 3, &mut g);
    let r3 = l.acquire(4, LOCK_SHARED, 100, 0, 4, &mut g);
    r1 && r2 && !w && !r3
}

define_lock_plugin!(ReadWrite, "read-write", self_check);
