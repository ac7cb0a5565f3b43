//! A WebSocket test client for the hub: JSON frames in and out, every wait
//! bounded by a timeout.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait for a frame may take before the test fails.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

/// Why an upgrade was refused: the HTTP status and the JSON error body.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub body: Value,
}

/// How a connection ended, as the client saw it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// A close frame with this code.
    Closed(u16),
    /// The connection dropped without a close frame.
    Dropped,
}

/// One WebSocket connection to the hub.
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl WsClient {
    /// Connects to `url` (`ws://…/v1/ws`, with `?ticket=` if wanted), with
    /// an optional Bearer token and `Origin`.
    pub async fn connect(
        url: &str,
        token: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Self, Refused> {
        let mut request = url.into_client_request().expect("ws url");
        if let Some(token) = token {
            request.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
            );
        }
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", HeaderValue::from_str(origin).expect("header"));
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(Self { stream }),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                let body = response
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .unwrap_or(Value::Null);
                Err(Refused { status, body })
            }
            Err(error) => panic!("WebSocket connect failed: {error}"),
        }
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        self.stream
            .send(Message::text(frame.to_string()))
            .await
            .expect("send frame");
    }

    /// Sends raw text or binary, for bad-input tests.
    pub async fn send_raw(&mut self, message: Message) {
        self.stream.send(message).await.expect("send raw frame");
    }

    /// The next JSON frame; panics on timeout, on a close, or on a
    /// non-JSON frame.
    pub async fn next(&mut self) -> Value {
        match self.next_or_end(FRAME_TIMEOUT).await {
            Ok(frame) => frame,
            Err(ended) => panic!("connection ended while a frame was expected: {ended:?}"),
        }
    }

    /// The next JSON frame, or how the connection ended. Panics on timeout.
    pub async fn next_or_end(&mut self, timeout: Duration) -> Result<Value, Ended> {
        loop {
            let received = tokio::time::timeout(timeout, self.stream.next())
                .await
                .expect("timed out waiting for a frame");
            match received {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(Ended::Closed(frame.map_or(1005, |f| u16::from(f.code))));
                }
                Some(Ok(Message::Binary(_))) => panic!("the server sent a binary frame"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(Ended::Dropped),
            }
        }
    }

    /// Whether a frame arrives within `wait` (it is returned if so).
    pub async fn maybe_next(&mut self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str(&text).ok(),
            _ => None,
        }
    }

    /// The next frame of this `type`, skipping others.
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["type"] == kind {
                return frame;
            }
        }
    }

    /// Subscribes and returns the `subscribed` frame; panics on an `error`.
    pub async fn subscribe(&mut self, topic: &str, after_seq: Option<i64>) -> Value {
        let mut frame = json!({"type": "subscribe", "topic": topic});
        if let Some(after_seq) = after_seq {
            frame["after_seq"] = json!(after_seq);
        }
        self.send(frame).await;
        let answer = self.next().await;
        assert_eq!(answer["type"], "subscribed", "subscribe {topic}: {answer}");
        answer
    }

    /// Reads `message` frames of `thread` until one has `seq >= last`,
    /// returning every seq received in order (other frames are skipped).
    pub async fn seqs_until(&mut self, thread: &str, last: i64) -> Vec<i64> {
        let mut seqs = Vec::new();
        while seqs.last().is_none_or(|s| *s < last) {
            let frame = self.next().await;
            if frame["type"] == "message" && frame["thread_id"] == thread {
                seqs.push(frame["seq"].as_i64().expect("seq"));
            }
        }
        seqs
    }

    /// Waits for the server to close the connection; returns its close code.
    pub async fn closed(&mut self) -> Ended {
        loop {
            if let Err(ended) = self.next_or_end(FRAME_TIMEOUT).await {
                return ended;
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self
            .stream
            .close(Some(tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
    }

    /// The underlying stream, for tests that need raw control.
    pub fn stream(&mut self) -> &mut WebSocketStream<MaybeTlsStream<TcpStream>> {
        &mut self.stream
    }
}
