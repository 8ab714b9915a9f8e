//! State files: a [`Stats`] written with bincode 2 behind a checked header.
//!
//! Layout (little-endian; `docs/formats.md` has the details):
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 8 | magic `HDSTATE\n` |
//! | 8 | 4 | format version (4, or 3 without a session ledger; versions 1 and 2 are still read) |
//! | 12 | 4 | flags (0) |
//! | 16 | 8 | feature dimension d |
//! | 24 | 8 | payload length in bytes |
//! | 32 | 4 | CRC-32 of the payload |
//! | 36 | 4 | CRC-32 of bytes 0–35 |
//! | 40 | … | payload: the statistics, bincode 2 (standard configuration) via serde |
//!
//! Reading checks the magic, both checksums, the version, the lengths (against the file's
//! real size, before anything is allocated from them) and every value of the decoded state;
//! any failure is a [`SnapshotError`] naming the file, never a panic. Version 2 added the
//! sample weights of [`Stats::decay`]; a version-1 file (integer counts only) reads as the
//! undecayed state with weights equal to its counts. Version 3 added the random-feature
//! [`Expansion`](crate::expand::Expansion) spec after the segments (R itself is never
//! written: it is regenerated from the spec). Version 4 appends the server's session
//! [`Ledger`] to the payload, after the statistics; a state without sessions is still written
//! as version 3, which older builds read. Writing is atomic:
//! temporary file in the same directory, fsync, rename, fsync of the directory.
//!
//! # Examples
//! ```
//! use headstart::{snapshot, stats::Stats};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("state.hs");
//! let mut s = Stats::new(3);
//! s.update(&[1.0f32, 2.0, 3.0], &[7])?;
//! snapshot::write(&path, &s)?;
//! let back = snapshot::read(&path)?;
//! assert_eq!(back, s);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::path::{Path, PathBuf};

use crate::ledger::{Ledger, LedgerParts};
use crate::stats::{SegmentParts, Stats, StatsParts};

/// The first 8 bytes of every state file.
pub const MAGIC: [u8; 8] = *b"HDSTATE\n";
/// The format version this build writes.
pub const FORMAT_VERSION: u32 = 4;
/// The format version written for a state without a session ledger.
pub const LEDGERLESS_VERSION: u32 = 3;
/// The oldest format version this build reads.
pub const OLDEST_READ_VERSION: u32 = 1;

/// Version 1's payload: [`StatsParts`] without weights.
#[derive(serde::Deserialize)]
struct PartsV1 {
    dim: u64,
    tasks_begun: u64,
    before: SegmentV1,
    task: SegmentV1,
}

#[derive(serde::Deserialize)]
struct SegmentV1 {
    n: u64,
    gram_lower: Vec<f64>,
    sum: Vec<f64>,
    classes: Vec<(i64, u64, Vec<f64>)>,
}

impl From<SegmentV1> for SegmentParts {
    fn from(v1: SegmentV1) -> Self {
        SegmentParts {
            n: v1.n,
            weight: v1.n as f64,
            gram_lower: v1.gram_lower,
            sum: v1.sum,
            classes: v1
                .classes
                .into_iter()
                .map(|(id, count, sum)| (id, count, count as f64, sum))
                .collect(),
        }
    }
}

impl From<PartsV1> for StatsParts {
    fn from(v1: PartsV1) -> Self {
        StatsParts {
            dim: v1.dim,
            tasks_begun: v1.tasks_begun,
            before: v1.before.into(),
            task: v1.task.into(),
            expansion: None,
        }
    }
}

/// Version 2's payload: [`StatsParts`] without the expansion.
#[derive(serde::Deserialize)]
struct PartsV2 {
    dim: u64,
    tasks_begun: u64,
    before: SegmentParts,
    task: SegmentParts,
}

impl From<PartsV2> for StatsParts {
    fn from(v2: PartsV2) -> Self {
        StatsParts {
            dim: v2.dim,
            tasks_begun: v2.tasks_begun,
            before: v2.before,
            task: v2.task,
            expansion: None,
        }
    }
}
/// Bytes before the payload.
pub const HEADER_LEN: usize = 40;
/// The largest feature dimension a state file may declare ([`crate::stats::MAX_DIM`]): a
/// corrupt header cannot make the reader plan for more.
pub const MAX_DIM: u64 = crate::stats::MAX_DIM as u64;

