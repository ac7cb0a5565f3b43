//! Raw sockets to a server: what an HTTP client library hides (a head sent
//! in pieces, a body that trickles, a socket that says nothing, a source
//! address other than 127.0.0.1), every wait bounded.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// `127.0.0.1:PORT` of `http://127.0.0.1:PORT`.
pub fn address(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .expect("an http://IP:PORT url")
}

/// A TCP connection to the server at `url`.
pub async fn connect(url: &str) -> TcpStream {
    TcpStream::connect(address(url)).await.expect("connect")
}

/// A TCP connection to `url` from the loopback address `local` (any of
/// 127.0.0.0/8 is this machine): another client, as the server sees it.
pub async fn connect_from(local: IpAddr, url: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(local, 0))
        .expect("bind a loopback source address");
    socket.connect(address(url)).await.expect("connect")
}

/// How the server ended a socket.
#[derive(Debug)]
pub struct Closed {
    /// From the call to the end of the stream (or a reset).
    pub after: Duration,
    /// What the server sent before it closed.
    pub received: Vec<u8>,
}

impl Closed {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Reads until the server closes the socket, for at most `limit`; `None`
/// if it is still open then.
pub async fn wait_for_close(stream: &mut TcpStream, limit: Duration) -> Option<Closed> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some(Closed {
                    after: started.elapsed(),
                    received,
                });
            }
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the socket is still open after `wait` (nothing read, no end).
pub async fn still_open(stream: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1];
    tokio::time::timeout(wait, stream.peek(&mut buf))
        .await
        .is_err()
}

/// One response: its status and body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

/// Sends `request` (a whole one: request line, headers, blank line, and
/// any body) and reads one response with a `content-length`, within
/// `limit`. `None` if the socket closes or nothing complete comes in time.
pub async fn exchange(
    stream: &mut TcpStream,
    request: &str,
    limit: Duration,
) -> Option<RawResponse> {
    stream.write_all(request.as_bytes()).await.ok()?;
    read_response(stream, limit).await
}

/// Reads one response with a `content-length` within `limit`.
pub async fn read_response(stream: &mut TcpStream, limit: Duration) -> Option<RawResponse> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = find(&received, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).into_owned();
            let length = head
                .lines()
                .find_map(|line| {
                    let (name, value) = line.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if received.len() >= end + 4 + length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let body =
                    String::from_utf8_lossy(&received[end + 4..end + 4 + length]).into_owned();
                return Some(RawResponse { status, head, body });
            }
        }
        let left = limit.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
