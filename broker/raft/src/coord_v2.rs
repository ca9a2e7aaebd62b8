//! The coordination state as brokers persisted it before Kafka consumer
//! groups: groups without `kafka`.
//!
//! **What it owns.** Only that layout and its conversion, so a broker opens
//! state and snapshots written by an older one ([`crate::meta_sm`] tries
//! the current layout first; [`crate::coord_v1`] holds the layout before
//! this one). **Must never** be written: new state is always the current
//! layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::coord::{CoordCounters, CoordState, GroupRecord, LockRecord, MemberRecord, OffsetMap};

/// A consumer group's record, layout before Kafka groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecordV2 {
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
    /// As [`GroupRecord::active_ms`].
    pub active_ms: u64,
}

/// All coordination state, layout before Kafka groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordStateV2 {
    /// As [`CoordState::clock_ms`].
    pub clock_ms: u64,
    /// As [`CoordState::term`].
    pub term: u64,
    /// As [`CoordState::locks`] (unchanged layout).
    pub locks: BTreeMap<String, LockRecord>,
    /// As [`CoordState::groups`].
    pub groups: BTreeMap<String, GroupRecordV2>,
    /// As [`CoordState::counters`] (unchanged layout).
    pub counters: CoordCounters,
}

impl From<CoordStateV2> for CoordState {
    /// Every group was a Tern group.
    fn from(old: CoordStateV2) -> CoordState {
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
                        active_ms: g.active_ms,
                        kafka: None,
                    };
                    (name, group)
                })
                .collect(),
            counters: old.counters,
        }
    }
}
