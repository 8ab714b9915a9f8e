//! The class-incremental demonstration on bundled real data.
