//! Tern's error codes as Kafka clients must read them: each maps to the
//! Kafka code that makes a client do the right thing by itself (refresh
//! metadata and retry on `NOT_LEADER_OR_FOLLOWER`, back off on a busy
//! partition, give up on a corrupt batch).

use kafka_protocol::error::ResponseError;
use tern_protocol::ErrorCode;

/// The Kafka error code for a Tern error code (0 for none).
pub fn kafka_code(code: ErrorCode) -> i16 {
    use ResponseError as K;
    let k = match code {
        ErrorCode::None => return 0,
        ErrorCode::Unknown => K::UnknownServerError,
        ErrorCode::CorruptBatch => K::CorruptMessage,
        ErrorCode::UnknownTopicOrPartition => K::UnknownTopicOrPartition,
        ErrorCode::OffsetOutOfRange => K::OffsetOutOfRange,
        ErrorCode::TopicAlreadyExists => K::TopicAlreadyExists,
        ErrorCode::InvalidRequest => K::InvalidRequest,
        ErrorCode::UnsupportedVersion => K::UnsupportedVersion,
        ErrorCode::MessageTooLarge => K::MessageTooLarge,
        ErrorCode::StorageError => K::KafkaStorageError,
        ErrorCode::RequestTimedOut => K::RequestTimedOut,
        ErrorCode::InvalidPartitions => K::InvalidPartitions,
        ErrorCode::InvalidConfig => K::InvalidConfig,
        ErrorCode::NotLeader => K::NotLeaderOrFollower,
        // Retriable, so the client backs off and retries.
        ErrorCode::Busy => K::ThrottlingQuotaExceeded,
        ErrorCode::DiskFull => K::KafkaStorageError,
        ErrorCode::InvalidTopicName => K::InvalidTopicException,
        ErrorCode::DuplicateSequence => K::DuplicateSequenceNumber,
        ErrorCode::LeaderNotAvailable => K::LeaderNotAvailable,
        ErrorCode::UnknownMember => K::UnknownMemberId,
        ErrorCode::IllegalGeneration => K::IllegalGeneration,
        ErrorCode::LimitExceeded => K::PolicyViolation,
        ErrorCode::TooManyConnections => K::ThrottlingQuotaExceeded,
        ErrorCode::OutOfOrderSequence => K::OutOfOrderSequenceNumber,
        ErrorCode::AuthenticationFailed => K::SaslAuthenticationFailed,
        ErrorCode::AuthenticationRequired => K::SaslAuthenticationFailed,
        ErrorCode::AccessDenied => K::TopicAuthorizationFailed,
        ErrorCode::LockNotHeld | ErrorCode::LockWaitTimeout => K::InvalidRequest,
    };
    k.code()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes a client acts on by itself keep their meaning.
    #[test]
    fn retriable_codes_stay_retriable() {
        for (tern, kafka) in [
            (ErrorCode::NotLeader, 6),
            (ErrorCode::UnknownTopicOrPartition, 3),
            (ErrorCode::OffsetOutOfRange, 1),
            (ErrorCode::LeaderNotAvailable, 5),
            (ErrorCode::RequestTimedOut, 7),
            (ErrorCode::OutOfOrderSequence, 45),
            (ErrorCode::None, 0),
        ] {
            assert_eq!(kafka_code(tern), kafka, "{tern:?}");
        }
    }
}
