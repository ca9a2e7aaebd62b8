//! Cluster rebalancing: a plan of replica moves, computed from the
//! consistent-hash placement for the current brokers, stored in the
//! metadata group and run by whichever broker leads each partition.
//!
//! Owns: computing a plan ([`Broker::plan_rebalance`]: only partitions
//! whose placement changed move, about 1/N when the N-th broker joins),
//! answering the `Rebalance` request, and the per-broker task
//! ([`run_rebalances`]) that runs the moves of the plan's window whose
//! partition this broker leads, through the same learner → joint-consensus
//! path as `tern topic reassign` (`RaftNode::move_partition`), and sets the
//! learner throttle while a plan runs.
//!
//! Because the plan is replicated state, nothing here remembers progress
//! in memory: after any failover (of the metadata leader or of a
//! partition's) the new leader finds the move still pending and runs it
//! again; a move is re-runnable from any point. It must never move a
//! partition that is not in the plan, nor run two moves of one plan for
//! one partition at once on this broker.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tern_protocol::rebalance::{MoveInfo, PlanState, RebalanceRequest, RebalanceResponse};
use tern_protocol::{ErrorCode, Response};
use tern_raft::{
    place_replicas_in_racks, placement_seed, Catalogue, Command, NodeId, PartitionMove,
    RebalancePlan, REBALANCE_CONCURRENT_MOVES_MAX, REBALANCE_MOVES_MAX,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::{Broker, Failure};

/// Moves at once when a request does not say.
pub const REBALANCE_CONCURRENT_MOVES_DEFAULT: u32 = 2;

/// Longest one move may take (its new replicas catching up, throttled or
/// not); a move that takes longer fails that attempt and is retried.
pub const MOVE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the executor looks at the plan without a catalogue change
/// (a partition's leadership moving here changes no catalogue).
const EXECUTOR_TICK: Duration = Duration::from_millis(500);

/// Pause after a failed attempt before this broker tries the move again.
const MOVE_RETRY_PAUSE: Duration = Duration::from_secs(2);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Broker {
    /// Answers a `Rebalance` request (authorized by the caller).
    pub(super) async fn rebalance(&self, request: RebalanceRequest) -> Result<Response, Failure> {
        match request {
            RebalanceRequest::Start {
                dry_run,
                max_concurrent_moves,
                throttle_bytes_per_sec,
                exclude,
            } => {
                let exclude: Vec<NodeId> = exclude.into_iter().map(u64::from).collect();
                let plan =
                    self.plan_rebalance(&exclude, max_concurrent_moves, throttle_bytes_per_sec)?;
                if dry_run {
                    return Ok(self.describe_rebalance(Some(&plan), true));
                }
                self.start_rebalance(plan.clone()).await?;
                Ok(self.describe_rebalance(Some(&plan), false))
            }
            RebalanceRequest::Status => {
                let plan = self.raft.catalogue().borrow().rebalance.clone();
                Ok(self.describe_rebalance(plan.as_ref(), false))
            }
            RebalanceRequest::Cancel => {
                let plan = self.raft.catalogue().borrow().rebalance.clone();
                match plan.filter(RebalancePlan::running) {
                    Some(p) => {
                        self.catalogue_write(Command::CancelRebalance { plan_id: p.id })
                            .await?;
                        info!(target: "tern::security", plan = p.id, "rebalance cancelled");
                        let now = self.raft.catalogue().borrow().rebalance.clone();
                        Ok(self.describe_rebalance(now.as_ref(), false))
                    }
                    None => Err(Failure::new(
                        ErrorCode::InvalidRequest,
                        "no rebalance is running",
                    )),
                }
            }
        }
    }

    /// Stores `plan` in the metadata group (refused while another runs);
    /// every broker's executor picks it up from there.
    async fn start_rebalance(&self, plan: RebalancePlan) -> Result<(), Failure> {
        let (id, moves) = (plan.id, plan.moves.len());
        self.catalogue_write(Command::StartRebalance(plan)).await?;
        info!(plan = id, moves, "rebalance started");
        Ok(())
    }

    /// After broker `joined` joined (with `auto_rebalance`): a plan for the
    /// new membership, superseding a running one (its moves under way
    /// finish; the new plan starts from the catalogue as it is).
    pub(super) async fn rebalance_after_join(&self, joined: NodeId) {
        // The membership change was committed by the metadata leader; this
        // broker's view may apply it a moment later.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !self.raft.voters().contains(&joined) {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    joined,
                    "auto rebalance: the new broker is not a voter here yet; not started"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let running = self
            .raft
            .catalogue()
            .borrow()
            .rebalance
            .clone()
            .filter(RebalancePlan::running);
        if let Some(p) = running {
            if let Err(e) = self
                .catalogue_write(Command::CancelRebalance { plan_id: p.id })
                .await
            {
                warn!(error = %e.message, "auto rebalance: could not supersede the running plan");
                return;
            }
        }
        let started = match self.plan_rebalance(&[], 0, 0) {
            Ok(plan) if plan.moves.is_empty() => {
                info!("auto rebalance: every replica is already placed");
                return;
            }
            Ok(plan) => self.start_rebalance(plan).await,
            Err(e) => Err(e),
        };
        if let Err(e) = started {
            warn!(error = %e.message, "auto rebalance did not start");
        }
    }

    /// The moves that bring every partition to its placement on the
    /// current brokers less `exclude`: only partitions whose set of
    /// replicas changes are listed, in topic and partition order.
    pub(super) fn plan_rebalance(
        &self,
        exclude: &[NodeId],
        max_concurrent_moves: u32,
        throttle_bytes_per_sec: u64,
    ) -> Result<RebalancePlan, Failure> {
        let voters = self.raft.voters();
        if let Some(unknown) = exclude.iter().find(|e| !voters.contains(e)) {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                format!("broker {unknown} is not in the cluster (brokers: {voters:?})"),
            ));
        }
        let brokers: Vec<NodeId> = voters
            .iter()
            .copied()
            .filter(|b| !exclude.contains(b))
            .collect();
        if brokers.is_empty() {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                "excluding every broker leaves nowhere to place replicas",
            ));
        }
        if max_concurrent_moves > REBALANCE_CONCURRENT_MOVES_MAX {
            return Err(Failure::new(
                ErrorCode::InvalidRequest,
                format!(
                    "at most {REBALANCE_CONCURRENT_MOVES_MAX} moves at once \
                     (rebalance_concurrent_moves_max)"
                ),
            ));
        }
        let catalogue = self.raft.catalogue().borrow().clone();
        let moves = planned_moves(&catalogue, &brokers);
        if moves.len() > REBALANCE_MOVES_MAX {
            return Err(Failure::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{} moves; a plan holds at most {REBALANCE_MOVES_MAX} (rebalance_moves_max)",
                    moves.len()
                ),
            ));
        }
        Ok(RebalancePlan {
            id: now_ms(),
            max_concurrent_moves: if max_concurrent_moves == 0 {
                REBALANCE_CONCURRENT_MOVES_DEFAULT
            } else {
                max_concurrent_moves
            },
            throttle_bytes_per_sec,
            excluded: exclude.to_vec(),
            moves,
            cancelled: false,
        })
    }

    fn describe_rebalance(&self, plan: Option<&RebalancePlan>, dry_run: bool) -> Response {
        let catalogue = self.raft.catalogue().borrow().clone();
        let replicas_total = catalogue
            .topics
            .values()
            .flat_map(|t| t.replicas.iter())
            .map(|r| r.len() as u64)
            .sum();
        let racks: Vec<(u32, String)> = catalogue
            .racks
            .iter()
            .map(|(b, r)| (*b as u32, r.clone()))
            .collect();
        let Some(plan) = plan else {
            return Response::Rebalance(RebalanceResponse {
                plan_id: 0,
                state: PlanState::None,
                max_concurrent_moves: 0,
                throttle_bytes_per_sec: 0,
                replicas_total,
                racks,
                moves: Vec::new(),
            });
        };
        let state = if dry_run {
            PlanState::DryRun
        } else if plan.running() {
            PlanState::Running
        } else if plan.moves.iter().all(|m| m.done) {
            PlanState::Finished
        } else {
            PlanState::Cancelled
        };
        let ids = |v: &[NodeId]| v.iter().map(|n| *n as u32).collect();
        Response::Rebalance(RebalanceResponse {
            plan_id: plan.id,
            state,
            max_concurrent_moves: plan.max_concurrent_moves,
            throttle_bytes_per_sec: plan.throttle_bytes_per_sec,
            replicas_total,
            racks,
            moves: plan
                .moves
                .iter()
                .map(|m| MoveInfo {
                    topic: m.topic.clone(),
                    partition: m.partition,
                    from: ids(&m.from),
                    to: ids(&m.to),
                    done: m.done,
                    bytes: m.bytes,
                    failures: m.failures,
                    last_error: m.last_error.clone().unwrap_or_default(),
                })
                .collect(),
        })
    }
}

