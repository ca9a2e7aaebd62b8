//! The state machine of a partition group: applies committed `Append`
//! entries to the partition's [`PartitionLog`] (which assigns offsets), and
//! keeps the idempotent-producer state.
//!
//! **Invariants:** applying is deterministic — every replica assigns the
//! same offsets and makes the same duplicate decisions, because both depend
//! only on the log and on state that is itself part of the applied state
//! (persisted atomically with the index by [`PartitionLog::apply`]). This
//! module never writes record data: the data is the Raft entry.

use std::collections::{BTreeMap, VecDeque};
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, Snapshot, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};
use tern_protocol::record::next_sequence;
use tern_protocol::{BatchView, ErrorCode};
use tern_storage::{AppendedBatch, ApplyBatch, PartitionLog};

use crate::log_store::blocking;
use crate::types::{
    Command, CommandResponse, Entry, LogId, NodeId, PrebuiltSnapshot, RaftStorageError,
    StoredMembership, TernRaft,
};

/// Batches remembered per producer for de-duplicating retries (a producer
/// has at most this many batches in flight per partition).
pub const PRODUCER_WINDOW: usize = 64;
/// Producers remembered per partition; the least recently active is
/// forgotten first (its late retries are then refused, never duplicated).
pub const PRODUCERS_MAX: usize = 10_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProducerState {
    /// `(last sequence, base_offset)` of the newest batches, oldest first
    /// (a batch's last sequence is its base sequence unless its sequences
    /// count records: `BatchView::last_sequence`).
    recent: VecDeque<(i32, u64)>,
    /// Raft index of the last batch (for forgetting idle producers).
    last_index: u64,
}

/// What a partition state machine persists with every apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SmState {
    applied: Option<LogId>,
    membership: StoredMembership,
    producers: BTreeMap<i64, ProducerState>,
    log_end: u64,
}

/// What a partition snapshot carries: the state machine's state and, when
/// sent to a replica behind the purge point, every retained batch up to the
/// snapshot (`(base_offset, raft_index, bytes)`). A snapshot built only to
/// let Raft purge its log carries no batches; the data is read when a
/// replica actually needs it ([`RaftStateMachine::get_current_snapshot`]).
#[derive(Debug, Serialize, Deserialize)]
struct PartitionSnapshot {
    state: SmState,
    batches: Vec<(u64, u64, bytes::Bytes)>,
}

impl SmState {
    /// Decides whether a batch of a producer is new, a retry of a committed
    /// one (answered with its original offset), too old to tell, or ahead of
    /// a batch of the same producer that is not stored yet.
    ///
    /// A known producer's batches are accepted only in sequence (each one
    /// the successor of the last stored one): a batch that overtook an
    /// earlier one (sent to a new leader while the earlier one failed on the
    /// old, say) is refused with the retriable `OutOfOrderSequence`, so a
    /// producer's batches are stored in the order it sealed them whatever
    /// happens to its connections. An unknown producer (new, or forgotten
    /// after [`PRODUCERS_MAX`]) may start at any sequence.
    fn dedup(&self, producer_id: i64, first: i32, last: i32) -> Option<CommandResponse> {
        if producer_id < 0 || first < 0 {
            return None;
        }
        let p = self.producers.get(&producer_id)?;
        // A retry carries the same span: its last sequence identifies it.
        if let Some((_, offset)) = p.recent.iter().find(|(s, _)| *s == last) {
            return Some(CommandResponse::Appended {
                base_offset: *offset,
                duplicate: true,
            });
        }
        let &(previous, _) = p.recent.back()?;
        if first == next_sequence(previous) {
            return None;
        }
        Some(if first <= previous {
            CommandResponse::Rejected {
                code: ErrorCode::DuplicateSequence as u16,
                message: format!(
                    "producer {producer_id} sequence {first} is older than the de-duplication window"
                ),
            }
        } else {
            CommandResponse::Rejected {
                code: ErrorCode::OutOfOrderSequence as u16,
                message: format!(
                    "producer {producer_id} sequence {first} arrived before sequence {}; retry after it",
                    next_sequence(previous)
                ),
            }
        })
    }

