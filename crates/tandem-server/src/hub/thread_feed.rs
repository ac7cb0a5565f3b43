//! One thread's feed: its subscribers on this process, and the last `seq`
//! fanned out to them.
//!
//! Messages reach the feed in any order (a local commit, a signal from
//! another process, a poll), but leave it in `seq` order with no gap: a
//! message that is next is fanned out at once; anything that leaves a gap
//! makes the feed read the missing rows from the store, which is the record.
//! A subscriber joins in two steps (see [`Hub::subscribe_thread`]): it is
//! registered first, catches up from the store, and only then goes live, under
//! the feed's lock, at exactly the `seq` the feed has delivered.
//!
//! [`Hub::subscribe_thread`]: super::Hub::subscribe_thread

use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use tandem_model::{Message, MessageStatus, ThreadId, Visibility};

use super::ConnId;
use super::outbox::Outbox;
use super::protocol::ServerFrame;

/// A message as it goes out: encoded once for every subscriber.
pub struct EncodedMessage {
    pub seq: i64,
    /// The frame staff get.
    pub frame: Utf8Bytes,
    /// The frame customers get when it differs (staff-only metadata left
    /// out); none when they get `frame`.
    pub customer_frame: Option<Utf8Bytes>,
    /// Whether customers see it (public and published).
    pub public: bool,
}

impl EncodedMessage {
    pub fn new(message: &Message) -> Self {
        let public =
            message.visibility == Visibility::Public && message.status == MessageStatus::Published;
        let customer_frame = public
            .then(|| message.for_customer())
            .flatten()
            .map(|view| encode(&view).into());
        Self {
            seq: message.seq,
            frame: encode(message).into(),
            customer_frame,
            public,
        }
    }

    /// The frame for a subscriber; none when a customer may not see it.
    pub fn frame_for(&self, customer: bool) -> Option<&Utf8Bytes> {
        match (customer, self.public) {
            (false, _) => Some(&self.frame),
            (true, false) => None,
            (true, true) => Some(self.customer_frame.as_ref().unwrap_or(&self.frame)),
        }
    }
}

fn encode(message: &Message) -> String {
    ServerFrame::Message {
        thread_id: message.thread_id,
        seq: message.seq,
        message,
    }
    .encode()
}

/// One subscription of one connection to this thread.
pub struct FeedSubscriber {
    pub conn: ConnId,
    pub outbox: Arc<Outbox>,
    /// Customers get public, published messages only.
    pub customer: bool,
    /// The agent's name, for presence; none for customers and admin.
    pub agent: Option<String>,
    /// The last seq this subscriber has been given (or skipped).
    pub sent: i64,
    /// False while it catches up from the store.
    pub live: bool,
}

#[derive(Default)]
pub struct FeedState {
    /// The last seq fanned out; unknown until the first subscriber has read
    /// the thread.
    pub delivered: Option<i64>,
    /// The highest seq known to exist.
    pub wanted: i64,
    /// A task is reading missing rows from the store.
    pub fetching: bool,
    pub subscribers: Vec<FeedSubscriber>,
}

impl FeedState {
    /// Hands a message to every live subscriber that has not had it, if it
    /// is the next one; returns whether it was.
    pub fn deliver(&mut self, message: &EncodedMessage) -> bool {
        match self.delivered {
            Some(delivered) if message.seq == delivered + 1 => {}
            _ => return false,
        }
        self.delivered = Some(message.seq);
        self.wanted = self.wanted.max(message.seq);
        for subscriber in &mut self.subscribers {
            if !subscriber.live || message.seq <= subscriber.sent {
                continue;
            }
            subscriber.sent = message.seq;
            let Some(frame) = message.frame_for(subscriber.customer) else {
                continue;
            };
            // A full queue closes that connection; the others go on.
            let _ = subscriber.outbox.push(frame.clone());
        }
        true
    }

    /// Whether rows between `delivered` and `wanted` must be read.
    pub fn behind(&self) -> bool {
        self.delivered.is_some_and(|d| d < self.wanted)
    }

    /// Sends a frame to every live subscriber (customers only if
    /// `to_customers`), except the connection `except`.
    pub fn broadcast(&self, frame: &Utf8Bytes, to_customers: bool, except: Option<ConnId>) {
        for subscriber in &self.subscribers {
            if !subscriber.live
                || (subscriber.customer && !to_customers)
                || Some(subscriber.conn) == except
            {
                continue;
            }
            let _ = subscriber.outbox.push(frame.clone());
        }
    }

    /// The agents looking at the thread from this process, sorted, once each.
    pub fn local_agents(&self) -> Vec<String> {
        let mut agents: Vec<String> = self
            .subscribers
            .iter()
            .filter_map(|s| s.agent.clone())
            .collect();
        agents.sort();
        agents.dedup();
        agents
    }
}

/// A thread with subscribers on this process.
pub struct ThreadFeed {
    pub thread_id: ThreadId,
    state: Mutex<FeedState>,
}

impl ThreadFeed {
    pub fn new(thread_id: ThreadId) -> Self {
        Self {
            thread_id,
            state: Mutex::new(FeedState::default()),
        }
    }

    /// The feed's state. Never held across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(seq: i64, public: bool) -> EncodedMessage {
        EncodedMessage {
            customer_frame: None,
            seq,
            frame: Utf8Bytes::from(format!("{seq}")),
            public,
        }
    }

    fn subscriber(conn: u64, customer: bool, outbox: &Arc<Outbox>) -> FeedSubscriber {
        FeedSubscriber {
            conn: ConnId(conn),
            outbox: outbox.clone(),
            customer,
            agent: None,
            sent: 0,
            live: true,
        }
    }

    async fn received(outbox: &Outbox) -> Vec<String> {
        let mut batch = Vec::new();
        outbox.push(Utf8Bytes::from_static("end")).unwrap();
        outbox.next_batch(&mut batch).await;
        batch.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[tokio::test]
    async fn delivers_in_order_and_only_the_next_seq() {
        let staff = Arc::new(Outbox::new(100, 1 << 20));
        let customer = Arc::new(Outbox::new(100, 1 << 20));
        let mut state = FeedState {
            delivered: Some(0),
            ..FeedState::default()
        };
        state.subscribers.push(subscriber(1, false, &staff));
        state.subscribers.push(subscriber(2, true, &customer));
        assert!(state.deliver(&encoded(1, true)));
        assert!(!state.deliver(&encoded(3, true)), "a gap is not delivered");
        assert!(state.deliver(&encoded(2, false)));
        assert!(!state.deliver(&encoded(2, false)), "nor a duplicate");
        assert!(state.deliver(&encoded(3, true)));
        assert_eq!(received(&staff).await, ["1", "2", "3", "end"]);
        assert_eq!(
            received(&customer).await,
            ["1", "3", "end"],
            "customers skip internal messages"
        );
    }

    #[tokio::test]
    async fn a_catching_up_subscriber_gets_nothing_until_live() {
        let outbox = Arc::new(Outbox::new(100, 1 << 20));
        let mut state = FeedState {
            delivered: Some(5),
            ..FeedState::default()
        };
        let mut joining = subscriber(1, false, &outbox);
        joining.live = false;
        state.subscribers.push(joining);
        assert!(state.deliver(&encoded(6, true)));
        state.subscribers[0].live = true;
        state.subscribers[0].sent = 6;
        assert!(state.deliver(&encoded(7, true)));
        assert_eq!(received(&outbox).await, ["7", "end"]);
    }
}
