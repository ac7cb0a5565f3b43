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
use crate::{Store, StoreError};

/// Now, at the microsecond precision both backends store, so a value read
/// back equals the value written.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

impl Store {
    /// Runs `sql`, an `UPDATE … SET revoked_at = $2 WHERE <name> = $1 AND
    /// revoked_at IS NULL`, for `name`: whether something live was revoked.
    pub(crate) async fn revoke(&self, sql: &'static str, name: String) -> Result<bool, StoreError> {
        let now = now();
        let revoked = self
            .write(job(move |mut tx| {
                let name = name.clone();
                Box::pin(async move {
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
