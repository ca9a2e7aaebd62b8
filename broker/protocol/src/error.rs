//! Stable numeric error codes carried on the wire, and decode errors.
//!
//! A code, once published, keeps its number forever; a retired code leaves a
//! gap rather than being reused, so old clients never misread a new broker.

use thiserror::Error;

/// An error code in a response. `None` (0) means success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// Success.
    None = 0,
    /// An unexpected server-side error; the message says more.
    Unknown = 1,
    /// A record batch failed its CRC or structural checks.
    CorruptBatch = 2,
    /// The topic or partition does not exist (or was deleted).
    UnknownTopicOrPartition = 3,
    /// The requested offset is outside `[log_start, log_end]`.
    OffsetOutOfRange = 4,
    /// A topic with this name already exists.
    TopicAlreadyExists = 5,
    /// The request was well-framed but its content is invalid.
    InvalidRequest = 6,
    /// The protocol version or request type is not supported.
    UnsupportedVersion = 7,
    /// A batch or request exceeds a configured size limit.
    MessageTooLarge = 8,
    /// The storage engine failed to read or write; the broker stays up.
    StorageError = 9,
    /// The request did not complete within its timeout.
    RequestTimedOut = 10,
    /// The partition count is zero or over the limit.
    InvalidPartitions = 11,
    /// A topic setting (retention, replication factor) is invalid.
    InvalidConfig = 12,
    /// This broker does not lead the partition; refresh metadata and retry.
    NotLeader = 13,
    /// The broker is overloaded; retry after a backoff.
    Busy = 14,
    /// The disk is full; writes are refused until space returns.
    DiskFull = 15,
    /// The topic name is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    InvalidTopicName = 16,
    /// A producer retried a batch older than the broker's de-duplication
    /// window: it may or may not be in the log; it was not appended again.
    DuplicateSequence = 17,
    /// No leader is known (an election is under way); retry after a backoff.
    LeaderNotAvailable = 18,
    /// The lock is not held by this owner (its lease ended, or it never held it).
    LockNotHeld = 19,
    /// The lock was not granted within the wait time.
    LockWaitTimeout = 20,
    /// The consumer-group member is unknown (its session ended): join again.
    UnknownMember = 21,
    /// The group moved to another generation, or the partition is not the
    /// member's in it: the commit was refused.
    IllegalGeneration = 22,
    /// The request exceeds one of the broker's named limits (partitions per
    /// fetch, a response over the frame limit...); the message names the
    /// limit. Retrying the same request cannot succeed.
    LimitExceeded = 23,
    /// The broker refused the connection: too many are open from this
    /// address or in all; the message names the limit. Retry after a backoff
    /// on a new connection.
    TooManyConnections = 24,
    /// A producer's batch arrived before an earlier batch of the same
    /// producer was stored (its sequence number skips ahead): it was not
    /// appended. Retry once the earlier batch is stored, which keeps the
    /// producer's batches in order.
    OutOfOrderSequence = 25,
    /// The SASL exchange failed: unknown user or wrong password (the two
    /// are not told apart), or a malformed or out-of-order message. The
    /// broker closes the connection. Not retriable with the same
    /// credentials.
    AuthenticationFailed = 26,
    /// The broker requires authentication and this connection has not
    /// authenticated: only the SASL handshake is allowed until it has.
    AuthenticationRequired = 27,
    /// The connection's principal may not do this (no ACL allows it, or
    /// one denies it). Retrying cannot help until an ACL changes.
    AccessDenied = 28,
}

impl ErrorCode {
    /// Decodes a code; unknown numbers (from a newer broker) map to `Unknown`.
    pub fn from_u16(code: u16) -> ErrorCode {
        use ErrorCode::*;
        match code {
            0 => None,
            2 => CorruptBatch,
            3 => UnknownTopicOrPartition,
            4 => OffsetOutOfRange,
            5 => TopicAlreadyExists,
            6 => InvalidRequest,
            7 => UnsupportedVersion,
            8 => MessageTooLarge,
            9 => StorageError,
            10 => RequestTimedOut,
            11 => InvalidPartitions,
            12 => InvalidConfig,
            13 => NotLeader,
            14 => Busy,
            15 => DiskFull,
            16 => InvalidTopicName,
            17 => DuplicateSequence,
            18 => LeaderNotAvailable,
            19 => LockNotHeld,
            20 => LockWaitTimeout,
            21 => UnknownMember,
            22 => IllegalGeneration,
            23 => LimitExceeded,
            24 => TooManyConnections,
            25 => OutOfOrderSequence,
            26 => AuthenticationFailed,
            27 => AuthenticationRequired,
            28 => AccessDenied,
            _ => Unknown,
        }
    }

