//! `tern-client`: the async Rust client of the Tern broker.
//!
//! - [`Client`]: seed brokers, pipelined connections, metadata cache.
//! - [`Producer`]: batching by size and linger, bounded in flight, ordered retries.
//! - [`Consumer`]: assigned partitions or a consumer group, seek,
//!   long-polling fetch, a borrowed `Stream` ([`Consumer::stream`]),
//!   commits, rebalance callbacks ([`RebalanceListener`]).
//! - [`LockClient`]: replicated locks with fencing tokens.
//! - [`Admin`]: create, delete, list and describe topics; look up offsets.
//!
//! All errors are [`ClientError`] (`#[non_exhaustive]`, causes kept as
//! [`source`](std::error::Error::source)); broker errors carry the stable
//! [`ErrorCode`] from the wire. Retries back off
//! exponentially with jitter.
//!
//! # Cancel safety
//!
//! Every public async method documents, under **Cancel safety**, what
//! happens when its future is dropped before it completes (in a
//! `tokio::select!` or a `timeout`), as tokio's own documentation does.
//! In short: nothing is left half-done locally — a record is either
//! queued or not, a position moves only with the records it covers — but a
//! request already sent may or may not have taken effect at the broker.

#![warn(missing_docs, unreachable_pub)]

mod admin;
mod auth;
mod client;
mod connection;
mod consumer;
mod error;
mod lock;
mod producer;
mod retry;
#[cfg(test)]
mod tests;

pub use admin::{Admin, BrokerBalance, LeaderBalance, NewTopic, RebalanceOptions, ReplicaDigest};
pub use auth::{derive_credential, Credentials};
pub use client::{Client, ClientConfig, ClientTls};
pub use connection::Connection;
pub use consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, Offset, OffsetReset, RebalanceListener,
};
pub use error::ClientError;
pub use lock::{LockClient, LockGuard, LockOptions};
pub use producer::{
    Delivery, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
    IN_FLIGHT_PER_PARTITION_MAX, METADATA_MAX_AGE_DEFAULT, METADATA_MAX_AGE_MIN,
};
pub use tern_protocol::acl::{AclRule, Effect, Operation, ResourceKind, ResourcePattern};
pub use tern_protocol::api::{OffsetSpec, PartitionInfo, TopicInfo};
pub use tern_protocol::coord::{GroupInfo, LockInfo, LockMode};
pub use tern_protocol::rebalance::{MoveInfo, PlanState, RebalanceResponse};
pub use tern_protocol::ErrorCode;

/// The README's Rust example, compiled as a doc test so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
mod readme {}
