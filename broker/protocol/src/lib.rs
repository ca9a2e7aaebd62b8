//! Tern's wire protocol: frames, requests, responses, record batches and the
//! key → partition function.
//!
//! This crate owns every byte layout that crosses a process boundary, and the
//! stable numeric error codes. It is shared by the broker and the client so
//! the two can never disagree about a format.
//!
//! **Architecture invariant:** this crate performs no I/O and spawns nothing.
//! Everything here is a pure function of its input, so every decoder can be
//! fuzzed and unit-tested without sockets. Every decoder bounds what it
//! accepts by a named limit and returns a typed error instead of panicking.

#![warn(missing_docs, unreachable_pub)]

pub mod acl;
pub mod api;
pub mod auth;
pub mod coord;
pub mod error;
pub mod frame;
pub mod partitioner;
pub mod rebalance;
pub mod record;
mod wire;

pub use api::{ApiKey, ErrorReply, Request, RequestFrame, Response, ResponseFrame};
pub use error::{DecodeError, ErrorCode};
pub use frame::{FrameCodec, FRAME_BYTES_MAX, PROTOCOL_VERSION};
pub use record::{BatchBuilder, BatchError, BatchView, Record, RecordRef};