    fn remember(&mut self, producer_id: i64, sequence: i32, base_offset: u64, index: u64) {
        if producer_id < 0 || sequence < 0 {
            return;
        }
        let p = self.producers.entry(producer_id).or_default();
        p.recent.push_back((sequence, base_offset));
        while p.recent.len() > PRODUCER_WINDOW {
            p.recent.pop_front();
        }
        p.last_index = index;
        if self.producers.len() > PRODUCERS_MAX {
            let idle = self
                .producers
                .iter()
                .min_by_key(|(_, p)| p.last_index)
                .map(|(id, _)| *id);
            if let Some(id) = idle {
                self.producers.remove(&id);
            }
        }
    }
}

/// Called after each applied group of batches (wakes long polls, fills the
/// read cache).
pub type OnApply = Arc<dyn Fn(&[AppendedBatch], u64) + Send + Sync>;

fn sm_err(e: impl std::fmt::Display) -> RaftStorageError {
    RaftStorageError::IO {
        source: StorageIOError::write_state_machine(AnyError::error(e.to_string())),
    }
}

/// A partition's state machine.
pub struct PartitionStateMachine {
    log: Arc<PartitionLog>,
    state: SmState,
    on_apply: OnApply,
    on_snapshot_installed: Arc<dyn Fn() + Send + Sync>,
}

impl PartitionStateMachine {
    /// Restores the state machine from what `log` persisted.
    pub fn open(
        log: Arc<PartitionLog>,
        on_apply: OnApply,
        on_snapshot_installed: Arc<dyn Fn() + Send + Sync>,
    ) -> Result<Self, RaftStorageError> {
        let state = match log.sm_state().map_err(sm_err)? {
            Some(v) => bincode::deserialize(&v).map_err(sm_err)?,
            None => SmState::default(),
        };
        Ok(PartitionStateMachine {
            log,
            state,
            on_apply,
            on_snapshot_installed,
        })
    }

