//! The Kafka wire protocol as Tern speaks it, without the broker: which
//! APIs and versions Tern answers, how a request frame is decoded and a
//! response frame encoded, how Kafka record batches become Tern batches and
//! back, and how Tern's error codes read to a Kafka client.
//!
//! **What it owns.** Translation only. The message formats themselves come
//! from the `kafka-protocol` crate (never hand-written here); this crate
//! adds the limits Tern puts on untrusted input around it: decompressed
//! bytes and records per batch are capped before anything is allocated
//! ([`records`]), and a request that makes the codec panic is a typed error
//! ([`frame`]).
//!
//! **Must never** touch broker state or block: the broker's listener
//! (`ternd::kafka`) calls it and decides everything.

pub mod errors;
pub mod frame;
pub mod records;
pub mod versions;

pub use kafka_protocol;
