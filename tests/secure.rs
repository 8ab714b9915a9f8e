//! The stream feed's security (protocol version 2): tokens with roles, TLS, private token
//! files and the loopback rule; and the main flows of tests/server.rs over TLS with tokens.
//!
//! In-process servers (`Server::start`) for the protocol; the `headstart` binary for its
//! options, its logs and SIGKILL. Every refusal is checked to leave the state as it was,
//! batches pipelined behind a refused request included.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::crash::{Crash, crash_rounds};
use common::{
    SUM_ORDER_REL_TOL, Serve, check_remote_solve, expect_stats_ack_head, expect_window_stops_at_refused,
    labelled_data, rel_err, s, send_signal, spawn_first_line, within,
};
use headstart::net::auth::{Role, Token, Tokens};
use headstart::net::protocol::{
    Dtype, ErrorCode, PROTOCOL_VERSION, Reply, Request, Secret, encode_request, kind, read_frame, write_frame,
};
use headstart::net::tls::{self, TlsStream};
use headstart::net::{Address, Client, ClientError, ClientOptions, Conn, Server, ServerConfig, SolveRequest};
use headstart::snapshot;
use headstart::solve::Scope;
use headstart::stats::{Batch, Features, Stats};

const D: usize = 6;
const PUSH_TOKEN: &str = "p7f3a9c1e5b2d4068a1e";
const ADMIN_TOKEN: &str = "a0c8e2a6f4d1b3957b2f";
const WRONG_TOKEN: &str = "w93e1d7b5a2c4f680c3d";

/// Asserts that `text` holds none of the test's tokens, whole or cut to 10 characters.
fn no_token(text: &str) {
    for token in [PUSH_TOKEN, ADMIN_TOKEN, WRONG_TOKEN] {
        assert!(!text.contains(&token[..10]), "a token is printed: {text}");
    }
}

// ---------------------------------------------------------------- set-up

