//! `impl Store`, split by topic.

pub mod assignments;
pub mod desk;
pub mod desk_metrics;
pub mod idempotency;
pub mod inbox;
pub mod messages;
pub mod routing;
pub mod secrets;
pub mod signals;
pub mod threads;
pub mod tickets;
pub mod tokens;
pub mod usage;
pub mod web_access;
pub mod workflows;

use chrono::{DateTime, SubsecRound, Utc};

use crate::backend::{job, on_conn};
use crate::clock::{Clock, SystemClock};
use crate::{Store, StoreError};

/// `at` at the microsecond precision both backends store, so a value read
/// back equals the value written.
pub(crate) fn stamp(at: DateTime<Utc>) -> DateTime<Utc> {
    at.trunc_subsecs(6)
}

/// Now on the wall clock, whatever the store's clock says: for what must
/// hold in real time, the expiry of credentials (tokens, sign-in sessions,
/// WebSocket tickets), which a test that moves the store's clock to fire a
/// deadline must neither extend nor end. Rows are stamped with
/// [`Tx::now`](crate::backend::Tx::now).
pub(crate) fn wall_now() -> DateTime<Utc> {
    stamp(SystemClock.now())
}

impl Store {
    /// Runs `sql`, an `UPDATE … SET revoked_at = $2 WHERE <name> = $1 AND
    /// revoked_at IS NULL`, for `name`: whether something live was revoked.
    pub(crate) async fn revoke(&self, sql: &'static str, name: String) -> Result<bool, StoreError> {
        let revoked = self
            .write(job(move |mut tx| {
                let name = name.clone();
                Box::pin(async move {
                    let now = tx.now();
                    Ok(on_conn!(&mut tx, c => sqlx::query(sql)
                        .bind(&name)
                        .bind(now)
                        .execute(c)
                        .await
                        .map(|r| r.rows_affected()))?)
                })
            }))
            .await?;
        Ok(revoked > 0)
    }
}
