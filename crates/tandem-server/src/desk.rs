//! The human desk's background work: a claim nobody has touched for
//! `desk.claim_idle_secs` goes back to the queue.
//!
//! One task sweeps every `desk.claim_sweep_interval_ms` with one guarded
//! `UPDATE … RETURNING`, so a claim refreshed or resolved at the same moment
//! is left alone, and on PostgreSQL several processes sweeping at once
//! release each item once. Each released item is pushed on `inbox`.

use std::time::Duration;

use tandem_store::Store;

use crate::config::DeskConfig;
use crate::hub::Hub;

/// Sweeps until the hub stops; run it on the hub's tracker (see
/// [`Hub::track`]) so that shutdown waits for the sweep in flight.
pub async fn sweep_idle_claims(store: Store, hub: Hub, config: DeskConfig) {
    let idle = chrono::Duration::seconds(i64::try_from(config.claim_idle_secs).unwrap_or(i64::MAX));
    let interval = Duration::from_millis(config.claim_sweep_interval_ms.max(1));
    loop {
        tokio::select! {
            _ = hub.stopping() => break,
            _ = tokio::time::sleep(interval) => {}
        }
        // A sweep runs to its end: it is one statement, and stopping halfway
        // would release items without telling anyone.
        let idle_before = chrono::Utc::now()
            .checked_sub_signed(idle)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
        match store.release_idle_claims(idle_before).await {
            Ok(released) => {
                for item in &released {
                    tracing::info!(item = %item.id, "desk: an idle claim went back to the queue");
                    hub.publish_inbox(item);
                }
            }
            Err(error) => tracing::warn!(%error, "desk: sweeping idle claims failed"),
        }
    }
}
