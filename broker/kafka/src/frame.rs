//! Request frames in, response frames out (without the 4-byte length
//! prefix, which the listener's codec handles).
//!
//! A request is checked before its body is decoded: its API must be one
//! Tern answers, at a version Tern answers (see [`crate::versions`]). The
//! codec runs under `catch_unwind`, so a body that trips an assertion in it
//! is a [`FrameError::Malformed`], never a dead broker.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use thiserror::Error;

use crate::versions::supported;

/// Largest Kafka request frame Tern reads (Kafka's own
/// `socket.request.max.bytes` defaults to 100 MiB; Tern's batches are at most
/// 8 MiB, so a produce request of a few full batches fits).
pub const KAFKA_REQUEST_BYTES_MAX: usize = 64 << 20;

/// A decoded request.
#[derive(Debug)]
pub struct DecodedRequest {
    /// The request header (correlation id, client id).
    pub header: RequestHeader,
    /// Which API.
    pub api: ApiKey,
    /// At which version.
    pub version: i16,
    /// The body.
    pub body: RequestKind,
}

/// Why a frame could not be decoded.
#[derive(Debug, Error)]
pub enum FrameError {
    /// Fewer than the 8 bytes of API key, version and correlation id.
    #[error("request frame of {0} bytes is shorter than a request header")]
    Truncated(usize),
    /// An API key Tern does not answer (Kafka closes the connection).
    #[error("API key {api_key} is not supported")]
    UnknownApi {
        /// The request's correlation id.
        correlation_id: i32,
        /// The key sent.
        api_key: i16,
    },
    /// A version Tern does not answer. An `ApiVersions` request gets an
    /// `UNSUPPORTED_VERSION` answer at version 0 (so the client can retry
    /// lower); any other request closes the connection, as in Kafka.
    #[error("{api:?} version {version} is not supported (Tern answers {lo}..={hi})")]
    UnsupportedVersion {
        /// The request's correlation id.
        correlation_id: i32,
        /// Which API.
        api: ApiKey,
        /// The version sent.
        version: i16,
        /// Lowest version answered.
        lo: i16,
        /// Highest version answered.
        hi: i16,
    },
    /// The header or body does not decode.
    #[error("malformed {api:?} v{version} request: {detail}")]
    Malformed {
        /// The request's correlation id.
        correlation_id: i32,
        /// Which API.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// What the codec said.
        detail: String,
    },
}

fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err("the codec panicked on this input".into()),
    }
}

/// Decodes one request frame.
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::Truncated(frame.len()));
    }
    let mut fixed = &frame[..8];
    let api_key = fixed.get_i16();
    let version = fixed.get_i16();
    let correlation_id = fixed.get_i32();
    let api = ApiKey::try_from(api_key).map_err(|()| FrameError::UnknownApi {
        correlation_id,
        api_key,
    })?;
    let Some((lo, hi)) = supported(api) else {
        return Err(FrameError::UnknownApi {
            correlation_id,
            api_key,
        });
    };
    if !(lo..=hi).contains(&version) {
        return Err(FrameError::UnsupportedVersion {
            correlation_id,
            api,
            version,
            lo,
            hi,
        });
    }
    let malformed = |detail: String| FrameError::Malformed {
        correlation_id,
        api,
        version,
        detail,
    };
    let mut buf = frame;
    let header = guarded(|| RequestHeader::decode(&mut buf, api.request_header_version(version)))
        .map_err(malformed)?;
    let body = guarded(|| RequestKind::decode(api, &mut buf, version)).map_err(malformed)?;
    if buf.has_remaining() {
        return Err(malformed(format!(
            "{} bytes after the request body",
            buf.remaining()
        )));
    }
    Ok(DecodedRequest {
        header,
        api,
        version,
        body,
    })
}

/// Encodes a response frame: the header for `api` at `version`, then the
/// body.
pub fn encode_response(
    correlation_id: i32,
    api: ApiKey,
    version: i16,
    body: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut out = BytesMut::with_capacity(64);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut out, api.response_header_version(version))?;
    body.encode(&mut out, version)?;
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame(api: ApiKey, version: i16, body: &RequestKind) -> Bytes {
        let mut out = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("test")))
            .encode(&mut out, api.request_header_version(version))
            .unwrap();
        body.encode(&mut out, version).unwrap();
        out.freeze()
    }

    #[test]
    fn a_request_round_trips_at_every_supported_version() {
        for version in 0..=3 {
            let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
            let d = decode_request(frame(ApiKey::ApiVersions, version, &body)).unwrap();
            assert_eq!(
                (d.api, d.version, d.header.correlation_id),
                (ApiKey::ApiVersions, version, 7)
            );
        }
        for version in 1..=12 {
            let body = RequestKind::Metadata(MetadataRequest::default());
            let d = decode_request(frame(ApiKey::Metadata, version, &body)).unwrap();
            assert!(matches!(d.body, RequestKind::Metadata(_)));
        }
    }

    #[test]
    fn unknown_apis_versions_and_garbage_are_typed_errors() {
        assert!(matches!(
            decode_request(Bytes::from_static(b"\0\0")),
            Err(FrameError::Truncated(2))
        ));
        let unknown = Bytes::from_static(&[0x7f, 0x00, 0, 0, 0, 0, 0, 9]);
        assert!(matches!(
            decode_request(unknown),
            Err(FrameError::UnknownApi {
                correlation_id: 9,
                ..
            })
        ));
        let body = RequestKind::ApiVersions(ApiVersionsRequest::default());
        let mut f = BytesMut::from(&frame(ApiKey::ApiVersions, 3, &body)[..]);
        f[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            decode_request(f.freeze()),
            Err(FrameError::UnsupportedVersion { version: 99, .. })
        ));
        let body = RequestKind::Metadata(MetadataRequest::default());
        let whole = frame(ApiKey::Metadata, 12, &body);
        for cut in 8..whole.len() {
            assert!(decode_request(whole.slice(..cut)).is_err(), "cut at {cut}");
        }
    }

    /// Random bytes after a valid header never panic the decoder.
    #[test]
    fn random_bodies_never_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for &(api, lo, hi) in crate::versions::SUPPORTED {
            for version in lo..=hi {
                for _ in 0..20 {
                    let mut f = BytesMut::new();
                    f.extend_from_slice(&(api as i16).to_be_bytes());
                    f.extend_from_slice(&version.to_be_bytes());
                    f.extend_from_slice(&1i32.to_be_bytes());
                    // Small lengths keep forged array counts small: a huge
                    // count is the allocation bound's test, not this one's.
                    let len = (next() % 64) as usize;
                    for _ in 0..len {
                        f.extend_from_slice(&[(next() % 4) as u8]);
                    }
                    let _ = decode_request(f.freeze());
                }
            }
        }
    }
}
