//! The push hub: every change, to every subscriber, in order, once.
//!
//! The store is the record and the hub only a fast path to it. The hub
//! follows the store's change stream ([`committed`]): every commit of this
//! process reaches it after the commit, whoever made it; on PostgreSQL other
//! processes learn of it from a small signal the store sends, and re-read
//! the rows. Each thread's [`thread_feed`] fans messages out in `seq`
//! order and reads from the store whatever it has not seen, so a subscriber
//! gets every message exactly once whichever way it arrived.
//!
//! - [`committed`]: the hub's sink on the store's change stream.
//! - [`protocol`]: the frames and close codes.
//! - [`outbox`]: each connection's bounded queue; a subscriber that falls
//!   behind is closed, never waited for.
//! - [`thread_feed`]: one thread's subscribers and its delivered `seq`.
//! - [`fetcher`]: reads from the store what feeds have missed, many threads
//!   per query.
//! - [`subscriptions`]: `impl Hub` for what a connection asks: subscribe
//!   (replay, then live), unsubscribe, typing, presence.
//! - [`workflow_feed`]: subscribers of `workflow:<id>`: the run's state,
//!   then its changes.
//! - [`signals`]: the PostgreSQL listener and safety-net poll that keep
//!   several processes in step.

mod committed;
mod fetcher;
pub mod outbox;
pub mod protocol;
mod signals;
pub mod subscriptions;
pub mod thread_feed;
pub mod workflow_feed;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tandem_model::policy::DeskPolicy;
use tandem_model::{InboxItem, Message, MessageId, RunId, Thread, ThreadId, TokenId};
use tandem_store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::HubConfig;
use crate::http::metrics::Metrics;
use outbox::Outbox;
use protocol::ServerFrame;
use thread_feed::{EncodedMessage, ThreadFeed};
use workflow_feed::RunFeed;

/// Rows read from the store at a time when a subscriber catches up.
const FETCH_PAGE: u32 = 500;

/// One WebSocket connection, unique in this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// The hub's handle: cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    config: HubConfig,
    metrics: Arc<Metrics>,
    next_conn: AtomicU64,
    threads: Mutex<HashMap<ThreadId, Arc<ThreadFeed>>>,
    inbox: Mutex<InboxFeed>,
    /// Subscribers of `workflow:<id>`, by run.
    runs: Mutex<HashMap<RunId, RunFeed>>,
    /// Called when another process signals a workflow change, so that this
    /// process's engine looks for runs that became due (set by `serve`).
    workflow_waker: Mutex<Option<WorkflowWaker>>,
    remote_presence: Mutex<HashMap<ThreadId, RemotePresence>>,
    connections: Mutex<HashMap<TokenId, usize>>,
    /// Feeds waiting for the fetcher, and its wake-up.
    fetch_queue: Mutex<Vec<Arc<ThreadFeed>>>,
    fetch_ready: tokio::sync::Notify,
    /// Changed inbox items, announced in order with their context by one
    /// task (set by `start`).
    inbox_changes: Mutex<Option<tokio::sync::mpsc::UnboundedSender<InboxItem>>>,
    /// Called when an item is waiting for an agent (set by `serve`: the
    /// desk's assignment pass).
    desk_waker: Mutex<Option<WorkflowWaker>>,
    /// Streamed AI text for the other processes, sent in order by one task
    /// (PostgreSQL only; set by `start`).
    delta_signals: Mutex<Option<tokio::sync::mpsc::UnboundedSender<signals::Signal>>>,
    /// Connections, fetches and the signal listener; joined at shutdown.
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

type WorkflowWaker = Arc<dyn Fn() + Send + Sync>;

/// Agents looking at one thread from other processes: process → (names,
/// when that process last said so).
type RemotePresence = HashMap<String, (Vec<String>, Instant)>;

/// Subscribers of the `inbox` topic.
#[derive(Default)]
struct InboxFeed {
    /// Counts changes, so a subscriber's snapshot can tell whether it missed one.
    version: u64,
    subscribers: Vec<InboxSubscriber>,
    /// The state of each item last sent (its `updated_at`), lately, so that
    /// the PostgreSQL poll sends only what a lost signal kept from here.
    sent: HashMap<tandem_model::InboxItemId, chrono::DateTime<chrono::Utc>>,
}

struct InboxSubscriber {
    conn: ConnId,
    outbox: Arc<Outbox>,
    live: bool,
}

/// A connection counted against its token's limit until dropped.
pub struct Admission {
    hub: Hub,
    token: TokenId,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let mut connections = lock(&self.hub.inner.connections);
        if let Some(count) = connections.get_mut(&self.token) {
            *count -= 1;
            if *count == 0 {
                connections.remove(&self.token);
            }
        }
        drop(connections);
        self.hub.inner.metrics.ws_disconnected();
    }
}

