//! The metadata state as brokers persisted it before brokers registered
//! listeners (layout `tern-ms2` and older): [`BrokerEntry`] without
//! `listeners`.
//!
//! **What it owns.** Only the old layout and its conversion, so a broker
//! opens state and snapshots written by an older one ([`crate::meta_sm`]
//! tries the current layout first). **Must never** be written: new state
//! is always the current layout. Brokers re-register at every start, so an
//! upgraded broker's listeners appear as soon as it runs the new code.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::types::{BrokerEntry, Catalogue, LogId, NodeId, StoredMembership, TopicEntry};

/// A registered broker, old layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BrokerEntryV1 {
    /// As [`BrokerEntry::client_addr`].
    pub(crate) client_addr: String,
    /// As [`BrokerEntry::coord_plugins`].
    pub(crate) coord_plugins: String,
}

/// The catalogue, old layout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct CatalogueV1 {
    /// As [`Catalogue::topics`] (unchanged layout).
    pub(crate) topics: BTreeMap<String, TopicEntry>,
    /// As [`Catalogue::next_topic_id`].
    pub(crate) next_topic_id: u32,
    /// As [`Catalogue::brokers`].
    pub(crate) brokers: BTreeMap<NodeId, BrokerEntryV1>,
}

/// The metadata group's own state, old layout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct MetaStateV1 {
    /// Last applied log id.
    pub(crate) applied: Option<LogId>,
    /// Last applied membership.
    pub(crate) membership: StoredMembership,
    /// The catalogue.
    pub(crate) catalogue: CatalogueV1,
}

impl From<CatalogueV1> for Catalogue {
    fn from(old: CatalogueV1) -> Catalogue {
        Catalogue {
            topics: old.topics,
            next_topic_id: old.next_topic_id,
            brokers: old
                .brokers
                .into_iter()
                .map(|(id, b)| {
                    let entry = BrokerEntry {
                        client_addr: b.client_addr,
                        coord_plugins: b.coord_plugins,
                        listeners: BTreeMap::new(),
                    };
                    (id, entry)
                })
                .collect(),
            ..Catalogue::default()
        }
    }
}
