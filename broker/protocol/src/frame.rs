//! Framing: a 4-byte big-endian length, then the body. Built on tokio-util's
//! `LengthDelimitedCodec`, which enforces [`FRAME_BYTES_MAX`] while decoding:
//! an oversized length is an error before any byte of the body is buffered.

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest frame body accepted or sent.
pub const FRAME_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Length-delimited frame codec with Tern's size limit.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(FRAME_BYTES_MAX)
    }
}

impl FrameCodec {
    /// A codec refusing frames over `frame_bytes_max`.
    pub fn new(frame_bytes_max: usize) -> Self {
        FrameCodec {
            inner: LengthDelimitedCodec::builder()
                .length_field_length(4)
                .max_frame_length(frame_bytes_max)
                .new_codec(),
        }
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, std::io::Error> {
        Ok(self.inner.decode(src)?.map(BytesMut::freeze))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        self.inner.encode(item, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    #[test]
    fn an_oversized_length_is_refused_before_buffering() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::new();
        buf.put_u32(1025);
        buf.put_slice(&[0; 16]);
        assert!(codec.decode(&mut buf).is_err());
    }

    #[test]
    fn frames_round_trip() {
        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        codec
            .encode(Bytes::from_static(b"hello"), &mut buf)
            .unwrap();
        assert_eq!(
            codec.decode(&mut buf).unwrap().unwrap(),
            Bytes::from_static(b"hello")
        );
    }
}
