//! One WebSocket connection: a send task that drains the connection's
//! outbox into the socket, and a receive loop that answers the client's
//! frames. When either ends, the other is stopped, and every subscription
//! of the connection is dropped from the hub.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use governor::{Quota, RateLimiter};
use serde_json::Value;
use tandem_model::ThreadId;

use crate::http::Principal;
use crate::hub::outbox::{CloseReason, Outbox};
use crate::hub::protocol::{ClientFrame, FrameError, ServerFrame, Topic, close};
use crate::hub::subscriptions::Peer;
use crate::hub::{Admission, Hub};

/// How long a closing connection gets to write what it was writing and its
/// close frame before it is dropped: long enough for a client that stalled
/// for a while to still learn why it was closed.
const CLOSE_GRACE: Duration = Duration::from_secs(30);

/// The same, while the server shuts down: a deploy does not wait for stuck
/// clients.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);

/// Typing frames forwarded per thread and connection, at most.
const TYPING_EVERY: Duration = Duration::from_secs(1);

/// Frames dropped in a row (over the rate limit) before the connection is
/// closed for flooding.
const FLOOD_CLOSE_AFTER: u32 = 1_000;

const CLIENT_FRAME_TYPES: &[&str] = &["subscribe", "unsubscribe", "typing", "ping"];

/// Serves one upgraded connection until either side ends it.
pub async fn run(socket: WebSocket, hub: Hub, principal: Principal, admission: Admission) {
    let (id, outbox) = hub.new_connection();
    let started = Instant::now();
    let last_heard = Arc::new(AtomicU64::new(0));
    let (sink, stream) = socket.split();
    let mut send = tokio::spawn(send_loop(
        sink,
        outbox.clone(),
        hub.clone(),
        started,
        last_heard.clone(),
    ));
    let mut session = Session::new(
        Peer {
            id,
            outbox: outbox.clone(),
            principal,
        },
        hub.clone(),
    );
    tracing::debug!(conn = id.0, kind = %session.peer.principal.kind(), "ws: connected");
    tokio::select! {
        () = session.receive(stream, started, &last_heard) => {
            // Let the send task write what is queued and the close, if any.
            if !outbox.is_closed() {
                outbox.close(CloseReason { code: 1000, reason: "" });
            }
            let grace = if hub.is_stopping() { SHUTDOWN_GRACE } else { CLOSE_GRACE };
            if Box::pin(tokio::time::timeout(grace, &mut send)).await.is_err() {
                send.abort();
            }
        }
        _ = &mut send => {}
    }
    session.leave_all();
    drop(admission);
    tracing::debug!(conn = id.0, "ws: closed");
}

/// Writes the outbox to the socket in batches (one flush each), pings, and
/// closes the socket when the outbox says so or the hub shuts down.
async fn send_loop(
    mut sink: SplitSink<WebSocket, Message>,
    outbox: Arc<Outbox>,
    hub: Hub,
    started: Instant,
    last_heard: Arc<AtomicU64>,
) {
    let interval = Duration::from_secs(hub.config().ping_interval_secs.max(1));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut batch = Vec::new();
    let mut stopping = false;
    let mut pinged_at: Option<u64> = None;
    loop {
        let close = tokio::select! {
            close = outbox.next_batch(&mut batch) => close,
            _ = ping.tick() => {
                // A live client answers a ping within the interval; one that
                // has said nothing since the last ping is dead, and goes at
                // most two intervals after it last spoke.
                // Both sides count whole milliseconds since `started`; the
                // ping's time is taken before it leaves, so a quick pong is
                // never older than its ping.
                let heard = last_heard.load(Ordering::Relaxed);
                if pinged_at.is_some_and(|pinged| heard < pinged) {
                    outbox.close(CloseReason { code: close::NO_PONG, reason: "no pong" });
                    continue;
                }
                pinged_at = Some(millis_since(started));
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
                continue;
            }
            () = hub.stopping(), if !stopping => {
                stopping = true;
                outbox.close(CloseReason { code: close::GOING_AWAY, reason: "server shutting down" });
                continue;
            }
        };
        let wrote = tokio::select! {
            wrote = write_batch(&mut sink, &mut batch) => wrote,
            // A client that does not read cannot stall this task forever.
            () = Box::pin(closing_deadline(&outbox, &hub)) => false,
        };
        if !wrote {
            break;
        }
        if let Some(reason) = close {
            hub.metrics().ws_closed(close_label(reason.code));
            let frame = CloseFrame {
                code: reason.code,
                reason: Utf8Bytes::from_static(reason.reason),
            };
            let grace = if hub.is_stopping() {
                SHUTDOWN_GRACE
            } else {
                CLOSE_GRACE
            };
            let closing = tokio::time::timeout(grace, sink.send(Message::Close(Some(frame))));
            let _ = Box::pin(closing).await;
            break;
        }
    }
    outbox.close(CloseReason {
        code: 1000,
        reason: "",
    });
}

