//! State files: round trips (property tests), and every kind of damaged file refused with
//! a clear error, never a panic or a huge allocation.

mod common;

use std::path::Path;

use common::labelled_data;
use headstart::net::auth::Role;
use headstart::net::protocol::{
    Dtype, ErrorCode, Limits, PROTOCOL_VERSION, Reply, Request, Secret, encode_request, read_frame,
};
use headstart::snapshot::{self, HEADER_LEN, SnapshotError};
use headstart::stats::{Batch, Stats};
use proptest::prelude::*;

fn sample_state() -> Stats {
    let (x, y) = labelled_data(1, 40, 5, &[-3, 0, 7, 1 << 50]);
    let mut s = Stats::new(5);
    s.update(&x[..20 * 5], &y[..20]).unwrap();
    s.begin_task();
    s.update(&x[20 * 5..], &y[20..]).unwrap();
    s
}

fn decode(bytes: &[u8]) -> Result<Stats, SnapshotError> {
    snapshot::decode(bytes, Path::new("state.hs"))
}

/// Rewrites the header's length and checksums after a payload edit, so that the decoder's
/// later checks (not the CRC) must catch the damage.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let payload_len = (bytes.len() - HEADER_LEN) as u64;
    bytes[24..32].copy_from_slice(&payload_len.to_le_bytes());
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[32..36].copy_from_slice(&crc.to_le_bytes());
    let header_crc = crc32fast::hash(&bytes[..36]);
    bytes[36..40].copy_from_slice(&header_crc.to_le_bytes());
    bytes
}

#[test]
fn a_written_state_reads_back_equal_and_the_write_is_atomic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.hs");
    let state = sample_state();
    snapshot::write(&path, &state).unwrap();
    let back = snapshot::read(&path).unwrap();
    assert_eq!(back, state);
    assert_eq!(back.tasks_begun(), 1);
    assert_eq!(back.task_classes(), state.task_classes());
    // Overwriting leaves no temporary file behind.
    snapshot::write(&path, &Stats::new(5)).unwrap();
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("s.hs")]);
    assert_eq!(snapshot::read(&path).unwrap().samples(), 0);
}

#[test]
fn every_truncation_is_refused_naming_the_file() {
    let bytes = snapshot::encode(&sample_state());
    for len in 0..bytes.len() {
        let err = decode(&bytes[..len]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("state.hs: "), "{len}: {text}");
        if len >= HEADER_LEN {
            assert!(matches!(err, SnapshotError::Truncated { .. }), "{len}: {err:?}");
        }
    }
}

#[test]
fn flipped_bits_are_caught_by_the_checksums() {
    let bytes = snapshot::encode(&sample_state());
    for at in (0..bytes.len()).step_by(7) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x10;
        let err = decode(&damaged).unwrap_err();
        match at {
            0..8 => assert!(err.to_string().contains("wrong magic"), "{at}: {err}"),
            8..HEADER_LEN => assert!(matches!(err, SnapshotError::NotAState { .. }), "{at}: {err:?}"),
            _ => assert!(matches!(err, SnapshotError::Checksum { .. }), "{at}: {err:?}"),
        }
    }
}

