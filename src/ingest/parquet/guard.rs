//! A fence around the parquet crate's decoder: on some malformed pages it panics (an
//! `assert!` on an over-long RLE run header, found by fuzzing) instead of returning an error.
//! [`guarded`] turns such a panic into an error message; the reader it happened in is then
//! dropped, never used again.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

thread_local! {
    static DECODING: Cell<bool> = const { Cell::new(false) };
}

/// Whether this thread is inside a guarded parquet decode. A panic hook can use it to stay
/// quiet about a panic that the reader turns into an error (the CLI's hook does).
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
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        format!("the parquet decoder failed on malformed data ({message})")
    })
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
