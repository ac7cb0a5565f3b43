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
pub mod workflows;

use chrono::{DateTime, SubsecRound, Utc};

/// Now, at the microsecond precision both backends store, so a value read
/// back equals the value written.
pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}
