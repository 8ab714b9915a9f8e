//! TLS for the stream feed (rustls with ring): configurations from PEM files, and a stream
//! whose read and write halves work from two threads at once.
//!
//! The server's connections read requests on one thread and write replies on another, so a
//! TLS stream here is shared: the rustls session sits behind a mutex that is never held
//! across a blocking socket call. A reader takes bytes from the socket with no lock held and
//! then feeds them to the session; a writer encrypts under the lock and hands the records to
//! the socket in the order they were made.
//!
//! # Examples
//! ```no_run
//! use std::path::Path;
//! use headstart::net::tls;
//! let server = tls::server_config(Path::new("server.pem"), Path::new("server.key"))?;
//! let client = tls::client_config(Path::new("ca.pem"))?;
//! # Ok::<(), headstart::net::tls::TlsError>(())
//! ```

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::conn::Conn;

/// The first byte of every TLS connection (a handshake record); no request frame starts with
/// it, since a HELLO frame's length is 5.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// Why a certificate, key or CA file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the certificate and key (for example a key that does not match).
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "no PEM certificate (-----BEGIN CERTIFICATE-----) in the file",
        ));
    }
    Ok(certs)
}

/// A server configuration from a PEM certificate chain (the server's certificate first) and
/// its PEM private key. The key file must be private to its owner, like a token file.
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use std::os::unix::fs::PermissionsExt;
    let chain = certificates(cert)?;
    let mode = std::fs::metadata(key)
        .map_err(|e| file_error(key, e))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(file_error(
            key,
            format!(
                "permissions {mode:04o} let other users read or change the private key (chmod 600 {})",
                key.display()
            ),
        ));
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("no usable PEM private key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| TlsError::Config(format!("{} and {}: {e}", cert.display(), key.display())))?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts the CA certificates in a PEM file (and nothing else).
///
/// # Errors
/// [`TlsError`] naming the file.
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(ca)? {
        roots
            .add(cert)
            .map_err(|e| file_error(ca, format!("not a usable CA certificate: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a client checks the server's certificate against: the host of `HOST:PORT`
/// (an IP address or a DNS name), or `localhost` for a Unix socket.
///
/// # Errors
/// A message for a host that is no valid name.
pub fn server_name(address: &super::Address) -> Result<ServerName<'static>, String> {
    let host = match address {
        super::Address::Tcp(a) => a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h),
        super::Address::Unix(_) => "localhost",
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|e| format!("`{host}` cannot be checked against a certificate: {e}"))
}

struct Session {
    conn: rustls::Connection,
    /// Bytes read from the socket and not yet given to rustls.
    incoming: Vec<u8>,
    consumed: usize,
}

struct Shared {
    session: Mutex<Session>,
    /// Held while records go to the socket, taken before the session lock is let go, so
    /// records leave in the order they were made.
    sending: Mutex<()>,
}

/// A TLS stream over a TCP or Unix socket; [`try_clone`](TlsStream::try_clone) gives a second
/// handle (one thread reads, another writes).
pub struct TlsStream {
    shared: Arc<Shared>,
    socket: Conn,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TlsStream({:?})", self.socket)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("TLS: {e}"))
}

/// The records rustls wants sent.
fn pending(conn: &mut rustls::Connection) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out)?;
    }
    Ok(out)
}

/// A reader and writer that keeps the first bytes read, to tell what a peer that is not
/// speaking TLS sent instead.
struct Recording<'a> {
    socket: &'a mut Conn,
    seen: Vec<u8>,
}

impl Read for Recording<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.socket.read(buf)?;
        let keep = n.min(4096usize.saturating_sub(self.seen.len()));
        self.seen.extend_from_slice(&buf[..keep]);
        Ok(n)
    }
}

impl Write for Recording<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.socket.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.socket.flush()
    }
}

/// How a handshake failed: the error, and the first bytes the peer sent.
#[derive(Debug)]
pub struct HandshakeError {
    /// The I/O or TLS error.
    pub error: std::io::Error,
    /// Up to 4 KiB the peer sent (a plaintext server's ERROR frame, for example).
    pub received: Vec<u8>,
}

/// If `received` starts like a plaintext ERROR frame (the server does not speak TLS, or
/// refused the connection before the handshake), reads the rest of that frame, up to 4 KiB, so
/// that its message can be shown. Best effort: stops at the socket's timeout or its end.
fn complete_plaintext_error(socket: &mut Conn, received: &mut Vec<u8>) {
    if received.len() < 5 || received[4] != super::protocol::kind::ERROR {
        return;
    }
    let length = u32::from_le_bytes(received[..4].try_into().expect("4 bytes")) as usize;
    let want = (4 + length).min(4096);
    while received.len() < want {
        let mut chunk = vec![0u8; want - received.len()];
        match socket.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
        }
    }
}

