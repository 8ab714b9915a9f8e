//! Any bytes given to the `.npy` header parser yield a header or an error, never a panic or
//! a huge allocation. Run: `cargo +nightly fuzz run npy_header`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    if let Ok(header) = headstart::ingest::npy::parse_header(&mut reader) {
        assert!(header.data_offset as usize <= data.len());
    }
});
