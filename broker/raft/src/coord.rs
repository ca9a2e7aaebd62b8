//! Coordination state: named locks and consumer groups, applied by the
//! metadata group's state machine ([`crate::meta_sm`]).
//!
//! **What it owns.** The replicated records of every lock (holders with
//! their lease and fencing token, waiters in arrival order) and every
//! consumer group (members and their sessions, generation, assignment,
//! committed offsets), and the replicated clock they are judged by.
//!
//! **Time.** Nothing here reads a clock. The metadata leader stamps every
//! coordination command with its wall-clock time and term when it proposes
//! it; applying takes `clock = max(clock, stamp)`, so every replica judges
//! leases and sessions by the same, never-decreasing time. A command
//! stamped in a newer term than any before refreshes every lease and
//! session (the way etcd refreshes leases on a leader change): clients could
//! not reach anyone while there was no leader, and must not lose their locks
//! or group membership for it.
//!
//! **Plugins.** Lock semantics come from the lock plugin and assignments
//! from the balancer plugin ([`CoordPlugins`]). The host keeps the record;
//! for every command it rebuilds the plugin's state from the record
//! (holders, then waiters, in order), applies the one call, and reads the
//! holders back. A plugin's state is therefore a function of the record, so
//! a snapshot is just the record, and a replica restored from one decides
//! exactly like a replica that applied the whole history. The contract for
//! plugins: their decisions depend only on the calls made (no hidden
//! counters), which both bundled plugins meet.
//!
//! **Ownership.** Owner and member ids are public (`tern lock list`
//! shows them), so every lock holder, waiter and group member also carries
//! a [`Proof`]: the SHA-256 digest of the secret its client chose, and the
//! principal of the connection that acquired or joined. Renewing,
//! releasing, re-acquiring, heartbeating, committing and leaving under an
//! existing id must present the same proof (digests compared in constant
//! time), else the command is refused as if the id held nothing.
//!
//! **Limits.** Every record a client can create is bounded by a named
//! limit, checked here as the command applies, so every replica refuses
//! alike (`limit_exceeded`, the message naming the limit): [`LOCKS_MAX`],
//! [`LOCK_WAITERS_MAX`], [`GROUPS_MAX`], [`GROUP_MEMBERS_MAX`]. A renewal,
//! a re-acquisition or a re-join of an existing id is never refused by a
//! limit: only what would add a record.
//!
//! **Expiry is isolated.** A lock whose plugin call fails while a tick
//! expires it (e.g. a record from before [`LOCK_WAITERS_MAX`] with more
//! holders than the plugin ABI's buffer) is logged and counted, its
//! expired leases end all the same, and every other lock and group session
//! still expires.
//!
//! **Empty groups expire.** A group with no member and no commit or reset
//! for [`GROUP_RETENTION_MS`] of replicated time is removed with its
//! offsets (Kafka's `offsets.retention.minutes`, 7 days by default), so
//! groups made by resets or by consumers long gone do not pile up.
//!
//! **Must never:** read time or randomness, or decide anything from local
//! state that is not in the record — every replica must reach the same
//! state from the same commands.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use tern_plugin_abi::{Grant, Member, GRANTS_MAX, LOCK_EXCLUSIVE, LOCK_SHARED, UNOWNED};
use tern_protocol::ErrorCode;
use tracing::warn;

/// Most live locks (with a holder or a waiter) in the cluster.
pub const LOCKS_MAX: usize = 100_000;
/// Most holders and waiters of one lock together. For every command the
/// host rebuilds the lock in its plugin and reads all holders back through
/// the plugin ABI's output buffer of [`GRANTS_MAX`] grants: a lock with
/// more holders than that fails every call with `BUFFER_FULL` (a release
/// that grants every waiting reader at once returns them all), so holders
/// and waiters together stay below it.
pub const LOCK_WAITERS_MAX: usize = 1_000;
/// Most consumer groups (with members, or with committed offsets).
pub const GROUPS_MAX: usize = 10_000;
/// Most members of one consumer group.
pub const GROUP_MEMBERS_MAX: usize = 1_000;
/// How long a group with no member keeps its committed offsets after its
/// last member left or its last commit or reset (replicated clock): 7
/// days, Kafka's default `offsets.retention.minutes`.
pub const GROUP_RETENTION_MS: u64 = 7 * 24 * 3_600_000;
/// Most bytes one Kafka member brings to its group: what its join carries
/// (member, client and host ids, protocol names and metadata), and,
/// separately, the assignment its leader gives it. Real consumers send a
/// few KB; the whole coordination state is persisted with every apply, so
/// this stays far below a frame.
pub const KAFKA_MEMBER_BYTES_MAX: usize = 64 * 1024;
/// Most bytes of one Kafka group's members together (joins and
/// assignments, counted as for [`KAFKA_MEMBER_BYTES_MAX`]).
pub const KAFKA_GROUP_BYTES_MAX: usize = 1024 * 1024;

const _: () = assert!(LOCK_WAITERS_MAX < GRANTS_MAX);

/// The coordination limits, as `(name in refusal messages, metric label)`.
const LIMITS: [(&str, &str); 6] = [
    ("LOCKS_MAX", "locks_max"),
    ("LOCK_WAITERS_MAX", "lock_waiters_max"),
    ("GROUPS_MAX", "groups_max"),
    ("GROUP_MEMBERS_MAX", "group_members_max"),
    ("KAFKA_MEMBER_BYTES_MAX", "kafka_member_bytes_max"),
    ("KAFKA_GROUP_BYTES_MAX", "kafka_group_bytes_max"),
];

/// Every coordination limit's metric label (`tern_limit_refusals_total`).
pub const LIMIT_LABELS: [&str; 6] = [
    LIMITS[0].1,
    LIMITS[1].1,
    LIMITS[2].1,
    LIMITS[3].1,
    LIMITS[4].1,
    LIMITS[5].1,
];

/// The metric label of the coordination limit a `limit_exceeded` refusal
/// message names, if any (refusals cross the log as code and message).
pub fn limit_label(message: &str) -> Option<&'static str> {
    LIMITS
        .iter()
        .find(|(name, _)| message.contains(&format!("({name} = ")))
        .map(|(_, label)| *label)
}

fn limit_refusal(name: &str, max: usize, what: String) -> Refusal {
    refuse(ErrorCode::LimitExceeded, format!("{what} ({name} = {max})"))
}

/// The state of one lock as a plugin keeps it, rebuilt per command.
pub trait LockSemantics {
    /// `owner` asks for the lock (or renews it); returns whether it holds it.
    fn acquire(
        &mut self,
        owner: u64,
        mode: u32,
        lease_ms: u64,
        now_ms: u64,
        token: u64,
    ) -> Result<bool, String>;
    /// `owner` releases it or stops waiting.
    fn release(&mut self, owner: u64, now_ms: u64, token: u64) -> Result<(), String>;
    /// Leases ending at or before `now_ms` end.
    fn expire(&mut self, now_ms: u64, token: u64) -> Result<(), String>;
    /// Who holds it now.
    fn holders(&self) -> Result<Vec<Grant>, String>;
}

/// The strategies coordination runs (the loaded lock and balancer plugins).
pub trait CoordPlugins: Send + Sync {
    /// A new, free lock.
    fn new_lock(&self) -> Result<Box<dyn LockSemantics>, String>;
    /// New owner of every partition (`current[i]` is partition `i`'s owner
    /// now or [`UNOWNED`]); `members` is non-empty and sorted by id.
    fn assign(&self, members: &[Member], current: &[u64]) -> Result<Vec<u64>, String>;
}

/// Lock mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockMode {
    /// One holder.
    Exclusive,
    /// Many holders, where the plugin supports it (read-write).
    Shared,
}

impl LockMode {
    fn abi(self) -> u32 {
        match self {
            LockMode::Exclusive => LOCK_EXCLUSIVE,
            LockMode::Shared => LOCK_SHARED,
        }
    }

    fn from_abi(mode: u32) -> LockMode {
        if mode == LOCK_SHARED {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        }
    }
}

/// What a request must present to act as a lock owner or group member:
/// the SHA-256 digest of its secret (the secret itself is never stored nor
/// replicated) and the principal of its connection (`None`: anonymous).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// SHA-256 of the client's 128-bit secret.
    pub digest: [u8; 32],
    /// The proven principal of the connection, if any.
    pub principal: Option<String>,
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The digest is not a secret, but there is no reason to print it.
        f.debug_struct("Proof")
            .field("principal", &self.principal)
            .finish_non_exhaustive()
    }
}

impl Proof {
    /// Whether `presented` proves to be this holder: the same principal and
    /// the same digest, compared without an early exit (no timing hint of
    /// how much of a guess was right).
    pub fn admits(&self, presented: &Proof) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.digest.iter().zip(presented.digest.iter()) {
            diff |= a ^ b;
        }
        std::hint::black_box(diff) == 0 && self.principal == presented.principal
    }
}

/// Where a reset moves a group's offsets (resolved to numbers by the
/// broker before proposing, since only partition leaders know log ends).
pub type OffsetMap = BTreeMap<(String, u32), u64>;

/// A coordination command (inside [`crate::Command::Coord`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordOp {
    /// Acquire (or wait for) a lock.
    Acquire {
        /// Lock name.
        name: String,
        /// Caller-chosen owner id (one per acquisition).
        owner: u64,
        /// The acquisition's proof, kept with the holder or waiter.
        proof: Proof,
        /// Mode.
        mode: LockMode,
        /// Lease length.
        lease_ms: u64,
    },
    /// Renew a held lease.
    KeepAlive {
        /// Lock name.
        name: String,
        /// Holder.
        owner: u64,
        /// Must match the holder's.
        proof: Proof,
    },
    /// Release a lock or stop waiting for it.
    Release {
        /// Lock name.
        name: String,
        /// Holder or waiter.
        owner: u64,
        /// Must match the holder's or waiter's.
        proof: Proof,
    },
    /// Join (or re-join) a consumer group.
    Join {
        /// Group.
        group: String,
        /// Member id (chosen by the consumer).
        member: u64,
        /// The membership's proof (a re-join must present the same).
        proof: Proof,
        /// Topics it consumes.
        topics: Vec<String>,
        /// Removed after this long without a heartbeat.
        session_timeout_ms: u64,
    },
    /// A member is alive.
    Heartbeat {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// Must match the member's.
        proof: Proof,
    },
    /// A member leaves cleanly.
    Leave {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// Must match the member's.
        proof: Proof,
    },
    /// A member commits offsets of partitions it owns in `generation`.
    Commit {
        /// Group.
        group: String,
        /// Member.
        member: u64,
        /// Must match the member's.
        proof: Proof,
        /// Generation the member consumed in.
        generation: u64,
        /// Next offset to consume, per partition.
        offsets: Vec<(String, u32, u64)>,
    },
    /// Admin: set committed offsets of a group with no members.
    SetOffsets {
        /// Group.
        group: String,
        /// New offsets.
        offsets: Vec<(String, u32, u64)>,
    },
    /// Time passed: end expired leases and sessions.
    Tick,
    /// A Kafka consumer joins (or re-joins) a group (Kafka `JoinGroup`).
    KafkaJoin {
        /// Group.
        group: String,
        /// Member id, never empty (the broker makes one up for a client
        /// that sent none: `<client id>-<random>`).
        member_id: String,
        /// Kafka client id.
        client_id: String,
        /// Client address as the broker saw it.
        client_host: String,
        /// Protocol type (`consumer` for consumers); all members agree.
        protocol_type: String,
        /// Protocols it supports, most preferred first: (name, metadata).
        protocols: Vec<(String, Vec<u8>)>,
        /// Removed after this long without a heartbeat.
        session_timeout_ms: u64,
        /// Removed after a rebalance began and it did not re-join for this long.
        rebalance_timeout_ms: u64,
        /// The membership's proof (a re-join must present the same).
        proof: Proof,
    },
    /// A Kafka member asks for its assignment; the leader brings everyone's
    /// (Kafka `SyncGroup`).
    KafkaSync {
        /// Group.
        group: String,
        /// Member.
        member_id: String,
        /// Generation it joined.
        generation: i32,
        /// From the leader: (member id, assignment); others send none.
        assignments: Vec<(String, Vec<u8>)>,
        /// Must match the member's.
        proof: Proof,
    },
    /// A Kafka member is alive (Kafka `Heartbeat`).
    KafkaHeartbeat {
        /// Group.
        group: String,
        /// Member.
        member_id: String,
        /// Generation it consumes in.
        generation: i32,
        /// Must match the member's.
        proof: Proof,
    },
    /// Kafka members leave (Kafka `LeaveGroup`); each with its own proof.
    KafkaLeave {
        /// Group.
        group: String,
        /// (member id, its proof).
        members: Vec<(String, Proof)>,
    },
    /// A Kafka member commits offsets (Kafka `OffsetCommit`); generation
    /// -1 with an empty member id commits for a group with no member.
    KafkaCommit {
        /// Group.
        group: String,
        /// Member, or empty for a commit outside the group protocol.
        member_id: String,
        /// Generation it consumes in, or -1.
        generation: i32,
        /// Next offset to consume, per partition.
        offsets: Vec<(String, u32, u64)>,
        /// Must match the member's (ignored for a commit outside the group).
        proof: Proof,
    },
}