/// Why a state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The file could not be opened, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a headstart state file, or its header is damaged.
    #[error("{path}: not a headstart state file ({reason})")]
    NotAState {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file was written by a format version this build does not read.
    #[error(
        "{path}: state format version {found}, but this build reads versions {OLDEST_READ_VERSION} to {FORMAT_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// The file ends before the payload its header announces.
    #[error("{path}: truncated: the header announces {expected} payload bytes but the file holds {found}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Payload bytes announced.
        expected: u64,
        /// Payload bytes present.
        found: u64,
    },
    /// The payload's checksum does not match the header's.
    #[error("{path}: corrupted: payload checksum {found:08x} does not match the header's {expected:08x}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// CRC-32 recorded in the header.
        expected: u32,
        /// CRC-32 of the payload read.
        found: u32,
    },
    /// The state has a different feature dimension than required.
    #[error("{path}: the state has dimension {found}, expected {expected}")]
    Dimension {
        /// The file.
        path: PathBuf,
        /// The dimension required.
        expected: usize,
        /// The dimension in the file.
        found: u64,
    },
    /// The payload decoded but does not describe a valid state.
    #[error("{path}: invalid state: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// The state file's bytes: header and payload (format version 3: no session ledger).
pub fn encode(stats: &Stats) -> Vec<u8> {
    encode_with_ledger(stats, &Ledger::new())
}

