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
//!
//! Time is the store's clock ([`Store::clock`]), the one its rows are
//! stamped with: idleness, presence and the sweep's interval are measured
//! on it, so a test that moves the clock sees the sweep at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tandem_model::InboxStatus;
use tandem_store::{Change, ChangeSink, Store};
use tokio::sync::{Notify, watch};

use crate::config::DeskConfig;
use crate::hub::Hub;

/// Asks the desk for an assignment pass; cheap to clone.
#[derive(Clone)]
pub struct Desk {
    kick: Arc<Notify>,
    /// Passes begun and ended, for [`Desk::pass`].
    passes: Arc<watch::Sender<Passes>>,
}

/// How many passes have begun and ended; passes run one after another.
#[derive(Debug, Clone, Copy, Default)]
struct Passes {
    begun: u64,
    ended: u64,
}

impl Default for Desk {
    fn default() -> Self {
        Self {
            kick: Arc::default(),
            passes: Arc::new(watch::Sender::new(Passes::default())),
        }
    }
}

impl Desk {
    /// Something changed that may let an item be assigned: the pass runs
    /// soon (kicks while one runs fold into one more pass).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Asks for a pass and resolves once a pass that began after the call
    /// has ended: it saw every change committed before the call, and swept
    /// if a sweep was due by then. What a test waits for before checking
    /// what a pass did, or left alone. Never resolves once the desk has
    /// stopped.
    pub async fn pass(&self) {
        let mut passes = self.passes.subscribe();
        let wanted = passes.borrow_and_update().begun + 1;
        self.kick();
        let _ = passes.wait_for(|p| p.ended >= wanted).await;
    }

    /// Runs passes until the hub stops; run it on the hub's tracker (see
    /// [`Hub::track`]) so that shutdown waits for the pass in flight.
    pub async fn run(self, store: Store, hub: Hub, config: DeskConfig) {
        let clock = store.clock().clone();
        let interval = Duration::from_millis(config.claim_sweep_interval_ms.max(1));
        let mut next_sweep = later(clock.now(), interval);
        loop {
            let woken = tokio::select! {
                _ = hub.stopping() => break,
                _ = clock.sleep_until(next_sweep) => true,
                _ = self.kick.notified() => false,
            };
            // A pass runs to its end: stopping halfway would change items
            // without telling anyone. A kicked pass sweeps too when a sweep
            // is due.
            self.passes.send_modify(|p| p.begun += 1);
            let now = clock.now();
            if woken || now >= next_sweep {
                next_sweep = later(now, interval);
                sweep(&store, &config, now).await;
            }
            assign(&store, &config, now).await;
            self.passes.send_modify(|p| p.ended += 1);
        }
    }
}

fn later(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn ago(now: DateTime<Utc>, duration: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(duration)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Idle claims and stale presence, as of `now` on the store's clock.
async fn sweep(store: &Store, config: &DeskConfig, now: DateTime<Utc>) {
    match store
        .release_idle_claims(ago(now, Duration::from_secs(config.claim_idle_secs)))
        .await
    {
        Ok(released) => {
            for item in &released {
                tracing::info!(item = %item.id, "desk: an idle claim went back to the queue");
            }
        }
        Err(error) => tracing::warn!(%error, "desk: sweeping idle claims failed"),
    }
    match store.expire_presence(ago(now, config.presence_ttl())).await {
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

/// Gives waiting items to online agents with room (online: presence
/// refreshed within the TTL before `now`).
async fn assign(store: &Store, config: &DeskConfig, now: DateTime<Utc>) {
    let mode = match store.policy().await {
        Ok(policy) => policy.desk.assignment,
        Err(error) => {
            tracing::warn!(%error, "desk: reading the policy failed");
            return;
        }
    };
    match store
        .assign_waiting(mode, ago(now, config.presence_ttl()))
        .await
    {
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
