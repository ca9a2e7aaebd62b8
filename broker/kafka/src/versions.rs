//! The Kafka APIs Tern answers and the versions of each. Versions stop
//! where Kafka replaced topic names by topic ids (Fetch 13, DeleteTopics
//! 6, Produce 10+), which Tern does not have; every range is also within
//! what the `kafka-protocol` crate can encode and decode.

use kafka_protocol::messages::ApiKey;

/// `(api, lowest, highest)` version Tern answers.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::CreatePartitions, 0, 3),
];

/// The versions of `api` Tern answers, if it answers it at all.
pub fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(a, _, _)| *a == api)
        .map(|&(_, lo, hi)| (lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every advertised range is one the codec can decode and encode: an
    /// advertised version the codec lacks would be a request Tern cannot read.
    #[test]
    fn every_supported_range_is_within_the_codec() {
        for &(api, lo, hi) in SUPPORTED {
            let valid = api.valid_versions();
            assert!(lo <= hi, "{api:?}");
            assert!(
                valid.min <= lo && hi <= valid.max,
                "{api:?} {lo}..={hi} outside the codec's {}..={}",
                valid.min,
                valid.max
            );
        }
    }
}
