//! What a connection asks of the hub: subscribe, unsubscribe, typing, and
//! the presence its subscriptions imply.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tandem_model::{MessageFilter, ThreadId};

use super::outbox::{Closed, Outbox};
use super::protocol::{FrameError, ServerFrame, Topic, Typist};
use super::signals::Signal;
use super::thread_feed::{EncodedMessage, FeedSubscriber, ThreadFeed};
use super::{ConnId, FETCH_PAGE, Hub, InboxSubscriber, lock};
use crate::http::Principal;

/// How long another process's word on who looks at a thread holds; each
/// process repeats it well within this time.
pub(super) const REMOTE_PRESENCE_TTL: Duration = Duration::from_secs(75);

/// Most open inbox items sent when subscribing to `inbox`.
const INBOX_SNAPSHOT: u32 = 500;

/// One connection, as the hub sees it.
pub struct Peer {
    pub id: ConnId,
    pub outbox: Arc<Outbox>,
    pub principal: Principal,
}

impl Peer {
    fn agent_name(&self) -> Option<String> {
        match &self.principal {
            Principal::Agent { name, .. } => Some(name.clone()),
            _ => None,
        }
    }

    fn typist(&self) -> Typist {
        match &self.principal {
            Principal::Admin { .. } => Typist {
                kind: "admin".into(),
                name: None,
            },
            Principal::Agent { name, .. } => Typist {
                kind: "human".into(),
                name: Some(name.clone()),
            },
            Principal::Customer { customer_id, .. } => Typist {
                kind: "customer".into(),
                name: Some(customer_id.clone()),
            },
        }
    }

    /// Queues a frame this connection asked for, waiting for room.
    pub async fn send(&self, frame: impl Into<Utf8Bytes>) -> Result<(), FrameError> {
        self.outbox
            .push_wait(frame.into())
            .await
            .map_err(|Closed| FrameError::closed())
    }
}

impl Hub {
    /// Subscribes `peer` to a thread: answers `subscribed`, replays the
    /// stored messages after `after_seq`, then goes live with no gap and no
    /// duplicate, whatever is committed meanwhile.
    pub async fn subscribe_thread(
        &self,
        peer: &Peer,
        thread_id: ThreadId,
        after_seq: Option<i64>,
    ) -> Result<(), FrameError> {
        let feed = self.register(peer, thread_id);
        let result = self.catch_up(peer, &feed, after_seq).await;
        match result {
            Ok(()) => {
                if peer.agent_name().is_some() {
                    self.presence_changed(&feed);
                }
            }
            Err(_) => {
                self.unregister(peer.id, thread_id);
            }
        }
        result
    }

    /// Adds `peer` to the thread's feed (created if need be), not yet live:
    /// from here on, every commit is either in what it reads from the store
    /// or fanned out after it goes live.
    fn register(&self, peer: &Peer, thread_id: ThreadId) -> Arc<ThreadFeed> {
        let mut threads = lock(&self.inner.threads);
        let feed = threads
            .entry(thread_id)
            .or_insert_with(|| Arc::new(ThreadFeed::new(thread_id)))
            .clone();
        feed.lock().subscribers.push(FeedSubscriber {
            conn: peer.id,
            outbox: peer.outbox.clone(),
            customer: peer.principal.customer_scope().is_some(),
            agent: peer.agent_name(),
            sent: 0,
            live: false,
        });
        feed
    }

