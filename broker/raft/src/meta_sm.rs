//! The state machine of the metadata group: the cluster [`Catalogue`]
//! (topics, their replica placement, registered brokers) and the
//! coordination state (locks, consumer groups: [`crate::coord`]).
//!
//! Every node is a member of the metadata group and applies the same
//! commands, so every node has the catalogue; catalogue changes are
//! published on a `watch` channel that the broker's reconciler follows to
//! open and close partition groups, and coordination changes on another
//! that waiting lock requests and group heartbeats follow. The users
//! (stored SCRAM credentials, never passwords) are published on a third,
//! which the broker reads when a client authenticates, and the
//! authorization rules (ACLs) on a fourth that every request's check reads.
//! The state is small: it is persisted whole with every apply and is itself
//! the snapshot (catalogue, coordination state, users, then the ACL rules).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, Snapshot, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};
use tern_acl::{AclError, AclRule, AclSet};
use tern_protocol::ErrorCode;
use tern_storage::Store;
use tokio::sync::watch;

use crate::catalogue_v1::MetaStateV1;
use crate::coord::{CoordPlugins, CoordState};
use crate::coord_v1::CoordStateV1;
use crate::coord_v2::CoordStateV2;
use crate::log_store::blocking;
use crate::types::{
    BrokerEntry, Catalogue, Command, CommandResponse, Entry, LogId, NodeId, PrebuiltSnapshot,
    RaftStorageError, RebalancePlan, StoredMembership, TernRaft, TopicEntry, Users, LISTENERS_MAX,
    LISTENER_BYTES_MAX, RACK_BYTES_MAX, REBALANCE_CONCURRENT_MOVES_MAX, REBALANCE_ERROR_BYTES_MAX,
    REBALANCE_MOVES_MAX, USERS_MAX,
};

const STATE_KEY: &[u8] = b"sm/meta";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct MetaState {
    applied: Option<LogId>,
    membership: StoredMembership,
    catalogue: Catalogue,
}

fn sm_err(e: impl std::fmt::Display) -> RaftStorageError {
    RaftStorageError::IO {
        source: StorageIOError::write_state_machine(AnyError::error(e.to_string())),
    }
}

/// Coordination state shared between the state machine (which alone
/// changes it) and the broker (which reads it to answer lock and group
/// requests); `applied` moves on every change.
pub struct CoordView {
    state: std::sync::Mutex<CoordState>,
    applied: watch::Sender<u64>,
}

impl CoordView {
    /// Reads the state (never hold the guard across an await).
    pub fn read<T>(&self, f: impl FnOnce(&CoordState) -> T) -> T {
        f(&self.state.lock().expect("coordination state lock"))
    }

    /// Follows changes: the value is the log index of the last change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }
}

/// An opened state machine with the receivers of its catalogue, its
/// coordination state, its users and its ACL rules.
pub type Opened = (
    MetaStateMachine,
    watch::Receiver<Arc<Catalogue>>,
    Arc<CoordView>,
    watch::Receiver<Arc<Users>>,
    watch::Receiver<Arc<AclSet>>,
);

/// The first 8 bytes of the persisted state in its current layout. The
/// layouts before `tern-ms2` had no marker and start with `MetaState`, whose
/// first byte (an `Option` tag) is 0 or 1, never this one's `t`.
/// `tern-ms4`: as `tern-ms3`, followed by the brokers' racks and the last
/// rebalance plan ([`Placement`]).
const STATE_FORMAT: u64 = u64::from_le_bytes(*b"tern-ms4");
/// `tern-ms3`: brokers register listeners, groups carry Kafka state.
const STATE_FORMAT_MS3: u64 = u64::from_le_bytes(*b"tern-ms3");
/// The layout before that: the catalogue of `catalogue_v1`, the
/// coordination state of [`CoordStateV2`].
const STATE_FORMAT_MS2: u64 = u64::from_le_bytes(*b"tern-ms2");

/// The catalogue's parts persisted after the rest (added in `tern-ms4`,
/// so the layout before them stays that of `tern-ms3`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Placement {
    racks: BTreeMap<NodeId, String>,
    rebalance: Option<RebalancePlan>,
}

/// The persisted state.
type Persisted = (u64, MetaState, CoordState, Users, Vec<AclRule>, Placement);

/// `tern-ms3`: as [`Persisted`] without [`Placement`].
type PersistedMs3 = (u64, MetaState, CoordState, Users, Vec<AclRule>);

/// `tern-ms2`: as [`Persisted`], with the old catalogue and coordination
/// state.
type PersistedMs2 = (u64, MetaStateV1, CoordStateV2, Users, Vec<AclRule>);

/// The state persisted before `tern-ms2`, unmarked (groups did not expire).
/// One written before users and ACLs existed is its first two parts alone,
/// and still opens (with no users and no rules).
type PersistedV1 = (MetaStateV1, CoordStateV1, Users, Vec<AclRule>);

impl From<MetaStateV1> for MetaState {
    fn from(old: MetaStateV1) -> MetaState {
        MetaState {
            applied: old.applied,
            membership: old.membership,
            catalogue: old.catalogue.into(),
        }
    }
}

