//! Client errors.

use tern_protocol::ErrorCode;
use thiserror::Error;

/// Everything a client call can fail with.
#[derive(Debug, Error, Clone)]
pub enum ClientError {
    /// No seed broker could be reached.
    #[error("could not connect to any broker of {seeds:?}: {last_error}")]
    NoBrokerReachable {
        /// The seeds tried.
        seeds: Vec<String>,
        /// The last failure.
        last_error: String,
    },
    /// Connecting to one broker failed.
    #[error("connect to {addr}: {message}")]
    Connect {
        /// The address.
        addr: String,
        /// The I/O error.
        message: String,
    },
    /// The connection closed before the answer arrived.
    #[error("connection to {addr} closed")]
    ConnectionClosed {
        /// The address.
        addr: String,
    },
    /// The broker stopped answering while requests waited, pings included
    /// (a paused or hung host): the connection was dropped.
    #[error("broker {addr} stopped answering (liveness timeout); connection dropped")]
    Unresponsive {
        /// The address.
        addr: String,
    },
    /// The broker answered with an error for the whole request.
    #[error("broker error {code}: {message}")]
    Broker {
        /// The code.
        code: ErrorCode,
        /// The broker's detail.
        message: String,
    },
    /// The broker answered with an error for one partition.
    #[error("{topic}/{partition}: {code}")]
    Partition {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// The code.
        code: ErrorCode,
    },
    /// The topic does not exist.
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    /// No answer within the request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The broker sent bytes this client cannot decode.
    #[error("undecodable response: {0}")]
    Decode(String),
    /// A fetched batch failed its CRC or structure check.
    #[error("corrupt batch from {topic}/{partition}: {detail}")]
    CorruptBatch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// What failed.
        detail: String,
    },
    /// A caller-supplied value is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
}

impl ClientError {
    /// The broker error code, if this error carries one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } | ClientError::Partition { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether retrying the same call may succeed (after a metadata refresh).
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::ConnectionClosed { .. }
            | ClientError::Unresponsive { .. }
            | ClientError::Connect { .. }
            | ClientError::NoBrokerReachable { .. }
            | ClientError::Timeout(_) => true,
            ClientError::Broker { code, .. } | ClientError::Partition { code, .. } => {
                code.is_retriable()
            }
            _ => false,
        }
    }
}