/// A coordination command's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CoordResult {
    /// The caller holds the lock.
    Granted {
        /// Fencing token.
        token: u64,
        /// Lease end, replicated clock.
        expires_ms: u64,
    },
    /// The caller waits for the lock.
    Waiting,
    /// Released (`was_holder`: it held it rather than waited).
    Released {
        /// Whether it held the lock.
        was_holder: bool,
    },
    /// Group state as one member sees it.
    Member {
        /// Current generation.
        generation: u64,
        /// Partitions it owns in that generation.
        assignment: Vec<(String, u32)>,
    },
    /// Done.
    Done,
    /// A Kafka member's join answer.
    KafkaJoined {
        /// Current generation.
        generation: i32,
        /// The protocol every member supports.
        protocol: String,
        /// The member that computes the assignment.
        leader: String,
        /// The caller's member id.
        member_id: String,
        /// To the leader only: every member (join order) with its metadata
        /// for `protocol`.
        members: Vec<(String, Vec<u8>)>,
    },
    /// A Kafka member's sync answer: its assignment, or `None` while the
    /// leader has not sent the generation's assignments yet.
    KafkaAssignment {
        /// The member's assignment bytes.
        assignment: Option<Vec<u8>>,
    },
    /// A Kafka group-protocol refusal the Kafka client must act on (an
    /// answer rather than a [`Refusal`], whose code crosses the log as a
    /// Tern wire code that has no such meanings).
    KafkaRefused {
        /// Which.
        refusal: KafkaRefusal,
        /// For humans.
        message: String,
    },
}

/// Why a Kafka group operation was refused, in the terms of Kafka's group
/// protocol (the Kafka listener maps each to the Kafka error of its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KafkaRefusal {
    /// No such member (left, expired, or a proof that does not match).
    UnknownMember,
    /// A generation the member cannot be in.
    IllegalGeneration,
    /// The group is rebalancing: join again.
    RebalanceInProgress,
    /// No protocol every member supports, another protocol type, or the
    /// group has native Tern members.
    InconsistentGroupProtocol,
}

/// One holder of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Owner id.
    pub owner: u64,
    /// Mode.
    pub mode: LockMode,
    /// Fencing token of its grant.
    pub token: u64,
    /// Lease end (replicated clock).
    pub expires_ms: u64,
    /// Lease length it renews to.
    pub lease_ms: u64,
    /// What renewing or releasing must present.
    pub proof: Proof,
}

/// One waiter of a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    /// Owner id.
    pub owner: u64,
    /// Mode.
    pub mode: LockMode,
    /// Lease it asked for.
    pub lease_ms: u64,
    /// When it started waiting (replicated clock).
    pub since_ms: u64,
    /// What cancelling the wait must present.
    pub proof: Proof,
}

/// A lock's replicated record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// Holders in grant order.
    pub holders: Vec<Holder>,
    /// Waiters in arrival order.
    pub waiters: Vec<Waiter>,
}

/// A consumer-group member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Topics it consumes.
    pub topics: Vec<String>,
    /// Session length.
    pub session_timeout_ms: u64,
    /// Last heartbeat (replicated clock).
    pub last_seen_ms: u64,
    /// What the member's later requests must present.
    pub proof: Proof,
}

/// A consumer group's replicated record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Bumped by every rebalance; commits of older generations are refused.
    pub generation: u64,
    /// Members by id.
    pub members: BTreeMap<u64, MemberRecord>,
    /// Owner of each partition in this generation.
    pub assignment: BTreeMap<(String, u32), u64>,
    /// Committed offsets (next offset to consume).
    pub offsets: OffsetMap,
    /// Rebalances so far.
    pub rebalances: u64,
    /// When a member last joined or left, or offsets were last committed
    /// or reset (replicated clock). A group with no member is removed
    /// [`GROUP_RETENTION_MS`] after it.
    pub active_ms: u64,
    /// The Kafka group-protocol state, for a group that Kafka consumers
    /// use (`members` is then empty: a group never has both kinds).
    pub kafka: Option<KafkaGroup>,
}

/// A Kafka consumer group's protocol state. Kafka assigns on the client
/// side: the broker picks a protocol and a leader, hands the leader every
/// member's metadata, and stores the leader's opaque assignments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaGroup {
    /// Protocol type every member joined with (`consumer`).
    pub protocol_type: String,
    /// The protocol of this generation (`None` with no member).
    pub protocol: Option<String>,
    /// The leader of this generation (`None` with no member).
    pub leader: Option<String>,
    /// Members by id.
    pub members: BTreeMap<String, KafkaMember>,
    /// When this generation began (replicated clock): members that have
    /// not joined it are removed their rebalance timeout later.
    pub rebalance_started_ms: u64,
}

/// A Kafka consumer-group member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KafkaMember {
    /// Kafka client id.
    pub client_id: String,
    /// Client address.
    pub client_host: String,
    /// Session length.
    pub session_timeout_ms: u64,
    /// How long it may take to re-join once a rebalance began.
    pub rebalance_timeout_ms: u64,
    /// Last join, sync, heartbeat or commit (replicated clock).
    pub last_seen_ms: u64,
    /// The last generation it was told of (by a join): below the group's,
    /// it has not joined this generation yet.
    pub generation: u64,
    /// Order of arrival: the token of the command that added it (the
    /// oldest member leads when the leader leaves; the first member's
    /// preference orders the protocols).
    pub joined: u64,
    /// Protocols it supports, most preferred first: (name, metadata).
    pub protocols: Vec<(String, Vec<u8>)>,
    /// Its assignment in this generation, once the leader sent them.
    pub assignment: Option<Vec<u8>>,
    /// What its later requests must present.
    pub proof: Proof,
}

impl KafkaMember {
    /// Bytes its join brings (counted against [`KAFKA_MEMBER_BYTES_MAX`]).
    fn join_bytes(&self, member_id: &str) -> usize {
        member_id.len()
            + self.client_id.len()
            + self.client_host.len()
            + self
                .protocols
                .iter()
                .map(|(n, m)| n.len() + m.len())
                .sum::<usize>()
    }

    fn bytes(&self, member_id: &str) -> usize {
        self.join_bytes(member_id) + self.assignment.as_ref().map_or(0, Vec::len)
    }
}

impl KafkaGroup {
    /// Kafka's name for the group's state: `Empty`, `PreparingRebalance`
    /// (a member has not joined this generation), `CompletingRebalance`
    /// (the leader has not sent the assignments) or `Stable`.
    pub fn state(&self, generation: u64) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.members.values().any(|m| m.generation < generation) {
            "PreparingRebalance"
        } else if self.members.values().any(|m| m.assignment.is_none()) {
            "CompletingRebalance"
        } else {
            "Stable"
        }
    }

    /// The first protocol, in the first-joined member's preference order,
    /// that every member supports.
    fn common_protocol(&self) -> Option<String> {
        let first = self.members.values().min_by_key(|m| m.joined)?;
        first
            .protocols
            .iter()
            .map(|(name, _)| name)
            .find(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == *name))
            })
            .cloned()
    }

    fn bytes(&self) -> usize {
        self.members.iter().map(|(id, m)| m.bytes(id)).sum()
    }
}

/// A Kafka generation as Kafka's protocol carries it (an `i32`; 2^31
/// rebalances of one group do not happen, but saturate rather than wrap).
pub fn kafka_generation(generation: u64) -> i32 {
    i32::try_from(generation).unwrap_or(i32::MAX)
}

impl GroupRecord {
    /// Whether the group has no member of either kind.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.kafka.as_ref().is_none_or(|k| k.members.is_empty())
    }

    /// Partitions `member` owns now.
    pub fn assigned_to(&self, member: u64) -> Vec<(String, u32)> {
        self.assignment
            .iter()
            .filter(|(_, m)| **m == member)
            .map(|(tp, _)| tp.clone())
            .collect()
    }
}

/// Counts since the cluster began (replicated, so every broker reports the
/// same values).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordCounters {
    /// Lock grants.
    pub grants: u64,
    /// Leases that ended without a release.
    pub expirations: u64,
    /// Group members removed because their session ended.
    pub sessions_expired: u64,
    /// Groups removed after [`GROUP_RETENTION_MS`] with no member.
    pub groups_expired: u64,
    /// Lock plugin or balancer failures while a tick expired leases and
    /// sessions, on this replica since it started (not replicated: it only
    /// feeds a metric, and decides nothing).
    #[serde(skip)]
    pub expiry_failures: u64,
}

/// All replicated coordination state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordState {
    /// Replicated clock (ms since the epoch, never decreasing).
    pub clock_ms: u64,
    /// Highest leader term that stamped a command.
    pub term: u64,
    /// Locks with a holder or a waiter.
    pub locks: BTreeMap<String, LockRecord>,
    /// Consumer groups (kept while they have members or offsets, and
    /// until [`GROUP_RETENTION_MS`] after their last activity).
    pub groups: BTreeMap<String, GroupRecord>,
    /// Counters.
    pub counters: CoordCounters,
}

/// Why a coordination command was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Wire error code.
    pub code: ErrorCode,
    /// For humans.
    pub message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