fn decode_state(bytes: &[u8]) -> Result<(MetaState, CoordState, Users, AclSet), RaftStorageError> {
    let marker = bytes
        .get(..8)
        .map(|m| u64::from_le_bytes(m.try_into().expect("8 bytes")));
    let (state, coord, users, rules) = match marker {
        Some(STATE_FORMAT) => {
            let (_, mut state, coord, users, rules, placement) =
                bincode::deserialize::<Persisted>(bytes).map_err(sm_err)?;
            state.catalogue.racks = placement.racks;
            state.catalogue.rebalance = placement.rebalance;
            (state, coord, users, rules)
        }
        Some(STATE_FORMAT_MS3) => {
            let (_, state, coord, users, rules) =
                bincode::deserialize::<PersistedMs3>(bytes).map_err(sm_err)?;
            (state, coord, users, rules)
        }
        Some(STATE_FORMAT_MS2) => {
            let (_, state, coord, users, rules) =
                bincode::deserialize::<PersistedMs2>(bytes).map_err(sm_err)?;
            (state.into(), coord.into(), users, rules)
        }
        _ => match bincode::deserialize::<PersistedV1>(bytes) {
            Ok((state, coord, users, rules)) => (state.into(), coord.into(), users, rules),
            Err(_) => match bincode::deserialize::<(MetaStateV1, CoordStateV1)>(bytes) {
                Ok((state, coord)) => (state.into(), coord.into(), Users::new(), Vec::new()),
                Err(e) => return Err(sm_err(format!("metadata state of an unknown format: {e}"))),
            },
        },
    };
    let acls = AclSet::from_rules(rules).map_err(sm_err)?;
    Ok((state, coord, users, acls))
}

/// The metadata state machine.
pub struct MetaStateMachine {
    store: Store,
    state: MetaState,
    publish: watch::Sender<Arc<Catalogue>>,
    coord: Arc<CoordView>,
    plugins: Option<Arc<dyn CoordPlugins>>,
    users: Users,
    publish_users: watch::Sender<Arc<Users>>,
    /// A user command was applied since the last publication.
    users_changed: bool,
    /// The rules; the published copy is replaced on every change.
    acls: Arc<AclSet>,
    publish_acls: watch::Sender<Arc<AclSet>>,
}

impl MetaStateMachine {
    /// Restores the state from `store`; the receivers follow every change.
    /// Without `plugins`, coordination commands are refused.
    pub fn open(
        store: Store,
        plugins: Option<Arc<dyn CoordPlugins>>,
    ) -> Result<Opened, RaftStorageError> {
        let (mut state, coord, users, acls) = match store.meta_get(STATE_KEY).map_err(sm_err)? {
            Some(v) => decode_state(&v)?,
            None => Default::default(),
        };
        let acls = Arc::new(acls);
        let (publish_acls, acls_rx) = watch::channel(acls.clone());
        if state.catalogue.next_topic_id == 0 {
            state.catalogue.next_topic_id = 1;
        }
        let (publish, rx) = watch::channel(Arc::new(state.catalogue.clone()));
        let (publish_users, users_rx) = watch::channel(Arc::new(users.clone()));
        let coord = Arc::new(CoordView {
            state: std::sync::Mutex::new(coord),
            applied: watch::channel(0).0,
        });
        Ok((
            MetaStateMachine {
                store,
                state,
                publish,
                coord: coord.clone(),
                plugins,
                users,
                publish_users,
                users_changed: false,
                acls,
                publish_acls,
            },
            rx,
            coord,
            users_rx,
            acls_rx,
        ))
    }

    /// Applies one command; `catalogue_changed` is set when it touched the
    /// catalogue.
    fn apply_command(
        &mut self,
        index: u64,
        command: Command,
        catalogue_changed: &mut bool,
    ) -> CommandResponse {
        if let Command::Coord {
            stamp_ms,
            term,
            ops,
        } = command
        {
            let catalogue = &self.state.catalogue;
            let topics = |t: &str| catalogue.topics.get(t).map(|e| e.settings.partitions);
            let mut coord = self.coord.state.lock().expect("coordination state lock");
            let plugins = self.plugins.as_deref();
            let answers = ops
                .into_iter()
                .enumerate()
                .map(|(position, op)| {
                    // Fencing tokens: log index, then position in the batch,
                    // so they only grow (a batch holds at most 65,536 ops).
                    let token = (index << 16) | position as u64;
                    coord
                        .apply(plugins, token, stamp_ms, term, op, &topics)
                        .map_err(|r| (r.code as u16, r.message))
                })
                .collect();
            return CommandResponse::Coord(answers);
        }
        if matches!(
            command,
            Command::PutUser { .. } | Command::DeleteUser { .. }
        ) {
            self.users_changed = true;
            return self.apply_user_command(command);
        }
        if let Command::AddAcl(_) | Command::RemoveAcl(_) = command {
            return self.apply_acl_command(command);
        }
        *catalogue_changed = true;
        let topic_touched = match &command {
            Command::CreateTopic { name, .. }
            | Command::DeleteTopic { name }
            | Command::AddPartitions { name, .. } => Some(name.clone()),
            _ => None,
        };
        let grown_from = match &command {
            Command::AddPartitions { from, .. } => Some(*from),
            _ => None,
        };
        let response = self.apply_catalogue_command(command);
        if let Some(topic) = topic_touched {
            let catalogue = &self.state.catalogue;
            let topics = |t: &str| catalogue.topics.get(t).map(|e| e.settings.partitions);
            let mut coord = self.coord.state.lock().expect("coordination state lock");
            match (grown_from, topics(&topic)) {
                (Some(from), Some(to)) if response == CommandResponse::Done => {
                    coord.partitions_added(self.plugins.as_deref(), &topic, from..to, &topics)
                }
                _ => coord.topic_changed(self.plugins.as_deref(), &topic, &topics),
            }
        }
        response
    }

