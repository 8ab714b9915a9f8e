//! Any byte stream given to the frame reader and the request/reply decoders yields frames or
//! errors, never a panic or an allocation beyond the frame limit; every request that decodes
//! re-encodes to a frame that decodes to the same request, bit for bit (and likewise for replies).
//! Run: `cargo +nightly fuzz run frame_decoder`.
//!
//! Input layout: byte 0 picks the session (0 → none, else dimension 1..=16 with f32 or f64),
//! byte 1 picks how many bytes each `read` call may return (0 → no limit; exercises partial
//! reads of the length prefix), the rest is the stream of frames.
#![no_main]

use std::io::Read;

use headstart::net::protocol::{Dtype, Limits, Reply, Request, encode_request, read_frame};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_frame_bytes: 1 << 16,
    max_rows: 64,
};

/// A reader that hands out at most `chunk` bytes per call, like a socket would.
struct Trickle<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn session(selector: u8) -> Option<(usize, Dtype, Limits)> {
    // 33 choices: none, then (dim 1, f32), (dim 1, f64), …, (dim 16, f64).
    match selector % 33 {
        0 => None,
        s => {
            let s = usize::from(s - 1);
            let dtype = if s % 2 == 0 { Dtype::F32 } else { Dtype::F64 };
            Some((s / 2 + 1, dtype, LIMITS))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [selector, chunk, stream @ ..] = data else {
        return;
    };
    let session = session(*selector);
    let chunk = if *chunk == 0 {
        usize::MAX
    } else {
        usize::from(*chunk)
    };
    let mut reader = Trickle { data: stream, chunk };
    // Every successful read consumes at least 5 bytes, so this terminates.
    while let Ok(frame) = read_frame(&mut reader, LIMITS.max_frame_bytes) {
        assert!(frame.body.len() < LIMITS.max_frame_bytes);

        if let Ok(request) = Request::decode(frame.kind, &frame.body, session) {
            let bytes = encode_request(&request);
            let again = read_frame(&mut &bytes[..], usize::MAX).expect("re-encoded frame reads");
            assert_eq!(again.kind, frame.kind);
            let back = Request::decode(again.kind, &again.body, session).expect("re-encoded request decodes");
            // Compared by encoding, not with `==`: a batch may carry NaN (the reducer refuses it
            // later), and NaN != NaN. Equal bytes mean equal requests, bit for bit.
            assert_eq!(encode_request(&back), bytes);
            // The frame body was already canonical: the encoder writes exactly its bytes.
            assert_eq!(again.body, frame.body);
        }

        if let Ok(reply) = Reply::decode(frame.kind, &frame.body) {
            let (kind, body) = reply.encode();
            assert_eq!(kind, frame.kind);
            let back = Reply::decode(kind, &body).expect("re-encoded reply decodes");
            assert_eq!(back, reply);
        }
    }
});
