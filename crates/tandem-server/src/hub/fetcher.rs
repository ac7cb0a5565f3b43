//! The fetcher: one task that reads from the store the messages feeds have
//! heard of but not received (a gap between local commits, a signal from
//! another process, a poll).
//!
//! Feeds queue up while a read is under way, and the next read serves all
//! of them in one query, so under load the number of queries grows with
//! time, not with the number of threads or processes.

use std::collections::HashMap;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use tandem_model::{Message, ThreadId};

use super::thread_feed::{EncodedMessage, FeedState, ThreadFeed};
use super::{Hub, lock};

/// Most rows one read brings back; feeds left behind go into the next read.
const FETCH_ROWS: u32 = 2_000;

impl Hub {
    /// Queues a feed for the fetcher, unless it is queued already or misses
    /// nothing.
    pub(super) fn ensure_fetch(&self, feed: &Arc<ThreadFeed>, state: &mut FeedState) {
        if state.fetching || !state.behind() {
            return;
        }
        state.fetching = true;
        lock(&self.inner.fetch_queue).push(feed.clone());
        self.inner.fetch_ready.notify_one();
    }

    /// The fetcher's loop, until shutdown.
    pub(super) async fn run_fetcher(self) {
        let mut failures = 0u32;
        loop {
            tokio::select! {
                () = self.inner.fetch_ready.notified() => {}
                () = self.inner.shutdown.cancelled() => return,
            }
            loop {
                let feeds = mem::take(&mut *lock(&self.inner.fetch_queue));
                if feeds.is_empty() {
                    break;
                }
                if self.fetch(feeds).await {
                    failures = 0;
                    continue;
                }
                failures += 1;
                let backoff = Duration::from_millis(100 << failures.min(6));
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = self.inner.shutdown.cancelled() => return,
                }
            }
        }
    }

    /// Reads what these feeds miss and fans it out; feeds still behind go
    /// back in the queue. False when the store failed (all go back).
    async fn fetch(&self, feeds: Vec<Arc<ThreadFeed>>) -> bool {
        // What each feed has, and what it has heard of, as the read starts.
        let mut asks = Vec::with_capacity(feeds.len());
        for feed in feeds {
            let mut state = feed.lock();
            match state.delivered {
                Some(delivered) if state.behind() => {
                    let wanted = state.wanted;
                    drop(state);
                    asks.push((feed, delivered, wanted));
                }
                _ => state.fetching = false,
            }
        }
        if asks.is_empty() {
            return true;
        }
        let after: Vec<(ThreadId, i64)> = asks
            .iter()
            .map(|(feed, delivered, _)| (feed.thread_id, *delivered))
            .collect();
        let rows = match self.inner.store.messages_after(&after, FETCH_ROWS).await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "hub: reading missed messages failed");
                let mut queue = lock(&self.inner.fetch_queue);
                queue.extend(asks.into_iter().map(|(feed, _, _)| feed));
                return false;
            }
        };
        let mut by_thread: HashMap<ThreadId, Vec<Message>> = HashMap::new();
        for message in rows {
            by_thread
                .entry(message.thread_id)
                .or_default()
                .push(message);
        }
        let mut again = Vec::new();
        for (feed, _, wanted) in asks {
            let encoded: Vec<EncodedMessage> = by_thread
                .remove(&feed.thread_id)
                .unwrap_or_default()
                .iter()
                .map(EncodedMessage::new)
                .collect();
            let mut state = feed.lock();
            let mut progressed = false;
            for message in &encoded {
                progressed |= state.deliver(message);
            }
            if !state.behind() {
                state.fetching = false;
            } else if !progressed && state.wanted == wanted {
                // The rows are not there and nothing new was heard of
                // meanwhile: wait for the next signal or poll.
                state.wanted = state.delivered.unwrap_or(0);
                state.fetching = false;
            } else {
                drop(state);
                again.push(feed);
            }
        }
        if !again.is_empty() {
            lock(&self.inner.fetch_queue).extend(again);
        }
        true
    }
}
