//! One HTTP/1 connection, served by hyper, watched by a deadline.
//!
//! hyper's own `header_read_timeout` runs from the moment it waits for a
//! head, idle time included, so it cannot tell a slow head (seconds) from a
//! keep-alive connection waiting for its next request (a minute). Here the
//! socket reports what it reads and the service what is in flight, and one
//! deadline follows:
//!
//! - before the first request: its head must be in within the header
//!   timeout of the accept;
//! - while a request is in flight (its body being read, its handler
//!   running, its response being written): none here; a slow body is the
//!   body timeout's ([`super::body`]);
//! - idle after a response: the idle timeout; once the next head's first
//!   byte arrives, the header timeout from that byte.
//!
//! At the deadline the connection is dropped, which closes the socket. An
//! upgrade (a WebSocket) ends hyper's connection future, and with it the
//! watch: the socket then belongs to the hub, which pings it.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::accept::Permit;
use super::body::TimedBody;
use crate::http::metrics::Metrics;

/// The smallest read buffer hyper accepts.
const MIN_BUF_BYTES: usize = 8192;

/// The limits every connection is held to.
#[derive(Debug, Clone)]
pub struct Settings {
    pub header_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub body_timeout: Option<Duration>,
    pub max_head_bytes: usize,
}

/// Serves one connection until it ends, its deadline passes, or (after
/// `stop`) its requests in flight are answered.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    permit: Permit,
    app: Router,
    settings: Arc<Settings>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let socket = Socket {
        stream,
        activity: activity.clone(),
        _permit: permit,
    };
    let service = {
        let activity = activity.clone();
        let body_timeout = settings.body_timeout;
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let in_flight = InFlight::begin(&activity);
            let mut request = match body_timeout {
                Some(timeout) => request.map(|body| Body::new(TimedBody::new(body, timeout))),
                None => request.map(Body::new),
            };
            request.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move {
                let response = match app.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                // The request stays in flight until its response is written.
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(Finishing {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        })
    };
    let mut http = http1::Builder::new();
    http.max_buf_size(settings.max_head_bytes.max(MIN_BUF_BYTES))
        .max_header_size(settings.max_head_bytes)
        // The deadlines are kept below, not by hyper (see the module).
        .header_read_timeout(None);
    let mut connection = pin!(
        http.serve_connection(TokioIo::new(socket), service)
            .with_upgrades()
    );
    let mut expired = pin!(activity.expired(&settings));
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    tracing::debug!(client = %peer, %error, "connection ended with an error");
                }
                return;
            }
            reason = &mut expired => {
                metrics.connection_closed(reason);
                tracing::debug!(client = %peer, reason, "connection closed");
                return;
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// What the watch knows of a connection, told by its socket (bytes read)
/// and its service (requests begun and finished).
struct Activity {
    state: Mutex<State>,
    changed: Notify,
}

struct State {
    /// Requests whose response is not yet written.
    in_flight: usize,
    /// Whether a request was ever begun.
    served: bool,
    /// Since when nothing has been in flight (the accept, at first).
    idle_since: Instant,
    /// When the first byte of the next head arrived, after a response.
    head_since: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        Self {
            state: Mutex::new(State {
                in_flight: 0,
                served: false,
                idle_since: Instant::now(),
                head_since: None,
            }),
            changed: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes came in: if the connection was idle, a head has begun.
    fn read(&self) {
        let mut state = self.state();
        if state.served && state.in_flight == 0 && state.head_since.is_none() {
            state.head_since = Some(Instant::now());
            drop(state);
            self.changed.notify_one();
        }
    }

    /// When the connection is to be closed, and why; none while a request
    /// is in flight.
    fn deadline(&self, settings: &Settings) -> Option<(Instant, &'static str)> {
        let state = self.state();
        if state.in_flight > 0 {
            return None;
        }
        if !state.served {
            return match (settings.header_timeout, settings.idle_timeout) {
                (Some(header), _) => Some((state.idle_since + header, "header_timeout")),
                (None, Some(idle)) => Some((state.idle_since + idle, "idle_timeout")),
                (None, None) => None,
            };
        }
        match (state.head_since, settings.header_timeout) {
            (Some(head), Some(header)) => Some((head + header, "header_timeout")),
            (Some(_), None) => None,
            (None, _) => settings
                .idle_timeout
                .map(|idle| (state.idle_since + idle, "idle_timeout")),
        }
    }

    /// Resolves, with the reason, once the connection's deadline passes.
    async fn expired(&self, settings: &Settings) -> &'static str {
        loop {
            match self.deadline(settings) {
                None => self.changed.notified().await,
                Some((at, reason)) => {
                    if Instant::now() >= at {
                        return reason;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// A request in flight, from its head to the end of its response.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> Self {
        let mut state = activity.state();
        state.in_flight += 1;
        state.served = true;
        state.head_since = None;
        drop(state);
        activity.changed.notify_one();
        Self(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.state();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.idle_since = Instant::now();
        }
        drop(state);
        self.0.changed.notify_one();
    }
}

/// A response body that holds its request in flight until hyper has
/// written it (or given up on it).
struct Finishing {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Finishing {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The TCP stream, telling the watch when bytes come in, and holding the
/// connection's [`Permit`] for as long as the socket lives (after an
/// upgrade, in the WebSocket's task).
struct Socket {
    stream: TcpStream,
    activity: Arc<Activity>,
    _permit: Permit,
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            header_timeout: Some(Duration::from_secs(5)),
            idle_timeout: Some(Duration::from_secs(60)),
            body_timeout: None,
            max_head_bytes: 16 * 1024,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_goes_at_the_header_timeout() {
        let activity = Activity::new();
        let started = Instant::now();
        assert_eq!(activity.expired(&settings()).await, "header_timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_expires_while_a_request_is_in_flight() {
        let activity = Arc::new(Activity::new());
        let settings = settings();
        let request = InFlight::begin(&activity);
        let watch = activity.expired(&settings);
        tokio::select! {
            _ = watch => panic!("expired with a request in flight"),
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
        drop(request);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_after_a_response_waits_the_idle_timeout_then_a_head_the_header_timeout() {
        let activity = Arc::new(Activity::new());
        let settings = settings();
        drop(InFlight::begin(&activity));
        let idle_from = Instant::now();
        assert_eq!(activity.expired(&settings).await, "idle_timeout");
        assert_eq!(idle_from.elapsed(), Duration::from_secs(60));

        let activity = Arc::new(Activity::new());
        drop(InFlight::begin(&activity));
        tokio::time::sleep(Duration::from_secs(30)).await;
        // The next head starts 30 s into the idle time, and never ends.
        activity.read();
        let head_from = Instant::now();
        assert_eq!(activity.expired(&settings).await, "header_timeout");
        assert_eq!(head_from.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn the_watch_follows_changes_while_it_waits() {
        let activity = Arc::new(Activity::new());
        let settings = settings();
        drop(InFlight::begin(&activity));
        let started = Instant::now();
        let watch = {
            let activity = activity.clone();
            let settings = settings.clone();
            tokio::spawn(async move { activity.expired(&settings).await })
        };
        tokio::time::sleep(Duration::from_secs(10)).await;
        activity.read();
        assert_eq!(watch.await.unwrap(), "header_timeout");
        assert_eq!(started.elapsed(), Duration::from_secs(15));
    }
}
