//! The coordination state as brokers persisted it before empty groups
//! expired: groups without `active_ms`, counters without `groups_expired`.
//!
//! **What it owns.** Only the old layout and its conversion, so a broker
//! opens state and snapshots written by an older one ([`crate::meta_sm`]
//! tries the current layout first). **Must never** be written: new state
//! is always the current layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::coord::{CoordCounters, CoordState, GroupRecord, LockRecord, MemberRecord, OffsetMap};

/// A consumer group's record, old layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecordV1 {
    /// As [`GroupRecord::generation`].
    pub generation: u64,
    /// As [`GroupRecord::members`].
    pub members: BTreeMap<u64, MemberRecord>,
    /// As [`GroupRecord::assignment`].
    pub assignment: BTreeMap<(String, u32), u64>,
    /// As [`GroupRecord::offsets`].
    pub offsets: OffsetMap,
    /// As [`GroupRecord::rebalances`].
    pub rebalances: u64,
}

/// The counters, old layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordCountersV1 {
    /// As [`CoordCounters::grants`].
    pub grants: u64,
    /// As [`CoordCounters::expirations`].
    pub expirations: u64,
    /// As [`CoordCounters::sessions_expired`].
    pub sessions_expired: u64,
}

/// All coordination state, old layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordStateV1 {
    /// As [`CoordState::clock_ms`].
    pub clock_ms: u64,
    /// As [`CoordState::term`].
    pub term: u64,
    /// As [`CoordState::locks`] (unchanged layout).
    pub locks: BTreeMap<String, LockRecord>,
    /// As [`CoordState::groups`].
    pub groups: BTreeMap<String, GroupRecordV1>,
    /// As [`CoordState::counters`].
    pub counters: CoordCountersV1,
}

impl From<CoordStateV1> for CoordState {
    /// Every group counts as active at the state's clock: an empty group's
    /// retention starts when the newer broker opens it, never earlier.
    fn from(old: CoordStateV1) -> CoordState {
        let active_ms = old.clock_ms;
        CoordState {
            clock_ms: old.clock_ms,
            term: old.term,
            locks: old.locks,
            groups: old
                .groups
                .into_iter()
                .map(|(name, g)| {
                    let group = GroupRecord {
                        generation: g.generation,
                        members: g.members,
                        assignment: g.assignment,
                        offsets: g.offsets,
                        rebalances: g.rebalances,
                        active_ms,
                        kafka: None,
                    };
                    (name, group)
                })
                .collect(),
            counters: CoordCounters {
                grants: old.counters.grants,
                expirations: old.counters.expirations,
                sessions_expired: old.counters.sessions_expired,
                groups_expired: 0,
                expiry_failures: 0,
            },
        }
    }
}
