//! Any text given to the token-file parser yields tokens or an error, never a panic; an
//! error never repeats a token-like word of the input, and every token accepted is found
//! again with its role.
//! Run: `cargo +nightly fuzz run token_file`.
#![no_main]

use headstart::net::auth::{Role, Tokens};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Tokens::parse(text, "fuzz") {
        Ok(tokens) => {
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let [role, token] = line.split_whitespace().collect::<Vec<_>>()[..] else {
                    panic!("accepted a line that is not ROLE TOKEN: {line:?}");
                };
                let role: Role = role.parse().expect("accepted roles parse");
                assert_eq!(tokens.role_of(token.as_bytes()), Some(role));
            }
        }
        Err(e) => {
            let message = e.to_string();
            for word in text.split_whitespace().filter(|w| w.len() >= 16) {
                assert!(!message.contains(word), "the error repeats a token: {message}");
            }
        }
    }
});
