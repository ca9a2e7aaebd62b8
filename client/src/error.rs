//! Client errors: one enum, [`ClientError`], for every call of the crate.
//!
//! A variant that wraps a lower-level failure (an I/O error, a batch that
//! failed its check) keeps it as its [`source`](std::error::Error::source)
//! rather than flattening it into a string, and its own message does not
//! repeat it: print the chain (`anyhow`'s `{:#}`, or walk `source()`) to see
//! every cause; an I/O cause is the `std::io::Error` itself, so
//! `downcast_ref::<std::io::Error>()` finds it.
//!
//! `ClientError` is `Clone` (one failure is handed to every record of a
//! batch). `std::io::Error` is not, so a clone rebuilds it from its OS error
//! code, or its kind and message.

use tern_protocol::record::BatchError;
use tern_protocol::ErrorCode;
use thiserror::Error;

/// Everything a client call can fail with.
///
/// `#[non_exhaustive]`: new failure kinds may be added in a minor release,
/// so a `match` needs a catch-all arm; [`ClientError::is_retriable`] and
/// [`ClientError::code`] classify every variant.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No seed broker could be reached.
    #[error("could not connect to any broker of {seeds:?}")]
    NoBrokerReachable {
        /// The seeds tried.
        seeds: Vec<String>,
        /// The last failure, if any broker was tried.
        #[source]
        last_error: Option<Box<ClientError>>,
    },
    /// Connecting to one broker failed.
    #[error("connect to {addr}")]
    Connect {
        /// The address.
        addr: String,
        /// The I/O error (`TimedOut` when the connect timeout passed).
        #[source]
        source: std::io::Error,
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
    #[error("corrupt batch from {topic}/{partition}")]
    CorruptBatch {
        /// Topic.
        topic: String,
        /// Partition.
        partition: u32,
        /// What failed.
        #[source]
        source: BatchError,
    },
    /// A caller-supplied value is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The producer or consumer was closed.
    #[error("closed")]
    Closed,
    /// The broker refused the credentials (unknown user or wrong password,
    /// which it does not tell apart), or the exchange failed (a broker that
    /// could not prove it knows the user). Not retriable.
    #[error("authentication as {username:?} failed: {message}")]
    AuthenticationFailed {
        /// The username tried.
        username: String,
        /// The broker's or the exchange's detail.
        message: String,
    },
}

impl ClientError {
    /// A [`ClientError::Connect`] from the I/O error that refused it.
    pub(crate) fn connect(addr: &str, source: std::io::Error) -> ClientError {
        ClientError::Connect {
            addr: addr.to_owned(),
            source,
        }
    }
}

impl ClientError {
    /// A refused password behind a "no broker reachable" is the failure
    /// itself: the brokers were reached, they refused the credentials.
    pub(crate) fn surface_authentication_failure(self) -> ClientError {
        match self {
            ClientError::NoBrokerReachable {
                last_error: Some(last),
                ..
            } if matches!(*last, ClientError::AuthenticationFailed { .. }) => *last,
            other => other,
        }
    }
}

impl Clone for ClientError {
    fn clone(&self) -> Self {
        use ClientError::*;
        match self {
            NoBrokerReachable { seeds, last_error } => NoBrokerReachable {
                seeds: seeds.clone(),
                last_error: last_error.clone(),
            },
            Connect { addr, source } => Connect {
                addr: addr.clone(),
                source: clone_io(source),
            },
            ConnectionClosed { addr } => ConnectionClosed { addr: addr.clone() },
            Unresponsive { addr } => Unresponsive { addr: addr.clone() },
            Broker { code, message } => Broker {
                code: *code,
                message: message.clone(),
            },
            Partition {
                topic,
                partition,
                code,
            } => Partition {
                topic: topic.clone(),
                partition: *partition,
                code: *code,
            },
            UnknownTopic(t) => UnknownTopic(t.clone()),
            Timeout(d) => Timeout(*d),
            Decode(m) => Decode(m.clone()),
            CorruptBatch {
                topic,
                partition,
                source,
            } => CorruptBatch {
                topic: topic.clone(),
                partition: *partition,
                source: source.clone(),
            },
            InvalidArgument(m) => InvalidArgument(m.clone()),
            Closed => Closed,
            AuthenticationFailed { username, message } => AuthenticationFailed {
                username: username.clone(),
                message: message.clone(),
            },
        }
    }
}

/// An equivalent `std::io::Error`: the same OS error, or the same kind and
/// message.
fn clone_io(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

impl ClientError {
    /// The broker error code, if this error carries one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } | ClientError::Partition { code, .. } => Some(*code),
            ClientError::AuthenticationFailed { .. } => Some(ErrorCode::AuthenticationFailed),
            // Why no broker could be reached, if a broker said so (e.g.
            // `TooManyConnections`).
            ClientError::NoBrokerReachable {
                last_error: Some(last),
                ..
            } => last.code(),
            _ => None,
        }
    }

    /// Whether retrying the same call may succeed (after a metadata refresh).
    pub fn is_retriable(&self) -> bool {
        match self {
            // Brokers that refuse our credentials stay refusing: retrying
            // would only hammer them (and be slowed down by them).
            ClientError::NoBrokerReachable {
                last_error: Some(last),
                ..
            } if matches!(
                last.code(),
                Some(ErrorCode::AuthenticationFailed | ErrorCode::AuthenticationRequired)
            ) =>
            {
                false
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clone_keeps_the_io_cause() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let os = std::io::Error::from_raw_os_error(111);
        for e in [refused, os] {
            let (kind, raw) = (e.kind(), e.raw_os_error());
            let clone = ClientError::connect("h:1", e).clone();
            let io = std::error::Error::source(&clone)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .expect("the clone's source is an io::Error");
            assert_eq!((io.kind(), io.raw_os_error()), (kind, raw));
        }
    }
}
