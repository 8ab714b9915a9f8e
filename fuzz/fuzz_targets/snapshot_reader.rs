//! Any bytes given to the state-file decoder yield a state or a `SnapshotError`, never a panic
//! or a huge allocation; every state (and session ledger, format 4) that decodes encodes to
//! bytes that decode to an equal one. Run: `cargo +nightly fuzz run snapshot_reader`.
//!
//! Input layout: byte 0 holds flags, the rest is the state file.
//! - bit 0 clear: the file is decoded as it is (the checksums guard everything past them).
//! - bit 0 set: the harness first repairs the header so that the payload gets parsed:
//!   both CRC-32s always, the payload length unless bit 1 is set, and, if bit 2 is set, the
//!   header's dimension is copied from the payload's leading varint (the payload's own
//!   dimension). This lets the fuzzer reach the bincode payload and the state checks.
#![no_main]

use std::path::Path;

use headstart::snapshot::{HEADER_LEN, decode, decode_with_ledger, encode_with_ledger};
use libfuzzer_sys::fuzz_target;

/// bincode 2's standard varint for an unsigned integer.
fn leading_varint(bytes: &[u8]) -> Option<u64> {
    let (&first, rest) = bytes.split_first()?;
    let take = |n: usize| -> Option<u64> {
        let mut le = [0u8; 8];
        le[..n].copy_from_slice(rest.get(..n)?);
        Some(u64::from_le_bytes(le))
    };
    match first {
        0..=250 => Some(u64::from(first)),
        251 => take(2),
        252 => take(4),
        253 => take(8),
        _ => None,
    }
}

fn repair(file: &mut [u8], flags: u8) {
    if file.len() < HEADER_LEN {
        return;
    }
    let (header, payload) = file.split_at_mut(HEADER_LEN);
    if flags & 2 == 0 {
        header[24..32].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    }
    if flags & 4 != 0
        && let Some(dim) = leading_varint(payload)
    {
        header[16..24].copy_from_slice(&dim.to_le_bytes());
    }
    header[32..36].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&header[..36]);
    header[36..40].copy_from_slice(&header_crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flags & 1 != 0 {
        repair(&mut file, flags);
    }
    let Ok((stats, ledger)) = decode_with_ledger(&file, Path::new("fuzz")) else {
        assert!(decode(&file, Path::new("fuzz")).is_err(), "decode and decode_with_ledger agree");
        return;
    };
    let encoded = encode_with_ledger(&stats, &ledger);
    let (back, back_ledger) = decode_with_ledger(&encoded, Path::new("fuzz")).expect("an encoded state decodes");
    assert_eq!(back, stats);
    assert_eq!(back_ledger, ledger);
    assert_eq!(encode_with_ledger(&back, &back_ledger), encoded, "encoding is deterministic");
    assert_eq!(back.dim(), stats.dim());
    assert_eq!(back.samples(), stats.samples());
});
