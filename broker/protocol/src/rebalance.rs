//! Rebalance messages (api 20): start one (or plan it without starting),
//! ask for the last one's progress, cancel the running one. The plan itself
//! lives in the metadata group; these messages only describe it.
//!
//! A move is `topic string, partition u32, from u32 list, to u32 list,
//! done bool, bytes u64, failures u32, last_error string`.

use bytes::{BufMut, BytesMut};

use crate::error::DecodeError;
use crate::wire::{put_string, Reader};

/// A rebalance request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceRequest {
    /// Compute the placement of every partition for the current brokers
    /// (less `exclude`) and move the replicas whose placement changed.
    Start {
        /// Only compute and answer the plan.
        dry_run: bool,
        /// Most moves at once, cluster-wide (0: the broker's default).
        max_concurrent_moves: u32,
        /// Replication bandwidth to new replicas, bytes/s per sending
        /// broker (0: unthrottled).
        throttle_bytes_per_sec: u64,
        /// Brokers to leave out of the placement (about to be removed).
        exclude: Vec<u32>,
    },
    /// The last plan's progress.
    Status,
    /// Stop the running plan (moves under way finish).
    Cancel,
}

/// The state of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PlanState {
    /// No rebalance has run.
    None = 0,
    /// Moves are left.
    Running = 1,
    /// Every move is done.
    Finished = 2,
    /// Cancelled before every move was done.
    Cancelled = 3,
    /// Computed only (a dry run).
    DryRun = 4,
}

/// One partition's move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveInfo {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Replicas before.
    pub from: Vec<u32>,
    /// Replicas after (the first is the preferred leader).
    pub to: Vec<u32>,
    /// Finished.
    pub done: bool,
    /// Bytes copied to each new replica.
    pub bytes: u64,
    /// Failed attempts (each is retried).
    pub failures: u32,
    /// The last failure, empty if none.
    pub last_error: String,
}

/// A plan and its progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceResponse {
    /// Its id (0 when there is none).
    pub plan_id: u64,
    /// Its state.
    pub state: PlanState,
    /// Most moves at once.
    pub max_concurrent_moves: u32,
    /// Throttle, bytes/s (0: none).
    pub throttle_bytes_per_sec: u64,
    /// Replicas in the cluster's partitions (what a move count is out of).
    pub replicas_total: u64,
    /// The racks the answering broker knows, by broker (what placement
    /// uses; brokers without one are not listed).
    pub racks: Vec<(u32, String)>,
    /// The moves.
    pub moves: Vec<MoveInfo>,
}

const OP_START: u8 = 1;
const OP_STATUS: u8 = 2;
const OP_CANCEL: u8 = 3;

fn put_u32s(out: &mut BytesMut, v: &[u32]) {
    out.put_u32_le(v.len() as u32);
    for x in v {
        out.put_u32_le(*x);
    }
}

fn u32s(r: &mut Reader, field: &'static str) -> Result<Vec<u32>, DecodeError> {
    let n = r.list_len(field, 4)?;
    (0..n).map(|_| r.u32(field)).collect()
}

impl RebalanceRequest {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        match self {
            RebalanceRequest::Start {
                dry_run,
                max_concurrent_moves,
                throttle_bytes_per_sec,
                exclude,
            } => {
                out.put_u8(OP_START);
                out.put_u8(u8::from(*dry_run));
                out.put_u32_le(*max_concurrent_moves);
                out.put_u64_le(*throttle_bytes_per_sec);
                put_u32s(out, exclude);
            }
            RebalanceRequest::Status => out.put_u8(OP_STATUS),
            RebalanceRequest::Cancel => out.put_u8(OP_CANCEL),
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<RebalanceRequest, DecodeError> {
        Ok(match r.u8("rebalance op")? {
            OP_START => RebalanceRequest::Start {
                dry_run: r.bool("dry_run")?,
                max_concurrent_moves: r.u32("max_concurrent_moves")?,
                throttle_bytes_per_sec: r.u64("throttle_bytes_per_sec")?,
                exclude: u32s(r, "exclude")?,
            },
            OP_STATUS => RebalanceRequest::Status,
            OP_CANCEL => RebalanceRequest::Cancel,
            other => {
                return Err(DecodeError::Invalid {
                    field: "rebalance op",
                    detail: other.to_string(),
                })
            }
        })
    }
}

impl RebalanceResponse {
    pub(crate) fn encode(&self, out: &mut BytesMut) {
        out.put_u64_le(self.plan_id);
        out.put_u8(self.state as u8);
        out.put_u32_le(self.max_concurrent_moves);
        out.put_u64_le(self.throttle_bytes_per_sec);
        out.put_u64_le(self.replicas_total);
        out.put_u32_le(self.racks.len() as u32);
        for (broker, rack) in &self.racks {
            out.put_u32_le(*broker);
            put_string(out, rack);
        }
        out.put_u32_le(self.moves.len() as u32);
        for m in &self.moves {
            put_string(out, &m.topic);
            out.put_u32_le(m.partition);
            put_u32s(out, &m.from);
            put_u32s(out, &m.to);
            out.put_u8(u8::from(m.done));
            out.put_u64_le(m.bytes);
            out.put_u32_le(m.failures);
            put_string(out, &m.last_error);
        }
    }

    pub(crate) fn decode(r: &mut Reader) -> Result<RebalanceResponse, DecodeError> {
        let plan_id = r.u64("plan_id")?;
        let state = match r.u8("plan state")? {
            0 => PlanState::None,
            1 => PlanState::Running,
            2 => PlanState::Finished,
            3 => PlanState::Cancelled,
            4 => PlanState::DryRun,
            other => {
                return Err(DecodeError::Invalid {
                    field: "plan state",
                    detail: other.to_string(),
                })
            }
        };
        let max_concurrent_moves = r.u32("max_concurrent_moves")?;
        let throttle_bytes_per_sec = r.u64("throttle_bytes_per_sec")?;
        let replicas_total = r.u64("replicas_total")?;
        let n = r.list_len("racks", 4 + 2)?;
        let mut racks = Vec::with_capacity(n);
        for _ in 0..n {
            racks.push((r.u32("rack broker")?, r.string("rack")?));
        }
        let n = r.list_len("moves", 2 + 4 + 4 + 4 + 1 + 8 + 4 + 2)?;
        let mut moves = Vec::with_capacity(n);
        for _ in 0..n {
            moves.push(MoveInfo {
                topic: r.string("topic")?,
                partition: r.u32("partition")?,
                from: u32s(r, "from")?,
                to: u32s(r, "to")?,
                done: r.bool("done")?,
                bytes: r.u64("bytes")?,
                failures: r.u32("failures")?,
                last_error: r.string("last_error")?,
            });
        }
        Ok(RebalanceResponse {
            plan_id,
            state,
            max_concurrent_moves,
            throttle_bytes_per_sec,
            replicas_total,
            racks,
            moves,
        })
    }
}
