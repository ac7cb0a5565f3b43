//! The accept loop and the caps it keeps.
//!
//! A socket is admitted with a [`Permit`] that it carries for as long as it
//! is open, through an upgrade to a WebSocket too; dropping the socket
//! gives the permit back. Over a cap, a socket is accepted, told `503` if it
//! can take it without waiting, and closed at once: its descriptor is freed
//! and no open connection waits on it. Behind a trusted proxy every client
//! arrives from the proxy's address, so trusted proxies are not held to the
//! per-address cap (the proxy keeps its own per-client limits; the overall
//! cap still holds).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{self, Settings};
use super::{AddressRange, Throttled, address_key, in_ranges, open_files};
use crate::config::Config;
use crate::http::metrics::Metrics;

/// How long accepting pauses when the process is out of descriptors (or
/// memory): the waiting connections stay in the listen backlog meanwhile.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How often each warning about refused connections may be logged.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What a refused socket is told, if it can take it at once.
const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 87\r\n\
\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many connections; retry later\"}}";

/// Connections the kernel may hold for the accept loop. The standard
/// library's 128 fills within a fraction of a second of a flood, or while
/// accepting pauses for descriptors, and then new clients' SYNs are dropped
/// and retried seconds later.
pub const LISTEN_BACKLOG: u32 = 1024;

/// A listener on `address` with a [`LISTEN_BACKLOG`] (the kernel caps it
/// at `net.core.somaxconn`).
pub fn bind(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted server may bind while old connections linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops
/// accepting, lets every connection finish its requests in flight and
/// waits for them (upgraded WebSockets are the hub's to close).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: &Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let connections = &config.connections;
    let max_open = match connections.max_open {
        0 => open_files::connection_budget(open_files::limits()?.0),
        configured => configured,
    };
    tracing::info!(
        max_open,
        max_per_address = connections.max_per_address,
        trusted_proxies = ?connections.trusted_proxies,
        "connections: accepting"
    );
    let admission = Arc::new(Admission {
        max_open,
        max_per_address: connections.max_per_address,
        unlimited: connections.unlimited_addresses.clone(),
        trusted: connections.trusted_proxies.clone(),
        open: AtomicUsize::new(0),
        by_address: Mutex::new(HashMap::new()),
        metrics: metrics.clone(),
    });
    let settings = Arc::new(Settings {
        header_timeout: connections.header_timeout(),
        idle_timeout: connections.idle_timeout(),
        body_timeout: connections.body_timeout(),
        max_head_bytes: config.limits.max_head_bytes,
    });
    let warnings = Warnings::default();
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if is_connection_error(&error) => continue,
            Err(error) => {
                // Out of descriptors (EMFILE, ENFILE) or memory: the kernel
                // keeps the connection queued, so trying again at once
                // would spin. Pause; the open connections go on.
                if let Some(held_back) = warnings.accept.ready() {
                    tracing::warn!(%error, held_back, "accepting connections failed; pausing");
                }
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refusal) => {
                refuse(stream, peer, refusal, &admission, &warnings);
                continue;
            }
        };
        // Small JSON answers must not wait on Nagle's algorithm.
        let _ = stream.set_nodelay(true);
        tracker.spawn(connection::run(
            stream,
            peer,
            permit,
            app.clone(),
            settings.clone(),
            metrics.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Errors of one connection that went away while queued: the next accept
/// may well succeed at once.
fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Why a socket was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address holds `max_per_address` sockets already.
    PerAddress,
    /// The server holds `max_open` sockets already.
    Capacity,
}

impl Refusal {
    fn reason(self) -> &'static str {
        match self {
            Self::PerAddress => "per_address",
            Self::Capacity => "capacity",
        }
    }
}

/// One throttled warning per kind of refusal.
struct Warnings {
    accept: Throttled,
    per_address: Throttled,
    capacity: Throttled,
}

impl Default for Warnings {
    fn default() -> Self {
        Self {
            accept: Throttled::new(WARN_EVERY),
            per_address: Throttled::new(WARN_EVERY),
            capacity: Throttled::new(WARN_EVERY),
        }
    }
}

