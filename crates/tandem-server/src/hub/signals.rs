//! Keeping several server processes in step on PostgreSQL.
//!
//! Each process's store tells the others what it committed, in batches
//! sent after the commits (see `tandem_store::queries::signals`); the hub
//! sends typing, presence and streamed text, which are never stored. A signal only says what changed: the hub re-reads the
//! rows, so a signal lost (the listener reconnecting, or a process killed
//! between its commit and its signal) loses nothing but time: after every
//! (re)connection, and every `poll_interval_secs` as a safety net, every
//! subscribed thread is checked against the table, and inbox items changed
//! since the last check are read again.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_model::ThreadId;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::protocol::Typist;
use super::{Hub, lock};

/// How often this process repeats who looks at which thread from here.
const PRESENCE_HEARTBEAT: Duration = Duration::from_secs(25);

/// Signals read but not yet acted on.
const SIGNAL_BACKLOG: usize = 8_192;

/// One signal on the channel. `node` is the sending process (its
/// `application_name`); a process ignores the signals of its own commits,
/// which it has published already.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Signal {
    kind: String,
    id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<i64>,
    #[serde(default)]
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    who: Option<Typist>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agents: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delta: Option<DeltaSignal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    commits: Option<tandem_store::Commits>,
}

impl Signal {
    pub(super) fn typing(thread_id: ThreadId, who: Typist) -> Self {
        Self {
            kind: "typing".into(),
            id: thread_id.0,
            seq: None,
            node: String::new(),
            who: Some(who),
            agents: None,
            delta: None,
            commits: None,
        }
    }

    pub(super) fn presence(thread_id: ThreadId, agents: Vec<String>) -> Self {
        Self {
            kind: "presence".into(),
            id: thread_id.0,
            seq: None,
            node: String::new(),
            who: None,
            agents: Some(agents),
            delta: None,
            commits: None,
        }
    }

    pub(super) fn delta(thread_id: ThreadId, delta: DeltaSignal) -> Self {
        Self {
            kind: "delta".into(),
            id: thread_id.0,
            seq: None,
            node: String::new(),
            who: None,
            agents: None,
            delta: Some(delta),
            commits: None,
        }
    }
}

/// Streamed AI text, for the subscribers of other processes.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct DeltaSignal {
    pub message_id: tandem_model::MessageId,
    pub text: String,
    #[serde(default)]
    pub reset: bool,
}

impl Hub {
    /// Sends an ephemeral signal to the other processes (PostgreSQL only).
    pub(super) async fn signal(&self, mut signal: Signal) {
        if self.inner.store.kind() != tandem_store::backend::BackendKind::Postgres {
            return;
        }
        signal.node = self.inner.store.node().to_owned();
        let payload = serde_json::to_string(&signal).unwrap_or_default();
        if let Err(error) = self.inner.store.send_signal(&payload).await {
            tracing::warn!(%error, "hub: sending a signal failed");
        }
    }

    /// Acts on one signal from the channel.
    async fn on_signal(&self, payload: &str) {
        let signal: Signal = match serde_json::from_str(payload) {
            Ok(signal) => signal,
            Err(error) => {
                tracing::warn!(%error, "hub: ignoring a malformed signal");
                return;
            }
        };
        if signal.node == self.inner.store.node() {
            return;
        }
        let thread_id = ThreadId(signal.id);
        match signal.kind.as_str() {
            "commits" => {
                if let Some(commits) = signal.commits {
                    self.on_commits(commits).await;
                }
            }
            "typing" => {
                if let Some(who) = &signal.who {
                    self.remote_typing(thread_id, who);
                }
            }
            "delta" => {
                if let Some(delta) = &signal.delta {
                    self.deliver_delta(thread_id, delta.message_id, &delta.text, delta.reset);
                }
            }
            "presence" => {
                self.remote_presence(thread_id, signal.node, signal.agents.unwrap_or_default())
            }
            other => tracing::debug!(kind = other, "hub: ignoring a signal of unknown kind"),
        }
    }