/// The state file's bytes with a session ledger: format version 4, or 3 if the ledger is
/// empty.
pub fn encode_with_ledger(stats: &Stats, ledger: &Ledger) -> Vec<u8> {
    let mut payload = bincode::serde::encode_to_vec(stats.to_parts(), bincode_config())
        .expect("encoding plain data into a Vec cannot fail");
    let version = if ledger.is_empty() {
        LEDGERLESS_VERSION
    } else {
        let ledger = bincode::serde::encode_to_vec(ledger.to_parts(), bincode_config())
            .expect("encoding plain data into a Vec cannot fail");
        payload.extend_from_slice(&ledger);
        FORMAT_VERSION
    };
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(stats.dim() as u64).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let header_crc = crc32fast::hash(&out[..36]);
    out.extend_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a state file's bytes; `origin` names them in errors. A session ledger in the file
/// is checked and dropped ([`decode_with_ledger`] keeps it).
///
/// # Errors
/// Every [`SnapshotError`] but `Io`.
pub fn decode(bytes: &[u8], origin: &Path) -> Result<Stats, SnapshotError> {
    decode_with_ledger(bytes, origin).map(|(stats, _)| stats)
}

/// Decodes a state file's bytes with its session ledger (empty before format version 4).
///
/// # Errors
/// Every [`SnapshotError`] but `Io`.
pub fn decode_with_ledger(bytes: &[u8], origin: &Path) -> Result<(Stats, Ledger), SnapshotError> {
    let path = || origin.to_path_buf();
    let not_a_state = |reason: &str| SnapshotError::NotAState {
        path: path(),
        reason: reason.to_string(),
    };
    if bytes.len() < HEADER_LEN {
        return Err(
            if bytes.starts_with(&MAGIC[..bytes.len().min(8)]) && !bytes.is_empty() {
                SnapshotError::Truncated {
                    path: path(),
                    expected: HEADER_LEN as u64,
                    found: bytes.len() as u64,
                }
            } else {
                not_a_state(&format!(
                    "{} bytes, shorter than the {HEADER_LEN}-byte header",
                    bytes.len()
                ))
            },
        );
    }
    let (header, payload) = bytes.split_at(HEADER_LEN);
    if header[..8] != MAGIC {
        return Err(not_a_state("wrong magic number"));
    }
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if crc32fast::hash(&header[..36]) != u32_at(36) {
        return Err(not_a_state("header checksum mismatch"));
    }
    let version = u32_at(8);
    if !(OLDEST_READ_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(SnapshotError::Version {
            path: path(),
            found: version,
        });
    }
    let dim = u64_at(16);
    if dim == 0 || dim > MAX_DIM {
        return Err(not_a_state(&format!("dimension {dim} outside 1..={MAX_DIM}")));
    }
    let announced = u64_at(24);
    if announced != payload.len() as u64 {
        return Err(SnapshotError::Truncated {
            path: path(),
            expected: announced,
            found: payload.len() as u64,
        });
    }
    let expected_crc = u32_at(32);
    let found_crc = crc32fast::hash(payload);
    if found_crc != expected_crc {
        return Err(SnapshotError::Checksum {
            path: path(),
            expected: expected_crc,
            found: found_crc,
        });
    }
    // serde's sequence visitors never preallocate more than about 1 MiB from a length
    // prefix, so a hostile length fails at the end of the payload instead of allocating.
    let undecodable = |e: bincode::error::DecodeError| SnapshotError::Invalid {
        path: path(),
        reason: format!("payload does not decode: {e}"),
    };
    let (parts, used): (StatsParts, usize) = if version == 1 {
        let (v1, used): (PartsV1, usize) =
            bincode::serde::decode_from_slice(payload, bincode_config()).map_err(undecodable)?;
        (v1.into(), used)
    } else if version == 2 {
        let (v2, used): (PartsV2, usize) =
            bincode::serde::decode_from_slice(payload, bincode_config()).map_err(undecodable)?;
        (v2.into(), used)
    } else {
        bincode::serde::decode_from_slice(payload, bincode_config()).map_err(undecodable)?
    };
    let (ledger, used) = if version >= 4 {
        let (ledger, more): (LedgerParts, usize) =
            bincode::serde::decode_from_slice(&payload[used..], bincode_config()).map_err(undecodable)?;
        let ledger =
            Ledger::from_parts(ledger).map_err(|reason| SnapshotError::Invalid { path: path(), reason })?;
        (ledger, used + more)
    } else {
        (Ledger::new(), used)
    };
    if used != payload.len() {
        return Err(SnapshotError::Invalid {
            path: path(),
            reason: format!("{} bytes left over after the state", payload.len() - used),
        });
    }
    if parts.dim != dim {
        return Err(SnapshotError::Invalid {
            path: path(),
            reason: format!("header says dimension {dim}, payload says {}", parts.dim),
        });
    }
    let stats = Stats::from_parts(parts).map_err(|reason| SnapshotError::Invalid { path: path(), reason })?;
    Ok((stats, ledger))
}

/// Reads a state file.
///
/// # Errors
/// [`SnapshotError`], naming the file.
pub fn read(path: &Path) -> Result<Stats, SnapshotError> {
    read_with_ledger(path).map(|(stats, _)| stats)
}

/// Reads a state file with its session ledger (empty before format version 4).
///
/// # Errors
/// [`SnapshotError`], naming the file.
pub fn read_with_ledger(path: &Path) -> Result<(Stats, Ledger), SnapshotError> {
    let bytes = std::fs::read(path).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_with_ledger(&bytes, path)
}

/// Reads a state file and checks its dimension.
///
/// # Errors
/// As [`read`], and [`SnapshotError::Dimension`].
pub fn read_with_dim(path: &Path, dim: usize) -> Result<Stats, SnapshotError> {
    let stats = read(path)?;
    if stats.dim() != dim {
        return Err(SnapshotError::Dimension {
            path: path.to_path_buf(),
            expected: dim,
            found: stats.dim() as u64,
        });
    }
    Ok(stats)
}

/// Writes a state file atomically (temporary file, fsync, rename, directory fsync): a crash
/// leaves either the old file or the new one, never a mix.
///
/// # Errors
/// [`SnapshotError::Io`].
pub fn write(path: &Path, stats: &Stats) -> Result<(), SnapshotError> {
    write_with_ledger(path, stats, &Ledger::new())
}

/// Writes a state file with a session ledger, atomically as [`write()`] does.
///
/// # Errors
/// [`SnapshotError::Io`].
///
/// # Examples
/// ```
/// use headstart::{ledger::Ledger, snapshot, stats::Stats};
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("state.hs");
/// let mut ledger = Ledger::new();
/// ledger.admit(42, 1);
/// snapshot::write_with_ledger(&path, &Stats::new(2), &ledger)?;
/// let (_, back) = snapshot::read_with_ledger(&path)?;
/// assert_eq!(back.last(42), Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_with_ledger(path: &Path, stats: &Stats, ledger: &Ledger) -> Result<(), SnapshotError> {
    crate::atomic::write(path, &encode_with_ledger(stats, ledger)).map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })
}