#[test]
fn other_versions_dimensions_and_files_are_refused_clearly() {
    let mut bytes = snapshot::encode(&sample_state());
    bytes[8..12].copy_from_slice(&5u32.to_le_bytes());
    let header_crc = crc32fast::hash(&bytes[..36]);
    bytes[36..40].copy_from_slice(&header_crc.to_le_bytes());
    let err = decode(&bytes).unwrap_err();
    assert!(
        err.to_string()
            .contains("version 5, but this build reads versions 1 to 4"),
        "{err}"
    );

    let err = decode(b"\x93NUMPY\x01\x00 not a state file at all, but long enough....").unwrap_err();
    assert!(err.to_string().contains("not a headstart state file"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.hs");
    snapshot::write(&path, &sample_state()).unwrap();
    let err = snapshot::read_with_dim(&path, 6).unwrap_err();
    assert!(err.to_string().contains("dimension 5, expected 6"), "{err}");
    let err = snapshot::read(&dir.path().join("missing.hs")).unwrap_err();
    assert!(err.to_string().contains("missing.hs"), "{err}");
}

#[test]
fn a_hostile_length_inside_a_valid_checksum_fails_without_allocating() {
    // A state of dimension 1 whose Gram vector claims 2⁶⁰ elements: bincode's varint length
    // prefix is 0xFD followed by a u64. The CRCs are recomputed, so only the decoder stands
    // between this file and a 8 EiB allocation.
    let state = Stats::new(1);
    let honest = snapshot::encode(&state);
    let payload = &honest[HEADER_LEN..];
    // Payload: dim (1), tasks_begun (0), then the before-segment: n (0), weight (f64 0.0),
    // gram_lower length (1)…
    assert_eq!(&payload[..3], &[1, 0, 0], "the layout this test edits");
    assert_eq!(
        &payload[3..12],
        &[0, 0, 0, 0, 0, 0, 0, 0, 1],
        "the layout this test edits"
    );
    let mut hostile = honest[..HEADER_LEN].to_vec();
    hostile.extend_from_slice(&payload[..11]);
    hostile.push(0xFD);
    hostile.extend_from_slice(&(1u64 << 60).to_le_bytes());
    hostile.extend_from_slice(&payload[12..]);
    let err = decode(&reseal(hostile)).unwrap_err();
    assert!(matches!(err, SnapshotError::Invalid { .. }), "{err:?}");

    // Lengths that decode but do not fit the dimension, and counts that do not add up.
    let mut s = Stats::new(2);
    s.update(&[1.0f32, 2.0], &[4]).unwrap();
    let mut bytes = snapshot::encode(&s);
    let last = bytes.len() - 1;
    bytes.truncate(last); // one byte short: the expansion's `Option` is missing
    let err = decode(&reseal(bytes)).unwrap_err();
    assert!(matches!(err, SnapshotError::Invalid { .. }), "{err:?}");
}

#[test]
fn invalid_contents_are_named() {
    // Encode a state whose class count disagrees with N by editing the count varint.
    let mut s = Stats::new(1);
    s.update(&[3.0f32, 4.0], &[9, 9]).unwrap();
    let bytes = snapshot::encode(&s);
    // The class entry (id 9, count 2, weight 2.0, sum [7.0]) ends the payload: 8-byte f64,
    // length 1, 8-byte f64 weight, count 2, id 9 (zigzag 18), walking backwards from the
    // final byte (0: no expansion).
    assert_eq!(bytes.last(), Some(&0));
    let n = bytes.len() - 1;
    assert_eq!(&bytes[n - 19..n - 17], &[18, 2]);
    assert_eq!(bytes[n - 9], 1);
    assert_eq!(&bytes[n - 17..n - 9], &2.0f64.to_le_bytes());
    let mut damaged = bytes.clone();
    damaged[n - 18] = 3;
    let err = decode(&reseal(damaged)).unwrap_err();
    assert!(
        err.to_string()
            .contains("class counts add up to 3 but the segment holds 2 samples"),
        "{err}"
    );
    let mut damaged = bytes.clone();
    damaged[n - 8..n].copy_from_slice(&f64::NAN.to_le_bytes());
    let err = decode(&reseal(damaged)).unwrap_err();
    assert!(err.to_string().contains("class 9"), "{err}");
}

fn arbitrary_state() -> impl Strategy<Value = Stats> {
    let batch = (1usize..5).prop_flat_map(|rows| {
        (
            proptest::collection::vec(-1e6f64..1e6, rows * 3),
            proptest::collection::vec(
                prop_oneof![Just(i64::MIN), Just(-1i64), Just(5), Just(i64::MAX)],
                rows,
            ),
        )
    });
    (
        proptest::collection::vec(batch.clone(), 0..4),
        proptest::collection::vec(batch, 0..4),
        prop_oneof![Just(1.0f64), 0.01f64..1.0],
    )
        .prop_map(|(before, after, gamma)| {
            let mut s = Stats::new(3);
            for (x, y) in &before {
                s.update(x, y).unwrap();
            }
            s.decay(gamma).unwrap(); // weights that are not counts must survive too
            if !after.is_empty() {
                s.begin_task();
            }
            for (x, y) in &after {
                s.update(x, y).unwrap();
            }
            s
        })
}

fn arbitrary_request() -> impl Strategy<Value = (Request, Option<(usize, Dtype, Limits)>)> {
    let dim = 3usize;
    let limits = Limits::default();
    let batch32 = (0usize..4).prop_flat_map(move |rows| {
        (
            any::<u64>(),
            proptest::collection::vec(-1e30f32..1e30, rows * dim),
            proptest::collection::vec(any::<i64>(), rows),
        )
    });
    let batch64 = (0usize..4).prop_flat_map(move |rows| {
        (
            any::<u64>(),
            proptest::collection::vec(-1e100f64..1e100, rows * dim),
            proptest::collection::vec(any::<i64>(), rows),
        )
    });
    prop_oneof![
        Just((
            Request::Hello {
                version: PROTOCOL_VERSION
            },
            None
        )),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|t| (Request::Auth(Secret(t)), None)),
        (any::<u64>(), any::<bool>()).prop_map(|(dim, f)| (
            Request::Open {
                dim,
                dtype: if f { Dtype::F32 } else { Dtype::F64 }
            },
            None
        )),
        batch32.prop_map(move |(seq, x, y)| (
            Request::Batch {
                seq,
                batch: Batch::new(x, y)
            },
            Some((dim, Dtype::F32, limits))
        )),
        batch64.prop_map(move |(seq, x, y)| (
            Request::Batch {
                seq,
                batch: Batch::new(x, y)
            },
            Some((dim, Dtype::F64, limits))
        )),
        Just((Request::BeginTask, None)),
        ".{0,40}".prop_map(|s| (Request::Solve(s), None)),
        Just((Request::Sync, None)),
        Just((Request::Stats, None)),
    ]
}

fn arbitrary_reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        any::<bool>().prop_map(|token_required| Reply::Welcome {
            version: PROTOCOL_VERSION,
            token_required
        }),
        (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(admin, dim, samples)| Reply::Ready {
            role: if admin { Role::Admin } else { Role::Push },
            dim,
            samples
        }),
        any::<u64>().prop_map(|samples| Reply::Opened { samples }),
        any::<u64>().prop_map(Reply::Ack),
        Just(Reply::TaskBegun),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Reply::Head),
        any::<u64>().prop_map(Reply::Synced),
        ".{0,40}".prop_map(Reply::Stats),
        (0usize..12, any::<bool>(), ".{0,40}").prop_map(|(c, fatal, message)| Reply::Error {
            code: [
                ErrorCode::Malformed,
                ErrorCode::TooLarge,
                ErrorCode::TooManyRows,
                ErrorCode::BadBatch,
                ErrorCode::Session,
                ErrorCode::Solve,
                ErrorCode::Durability,
                ErrorCode::IdleTimeout,
                ErrorCode::Unavailable,
                ErrorCode::Unauthorized,
                ErrorCode::Forbidden,
                ErrorCode::Transport
            ][c],
            fatal,
            message
        }),
    ]
}