/// Runs `headstart` with `args` (without HEADSTART_TOKEN unless `env` sets it); fails the
/// test if it has not exited within 20 s.
fn run(args: &[&str], env: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_headstart"));
    command
        .args(args)
        .env_remove("HEADSTART_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = env {
        command.env("HEADSTART_TOKEN", token);
    }
    let child = command.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{args:?} still running after 20 s");
        }
    }
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` to `path` with permissions `mode`.
fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A CA and a server certificate from `headstart certs --out DIR [--name N]…`.
struct Certs {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

fn certs(out: &Path, names: &[&str]) -> Certs {
    let mut args = vec!["certs".to_string(), "--out".into(), s(out)];
    for name in names {
        args.extend(["--name".to_string(), name.to_string()]);
    }
    let out_run = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(out_run.status.success(), "{}", stderr(&out_run));
    let key = out.join("server.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    Certs {
        ca: out.join("ca.pem"),
        cert: out.join("server.pem"),
        key,
    }
}

/// A secured server's files: its token file (one push and one admin token), a private file
/// for each client token, and its certificates.
struct Secrets {
    tokens: PathBuf,
    push: PathBuf,
    admin: PathBuf,
    wrong: PathBuf,
    certs: Certs,
}

impl Secrets {
    fn new(dir: &Path) -> Secrets {
        let file = |name: &str, text: String| {
            let path = dir.join(name);
            write_mode(&path, &text, 0o600);
            path
        };
        Secrets {
            tokens: file(
                "tokens",
                format!("# the feed's tokens\npush {PUSH_TOKEN}\n\nadmin {ADMIN_TOKEN}\n"),
            ),
            push: file("push.token", format!("push {PUSH_TOKEN}\n")),
            admin: file("admin.token", format!("{ADMIN_TOKEN}\n")),
            wrong: file("wrong.token", format!("admin {WRONG_TOKEN}\n")),
            certs: certs(&dir.join("certs"), &[]),
        }
    }
}

/// How the server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Plaintext, no tokens: everyone is admin (the flows of tests/server.rs).
    Plain,
    /// Plaintext with tokens.
    Tokens,
    /// TLS with tokens.
    TlsTokens,
}

/// An in-process server and the options of its clients.
struct Setup {
    server: Server,
    address: Address,
    state: PathBuf,
    /// The files behind the server (none in `Plain`).
    secrets: Option<Secrets>,
    /// The CA clients trust (`TlsTokens` only).
    tls: Option<Arc<rustls::ClientConfig>>,
}

fn start(mode: Mode, dir: &Path, tweak: impl FnOnce(&mut ServerConfig)) -> Setup {
    std::fs::create_dir_all(dir).unwrap();
    let state = dir.join("state.hs");
    let mut config = ServerConfig::new(state.clone());
    let secrets = (mode != Mode::Plain).then(|| Secrets::new(dir));
    let mut tls = None;
    if let Some(secrets) = &secrets {
        config.tokens = Some(Tokens::load(&secrets.tokens).unwrap());
        if mode == Mode::TlsTokens {
            config.tls = Some(tls::server_config(&secrets.certs.cert, &secrets.certs.key).unwrap());
            tls = Some(tls::client_config(&secrets.certs.ca).unwrap());
        }
    }
    tweak(&mut config);
    let server = Server::start(&"127.0.0.1:0".parse().unwrap(), Stats::new(D), config).unwrap();
    Setup {
        address: server.address(),
        server,
        state,
        secrets,
        tls,
    }
}

impl Setup {
    /// Client options with `token` (ignored in `Plain`) over this server's transport.
    fn options(&self, token: Option<&str>) -> ClientOptions {
        ClientOptions {
            timeout: Some(Duration::from_secs(20)),
            token: token
                .filter(|_| self.secrets.is_some())
                .map(|t| Token::new(t).unwrap()),
            tls: self.tls.clone(),
            reconnect: None,
        }
    }
    fn push_options(&self) -> ClientOptions {
        self.options(Some(PUSH_TOKEN))
    }
    fn admin_options(&self) -> ClientOptions {
        self.options(Some(ADMIN_TOKEN))
    }
    fn connect(&self, options: &ClientOptions) -> Client {
        let client = Client::connect_with(&self.address, options).unwrap();
        assert_eq!(client.is_tls(), self.tls.is_some());
        client
    }
    /// The state's samples, asked by an admin client on a fresh connection.
    fn samples(&self) -> u64 {
        let mut admin = self.connect(&self.admin_options());
        admin.stats().unwrap()["samples"].as_u64().unwrap()
    }
}

fn batches(seed: u64, count: usize, rows: usize) -> Vec<Batch> {
    common::labelled_batches(seed, count, rows, D)
}

fn reference(batches: &[Batch]) -> Stats {
    common::stats_of(D, batches)
}

/// The error of a call the server refused with a fatal `code`; its text and debug form hold
/// no token.
fn refused<T>(result: Result<T, ClientError>, code: ErrorCode) -> String {
    let Err(error) = result else {
        panic!("expected a fatal {code:?} error, the call succeeded")
    };
    let text = error.to_string();
    no_token(&text);
    no_token(&format!("{error:?}"));
    match error {
        ClientError::Server {
            code: c, fatal: true, ..
        } if c == code => text,
        other => panic!("expected a fatal {code:?} error, got {other:?}"),
    }
}

/// A server's plaintext refusal (`code`) as a TLS client sees it: its message. Anything else
/// fails the test.
fn tls_refusal<T>(result: Result<T, ClientError>, code: ErrorCode) -> Option<String> {
    Some(refused(result, code))
}

// ---------------------------------------------------------------- raw frames

/// A connection that sends raw frames, over TLS when `tls` is given.
struct Raw {
    conn: Conn,
}

impl Raw {
    fn connect(address: &Address, tls: Option<&Arc<rustls::ClientConfig>>) -> Raw {
        let conn = Conn::connect(address).unwrap();
        conn.set_timeouts(Some(Duration::from_secs(10))).unwrap();
        let conn = match tls {
            Some(config) => Conn::Tls(Box::new(
                TlsStream::connect(Arc::clone(config), tls::server_name(address).unwrap(), conn).unwrap(),
            )),
            None => conn,
        };
        Raw { conn }
    }
    fn send(&mut self, bytes: &[u8]) {
        let _ = self.conn.write_all(bytes);
    }
    /// The next reply, or `None` once the server closed the connection.
    fn reply(&mut self) -> Option<Reply> {
        let raw = read_frame(&mut self.conn, 1 << 20).ok()?;
        Some(Reply::decode(raw.kind, &raw.body).unwrap())
    }
    /// The next reply, which must be a fatal error: its code and message (without a token).
    /// Nothing follows it.
    fn fatal(&mut self) -> (ErrorCode, String) {
        match self.reply() {
            Some(Reply::Error {
                code,
                fatal: true,
                message,
            }) => {
                no_token(&message);
                assert_eq!(self.reply(), None, "a reply after a fatal error");
                (code, message)
            }
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }
}

/// HELLO and AUTH with `token` (empty: none).
fn hello_auth(token: &str) -> Vec<u8> {
    let mut bytes = encode_request(&Request::Hello {
        version: PROTOCOL_VERSION,
    });
    bytes.extend(encode_request(&Request::Auth(Secret(token.as_bytes().to_vec()))));
    bytes
}

fn open_frame() -> Vec<u8> {
    encode_request(&Request::Open {
        dim: D as u64,
        dtype: Dtype::F32,
    })
}

fn batch_frame(seq: u64, batch: &Batch) -> Vec<u8> {
    encode_request(&Request::Batch {
        seq,
        batch: batch.clone(),
    })
}

// ---------------------------------------------------------------- tokens

#[test]
fn tokens_decide_who_connects_and_a_push_token_may_only_push() {
    for mode in [Mode::Tokens, Mode::TlsTokens] {
        let dir = tempfile::tempdir().unwrap();
        let setup = start(mode, dir.path(), |_| {});
        let good = batches(1, 6, 4);
        let mut admin = setup.connect(&setup.admin_options());
        assert_eq!(admin.role(), Role::Admin, "{mode:?}");
        admin.open(D, Dtype::F32).unwrap();
        for b in &good[..3] {
            admin.push(b).unwrap();
        }
        admin.flush().unwrap();
        let mut expected = 12u64;
        let mut unchanged = |expected: u64, after: &str| {
            let stats = admin.stats().unwrap();
            assert_eq!(stats["samples"], expected, "{mode:?}: after {after}");
            assert!(stats["classes"].get("99").is_none(), "{mode:?}: after {after}");
            assert_eq!(stats["tasks_begun"], 0, "{mode:?}: after {after}");
        };

        // A wrong token and none at all.
        let message = refused(
            Client::connect_with(&setup.address, &setup.options(Some(WRONG_TOKEN))),
            ErrorCode::Unauthorized,
        );
        assert!(message.contains("wrong token"), "{message}");
        unchanged(expected, "a wrong token");
        let message = refused(
            Client::connect_with(&setup.address, &setup.options(None)),
            ErrorCode::Unauthorized,
        );
        assert!(
            message.contains("requires a token") && message.contains("--token-file"),
            "{message}"
        );
        unchanged(expected, "no token");

        // The push token pushes…
        let mut pusher = setup.connect(&setup.push_options());
        assert_eq!(pusher.role(), Role::Push);
        assert_eq!((pusher.server_dim(), pusher.samples_at_connect()), (D, 12));
        assert_eq!(pusher.open(D, Dtype::F32).unwrap(), 12);
        for b in &good[3..] {
            pusher.push(b).unwrap();
        }
        pusher.flush().unwrap();
        expected += 12;
        unchanged(expected, "the push token's batches");
        // …and nothing else but SYNC (a resumable session needs it to know what is durable;
        // tested below): each admin request is refused and closes the connection, with or
        // without a session open.
        type Call = fn(&mut Client) -> Result<(), ClientError>;
        let calls: [(&str, Call); 3] = [
            ("SOLVE", |c| c.solve(&SolveRequest::default()).map(drop)),
            ("STATS", |c| c.stats().map(drop)),
            ("BEGIN_TASK", |c| c.begin_task()),
        ];
        for (name, call) in calls {
            let mut c = setup.connect(&setup.push_options());
            let message = refused(call(&mut c), ErrorCode::Forbidden);
            assert!(
                message.contains(name) && message.contains("`push`") && message.contains("admin"),
                "{message}"
            );
            assert!(
                c.open(D, Dtype::F32).is_err(),
                "{name}: the connection stays open"
            );
            unchanged(expected, name);
        }
        refused(pusher.solve(&SolveRequest::default()), ErrorCode::Forbidden);
        assert!(pusher.push(&good[0]).and_then(|()| pusher.flush()).is_err());
        drop(pusher);
        unchanged(expected, "SOLVE in a session");

        // Batches pipelined behind a refused AUTH are never applied.
        let tagged = Batch::new(vec![0.5f32; 2 * D], vec![99, 99]);
        for token in [WRONG_TOKEN, ""] {
            let mut raw = Raw::connect(&setup.address, setup.tls.as_ref());
            let mut bytes = hello_auth(token);
            bytes.extend(open_frame());
            for seq in 1..=3 {
                bytes.extend(batch_frame(seq, &tagged));
            }
            raw.send(&bytes);
            assert_eq!(
                raw.reply(),
                Some(Reply::Welcome {
                    version: PROTOCOL_VERSION,
                    token_required: true
                })
            );
            assert_eq!(raw.fatal().0, ErrorCode::Unauthorized, "token {token:?}");
            unchanged(expected, "a refused AUTH with batches behind it");
        }
        // Behind a push token's admin request: the batch before it is applied, none after.
        let before = Batch::new(vec![0.25f32; 2 * D], vec![7, 7]);
        for request in [Request::Solve("{}".into()), Request::Stats, Request::BeginTask] {
            let mut raw = Raw::connect(&setup.address, setup.tls.as_ref());
            let mut bytes = hello_auth(PUSH_TOKEN);
            bytes.extend(open_frame());
            bytes.extend(batch_frame(1, &before));
            bytes.extend(encode_request(&request));
            bytes.extend(batch_frame(2, &tagged));
            bytes.extend(batch_frame(3, &tagged));
            raw.send(&bytes);
            assert!(matches!(raw.reply(), Some(Reply::Welcome { .. })));
            assert_eq!(
                raw.reply(),
                Some(Reply::Ready {
                    role: Role::Push,
                    dim: D as u64,
                    samples: expected
                })
            );
            assert_eq!(raw.reply(), Some(Reply::Opened { samples: expected }));
            assert_eq!(raw.reply(), Some(Reply::Ack(1)));
            let (code, message) = raw.fatal();
            assert_eq!(code, ErrorCode::Forbidden, "{request:?}: {message}");
            expected += 2;
            unchanged(expected, &format!("a refused {request:?} with batches behind it"));
        }
        drop(admin);

        // Nothing wrote a checkpoint yet: the file holds the empty state of the start. A push
        // token may sync.
        assert_eq!(snapshot::read(&setup.state).unwrap().samples(), 0);
        assert_eq!(setup.connect(&setup.push_options()).sync().unwrap(), expected);
        assert_eq!(snapshot::read(&setup.state).unwrap().samples(), expected);
        assert_eq!(setup.server.checkpoint().unwrap(), expected);
        let state = setup.server.shutdown().unwrap();
        assert_eq!(state.samples(), expected);
        assert_eq!(state.class_count(7), 6);
        assert_eq!(state.class_count(99), 0);
        assert_eq!(state.tasks_begun(), 0);
        let saved = snapshot::read(&setup.state).unwrap();
        assert_eq!(saved.samples(), expected);
    }
}

/// A fake server that asks for a token or not, and hands over the AUTH frame's body.
fn fake_server(token_required: bool) -> (Address, std::sync::mpsc::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string().parse().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let reply = |s: &mut TcpStream, reply: Reply| {
            let (kind, body) = reply.encode();
            write_frame(s, kind, &body).unwrap();
        };
        assert_eq!(read_frame(&mut s, 1 << 20).unwrap().kind, kind::HELLO);
        reply(
            &mut s,
            Reply::Welcome {
                version: PROTOCOL_VERSION,
                token_required,
            },
        );
        let auth = read_frame(&mut s, 1 << 20).unwrap();
        assert_eq!(auth.kind, kind::AUTH);
        tx.send(auth.body).unwrap();
        reply(
            &mut s,
            Reply::Ready {
                role: Role::Admin,
                dim: D as u64,
                samples: 0,
            },
        );
        // Until the client closes.
        let _ = s.read_to_end(&mut Vec::new());
    });
    (address, rx)
}

#[test]
fn a_token_goes_only_to_a_server_that_asks_for_one() {
    let options = ClientOptions {
        token: Some(Token::new(ADMIN_TOKEN).unwrap()),
        ..ClientOptions::default()
    };
    assert!(!format!("{options:?}").contains(&ADMIN_TOKEN[..10]));
    for asks in [false, true] {
        let (address, auth) = fake_server(asks);
        let client = Client::connect_with(&address, &options).unwrap();
        assert_eq!(client.role(), Role::Admin);
        let sent = auth.recv_timeout(Duration::from_secs(10)).unwrap();
        let expected: &[u8] = if asks { ADMIN_TOKEN.as_bytes() } else { b"" };
        assert_eq!(sent, expected, "server asks for a token: {asks}");
    }
}

#[test]
fn the_server_and_the_command_line_clients_never_print_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::new(dir.path());
    let (x, y) = labelled_data(21, 200, D, &[1, 4, 6]);
    let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
    let (x_path, y_path) = (dir.path().join("x.npy"), dir.path().join("y.npy"));
    headstart::ingest::npy::write_f32(&x_path, &x32, 200, D).unwrap();
    headstart::ingest::npy::write_i64(&y_path, &y).unwrap();
    let state = dir.path().join("s.hs");
    let log = dir.path().join("serve.log");
    // Not --quiet: the server logs every refused connection.
    let mut child = Command::new(env!("CARGO_BIN_EXE_headstart"))
        .args(["serve", "--listen", "127.0.0.1:0", "--dim", &D.to_string()])
        .args(["--state", &s(&state), "--token-file", &s(&secrets.tokens)])
        .args([
            "--tls-cert",
            &s(&secrets.certs.cert),
            "--tls-key",
            &s(&secrets.certs.key),
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut stdout_lines = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout_lines.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("listening on ") && line.contains("TLS, 1 push and 1 admin tokens"),
        "{line:?}"
    );
    let addr = line.split_whitespace().nth(2).unwrap().to_string();
    let address: Address = addr.parse().unwrap();

    // Refusals the server logs: wrong token, no token, a push token asking for SOLVE, a
    // plaintext client.
    let ca = secrets.certs.ca.clone();
    let options = |token: Option<&str>| {
        ClientOptions {
            token: token.map(|t| Token::new(t).unwrap()),
            ..ClientOptions::default()
        }
        .with_tls_ca(&ca)
        .unwrap()
    };
    refused(
        Client::connect_with(&address, &options(Some(WRONG_TOKEN))),
        ErrorCode::Unauthorized,
    );
    refused(
        Client::connect_with(&address, &options(None)),
        ErrorCode::Unauthorized,
    );
    let mut pusher = Client::connect_with(&address, &options(Some(PUSH_TOKEN))).unwrap();
    refused(pusher.solve(&SolveRequest::default()), ErrorCode::Forbidden);
    let plaintext = ClientOptions {
        token: Some(Token::new(ADMIN_TOKEN).unwrap()),
        ..ClientOptions::default()
    };
    refused(Client::connect_with(&address, &plaintext), ErrorCode::Transport);

    // The command-line clients: their refusals print no token either.
    let ca = s(&secrets.certs.ca);
    let client = |command: &str, token_file: Option<&Path>, env: Option<&str>| {
        let mut args = vec![command.to_string(), "--connect".into(), addr.clone()];
        args.extend(["--tls-ca".to_string(), ca.clone()]);
        if let Some(file) = token_file {
            args.extend(["--token-file".to_string(), s(file)]);
        }
        if command == "push" {
            args.extend(["--features", &s(&x_path), "--labels", &s(&y_path)].map(String::from));
        }
        if command == "solve" {
            args.extend(["--out".to_string(), s(&dir.path().join("h.safetensors"))]);
        }
        let out = run(&args.iter().map(String::as_str).collect::<Vec<_>>(), env);
        no_token(&stdout(&out));
        no_token(&stderr(&out));
        out
    };
    let out = client("push", Some(&secrets.push), None);
    assert!(
        out.status.success() && stdout(&out).contains("pushed 200 samples"),
        "{}",
        stderr(&out)
    );
    let out = client("sync", Some(&secrets.wrong), None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("Unauthorized"), "{}", stderr(&out));
    let out = client("sync", Some(&secrets.push), None);
    assert!(out.status.success(), "a push token may sync: {}", stderr(&out));
    let out = client("sync", None, None);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("requires a token"), "{}", stderr(&out));
    let out = client("sync", None, Some(ADMIN_TOKEN));
    assert!(
        out.status.success() && stdout(&out).contains("holds 200 samples"),
        "{}",
        stderr(&out)
    );
    let out = client("solve", Some(&secrets.admin), None);
    assert!(out.status.success(), "{}", stderr(&out));
    // Without --tls-ca: a clear refusal.
    let out = run(
        &["sync", "--connect", &addr, "--token-file", &s(&secrets.admin)],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("TLS"), "{}", stderr(&out));
    no_token(&stderr(&out));
    drop(pusher);

    send_signal(&child, "-TERM");
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let mut rest = String::new();
    stdout_lines.read_to_string(&mut rest).unwrap();
    no_token(&rest);
    let log = std::fs::read_to_string(&log).unwrap();
    // The refusals were logged (so the check below means something), without a token.
    for words in [
        "wrong token",
        "requires a token",
        "`push`",
        "TLS connections only",
    ] {
        assert!(log.contains(words), "no log line with {words:?}: {log}");
    }
    no_token(&log);
    assert_eq!(snapshot::read(&state).unwrap().samples(), 200);
}

#[test]
fn token_files_others_may_read_are_refused_without_printing_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::new(dir.path());
    // A server without tokens: a client whose token file were accepted would succeed.
    let open = start(Mode::Plain, &dir.path().join("open"), |_| {});
    let open_addr = open.address.to_string();
    let admin_file = s(&secrets.admin);
    let sync_with_admin_file = || {
        run(
            &["sync", "--connect", &open_addr, "--token-file", &admin_file],
            None,
        )
    };
    for mode in [0o644, 0o640] {
        let state = dir.path().join(format!("s{mode:o}.hs"));
        std::fs::set_permissions(&secrets.tokens, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = run(
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--state",
                &s(&state),
                "--dim",
                "6",
                "--token-file",
                &s(&secrets.tokens),
            ],
            None,
        );
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "serve started with a {mode:04o} token file"
        );
        assert!(!stdout(&out).contains("listening"), "{}", stdout(&out));
        assert!(
            err.contains(&s(&secrets.tokens))
                && err.contains("permissions")
                && err.contains(&format!("{mode:04o}"))
                && err.contains("chmod 600"),
            "{err}"
        );
        no_token(&err);
        no_token(&stdout(&out));
        assert!(!state.exists(), "a refused server wrote its state");

        std::fs::set_permissions(&secrets.admin, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = sync_with_admin_file();
        let err = stderr(&out);
        assert!(!out.status.success(), "a client used a {mode:04o} token file");
        assert!(
            err.contains(&s(&secrets.admin))
                && err.contains("permissions")
                && err.contains(&format!("{mode:04o}")),
            "{err}"
        );
        no_token(&err);
    }
    // The library refuses them too, naming the file.
    for path in [&secrets.tokens, &secrets.admin] {
        let e = Tokens::load(path).unwrap_err().to_string();
        assert!(e.contains(&s(path)) && e.contains("0640"), "{e}");
        no_token(&e);
    }
    // Private again, both work.
    std::fs::set_permissions(&secrets.admin, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = sync_with_admin_file();
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::set_permissions(&secrets.tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(Tokens::load(&secrets.tokens).unwrap().counts(), (1, 1));
}

/// An IPv4 address of this machine that is not loopback, if it has one. Nothing is sent: a
/// UDP socket's `connect` only picks the route (192.0.2.1 is a documentation address), and
/// the address found is checked by binding to it.
fn non_loopback_address() -> Option<IpAddr> {
    let by_route = UdpSocket::bind("0.0.0.0:0")
        .and_then(|u| u.connect("192.0.2.1:9").and_then(|()| u.local_addr()))
        .ok()
        .map(|a| a.ip());
    let listed = || {
        let out = Command::new("hostname").arg("-I").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|w| w.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv4() && !ip.is_loopback())
    };
    let ip = by_route
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .or_else(listed)?;
    TcpListener::bind((ip, 0)).ok().map(|_| ip)
}

#[test]
fn serve_refuses_an_address_that_is_not_loopback_without_a_token() {
    let Some(ip) = non_loopback_address() else {
        println!("skipped: this machine has no IPv4 address other than loopback");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::new(dir.path());
    let state = dir.path().join("s.hs");
    let listen = format!("{ip}:0");
    let base = ["serve", "--listen", &listen, "--state", &s(&state), "--dim", "6"];
    let out = run(&base, None);
    let err = stderr(&out);
    assert!(!out.status.success(), "serve listened on {ip} without a token");
    assert!(
        err.contains("not a loopback address")
            && err.contains("--token-file")
            && err.contains("--insecure")
            && err.contains(&ip.to_string()),
        "{err}"
    );
    assert!(!state.exists());

    // With --insecure, or with tokens, it starts; stopped at once with SIGTERM.
    let tokens = s(&secrets.tokens);
    let (cert, key) = (s(&secrets.certs.cert), s(&secrets.certs.key));
    for (extra, warned) in [
        (vec!["--insecure"], true),
        (vec!["--token-file", &tokens], true),
        (
            vec!["--token-file", &tokens, "--tls-cert", &cert, "--tls-key", &key],
            false,
        ),
    ] {
        let (child, line) = spawn_first_line(&[&base[..], &extra].concat(), Stdio::piped());
        send_signal(&child, "-TERM");
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert!(
            line.starts_with(&format!("listening on {ip}:")),
            "{extra:?}: {line:?} {err}"
        );
        assert_eq!(out.status.code(), Some(0), "{extra:?}: {err}");
        assert_eq!(err.contains("travel unencrypted"), warned, "{extra:?}: {err}");
        no_token(&err);
    }
}

// ---------------------------------------------------------------- TLS

#[test]
fn a_client_of_the_other_transport_gets_a_clear_error_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let secured = start(Mode::TlsTokens, &dir.path().join("tls"), |_| {});
    let plain = start(Mode::Tokens, &dir.path().join("plain"), |_| {});
    let quick = |address: Address, options: ClientOptions| {
        let (result, elapsed) = within(Duration::from_secs(15), move || {
            let started = Instant::now();
            let result = Client::connect_with(&address, &options).map(drop);
            (result, started.elapsed())
        });
        assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
        result
    };
    // Plaintext against TLS.
    let plaintext = ClientOptions {
        tls: None,
        ..secured.admin_options()
    };
    let message = refused(quick(secured.address.clone(), plaintext), ErrorCode::Transport);
    assert!(
        message.contains("TLS connections only") && message.contains("--tls-ca"),
        "{message}"
    );
    let mut raw = Raw::connect(&secured.address, None);
    raw.send(&hello_auth(ADMIN_TOKEN));
    assert_eq!(raw.fatal().0, ErrorCode::Transport);
    // TLS against plaintext.
    let tls_client = ClientOptions {
        tls: secured.tls.clone(),
        ..plain.admin_options()
    };
    if let Some(message) = tls_refusal(quick(plain.address.clone(), tls_client), ErrorCode::Transport) {
        assert!(message.contains("does not use TLS"), "{message}");
    }
    // Both keep serving their own clients.
    for setup in [&secured, &plain] {
        let mut c = setup.connect(&setup.admin_options());
        c.open(D, Dtype::F32).unwrap();
        c.push(&batches(2, 1, 3)[0]).unwrap();
        assert_eq!(c.sync().unwrap(), 3);
    }
}

#[test]
fn a_certificate_from_another_ca_is_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let setup = start(Mode::TlsTokens, dir.path(), |_| {});
    let other = certs(&dir.path().join("other"), &[]);
    let untrusting = ClientOptions {
        tls: Some(tls::client_config(&other.ca).unwrap()),
        ..setup.admin_options()
    };
    let tls_failure = |address: Address, options: ClientOptions| {
        let error = within(Duration::from_secs(15), move || {
            Client::connect_with(&address, &options).map(drop).unwrap_err()
        });
        let text = error.to_string();
        no_token(&text);
        match error {
            ClientError::Tls { reason, .. } => assert!(reason.contains("certificate"), "{reason}"),
            other => panic!("expected a TLS error, got {other:?}"),
        }
        text
    };
    for _ in 0..3 {
        let text = tls_failure(setup.address.clone(), untrusting.clone());
        assert!(text.contains(&setup.address.to_string()), "{text}");
        // Good clients are served between the refusals.
        assert_eq!(setup.samples(), 0);
    }
    let mut c = setup.connect(&setup.push_options());
    c.open(D, Dtype::F32).unwrap();
    for b in &batches(3, 4, 5) {
        c.push(b).unwrap();
    }
    c.flush().unwrap();
    assert_eq!(setup.samples(), 20);

    // A certificate of the right CA for another name.
    let named = certs(&dir.path().join("named"), &["feed.invalid"]);
    let mut config = ServerConfig::new(dir.path().join("named.hs"));
    config.tls = Some(tls::server_config(&named.cert, &named.key).unwrap());
    let elsewhere = Server::start(&"127.0.0.1:0".parse().unwrap(), Stats::new(D), config).unwrap();
    let options = ClientOptions::default().with_tls_ca(&named.ca).unwrap();
    tls_failure(elsewhere.address(), options);
    // A missing CA file is named.
    let missing = dir.path().join("missing.pem");
    let e = tls::client_config(&missing).unwrap_err().to_string();
    assert!(e.contains(&s(&missing)), "{e}");
}

#[test]
fn a_tls_server_refuses_surplus_connections_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let setup = start(Mode::TlsTokens, dir.path(), |c| c.max_connections = 1);
    let mut held = setup.connect(&setup.admin_options());
    assert_eq!(held.stats().unwrap()["connections"], 1);
    let refusal = tls_refusal(
        Client::connect_with(&setup.address, &setup.admin_options()),
        ErrorCode::Unavailable,
    );
    if let Some(message) = refusal {
        assert!(message.contains("busy"), "{message}");
    }
    drop(held);
    // The slot is free again once the held connection is gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut c = loop {
        match Client::connect_with(&setup.address, &setup.admin_options()) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(c.stats().unwrap()["connections"], 1);
}

/// A TLS client that reaches a plaintext server, or a TLS server with no free connection,
/// reads the server's plaintext ERROR frame and reports its code, every time (rustls may
/// fail on the frame's first bytes; the client then reads the rest of the frame).
#[test]
fn a_tls_client_always_reads_the_servers_plaintext_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let secured = start(Mode::TlsTokens, &dir.path().join("tls"), |c| {
        c.max_connections = 1
    });
    let plain = start(Mode::Tokens, &dir.path().join("plain"), |_| {});
    let _held = secured.connect(&secured.admin_options());
    let tls_client = ClientOptions {
        tls: secured.tls.clone(),
        ..plain.admin_options()
    };
    let mut wrong = BTreeMap::new();
    for _ in 0..300 {
        for (address, code) in [
            (&plain.address, ErrorCode::Transport),
            (&secured.address, ErrorCode::Unavailable),
        ] {
            match Client::connect_with(address, &tls_client) {
                Err(ClientError::Server { code: c, .. }) if c == code => {}
                Err(other) => *wrong.entry(other.to_string()).or_insert(0) += 1,
                Ok(_) => panic!("{address}: connected"),
            }
        }
    }
    assert!(wrong.is_empty(), "600 attempts: {wrong:#?}");
}

// ---------------------------------------------------------------- the flows of tests/server.rs

#[test]
fn concurrent_push_clients_and_an_admin_solve_match_the_library() {
    for mode in [Mode::Plain, Mode::TlsTokens] {
        let dir = tempfile::tempdir().unwrap();
        let setup = start(mode, dir.path(), |_| {});
        let all: Vec<Vec<Batch>> = (0..4).map(|k| batches(10 + k, 25, 16)).collect();
        std::thread::scope(|s| {
            for mine in &all {
                let (address, options) = (setup.address.clone(), setup.push_options());
                s.spawn(move || {
                    let mut c = Client::connect_with(&address, &options).unwrap();
                    assert_eq!(c.is_tls(), mode == Mode::TlsTokens);
                    let role = if mode == Mode::Plain {
                        Role::Admin
                    } else {
                        Role::Push
                    };
                    assert_eq!(c.role(), role);
                    c.open(D, Dtype::F32).unwrap();
                    for b in mine {
                        c.push(b).unwrap();
                    }
                    c.flush().unwrap();
                });
            }
        });
        let expected = reference(&all.concat());
        let mut c = setup.connect(&setup.admin_options());
        assert_eq!(expected.samples(), 4 * 25 * 16);
        check_remote_solve(&mut c, &expected, &format!("{mode:?}"));
        assert_eq!(snapshot::read(&setup.state).unwrap().samples(), 1600);
        drop(c);
        let final_state = setup.server.shutdown().unwrap();
        assert_eq!(final_state.class_count(3), expected.class_count(3));
    }
}

#[test]
fn a_window_with_a_bad_batch_is_acknowledged_up_to_it_and_nothing_after() {
    for mode in [Mode::Plain, Mode::TlsTokens] {
        let dir = tempfile::tempdir().unwrap();
        let setup = start(mode, dir.path(), |c| c.limits.max_rows = 9);
        let good = batches(40, 12, 9);
        let mut bad = good[7].clone();
        if let Features::F32(v) = &mut bad.features {
            v[3 * D + 1] = f32::NAN;
        }
        // Every frame goes out before any reply is read: 6 batches, a STATS, 1 batch, a
        // SOLVE, the NaN batch, then 4 batches that must never be applied.
        let mut bytes = hello_auth(if mode == Mode::Plain { "" } else { ADMIN_TOKEN });
        bytes.extend(open_frame());
        for (i, b) in good[..6].iter().enumerate() {
            bytes.extend(batch_frame(i as u64 + 1, b));
        }
        bytes.extend(encode_request(&Request::Stats));
        bytes.extend(batch_frame(7, &good[6]));
        bytes.extend(encode_request(&Request::Solve("{}".into())));
        bytes.extend(batch_frame(8, &bad));
        for (i, b) in good[8..].iter().enumerate() {
            bytes.extend(batch_frame(i as u64 + 9, b));
        }
        let mut c = Raw::connect(&setup.address, setup.tls.as_ref());
        c.send(&bytes);
        assert!(matches!(c.reply(), Some(Reply::Welcome { .. })));
        assert!(matches!(
            c.reply(),
            Some(Reply::Ready {
                role: Role::Admin,
                ..
            })
        ));
        assert_eq!(c.reply(), Some(Reply::Opened { samples: 0 }));
        for s in 1..=6 {
            assert_eq!(c.reply(), Some(Reply::Ack(s)), "{mode:?}");
        }
        expect_stats_ack_head(|| c.reply(), 6 * 9, 7, &reference(&good[..7]));
        let (code, message) = c.fatal();
        assert_eq!(code, ErrorCode::BadBatch, "{message}");
        assert!(
            message.contains("row 3") && message.contains("column 1"),
            "{message}"
        );
        assert_eq!(setup.samples(), 7 * 9, "{mode:?}");

        // The client's window: a batch only the server refuses (too many rows) stops it
        // exactly there.
        let mut c = setup.connect(&setup.push_options());
        c.set_window(8);
        c.open(D, Dtype::F32).unwrap();
        let big = batches(42, 1, 10).remove(0);
        expect_window_stops_at_refused(&mut c, &good, &big);
        drop(c);
        let state = setup.server.shutdown().unwrap();
        let mut expected = reference(&good[..7]);
        for b in &good[..4] {
            expected.update_batch(b).unwrap();
        }
        assert_eq!(state.samples(), expected.samples());
        for id in expected.classes() {
            assert_eq!(state.class_count(id), expected.class_count(id), "class {id}");
        }
    }
}

#[test]
fn sync_makes_every_acknowledged_batch_durable() {
    for mode in [Mode::Plain, Mode::TlsTokens] {
        let dir = tempfile::tempdir().unwrap();
        let setup = start(mode, dir.path(), |_| {});
        // Small batches, and one of 3000 rows (96 KiB: several TLS records).
        let mut sent = batches(50, 10, 16);
        sent.extend(batches(51, 1, 3000));
        sent.extend(batches(52, 5, 7));
        let mut pusher = setup.connect(&setup.push_options());
        pusher.open(D, Dtype::F32).unwrap();
        for b in &sent {
            pusher.push(b).unwrap();
        }
        pusher.flush().unwrap();
        let total = 10 * 16 + 3000 + 5 * 7;
        let mut admin = setup.connect(&setup.admin_options());
        assert_eq!(admin.sync().unwrap(), total, "{mode:?}");
        let saved = snapshot::read(&setup.state).unwrap();
        let expected = reference(&sent);
        assert_eq!(saved.samples(), total);
        for id in expected.classes() {
            assert_eq!(saved.class_count(id), expected.class_count(id), "class {id}");
        }
        assert!(rel_err(&saved.sum(Scope::All).1, &expected.sum(Scope::All).1) < SUM_ORDER_REL_TOL);
        // The admin's own batches, unacknowledged when SYNC goes out, are covered too.
        admin.open(D, Dtype::F32).unwrap();
        admin.set_window(64);
        let more = batches(53, 20, 3);
        for b in &more {
            admin.push(b).unwrap();
        }
        assert_eq!(admin.sync().unwrap(), total + 60);
        assert_eq!(snapshot::read(&setup.state).unwrap().samples(), total + 60);
    }
}

/// As `after_sigkill_the_state_holds_every_synced_batch_and_only_whole_batches` in
/// tests/server.rs, over TLS with tokens: `headstart serve --token-file --tls-cert`, killed
/// with SIGKILL at random moments while push clients stream unique-class batches and an
/// admin client syncs. After each restart the state holds every batch acknowledged before the
/// last completed SYNC, and whole batches only ([`common::crash::crash_rounds`]).
#[test]
fn after_sigkill_over_tls_with_tokens_the_state_holds_every_synced_batch() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::new(dir.path());
    let state = dir.path().join("s.hs");
    let (tokens, cert, key) = (s(&secrets.tokens), s(&secrets.certs.cert), s(&secrets.certs.key));
    let extra = [
        "--checkpoint-every",
        "0.05",
        "--token-file",
        &tokens,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let options = |token: &str| {
        ClientOptions {
            token: Some(Token::new(token).unwrap()),
            timeout: Some(Duration::from_secs(20)),
            ..ClientOptions::default()
        }
        .with_tls_ca(&secrets.certs.ca)
        .unwrap()
    };
    let (admin, push) = (options(ADMIN_TOKEN), options(PUSH_TOKEN));
    assert!(admin.tls.is_some() && push.tls.is_some());
    // Client 0 pushes and syncs (admin); the others only push. Each is checked to use TLS.
    let crashed = crash_rounds(
        &Crash {
            state: &state,
            dim: D,
            serve_args: &extra,
            rounds: 4,
            seed: 2025,
            kill_within_ms: 200,
        },
        |k| if k == 0 { admin.clone() } else { push.clone() },
    );
    for (round, &synced) in crashed.synced_per_round.iter().enumerate() {
        assert!(synced > 0, "round {round}: no batch synced");
    }
    // The restarted server serves the state it left, to an admin over TLS only.
    let serve = Serve::start(&state, D, &extra);
    let mut c = Client::connect_with(&serve.address, &admin).unwrap();
    let samples = snapshot::read(&state).unwrap().samples();
    assert_eq!(c.stats().unwrap()["samples"], samples);
}
