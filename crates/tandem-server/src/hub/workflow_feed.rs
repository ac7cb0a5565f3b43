//! Subscribers of `workflow:<id>`: staff watching a run. A subscriber gets
//! `subscribed`, then at once a `workflow` frame with the run as it is, then
//! a `workflow` frame at every change of its status or wake-up time.
//!
//! A change is a whole run, not a delta, so the only hazard is order: a
//! change published while the subscriber reads the run must not arrive
//! before an older read. Each feed counts its changes; the subscriber reads
//! again when one happened during its read.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use chrono::{DateTime, Utc};
use tandem_model::{RunId, WorkflowRun};

use super::outbox::Outbox;
use super::protocol::{FrameError, ServerFrame, Topic};
use super::subscriptions::Peer;
use super::{ConnId, Hub, lock};

/// Reads of a run that changed under them before the state is sent anyway
/// (the next change corrects it).
const SNAPSHOT_ATTEMPTS: u32 = 5;

/// One run's subscribers on this process.
#[derive(Default)]
pub(super) struct RunFeed {
    /// Counts changes, so a subscriber's read can tell whether it missed one.
    version: u64,
    /// The `updated_at` of the last change sent, so that a re-read after a
    /// lost signal sends only what changed.
    last_sent: Option<DateTime<Utc>>,
    subscribers: Vec<RunSubscriber>,
}

struct RunSubscriber {
    conn: ConnId,
    outbox: Arc<Outbox>,
    live: bool,
}

impl Hub {
    /// A run changed: send it to its subscribers here.
    pub(super) fn publish_workflow(&self, run: &WorkflowRun) {
        if !self.watches_run(run.id) {
            return;
        }
        let frame = Utf8Bytes::from(ServerFrame::Workflow { run }.encode());
        let mut runs = lock(&self.inner.runs);
        let Some(feed) = runs.get_mut(&run.id) else {
            return;
        };
        feed.version += 1;
        feed.last_sent = Some(run.updated_at);
        for subscriber in feed.subscribers.iter().filter(|s| s.live) {
            let _ = subscriber.outbox.push(frame.clone());
        }
    }

    /// Another process changed a run: publish it if it differs from what
    /// was last sent here.
    pub(super) fn publish_workflow_if_changed(&self, run: &WorkflowRun) {
        let changed = lock(&self.inner.runs)
            .get(&run.id)
            .is_some_and(|feed| feed.last_sent != Some(run.updated_at));
        if changed {
            self.publish_workflow(run);
        }
    }

    /// Whether anyone here subscribes to this run.
    pub(super) fn watches_run(&self, run_id: RunId) -> bool {
        lock(&self.inner.runs).contains_key(&run_id)
    }

    /// The runs subscribed to here.
    pub(super) fn watched_runs(&self) -> Vec<RunId> {
        lock(&self.inner.runs).keys().copied().collect()
    }

    /// Subscribes `peer` (staff only) to a run: `subscribed`, the run as it
    /// is, then its changes. A customer is told `not_found`, as for a run
    /// that does not exist.
    pub async fn subscribe_workflow(&self, peer: &Peer, run_id: RunId) -> Result<(), FrameError> {
        if peer.principal.customer_scope().is_some() {
            return Err(FrameError::run_not_found());
        }
        let mut seen = {
            let mut runs = lock(&self.inner.runs);
            let feed = runs.entry(run_id).or_default();
            feed.subscribers.push(RunSubscriber {
                conn: peer.id,
                outbox: peer.outbox.clone(),
                live: false,
            });
            feed.version
        };
        for attempt in 1.. {
            let run = match self.inner.store.get_run(run_id).await {
                Ok(Some(run)) => run,
                Ok(None) => {
                    self.unsubscribe_workflow(peer.id, run_id);
                    return Err(FrameError::run_not_found());
                }
                Err(error) => {
                    self.unsubscribe_workflow(peer.id, run_id);
                    return Err(error.into());
                }
            };
            let state = ServerFrame::Workflow { run: &run }.encode();
            let mut runs = lock(&self.inner.runs);
            let Some(feed) = runs.get_mut(&run_id) else {
                return Err(FrameError::closed());
            };
            if feed.version != seen && attempt < SNAPSHOT_ATTEMPTS {
                seen = feed.version;
                continue;
            }
            let subscribed = ServerFrame::Subscribed {
                topic: Topic::Workflow(run_id).to_string(),
                last_seq: None,
                recovered: None,
                items: None,
            }
            .encode();
            if feed.version == seen {
                feed.last_sent = Some(run.updated_at);
            }
            for frame in [subscribed, state] {
                let _ = peer.outbox.push(frame.into());
            }
            if let Some(me) = feed.subscribers.iter_mut().find(|s| s.conn == peer.id) {
                me.live = true;
            }
            break;
        }
        Ok(())
    }

    /// Ends `conn`'s subscription to a run, and the feed if it was the last.
    pub(super) fn unsubscribe_workflow(&self, conn: ConnId, run_id: RunId) {
        let mut runs = lock(&self.inner.runs);
        if let Some(feed) = runs.get_mut(&run_id) {
            feed.subscribers.retain(|s| s.conn != conn);
            if feed.subscribers.is_empty() {
                runs.remove(&run_id);
            }
        }
    }
}
