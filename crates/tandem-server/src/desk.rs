//! The human desk's background work, one pass at a time:
//!
//! - a claim nobody touched for `desk.claim_idle_secs` goes back to the
//!   queue;
//! - an agent that stopped refreshing its presence for
//!   `desk.presence_ttl_secs` goes offline, and its items back to the queue;
//! - waiting items go to online agents with room, oldest first, as the
//!   policy's `desk.assignment` says.
//!
//! A pass runs every `desk.claim_sweep_interval_ms`, and at once when an
//! item starts waiting or an agent's presence or capacity changes: the desk
//! follows the store's change stream for that ([`Desk::kick`]). Each step
//! is one guarded store transaction, safe with several processes sweeping;
//! what it changes reaches `inbox` subscribers on the change stream.

use std::sync::Arc;
use std::time::Duration;

use tandem_model::InboxStatus;
use tandem_store::{Change, ChangeSink, Store};
use tokio::sync::Notify;

use crate::config::DeskConfig;
use crate::hub::Hub;

/// Asks the desk for an assignment pass; cheap to clone.
#[derive(Clone, Default)]
pub struct Desk {
    kick: Arc<Notify>,
}

impl Desk {
    /// Something changed that may let an item be assigned: the pass runs
    /// soon (kicks while one runs fold into one more pass).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Runs passes until the hub stops; run it on the hub's tracker (see
    /// [`Hub::track`]) so that shutdown waits for the pass in flight.
    pub async fn run(self, store: Store, hub: Hub, config: DeskConfig) {
        let interval = Duration::from_millis(config.claim_sweep_interval_ms.max(1));
        let mut next_sweep = tokio::time::Instant::now() + interval;
        loop {
            tokio::select! {
                _ = hub.stopping() => break,
                _ = tokio::time::sleep_until(next_sweep) => {
                    next_sweep = tokio::time::Instant::now() + interval;
                    sweep(&store, &config).await;
                }
                _ = self.kick.notified() => {}
            }
            // A pass runs to its end: stopping halfway would change items
            // without telling anyone.
            assign(&store, &config).await;
        }
    }
}

fn ago(duration: Duration) -> chrono::DateTime<chrono::Utc> {
    let now = chrono::Utc::now();
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC)
}

/// Idle claims and stale presence.
async fn sweep(store: &Store, config: &DeskConfig) {
    match store
        .release_idle_claims(ago(Duration::from_secs(config.claim_idle_secs)))
        .await
    {
        Ok(released) => {
            for item in &released {
                tracing::info!(item = %item.id, "desk: an idle claim went back to the queue");
            }
        }
        Err(error) => tracing::warn!(%error, "desk: sweeping idle claims failed"),
    }
    match store.expire_presence(ago(config.presence_ttl())).await {
        Ok(gone) => {
            for change in &gone {
                tracing::info!(
                    agent = %change.agent.name,
                    items = change.released.len(),
                    "desk: an agent stopped refreshing its presence and is offline"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "desk: expiring presence failed"),
    }
}

/// Gives waiting items to online agents with room.
async fn assign(store: &Store, config: &DeskConfig) {
    let mode = match store.policy().await {
        Ok(policy) => policy.desk.assignment,
        Err(error) => {
            tracing::warn!(%error, "desk: reading the policy failed");
            return;
        }
    };
    match store.assign_waiting(mode, ago(config.presence_ttl())).await {
        Ok(assigned) => {
            for item in &assigned {
                tracing::debug!(item = %item.id, agent = ?item.claimed_by, "desk: assigned");
            }
        }
        Err(error) => tracing::warn!(%error, "desk: assigning waiting items failed"),
    }
}

/// The desk's view of the change stream: an item waiting for an agent, or
/// an agent whose presence, capacity or teams changed, calls for a pass.
impl ChangeSink for Desk {
    fn apply(&self, changes: &[Change]) {
        let wanted = changes.iter().any(|change| match change {
            Change::Item(item) => item.status == InboxStatus::Open,
            Change::Agent(_) => true,
            _ => false,
        });
        if wanted {
            self.kick();
        }
    }
}
