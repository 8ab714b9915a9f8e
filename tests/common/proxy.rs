//! A TCP proxy for fault tests: clients connect to it, it forwards to the server's current
//! address, and the test can cut every connection at once (a dropped link) or point it at a
//! restarted server.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running proxy; dropping it stops accepting.
pub struct Proxy {
    /// The address clients connect to.
    pub address: String,
    upstream: Arc<Mutex<String>>,
    open: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    /// Connections cut by [`Proxy::cut`].
    pub cuts: Arc<AtomicU64>,
}

impl Proxy {
    /// Listens on a free local port and forwards to `upstream`.
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let proxy = Proxy {
            address: listener.local_addr().unwrap().to_string(),
            upstream: Arc::new(Mutex::new(upstream.to_string())),
            open: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            cuts: Arc::new(AtomicU64::new(0)),
        };
        let (upstream, open, stop) = (proxy.upstream.clone(), proxy.open.clone(), proxy.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((s, _)) => s,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(2));
                        continue;
                    }
                };
                client.set_nonblocking(false).unwrap();
                let target = upstream.lock().unwrap().clone();
                // A server that is down: the client sees its connection close.
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut open = open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                }
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        proxy
    }

    /// Forwards later connections to `upstream` (a restarted server).
    pub fn point_at(&self, upstream: &str) {
        *self.upstream.lock().unwrap() = upstream.to_string();
    }

    /// Cuts every open connection (both directions, both ends).
    pub fn cut(&self) {
        let open: Vec<TcpStream> = std::mem::take(&mut *self.open.lock().unwrap());
        for s in &open {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.cuts.fetch_add(open.len() as u64 / 2, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

/// Copies `from` to `to` on a thread until either side ends, then closes both.
fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