/// The moves of a plan for `brokers`: each partition placed by rendezvous
/// hashing within racks, as at creation; listed when its replica set
/// changes.
fn planned_moves(catalogue: &Catalogue, brokers: &[NodeId]) -> Vec<PartitionMove> {
    let mut moves = Vec::new();
    for topic in catalogue.topics.values() {
        let seed = placement_seed(&topic.name);
        let rf = (topic.settings.replication_factor.max(1) as usize).min(brokers.len());
        for (p, current) in topic.replicas.iter().enumerate() {
            let target = place_replicas_in_racks(seed, p as u32, brokers, &catalogue.racks, rf);
            let now: BTreeSet<&NodeId> = current.iter().collect();
            let then: BTreeSet<&NodeId> = target.iter().collect();
            if now != then {
                moves.push(PartitionMove {
                    topic: topic.name.clone(),
                    topic_id: topic.id,
                    partition: p as u32,
                    from: current.clone(),
                    to: target,
                    done: false,
                    bytes: 0,
                    failures: 0,
                    last_error: None,
                });
            }
        }
    }
    moves
}

/// Runs, on this broker, the moves of the running plan's window whose
/// partition it leads; keeps the learner throttle at the plan's rate.
pub(crate) async fn run_rebalances(broker: Weak<Broker>, shutdown: CancellationToken) {
    let Some(mut catalogue) = broker.upgrade().map(|b| b.raft.catalogue()) else {
        return;
    };
    let running: Arc<Mutex<HashSet<(u64, usize)>>> = Arc::default();
    loop {
        let Some(b) = broker.upgrade() else { return };
        let plan = catalogue
            .borrow_and_update()
            .rebalance
            .clone()
            .filter(RebalancePlan::running);
        let rate = plan.as_ref().map_or(0, |p| p.throttle_bytes_per_sec);
        let throttle = b.raft.transport().learner_throttle();
        if throttle.rate() != rate {
            info!(
                bytes_per_sec = rate,
                "replication to learners throttled (0: not)"
            );
            throttle.set_rate(rate);
        }
        let pending = plan
            .as_ref()
            .map_or(0, |p| p.moves.iter().filter(|m| !m.done).count());
        b.metrics.rebalance_moves_pending.set(pending as i64);
        if let Some(plan) = plan {
            start_window(&b, &plan, &running);
        }
        drop(b);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = catalogue.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(EXECUTOR_TICK) => {}
        }
    }
}