    async fn catch_up(
        &self,
        peer: &Peer,
        feed: &Arc<ThreadFeed>,
        after_seq: Option<i64>,
    ) -> Result<(), FrameError> {
        let store = &self.inner.store;
        let thread = store
            .get_thread(feed.thread_id, peer.principal.customer_scope())
            .await?
            .ok_or_else(FrameError::not_found)?;
        let last_seq = thread.last_seq;
        {
            let mut state = feed.lock();
            state.wanted = state.wanted.max(last_seq);
            if state.delivered.is_none() {
                state.delivered = Some(last_seq);
            }
            self.ensure_fetch(feed, &mut state);
        }
        let replay_limit = i64::from(self.inner.config.replay_limit);
        let (mut cursor, recovered) = match after_seq {
            None => (last_seq, true),
            Some(after) if after >= last_seq => (last_seq, true),
            Some(after) if last_seq - after.max(0) > replay_limit => (last_seq, false),
            Some(after) => (after.max(0), true),
        };
        peer.send(
            ServerFrame::Subscribed {
                topic: Topic::Thread(feed.thread_id).to_string(),
                last_seq: Some(last_seq),
                recovered: Some(recovered),
                items: None,
            }
            .encode(),
        )
        .await?;

        let customer = peer.principal.customer_scope().is_some();
        let mut target = last_seq;
        loop {
            while cursor < target {
                let filter = MessageFilter {
                    after_seq: cursor,
                    limit: FETCH_PAGE,
                    customer_view: false,
                };
                let rows = store.list_messages(feed.thread_id, &filter).await?;
                if rows.is_empty() {
                    // Committed seqs have no holes; should the rows vanish,
                    // the live stream still goes on from the target.
                    cursor = target;
                    break;
                }
                for message in rows.iter().take_while(|m| m.seq <= target) {
                    let encoded = EncodedMessage::new(message);
                    if let Some(frame) = encoded.frame_for(customer) {
                        peer.send(frame.clone()).await?;
                    }
                    cursor = message.seq;
                }
                if rows.last().is_some_and(|m| m.seq >= target) {
                    cursor = target;
                }
            }
            let mut state = feed.lock();
            let delivered = state.delivered.unwrap_or(cursor);
            if delivered <= cursor {
                if let Some(me) = state.subscribers.iter_mut().find(|s| s.conn == peer.id) {
                    me.sent = cursor;
                    me.live = true;
                }
                return Ok(());
            }
            // Messages were fanned out while this subscriber read: read them too.
            target = delivered;
        }
    }

    /// Removes `conn` from a thread's feed, and the feed if it was the last.
    fn unregister(&self, conn: ConnId, thread_id: ThreadId) -> Option<Arc<ThreadFeed>> {
        let mut threads = lock(&self.inner.threads);
        let feed = threads.get(&thread_id)?.clone();
        let mut state = feed.lock();
        state.subscribers.retain(|s| s.conn != conn);
        if state.subscribers.is_empty() {
            threads.remove(&thread_id);
        }
        drop(state);
        Some(feed)
    }

    /// Subscribes `peer` (staff only) to `inbox`: every pending item, then
    /// every change.
    pub async fn subscribe_inbox(&self, peer: &Peer) -> Result<(), FrameError> {
        if peer.principal.customer_scope().is_some() {
            return Err(FrameError::new(
                "forbidden",
                "customer tokens may not subscribe to the inbox",
            ));
        }
        let mut seen = {
            let mut inbox = lock(&self.inner.inbox);
            inbox.subscribers.push(InboxSubscriber {
                conn: peer.id,
                outbox: peer.outbox.clone(),
                live: false,
            });
            inbox.version
        };
        // Retry while items change under the snapshot, so that no change
        // arrives before the state it changes; after a few tries the snapshot
        // goes out anyway (items carry `updated_at`).
        for attempt in 0.. {
            let items = match self
                .inner
                .store
                .list_pending_inbox_items(INBOX_SNAPSHOT)
                .await
            {
                Ok(items) => items,
                Err(error) => {
                    self.unsubscribe_inbox(peer.id);
                    return Err(error.into());
                }
            };
            let items = self.inbox_context(items).await;
            let mut inbox = lock(&self.inner.inbox);
            if inbox.version != seen && attempt < 5 {
                seen = inbox.version;
                continue;
            }
            let frames = std::iter::once(
                ServerFrame::Subscribed {
                    topic: Topic::Inbox.to_string(),
                    last_seq: None,
                    recovered: None,
                    items: Some(items.len()),
                }
                .encode(),
            )
            .chain(
                items
                    .iter()
                    .map(|item| ServerFrame::Inbox { item }.encode()),
            );
            for frame in frames {
                let _ = peer.outbox.push(frame.into());
            }
            if let Some(me) = inbox.subscribers.iter_mut().find(|s| s.conn == peer.id) {
                me.live = true;
            }
            break;
        }
        Ok(())
    }

    fn unsubscribe_inbox(&self, conn: ConnId) {
        lock(&self.inner.inbox)
            .subscribers
            .retain(|s| s.conn != conn);
    }