/// Whole milliseconds since `start`.
fn millis_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn write_batch(sink: &mut SplitSink<WebSocket, Message>, batch: &mut Vec<Utf8Bytes>) -> bool {
    for frame in batch.drain(..) {
        if sink.feed(Message::Text(frame)).await.is_err() {
            return false;
        }
    }
    sink.flush().await.is_ok()
}

/// Resolves a grace period after the outbox starts closing (a short one
/// when the server is shutting down).
async fn closing_deadline(outbox: &Outbox, hub: &Hub) {
    tokio::select! {
        () = async {
            outbox.closing().await;
            tokio::time::sleep(CLOSE_GRACE).await;
        } => {}
        () = async {
            hub.stopping().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {}
    }
}

fn close_label(code: u16) -> &'static str {
    match code {
        close::TOO_SLOW => "too_slow",
        close::NO_PONG => "no_pong",
        close::POLICY => "flood",
        close::TOO_BIG => "too_big",
        close::GOING_AWAY => "shutdown",
        _ => "normal",
    }
}

/// What the receive side knows of its connection.
struct Session {
    peer: Peer,
    hub: Hub,
    topics: HashSet<Topic>,
    typing_sent: HashMap<ThreadId, Instant>,
    limiter: Option<
        RateLimiter<
            governor::state::NotKeyed,
            governor::state::InMemoryState,
            governor::clock::DefaultClock,
        >,
    >,
    dropped_in_a_row: u32,
    last_rate_error: Option<Instant>,
}

impl Session {
    fn new(peer: Peer, hub: Hub) -> Self {
        let config = hub.config();
        let limiter = NonZeroU32::new(config.frames_per_second).map(|per_second| {
            let burst = NonZeroU32::new(config.frames_burst).unwrap_or(per_second);
            RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
        });
        Self {
            peer,
            hub,
            topics: HashSet::new(),
            typing_sent: HashMap::new(),
            limiter,
            dropped_in_a_row: 0,
            last_rate_error: None,
        }
    }

    /// Reads and answers frames until the client goes or the connection is
    /// closing.
    async fn receive(
        &mut self,
        mut stream: SplitStream<WebSocket>,
        started: Instant,
        last_heard: &AtomicU64,
    ) {
        while let Some(received) = stream.next().await {
            last_heard.store(millis_since(started), Ordering::Relaxed);
            let message = match received {
                Ok(message) => message,
                Err(error) => {
                    if is_too_big(error) {
                        let error = FrameError::new(
                            "frame_too_large",
                            format!(
                                "frames are limited to {} bytes",
                                self.hub.config().max_message_bytes
                            ),
                        );
                        Box::pin(self.send_error(error)).await;
                        self.peer.outbox.close(CloseReason {
                            code: close::TOO_BIG,
                            reason: "frame too large",
                        });
                    }
                    return;
                }
            };
            let text = match message {
                Message::Text(text) => Some(text),
                Message::Binary(_) => None,
                Message::Ping(_) | Message::Pong(_) => continue,
                Message::Close(_) => return,
            };
            if !self.within_rate() {
                if self.dropped_in_a_row >= FLOOD_CLOSE_AFTER {
                    self.peer.outbox.close(CloseReason {
                        code: close::POLICY,
                        reason: "flood",
                    });
                    return;
                }
                continue;
            }
            let answer = match text {
                // Boxed: answering a frame (a subscribe's replay above all)
                // needs far more state than waiting for one, and an idle
                // connection should not carry that size.
                Some(text) => Box::pin(self.handle(text.as_str())).await,
                None => Err(FrameError::new(
                    "binary_not_supported",
                    "send JSON in text frames",
                )),
            };
            if let Err(error) = answer {
                if error.is_closed() {
                    return;
                }
                Box::pin(self.send_error(error)).await;
            }
        }
    }