    /// Users: the broker checked the name and credential before proposing;
    /// the limits that depend on the replicated state are checked here.
    fn apply_user_command(&mut self, command: Command) -> CommandResponse {
        match command {
            Command::PutUser {
                name,
                credential,
                create_only,
            } => {
                if let Some(existing) = self.users.get_mut(&name) {
                    if !create_only {
                        *existing = credential;
                    }
                    return CommandResponse::Done;
                }
                if self.users.len() >= USERS_MAX {
                    return CommandResponse::Rejected {
                        code: ErrorCode::LimitExceeded as u16,
                        message: format!(
                            "the cluster has {} users, its limit (USERS_MAX); delete some first",
                            self.users.len()
                        ),
                    };
                }
                self.users.insert(name, credential);
                CommandResponse::Done
            }
            Command::DeleteUser { name } => match self.users.remove(&name) {
                Some(_) => CommandResponse::Done,
                None => CommandResponse::Rejected {
                    code: ErrorCode::InvalidRequest as u16,
                    message: format!("no user {name:?}"),
                },
            },
            _ => CommandResponse::Rejected {
                code: ErrorCode::InvalidRequest as u16,
                message: "not a user command".into(),
            },
        }
    }

    /// Adds or removes a rule and publishes the new set. The published set
    /// is immutable (checks read it without a lock), so a change copies it:
    /// O(rules), fine at the rate ACLs change, never on a request's path.
    fn apply_acl_command(&mut self, command: Command) -> CommandResponse {
        let acls = Arc::make_mut(&mut self.acls);
        let outcome = match command {
            Command::AddAcl(rule) => acls.add(rule).map(|_| ()),
            Command::RemoveAcl(rule) => {
                acls.remove(&rule);
                Ok(())
            }
            _ => Ok(()),
        };
        match outcome {
            Ok(()) => {
                self.publish_acls.send_replace(self.acls.clone());
                CommandResponse::Done
            }
            Err(e) => CommandResponse::Rejected {
                code: match e {
                    AclError::TooManyRules { .. } => ErrorCode::LimitExceeded,
                    AclError::InvalidRule { .. } => ErrorCode::InvalidRequest,
                } as u16,
                message: e.to_string(),
            },
        }
    }