    /// Ends one subscription of `conn`.
    pub fn unsubscribe(&self, conn: ConnId, topic: Topic) {
        match topic {
            Topic::Inbox => self.unsubscribe_inbox(conn),
            Topic::Workflow(run_id) => self.unsubscribe_workflow(conn, run_id),
            Topic::Thread(thread_id) => {
                if let Some(feed) = self.unregister(conn, thread_id) {
                    self.presence_changed(&feed);
                }
            }
        }
    }

    /// Tells the thread's other subscribers that `peer` is typing.
    pub async fn typing(&self, peer: &Peer, thread_id: ThreadId) {
        let who = peer.typist();
        let frame = Utf8Bytes::from(
            ServerFrame::Typing {
                thread_id,
                who: &who,
            }
            .encode(),
        );
        if let Some(feed) = self.feed(thread_id) {
            feed.lock().broadcast(&frame, true, Some(peer.id));
        }
        self.signal(Signal::typing(thread_id, who)).await;
    }

    /// Another process says someone is typing.
    pub(super) fn remote_typing(&self, thread_id: ThreadId, who: &Typist) {
        if let Some(feed) = self.feed(thread_id) {
            let frame = Utf8Bytes::from(ServerFrame::Typing { thread_id, who }.encode());
            feed.lock().broadcast(&frame, true, None);
        }
    }

    /// The agents looking at a thread changed here: tell its staff
    /// subscribers, and the other processes.
    fn presence_changed(&self, feed: &Arc<ThreadFeed>) {
        let local = feed.lock().local_agents();
        self.send_presence(feed);
        let hub = self.clone();
        let signal = Signal::presence(feed.thread_id, local);
        self.inner
            .tasks
            .spawn(async move { hub.signal(signal).await });
    }

    /// Another process says which agents look at a thread from there.
    pub(super) fn remote_presence(&self, thread_id: ThreadId, node: String, agents: Vec<String>) {
        {
            let mut remote = lock(&self.inner.remote_presence);
            let nodes = remote.entry(thread_id).or_default();
            if agents.is_empty() {
                nodes.remove(&node);
            } else {
                nodes.insert(node, (agents, Instant::now()));
            }
            if nodes.is_empty() {
                remote.remove(&thread_id);
            }
        }
        if let Some(feed) = self.feed(thread_id) {
            self.send_presence(&feed);
        }
    }

    /// Sends the thread's presence (this process's agents and the other
    /// processes') to its staff subscribers.
    fn send_presence(&self, feed: &Arc<ThreadFeed>) {
        let mut agents = feed.lock().local_agents();
        if let Some(nodes) = lock(&self.inner.remote_presence).get(&feed.thread_id) {
            for (names, at) in nodes.values() {
                if at.elapsed() < REMOTE_PRESENCE_TTL {
                    agents.extend(names.iter().cloned());
                }
            }
        }
        agents.sort();
        agents.dedup();
        let frame = Utf8Bytes::from(
            ServerFrame::Presence {
                thread_id: feed.thread_id,
                agents: &agents,
            }
            .encode(),
        );
        feed.lock().broadcast(&frame, false, None);
    }

    /// Every thread with agents looking at it from here, and who they are.
    pub(super) fn local_presence(&self) -> HashMap<ThreadId, Vec<String>> {
        let feeds: Vec<_> = lock(&self.inner.threads).values().cloned().collect();
        feeds
            .into_iter()
            .filter_map(|feed| {
                let agents = feed.lock().local_agents();
                (!agents.is_empty()).then(|| (feed.thread_id, agents))
            })
            .collect()
    }

    /// Drops remote presence that its process stopped repeating.
    pub(super) fn expire_remote_presence(&self) {
        let expired: Vec<ThreadId> = {
            let mut remote = lock(&self.inner.remote_presence);
            let mut expired = Vec::new();
            remote.retain(|thread_id, nodes| {
                let before = nodes.len();
                nodes.retain(|_, (_, at)| at.elapsed() < REMOTE_PRESENCE_TTL);
                if nodes.len() != before {
                    expired.push(*thread_id);
                }
                !nodes.is_empty()
            });
            expired
        };
        for thread_id in expired {
            if let Some(feed) = self.feed(thread_id) {
                self.send_presence(&feed);
            }
        }
    }
}
