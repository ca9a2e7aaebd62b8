//! Preferred leaders: after a broker restarts, the partitions it led come
//! back to it, so a rolling restart does not leave one broker leading
//! everything.
//!
//! A partition's **preferred leader** is the first broker of its catalogue
//! replica list. Placement is rendezvous hashing with the highest score
//! first (`tern_raft::place_replicas`), so preferred leaders spread evenly
//! over the brokers, and a move (`tern topic reassign`) names the new one.
//!
//! openraft 0.9 has no leadership transfer, so the preferred replica takes
//! the partition by campaigning (`Raft::trigger().elect()`). That wins at
//! once when its log is as long as the leader's: a leader that has led for
//! longer than its lease grants the vote (a vote from a follower still
//! hearing the leader is refused, but the leader's own is enough with
//! three replicas). A campaign that cannot win unseats the leader for an
//! election timeout, which is why a broker campaigns only
//!
//! - for partitions it is the preferred leader of, led by another broker,
//!   where its replica is a voter and a follower;
//! - when the leader says (peer question `log_ends_at`) that its log is no
//!   longer than this replica's by more than [`PREFERRED_LAG_ENTRIES_MAX`]
//!   entries — a restarted broker finishes catching up first;
//! - when that has held for [`PREFERRED_HOLD`] (hysteresis: a broker that
//!   restarts again and again does not pull leadership back and forth),
//!   unless an operator asked for it (`tern cluster balance-leaders`);
//! - at most [`ELECTIONS_PER_SECOND_MAX`] per second over all partitions,
//!   and not twice for one partition within [`ELECTION_RETRY_MIN`].
//!
//! This module owns that decision — [`Planner`], pure: what the broker
//! observed goes in, the partitions to campaign for come out, unit-tested
//! without sockets — and the broker's half: one round of observing, asking
//! the leaders and campaigning ([`Broker::balance_leaders_round`]) and the
//! background loop that runs one every [`LEADER_BALANCE_INTERVAL`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_raft::NodeId;
use tracing::{info, warn, Instrument};

use super::{Broker, Partition};