fn refuse(
    stream: TcpStream,
    peer: SocketAddr,
    refusal: Refusal,
    admission: &Admission,
    warnings: &Warnings,
) {
    // Never waits: a socket that cannot take the answer now is just closed.
    let _ = stream.try_write(REFUSED);
    drop(stream);
    admission.metrics.connection_closed(refusal.reason());
    match refusal {
        Refusal::PerAddress => {
            if let Some(held_back) = warnings.per_address.ready() {
                tracing::warn!(
                    client = %peer.ip(),
                    limit = admission.max_per_address,
                    held_back,
                    "refusing connections: too many from one address"
                );
            }
        }
        Refusal::Capacity => {
            if let Some(held_back) = warnings.capacity.ready() {
                tracing::warn!(
                    limit = admission.max_open,
                    held_back,
                    "refusing connections: the server holds as many as it may \
                     (connections.max_open, from the open-file limit)"
                );
            }
        }
    }
}

/// The caps, and the sockets counted against them.
pub struct Admission {
    max_open: usize,
    max_per_address: usize,
    unlimited: Vec<AddressRange>,
    trusted: Vec<AddressRange>,
    open: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

impl Admission {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.max_open {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Capacity);
        }
        let counted = self.max_per_address > 0
            && !in_ranges(&self.trusted, peer)
            && !in_ranges(&self.unlimited, peer);
        let key = counted.then(|| address_key(peer));
        if let Some(key) = key {
            let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
            let count = by_address.entry(key).or_insert(0);
            if *count >= self.max_per_address {
                drop(by_address);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::PerAddress);
            }
            *count += 1;
        }
        self.metrics.connection_opened();
        Ok(Permit {
            admission: self.clone(),
            key,
        })
    }
}

/// A socket's place under the caps, given back when the socket is dropped.
pub struct Permit {
    admission: Arc<Admission>,
    key: Option<IpAddr>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let admission = &self.admission;
        if let Some(key) = self.key {
            let mut by_address = admission
                .by_address
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(count) = by_address.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    by_address.remove(&key);
                }
            }
        }
        admission.open.fetch_sub(1, Ordering::AcqRel);
        admission.metrics.connection_ended();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_open: usize, max_per_address: usize) -> Arc<Admission> {
        Arc::new(Admission {
            max_open,
            max_per_address,
            unlimited: vec!["192.0.2.0/24".parse().unwrap()],
            trusted: vec!["10.0.0.1".parse().unwrap()],
            open: AtomicUsize::new(0),
            by_address: Mutex::new(HashMap::new()),
            metrics: Arc::new(Metrics::new()),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_address_holds_at_most_its_share() {
        let admission = admission(100, 2);
        let a1 = admission.admit(ip("198.51.100.1")).unwrap();
        let _a2 = admission.admit(ip("198.51.100.1")).unwrap();
        assert_eq!(
            admission.admit(ip("198.51.100.1")).err(),
            Some(Refusal::PerAddress)
        );
        let _b = admission.admit(ip("198.51.100.2")).unwrap();
        drop(a1);
        let _a3 = admission.admit(ip("198.51.100.1")).unwrap();
        assert_eq!(admission.open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn trusted_proxies_and_unlimited_addresses_are_not_counted_per_address() {
        let admission = admission(100, 1);
        let permits: Vec<_> = (0..5)
            .flat_map(|_| {
                [
                    admission.admit(ip("10.0.0.1")).unwrap(),
                    admission.admit(ip("192.0.2.9")).unwrap(),
                ]
            })
            .collect();
        assert_eq!(permits.len(), 10);
        assert!(admission.by_address.lock().unwrap().is_empty());
    }

    #[test]
    fn over_capacity_every_new_socket_is_refused_until_one_closes() {
        let admission = admission(3, 0);
        let permits: Vec<_> = (1..=3)
            .map(|i| admission.admit(ip(&format!("198.51.100.{i}"))).unwrap())
            .collect();
        assert_eq!(
            admission.admit(ip("198.51.100.9")).err(),
            Some(Refusal::Capacity)
        );
        drop(permits);
        assert_eq!(admission.open.load(Ordering::Relaxed), 0);
        assert!(admission.admit(ip("198.51.100.9")).is_ok());
    }

    #[test]
    fn the_refusal_is_a_well_formed_response() {
        let text = std::str::from_utf8(REFUSED).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let body: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(body["error"]["code"], "too_many_connections");
    }
}