impl TlsStream {
    /// Runs a client handshake on `socket`.
    ///
    /// # Errors
    /// [`HandshakeError`] with what the server sent, if anything.
    pub fn connect(
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
        socket: Conn,
    ) -> Result<TlsStream, HandshakeError> {
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| HandshakeError {
            error: invalid(e),
            received: Vec::new(),
        })?;
        TlsStream::handshake(conn.into(), socket, &[])
    }

    /// Runs a server handshake on `socket`, of which `first` was already read.
    ///
    /// # Errors
    /// [`HandshakeError`].
    pub fn accept(
        config: Arc<rustls::ServerConfig>,
        socket: Conn,
        first: &[u8],
    ) -> Result<TlsStream, HandshakeError> {
        let conn = rustls::ServerConnection::new(config).map_err(|e| HandshakeError {
            error: invalid(e),
            received: Vec::new(),
        })?;
        TlsStream::handshake(conn.into(), socket, first)
    }

    fn handshake(
        mut conn: rustls::Connection,
        mut socket: Conn,
        first: &[u8],
    ) -> Result<TlsStream, HandshakeError> {
        let mut io = Recording {
            socket: &mut socket,
            seen: first.to_vec(),
        };
        let result = (|| {
            let mut first = first;
            while !first.is_empty() {
                conn.read_tls(&mut first)?;
            }
            while conn.is_handshaking() {
                let (read, written) = conn.complete_io(&mut io)?;
                if read == 0 && written == 0 && conn.is_handshaking() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the TLS handshake",
                    ));
                }
            }
            while conn.wants_write() {
                conn.write_tls(&mut io)?;
            }
            Ok(())
        })();
        if let Err(error) = result {
            let mut received = std::mem::take(&mut io.seen);
            complete_plaintext_error(&mut socket, &mut received);
            return Err(HandshakeError { error, received });
        }
        Ok(TlsStream {
            shared: Arc::new(Shared {
                session: Mutex::new(Session {
                    conn,
                    incoming: Vec::new(),
                    consumed: 0,
                }),
                sending: Mutex::new(()),
            }),
            socket,
            buffer: Vec::new(),
        })
    }

    /// A second handle to the same stream.
    ///
    /// # Errors
    /// As the platform's `dup`.
    pub fn try_clone(&self) -> std::io::Result<TlsStream> {
        Ok(TlsStream {
            shared: Arc::clone(&self.shared),
            socket: self.socket.try_clone()?,
            buffer: Vec::new(),
        })
    }

    /// The socket underneath (for timeouts).
    pub(crate) fn socket(&self) -> &Conn {
        &self.socket
    }

    /// Sends close_notify (best effort) and closes the socket in both directions.
    pub fn shutdown(&self) {
        let mut session = lock(&self.shared.session);
        session.conn.send_close_notify();
        if let Ok(out) = pending(&mut session.conn) {
            let _sending = lock(&self.shared.sending);
            drop(session);
            let _ = self.socket.write_all_shared(&out);
        }
        self.socket.shutdown();
    }

    /// Sends `out` after the records made before it; `session` is released once the send
    /// order is fixed.
    fn send(&self, session: MutexGuard<'_, Session>, out: &[u8]) -> std::io::Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        let _sending = lock(&self.shared.sending);
        drop(session);
        self.socket.write_all_shared(out)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut session = lock(&self.shared.session);
            match session.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                // The peer closed without close_notify. Frames carry their own lengths, so a
                // cut inside a frame is still an error; between frames it is an end of stream.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if session.consumed < session.incoming.len() {
                let Session {
                    conn,
                    incoming,
                    consumed,
                } = &mut *session;
                let mut rest = &incoming[*consumed..];
                let fed = conn.read_tls(&mut rest)?;
                if fed == 0 {
                    return Err(invalid("rustls took no bytes (record buffer full)"));
                }
                *consumed += fed;
                if *consumed == incoming.len() {
                    incoming.clear();
                    *consumed = 0;
                }
                let processed = conn.process_new_packets().map(|_| ());
                // Alerts, key updates, session tickets.
                let out = pending(conn)?;
                self.send(session, &out)?;
                processed.map_err(invalid)?;
                continue;
            }
            drop(session);
            if self.buffer.len() < 1 << 16 {
                self.buffer.resize(1 << 16, 0);
            }
            let n = loop {
                match self.socket.read(&mut self.buffer) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            };
            let mut session = lock(&self.shared.session);
            if n == 0 {
                // End of stream: rustls then reports close_notify (Ok(0)) or a cut.
                session.conn.read_tls(&mut &[][..])?;
                session.conn.process_new_packets().map_err(invalid)?;
                match session.conn.reader().read(buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(0),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
                    other => return other,
                }
            }
            session.incoming.extend_from_slice(&self.buffer[..n]);
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut session = lock(&self.shared.session);
        let n = session.conn.writer().write(buf)?;
        let out = pending(&mut session.conn)?;
        self.send(session, &out)?;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