/// How often each broker looks at the partitions it is the preferred
/// leader of.
pub const LEADER_BALANCE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a partition must have been ready to move back (led elsewhere,
/// this replica caught up) before the broker campaigns for it on its own.
pub const PREFERRED_HOLD: Duration = Duration::from_secs(5);
/// Least time between two campaigns for one partition: an election that
/// did not go this broker's way settles (lease plus election timeout)
/// before it tries again.
pub const ELECTION_RETRY_MIN: Duration = Duration::from_secs(4);
/// Most elections one broker starts per second, all partitions together:
/// a broker that is the preferred leader of a thousand partitions takes
/// them back over seconds instead of starting a thousand elections at once.
pub const ELECTIONS_PER_SECOND_MAX: u32 = 20;
/// Most entries the leader's log may be ahead of this replica's for it to
/// campaign (a longer leader log refuses the vote; a few entries in flight
/// under load are normal).
pub const PREFERRED_LAG_ENTRIES_MAX: u64 = 16;
/// After `tern cluster balance-leaders`, how long a broker keeps
/// campaigning without [`PREFERRED_HOLD`] (partitions over the per-second
/// limit, and retries of elections it lost) even with auto balance off.
pub const BALANCE_REQUEST_WINDOW: Duration = Duration::from_secs(30);
/// How long the broker waits for the outcome of one election to count it
/// as won.
const ELECTION_OUTCOME_WAIT: Duration = Duration::from_secs(5);
/// How long a leader may take to say how long its logs are.
const LOG_END_ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// A partition, by its Raft group id.
pub(crate) type GroupId = u64;

/// Decides which partitions to campaign for, from what the broker saw.
/// Pure: time is passed in.
#[derive(Debug)]
pub(crate) struct Planner {
    /// Since when each partition has been ready to move back, and from
    /// which leader (a new leader starts the hold again: a leader elected
    /// less than its lease ago would refuse the vote).
    ready_since: HashMap<GroupId, (NodeId, Instant)>,
    /// The last campaign for each partition (entries older than
    /// [`ELECTION_RETRY_MIN`] are dropped).
    last_campaign: HashMap<GroupId, Instant>,
    /// Elections that may still start this second (a token bucket refilled
    /// at [`ELECTIONS_PER_SECOND_MAX`] per second, holding at most that).
    tokens: f64,
    refilled_at: Instant,
    /// Campaign without the hold until then (an operator asked).
    requested_until: Option<Instant>,
}

impl Planner {
    pub(crate) fn new(now: Instant) -> Planner {
        Planner {
            ready_since: HashMap::new(),
            last_campaign: HashMap::new(),
            tokens: ELECTIONS_PER_SECOND_MAX as f64,
            refilled_at: now,
            requested_until: None,
        }
    }

    /// An operator asked for balance: skip the hold for a while.
    pub(crate) fn request(&mut self, now: Instant) {
        self.requested_until = Some(now + BALANCE_REQUEST_WINDOW);
    }

    /// Whether an operator's request is still being carried out.
    pub(crate) fn requested(&self, now: Instant) -> bool {
        self.requested_until.is_some_and(|t| now < t)
    }

    /// Given every partition that is ready to move back now and its
    /// current leader (`ready`, in a stable order), returns those to
    /// campaign for, and notes the campaigns. Without `auto` and outside a
    /// request, nothing.
    pub(crate) fn plan(
        &mut self,
        now: Instant,
        ready: &[(GroupId, NodeId)],
        auto: bool,
    ) -> Vec<GroupId> {
        let requested = self.requested(now);
        // A partition that stopped being ready, or changed leader, starts
        // its hold again.
        let leaders: HashMap<GroupId, NodeId> = ready.iter().copied().collect();
        self.ready_since
            .retain(|g, (leader, _)| leaders.get(g) == Some(leader));
        for (g, leader) in ready {
            self.ready_since.entry(*g).or_insert((*leader, now));
        }
        self.last_campaign
            .retain(|_, at| now.duration_since(*at) < ELECTION_RETRY_MIN);
        let elapsed = now.duration_since(self.refilled_at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * ELECTIONS_PER_SECOND_MAX as f64)
            .min(ELECTIONS_PER_SECOND_MAX as f64);
        self.refilled_at = now;
        if !auto && !requested {
            return Vec::new();
        }
        let mut chosen = Vec::new();
        for (g, _) in ready {
            if self.tokens < 1.0 {
                break;
            }
            let held = now.duration_since(self.ready_since[g].1) >= PREFERRED_HOLD;
            if (held || requested) && !self.last_campaign.contains_key(g) {
                self.tokens -= 1.0;
                self.last_campaign.insert(*g, now);
                chosen.push(*g);
            }
        }
        chosen
    }
}

/// What one round found among the partitions this broker is the preferred
/// leader of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BalanceReport {
    /// Partitions it is the preferred leader of but does not lead.
    pub not_preferred: u32,
    /// Elections it started in this round.
    pub elections: u32,
}

impl Broker {
    /// Runs [`Self::balance_leaders_round`] every
    /// [`LEADER_BALANCE_INTERVAL`] until `shutdown`.
    pub async fn balance_leaders(self: Arc<Self>, shutdown: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(LEADER_BALANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.balance_leaders_round(false).await;
        }
    }

