//! Arbitrary bytes on the socket: the frame codec, then request and response
//! decoding, must return errors and never panic or over-allocate.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern_protocol::{FrameCodec, RequestFrame, ResponseFrame};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let mut codec = FrameCodec::new(1 << 20);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec.decode(&mut buf) {
        let _ = RequestFrame::decode(frame.clone());
        let _ = ResponseFrame::decode(frame);
    }
    // The body decoders also see the raw input directly.
    let _ = RequestFrame::decode(Bytes::copy_from_slice(data));
    let _ = ResponseFrame::decode(Bytes::copy_from_slice(data));
});