impl CoordState {
    /// The earliest time at which a [`CoordOp::Tick`] would change anything.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let leases = self
            .locks
            .values()
            .flat_map(|l| l.holders.iter().map(|h| h.expires_ms));
        let sessions = self.groups.values().flat_map(|g| {
            g.members
                .values()
                .map(|m| m.last_seen_ms.saturating_add(m.session_timeout_ms))
        });
        let kafka = self
            .groups
            .values()
            .filter_map(|g| Some((g.generation, g.kafka.as_ref()?)))
            .flat_map(|(generation, k)| {
                k.members
                    .values()
                    .map(move |m| kafka_member_deadline_ms(k, generation, m))
            });
        let retention = self
            .groups
            .values()
            .filter(|g| g.is_empty())
            .map(|g| g.active_ms.saturating_add(GROUP_RETENTION_MS));
        leases.chain(sessions).chain(kafka).chain(retention).min()
    }

    /// Applies one command at log index `index` (the fencing token of any
    /// grant it makes). `topics` gives partition counts of existing topics.
    pub fn apply(
        &mut self,
        plugins: Option<&dyn CoordPlugins>,
        index: u64,
        stamp_ms: u64,
        term: u64,
        op: CoordOp,
        topics: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<CoordResult, Refusal> {
        let plugins = plugins.ok_or_else(|| {
            refuse(
                ErrorCode::InvalidConfig,
                "coordination is not available: no lock/balancer plugin loaded",
            )
        })?;
        self.clock_ms = self.clock_ms.max(stamp_ms);
        if term > self.term {
            if self.term != 0 {
                self.refresh_after_leader_change();
            }
            self.term = term;
        }
        let now = self.clock_ms;
        match op {
            CoordOp::Acquire {
                name,
                owner,
                proof,
                mode,
                lease_ms,
            } => {
                if lease_ms == 0 {
                    return Err(refuse(ErrorCode::InvalidRequest, "lease must be positive"));
                }
                match self.lock_proof(&name, owner) {
                    Some(p) if !p.admits(&proof) => return Err(not_held(&name, owner)),
                    Some(_) => {}
                    None => {
                        self.check_lock_room(&name)?;
                        self.locks
                            .entry(name.clone())
                            .or_default()
                            .waiters
                            .push(Waiter {
                                owner,
                                mode,
                                lease_ms,
                                since_ms: now,
                                proof,
                            })
                    }
                }
                self.run_lock(plugins, &name, now, index, None, |l| {
                    l.acquire(owner, mode.abi(), lease_ms, now, index)
                        .map(|_| ())
                })?;
                Ok(self.lock_answer(&name, owner))
            }
            CoordOp::KeepAlive { name, owner, proof } => {
                let held = self
                    .locks
                    .get(&name)
                    .and_then(|l| l.holders.iter().find(|h| h.owner == owner))
                    .filter(|h| h.expires_ms > now && h.proof.admits(&proof))
                    .cloned();
                let Some(h) = held else {
                    // An expired lease is over even if no tick has run yet.
                    return Err(refuse(
                        ErrorCode::LockNotHeld,
                        format!("lock {name:?} is not held by owner {owner:x} (lease expired?)"),
                    ));
                };
                self.run_lock(plugins, &name, now, index, None, |l| {
                    l.acquire(owner, h.mode.abi(), h.lease_ms, now, index)
                        .map(|_| ())
                })?;
                Ok(self.lock_answer(&name, owner))
            }
            CoordOp::Release { name, owner, proof } => {
                if self
                    .lock_proof(&name, owner)
                    .is_some_and(|p| !p.admits(&proof))
                {
                    return Err(not_held(&name, owner));
                }
                let was_holder = self
                    .locks
                    .get(&name)
                    .is_some_and(|l| l.holders.iter().any(|h| h.owner == owner));
                if self.locks.contains_key(&name) {
                    self.run_lock(plugins, &name, now, index, Some(owner), |l| {
                        l.release(owner, now, index)
                    })?;
                }
                Ok(CoordResult::Released { was_holder })
            }
            CoordOp::Join {
                group,
                member,
                proof,
                topics: wanted,
                session_timeout_ms,
            } => {
                if self
                    .member_proof(&group, member)
                    .is_some_and(|p| !p.admits(&proof))
                {
                    return Err(unknown_member(&group, member));
                }
                if let Some(k) = self.groups.get(&group).and_then(|g| g.kafka.as_ref()) {
                    if !k.members.is_empty() {
                        return Err(refuse(
                            ErrorCode::InvalidRequest,
                            format!(
                                "group {group:?} has {} Kafka members: a group holds Tern or Kafka consumers, not both",
                                k.members.len()
                            ),
                        ));
                    }
                }
                self.check_member_room(&group, member)?;
                if wanted.is_empty() {
                    return Err(refuse(ErrorCode::InvalidRequest, "subscribe to a topic"));
                }
                if let Some(t) = wanted.iter().find(|t| topics(t).is_none()) {
                    return Err(refuse(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("no topic {t:?}"),
                    ));
                }
                let g = self.groups.entry(group.clone()).or_default();
                // An empty Kafka group becomes a Tern group (offsets kept).
                g.kafka = None;
                let record = MemberRecord {
                    topics: wanted,
                    session_timeout_ms: session_timeout_ms.max(1),
                    last_seen_ms: now,
                    proof,
                };
                let changed = g
                    .members
                    .get(&member)
                    .is_none_or(|m| m.topics != record.topics);
                if !g.members.contains_key(&member) {
                    g.active_ms = now;
                }
                g.members.insert(member, record);
                if changed {
                    self.rebalance(plugins, &group, topics)?;
                }
                Ok(self.member_answer(&group, member))
            }
            CoordOp::Heartbeat {
                group,
                member,
                proof,
            } => {
                let m = self
                    .groups
                    .get_mut(&group)
                    .and_then(|g| g.members.get_mut(&member))
                    .filter(|m| m.proof.admits(&proof))
                    .ok_or_else(|| unknown_member(&group, member))?;
                m.last_seen_ms = now;
                Ok(self.member_answer(&group, member))
            }
            CoordOp::Leave {
                group,
                member,
                proof,
            } => {
                if self
                    .member_proof(&group, member)
                    .is_some_and(|p| !p.admits(&proof))
                {
                    return Err(unknown_member(&group, member));
                }
                let left = self.groups.get_mut(&group).is_some_and(|g| {
                    let left = g.members.remove(&member).is_some();
                    if left {
                        g.active_ms = now;
                    }
                    left
                });
                if left {
                    self.rebalance(plugins, &group, topics)?;
                }
                Ok(CoordResult::Done)
            }
            CoordOp::Commit {
                group,
                member,
                proof,
                generation,
                offsets,
            } => {
                let g = self
                    .groups
                    .get_mut(&group)
                    .filter(|g| {
                        g.members
                            .get(&member)
                            .is_some_and(|m| m.proof.admits(&proof))
                    })
                    .ok_or_else(|| unknown_member(&group, member))?;
                if generation != g.generation {
                    return Err(refuse(
                        ErrorCode::IllegalGeneration,
                        format!(
                            "group {group:?} is in generation {}, the commit was for {generation}",
                            g.generation
                        ),
                    ));
                }
                for (topic, partition, _) in &offsets {
                    if g.assignment.get(&(topic.clone(), *partition)) != Some(&member) {
                        return Err(refuse(
                            ErrorCode::IllegalGeneration,
                            format!("{topic}/{partition} is not assigned to member {member:x}"),
                        ));
                    }
                }
                for (topic, partition, offset) in offsets {
                    g.offsets.insert((topic, partition), offset);
                }
                g.active_ms = now;
                Ok(CoordResult::Done)
            }
            CoordOp::SetOffsets { group, offsets } => {
                if offsets.is_empty() {
                    // Nothing to set: never create an empty record for it.
                    return Ok(CoordResult::Done);
                }
                if !self.groups.contains_key(&group) && self.groups.len() >= GROUPS_MAX {
                    return Err(groups_full(self.groups.len()));
                }
                let g = self.groups.entry(group.clone()).or_default();
                if !g.is_empty() {
                    let members = g.members.len() + g.kafka.as_ref().map_or(0, |k| k.members.len());
                    return Err(refuse(
                        ErrorCode::InvalidRequest,
                        format!(
                            "group {group:?} has {members} active members: stop them before resetting offsets",
                        ),
                    ));
                }
                for (topic, partition, offset) in offsets {
                    g.offsets.insert((topic, partition), offset);
                }
                g.active_ms = now;
                Ok(CoordResult::Done)
            }
            CoordOp::Tick => {
                self.expire(plugins, now, index, topics);
                Ok(CoordResult::Done)
            }
            op @ (CoordOp::KafkaJoin { .. }
            | CoordOp::KafkaSync { .. }
            | CoordOp::KafkaHeartbeat { .. }
            | CoordOp::KafkaLeave { .. }
            | CoordOp::KafkaCommit { .. }) => self.apply_kafka(index, now, op, topics),
        }
    }

    /// A catalogue change: groups consuming `topic` rebalance.
    pub fn topic_changed(
        &mut self,
        plugins: Option<&dyn CoordPlugins>,
        topic: &str,
        topics: &dyn Fn(&str) -> Option<u32>,
    ) {
        let Some(plugins) = plugins else { return };
        let affected: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| {
                g.members
                    .values()
                    .any(|m| m.topics.iter().any(|t| t == topic))
            })
            .map(|(name, _)| name.clone())
            .collect();
        for group in affected {
            // A balancer failure leaves the old assignment; the next
            // membership change retries.
            let _ = self.rebalance(plugins, &group, topics);
        }
        for g in self.groups.values_mut() {
            g.offsets
                .retain(|(t, p), _| topics(t).is_some_and(|n| *p < n));
        }
    }

    /// A topic grew from `from` to `to` partitions. Every group reading it
    /// (a member subscribed to it, or offsets committed for it) gets the
    /// new partitions committed at offset 0 — they are empty as this
    /// applies, so a member starts each at its first record whatever its
    /// reset policy, and nothing produced to them after the growth is
    /// skipped (a `latest` reset would skip what arrived before the member
    /// took the partition) — then the groups rebalance, as for any
    /// catalogue change.
    pub fn partitions_added(
        &mut self,
        plugins: Option<&dyn CoordPlugins>,
        topic: &str,
        new_partitions: std::ops::Range<u32>,
        topics: &dyn Fn(&str) -> Option<u32>,
    ) {
        for g in self.groups.values_mut() {
            let reads = g
                .members
                .values()
                .any(|m| m.topics.iter().any(|t| t == topic))
                || g.offsets.keys().any(|(t, _)| t == topic);
            if reads {
                for p in new_partitions.clone() {
                    g.offsets.entry((topic.to_owned(), p)).or_insert(0);
                }
            }
        }
        self.topic_changed(plugins, topic, topics);
    }

    /// Whether a new holder or waiter fits on lock `name`: the lock, if
    /// new, within [`LOCKS_MAX`], and its queue within [`LOCK_WAITERS_MAX`].
    fn check_lock_room(&self, name: &str) -> Result<(), Refusal> {
        match self.locks.get(name) {
            None if self.locks.len() >= LOCKS_MAX => Err(limit_refusal(
                "LOCKS_MAX",
                LOCKS_MAX,
                format!(
                    "the cluster has {} live locks, its limit: release some first",
                    self.locks.len()
                ),
            )),
            Some(l) if l.holders.len() + l.waiters.len() >= LOCK_WAITERS_MAX => Err(limit_refusal(
                "LOCK_WAITERS_MAX",
                LOCK_WAITERS_MAX,
                format!(
                    "lock {name:?} has {} holders and {} waiters, its limit",
                    l.holders.len(),
                    l.waiters.len()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Whether `member` fits in `group`: a re-join always does; a new
    /// member within [`GROUP_MEMBERS_MAX`], a new group within
    /// [`GROUPS_MAX`].
    fn check_member_room(&self, group: &str, member: u64) -> Result<(), Refusal> {
        match self.groups.get(group) {
            None if self.groups.len() >= GROUPS_MAX => Err(groups_full(self.groups.len())),
            Some(g) if !g.members.contains_key(&member) && g.members.len() >= GROUP_MEMBERS_MAX => {
                Err(limit_refusal(
                    "GROUP_MEMBERS_MAX",
                    GROUP_MEMBERS_MAX,
                    format!("group {group:?} has {} members, its limit", g.members.len()),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The proof of `owner` as holder or waiter of lock `name`.
    fn lock_proof(&self, name: &str, owner: u64) -> Option<&Proof> {
        let l = self.locks.get(name)?;
        l.holders
            .iter()
            .find(|h| h.owner == owner)
            .map(|h| &h.proof)
            .or_else(|| {
                l.waiters
                    .iter()
                    .find(|w| w.owner == owner)
                    .map(|w| &w.proof)
            })
    }

    /// The proof of `member` of `group`.
    fn member_proof(&self, group: &str, member: u64) -> Option<&Proof> {
        self.groups
            .get(group)?
            .members
            .get(&member)
            .map(|m| &m.proof)
    }

    fn lock_answer(&self, name: &str, owner: u64) -> CoordResult {
        match self
            .locks
            .get(name)
            .and_then(|l| l.holders.iter().find(|h| h.owner == owner))
        {
            Some(h) => CoordResult::Granted {
                token: h.token,
                expires_ms: h.expires_ms,
            },
            None => CoordResult::Waiting,
        }
    }

    fn member_answer(&self, group: &str, member: u64) -> CoordResult {
        let g = &self.groups[group];
        CoordResult::Member {
            generation: g.generation,
            assignment: g.assigned_to(member),
        }
    }

    /// Rebuilds the lock's plugin state from its record, runs `call`, and
    /// stores the outcome back into the record (`forget`: an owner the call
    /// removed from the queue, which the record must forget too).
    fn run_lock(
        &mut self,
        plugins: &dyn CoordPlugins,
        name: &str,
        now: u64,
        index: u64,
        forget: Option<u64>,
        call: impl FnOnce(&mut dyn LockSemantics) -> Result<(), String>,
    ) -> Result<(), Refusal> {
        let plugin_failed =
            |e: String| refuse(ErrorCode::StorageError, format!("lock plugin: {e}"));
        let record = self.locks.get(name).cloned().unwrap_or_default();
        let mut lock = plugins.new_lock().map_err(plugin_failed)?;
        // Replay at a time before every lease ends, so nothing expires while
        // rebuilding; each holder gets back its own token and lease end.
        let replay_now = record
            .holders
            .iter()
            .map(|h| h.expires_ms.saturating_sub(1))
            .min()
            .unwrap_or(now)
            .min(now);
        for h in &record.holders {
            let lease = h.expires_ms.saturating_sub(replay_now).max(1);
            lock.acquire(h.owner, h.mode.abi(), lease, replay_now, h.token)
                .map_err(plugin_failed)?;
        }
        let waiting: Vec<&Waiter> = record
            .waiters
            .iter()
            .filter(|w| !record.holders.iter().any(|h| h.owner == w.owner))
            .collect();
        for w in &waiting {
            lock.acquire(w.owner, w.mode.abi(), w.lease_ms, replay_now, index)
                .map_err(plugin_failed)?;
        }
        call(lock.as_mut()).map_err(plugin_failed)?;
        let grants = lock.holders().map_err(plugin_failed)?;
        let known = |owner: u64| {
            record
                .holders
                .iter()
                .find(|h| h.owner == owner)
                .map(|h| (h.lease_ms, &h.proof))
                .or_else(|| {
                    record
                        .waiters
                        .iter()
                        .find(|w| w.owner == owner)
                        .map(|w| (w.lease_ms, &w.proof))
                })
        };
        let mut holders = Vec::with_capacity(grants.len());
        for g in grants {
            // A plugin grants only owners it was given (holders, waiters):
            // one it made up holds nothing anyone can prove.
            let Some((lease_ms, proof)) = known(g.owner) else {
                return Err(plugin_failed(format!(
                    "granted unknown owner {:x}",
                    g.owner
                )));
            };
            if !record
                .holders
                .iter()
                .any(|h| h.owner == g.owner && h.token == g.token)
            {
                self.counters.grants += 1;
            }
            holders.push(Holder {
                owner: g.owner,
                mode: LockMode::from_abi(g.mode),
                token: g.token,
                expires_ms: g.expires_ms,
                lease_ms,
                proof: proof.clone(),
            });
        }
        let updated = LockRecord {
            waiters: record
                .waiters
                .into_iter()
                .filter(|w| !holders.iter().any(|h| h.owner == w.owner))
                .filter(|w| forget != Some(w.owner))
                .collect(),
            holders,
        };
        if updated.holders.is_empty() && updated.waiters.is_empty() {
            self.locks.remove(name);
        } else {
            self.locks.insert(name.to_owned(), updated);
        }
        Ok(())
    }

    /// Ends expired leases and sessions. A failure on one lock or group is
    /// logged and counted and never stops the others: a lock whose plugin
    /// fails still loses its expired holders (the lease is over whatever
    /// the plugin says), so its deadline moves on and ticks do not spin.
    fn expire(
        &mut self,
        plugins: &dyn CoordPlugins,
        now: u64,
        index: u64,
        topics: &dyn Fn(&str) -> Option<u32>,
    ) {
        let due: Vec<String> = self
            .locks
            .iter()
            .filter(|(_, l)| l.holders.iter().any(|h| h.expires_ms <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let before = self.locks.get(&name).map_or(0, |l| {
                l.holders.iter().filter(|h| h.expires_ms <= now).count() as u64
            });
            self.counters.expirations += before;
            let Err(e) = self.run_lock(plugins, &name, now, index, None, |l| l.expire(now, index))
            else {
                continue;
            };
            self.counters.expiry_failures += 1;
            warn!(lock = %name, error = %e.message, "expiring a lock failed: its expired leases end without the plugin");
            if let Some(l) = self.locks.get_mut(&name) {
                l.holders.retain(|h| h.expires_ms > now);
            }
            // With fewer holders the plugin may cope again: let it grant
            // the waiters now rather than at the next command on the lock.
            if let Err(e) =
                self.run_lock(plugins, &name, now, index, None, |l| l.expire(now, index))
            {
                warn!(lock = %name, error = %e.message, "granting a lock's waiters after expiry failed");
            }
            if self
                .locks
                .get(&name)
                .is_some_and(|l| l.holders.is_empty() && l.waiters.is_empty())
            {
                self.locks.remove(&name);
            }
        }
        let mut changed = Vec::new();
        for (name, g) in &mut self.groups {
            let before = g.members.len();
            g.members
                .retain(|_, m| m.last_seen_ms.saturating_add(m.session_timeout_ms) > now);
            let removed = (before - g.members.len()) as u64;
            if removed > 0 {
                self.counters.sessions_expired += removed;
                g.active_ms = now;
                changed.push(name.clone());
            }
        }
        for group in changed {
            if let Err(e) = self.rebalance(plugins, &group, topics) {
                self.counters.expiry_failures += 1;
                warn!(%group, error = %e.message, "rebalancing after expired sessions failed");
            }
        }
        for g in self.groups.values_mut() {
            let Some(k) = g.kafka.as_mut() else { continue };
            let before = k.members.len();
            let generation = g.generation;
            let started_ms = k.rebalance_started_ms;
            k.members.retain(|_, m| {
                let session_ends = m.last_seen_ms.saturating_add(m.session_timeout_ms);
                let rejoin_ends = started_ms.saturating_add(m.rebalance_timeout_ms);
                session_ends > now && (m.generation >= generation || rejoin_ends > now)
            });
            let removed = (before - k.members.len()) as u64;
            if removed > 0 {
                self.counters.sessions_expired += removed;
                kafka_rebalance(g, now);
            }
        }
        let before = self.groups.len();
        self.groups
            .retain(|_, g| !g.is_empty() || g.active_ms.saturating_add(GROUP_RETENTION_MS) > now);
        self.counters.groups_expired += (before - self.groups.len()) as u64;
    }

    fn refresh_after_leader_change(&mut self) {
        let now = self.clock_ms;
        for l in self.locks.values_mut() {
            for h in &mut l.holders {
                h.expires_ms = h.expires_ms.max(now.saturating_add(h.lease_ms));
            }
        }
        for g in self.groups.values_mut() {
            for m in g.members.values_mut() {
                m.last_seen_ms = m.last_seen_ms.max(now);
            }
            if let Some(k) = &mut g.kafka {
                k.rebalance_started_ms = k.rebalance_started_ms.max(now);
                for m in k.members.values_mut() {
                    m.last_seen_ms = m.last_seen_ms.max(now);
                }
            }
        }
    }

    /// Recomputes a group's assignment with the balancer and starts a new
    /// generation. An empty group keeps only its committed offsets.
    fn rebalance(
        &mut self,
        plugins: &dyn CoordPlugins,
        group: &str,
        topics: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<(), Refusal> {
        let Some(g) = self.groups.get_mut(group) else {
            return Ok(());
        };
        if g.kafka.as_ref().is_some_and(|k| !k.members.is_empty()) {
            // Kafka members assign on the client side.
            return Ok(());
        }
        let subscribed: BTreeSet<&String> =
            g.members.values().flat_map(|m| m.topics.iter()).collect();
        let partitions: Vec<(String, u32)> = subscribed
            .iter()
            .flat_map(|t| (0..topics(t).unwrap_or(0)).map(move |p| ((*t).clone(), p)))
            .collect();
        let assignment = if g.members.is_empty() || partitions.is_empty() {
            BTreeMap::new()
        } else {
            let members: Vec<Member> = g
                .members
                .keys()
                .map(|id| Member { id: *id, weight: 1 })
                .collect();
            let current: Vec<u64> = partitions
                .iter()
                .map(|tp| *g.assignment.get(tp).unwrap_or(&UNOWNED))
                .map(|o| {
                    if g.members.contains_key(&o) {
                        o
                    } else {
                        UNOWNED
                    }
                })
                .collect();
            let owners = plugins
                .assign(&members, &current)
                .map_err(|e| refuse(ErrorCode::StorageError, format!("balancer plugin: {e}")))?;
            if owners.len() != partitions.len() || owners.iter().any(|o| !g.members.contains_key(o))
            {
                return Err(refuse(
                    ErrorCode::StorageError,
                    "balancer plugin returned an invalid assignment",
                ));
            }
            partitions.into_iter().zip(owners).collect()
        };
        g.assignment = assignment;
        g.generation += 1;
        g.rebalances += 1;
        if g.is_empty() && g.offsets.is_empty() {
            self.groups.remove(group);
        }
        Ok(())
    }
}

/// Kafka's group protocol. Kafka consumers assign on the client side, so
/// the rules only pick a protocol, a leader and a generation, store the
/// leader's opaque assignments, and fence heartbeats and commits by
/// generation. A join that adds a member or changes its protocols starts a
/// new generation at once (there is no join barrier here: the broker holds
/// join answers until the members have joined, see `kafka_groups.rs`);
/// members still in an older one are told to re-join.
impl CoordState {
    fn apply_kafka(
        &mut self,
        index: u64,
        now: u64,
        op: CoordOp,
        topics: &dyn Fn(&str) -> Option<u32>,
    ) -> Result<CoordResult, Refusal> {
        match op {
            CoordOp::KafkaJoin {
                group,
                member_id,
                client_id,
                client_host,
                protocol_type,
                protocols,
                session_timeout_ms,
                rebalance_timeout_ms,
                proof,
            } => {
                if member_id.is_empty() || protocol_type.is_empty() || protocols.is_empty() {
                    return Err(refuse(
                        ErrorCode::InvalidRequest,
                        "a Kafka join needs a member id, a protocol type and a protocol",
                    ));
                }
                let existing = self.groups.get(&group);
                if let Some(g) = existing.filter(|g| !g.members.is_empty()) {
                    return Ok(kafka_refused(
                        KafkaRefusal::InconsistentGroupProtocol,
                        format!(
                            "group {group:?} has {} Tern members: a group holds Tern or Kafka consumers, not both",
                            g.members.len()
                        ),
                    ));
                }
                let kafka = existing.and_then(|g| g.kafka.as_ref());
                let known = kafka.and_then(|k| k.members.get(&member_id));
                if known.is_some_and(|m| !m.proof.admits(&proof)) {
                    return Ok(kafka_unknown(&group, &member_id));
                }
                if let Some(k) = kafka.filter(|k| !k.members.is_empty()) {
                    if k.protocol_type != protocol_type {
                        return Ok(kafka_refused(
                            KafkaRefusal::InconsistentGroupProtocol,
                            format!(
                                "group {group:?} has protocol type {:?}, not {protocol_type:?}",
                                k.protocol_type
                            ),
                        ));
                    }
                }
                match existing {
                    None if self.groups.len() >= GROUPS_MAX => {
                        return Err(groups_full(self.groups.len()))
                    }
                    Some(_) if known.is_none() => {
                        let members = kafka.map_or(0, |k| k.members.len());
                        if members >= GROUP_MEMBERS_MAX {
                            return Err(limit_refusal(
                                "GROUP_MEMBERS_MAX",
                                GROUP_MEMBERS_MAX,
                                format!("group {group:?} has {members} members, its limit"),
                            ));
                        }
                    }
                    _ => {}
                }
                let record = KafkaMember {
                    client_id,
                    client_host,
                    session_timeout_ms: session_timeout_ms.max(1),
                    rebalance_timeout_ms: rebalance_timeout_ms.max(1),
                    last_seen_ms: now,
                    generation: 0,
                    joined: known.map_or(index, |m| m.joined),
                    protocols,
                    assignment: known.and_then(|m| m.assignment.clone()),
                    proof,
                };
                let bytes = record.join_bytes(&member_id);
                if bytes > KAFKA_MEMBER_BYTES_MAX {
                    return Err(limit_refusal(
                        "KAFKA_MEMBER_BYTES_MAX",
                        KAFKA_MEMBER_BYTES_MAX,
                        format!("member {member_id:?} joins with {bytes} bytes of ids and protocol metadata"),
                    ));
                }
                let is_new = known.is_none();
                // As in Kafka, the leader re-joining a stable group starts a
                // generation even with the same protocols: it re-joins to
                // run its assignment again (kafka-python does, once it has
                // the topics' metadata). Only after it synced: re-proposals
                // of a join held by the broker never start one.
                let leader_again = kafka.is_some_and(|k| k.leader.as_deref() == Some(&member_id))
                    && known.is_some_and(|m| m.assignment.is_some());
                let changed = leader_again || known.is_none_or(|m| m.protocols != record.protocols);
                // Everything below is decided on a copy: a refusal leaves
                // the group as it was.
                let mut k = kafka.cloned().unwrap_or_default();
                k.protocol_type = protocol_type;
                k.members.insert(member_id.clone(), record);
                let group_bytes = k.bytes();
                if group_bytes > KAFKA_GROUP_BYTES_MAX {
                    return Err(limit_refusal(
                        "KAFKA_GROUP_BYTES_MAX",
                        KAFKA_GROUP_BYTES_MAX,
                        format!("group {group:?} would hold {group_bytes} bytes of members"),
                    ));
                }
                if changed && k.common_protocol().is_none() {
                    return Ok(kafka_refused(
                        KafkaRefusal::InconsistentGroupProtocol,
                        format!(
                            "member {member_id:?} supports no protocol every member of group {group:?} supports"
                        ),
                    ));
                }
                let g = self.groups.entry(group).or_default();
                g.kafka = Some(k);
                if is_new {
                    g.active_ms = now;
                }
                if changed {
                    kafka_rebalance(g, now);
                }
                let generation = g.generation;
                let k = g.kafka.as_mut().expect("kafka group just stored");
                k.members
                    .get_mut(&member_id)
                    .expect("member just stored")
                    .generation = generation;
                let protocol = k
                    .protocol
                    .clone()
                    .expect("a group with members has a protocol");
                let leader = k.leader.clone().expect("a group with members has a leader");
                let members = if leader == member_id {
                    let mut by_arrival: Vec<(&String, &KafkaMember)> = k.members.iter().collect();
                    by_arrival.sort_by_key(|(_, m)| m.joined);
                    by_arrival
                        .into_iter()
                        .map(|(id, m)| (id.clone(), metadata_for(m, &protocol)))
                        .collect()
                } else {
                    Vec::new()
                };
                Ok(CoordResult::KafkaJoined {
                    generation: kafka_generation(generation),
                    protocol,
                    leader,
                    member_id,
                    members,
                })
            }
            CoordOp::KafkaSync {
                group,
                member_id,
                generation,
                assignments,
                proof,
            } => {
                let g = match self.kafka_member(&group, &member_id, &proof, now) {
                    Ok(g) => g,
                    Err(refused) => return Ok(refused),
                };
                let k = g.kafka.as_mut().expect("a Kafka member's group");
                if let Err(refused) =
                    check_kafka_generation(g.generation, &k.members[&member_id], generation)
                {
                    return Ok(refused);
                }
                let stored = k.members.values().all(|m| m.assignment.is_some());
                if k.leader.as_deref() == Some(member_id.as_str()) && !stored {
                    let mut given: BTreeMap<&str, &Vec<u8>> = BTreeMap::new();
                    for (id, bytes) in &assignments {
                        if bytes.len() > KAFKA_MEMBER_BYTES_MAX {
                            return Err(limit_refusal(
                                "KAFKA_MEMBER_BYTES_MAX",
                                KAFKA_MEMBER_BYTES_MAX,
                                format!("the assignment of member {id:?} is {} bytes", bytes.len()),
                            ));
                        }
                        // Members the leader does not know of are not in
                        // this generation: their assignment is dropped.
                        if k.members.contains_key(id) {
                            given.insert(id, bytes);
                        }
                    }
                    let joins: usize = k.members.iter().map(|(id, m)| m.join_bytes(id)).sum();
                    let total = joins + given.values().map(|b| b.len()).sum::<usize>();
                    if total > KAFKA_GROUP_BYTES_MAX {
                        return Err(limit_refusal(
                            "KAFKA_GROUP_BYTES_MAX",
                            KAFKA_GROUP_BYTES_MAX,
                            format!("group {group:?} would hold {total} bytes of members"),
                        ));
                    }
                    for (id, m) in &mut k.members {
                        m.assignment = Some(
                            given
                                .get(id.as_str())
                                .map_or_else(Vec::new, |b| (*b).clone()),
                        );
                    }
                }
                Ok(CoordResult::KafkaAssignment {
                    assignment: k.members[&member_id].assignment.clone(),
                })
            }
            CoordOp::KafkaHeartbeat {
                group,
                member_id,
                generation,
                proof,
            } => {
                let g = match self.kafka_member(&group, &member_id, &proof, now) {
                    Ok(g) => g,
                    Err(refused) => return Ok(refused),
                };
                let k = g.kafka.as_ref().expect("a Kafka member's group");
                let m = &k.members[&member_id];
                if let Err(refused) = check_kafka_generation(g.generation, m, generation) {
                    return Ok(refused);
                }
                if m.assignment.is_none() {
                    return Ok(kafka_refused(
                        KafkaRefusal::RebalanceInProgress,
                        format!("group {group:?} waits for its leader's assignments"),
                    ));
                }
                Ok(CoordResult::Done)
            }
            CoordOp::KafkaLeave { group, members } => {
                let Some(k) = self.groups.get_mut(&group).and_then(|g| g.kafka.as_mut()) else {
                    return Ok(CoordResult::Done);
                };
                // All or nothing: one member id without its proof leaves
                // no one.
                if let Some((id, _)) = members
                    .iter()
                    .find(|(id, p)| k.members.get(id).is_some_and(|m| !m.proof.admits(p)))
                {
                    return Ok(kafka_unknown(&group, id));
                }
                let before = k.members.len();
                for (id, _) in &members {
                    k.members.remove(id);
                }
                if k.members.len() < before {
                    let g = self.groups.get_mut(&group).expect("group just read");
                    g.active_ms = now;
                    kafka_rebalance(g, now);
                }
                Ok(CoordResult::Done)
            }
            CoordOp::KafkaCommit {
                group,
                member_id,
                generation,
                offsets,
                proof,
            } => {
                if let Some((t, p, _)) = offsets
                    .iter()
                    .find(|(t, p, _)| topics(t).is_none_or(|n| *p >= n))
                {
                    return Err(refuse(
                        ErrorCode::UnknownTopicOrPartition,
                        format!("no partition {t}/{p}"),
                    ));
                }
                if generation < 0 && member_id.is_empty() {
                    // Offsets stored for a client that is not a member
                    // (Kafka's "simple" consumers and admin tools).
                    match self.groups.get(&group) {
                        Some(g) if !g.is_empty() => {
                            return Ok(kafka_refused(
                                KafkaRefusal::UnknownMember,
                                format!("group {group:?} has members: only a member commits"),
                            ))
                        }
                        None if offsets.is_empty() => return Ok(CoordResult::Done),
                        None if self.groups.len() >= GROUPS_MAX => {
                            return Err(groups_full(self.groups.len()))
                        }
                        _ => {}
                    }
                    let g = self.groups.entry(group).or_default();
                    for (topic, partition, offset) in offsets {
                        g.offsets.insert((topic, partition), offset);
                    }
                    g.active_ms = now;
                    return Ok(CoordResult::Done);
                }
                let g = match self.kafka_member(&group, &member_id, &proof, now) {
                    Ok(g) => g,
                    Err(refused) => return Ok(refused),
                };
                let m = &g.kafka.as_ref().expect("a Kafka member's group").members[&member_id];
                if let Err(refused) = check_kafka_generation(g.generation, m, generation) {
                    return Ok(refused);
                }
                if m.assignment.is_none() {
                    return Ok(kafka_refused(
                        KafkaRefusal::RebalanceInProgress,
                        format!("group {group:?} waits for its leader's assignments"),
                    ));
                }
                for (topic, partition, offset) in offsets {
                    g.offsets.insert((topic, partition), offset);
                }
                g.active_ms = now;
                Ok(CoordResult::Done)
            }
            other => unreachable!("not a Kafka group operation: {other:?}"),
        }
    }

    /// The group of Kafka member `member_id` presenting `proof`, its
    /// session refreshed; else the refusal to answer.
    fn kafka_member(
        &mut self,
        group: &str,
        member_id: &str,
        proof: &Proof,
        now: u64,
    ) -> Result<&mut GroupRecord, CoordResult> {
        let g = self
            .groups
            .get_mut(group)
            .filter(|g| {
                g.kafka
                    .as_ref()
                    .and_then(|k| k.members.get(member_id))
                    .is_some_and(|m| m.proof.admits(proof))
            })
            .ok_or_else(|| kafka_unknown(group, member_id))?;
        let m = g
            .kafka
            .as_mut()
            .and_then(|k| k.members.get_mut(member_id))
            .expect("member just found");
        m.last_seen_ms = now;
        Ok(g)
    }
}

/// Starts a new generation of a Kafka group: no assignments yet, the
/// protocol chosen again, the leader kept if it is still a member (else
/// the oldest member leads).
fn kafka_rebalance(g: &mut GroupRecord, now: u64) {
    g.generation += 1;
    g.rebalances += 1;
    let Some(k) = g.kafka.as_mut() else { return };
    k.rebalance_started_ms = now;
    for m in k.members.values_mut() {
        m.assignment = None;
    }
    k.protocol = k.common_protocol();
    if k.leader.as_ref().is_none_or(|l| !k.members.contains_key(l)) {
        k.leader = k
            .members
            .iter()
            .min_by_key(|(_, m)| m.joined)
            .map(|(id, _)| id.clone());
    }
}

/// When a Tick would remove Kafka member `m`: its session's end, or, while
/// it has not joined the group's generation, its rebalance timeout's.
fn kafka_member_deadline_ms(k: &KafkaGroup, generation: u64, m: &KafkaMember) -> u64 {
    let session_ends = m.last_seen_ms.saturating_add(m.session_timeout_ms);
    if m.generation < generation {
        session_ends.min(
            k.rebalance_started_ms
                .saturating_add(m.rebalance_timeout_ms),
        )
    } else {
        session_ends
    }
}

/// Whether `m` may act in Kafka generation `presented` of a group in
/// `current`: a member the group moved on without (it has not joined the
/// new generation) must re-join; any other generation is not its own.
fn check_kafka_generation(
    current: u64,
    m: &KafkaMember,
    presented: i32,
) -> Result<(), CoordResult> {
    match u64::try_from(presented) {
        Ok(g) if g == current => Ok(()),
        Ok(g) if g < current && m.generation < current => Err(kafka_refused(
            KafkaRefusal::RebalanceInProgress,
            format!("the group is rebalancing into generation {current}: join again"),
        )),
        _ => Err(kafka_refused(
            KafkaRefusal::IllegalGeneration,
            format!("the group is in generation {current}, not {presented}"),
        )),
    }
}

fn metadata_for(m: &KafkaMember, protocol: &str) -> Vec<u8> {
    m.protocols
        .iter()
        .find(|(n, _)| n == protocol)
        .map(|(_, metadata)| metadata.clone())
        .unwrap_or_default()
}

fn kafka_refused(refusal: KafkaRefusal, message: String) -> CoordResult {
    CoordResult::KafkaRefused { refusal, message }
}

fn kafka_unknown(group: &str, member_id: &str) -> CoordResult {
    kafka_refused(
        KafkaRefusal::UnknownMember,
        format!("member {member_id:?} is not in group {group:?} (session expired?): join again"),
    )
}

fn not_held(name: &str, owner: u64) -> Refusal {
    refuse(
        ErrorCode::LockNotHeld,
        format!("lock {name:?} is not held by owner {owner:x} with this secret and principal"),
    )
}

fn groups_full(groups: usize) -> Refusal {
    limit_refusal(
        "GROUPS_MAX",
        GROUPS_MAX,
        format!("the cluster has {groups} consumer groups, its limit: delete or expire some first"),
    )
}

fn unknown_member(group: &str, member: u64) -> Refusal {
    refuse(
        ErrorCode::UnknownMember,
        format!("member {member:x} is not in group {group:?} (session expired?): join again"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO exclusive lock, like the bundled `exclusive` plugin.
    #[derive(Default)]
    struct Fifo {
        holder: Option<Grant>,
        waiters: Vec<(u64, u64)>,
    }

    impl Fifo {
        fn next(&mut self, now: u64, token: u64) {
            if self.holder.is_none() && !self.waiters.is_empty() {
                let (owner, lease) = self.waiters.remove(0);
                self.holder = Some(Grant {
                    owner,
                    token,
                    expires_ms: now + lease,
                    mode: LOCK_EXCLUSIVE,
                });
            }
        }
    }

    impl LockSemantics for Fifo {
        fn acquire(
            &mut self,
            o: u64,
            _m: u32,
            lease: u64,
            now: u64,
            t: u64,
        ) -> Result<bool, String> {
            self.expire(now, t)?;
            if let Some(h) = &mut self.holder {
                if h.owner == o {
                    h.expires_ms = now + lease;
                    return Ok(true);
                }
            }
            if !self.waiters.iter().any(|(w, _)| *w == o) {
                self.waiters.push((o, lease));
            }
            self.next(now, t);
            Ok(self.holder.is_some_and(|h| h.owner == o))
        }
        fn release(&mut self, o: u64, now: u64, t: u64) -> Result<(), String> {
            if self.holder.is_some_and(|h| h.owner == o) {
                self.holder = None;
            }
            self.waiters.retain(|(w, _)| *w != o);
            self.next(now, t);
            Ok(())
        }
        fn expire(&mut self, now: u64, t: u64) -> Result<(), String> {
            if self.holder.is_some_and(|h| h.expires_ms <= now) {
                self.holder = None;
            }
            self.next(now, t);
            Ok(())
        }
        fn holders(&self) -> Result<Vec<Grant>, String> {
            Ok(self.holder.into_iter().collect())
        }
    }

    struct Plugins;

    impl CoordPlugins for Plugins {
        fn new_lock(&self) -> Result<Box<dyn LockSemantics>, String> {
            Ok(Box::<Fifo>::default())
        }
        fn assign(&self, members: &[Member], current: &[u64]) -> Result<Vec<u64>, String> {
            Ok((0..current.len())
                .map(|i| members[i % members.len()].id)
                .collect())
        }
    }

    fn topics(t: &str) -> Option<u32> {
        (t == "orders").then_some(4)
    }

    struct Harness {
        state: CoordState,
        index: u64,
        plugins: &'static dyn CoordPlugins,
    }

    impl Harness {
        fn new() -> Harness {
            Harness::with(&Plugins)
        }
        fn with(plugins: &'static dyn CoordPlugins) -> Harness {
            Harness {
                state: CoordState::default(),
                index: 0,
                plugins,
            }
        }
        fn run(&mut self, at: u64, op: CoordOp) -> Result<CoordResult, Refusal> {
            self.index += 1;
            self.state
                .apply(Some(self.plugins), self.index, at, 1, op, &topics)
        }
    }

    /// The proof a test client of id `id` presents.
    fn proof(id: u64) -> Proof {
        Proof {
            digest: [id as u8; 32],
            principal: None,
        }
    }

    fn acquire(name: &str, owner: u64, lease_ms: u64) -> CoordOp {
        CoordOp::Acquire {
            name: name.into(),
            owner,
            proof: proof(owner),
            mode: LockMode::Exclusive,
            lease_ms,
        }
    }

    #[test]
    fn waiters_are_granted_in_order_with_growing_tokens() {
        let mut h = Harness::new();
        let first = h.run(10, acquire("a", 1, 1000)).unwrap();
        assert!(matches!(
            first,
            CoordResult::Granted {
                token: 1,
                expires_ms: 1010
            }
        ));
        assert_eq!(
            h.run(11, acquire("a", 2, 1000)).unwrap(),
            CoordResult::Waiting
        );
        assert_eq!(
            h.run(12, acquire("a", 3, 1000)).unwrap(),
            CoordResult::Waiting
        );
        let released = h
            .run(
                13,
                CoordOp::Release {
                    name: "a".into(),
                    owner: 1,
                    proof: proof(1),
                },
            )
            .unwrap();
        assert_eq!(released, CoordResult::Released { was_holder: true });
        let rec = &h.state.locks["a"];
        assert_eq!(rec.holders[0].owner, 2, "first waiter next");
        assert_eq!(
            rec.holders[0].token, 4,
            "token = index of the granting command"
        );
        assert_eq!(rec.waiters.len(), 1);
        // A waiter that gives up leaves the queue.
        h.run(
            14,
            CoordOp::Release {
                name: "a".into(),
                owner: 3,
                proof: proof(3),
            },
        )
        .unwrap();
        assert!(h.state.locks["a"].waiters.is_empty());
        h.run(
            15,
            CoordOp::Release {
                name: "a".into(),
                owner: 2,
                proof: proof(2),
            },
        )
        .unwrap();
        assert!(h.state.locks.is_empty(), "a free lock leaves no record");
        assert_eq!(h.state.counters.grants, 2);
    }

    #[test]
    fn leases_expire_on_replicated_time_and_keepalive_renews() {
        let mut h = Harness::new();
        h.run(0, acquire("a", 1, 100)).unwrap();
        h.run(1, acquire("a", 2, 100)).unwrap();
        assert!(matches!(
            h.run(
                50,
                CoordOp::KeepAlive {
                    name: "a".into(),
                    owner: 1,
                    proof: proof(1),
                }
            )
            .unwrap(),
            CoordResult::Granted {
                token: 1,
                expires_ms: 150
            }
        ));
        assert_eq!(h.state.next_deadline_ms(), Some(150));
        h.run(149, CoordOp::Tick).unwrap();
        assert_eq!(h.state.locks["a"].holders[0].owner, 1);
        // A stamp from a slower clock never moves time back.
        h.run(100, CoordOp::Tick).unwrap();
        assert_eq!(h.state.clock_ms, 149);
        h.run(150, CoordOp::Tick).unwrap();
        assert_eq!(h.state.locks["a"].holders[0].owner, 2);
        assert_eq!(h.state.counters.expirations, 1);
        let lost = h.run(
            151,
            CoordOp::KeepAlive {
                name: "a".into(),
                owner: 1,
                proof: proof(1),
            },
        );
        assert_eq!(lost.unwrap_err().code, ErrorCode::LockNotHeld);
    }

    #[test]
    fn a_new_leader_term_refreshes_leases_and_sessions() {
        let mut h = Harness::new();
        h.run(0, acquire("a", 1, 100)).unwrap();
        h.index += 1;
        h.state
            .apply(Some(&Plugins), h.index, 500, 2, CoordOp::Tick, &topics)
            .unwrap();
        let holder = &h.state.locks["a"].holders[0];
        assert_eq!((holder.owner, holder.expires_ms), (1, 600));
    }

    #[test]
    fn groups_rebalance_on_join_leave_and_session_end_and_fence_commits() {
        let mut h = Harness::new();
        let join = |member| CoordOp::Join {
            group: "g".into(),
            member,
            proof: proof(member),
            topics: vec!["orders".into()],
            session_timeout_ms: 100,
        };
        let CoordResult::Member {
            generation,
            assignment,
        } = h.run(0, join(1)).unwrap()
        else {
            panic!("member answer")
        };
        assert_eq!((generation, assignment.len()), (1, 4));
        let CoordResult::Member {
            generation,
            assignment,
        } = h.run(10, join(2)).unwrap()
        else {
            panic!("member answer")
        };
        assert_eq!((generation, assignment.len()), (2, 2));
        let stale = CoordOp::Commit {
            group: "g".into(),
            member: 1,
            proof: proof(1),
            generation: 1,
            offsets: vec![("orders".into(), 0, 5)],
        };
        assert_eq!(
            h.run(20, stale).unwrap_err().code,
            ErrorCode::IllegalGeneration
        );
        let owned = h.state.groups["g"].assigned_to(2)[0].clone();
        let commit = CoordOp::Commit {
            group: "g".into(),
            member: 2,
            proof: proof(2),
            generation: 2,
            offsets: vec![(owned.0.clone(), owned.1, 7)],
        };
        h.run(30, commit).unwrap();
        // Member 1 stops heartbeating; member 2 keeps going.
        h.run(
            90,
            CoordOp::Heartbeat {
                group: "g".into(),
                member: 2,
                proof: proof(2),
            },
        )
        .unwrap();
        h.run(101, CoordOp::Tick).unwrap();
        let g = &h.state.groups["g"];
        assert_eq!(g.members.keys().copied().collect::<Vec<_>>(), vec![2]);
        assert_eq!((g.generation, g.assigned_to(2).len()), (3, 4));
        assert_eq!(g.offsets[&owned], 7);
        let hb = h.run(
            102,
            CoordOp::Heartbeat {
                group: "g".into(),
                member: 1,
                proof: proof(1),
            },
        );
        assert_eq!(hb.unwrap_err().code, ErrorCode::UnknownMember);
        h.run(
            103,
            CoordOp::Leave {
                group: "g".into(),
                member: 2,
                proof: proof(2),
            },
        )
        .unwrap();
        let reset = CoordOp::SetOffsets {
            group: "g".into(),
            offsets: vec![("orders".into(), 0, 0)],
        };
        h.run(104, reset).unwrap();
        assert_eq!(h.state.groups["g"].offsets[&("orders".to_string(), 0)], 0);
    }

    #[test]
    fn a_grown_topic_rebalances_its_groups_with_the_new_partitions_from_offset_0() {
        let mut h = Harness::new();
        for member in [1, 2] {
            h.run(
                member,
                CoordOp::Join {
                    group: "g".into(),
                    member,
                    topics: vec!["orders".into()],
                    session_timeout_ms: 10_000,
                    proof: proof(member),
                },
            )
            .unwrap();
        }
        let owned = h.state.groups["g"].assigned_to(1)[0].clone();
        let generation = h.state.groups["g"].generation;
        h.run(
            5,
            CoordOp::Commit {
                group: "g".into(),
                member: 1,
                generation,
                offsets: vec![(owned.0.clone(), owned.1, 9)],
                proof: proof(1),
            },
        )
        .unwrap();
        // A group with no member left but commits on the topic reads it too.
        h.run(
            6,
            CoordOp::SetOffsets {
                group: "idle".into(),
                offsets: vec![("orders".into(), 0, 3)],
            },
        )
        .unwrap();
        let grown = |t: &str| (t == "orders").then_some(6);
        h.state
            .partitions_added(Some(&Plugins), "orders", 4..6, &grown);
        let g = &h.state.groups["g"];
        assert_eq!(g.generation, generation + 1, "a new generation");
        let mut assigned: Vec<u32> = g.assignment.keys().map(|(_, p)| *p).collect();
        assigned.sort();
        assert_eq!(assigned, vec![0, 1, 2, 3, 4, 5], "every partition owned");
        assert_eq!(g.assigned_to(1).len(), 3);
        assert_eq!(g.offsets[&owned], 9, "old commits kept");
        assert_eq!(g.offsets[&("orders".to_string(), 4)], 0);
        assert_eq!(g.offsets[&("orders".to_string(), 5)], 0);
        let idle = &h.state.groups["idle"];
        assert_eq!(idle.offsets[&("orders".to_string(), 0)], 3);
        assert_eq!(idle.offsets[&("orders".to_string(), 5)], 0);
    }

    #[test]
    fn rebuilding_from_the_record_decides_like_the_history() {
        // Two holders cannot exist with Fifo; check one holder + waiters
        // survive a serialise/restore round trip and keep deciding.
        let mut h = Harness::new();
        h.run(0, acquire("a", 1, 100)).unwrap();
        h.run(1, acquire("a", 2, 100)).unwrap();
        h.run(2, acquire("a", 3, 100)).unwrap();
        let bytes = bincode::serialize(&h.state).unwrap();
        h.state = bincode::deserialize(&bytes).unwrap();
        h.run(
            3,
            CoordOp::Release {
                name: "a".into(),
                owner: 1,
                proof: proof(1),
            },
        )
        .unwrap();
        let rec = &h.state.locks["a"];
        assert_eq!(rec.holders[0].owner, 2);
        assert_eq!(
            rec.waiters.iter().map(|w| w.owner).collect::<Vec<_>>(),
            vec![3]
        );
    }

    #[test]
    fn only_the_proven_holder_renews_or_releases_a_lock() {
        let mut h = Harness::new();
        h.run(0, acquire("a", 1, 100)).unwrap();
        h.run(1, acquire("a", 2, 100)).unwrap();
        let thief = Proof {
            digest: [9; 32],
            principal: None,
        };
        let renew = |proof| CoordOp::KeepAlive {
            name: "a".into(),
            owner: 1,
            proof,
        };
        let release = |owner, proof| CoordOp::Release {
            name: "a".into(),
            owner,
            proof,
        };
        // Knowing the owner id is not enough: neither for the holder's
        // lease, nor for a waiter's place, nor to re-acquire under its id.
        for op in [
            renew(thief.clone()),
            release(1, thief.clone()),
            release(2, thief.clone()),
            CoordOp::Acquire {
                name: "a".into(),
                owner: 1,
                proof: thief.clone(),
                mode: LockMode::Exclusive,
                lease_ms: 100,
            },
        ] {
            assert_eq!(h.run(2, op).unwrap_err().code, ErrorCode::LockNotHeld);
        }
        // The same digest from another principal is not the holder either.
        let other_principal = Proof {
            principal: Some("mallory".into()),
            ..proof(1)
        };
        assert_eq!(
            h.run(3, renew(other_principal)).unwrap_err().code,
            ErrorCode::LockNotHeld
        );
        let rec = &h.state.locks["a"];
        assert_eq!((rec.holders[0].owner, rec.waiters.len()), (1, 1));
        // The holder itself still can; its successor inherits its own proof.
        assert!(matches!(
            h.run(4, renew(proof(1))).unwrap(),
            CoordResult::Granted { .. }
        ));
        h.run(5, release(1, proof(1))).unwrap();
        assert_eq!(h.state.locks["a"].holders[0].proof, proof(2));
        // Releasing an id that holds nothing stays a harmless no-op.
        assert_eq!(
            h.run(6, release(7, thief)).unwrap(),
            CoordResult::Released { was_holder: false }
        );
    }

    #[test]
    fn only_the_proven_member_heartbeats_commits_leaves_or_rejoins() {
        let mut h = Harness::new();
        let join = |member, proof| CoordOp::Join {
            group: "g".into(),
            member,
            proof,
            topics: vec!["orders".into()],
            session_timeout_ms: 100,
        };
        h.run(0, join(1, proof(1))).unwrap();
        let thief = Proof {
            digest: [9; 32],
            principal: Some("mallory".into()),
        };
        for op in [
            CoordOp::Heartbeat {
                group: "g".into(),
                member: 1,
                proof: thief.clone(),
            },
            CoordOp::Commit {
                group: "g".into(),
                member: 1,
                proof: thief.clone(),
                generation: 1,
                offsets: vec![("orders".into(), 0, 5)],
            },
            CoordOp::Leave {
                group: "g".into(),
                member: 1,
                proof: thief.clone(),
            },
            join(1, thief.clone()),
        ] {
            assert_eq!(h.run(1, op).unwrap_err().code, ErrorCode::UnknownMember);
        }
        let g = &h.state.groups["g"];
        assert_eq!((g.generation, g.members.len()), (1, 1));
        assert!(g.offsets.is_empty());
        h.run(
            2,
            CoordOp::Commit {
                group: "g".into(),
                member: 1,
                proof: proof(1),
                generation: 1,
                offsets: vec![("orders".into(), 0, 5)],
            },
        )
        .unwrap();
        assert_eq!(h.state.groups["g"].offsets[&("orders".to_string(), 0)], 5);
    }

    #[test]
    fn proofs_compare_digest_and_principal() {
        let a = Proof {
            digest: [1; 32],
            principal: Some("alice".into()),
        };
        assert!(a.admits(&a.clone()));
        let mut other = a.clone();
        other.digest[31] ^= 1;
        assert!(!a.admits(&other));
        assert!(!a.admits(&Proof {
            principal: None,
            ..a.clone()
        }));
    }

    fn join(group: &str, member: u64) -> CoordOp {
        CoordOp::Join {
            group: group.into(),
            member,
            proof: proof(member),
            topics: vec!["orders".into()],
            session_timeout_ms: 10_000,
        }
    }

    fn assert_limit(refused: Result<CoordResult, Refusal>, name: &str, label: &str) {
        let r = refused.expect_err("over the limit");
        assert_eq!(r.code, ErrorCode::LimitExceeded, "{}", r.message);
        assert!(r.message.contains(name), "{} names {name}", r.message);
        assert_eq!(limit_label(&r.message), Some(label));
    }

    #[test]
    fn live_locks_stop_at_locks_max_and_existing_ones_keep_working() {
        let mut h = Harness::new();
        h.run(0, acquire("held", 1, 1_000)).unwrap();
        // Fill the rest directly: applying 100,000 acquires would only
        // make the test slow.
        let filler = h.state.locks["held"].clone();
        for i in 1..LOCKS_MAX {
            h.state.locks.insert(format!("filler-{i}"), filler.clone());
        }
        assert_limit(h.run(1, acquire("new", 2, 1_000)), "LOCKS_MAX", "locks_max");
        assert!(!h.state.locks.contains_key("new"));
        // A holder renews and re-acquires; a new waiter joins an existing lock.
        let renew = CoordOp::KeepAlive {
            name: "held".into(),
            owner: 1,
            proof: proof(1),
        };
        assert!(matches!(h.run(2, renew), Ok(CoordResult::Granted { .. })));
        assert!(matches!(
            h.run(3, acquire("held", 1, 1_000)),
            Ok(CoordResult::Granted { .. })
        ));
        assert_eq!(
            h.run(4, acquire("held", 2, 1_000)),
            Ok(CoordResult::Waiting)
        );
        // Freeing one makes room again.
        h.state.locks.remove("filler-1");
        assert!(matches!(
            h.run(5, acquire("new", 3, 1_000)),
            Ok(CoordResult::Granted { .. })
        ));
    }

    #[test]
    fn a_lock_takes_at_most_lock_waiters_max_holders_and_waiters() {
        let mut h = Harness::new();
        for owner in 1..=LOCK_WAITERS_MAX as u64 {
            h.run(owner, acquire("a", owner, 10_000)).unwrap();
        }
        let over = LOCK_WAITERS_MAX as u64 + 1;
        assert_limit(
            h.run(over, acquire("a", over, 10_000)),
            "LOCK_WAITERS_MAX",
            "lock_waiters_max",
        );
        let rec = &h.state.locks["a"];
        assert_eq!(rec.holders.len() + rec.waiters.len(), LOCK_WAITERS_MAX);
        // Everyone already queued keeps their place: the holder renews, a
        // waiter asking again still waits, and a release lets one more in.
        assert!(matches!(
            h.run(over, acquire("a", 1, 10_000)),
            Ok(CoordResult::Granted { .. })
        ));
        assert_eq!(
            h.run(over, acquire("a", 2, 10_000)),
            Ok(CoordResult::Waiting)
        );
        h.run(
            over,
            CoordOp::Release {
                name: "a".into(),
                owner: 1,
                proof: proof(1),
            },
        )
        .unwrap();
        assert_eq!(
            h.run(over, acquire("a", over, 10_000)),
            Ok(CoordResult::Waiting)
        );
        // Other locks are not affected by a full one.
        assert!(matches!(
            h.run(over, acquire("b", over, 10_000)),
            Ok(CoordResult::Granted { .. })
        ));
    }

    #[test]
    fn groups_stop_at_groups_max_and_members_at_group_members_max() {
        let mut h = Harness::new();
        h.run(0, join("g", 1)).unwrap();
        let filler = GroupRecord {
            offsets: [(("orders".to_string(), 0), 1)].into(),
            ..GroupRecord::default()
        };
        for i in 1..GROUPS_MAX {
            h.state.groups.insert(format!("idle-{i}"), filler.clone());
        }
        assert_limit(h.run(1, join("new", 1)), "GROUPS_MAX", "groups_max");
        let reset = CoordOp::SetOffsets {
            group: "new-reset".into(),
            offsets: vec![("orders".into(), 0, 0)],
        };
        assert_limit(h.run(1, reset), "GROUPS_MAX", "groups_max");
        assert_eq!(h.state.groups.len(), GROUPS_MAX);
        // Existing groups keep working: a reset of an idle one, a re-join.
        let reset_idle = CoordOp::SetOffsets {
            group: "idle-1".into(),
            offsets: vec![("orders".into(), 0, 0)],
        };
        h.run(2, reset_idle).unwrap();
        h.run(2, join("g", 1)).unwrap();

        // Members of one group.
        let g = h.state.groups.get_mut("g").unwrap();
        let member = g.members[&1].clone();
        for id in 2..=GROUP_MEMBERS_MAX as u64 {
            g.members.insert(id, member.clone());
        }
        let over = GROUP_MEMBERS_MAX as u64 + 1;
        assert_limit(
            h.run(3, join("g", over)),
            "GROUP_MEMBERS_MAX",
            "group_members_max",
        );
        assert!(!h.state.groups["g"].members.contains_key(&over));
        // A member already in re-joins.
        h.run(3, join("g", 1)).unwrap();
    }

    #[test]
    fn an_empty_reset_creates_no_group() {
        let mut h = Harness::new();
        let reset = CoordOp::SetOffsets {
            group: "nothing".into(),
            offsets: Vec::new(),
        };
        h.run(0, reset).unwrap();
        assert!(h.state.groups.is_empty());
    }

    /// A lock plugin whose buffer holds [`TINY_BUFFER`] owners, like the
    /// real host's [`GRANTS_MAX`]: past it every call fails.
    #[derive(Default)]
    struct TinyBuffer {
        inner: Fifo,
        owners: usize,
    }

    const TINY_BUFFER: usize = 4;

    impl TinyBuffer {
        fn check(&self) -> Result<(), String> {
            if self.owners > TINY_BUFFER {
                return Err("buffer full".into());
            }
            Ok(())
        }
    }

    impl LockSemantics for TinyBuffer {
        fn acquire(&mut self, o: u64, m: u32, l: u64, n: u64, t: u64) -> Result<bool, String> {
            self.owners += 1;
            self.check()?;
            self.inner.acquire(o, m, l, n, t)
        }
        fn release(&mut self, o: u64, n: u64, t: u64) -> Result<(), String> {
            self.check()?;
            self.inner.release(o, n, t)
        }
        fn expire(&mut self, n: u64, t: u64) -> Result<(), String> {
            self.check()?;
            self.inner.expire(n, t)
        }
        fn holders(&self) -> Result<Vec<Grant>, String> {
            self.check()?;
            self.inner.holders()
        }
    }

    struct TinyPlugins;

    impl CoordPlugins for TinyPlugins {
        fn new_lock(&self) -> Result<Box<dyn LockSemantics>, String> {
            Ok(Box::<TinyBuffer>::default())
        }
        fn assign(&self, members: &[Member], current: &[u64]) -> Result<Vec<u64>, String> {
            Plugins.assign(members, current)
        }
    }

    #[test]
    fn a_lock_the_plugin_fails_on_does_not_stop_other_expiries() {
        let mut h = Harness::with(&TinyPlugins);
        // "big" is a record from before the cap: more shared holders than
        // the plugin can carry, all expired by the tick below.
        let holder = |owner| Holder {
            owner,
            mode: LockMode::Shared,
            token: owner,
            expires_ms: 100,
            lease_ms: 100,
            proof: proof(owner),
        };
        h.state.locks.insert(
            "big".into(),
            LockRecord {
                holders: (1..=TINY_BUFFER as u64 + 1).map(holder).collect(),
                waiters: Vec::new(),
            },
        );
        h.run(0, acquire("small", 10, 100)).unwrap();
        h.run(0, acquire("small", 11, 1_000)).unwrap();
        h.run(0, join("g", 20)).unwrap();
        let session_end = h.state.groups["g"].members[&20].session_timeout_ms;
        h.run(session_end + 1, CoordOp::Tick)
            .expect("a tick succeeds whatever one lock's plugin says");
        // "small" expired and granted its waiter; the group session ended.
        assert_eq!(h.state.locks["small"].holders[0].owner, 11);
        assert!(!h.state.groups.contains_key("g"), "member expired");
        assert_eq!(h.state.counters.sessions_expired, 1);
        // "big" lost its expired holders all the same, so no deadline stays
        // in the past (a tick would otherwise be proposed every 20 ms).
        assert!(!h.state.locks.contains_key("big"));
        assert_eq!(h.state.counters.expiry_failures, 1);
        assert!(h.state.next_deadline_ms() > Some(session_end + 1));
    }

    // --- Kafka's group protocol -------------------------------------

    fn kproof(id: &str) -> Proof {
        let mut digest = [0u8; 32];
        for (i, b) in id.bytes().enumerate() {
            digest[i % 32] ^= b;
        }
        Proof {
            digest,
            principal: None,
        }
    }

    fn kjoin_with(group: &str, id: &str, protocols: &[(&str, &[u8])]) -> CoordOp {
        CoordOp::KafkaJoin {
            group: group.into(),
            member_id: id.into(),
            client_id: "app".into(),
            client_host: "/127.0.0.1".into(),
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|(n, m)| (n.to_string(), m.to_vec()))
                .collect(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            proof: kproof(id),
        }
    }

    /// Member `id` joins offering `range` with its own id as metadata.
    fn kjoin(group: &str, id: &str) -> CoordOp {
        kjoin_with(group, id, &[("range", id.as_bytes())])
    }

    fn ksync(group: &str, id: &str, generation: i32, assignments: &[(&str, &[u8])]) -> CoordOp {
        CoordOp::KafkaSync {
            group: group.into(),
            member_id: id.into(),
            generation,
            assignments: assignments
                .iter()
                .map(|(m, a)| (m.to_string(), a.to_vec()))
                .collect(),
            proof: kproof(id),
        }
    }

    fn kbeat(group: &str, id: &str, generation: i32) -> CoordOp {
        CoordOp::KafkaHeartbeat {
            group: group.into(),
            member_id: id.into(),
            generation,
            proof: kproof(id),
        }
    }

    fn kcommit(group: &str, id: &str, generation: i32, offset: u64) -> CoordOp {
        CoordOp::KafkaCommit {
            group: group.into(),
            member_id: id.into(),
            generation,
            offsets: vec![("orders".into(), 0, offset)],
            proof: kproof(id),
        }
    }

    fn kleave(group: &str, ids: &[&str]) -> CoordOp {
        CoordOp::KafkaLeave {
            group: group.into(),
            members: ids.iter().map(|id| (id.to_string(), kproof(id))).collect(),
        }
    }

    /// A join's answer: (generation, leader, members the caller was given).
    fn joined(answer: Result<CoordResult, Refusal>) -> (i32, String, Vec<(String, Vec<u8>)>) {
        match answer {
            Ok(CoordResult::KafkaJoined {
                generation,
                leader,
                members,
                ..
            }) => (generation, leader, members),
            other => panic!("expected a join answer, got {other:?}"),
        }
    }

    fn refused(answer: Result<CoordResult, Refusal>) -> KafkaRefusal {
        match answer {
            Ok(CoordResult::KafkaRefused { refusal, .. }) => refusal,
            other => panic!("expected a Kafka refusal, got {other:?}"),
        }
    }

    fn assignment(answer: Result<CoordResult, Refusal>) -> Option<Vec<u8>> {
        match answer {
            Ok(CoordResult::KafkaAssignment { assignment }) => assignment,
            other => panic!("expected a sync answer, got {other:?}"),
        }
    }

    fn kstate(h: &Harness, group: &str) -> &'static str {
        let g = &h.state.groups[group];
        g.kafka.as_ref().unwrap().state(g.generation)
    }

    #[test]
    fn kafka_members_join_the_leader_assigns_and_followers_wait_for_it() {
        let mut h = Harness::new();
        let (generation, leader, members) = joined(h.run(0, kjoin("g", "a")));
        assert_eq!((generation, leader.as_str()), (1, "a"));
        assert_eq!(members, vec![("a".to_string(), b"a".to_vec())]);
        // The second member starts one new generation; it does not lead, so
        // it gets no member list.
        let (generation, leader, members) = joined(h.run(1, kjoin("g", "b")));
        assert_eq!((generation, leader.as_str()), (2, "a"));
        assert!(members.is_empty());
        assert_eq!(h.state.groups["g"].rebalances, 2);
        assert_eq!(kstate(&h, "g"), "PreparingRebalance", "a is still in 1");
        // The leader, told to re-join, gets every member's metadata.
        assert_eq!(
            refused(h.run(2, kbeat("g", "a", 1))),
            KafkaRefusal::RebalanceInProgress
        );
        let (generation, _, members) = joined(h.run(3, kjoin("g", "a")));
        assert_eq!(generation, 2);
        assert_eq!(
            members,
            vec![
                ("a".to_string(), b"a".to_vec()),
                ("b".to_string(), b"b".to_vec())
            ]
        );
        assert_eq!(kstate(&h, "g"), "CompletingRebalance");
        // The follower's sync is pending until the leader's.
        assert_eq!(assignment(h.run(4, ksync("g", "b", 2, &[]))), None);
        assert_eq!(
            refused(h.run(4, kbeat("g", "b", 2))),
            KafkaRefusal::RebalanceInProgress
        );
        let mine = assignment(h.run(5, ksync("g", "a", 2, &[("a", b"A"), ("b", b"B")])));
        assert_eq!(mine, Some(b"A".to_vec()));
        assert_eq!(
            assignment(h.run(6, ksync("g", "b", 2, &[]))),
            Some(b"B".to_vec())
        );
        assert_eq!(kstate(&h, "g"), "Stable");
        for id in ["a", "b"] {
            assert_eq!(h.run(7, kbeat("g", id, 2)), Ok(CoordResult::Done));
        }
        // A retried leader sync changes nothing (operations are idempotent).
        let again = assignment(h.run(8, ksync("g", "a", 2, &[("a", b"X")])));
        assert_eq!(again, Some(b"A".to_vec()));
        assert_eq!(h.state.groups["g"].rebalances, 2);
    }

    #[test]
    fn a_kafka_member_the_leader_leaves_out_gets_an_empty_assignment() {
        let mut h = Harness::new();
        h.run(0, kjoin("g", "a")).unwrap();
        h.run(0, kjoin("g", "b")).unwrap();
        h.run(1, kjoin("g", "a")).unwrap();
        h.run(2, ksync("g", "a", 2, &[("a", b"A"), ("ghost", b"G")]))
            .unwrap();
        assert_eq!(
            assignment(h.run(3, ksync("g", "b", 2, &[]))),
            Some(Vec::new())
        );
        let k = h.state.groups["g"].kafka.as_ref().unwrap();
        assert!(!k.members.contains_key("ghost"));
    }

    #[test]
    fn a_kafka_rejoin_with_the_same_protocols_starts_no_generation() {
        let mut h = Harness::new();
        h.run(0, kjoin("g", "a")).unwrap();
        h.run(0, kjoin("g", "b")).unwrap();
        // Joins held by the broker are re-proposed: no generation either.
        for at in 1..3 {
            let (generation, leader, _) = joined(h.run(at, kjoin("g", "a")));
            assert_eq!((generation, leader.as_str()), (2, "a"));
        }
        h.run(3, ksync("g", "a", 2, &[("a", b"A"), ("b", b"B")]))
            .unwrap();
        for at in 4..6 {
            let (generation, leader, _) = joined(h.run(at, kjoin("g", "b")));
            assert_eq!((generation, leader.as_str()), (2, "a"));
        }
        let g = &h.state.groups["g"];
        assert_eq!((g.generation, g.rebalances), (2, 2));
        assert_eq!(kstate(&h, "g"), "Stable", "the assignment is kept");
        // The leader re-joining a stable group runs its assignment again.
        let (generation, _, _) = joined(h.run(6, kjoin("g", "a")));
        assert_eq!(generation, 3);
        assert_eq!(kstate(&h, "g"), "PreparingRebalance", "b must re-join");
        h.run(7, kjoin("g", "b")).unwrap();
        h.run(7, ksync("g", "a", 3, &[("a", b"A"), ("b", b"B")]))
            .unwrap();
        // New protocol metadata (e.g. a new subscription) does start one.
        let (generation, _, _) = joined(h.run(8, kjoin_with("g", "b", &[("range", b"new")])));
        assert_eq!(generation, 4);
        assert_eq!(kstate(&h, "g"), "PreparingRebalance", "a must re-join");
    }

    #[test]
    fn a_third_kafka_member_sends_the_others_back_to_join() {
        let mut h = Harness::new();
        for id in ["a", "b"] {
            h.run(0, kjoin("g", id)).unwrap();
        }
        h.run(1, kjoin("g", "a")).unwrap();
        h.run(2, ksync("g", "a", 2, &[("a", b"A"), ("b", b"B")]))
            .unwrap();
        h.run(2, ksync("g", "b", 2, &[])).unwrap();
        let (generation, _, _) = joined(h.run(3, kjoin("g", "c")));
        assert_eq!(generation, 3);
        for id in ["a", "b"] {
            assert_eq!(
                refused(h.run(4, kbeat("g", id, 2))),
                KafkaRefusal::RebalanceInProgress,
                "{id}"
            );
            assert_eq!(
                refused(h.run(4, kcommit("g", id, 2, 5))),
                KafkaRefusal::RebalanceInProgress,
                "{id} cannot commit for the old generation"
            );
        }
        // Once re-joined, an old generation is not the member's any more.
        h.run(5, kjoin("g", "b")).unwrap();
        assert_eq!(
            refused(h.run(6, kbeat("g", "b", 2))),
            KafkaRefusal::IllegalGeneration
        );
        assert_eq!(
            refused(h.run(6, kbeat("g", "b", 9))),
            KafkaRefusal::IllegalGeneration
        );
        assert!(h.state.groups["g"].offsets.is_empty());
    }

    #[test]
    fn kafka_leave_and_session_end_start_a_generation_and_a_new_leader() {
        let mut h = Harness::new();
        for id in ["a", "b", "c"] {
            h.run(0, kjoin("g", id)).unwrap();
        }
        assert_eq!(h.state.groups["g"].generation, 3);
        h.run(10, kleave("g", &["a"])).unwrap();
        let g = &h.state.groups["g"];
        let k = g.kafka.as_ref().unwrap();
        assert_eq!(g.generation, 4);
        assert_eq!(k.leader.as_deref(), Some("b"), "the oldest member leads");
        // Leaving again is harmless.
        h.run(11, kleave("g", &["a"])).unwrap();
        assert_eq!(h.state.groups["g"].generation, 4);
        // c keeps its session; b's ends.
        // (A heartbeat refreshes the session whatever it answers.)
        h.run(9_000, kbeat("g", "c", 4)).unwrap();
        let deadline = h.state.next_deadline_ms();
        assert_eq!(deadline, Some(10_000), "b's session (it joined at 0)");
        h.run(9_999, CoordOp::Tick).unwrap();
        assert_eq!(h.state.groups["g"].generation, 4);
        h.run(10_000, CoordOp::Tick).unwrap();
        let g = &h.state.groups["g"];
        let k = g.kafka.as_ref().unwrap();
        assert_eq!(k.members.keys().collect::<Vec<_>>(), vec!["c"]);
        assert_eq!((g.generation, k.leader.as_deref()), (5, Some("c")));
        assert_eq!(h.state.counters.sessions_expired, 1);
        // The last member leaving empties the group, which keeps its place
        // until the retention.
        h.run(10_001, kleave("g", &["c"])).unwrap();
        let g = &h.state.groups["g"];
        assert!(g.is_empty());
        assert_eq!(g.generation, 6);
        assert_eq!(kstate(&h, "g"), "Empty");
        assert_eq!(
            h.state.next_deadline_ms(),
            Some(10_001 + GROUP_RETENTION_MS)
        );
    }

    #[test]
    fn a_kafka_member_that_does_not_rejoin_in_its_rebalance_timeout_is_removed() {
        let mut h = Harness::new();
        let slow = |id: &str| CoordOp::KafkaJoin {
            group: "g".into(),
            member_id: id.into(),
            client_id: "app".into(),
            client_host: "h".into(),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Vec::new())],
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 500,
            proof: kproof(id),
        };
        h.run(0, slow("a")).unwrap();
        h.run(100, slow("b")).unwrap();
        // a heartbeats (it is alive) but never re-joins.
        h.run(400, kbeat("g", "a", 1)).unwrap();
        assert_eq!(h.state.next_deadline_ms(), Some(600));
        h.run(599, CoordOp::Tick).unwrap();
        assert_eq!(h.state.groups["g"].kafka.as_ref().unwrap().members.len(), 2);
        h.run(600, CoordOp::Tick).unwrap();
        let g = &h.state.groups["g"];
        let k = g.kafka.as_ref().unwrap();
        assert_eq!(k.members.keys().collect::<Vec<_>>(), vec!["b"]);
        assert_eq!((g.generation, k.leader.as_deref()), (3, Some("b")));
    }

    #[test]
    fn kafka_commits_need_the_current_generation_or_an_empty_group() {
        let mut h = Harness::new();
        // A simple commit (no member, generation -1) on a group nobody uses.
        h.run(0, kcommit("g", "", -1, 3)).unwrap();
        assert_eq!(h.state.groups["g"].offsets[&("orders".to_string(), 0)], 3);
        h.run(1, kjoin("g", "a")).unwrap();
        // Not before the assignment is known.
        assert_eq!(
            refused(h.run(2, kcommit("g", "a", 1, 5))),
            KafkaRefusal::RebalanceInProgress
        );
        h.run(2, ksync("g", "a", 1, &[("a", b"A")])).unwrap();
        assert_eq!(h.run(3, kcommit("g", "a", 1, 5)), Ok(CoordResult::Done));
        // The same offsets a Tern describe reads.
        assert_eq!(h.state.groups["g"].offsets[&("orders".to_string(), 0)], 5);
        for (op, why) in [
            (kcommit("g", "a", 0, 9), KafkaRefusal::IllegalGeneration),
            (kcommit("g", "a", 2, 9), KafkaRefusal::IllegalGeneration),
            (kcommit("g", "nobody", 1, 9), KafkaRefusal::UnknownMember),
            (kcommit("g", "", -1, 9), KafkaRefusal::UnknownMember),
            (kcommit("other", "a", 1, 9), KafkaRefusal::UnknownMember),
        ] {
            assert_eq!(refused(h.run(4, op)), why);
        }
        assert_eq!(h.state.groups["g"].offsets[&("orders".to_string(), 0)], 5);
        // Unknown partitions are refused whole.
        let bad = CoordOp::KafkaCommit {
            group: "g".into(),
            member_id: "a".into(),
            generation: 1,
            offsets: vec![("orders".into(), 0, 6), ("orders".into(), 4, 1)],
            proof: kproof("a"),
        };
        let r = h.run(5, bad).unwrap_err();
        assert_eq!(r.code, ErrorCode::UnknownTopicOrPartition);
        assert_eq!(h.state.groups["g"].offsets[&("orders".to_string(), 0)], 5);
        // Once the group is empty, simple commits work again.
        h.run(6, kleave("g", &["a"])).unwrap();
        h.run(7, kcommit("g", "", -1, 11)).unwrap();
        assert_eq!(h.state.groups["g"].offsets[&("orders".to_string(), 0)], 11);
    }

    #[test]
    fn a_group_holds_tern_or_kafka_members_never_both() {
        let mut h = Harness::new();
        h.run(0, join("tern", 1)).unwrap();
        assert_eq!(
            refused(h.run(1, kjoin("tern", "a"))),
            KafkaRefusal::InconsistentGroupProtocol
        );
        h.run(2, kjoin("kafka", "a")).unwrap();
        let r = h.run(3, join("kafka", 1)).unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidRequest);
        assert!(r.message.contains("Kafka"), "{}", r.message);
        assert!(h.state.groups["kafka"].members.is_empty());
        assert!(h.state.groups["tern"].kafka.is_none());
        // A Tern reset of offsets waits for Kafka members too.
        let reset = CoordOp::SetOffsets {
            group: "kafka".into(),
            offsets: vec![("orders".into(), 0, 0)],
        };
        assert_eq!(h.run(4, reset).unwrap_err().code, ErrorCode::InvalidRequest);
        // Emptied, either kind may take the group over, offsets and all.
        h.run(5, ksync("kafka", "a", 1, &[("a", b"")])).unwrap();
        h.run(5, kcommit("kafka", "a", 1, 8)).unwrap();
        h.run(6, kleave("kafka", &["a"])).unwrap();
        let CoordResult::Member { generation, .. } = h.run(7, join("kafka", 1)).unwrap() else {
            panic!("member answer")
        };
        let g = &h.state.groups["kafka"];
        assert_eq!(generation, 3, "one generation count for both kinds");
        assert!(g.kafka.is_none());
        assert_eq!(g.offsets[&("orders".to_string(), 0)], 8);
    }

    #[test]
    fn kafka_members_must_share_a_protocol_type_and_a_protocol() {
        let mut h = Harness::new();
        h.run(0, kjoin_with("g", "a", &[("sticky", b""), ("range", b"")]))
            .unwrap();
        let k = h.state.groups["g"].kafka.clone().unwrap();
        assert_eq!(k.protocol.as_deref(), Some("sticky"));
        assert_eq!(
            refused(h.run(1, kjoin_with("g", "b", &[("roundrobin", b"")]))),
            KafkaRefusal::InconsistentGroupProtocol
        );
        let mut other_type = kjoin("g", "c");
        if let CoordOp::KafkaJoin { protocol_type, .. } = &mut other_type {
            *protocol_type = "connect".into();
        }
        assert_eq!(
            refused(h.run(1, other_type)),
            KafkaRefusal::InconsistentGroupProtocol
        );
        assert_eq!(h.state.groups["g"].kafka.as_ref(), Some(&k), "unchanged");
        // The first member's preference among those every member supports.
        h.run(
            2,
            kjoin_with("g", "b", &[("range", b"r"), ("sticky", b"s")]),
        )
        .unwrap();
        let (_, _, members) =
            joined(h.run(3, kjoin_with("g", "a", &[("sticky", b""), ("range", b"")])));
        let k = h.state.groups["g"].kafka.as_ref().unwrap();
        assert_eq!(k.protocol.as_deref(), Some("sticky"));
        assert_eq!(members[1], ("b".to_string(), b"s".to_vec()));
        // An empty member id or protocol list is a broker bug, refused.
        let r = h
            .run(4, kjoin_with("g", "", &[("range", b"")]))
            .unwrap_err();
        assert_eq!(r.code, ErrorCode::InvalidRequest);
        assert_eq!(
            h.run(4, kjoin_with("g", "d", &[])).unwrap_err().code,
            ErrorCode::InvalidRequest
        );
    }

    #[test]
    fn only_the_proven_kafka_member_syncs_heartbeats_commits_leaves_or_rejoins() {
        let mut h = Harness::new();
        h.run(0, kjoin("g", "a")).unwrap();
        let thief = Proof {
            digest: kproof("a").digest,
            principal: Some("mallory".into()),
        };
        let mut ops = vec![
            ksync("g", "a", 1, &[("a", b"stolen")]),
            kbeat("g", "a", 1),
            kcommit("g", "a", 1, 5),
            kjoin("g", "a"),
        ];
        for op in &mut ops {
            match op {
                CoordOp::KafkaSync { proof, .. }
                | CoordOp::KafkaHeartbeat { proof, .. }
                | CoordOp::KafkaCommit { proof, .. }
                | CoordOp::KafkaJoin { proof, .. } => *proof = thief.clone(),
                _ => unreachable!(),
            }
        }
        ops.push(CoordOp::KafkaLeave {
            group: "g".into(),
            members: vec![("a".into(), thief.clone())],
        });
        for op in ops {
            assert_eq!(refused(h.run(1, op)), KafkaRefusal::UnknownMember);
        }
        let g = &h.state.groups["g"];
        let k = g.kafka.as_ref().unwrap();
        assert_eq!((g.generation, k.members.len()), (1, 1));
        assert_eq!(k.members["a"].assignment, None);
        assert!(g.offsets.is_empty());
    }

    #[test]
    fn kafka_groups_members_and_bytes_are_capped() {
        let mut h = Harness::new();
        h.run(0, kjoin("g", "a")).unwrap();
        let filler = GroupRecord {
            offsets: [(("orders".to_string(), 0), 1)].into(),
            ..GroupRecord::default()
        };
        for i in 1..GROUPS_MAX {
            h.state.groups.insert(format!("idle-{i}"), filler.clone());
        }
        assert_limit(h.run(1, kjoin("new", "a")), "GROUPS_MAX", "groups_max");
        assert_limit(
            h.run(1, kcommit("new", "", -1, 1)),
            "GROUPS_MAX",
            "groups_max",
        );
        // An idle group can still be joined.
        joined(h.run(1, kjoin("idle-1", "a")));
        h.state.groups.retain(|name, _| !name.starts_with("idle-"));

        let k = h.state.groups.get_mut("g").unwrap().kafka.as_mut().unwrap();
        let member = k.members["a"].clone();
        for i in 1..GROUP_MEMBERS_MAX {
            k.members.insert(format!("m{i}"), member.clone());
        }
        assert_limit(
            h.run(2, kjoin("g", "over")),
            "GROUP_MEMBERS_MAX",
            "group_members_max",
        );
        joined(h.run(2, kjoin("g", "a")));
        let k = h.state.groups.get_mut("g").unwrap().kafka.as_mut().unwrap();
        k.members.retain(|id, _| id == "a");

        let big = vec![0u8; KAFKA_MEMBER_BYTES_MAX];
        assert_limit(
            h.run(3, kjoin_with("g", "b", &[("range", &big)])),
            "KAFKA_MEMBER_BYTES_MAX",
            "kafka_member_bytes_max",
        );
        // Twenty members of 60 KiB are more than a group may hold.
        let large = vec![0u8; 60 * 1024];
        let mut refusal = None;
        for i in 0..20 {
            let answer = h.run(4, kjoin_with("g", &format!("m{i}"), &[("range", &large)]));
            if answer.is_err() {
                refusal = Some(answer);
                break;
            }
        }
        assert_limit(
            refusal.expect("the group filled up"),
            "KAFKA_GROUP_BYTES_MAX",
            "kafka_group_bytes_max",
        );
        assert!(h.state.groups["g"].kafka.as_ref().unwrap().bytes() <= KAFKA_GROUP_BYTES_MAX);
        // Assignments are capped as they are stored.
        let names: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        h.run(5, kleave("g", &names)).unwrap();
        let (generation, leader, _) = joined(h.run(6, kjoin("g", "a")));
        assert_eq!(leader, "a");
        let too_big = vec![0u8; KAFKA_MEMBER_BYTES_MAX + 1];
        assert_limit(
            h.run(7, ksync("g", "a", generation, &[("a", &too_big)])),
            "KAFKA_MEMBER_BYTES_MAX",
            "kafka_member_bytes_max",
        );
        assert_eq!(kstate(&h, "g"), "CompletingRebalance");
    }

    #[test]
    fn an_empty_group_expires_after_the_retention_on_replicated_time() {
        let mut h = Harness::new();
        let start = 1_000;
        // A group made by a reset alone, and one whose member leaves.
        let reset = CoordOp::SetOffsets {
            group: "reset-only".into(),
            offsets: vec![("orders".into(), 0, 3)],
        };
        h.run(start, reset).unwrap();
        h.run(start, join("left", 1)).unwrap();
        let generation = h.state.groups["left"].generation;
        let owned = h.state.groups["left"].assigned_to(1)[0].clone();
        let commit = CoordOp::Commit {
            group: "left".into(),
            member: 1,
            proof: proof(1),
            generation,
            offsets: vec![(owned.0, owned.1, 5)],
        };
        h.run(start + 10, commit).unwrap();
        let leave = CoordOp::Leave {
            group: "left".into(),
            member: 1,
            proof: proof(1),
        };
        h.run(start + 20, leave).unwrap();
        // A group with a live member never expires, whatever its age.
        let live = CoordOp::Join {
            group: "live".into(),
            member: 2,
            proof: proof(2),
            topics: vec!["orders".into()],
            session_timeout_ms: 2 * GROUP_RETENTION_MS,
        };
        h.run(start, live).unwrap();
        // The retention counts from the last activity: the reset for one,
        // the leave for the other (its commit came before), and a tick is
        // due at the first of them.
        assert_eq!(h.state.next_deadline_ms(), Some(start + GROUP_RETENTION_MS));
        h.run(start + GROUP_RETENTION_MS - 1, CoordOp::Tick)
            .unwrap();
        assert_eq!(h.state.groups.len(), 3);
        h.run(start + GROUP_RETENTION_MS, CoordOp::Tick).unwrap();
        assert!(!h.state.groups.contains_key("reset-only"));
        assert!(h.state.groups.contains_key("left"));
        assert_eq!(h.state.counters.groups_expired, 1);
        h.run(start + 20 + GROUP_RETENTION_MS, CoordOp::Tick)
            .unwrap();
        assert_eq!(
            h.state.groups.keys().collect::<Vec<_>>(),
            vec!["live"],
            "only the group with a member is left"
        );
        assert_eq!(h.state.counters.groups_expired, 2);
    }
}