    fn apply_catalogue_command(&mut self, command: Command) -> CommandResponse {
        let catalogue = &mut self.state.catalogue;
        match command {
            Command::CreateTopic {
                name,
                settings,
                replicas,
            } => {
                if catalogue.topics.contains_key(&name) {
                    return CommandResponse::Rejected {
                        code: ErrorCode::TopicAlreadyExists as u16,
                        message: format!("topic {name:?} already exists"),
                    };
                }
                let id = catalogue.next_topic_id;
                catalogue.next_topic_id += 1;
                catalogue.topics.insert(
                    name.clone(),
                    TopicEntry {
                        id,
                        name,
                        settings,
                        initial_replicas: replicas.clone(),
                        replicas,
                    },
                );
                CommandResponse::Done
            }
            Command::SetReplicas {
                name,
                partition,
                replicas,
            } => match catalogue
                .topics
                .get_mut(&name)
                .and_then(|t| t.replicas.get_mut(partition as usize))
            {
                Some(slot) => {
                    *slot = replicas;
                    CommandResponse::Done
                }
                None => CommandResponse::Rejected {
                    code: ErrorCode::UnknownTopicOrPartition as u16,
                    message: format!("no partition {partition} of topic {name:?}"),
                },
            },
            Command::RemoveBroker { node_id } => {
                catalogue.brokers.remove(&node_id);
                CommandResponse::Done
            }
            Command::DeleteTopic { name } => match catalogue.topics.remove(&name) {
                Some(_) => CommandResponse::Done,
                None => CommandResponse::Rejected {
                    code: ErrorCode::UnknownTopicOrPartition as u16,
                    message: format!("no topic {name:?}"),
                },
            },
            Command::RegisterBroker {
                node_id,
                client_addr,
                coord_plugins,
            } => {
                // Whether its plugins match the running brokers' was checked
                // by the broker before proposing (`RaftNode::check_plugins`):
                // a whole-cluster restart may switch plugins.
                catalogue.brokers.insert(
                    node_id,
                    BrokerEntry {
                        client_addr,
                        coord_plugins,
                        listeners: BTreeMap::new(),
                    },
                );
                CommandResponse::Done
            }
            Command::Register {
                node_id,
                client_addr,
                coord_plugins,
                listeners,
            } => {
                if listeners.len() > LISTENERS_MAX
                    || listeners
                        .iter()
                        .any(|(n, a)| n.len() > LISTENER_BYTES_MAX || a.len() > LISTENER_BYTES_MAX)
                {
                    return CommandResponse::Rejected {
                        code: ErrorCode::InvalidRequest as u16,
                        message: format!(
                            "at most {LISTENERS_MAX} listeners, names and addresses of at most {LISTENER_BYTES_MAX} bytes"
                        ),
                    };
                }
                catalogue.brokers.insert(
                    node_id,
                    BrokerEntry {
                        client_addr,
                        coord_plugins,
                        listeners,
                    },
                );
                CommandResponse::Done
            }
            Command::AddPartitions {
                name,
                topic_id,
                from,
                replicas,
            } => add_partitions(catalogue, &name, topic_id, from, replicas),
            Command::SetRack { node_id, rack } => {
                match rack {
                    Some(r) if r.is_empty() || r.len() > RACK_BYTES_MAX => {
                        return CommandResponse::Rejected {
                            code: ErrorCode::InvalidRequest as u16,
                            message: format!("a rack name has 1 to {RACK_BYTES_MAX} bytes"),
                        }
                    }
                    Some(r) => catalogue.racks.insert(node_id, r),
                    None => catalogue.racks.remove(&node_id),
                };
                CommandResponse::Done
            }
            Command::StartRebalance(plan) => {
                if let Some(running) = catalogue.rebalance.as_ref().filter(|p| p.running()) {
                    return CommandResponse::Rejected {
                        code: ErrorCode::InvalidRequest as u16,
                        message: format!(
                            "rebalance {} is still running ({} of {} moves left); wait or cancel it",
                            running.id,
                            running.moves.iter().filter(|m| !m.done).count(),
                            running.moves.len()
                        ),
                    };
                }
                if plan.moves.len() > REBALANCE_MOVES_MAX
                    || plan.max_concurrent_moves > REBALANCE_CONCURRENT_MOVES_MAX
                {
                    return CommandResponse::Rejected {
                        code: ErrorCode::LimitExceeded as u16,
                        message: format!(
                            "a plan has at most {REBALANCE_MOVES_MAX} moves (rebalance_moves_max) \
                             and {REBALANCE_CONCURRENT_MOVES_MAX} at once"
                        ),
                    };
                }
                catalogue.rebalance = Some(plan);
                CommandResponse::Done
            }
            Command::RebalanceMove {
                plan_id,
                index,
                bytes,
                error,
            } => {
                let Some(m) = catalogue
                    .rebalance
                    .as_mut()
                    .filter(|p| p.id == plan_id)
                    .and_then(|p| p.moves.get_mut(index as usize))
                else {
                    return CommandResponse::Rejected {
                        code: ErrorCode::InvalidRequest as u16,
                        message: format!("no move {index} in rebalance {plan_id}"),
                    };
                };
                match error {
                    None => {
                        m.done = true;
                        m.bytes = bytes;
                    }
                    Some(mut e) => {
                        m.failures = m.failures.saturating_add(1);
                        if e.len() > REBALANCE_ERROR_BYTES_MAX {
                            let mut cut = REBALANCE_ERROR_BYTES_MAX;
                            while !e.is_char_boundary(cut) {
                                cut -= 1;
                            }
                            e.truncate(cut);
                        }
                        m.last_error = Some(e);
                    }
                }
                CommandResponse::Done
            }
            Command::CancelRebalance { plan_id } => {
                match catalogue.rebalance.as_mut().filter(|p| p.id == plan_id) {
                    Some(p) => {
                        p.cancelled = true;
                        CommandResponse::Done
                    }
                    None => CommandResponse::Rejected {
                        code: ErrorCode::InvalidRequest as u16,
                        message: format!("no rebalance {plan_id}"),
                    },
                }
            }
            Command::Append(_)
            | Command::Coord { .. }
            | Command::PutUser { .. }
            | Command::DeleteUser { .. }
            | Command::AddAcl(_)
            | Command::RemoveAcl(_) => CommandResponse::Rejected {
                code: ErrorCode::InvalidRequest as u16,
                message: "not a catalogue command".into(),
            },
        }
    }

    /// The whole state, as persisted and as snapshot data.
    fn encode_state(&self) -> Result<Vec<u8>, RaftStorageError> {
        let coord = self.coord.state.lock().expect("coordination state lock");
        let rules: Vec<&AclRule> = self.acls.rules().collect();
        let placement = Placement {
            racks: self.state.catalogue.racks.clone(),
            rebalance: self.state.catalogue.rebalance.clone(),
        };
        bincode::serialize(&(
            STATE_FORMAT,
            &self.state,
            &*coord,
            &self.users,
            rules,
            placement,
        ))
        .map_err(sm_err)
    }