    /// One look at the partitions this broker is the preferred leader of:
    /// counts those it does not lead, asks their leaders how far ahead they
    /// are, and campaigns where the [`Planner`] says so. `requested`: an
    /// operator asked (`BalanceLeaders`), so no hold, even with auto
    /// balance off. Rounds run one at a time.
    pub(crate) async fn balance_leaders_round(&self, requested: bool) -> BalanceReport {
        let mut planner = self.leader_balance.lock().await;
        let me = self.raft.node_id();
        if requested {
            planner.request(Instant::now());
        }
        let auto = self.config.auto_leader_balance;
        let mut report = BalanceReport::default();
        // Partitions led elsewhere whose replica here could take over, by
        // their leader.
        let mut candidates: BTreeMap<NodeId, Vec<Arc<Partition>>> = BTreeMap::new();
        for (entry, p) in self.all_partitions() {
            let preferred =
                entry.replicas.get(p.index as usize).and_then(|r| r.first()) == Some(&me);
            if !preferred {
                continue;
            }
            let metrics = p.raft.metrics();
            let m = metrics.borrow();
            let leader = m.current_leader;
            if leader == Some(me) {
                continue;
            }
            report.not_preferred += 1;
            // A learner (a replica being added) or a candidate cannot take
            // over; neither can anyone while the partition has no leader.
            let may_campaign = m.state == openraft::ServerState::Follower
                && m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == me);
            drop(m);
            if let (Some(leader), true) = (leader, may_campaign) {
                candidates.entry(leader).or_default().push(p);
            }
        }
        let mut ready: Vec<(GroupId, Arc<Partition>, NodeId)> = Vec::new();
        if auto || planner.requested(Instant::now()) {
            let asks = candidates
                .into_iter()
                .map(|(leader, partitions)| async move {
                    let groups: Vec<GroupId> = partitions.iter().map(|p| p.group()).collect();
                    let ends = self
                        .raft
                        .log_ends_at(leader, &groups, LOG_END_ASK_TIMEOUT)
                        .await;
                    (leader, partitions, ends)
                });
            for (leader, partitions, ends) in futures::future::join_all(asks).await {
                for (p, end) in partitions.into_iter().zip(ends) {
                    // This replica's log, read after the leader answered:
                    // entries the leader had then have usually arrived.
                    let mine = p.raft.metrics().borrow().last_log_index.unwrap_or(0);
                    if end.is_some_and(|end| end <= mine + PREFERRED_LAG_ENTRIES_MAX) {
                        ready.push((p.group(), p, leader));
                    }
                }
            }
        }
        ready.sort_by_key(|(g, _, _)| *g);
        let groups: Vec<(GroupId, NodeId)> = ready.iter().map(|(g, _, l)| (*g, *l)).collect();
        let chosen = planner.plan(Instant::now(), &groups, auto);
        drop(planner);
        for (g, p, leader) in ready {
            if !chosen.contains(&g) {
                continue;
            }
            let span =
                tracing::info_span!("preferred_leader", topic = %p.topic, partition = p.index);
            async {
                match p.raft.trigger().elect().await {
                    Ok(()) => {
                        info!(
                            leader,
                            requested, "campaigning to lead the partition as its preferred leader"
                        );
                        report.elections += 1;
                        self.metrics.preferred_leader_elections.inc();
                        tokio::spawn(count_won(
                            p.clone(),
                            me,
                            self.metrics.preferred_leader_elections_won.clone(),
                        ));
                    }
                    Err(e) => warn!(error = %e, "could not start an election"),
                }
            }
            .instrument(span)
            .await;
        }
        report
    }
}

