//! Any byte stream sent to a live server with tokens gets only replies that its handshake
//! allows: before a valid AUTH nothing but WELCOME and ERROR frames, and on a push token's
//! connection no HEAD, SYNCED, STATS or TASK_BEGUN reply. No input panics the server or
//! leaves a connection hanging, and every reply decodes.
//! Run: `cargo +nightly fuzz run handshake`.
//!
//! Input layout: byte 0 picks a prefix sent before the rest (0: none, 1: HELLO, 2: HELLO and
//! AUTH with the push token, 3: HELLO and AUTH with the admin token, 4: HELLO and AUTH with
//! a wrong token, 5: HELLO, AUTH with the push token and OPEN); the rest is sent as it is.
#![no_main]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::OnceLock;
use std::time::Duration;

use headstart::net::auth::{Role, Tokens};
use headstart::net::protocol::{
    Dtype, PROTOCOL_VERSION, Reply, Request, Secret, encode_request, read_frame,
};
use headstart::net::{Address, Server, ServerConfig};
use headstart::stats::Stats;
use libfuzzer_sys::fuzz_target;

const PUSH: &str = "push-token-0123456789";
const ADMIN: &str = "admin-token-0123456789";

fn server() -> &'static (Server, std::path::PathBuf) {
    static SERVER: OnceLock<(Server, std::path::PathBuf)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("headstart-fuzz-handshake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = ServerConfig::new(dir.join("state.hs"));
        config.tokens = Some(Tokens::parse(&format!("push {PUSH}\nadmin {ADMIN}\n"), "fuzz").unwrap());
        config.idle_timeout = Duration::from_millis(500);
        config.max_connections = 1024;
        let socket = dir.join("s.sock");
        let server = Server::start(&Address::Unix(socket.clone()), Stats::new(2), config).unwrap();
        (server, socket)
    })
}

fuzz_target!(|data: &[u8]| {
    let [choice, rest @ ..] = data else {
        return;
    };
    let (_, socket) = server();
    let hello = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    let auth = |t: &str| encode_request(&Request::Auth(Secret(t.as_bytes().to_vec())));
    let open = encode_request(&Request::Open { dim: 2, dtype: Dtype::F32 });
    let (prefix, role): (Vec<u8>, Option<Role>) = match choice % 6 {
        1 => (hello, None),
        2 => ([hello, auth(PUSH)].concat(), Some(Role::Push)),
        3 => ([hello, auth(ADMIN)].concat(), Some(Role::Admin)),
        4 => ([hello, auth("wrong-token-0123456789")].concat(), None),
        5 => ([hello, auth(PUSH), open].concat(), Some(Role::Push)),
        _ => (Vec::new(), None),
    };
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    // The server may close the connection before taking everything: a failed write is fine.
    let _ = s.write_all(&prefix).and_then(|()| s.write_all(rest));
    let _ = s.shutdown(std::net::Shutdown::Write);

    // Replies until the server closes (at a fatal error, the end of input, or its idle
    // timeout): never a hang.
    let mut authenticated = None;
    loop {
        let raw = match read_frame(&mut s, 1 << 24) {
            Ok(raw) => raw,
            Err(_) => break,
        };
        let reply = Reply::decode(raw.kind, &raw.body).expect("every reply decodes");
        match (&reply, authenticated) {
            (Reply::Welcome { token_required, .. }, None) => assert!(*token_required),
            (Reply::Error { .. }, _) => {}
            (Reply::Ready { role, .. }, None) => authenticated = Some(*role),
            (Reply::Ready { .. }, Some(_)) => panic!("a second READY"),
            (_, None) => panic!("{reply:?} before authentication"),
            (Reply::Head(_) | Reply::Synced(_) | Reply::Stats(_) | Reply::TaskBegun, Some(Role::Push)) => {
                panic!("a push token got {reply:?}")
            }
            _ => {}
        }
    }
    // A READY names the role of the token that was sent, which only the prefix holds (the
    // fuzzer does not know the tokens; a guess would be reported here).
    if let Some(granted) = authenticated {
        assert_eq!(Some(granted), role, "READY for a token the prefix did not send");
    }
    let mut tail = Vec::new();
    let _ = s.read_to_end(&mut tail);
});
