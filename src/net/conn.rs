//! One stream type for TCP and Unix-domain sockets.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::tls::TlsStream;

/// Where a server listens or a client connects: `HOST:PORT` or `unix:PATH`.
///
/// # Examples
/// ```
/// use headstart::net::Address;
/// assert_eq!("unix:/tmp/hs.sock".parse::<Address>()?, Address::Unix("/tmp/hs.sock".into()));
/// assert_eq!("127.0.0.1:7070".parse::<Address>()?, Address::Tcp("127.0.0.1:7070".into()));
/// assert!("".parse::<Address>().is_err());
/// # Ok::<(), String>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A TCP address, `HOST:PORT`.
    Tcp(String),
    /// A Unix-domain socket path.
    Unix(PathBuf),
}

impl FromStr for Address {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("unix:") {
            Some("") => Err("`unix:` needs a socket path, e.g. unix:/tmp/headstart.sock".into()),
            Some(path) => Ok(Address::Unix(path.into())),
            None if s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()) =>
            {
                Ok(Address::Tcp(s.to_string()))
            }
            None => Err(format!("`{s}` is neither HOST:PORT nor unix:PATH")),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Tcp(a) => f.write_str(a),
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected stream: TCP, a Unix-domain socket, or TLS over either.
#[derive(Debug)]
pub enum Conn {
    /// TCP.
    Tcp(TcpStream),
    /// Unix-domain socket.
    Unix(UnixStream),
    /// TLS over a TCP or Unix socket.
    Tls(Box<TlsStream>),
}

impl Conn {
    /// Connects to `address`.
    ///
    /// # Errors
    /// The connection error.
    pub fn connect(address: &Address) -> std::io::Result<Conn> {
        Ok(match address {
            Address::Tcp(a) => {
                let s = TcpStream::connect(a)?;
                s.set_nodelay(true)?;
                Conn::Tcp(s)
            }
            Address::Unix(p) => Conn::Unix(UnixStream::connect(p)?),
        })
    }

    /// Connects to `address`, giving up on each TCP address it resolves to after `timeout`
    /// (`None`: the platform's own, often minutes). A Unix-domain connect does not wait.
    ///
    /// # Errors
    /// The connection error of the last address tried (`TimedOut` if it timed out).
    pub fn connect_timeout(address: &Address, timeout: Option<Duration>) -> std::io::Result<Conn> {
        let (Address::Tcp(a), Some(timeout)) = (address, timeout) else {
            return Conn::connect(address);
        };
        let mut last = None;
        for socket in a.to_socket_addrs()? {
            match TcpStream::connect_timeout(&socket, timeout) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(Conn::Tcp(s));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{a} resolves to no address"),
            )
        }))
    }

    /// A second handle to the same stream.
    ///
    /// # Errors
    /// As the platform's `dup`.
    pub fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tls(s) => Conn::Tls(Box::new(s.try_clone()?)),
        })
    }

    /// Writes all of `bytes` to the socket through a shared reference (the handles of one
    /// socket share its file descriptor). For the plain sockets only: TLS writes go through
    /// [`Write`].
    pub(crate) fn write_all_shared(&self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => (&mut &*s).write_all(bytes),
            Conn::Unix(s) => (&mut &*s).write_all(bytes),
            Conn::Tls(_) => Err(std::io::Error::other("TLS records go to the socket underneath")),
        }
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Conn::Tls(_))
    }

    /// Sets both the read and the write timeout.
    ///
    /// # Errors
    /// As the platform's `setsockopt`.
    pub fn set_timeouts(&self, timeout: Option<Duration>) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Conn::Unix(s) => {
                s.set_read_timeout(timeout)?;
                s.set_write_timeout(timeout)
            }
            Conn::Tls(s) => s.socket().set_timeouts(timeout),
        }
    }

    /// Closes both directions (a TLS stream sends close_notify first).
    pub fn shutdown(&self) {
        let _ = match self {
            Conn::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Unix(s) => s.shutdown(std::net::Shutdown::Both),
            Conn::Tls(s) => {
                s.shutdown();
                Ok(())
            }
        };
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}
