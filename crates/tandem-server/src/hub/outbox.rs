//! One connection's bounded outbound queue.
//!
//! Fan-out never waits on a socket: it pushes an already encoded frame (a
//! cheap clone of shared bytes) and moves on. When the queue is over its
//! frame or byte bound, the connection is marked too slow; the queue is
//! dropped at once (so a stuck client holds no more memory) and the send task
//! closes the socket with [`close::TOO_SLOW`]. The client resumes from the
//! store with `after_seq`.

use std::collections::VecDeque;
use std::sync::Mutex;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;

use super::protocol::close;

/// Why a connection is closing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

impl CloseReason {
    pub const TOO_SLOW: Self = Self {
        code: close::TOO_SLOW,
        reason: "too slow: resubscribe with after_seq",
    };
}

/// The connection is closing; nothing more is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

#[derive(Default)]
struct State {
    frames: VecDeque<Utf8Bytes>,
    bytes: usize,
    close: Option<CloseReason>,
}

/// A bounded queue of text frames for one connection.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the send task: frames or a close are waiting.
    ready: Notify,
    /// Wakes senders waiting for room ([`Outbox::push_wait`]).
    drained: Notify,
    /// Wakes whoever waits for the connection to start closing.
    closing: Notify,
    max_frames: usize,
    max_bytes: usize,
}

impl Outbox {
    pub fn new(max_frames: usize, max_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            drained: Notify::new(),
            closing: Notify::new(),
            max_frames: max_frames.max(1),
            max_bytes: max_bytes.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue invalid.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a live frame, or closes the connection as too slow when the
    /// queue is full.
    pub fn push(&self, frame: Utf8Bytes) -> Result<(), Closed> {
        let mut state = self.lock();
        if state.close.is_some() {
            return Err(Closed);
        }
        let len = frame.as_str().len();
        if state.frames.len() >= self.max_frames || state.bytes + len > self.max_bytes {
            state.close = Some(CloseReason::TOO_SLOW);
            state.frames = VecDeque::new();
            state.bytes = 0;
            drop(state);
            self.ready.notify_one();
            self.closing.notify_waiters();
            return Err(Closed);
        }
        state.bytes += len;
        state.frames.push_back(frame);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Queues a frame the connection asked for (a replay, an answer),
    /// waiting for room instead of giving up: such frames come no faster than
    /// the client reads them.
    pub async fn push_wait(&self, frame: Utf8Bytes) -> Result<(), Closed> {
        let len = frame.as_str().len();
        loop {
            let drained = self.drained.notified();
            {
                let mut state = self.lock();
                if state.close.is_some() {
                    return Err(Closed);
                }
                // Half the bounds, so waiting answers leave room for live frames.
                if state.frames.is_empty()
                    || (state.frames.len() < self.max_frames / 2
                        && state.bytes + len <= self.max_bytes / 2)
                {
                    state.bytes += len;
                    state.frames.push_back(frame);
                    drop(state);
                    self.ready.notify_one();
                    return Ok(());
                }
            }
            drained.await;
        }
    }

    /// Starts closing the connection with `reason` (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.close.is_none() {
            state.close = Some(reason);
        }
        drop(state);
        self.ready.notify_one();
        self.drained.notify_waiters();
        self.closing.notify_waiters();
    }

    /// Resolves once the connection starts closing.
    pub async fn closing(&self) {
        loop {
            let closing = self.closing.notified();
            if self.is_closed() {
                return;
            }
            closing.await;
        }
    }

    /// Whether the connection is closing.
    pub fn is_closed(&self) -> bool {
        self.lock().close.is_some()
    }

    /// Waits until frames or a close are waiting, then takes them all: the
    /// frames to send, and the close to send after them.
    pub async fn next_batch(&self, batch: &mut Vec<Utf8Bytes>) -> Option<CloseReason> {
        loop {
            let ready = self.ready.notified();
            {
                let mut state = self.lock();
                if !state.frames.is_empty() || state.close.is_some() {
                    batch.extend(state.frames.drain(..));
                    state.bytes = 0;
                    let close = state.close;
                    drop(state);
                    self.drained.notify_waiters();
                    return close;
                }
            }
            ready.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(text: &str) -> Utf8Bytes {
        Utf8Bytes::from(text.to_owned())
    }

    #[tokio::test]
    async fn overflow_closes_as_too_slow_and_frees_the_queue() {
        let outbox = Outbox::new(3, 1024);
        for _ in 0..3 {
            outbox.push(frame("x")).unwrap();
        }
        assert_eq!(outbox.push(frame("x")), Err(Closed));
        let mut batch = Vec::new();
        assert_eq!(
            outbox.next_batch(&mut batch).await,
            Some(CloseReason::TOO_SLOW)
        );
        assert!(
            batch.is_empty(),
            "a too-slow connection's backlog is dropped"
        );
        assert_eq!(outbox.push(frame("y")), Err(Closed));
    }

    #[tokio::test]
    async fn byte_bound_counts_too() {
        let outbox = Outbox::new(100, 10);
        outbox.push(frame("12345")).unwrap();
        outbox.push(frame("12345")).unwrap();
        assert_eq!(outbox.push(frame("1")), Err(Closed));
    }

    #[tokio::test]
    async fn push_wait_waits_for_the_send_task() {
        let outbox = std::sync::Arc::new(Outbox::new(4, 1024));
        outbox.push(frame("a")).unwrap();
        outbox.push(frame("b")).unwrap();
        let waiting = {
            let outbox = outbox.clone();
            tokio::spawn(async move { outbox.push_wait(frame("c")).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut batch = Vec::new();
        assert_eq!(outbox.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        waiting.await.unwrap().unwrap();
        batch.clear();
        outbox.next_batch(&mut batch).await;
        assert_eq!(batch, vec![frame("c")]);
    }
}