    fn persist_and_publish(
        &mut self,
        sync: bool,
        catalogue_changed: bool,
    ) -> Result<(), RaftStorageError> {
        let bytes = self.encode_state()?;
        if sync {
            blocking(|| self.store.meta_put(STATE_KEY, &bytes, true)).map_err(sm_err)?;
        } else {
            // An unsynced write of a few KB only reaches RocksDB's memtable
            // and WAL buffer: cheaper than handing the worker thread off.
            self.store
                .meta_put(STATE_KEY, &bytes, false)
                .map_err(sm_err)?;
        }
        if catalogue_changed {
            self.publish
                .send_replace(Arc::new(self.state.catalogue.clone()));
        }
        if std::mem::take(&mut self.users_changed) {
            self.publish_users
                .send_replace(Arc::new(self.users.clone()));
        }
        self.coord
            .applied
            .send_replace(self.state.applied.map_or(0, |l| l.index));
        Ok(())
    }

    fn snapshot_now(&self) -> Result<Snapshot<TernRaft>, RaftStorageError> {
        let data = self.encode_state()?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: self.state.applied,
                last_membership: self.state.membership.clone(),
                snapshot_id: format!("meta-{}", self.state.applied.map_or(0, |l| l.index)),
            },
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TernRaft> for MetaStateMachine {
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
        let mut catalogue_changed = false;
        for entry in entries {
            self.state.applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::Done
                }
                EntryPayload::Normal(c) => {
                    self.apply_command(entry.log_id.index, c, &mut catalogue_changed)
                }
            });
        }
        self.persist_and_publish(false, catalogue_changed)?;
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        PrebuiltSnapshot(self.snapshot_now())
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, openraft::BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let (mut state, coord, users, acls) = decode_state(snapshot.get_ref())?;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.state = state;
        self.users = users;
        self.users_changed = true;
        tracing::info!(
            last_log_id = ?meta.last_log_id,
            users = self.users.len(),
            "installed a metadata snapshot"
        );
        *self.coord.state.lock().expect("coordination state lock") = coord;
        self.acls = Arc::new(acls);
        self.publish_acls.send_replace(self.acls.clone());
        self.persist_and_publish(true, true)
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TernRaft>>, RaftStorageError> {
        if self.state.applied.is_none() {
            return Ok(None);
        }
        self.snapshot_now().map(Some)
    }
}

