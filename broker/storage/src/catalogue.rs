//! The topic catalogue in the `meta` column family. Topic ids are never
//! reused, so a topic deleted and created again can never see old data.

use bytes::{Buf, BufMut, BytesMut};
use tern_protocol::api::TopicConfig;

use crate::{log_key, StorageError, Store, CF_INDEX, CF_LOG, CF_META};

const NEXT_TOPIC_ID_KEY: &[u8] = b"next_topic_id";
const TOPIC_PREFIX: &[u8] = b"topic/";

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// Internal id, part of every log key.
    pub id: u32,
    /// Name.
    pub name: String,
    /// Settings.
    pub config: TopicConfig,
}

impl TopicRecord {
    fn encode(&self) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_u32_le(self.id);
        b.put_u16_le(self.name.len() as u16);
        b.put_slice(self.name.as_bytes());
        b.put_u32_le(self.config.partitions);
        b.put_u16_le(self.config.replication_factor);
        b.put_i64_le(self.config.retention_ms);
        b.put_i64_le(self.config.retention_bytes);
        b.to_vec()
    }

    fn decode(key: &[u8], mut v: &[u8]) -> Result<TopicRecord, StorageError> {
        let corrupt = |detail: &str| StorageError::CorruptCatalogue {
            key: String::from_utf8_lossy(key).into_owned(),
            detail: detail.to_owned(),
        };
        if v.len() < 6 {
            return Err(corrupt("truncated header"));
        }
        let id = v.get_u32_le();
        let name_len = v.get_u16_le() as usize;
        if v.len() != name_len + 22 {
            return Err(corrupt("length mismatch"));
        }
        let name =
            String::from_utf8(v[..name_len].to_vec()).map_err(|_| corrupt("name not UTF-8"))?;
        v.advance(name_len);
        Ok(TopicRecord {
            id,
            name,
            config: TopicConfig {
                partitions: v.get_u32_le(),
                replication_factor: v.get_u16_le(),
                retention_ms: v.get_i64_le(),
                retention_bytes: v.get_i64_le(),
            },
        })
    }
}

impl Store {
    /// Every stored topic.
    pub fn load_topics(&self) -> Result<Vec<TopicRecord>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator_cf(self.cf(CF_META), TOPIC_PREFIX) {
            let (k, v) = item.map_err(|e| StorageError::rocks("scan catalogue", e))?;
            if !k.starts_with(TOPIC_PREFIX) {
                break;
            }
            out.push(TopicRecord::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Stores a new topic under a fresh id (durably, whatever the mode).
    pub fn create_topic(
        &self,
        name: &str,
        config: TopicConfig,
    ) -> Result<TopicRecord, StorageError> {
        let meta = self.cf(CF_META);
        let id = match self
            .db
            .get_cf(meta, NEXT_TOPIC_ID_KEY)
            .map_err(|e| StorageError::rocks("read next topic id", e))?
        {
            Some(v) if v.len() == 4 => u32::from_le_bytes(v[..4].try_into().expect("4 bytes")),
            Some(_) => {
                return Err(StorageError::CorruptCatalogue {
                    key: "next_topic_id".into(),
                    detail: "not 4 bytes".into(),
                })
            }
            None => 1,
        };
        let record = TopicRecord {
            id,
            name: name.to_owned(),
            config,
        };
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(meta, NEXT_TOPIC_ID_KEY, (id + 1).to_le_bytes());
        batch.put_cf(meta, topic_key(id), record.encode());
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageError::rocks("create topic", e))?;
        Ok(record)
    }

    /// Removes a topic and every batch of its partitions.
    pub fn delete_topic(&self, topic: &TopicRecord) -> Result<(), StorageError> {
        let mut batch = rocksdb::WriteBatch::default();
        batch.delete_cf(self.cf(CF_META), topic_key(topic.id));
        for p in 0..topic.config.partitions {
            batch.delete_cf(self.cf(CF_META), crate::log::start_marker_key(topic.id, p));
        }
        let from = log_key(topic.id, 0, 0);
        let to = log_key(topic.id + 1, 0, 0);
        batch.delete_range_cf(self.cf(CF_LOG), from, to);
        batch.delete_range_cf(self.cf(CF_INDEX), from, to);
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageError::rocks("delete topic", e))
    }
}

fn topic_key(id: u32) -> Vec<u8> {
    let mut k = TOPIC_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Catalogue changes are rare and must never be lost: always fsync them.
fn synced() -> rocksdb::WriteOptions {
    let mut w = rocksdb::WriteOptions::default();
    w.set_sync(true);
    w
}