proptest! {
    #[test]
    fn state_files_round_trip(state in arbitrary_state()) {
        let bytes = snapshot::encode(&state);
        let back = decode(&bytes).unwrap();
        prop_assert_eq!(&back, &state);
        prop_assert_eq!(snapshot::encode(&back), bytes);
    }

    #[test]
    fn requests_round_trip((request, session) in arbitrary_request()) {
        let frame = encode_request(&request);
        let raw = read_frame(&mut &frame[..], 1 << 20).unwrap();
        prop_assert_eq!(Request::decode(raw.kind, &raw.body, session).unwrap(), request);
    }

    #[test]
    fn replies_round_trip(reply in arbitrary_reply()) {
        let (kind, body) = reply.encode();
        prop_assert_eq!(Reply::decode(kind, &body).unwrap(), reply);
    }

    #[test]
    fn truncated_frames_never_decode_to_the_original((request, session) in arbitrary_request(), cut in 1usize..64) {
        let frame = encode_request(&request);
        // A stream that ends inside a frame is an error.
        let shortened = &frame[..frame.len() - cut.min(frame.len())];
        prop_assert!(read_frame(&mut &shortened[..], 1 << 20).is_err());
        // A body cut short under a length that agrees with it reads as a frame, and then must
        // not decode: only the free-form bodies (SOLVE's JSON text, AUTH's token) may shorten
        // into another request.
        let body = &frame[5..];
        if !body.is_empty() {
            let keep = body.len() - cut.min(body.len());
            let mut framed = ((1 + keep) as u32).to_le_bytes().to_vec();
            framed.push(frame[4]);
            framed.extend_from_slice(&body[..keep]);
            let raw = read_frame(&mut &framed[..], 1 << 20).unwrap();
            prop_assert_eq!(&raw.body[..], &body[..keep]);
            match Request::decode(raw.kind, &raw.body, session) {
                Err(_) => {}
                Ok(shorter) => prop_assert!(
                    matches!(shorter, Request::Solve(_) | Request::Auth(_)) && shorter != request,
                    "a cut {:?} decoded as {:?}", request, shorter
                ),
            }
        }
    }
}

#[test]
fn a_large_declared_dimension_with_empty_vectors_allocates_nothing() {
    // Found by the snapshot_reader fuzz target: 54 bytes with valid checksums declaring
    // dimension 65,536 made the reader allocate two 32 GiB matrices before checking lengths.
    let hex = "484453544154450a010000000000000000000100000000000e000000000000008d6bdc530c12eb28fc00000100000000000000000000";
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let err = decode(&bytes).unwrap_err();
    assert!(
        err.to_string().contains("Gram has 0 values, expected 2147516416"),
        "{err}"
    );
    // And through the public parts API, a dimension above the limit is an error, not a panic.
    let mut parts = Stats::new(2).to_parts();
    parts.dim = 1 << 40;
    assert!(Stats::from_parts(parts).unwrap_err().contains("outside"));
}