    /// The number sent on the wire.
    pub fn as_u16(self) -> u16 {
        self as u16
    }

    /// Whether a client may retry the same request unchanged and hope for success.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::NotLeader
                | ErrorCode::Busy
                | ErrorCode::RequestTimedOut
                | ErrorCode::LeaderNotAvailable
                | ErrorCode::TooManyConnections
                | ErrorCode::OutOfOrderSequence
        )
    }

    /// A short stable name, used in metrics labels and messages.
    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            None => "none",
            Unknown => "unknown",
            CorruptBatch => "corrupt_batch",
            UnknownTopicOrPartition => "unknown_topic_or_partition",
            OffsetOutOfRange => "offset_out_of_range",
            TopicAlreadyExists => "topic_already_exists",
            InvalidRequest => "invalid_request",
            UnsupportedVersion => "unsupported_version",
            MessageTooLarge => "message_too_large",
            StorageError => "storage_error",
            RequestTimedOut => "request_timed_out",
            InvalidPartitions => "invalid_partitions",
            InvalidConfig => "invalid_config",
            NotLeader => "not_leader",
            Busy => "busy",
            DiskFull => "disk_full",
            InvalidTopicName => "invalid_topic_name",
            DuplicateSequence => "duplicate_sequence",
            LeaderNotAvailable => "leader_not_available",
            LockNotHeld => "lock_not_held",
            LockWaitTimeout => "lock_wait_timeout",
            UnknownMember => "unknown_member",
            IllegalGeneration => "illegal_generation",
            LimitExceeded => "limit_exceeded",
            TooManyConnections => "too_many_connections",
            OutOfOrderSequence => "out_of_order_sequence",
            AuthenticationFailed => "authentication_failed",
            AuthenticationRequired => "authentication_required",
            AccessDenied => "access_denied",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.as_u16())
    }
}

/// Why a frame or message could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// The input ended before the field was complete.
    #[error("truncated input while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
    },
    /// A length or count exceeds its limit.
    #[error("{field} is {actual}, over the limit of {limit}")]
    TooLarge {
        /// The field being read.
        field: &'static str,
        /// The value found.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// A string field is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        field: &'static str,
    },
    /// The request type is unknown.
    #[error("unknown api key {0}")]
    UnknownApi(u16),
    /// The protocol version is not one this build speaks.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// A field has a value outside its domain.
    #[error("invalid value for {field}: {detail}")]
    Invalid {
        /// The field being read.
        field: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// Bytes were left over after the message ended.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_code_round_trips_and_has_its_own_name() {
        let mut names = std::collections::HashSet::new();
        for n in 0..=u8::MAX as u16 {
            let code = ErrorCode::from_u16(n);
            if code == ErrorCode::Unknown && n != 1 {
                continue; // not (yet) assigned
            }
            assert_eq!(code.as_u16(), n, "{code}");
            assert!(names.insert(code.name()), "{} named twice", code.name());
        }
        assert_eq!(ErrorCode::from_u16(23), ErrorCode::LimitExceeded);
        assert_eq!(ErrorCode::from_u16(24), ErrorCode::TooManyConnections);
        assert_eq!(ErrorCode::from_u16(26), ErrorCode::AuthenticationFailed);
        assert_eq!(ErrorCode::from_u16(27), ErrorCode::AuthenticationRequired);
        assert!(!ErrorCode::AuthenticationFailed.is_retriable());
        assert!(!ErrorCode::AuthenticationRequired.is_retriable());
        assert_eq!(ErrorCode::from_u16(28), ErrorCode::AccessDenied);
        assert!(!ErrorCode::AccessDenied.is_retriable());
    }
}