/// Grows topic `name` by the partitions placed in `replicas`, appended
/// after its existing ones, which keep their data and placement. The new
/// partitions' placement is also their creation-time placement: those
/// brokers bootstrap their Raft groups, like a new topic's.
fn add_partitions(
    catalogue: &mut Catalogue,
    name: &str,
    topic_id: u32,
    from: u32,
    replicas: Vec<Vec<NodeId>>,
) -> CommandResponse {
    let Some(topic) = catalogue.topics.get_mut(name).filter(|t| t.id == topic_id) else {
        return CommandResponse::Rejected {
            code: ErrorCode::UnknownTopicOrPartition as u16,
            message: format!("no topic {name:?} (it was deleted while it grew)"),
        };
    };
    let added = u32::try_from(replicas.len()).ok().filter(|n| *n > 0);
    let to = added.and_then(|n| from.checked_add(n));
    let (Some(to), true) = (to, topic.settings.partitions == from) else {
        return CommandResponse::Rejected {
            code: ErrorCode::InvalidPartitions as u16,
            message: format!(
                "topic {name:?} has {} partitions, not {from} as when this growth was planned; \
                 ask again",
                topic.settings.partitions
            ),
        };
    };
    // Both vectors have one entry per partition; asserted, not assumed, so
    // a catalogue that ever broke this stops here rather than misplacing.
    assert_eq!(
        topic.replicas.len(),
        from as usize,
        "replicas per partition"
    );
    assert_eq!(
        topic.initial_replicas.len(),
        from as usize,
        "initial replicas per partition"
    );
    topic.settings.partitions = to;
    topic.initial_replicas.extend(replicas.iter().cloned());
    topic.replicas.extend(replicas);
    CommandResponse::Done
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::TopicSettings;

    fn catalogue_with(name: &str, partitions: u32) -> Catalogue {
        let mut c = Catalogue::default();
        let replicas: Vec<Vec<NodeId>> = (0..partitions).map(|p| vec![1 + p as u64 % 3]).collect();
        c.topics.insert(
            name.into(),
            TopicEntry {
                id: 7,
                name: name.into(),
                settings: TopicSettings {
                    partitions,
                    replication_factor: 1,
                    retention_ms: -1,
                    retention_bytes: -1,
                },
                initial_replicas: replicas.clone(),
                replicas,
            },
        );
        c
    }

    #[test]
    fn growing_appends_the_placed_partitions_and_keeps_the_old_ones() {
        let mut c = catalogue_with("t", 3);
        let before = c.topics["t"].clone();
        let placed = vec![vec![3, 1], vec![2, 3], vec![1, 2]];
        assert_eq!(
            add_partitions(&mut c, "t", 7, 3, placed.clone()),
            CommandResponse::Done
        );
        let t = &c.topics["t"];
        assert_eq!(t.settings.partitions, 6);
        assert_eq!(t.replicas[..3], before.replicas[..]);
        assert_eq!(t.replicas[3..], placed[..]);
        assert_eq!(t.initial_replicas[3..], placed[..]);
        assert_eq!(t.id, before.id);
    }

    #[test]
    fn a_stale_growth_is_refused_and_changes_nothing() {
        let mut c = catalogue_with("t", 3);
        let before = c.clone();
        let refused = |r: CommandResponse, code: ErrorCode| {
            assert!(
                matches!(&r, CommandResponse::Rejected { code: c, .. } if *c == code as u16),
                "{r:?}"
            )
        };
        // Planned against 2 partitions (another growth came first).
        refused(
            add_partitions(&mut c, "t", 7, 2, vec![vec![1]]),
            ErrorCode::InvalidPartitions,
        );
        // Planned against a topic of the same name that was deleted since.
        refused(
            add_partitions(&mut c, "t", 6, 3, vec![vec![1]]),
            ErrorCode::UnknownTopicOrPartition,
        );
        refused(
            add_partitions(&mut c, "u", 7, 3, vec![vec![1]]),
            ErrorCode::UnknownTopicOrPartition,
        );
        // Nothing to add, or a count past u32.
        refused(
            add_partitions(&mut c, "t", 7, 3, vec![]),
            ErrorCode::InvalidPartitions,
        );
        assert_eq!(c, before);
        let mut huge = catalogue_with("t", 3);
        huge.topics.get_mut("t").unwrap().settings.partitions = u32::MAX;
        let huge_before = huge.clone();
        refused(
            add_partitions(&mut huge, "t", 7, u32::MAX, vec![vec![1]]),
            ErrorCode::InvalidPartitions,
        );
        assert_eq!(huge, huge_before);
    }
    use crate::log_store::LogStore;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TernRaft, LogStore, MetaStateMachine, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, MetaStateMachine), RaftStorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let store =
                Store::open(dir.path(), tern_storage::Durability::PageCache).map_err(sm_err)?;
            let log = LogStore::new(store.clone(), 0);
            let (sm, _rx, _coord, _users, _acls) = MetaStateMachine::open(store, None)?;
            Ok((dir, log, sm))
        }
    }

    fn acl(principal: &str, topic: &str) -> AclRule {
        AclRule {
            principal: principal.into(),
            resource: tern_acl::ResourcePattern::exact(tern_acl::ResourceKind::Topic, topic),
            operation: tern_acl::Operation::Produce,
            effect: tern_acl::Effect::Allow,
        }
    }

    fn entry(index: u64, command: Command) -> Entry {
        openraft::Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(command),
        }
    }

    fn put(name: &str, password: &str, create_only: bool) -> Command {
        Command::PutUser {
            name: name.into(),
            credential: tern_auth::StoredCredential::generate(password, 4096).unwrap(),
            create_only,
        }
    }

    /// Users are applied, published, persisted (a reopened state machine
    /// has them) and carried by the snapshot to a fresh node; `create_only`
    /// never replaces a user.
    #[tokio::test]
    async fn users_survive_reopening_and_snapshot_installation() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), tern_storage::Durability::PageCache).unwrap();
        let (mut sm, _rx, _coord, users, _acls) =
            MetaStateMachine::open(store.clone(), None).unwrap();
        let alice = put("alice", "first", false);
        let answers = sm
            .apply(vec![
                entry(1, alice.clone()),
                entry(2, put("bob", "b", false)),
                entry(3, put("alice", "bootstrap", true)),
                entry(4, Command::DeleteUser { name: "bob".into() }),
                entry(5, Command::DeleteUser { name: "bob".into() }),
            ])
            .await
            .unwrap();
        assert!(matches!(answers[4], CommandResponse::Rejected { .. }));
        let Command::PutUser { credential, .. } = alice else {
            unreachable!()
        };
        let published = users.borrow().clone();
        assert_eq!(published.keys().collect::<Vec<_>>(), vec!["alice"]);
        assert_eq!(
            published["alice"], credential,
            "create_only replaced a user"
        );
        drop(sm);
        let (mut reopened, _rx, _coord, users, _acls) =
            MetaStateMachine::open(store, None).unwrap();
        assert_eq!(users.borrow()["alice"], credential);
        let snapshot = reopened.get_current_snapshot().await.unwrap().unwrap();
        let other = tempfile::tempdir().unwrap();
        let store = Store::open(other.path(), tern_storage::Durability::PageCache).unwrap();
        let (mut fresh, _rx, _coord, users, _acls) = MetaStateMachine::open(store, None).unwrap();
        assert!(users.borrow().is_empty());
        fresh
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(users.borrow()["alice"], credential);
    }

    #[test]
    fn a_state_written_before_users_existed_still_decodes() {
        let old = bincode::serialize(&(MetaStateV1::default(), CoordStateV1::default())).unwrap();
        let (_, _, users, acls) = decode_state(&old).unwrap();
        assert!(users.is_empty() && acls.is_empty());
        assert!(decode_state(b"garbage").is_err());
    }

    #[test]
    fn a_state_written_before_groups_expired_decodes_with_its_groups_active_now() {
        use crate::coord_v1::GroupRecordV1;
        let mut coord = CoordStateV1 {
            clock_ms: 5_000,
            ..CoordStateV1::default()
        };
        let offsets = [(("t".to_string(), 0), 7)].into();
        coord.groups.insert(
            "idle".into(),
            GroupRecordV1 {
                generation: 3,
                offsets,
                ..GroupRecordV1::default()
            },
        );
        coord.counters.grants = 9;
        let mut users = Users::new();
        users.insert(
            "alice".into(),
            tern_auth::StoredCredential::generate("pw", 4096).unwrap(),
        );
        let old = bincode::serialize(&(
            MetaStateV1::default(),
            &coord,
            &users,
            Vec::<AclRule>::new(),
        ))
        .unwrap();
        let (_, decoded, users_back, _) = decode_state(&old).unwrap();
        let g = &decoded.groups["idle"];
        assert_eq!((g.generation, g.offsets[&("t".to_string(), 0)]), (3, 7));
        assert_eq!(g.active_ms, 5_000, "retention starts at the upgrade");
        assert_eq!(decoded.counters.grants, 9);
        assert_eq!(users_back, users);
        // And the `tern-ms3` layout decodes.
        let current = bincode::serialize(&(
            STATE_FORMAT_MS3,
            MetaState::default(),
            &decoded,
            &users,
            Vec::<AclRule>::new(),
        ))
        .unwrap();
        let (_, again, _, _) = decode_state(&current).unwrap();
        assert_eq!(again, decoded);
    }

    #[test]
    fn a_state_written_before_kafka_groups_decodes_with_tern_groups_only() {
        use crate::coord::{MemberRecord, Proof};
        use crate::coord_v2::GroupRecordV2;
        let mut coord = CoordStateV2 {
            clock_ms: 7_000,
            term: 3,
            ..CoordStateV2::default()
        };
        let member = MemberRecord {
            topics: vec!["t".into()],
            session_timeout_ms: 10_000,
            last_seen_ms: 6_000,
            proof: Proof {
                digest: [4; 32],
                principal: Some("alice".into()),
            },
        };
        coord.groups.insert(
            "g".into(),
            GroupRecordV2 {
                generation: 5,
                members: [(9, member.clone())].into(),
                assignment: [(("t".to_string(), 0), 9)].into(),
                offsets: [(("t".to_string(), 0), 42)].into(),
                rebalances: 5,
                active_ms: 6_500,
            },
        );
        coord.counters.groups_expired = 2;
        let old = bincode::serialize(&(
            STATE_FORMAT_MS2,
            MetaStateV1::default(),
            &coord,
            Users::new(),
            vec![acl("alice", "t")],
        ))
        .unwrap();
        let (_, decoded, _, acls) = decode_state(&old).unwrap();
        let g = &decoded.groups["g"];
        assert_eq!((g.generation, g.rebalances, g.active_ms), (5, 5, 6_500));
        assert_eq!(g.members[&9], member);
        assert_eq!(g.offsets[&("t".to_string(), 0)], 42);
        assert_eq!(g.kafka, None);
        assert_eq!((decoded.clock_ms, decoded.term), (7_000, 3));
        assert_eq!(decoded.counters.groups_expired, 2);
        assert_eq!(acls.len(), 1);
        // The `tern-ms3` layout, with a Kafka group, decodes.
        let mut current = decoded.clone();
        current.groups.get_mut("g").unwrap().members.clear();
        current.groups.get_mut("g").unwrap().kafka = Some(crate::coord::KafkaGroup {
            protocol_type: "consumer".into(),
            ..Default::default()
        });
        let bytes = bincode::serialize(&(
            STATE_FORMAT_MS3,
            MetaState::default(),
            &current,
            Users::new(),
            Vec::<AclRule>::new(),
        ))
        .unwrap();
        let (_, again, _, _) = decode_state(&bytes).unwrap();
        assert_eq!(again, current);
        // A marked state cut short is an error, not an older layout.
        assert!(decode_state(&bytes[..bytes.len() / 2]).is_err());
    }

    fn open(dir: &std::path::Path) -> Opened {
        let store = Store::open(dir, tern_storage::Durability::PageCache).unwrap();
        MetaStateMachine::open(store, None).unwrap()
    }

    #[tokio::test]
    async fn acl_rules_are_published_and_survive_a_restart_and_a_snapshot_install() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, removed) = (acl("alice", "orders"), acl("bob", "orders"));
        let allowed = |acls: &AclSet, who: &str| {
            acls.check(
                Some(who),
                tern_acl::Resource::Topic("orders"),
                tern_acl::Operation::Produce,
            )
            .is_allowed()
        };
        let snapshot = {
            let (mut sm, _c, _coord, _users, acls) = open(dir.path());
            sm.apply([
                entry(1, Command::AddAcl(kept.clone())),
                entry(2, Command::AddAcl(removed.clone())),
            ])
            .await
            .unwrap();
            assert!(allowed(&acls.borrow(), "bob"), "published on apply");
            let answer = sm
                .apply([entry(3, Command::RemoveAcl(removed))])
                .await
                .unwrap();
            assert_eq!(answer, vec![CommandResponse::Done]);
            assert!(!allowed(&acls.borrow(), "bob"));
            sm.get_current_snapshot().await.unwrap().unwrap()
        };
        // Reopened from its own store.
        let (_sm, _c, _coord, _users, acls) = open(dir.path());
        assert_eq!(acls.borrow().len(), 1);
        assert!(allowed(&acls.borrow(), "alice"));
        // Installed on an empty node from the snapshot.
        let other = tempfile::tempdir().unwrap();
        let (mut sm, _c, _coord, _users, acls) = open(other.path());
        assert!(!allowed(&acls.borrow(), "alice"));
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert!(allowed(&acls.borrow(), "alice"));
        assert!(!allowed(&acls.borrow(), "bob"));
    }

    #[tokio::test]
    async fn an_invalid_acl_rule_is_refused_by_every_replica_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sm, _c, _coord, _users, acls) = open(dir.path());
        let answer = sm
            .apply([entry(1, Command::AddAcl(acl("", "orders")))])
            .await
            .unwrap();
        assert!(matches!(
            answer[0],
            CommandResponse::Rejected { code, .. } if code == ErrorCode::InvalidRequest as u16
        ));
        assert!(acls.borrow().is_empty());
    }

    /// A broker's listeners are registered, survive a reopen, and a state
    /// written before listeners existed (`tern-ms2`) opens with its brokers
    /// and no listeners; too many or too long listeners are refused.
    #[tokio::test]
    async fn listeners_are_registered_and_an_older_state_opens_without_them() {
        use crate::catalogue_v1::{BrokerEntryV1, CatalogueV1};
        let dir = tempfile::tempdir().unwrap();
        let (mut sm, catalogue, _coord, _users, _acls) = open(dir.path());
        let register = |listeners: BTreeMap<String, String>| Command::Register {
            node_id: 1,
            client_addr: "h:1".into(),
            coord_plugins: "p".into(),
            listeners,
        };
        let kafka: BTreeMap<_, _> = [("kafka".to_string(), "h:9092".to_string())].into();
        let too_many: BTreeMap<_, _> = (0..=LISTENERS_MAX)
            .map(|i| (i.to_string(), "a".into()))
            .collect();
        let answers = sm
            .apply([
                entry(1, register(kafka.clone())),
                entry(2, register(too_many)),
            ])
            .await
            .unwrap();
        assert_eq!(answers[0], CommandResponse::Done);
        assert!(matches!(answers[1], CommandResponse::Rejected { .. }));
        assert_eq!(catalogue.borrow().brokers[&1].listeners, kafka);
        drop(sm);
        let (_sm, catalogue, ..) = open(dir.path());
        assert_eq!(catalogue.borrow().brokers[&1].listeners, kafka);

        let old = MetaStateV1 {
            catalogue: CatalogueV1 {
                brokers: [(
                    7,
                    BrokerEntryV1 {
                        client_addr: "old:1".into(),
                        coord_plugins: "p".into(),
                    },
                )]
                .into(),
                ..CatalogueV1::default()
            },
            ..MetaStateV1::default()
        };
        let ms2 = bincode::serialize(&(
            STATE_FORMAT_MS2,
            &old,
            CoordStateV2::default(),
            Users::new(),
            Vec::<AclRule>::new(),
        ))
        .unwrap();
        let (state, ..) = decode_state(&ms2).unwrap();
        let broker = &state.catalogue.brokers[&7];
        assert_eq!(broker.client_addr, "old:1");
        assert!(broker.listeners.is_empty());
    }

    /// openraft's own storage conformance suite, run against Tern's RocksDB
    /// log store and the metadata state machine.
    #[test]
    fn openraft_storage_suite_passes() -> Result<(), RaftStorageError> {
        Suite::test_all(Builder)
    }

    /// `tern-ms4` keeps racks and the rebalance plan beside the catalogue,
    /// and a `tern-ms3` state opens with neither.
    #[test]
    fn racks_and_the_rebalance_plan_survive_a_round_trip() {
        let mut state = MetaState::default();
        state.catalogue.racks.insert(1, "eu-1a".into());
        state.catalogue.rebalance = Some(RebalancePlan {
            id: 7,
            max_concurrent_moves: 2,
            throttle_bytes_per_sec: 1 << 20,
            excluded: vec![3],
            moves: vec![crate::types::PartitionMove {
                topic: "t".into(),
                topic_id: 1,
                partition: 0,
                from: vec![1, 2, 3],
                to: vec![1, 2, 4],
                done: false,
                bytes: 0,
                failures: 1,
                last_error: Some("broker 4 did not catch up".into()),
            }],
            cancelled: false,
        });
        let placement = Placement {
            racks: state.catalogue.racks.clone(),
            rebalance: state.catalogue.rebalance.clone(),
        };
        let bytes = bincode::serialize(&(
            STATE_FORMAT,
            &state,
            CoordState::default(),
            Users::new(),
            Vec::<AclRule>::new(),
            placement,
        ))
        .unwrap();
        let (back, _, _, _) = decode_state(&bytes).unwrap();
        assert_eq!(back.catalogue, state.catalogue);
        let ms3 = bincode::serialize(&(
            STATE_FORMAT_MS3,
            &state,
            CoordState::default(),
            Users::new(),
            Vec::<AclRule>::new(),
        ))
        .unwrap();
        let (old, _, _, _) = decode_state(&ms3).unwrap();
        assert!(old.catalogue.racks.is_empty() && old.catalogue.rebalance.is_none());
    }
}
