//! Panic payloads as text, for the places that catch a panic and report it as an error.

use std::any::Any;

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`), or `default`.
pub(crate) fn message(payload: &(dyn Any + Send), default: &str) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| default.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn str_and_string_payloads_are_read_and_others_get_the_default() {
        let text = |f: fn()| super::message(&*std::panic::catch_unwind(f).unwrap_err(), "none");
        let (a, b, c) = (
            text(|| panic!("plain")),
            text(|| panic!("formatted {}", 7)),
            text(|| std::panic::panic_any(3u8)),
        );
        assert_eq!(
            (a.as_str(), b.as_str(), c.as_str()),
            ("plain", "formatted 7", "none")
        );
    }
}
