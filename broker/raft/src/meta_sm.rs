//! The state machine of the metadata group: the cluster [`Catalogue`]
//! (topics, their replica placement, registered brokers).
//!
//! Every node is a member of the metadata group and applies the same
//! commands, so every node has the catalogue; changes are published on a
//! `watch` channel that the broker's reconciler follows to open and close
//! partition groups. The state is small: it is persisted whole with every
//! apply and is itself the snapshot.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, Snapshot, SnapshotMeta, StorageIOError};
use serde::{Deserialize, Serialize};
use tern_protocol::ErrorCode;
use tern_storage::Store;
use tokio::sync::watch;

use crate::log_store::blocking;
use crate::types::{
    BrokerEntry, Catalogue, Command, CommandResponse, Entry, LogId, NodeId, PrebuiltSnapshot,
    RaftStorageError, StoredMembership, TernRaft, TopicEntry,
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

/// The metadata state machine.
pub struct MetaStateMachine {
    store: Store,
    state: MetaState,
    publish: watch::Sender<Arc<Catalogue>>,
}

impl MetaStateMachine {
    /// Restores the state from `store`; the receiver follows every change.
    pub fn open(store: Store) -> Result<(Self, watch::Receiver<Arc<Catalogue>>), RaftStorageError> {
        let mut state: MetaState = match store.meta_get(STATE_KEY).map_err(sm_err)? {
            Some(v) => bincode::deserialize(&v).map_err(sm_err)?,
            None => MetaState::default(),
        };
        if state.catalogue.next_topic_id == 0 {
            state.catalogue.next_topic_id = 1;
        }
        let (publish, rx) = watch::channel(Arc::new(state.catalogue.clone()));
        Ok((
            MetaStateMachine {
                store,
                state,
                publish,
            },
            rx,
        ))
    }

    fn apply_command(&mut self, command: Command) -> CommandResponse {
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
                lock_plugin,
            } => {
                // The lock plugin decides replicated lock state: every broker
                // must run the same one. The first registered broker sets it.
                let cluster_lock = catalogue
                    .brokers
                    .iter()
                    .find(|(id, _)| **id != node_id)
                    .map(|(_, b)| b.lock_plugin.clone());
                if let Some(expected) = cluster_lock.filter(|l| *l != lock_plugin) {
                    return CommandResponse::Rejected {
                        code: ErrorCode::InvalidConfig as u16,
                        message: format!(
                            "broker {node_id} runs lock plugin {lock_plugin:?} but the cluster runs {expected:?}"
                        ),
                    };
                }
                catalogue.brokers.insert(
                    node_id,
                    BrokerEntry {
                        client_addr,
                        lock_plugin,
                    },
                );
                CommandResponse::Done
            }
            Command::Append(_) => CommandResponse::Rejected {
                code: ErrorCode::InvalidRequest as u16,
                message: "append sent to the metadata group".into(),
            },
        }
    }

    fn persist_and_publish(&self, sync: bool) -> Result<(), RaftStorageError> {
        let bytes = bincode::serialize(&self.state).map_err(sm_err)?;
        blocking(|| self.store.meta_put(STATE_KEY, &bytes, sync)).map_err(sm_err)?;
        self.publish
            .send_replace(Arc::new(self.state.catalogue.clone()));
        Ok(())
    }

    fn snapshot_now(&self) -> Result<Snapshot<TernRaft>, RaftStorageError> {
        let data = bincode::serialize(&self.state).map_err(sm_err)?;
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
        for entry in entries {
            self.state.applied = Some(entry.log_id);
            responses.push(match entry.payload {
                EntryPayload::Blank => CommandResponse::Done,
                EntryPayload::Membership(m) => {
                    self.state.membership = StoredMembership::new(Some(entry.log_id), m);
                    CommandResponse::Done
                }
                EntryPayload::Normal(c) => self.apply_command(c),
            });
        }
        self.persist_and_publish(false)?;
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
        let mut state: MetaState = bincode::deserialize(snapshot.get_ref()).map_err(sm_err)?;
        state.applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        self.state = state;
        self.persist_and_publish(true)
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

#[cfg(test)]
mod tests {
    use super::*;
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
            let (sm, _rx) = MetaStateMachine::open(store)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's own storage conformance suite, run against Tern's RocksDB
    /// log store and the metadata state machine.
    #[test]
    fn openraft_storage_suite_passes() -> Result<(), RaftStorageError> {
        Suite::test_all(Builder)
    }
}
