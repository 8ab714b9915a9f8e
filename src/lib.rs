//! # headstart
//!
//! Least-squares classifier rows for new classes in a continually trained network, computed
//! from a stream of labelled features with no stored data (Harun & Kanan, "A Good Start
//! Matters", CoLLAs 2025).
//!
//! - [`stats`]: the additive statistics (count, Gram, class sums): an exact, mergeable monoid.
//! - [`pipeline`]: producer handles and a reducer thread joined by bounded channels.
//! - [`ledger`]: which numbered batches of which client session the state holds (exactly-once
//!   pushes across reconnects).
//! - [`solve`]: LS heads (`nc`, `ridge`) for any class subset, and λ selection from held-out
//!   statistics.
//! - [`expand`]: seeded random-feature expansion (ReLU(x·R), R regenerated from a seed).
//! - [`export`]: safetensors heads that PyTorch loads.
//! - [`atomic`]: atomic file replacement for heads and state files.
//! - [`ingest`]: streaming readers of `.npy`, Parquet (feature `parquet`) and safetensors
//!   input.
//! - `demo` (feature `demo`, on by default): the class-incremental demonstration on bundled
//!   real data.
//!
//! The default feature `cli` builds the `headstart` program and the demo; with
//! `default-features = false` the library is the engine alone (no clap, indicatif, anyhow,
//! signal-hook, flate2, rand_distr, parquet or arrow; the feature `parquet` brings back
//! `ingest::parquet` alone).
//!
//! ```
//! use headstart::{stats::Stats, solve::{Solver, SolveOptions}};
//! let mut stats = Stats::new(2);
//! stats.update(&[1.0f32, 0.1, 0.9, 0.0, 0.0, 1.0, 0.1, 1.1], &[3, 3, 8, 8])?;
//! let head = Solver::new().solve(&stats, &SolveOptions::default())?;
//! assert_eq!(head.class_ids, vec![3, 8]);
//! let logits = head.logits(&[1.0, 0.0]);
//! assert!(logits[0] > logits[1]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod atomic;
#[cfg(feature = "demo")]
pub mod demo;
pub mod expand;
pub mod export;
pub mod ingest;
pub mod ledger;
pub mod net;
mod panic;
pub mod pipeline;
pub mod snapshot;
pub mod solve;
pub mod stats;