    fn snapshot_now(&self, with_batches: bool) -> Result<Snapshot<TernRaft>, RaftStorageError> {
        let batches = match (with_batches, self.state.applied) {
            (true, Some(applied)) => {
                let log = self.log.clone();
                blocking(move || log.batches_upto(applied.index)).map_err(sm_err)?
            }
            _ => Vec::new(),
        };
        let data = bincode::serialize(&PartitionSnapshot {
            state: self.state.clone(),
            batches,
        })
        .map_err(sm_err)?;
        let last = self.state.applied;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.state.membership.clone(),
                snapshot_id: format!("{}-{}", self.log.group(), last.map_or(0, |l| l.index)),
            },
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TernRaft> for PartitionStateMachine {
    type SnapshotBuilder = PrebuiltSnapshot;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        Ok((self.state.applied, self.state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let mut batches = Vec::new();
        let mut next = self.log.log_end();
        for entry in entries {
            self.state.applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::Done
                }
                EntryPayload::Normal(Command::Append(bytes)) => {
                    match BatchView::check_crc(bytes.clone()) {
                        Err(e) => CommandResponse::Rejected {
                            code: ErrorCode::CorruptBatch as u16,
                            message: e.to_string(),
                        },
                        Ok(view) => {
                            let (pid, first, last) = (
                                view.producer_id(),
                                view.base_sequence(),
                                view.last_sequence(),
                            );
                            match self.state.dedup(pid, first, last) {
                                Some(r) => r,
                                None => {
                                    let base_offset = next;
                                    next += view.record_count() as u64;
                                    self.state
                                        .remember(pid, last, base_offset, entry.log_id.index);
                                    batches.push(ApplyBatch {
                                        raft_index: entry.log_id.index,
                                        base_offset,
                                        bytes,
                                    });
                                    CommandResponse::Appended {
                                        base_offset,
                                        duplicate: false,
                                    }
                                }
                            }
                        }
                    }
                }
                EntryPayload::Normal(other) => CommandResponse::Rejected {
                    code: ErrorCode::InvalidRequest as u16,
                    message: format!("not a partition command: {other:?}"),
                },
            };
            responses.push(response);
        }
        self.state.log_end = next;
        let state = bincode::serialize(&self.state).map_err(sm_err)?;
        let log = self.log.clone();
        let appended = blocking(move || log.apply(batches, &state)).map_err(sm_err)?;
        (self.on_apply)(&appended, self.log.log_end());
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PrebuiltSnapshot(self.snapshot_now(false))
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let snapshot: PartitionSnapshot =
            bincode::deserialize(snapshot.get_ref()).map_err(sm_err)?;
        let mut state = snapshot.state;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        let log_start = snapshot
            .batches
            .first()
            .map_or(state.log_end, |(base, _, _)| *base);
        let bytes = bincode::serialize(&state).map_err(sm_err)?;
        let log = self.log.clone();
        let (upto, end, batches) = (
            meta.last_log_id.map_or(0, |l| l.index),
            state.log_end,
            snapshot.batches,
        );
        blocking(move || log.install(upto, log_start, end, batches, &bytes)).map_err(sm_err)?;
        self.state = state;
        (self.on_snapshot_installed)();
        (self.on_apply)(&[], self.log.log_end());
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TernRaft>>, RaftStorageError> {
        if self.state.applied.is_none() {
            return Ok(None);
        }
        self.snapshot_now(true).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(r: Option<CommandResponse>) -> Option<u16> {
        match r {
            Some(CommandResponse::Rejected { code, .. }) => Some(code),
            Some(CommandResponse::Appended { .. }) => Some(0),
            _ => None,
        }
    }

    #[test]
    fn a_known_producer_is_accepted_only_in_sequence() {
        let mut st = SmState::default();
        // An unknown producer may start anywhere.
        assert_eq!(code(st.dedup(7, 5, 5)), None);
        st.remember(7, 5, 100, 1);
        // The successor is new; a retry of a stored batch is answered with
        // its offset; a batch that skips ahead is refused, retriably.
        assert_eq!(code(st.dedup(7, 6, 6)), None);
        assert!(matches!(
            st.dedup(7, 5, 5),
            Some(CommandResponse::Appended {
                base_offset: 100,
                duplicate: true
            })
        ));
        let skipped = code(st.dedup(7, 7, 7)).expect("refused");
        assert_eq!(skipped, ErrorCode::OutOfOrderSequence as u16);
        assert!(ErrorCode::from_u16(skipped).is_retriable());
        // Once the missing batch is stored, the one that overtook it is next.
        st.remember(7, 6, 110, 2);
        assert_eq!(code(st.dedup(7, 7, 7)), None);
        // Older than the window: refused as possibly stored.
        for seq in 7..7 + PRODUCER_WINDOW as i32 {
            st.remember(7, seq, 200 + seq as u64, 3 + seq as u64);
        }
        assert_eq!(
            code(st.dedup(7, 5, 5)),
            Some(ErrorCode::DuplicateSequence as u16)
        );
        // Batches without a producer id are never de-duplicated.
        assert_eq!(code(st.dedup(-1, -1, -1)), None);
    }

    #[test]
    fn sequences_wrap_to_zero_after_the_largest() {
        let mut st = SmState::default();
        st.remember(9, i32::MAX, 0, 1);
        assert_eq!(next_sequence(i32::MAX), 0);
        assert_eq!(code(st.dedup(9, 0, 0)), None);
        assert_eq!(
            code(st.dedup(9, 1, 1)),
            Some(ErrorCode::DuplicateSequence as u16),
            "a wrapped sequence that skips ahead is indistinguishable from an old one"
        );
    }

    /// Kafka-style batches number records: after records 0..=4 (one batch)
    /// the next batch starts at 5; a retry of the first is found by its span.
    #[test]
    fn batches_numbering_records_follow_on_from_their_last_record() {
        let mut st = SmState::default();
        assert_eq!(code(st.dedup(3, 0, 4)), None);
        st.remember(3, 4, 0, 1);
        assert_eq!(code(st.dedup(3, 5, 9)), None);
        assert!(matches!(
            st.dedup(3, 0, 4),
            Some(CommandResponse::Appended {
                base_offset: 0,
                duplicate: true
            })
        ));
        assert_eq!(
            code(st.dedup(3, 7, 9)),
            Some(ErrorCode::OutOfOrderSequence as u16)
        );
    }
}