/// Spawns the window's moves that this broker should run and is not
/// running yet.
fn start_window(
    broker: &Arc<Broker>,
    plan: &RebalancePlan,
    running: &Arc<Mutex<HashSet<(u64, usize)>>>,
) {
    let me = broker.raft.node_id();
    for index in plan.window() {
        let m = &plan.moves[index];
        let key = (plan.id, index);
        if running.lock().expect("running moves lock").contains(&key) {
            continue;
        }
        let entry = broker.topic(&m.topic).map(|t| t.entry.clone());
        let Some(entry) = entry.filter(|e| e.id == m.topic_id) else {
            // Deleted (or re-created) since planned: nothing to move. The
            // metadata leader marks it done, once.
            if broker.raft.meta().metrics().borrow().current_leader == Some(me) {
                running.lock().expect("running moves lock").insert(key);
                let (b, running) = (broker.clone(), running.clone());
                tokio::spawn(async move {
                    report(&b, key, 0, None).await;
                    running.lock().expect("running moves lock").remove(&key);
                });
            }
            continue;
        };
        let Ok(partition) = broker.partition(&m.topic, m.partition) else {
            continue;
        };
        if partition.raft.metrics().borrow().current_leader != Some(me) {
            continue;
        }
        running.lock().expect("running moves lock").insert(key);
        let (b, running, target) = (broker.clone(), running.clone(), m.to.clone());
        let span = tracing::info_span!("rebalance_move", plan = plan.id, index, topic = %m.topic, partition = m.partition);
        tokio::spawn(
            async move {
                let moved = b
                    .raft
                    .move_partition(
                        &partition.raft,
                        &entry,
                        partition.index,
                        target.clone(),
                        MOVE_ATTEMPT_TIMEOUT,
                    )
                    .await;
                b.reconcile().await;
                match moved {
                    Ok(()) => {
                        info!(?target, "partition moved");
                        b.metrics.rebalance_moves.with_label_values(&["done"]).inc();
                        report(&b, key, partition.log.size_bytes(), None).await;
                    }
                    Err(e) => {
                        warn!(error = %e, "partition move failed; it will be retried");
                        b.metrics
                            .rebalance_moves
                            .with_label_values(&["failed"])
                            .inc();
                        report(&b, key, 0, Some(e.to_string())).await;
                        tokio::time::sleep(MOVE_RETRY_PAUSE).await;
                    }
                }
                running.lock().expect("running moves lock").remove(&key);
            }
            .instrument(span),
        );
    }
}

/// Records a move's outcome in the plan (done, or one more failure).
async fn report(
    broker: &Broker,
    (plan_id, index): (u64, usize),
    bytes: u64,
    error: Option<String>,
) {
    let command = Command::RebalanceMove {
        plan_id,
        index: index as u32,
        bytes,
        error,
    };
    if let Err(e) = broker.catalogue_write(command).await {
        // The next attempt (here or on another leader) reports again.
        warn!(plan_id, index, error = %e.message, "could not record a move's outcome");
    }
}
