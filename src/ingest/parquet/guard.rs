//! A fence around the parquet crate's decoder: on some malformed pages it panics (an
//! `assert!` on an over-long RLE run header, found by fuzzing) instead of returning an error.
//! [`guarded`] turns such a panic into an error message; the reader it happened in is then
//! dropped, never used again.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static DECODING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside a guarded parquet decode: a panic hook can use it to stay
/// quiet about a panic that the reader turns into an error ([`quiet_decoder_panics`]).
///
/// # Examples
/// ```
/// assert!(!headstart::ingest::parquet::decoding());
/// ```
pub fn decoding() -> bool {
    DECODING.with(Cell::get)
}

/// Runs `decode`; a panic inside it comes back as `Err` with the panic's message.
pub(crate) fn guarded<T>(decode: impl FnOnce() -> T) -> Result<T, String> {
    let outer = DECODING.with(|d| d.replace(true));
    let result = catch_unwind(AssertUnwindSafe(decode));
    DECODING.with(|d| d.set(outer));
    result.map_err(|payload| {
        let message = crate::panic::message(&*payload, "no message");
        format!("the parquet decoder failed on malformed data ({message})")
    })
}

/// Installs a panic hook that stays quiet about the decoder panics the reader turns into
/// errors, and hands every other panic to the hook installed before (the CLI and the
/// `parquet_file` fuzz target, whose libFuzzer hook aborts on any panic, use it).
///
/// # Examples
/// ```
/// headstart::ingest::parquet::quiet_decoder_panics();
/// ```
pub fn quiet_decoder_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !decoding() {
            previous(info);
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_and_the_flag_is_restored() {
        let err = guarded(|| -> u8 { panic!("bad run") }).unwrap_err();
        assert!(err.contains("bad run") && err.contains("malformed data"), "{err}");
        assert!(!decoding());
        assert_eq!(guarded(decoding), Ok(true));
        assert!(!decoding());
    }
}