    /// Another process's commits: new messages are read by the feeds that
    /// miss them, changed rows are read again for whoever watches them.
    async fn on_commits(&self, commits: tandem_store::Commits) {
        for (thread, seq) in commits.messages {
            if let Some(feed) = self.feed(ThreadId(thread)) {
                let mut state = feed.lock();
                state.wanted = state.wanted.max(seq);
                self.ensure_fetch(&feed, &mut state);
            }
        }
        for thread in commits.threads {
            let thread_id = ThreadId(thread);
            if !self.watches_thread(thread_id) {
                continue;
            }
            match self.inner.store.get_thread(thread_id, None).await {
                Ok(Some(thread)) => self.publish_thread(&thread),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "hub: reading a changed thread failed"),
            }
        }
        for item in commits.items {
            self.reread_item(tandem_model::InboxItemId(item)).await;
        }
        if !commits.runs.is_empty() {
            // Another process's run may have become due here.
            self.wake_workflows();
        }
        for run in commits.runs {
            let run_id = tandem_model::RunId(run);
            if self.watches_run(run_id) {
                self.reread_run(run_id).await;
            }
        }
    }

    /// Reads an item another process changed, for this process's `inbox`
    /// subscribers and, when it waits for an agent, the desk.
    async fn reread_item(&self, id: tandem_model::InboxItemId) {
        match self.inner.store.get_inbox_item(id).await {
            Ok(Some(item)) => {
                if item.status == tandem_model::InboxStatus::Open {
                    self.wake_desk();
                }
                if !lock(&self.inner.inbox).subscribers.is_empty() {
                    self.publish_inbox(&item);
                }
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "hub: reading a changed item failed"),
        }
    }

    /// Whether anyone here would hear of a change to this thread.
    fn watches_thread(&self, thread_id: ThreadId) -> bool {
        lock(&self.inner.threads).contains_key(&thread_id)
            || !lock(&self.inner.inbox).subscribers.is_empty()
    }

    /// Checks every subscribed thread against the table, and reads whatever
    /// a feed has not delivered.
    async fn resync(&self) {
        let feeds: Vec<_> = lock(&self.inner.threads).values().cloned().collect();
        if feeds.is_empty() {
            return;
        }
        let ids: Vec<ThreadId> = feeds.iter().map(|f| f.thread_id).collect();
        let last_seqs = match self.inner.store.last_seqs(&ids).await {
            Ok(last_seqs) => last_seqs,
            Err(error) => {
                tracing::warn!(%error, "hub: checking subscribed threads failed");
                return;
            }
        };
        for (thread_id, last_seq) in last_seqs {
            if let Some(feed) = self.feed(thread_id) {
                let mut state = feed.lock();
                state.wanted = state.wanted.max(last_seq);
                self.ensure_fetch(&feed, &mut state);
            }
        }
    }

    /// Sends `inbox` subscribers the items changed lately (within
    /// `lookback` and a margin for clocks apart; the last hour after a
    /// reconnection) that this process has not sent: changes whose signal
    /// was lost.
    async fn resync_inbox(&self, lookback: Option<Duration>) {
        /// Clocks of the processes that stamp `updated_at` may be apart.
        const MARGIN: Duration = Duration::from_secs(2);
        /// Most items one look reads.
        const LIMIT: u32 = 5_000;
        if lock(&self.inner.inbox).subscribers.is_empty() {
            return;
        }
        let lookback = lookback.map_or(Duration::from_secs(3_600), |l| l + MARGIN);
        // On the store's clock, which stamps `updated_at`.
        let since = self.inner.store.now()
            - chrono::Duration::from_std(lookback).unwrap_or_else(|_| chrono::Duration::zero());
        let items = match self
            .inner
            .store
            .inbox_items_changed_since(since, LIMIT)
            .await
        {
            Ok(items) => items,
            Err(error) => {
                tracing::warn!(%error, "hub: checking changed inbox items failed");
                return;
            }
        };
        let missed: Vec<_> = {
            let mut inbox = lock(&self.inner.inbox);
            inbox.sent.retain(|_, at| *at >= since);
            items
                .into_iter()
                .filter(|item| inbox.sent.get(&item.id) != Some(&item.updated_at))
                .collect()
        };
        for item in &missed {
            self.publish_inbox(item);
        }
    }

    /// Reads a subscribed run and sends it if it changed.
    async fn reread_run(&self, run_id: tandem_model::RunId) {
        match self.inner.store.get_run(run_id).await {
            Ok(Some(run)) => self.publish_workflow_if_changed(&run),
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "hub: reading a changed workflow run failed"),
        }
    }

    /// Checks every subscribed run against the table: signals sent while
    /// nobody listened are lost, the rows are not.
    async fn resync_runs(&self) {
        for run_id in self.watched_runs() {
            self.reread_run(run_id).await;
        }
    }

    /// Tells the other processes again who looks at which thread from here.
    async fn repeat_presence(&self) {
        for (thread_id, agents) in self.local_presence() {
            self.signal(Signal::presence(thread_id, agents)).await;
        }
        self.expire_remote_presence();
    }
}

/// The listener loop: listen, resync, act on signals; on a lost connection,
/// listen again (with backoff) and resync.
pub(super) async fn run(hub: Hub) {
    let poll_every = Duration::from_secs(hub.inner.config.poll_interval_secs.max(1));
    let mut failures = 0u32;
    loop {
        let listener = tokio::select! {
            listener = hub.inner.store.listen_signals() => listener,
            _ = hub.inner.shutdown.cancelled() => return,
        };
        let mut listener = match listener {
            Ok(Some(listener)) => listener,
            Ok(None) => return,
            Err(error) => {
                failures += 1;
                tracing::warn!(%error, "hub: listening for other processes' changes failed; retrying");
                let backoff = Duration::from_millis(200 << failures.min(5));
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => continue,
                    _ = hub.inner.shutdown.cancelled() => return,
                }
            }
        };
        if failures > 0 {
            tracing::info!("hub: listening for other processes' changes again");
        }
        failures = 0;
        // The listener reads in a task of its own, so that the ticks below
        // never cancel a read half-way.
        let (signals, mut received) = mpsc::channel::<String>(SIGNAL_BACKLOG);
        let reader = tokio::spawn(async move {
            loop {
                match listener.recv().await {
                    Ok(Some(payload)) => {
                        if signals.send(payload).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => {
                        tracing::warn!(
                            "hub: lost the connection that listens for other processes' changes"
                        );
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "hub: listening for other processes' changes failed");
                        return;
                    }
                }
            }
        });
        // Whatever was committed while nobody listened is in the tables.
        hub.resync().await;
        hub.resync_runs().await;
        hub.resync_inbox(None).await;
        let mut poll = tokio::time::interval(poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut presence = tokio::time::interval(PRESENCE_HEARTBEAT);
        presence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                payload = received.recv() => match payload {
                    Some(payload) => hub.on_signal(&payload).await,
                    None => break,
                },
                _ = poll.tick() => {
                    hub.resync().await;
                    hub.resync_inbox(Some(poll_every)).await;
                }
                _ = presence.tick() => hub.repeat_presence().await,
                _ = hub.inner.shutdown.cancelled() => {
                    reader.abort();
                    let _ = reader.await;
                    return;
                }
            }
        }
    }
}
