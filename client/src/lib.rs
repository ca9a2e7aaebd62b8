//! `tern-client`: the async Rust client of the Tern broker.
//!
//! - [`Client`]: seed brokers, pipelined connections, metadata cache.
//! - [`Producer`]: batching by size and linger, bounded in flight, ordered retries.
//! - [`Consumer`]: assigned partitions, seek, long-polling fetch, a `Stream`.
//! - [`Admin`]: create, delete, list and describe topics; look up offsets.
//!
//! All errors are [`ClientError`]; broker errors carry the stable
//! [`ErrorCode`](tern_protocol::ErrorCode) from the wire.

#![warn(missing_docs, unreachable_pub)]

mod admin;
mod client;
mod connection;
mod consumer;
mod error;
mod lock;
mod producer;

pub use admin::{Admin, NewTopic, ReplicaDigest};
pub use client::{Client, ClientConfig, ClientTls};
pub use connection::Connection;
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, Offset, OffsetReset};
pub use error::ClientError;
pub use lock::{LockClient, LockGuard, LockOptions};
pub use producer::{Delivery, Producer, ProducerConfig, ProducerRecord, RecordMetadata};
pub use tern_protocol::api::{Acks, OffsetSpec, PartitionInfo, TopicInfo};
pub use tern_protocol::coord::{GroupInfo, LockInfo, LockMode};
pub use tern_protocol::ErrorCode;

/// The README's Rust example, compiled as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