    /// Whether this frame is within the connection's rate; tells the client
    /// (at most once a second) when it is not.
    fn within_rate(&mut self) -> bool {
        let Some(limiter) = &self.limiter else {
            return true;
        };
        if limiter.check().is_ok() {
            self.dropped_in_a_row = 0;
            return true;
        }
        self.dropped_in_a_row += 1;
        if self
            .last_rate_error
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.last_rate_error = Some(Instant::now());
            let frame = FrameError::new(
                "rate_limited",
                format!(
                    "more than {} frames a second: frames are being dropped",
                    self.hub.config().frames_per_second
                ),
            )
            .frame();
            let _ = self.peer.outbox.push(frame.into());
        }
        false
    }

    async fn send_error(&self, error: FrameError) {
        let _ = self.peer.outbox.push_wait(error.frame().into()).await;
    }

    async fn handle(&mut self, text: &str) -> Result<(), FrameError> {
        let frame = parse(text)?;
        match frame {
            ClientFrame::Subscribe { topic, after_seq } => {
                let parsed = Topic::parse(&topic).ok_or_else(|| {
                    FrameError::new(
                        "invalid_topic",
                        "topics are `thread:<id>`, `inbox` and `workflow:<id>`",
                    )
                    .with_topic(&topic)
                })?;
                self.subscribe(parsed, after_seq)
                    .await
                    .map_err(|error| error.with_topic(&topic))
            }
            ClientFrame::Unsubscribe { topic } => {
                let parsed = Topic::parse(&topic)
                    .filter(|t| self.topics.contains(t))
                    .ok_or_else(|| {
                        FrameError::new("not_subscribed", "not subscribed to this topic")
                            .with_topic(&topic)
                    })?;
                self.topics.remove(&parsed);
                self.hub.unsubscribe(self.peer.id, parsed);
                self.peer
                    .send(ServerFrame::Unsubscribed { topic }.encode())
                    .await
            }
            ClientFrame::Typing { thread_id } => {
                if !self.topics.contains(&Topic::Thread(thread_id)) {
                    return Err(FrameError::new(
                        "not_subscribed",
                        "subscribe to the thread before typing in it",
                    ));
                }
                let now = Instant::now();
                let recent = self
                    .typing_sent
                    .get(&thread_id)
                    .is_some_and(|at| now.duration_since(*at) < TYPING_EVERY);
                if !recent {
                    self.typing_sent.insert(thread_id, now);
                    self.hub.typing(&self.peer, thread_id).await;
                }
                Ok(())
            }
            ClientFrame::Ping { nonce } => {
                self.peer.send(ServerFrame::Pong { nonce }.encode()).await
            }
        }
    }

    async fn subscribe(&mut self, topic: Topic, after_seq: Option<i64>) -> Result<(), FrameError> {
        if self.topics.remove(&topic) {
            // Subscribing again restarts the subscription from `after_seq`.
            self.hub.unsubscribe(self.peer.id, topic);
        } else if self.topics.len() >= self.hub.config().max_subscriptions {
            return Err(FrameError::new(
                "too_many_subscriptions",
                format!(
                    "a connection may hold {} subscriptions",
                    self.hub.config().max_subscriptions
                ),
            ));
        }
        // Counted before the subscribe awaits: if the connection ends half-way
        // (this future is then dropped), `leave_all` still takes it out.
        self.topics.insert(topic);
        let subscribed = match topic {
            Topic::Thread(thread_id) => {
                self.hub
                    .subscribe_thread(&self.peer, thread_id, after_seq)
                    .await
            }
            Topic::Inbox => self.hub.subscribe_inbox(&self.peer).await,
            Topic::Workflow(run_id) => self.hub.subscribe_workflow(&self.peer, run_id).await,
        };
        if subscribed.is_err() {
            self.topics.remove(&topic);
        }
        subscribed
    }

    /// Drops every subscription of the connection from the hub.
    fn leave_all(&mut self) {
        for topic in self.topics.drain() {
            self.hub.unsubscribe(self.peer.id, topic);
        }
    }
}

/// Parses a client frame, telling a malformed frame from an unknown type.
fn parse(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|_| FrameError::new("malformed_frame", "frames are JSON objects with a `type`"))?;
    let kind = value
        .get("type")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| {
            FrameError::new("malformed_frame", "frames are JSON objects with a `type`")
        })?;
    if !CLIENT_FRAME_TYPES.contains(&kind.as_str()) {
        return Err(FrameError::new(
            "unknown_type",
            format!(
                "unknown frame type; expected one of {}",
                CLIENT_FRAME_TYPES.join(", ")
            ),
        ));
    }
    serde_json::from_value(value).map_err(|error| {
        FrameError::new(
            "malformed_frame",
            format!("invalid `{kind}` frame: {error}"),
        )
    })
}

/// Whether a read failed because the client sent more than the limit.
fn is_too_big(error: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    error
        .into_inner()
        .downcast::<Error>()
        .is_ok_and(|error| matches!(*error, Error::Capacity(_)))
}