/// Counts the election as won if this broker leads the partition within
/// [`ELECTION_OUTCOME_WAIT`].
async fn count_won(p: Arc<Partition>, me: NodeId, won: prometheus::IntCounter) {
    let mut metrics = p.raft.metrics();
    let leads = tokio::time::timeout(
        ELECTION_OUTCOME_WAIT,
        metrics.wait_for(|m| m.current_leader == Some(me)),
    )
    .await;
    if matches!(leads, Ok(Ok(_))) {
        won.inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_partition_moves_back_only_after_it_was_ready_for_the_hold() {
        let t0 = Instant::now();
        let mut p = Planner::new(t0);
        assert!(p.plan(t0, &[(7, 2)], true).is_empty());
        assert!(p
            .plan(t0 + PREFERRED_HOLD - SECOND, &[(7, 2)], true)
            .is_empty());
        assert_eq!(p.plan(t0 + PREFERRED_HOLD, &[(7, 2)], true), vec![7]);
    }

    #[test]
    fn a_partition_that_stops_being_ready_starts_its_hold_again() {
        let t0 = Instant::now();
        let mut p = Planner::new(t0);
        p.plan(t0, &[(7, 2)], true);
        // The broker restarted (or fell behind) meanwhile.
        p.plan(t0 + 3 * SECOND, &[], true);
        assert!(p.plan(t0 + 4 * SECOND, &[(7, 2)], true).is_empty());
        assert!(p
            .plan(t0 + PREFERRED_HOLD + SECOND, &[(7, 2)], true)
            .is_empty());
        assert_eq!(
            p.plan(t0 + 4 * SECOND + PREFERRED_HOLD, &[(7, 2)], true),
            vec![7]
        );
    }

    #[test]
    fn a_new_leader_starts_the_hold_again() {
        let t0 = Instant::now();
        let mut p = Planner::new(t0);
        p.plan(t0, &[(7, 2)], true);
        // Broker 3 took over from broker 2 meanwhile.
        assert!(p.plan(t0 + PREFERRED_HOLD, &[(7, 3)], true).is_empty());
        assert_eq!(p.plan(t0 + 2 * PREFERRED_HOLD, &[(7, 3)], true), vec![7]);
    }

    #[test]
    fn without_auto_balance_only_a_request_moves_partitions_and_without_the_hold() {
        let t0 = Instant::now();
        let mut p = Planner::new(t0);
        assert!(p
            .plan(t0 + 10 * PREFERRED_HOLD, &[(1, 2), (2, 2)], false)
            .is_empty());
        p.request(t0 + 10 * PREFERRED_HOLD);
        let later = t0 + 10 * PREFERRED_HOLD;
        assert_eq!(
            p.plan(later, &[(1, 2), (2, 2), (3, 2)], false),
            vec![1, 2, 3]
        );
        // The request lapses.
        let after = later + BALANCE_REQUEST_WINDOW;
        assert!(p.plan(after, &[(1, 2), (2, 2), (3, 2)], false).is_empty());
    }

    #[test]
    fn one_partition_is_not_campaigned_for_again_before_the_retry_pause() {
        let t0 = Instant::now();
        let mut p = Planner::new(t0);
        p.request(t0);
        assert_eq!(p.plan(t0, &[(5, 2)], false), vec![5]);
        assert!(p.plan(t0 + SECOND, &[(5, 2)], false).is_empty());
        assert_eq!(p.plan(t0 + ELECTION_RETRY_MIN, &[(5, 2)], false), vec![5]);
    }

    #[test]
    fn elections_are_limited_per_second_over_all_partitions() {
        let t0 = Instant::now();
        let mut p = Planner::new(t0);
        p.request(t0);
        let all: Vec<(GroupId, NodeId)> = (0..1_000).map(|g| (g, 2)).collect();
        let first = p.plan(t0, &all, false);
        assert_eq!(first.len(), ELECTIONS_PER_SECOND_MAX as usize);
        // Half a second later, half as many more; never a burst over the limit.
        let next = p.plan(t0 + SECOND / 2, &all, false);
        assert_eq!(next.len(), ELECTIONS_PER_SECOND_MAX as usize / 2);
        assert!(next.iter().all(|g| !first.contains(g)));
        let idle = p.plan(t0 + 100 * SECOND, &all, false);
        assert_eq!(idle.len(), 0, "the request lapsed");
        p.request(t0 + 100 * SECOND);
        let burst = p.plan(t0 + 100 * SECOND, &all, false);
        assert_eq!(burst.len(), ELECTIONS_PER_SECOND_MAX as usize);
    }
}
