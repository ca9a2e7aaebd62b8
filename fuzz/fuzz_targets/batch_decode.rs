//! Arbitrary bytes as a record batch (with and without a valid CRC): full
//! validation, record iteration and splitting must never panic.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tern_protocol::record::{split_batches, BATCH_HEADER_BYTES};
use tern_protocol::BatchView;

fuzz_target!(|data: &[u8]| {
    let _ = BatchView::validate(Bytes::copy_from_slice(data));
    for b in split_batches(Bytes::copy_from_slice(data)).flatten() {
        for _ in b.records() {}
    }
    // Re-seal the CRC so the structural checks behind it are reached too.
    if data.len() >= BATCH_HEADER_BYTES {
        let mut sealed = BytesMut::from(data);
        let crc = crc32c_of(&sealed[16..]);
        sealed[12..16].copy_from_slice(&crc.to_le_bytes());
        if let Ok(view) = BatchView::validate(sealed.freeze()) {
            for r in view.records() {
                let _ = r;
            }
        }
    }
});

fn crc32c_of(data: &[u8]) -> u32 {
    // Same polynomial as the protocol (CRC-32C, Castagnoli), bitwise: the
    // fuzz crate should not need more dependencies than the decoder.
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}