/// Locks a hub mutex. None is held across an `.await`, and a panic while
/// holding one cannot leave its data invalid.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    pub fn new(store: Store, config: HubConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                metrics,
                next_conn: AtomicU64::new(1),
                threads: Mutex::default(),
                inbox: Mutex::default(),
                runs: Mutex::default(),
                workflow_waker: Mutex::default(),
                remote_presence: Mutex::default(),
                connections: Mutex::default(),
                fetch_queue: Mutex::default(),
                fetch_ready: tokio::sync::Notify::new(),
                inbox_changes: Mutex::default(),
                desk_waker: Mutex::default(),
                delta_signals: Mutex::default(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Starts the background work: following the store's change stream, the
    /// fetcher that reads what feeds missed and, on PostgreSQL, listening
    /// for other processes' commits (the store signals this one's). Call
    /// once, inside the runtime.
    pub fn start(&self) {
        self.inner.tasks.spawn(self.clone().run_fetcher());
        let (sender, changes) = tokio::sync::mpsc::unbounded_channel();
        *lock(&self.inner.inbox_changes) = Some(sender);
        self.inner.tasks.spawn(self.clone().announce_inbox(changes));
        if self.inner.store.kind() == tandem_store::backend::BackendKind::Postgres {
            let hub = self.clone();
            self.inner.tasks.spawn(signals::run(hub));
            let (sender, mut deltas) = tokio::sync::mpsc::unbounded_channel();
            *lock(&self.inner.delta_signals) = Some(sender);
            let hub = self.clone();
            self.inner.tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = hub.stopping() => break,
                        next = deltas.recv() => match next {
                            Some(signal) => hub.signal(signal).await,
                            None => break,
                        },
                    }
                }
            });
        }
        self.follow_changes();
    }

    /// Calls `wake` whenever another process signals that a workflow run
    /// was created or changed status or wake-up time (PostgreSQL only), so
    /// that this process's engine can take runs that became due at once.
    pub fn on_workflow_signal(&self, wake: impl Fn() + Send + Sync + 'static) {
        *lock(&self.inner.workflow_waker) = Some(Arc::new(wake));
    }

    /// Tells this process's engine that a run may have become due.
    fn wake_workflows(&self) {
        let waker = lock(&self.inner.workflow_waker).clone();
        if let Some(wake) = waker {
            wake();
        }
    }

    /// Calls `wake` whenever another process signals that an item is
    /// waiting for an agent (PostgreSQL only); this process's own items
    /// reach the desk on the change stream.
    pub fn on_waiting_item(&self, wake: impl Fn() + Send + Sync + 'static) {
        *lock(&self.inner.desk_waker) = Some(Arc::new(wake));
    }

    /// Lets go of what the hub was handed at start: the wakers (the
    /// workflow waker holds the engine, which holds the hub) and the
    /// channels of its tasks. [`Hub::shutdown`] does it first; a runtime
    /// dropped without a shutdown (a test's, say) must do it too, or the
    /// hub, the engine and their store's connections are never freed.
    pub fn detach(&self) {
        lock(&self.inner.workflow_waker).take();
        lock(&self.inner.desk_waker).take();
        lock(&self.inner.inbox_changes).take();
        lock(&self.inner.delta_signals).take();
    }

    /// Closes every connection (1001) and waits for the hub's tasks to end.
    pub async fn shutdown(&self) {
        self.detach();
        self.inner.shutdown.cancel();
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Resolves when the hub is shutting down.
    pub fn stopping(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.inner.shutdown.cancelled()
    }

    pub fn is_stopping(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Runs a connection's task so that shutdown waits for it.
    pub fn track<F>(&self, task: F) -> tokio_util::task::task_tracker::TrackedFuture<F>
    where
        F: std::future::Future,
    {
        self.inner.tasks.track_future(task)
    }

    /// Counts a new connection of `token`, or `None` when it already holds
    /// as many as allowed.
    pub fn admit(&self, token: TokenId) -> Option<Admission> {
        let mut connections = lock(&self.inner.connections);
        let count = connections.entry(token).or_insert(0);
        if *count >= self.inner.config.max_connections_per_token {
            return None;
        }
        *count += 1;
        drop(connections);
        self.inner.metrics.ws_connected();
        Some(Admission {
            hub: self.clone(),
            token,
        })
    }

    /// A fresh connection id and its outbound queue.
    pub fn new_connection(&self) -> (ConnId, Arc<Outbox>) {
        let id = ConnId(self.inner.next_conn.fetch_add(1, Ordering::Relaxed));
        let outbox = Outbox::new(
            self.inner.config.queue_frames,
            self.inner.config.queue_bytes,
        );
        (id, Arc::new(outbox))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// A message was committed: fan it out to its thread's subscribers.
    fn publish_message(&self, message: &Message) {
        let Some(feed) = self.feed(message.thread_id) else {
            return;
        };
        let encoded = EncodedMessage::new(message);
        let mut state = feed.lock();
        state.wanted = state.wanted.max(message.seq);
        if !state.deliver(&encoded) {
            self.ensure_fetch(&feed, &mut state);
        }
    }

    /// AI text of the message `message_id` as it streams: to this
    /// process's subscribers of the thread, customers included, and to the
    /// other processes' (PostgreSQL). The reply path streams only a reply
    /// that will be published as written.
    pub fn publish_delta(
        &self,
        thread_id: ThreadId,
        message_id: MessageId,
        text: &str,
        reset: bool,
    ) {
        self.deliver_delta(thread_id, message_id, text, reset);
        if let Some(sender) = lock(&self.inner.delta_signals).as_ref() {
            let _ = sender.send(signals::Signal::delta(
                thread_id,
                signals::DeltaSignal {
                    message_id,
                    text: text.to_owned(),
                    reset,
                },
            ));
        }
    }

    fn deliver_delta(&self, thread_id: ThreadId, message_id: MessageId, text: &str, reset: bool) {
        let Some(feed) = self.feed(thread_id) else {
            return;
        };
        let frame = Utf8Bytes::from(
            ServerFrame::Delta {
                thread_id,
                message_id,
                text,
                reset,
            }
            .encode(),
        );
        feed.lock().broadcast(&frame, true, None);
    }

    /// A thread's status, assignment or title changed.
    fn publish_thread(&self, thread: &Thread) {
        let frame = Utf8Bytes::from(ServerFrame::Thread { thread }.encode());
        if let Some(feed) = self.feed(thread.id) {
            feed.lock().broadcast(&frame, true, None);
        }
        self.to_inbox(&frame);
    }

    /// Tells the desk that an item another process changed waits for an
    /// agent.
    fn wake_desk(&self) {
        let waker = lock(&self.inner.desk_waker).clone();
        if let Some(wake) = waker {
            wake();
        }
    }

    /// An inbox item opened or changed: pushed on `inbox` with its context
    /// (see [`tandem_model::InboxView`]), in the order of the calls.
    fn publish_inbox(&self, item: &InboxItem) {
        {
            let mut inbox = lock(&self.inner.inbox);
            if inbox.subscribers.is_empty() {
                return;
            }
            if self.inner.store.kind() == tandem_store::backend::BackendKind::Postgres {
                inbox.sent.insert(item.id, item.updated_at);
            }
        }
        let sender = lock(&self.inner.inbox_changes).clone();
        match sender {
            Some(sender) if sender.send(item.clone()).is_ok() => {}
            // Not started, or stopping: the item alone, at once.
            _ => {
                let view = tandem_model::InboxView::bare(item.clone());
                self.to_inbox(&Utf8Bytes::from(
                    ServerFrame::Inbox { item: &view }.encode(),
                ));
            }
        }
    }

    /// Announces changed items, in order: each batch's context is read
    /// once, and each frame encoded once for every subscriber.
    async fn announce_inbox(self, mut changes: tokio::sync::mpsc::UnboundedReceiver<InboxItem>) {
        const BATCH: usize = 256;
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            tokio::select! {
                _ = self.stopping() => break,
                n = changes.recv_many(&mut batch, BATCH) => if n == 0 { break },
            }
            let items = std::mem::take(&mut batch);
            let views = self.inbox_context(items).await;
            for view in &views {
                self.to_inbox(&Utf8Bytes::from(ServerFrame::Inbox { item: view }.encode()));
            }
        }
    }

    /// Items with their thread and latest messages. Without subscribers
    /// nobody reads them, and a failed read sends the items alone rather
    /// than nothing.
    pub(crate) async fn inbox_context(
        &self,
        items: Vec<InboxItem>,
    ) -> Vec<tandem_model::InboxView> {
        let bare = |items: Vec<InboxItem>| {
            items
                .into_iter()
                .map(tandem_model::InboxView::bare)
                .collect()
        };
        if lock(&self.inner.inbox).subscribers.is_empty() {
            return bare(items);
        }
        let store = &self.inner.store;
        let history = match store.policy().await {
            Ok(policy) => policy.desk.item_history,
            Err(_) => DeskPolicy::default().item_history,
        };
        match store.inbox_views(items.clone(), history).await {
            Ok(views) => views,
            Err(error) => {
                tracing::warn!(%error, "hub: reading inbox items' context failed");
                bare(items)
            }
        }
    }

    /// Sends a change to every live `inbox` subscriber, counting it so that
    /// a snapshot being taken can tell it missed one.
    fn to_inbox(&self, frame: &Utf8Bytes) {
        let mut inbox = lock(&self.inner.inbox);
        inbox.version += 1;
        for subscriber in inbox.subscribers.iter().filter(|s| s.live) {
            let _ = subscriber.outbox.push(frame.clone());
        }
    }

    fn feed(&self, thread_id: ThreadId) -> Option<Arc<ThreadFeed>> {
        lock(&self.inner.threads).get(&thread_id).cloned()
    }
}
