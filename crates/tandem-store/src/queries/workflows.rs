//! Workflow runs: create, claim, journal, events, and control from outside.
//!
//! Every journal commit first *fences* the run: it updates the run row only
//! if the committing executor's lease (owner and generation) is still the
//! current one, which also locks the row. A takeover bumps the generation,
//! so an executor that lost its lease can never commit a step; and the
//! journal's primary key `(run_id, seq)` with "a completed row never
//! changes" makes a step impossible to commit twice.
//!
//! - [`runs`]: creating, claiming and controlling runs (pause, resume, cancel).
//! - [`journal`]: committing steps, with their store effects, in one transaction.
//! - [`events`]: delivering events to runs.

mod events;
mod journal;
mod runs;

pub use events::NewEvent;
pub use journal::StepCommit;
pub use runs::ClaimRequest;

pub(crate) use events::deliver_in;
pub(crate) use journal::assign_in;
pub(crate) use runs::{create_run_in, insert_run, lock_run};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use tandem_model::{RunId, RunStatus, WorkflowRun};

/// The columns a run is read from, as a literal for `concat!`.
macro_rules! run_columns {
    () => {
        "id, name, version, args, status, result, error, waiting_for, ready_at, lease_owner, \
         generation, attempts, finalize, created_at, updated_at, finished_at"
    };
}
pub(crate) use run_columns;

#[derive(Clone, sqlx::FromRow)]
pub(crate) struct RunRow {
    id: RunId,
    name: String,
    version: String,
    args: Json<Value>,
    status: RunStatus,
    result: Option<Json<Value>>,
    error: Option<Json<Value>>,
    waiting_for: Option<String>,
    ready_at: Option<i64>,
    lease_owner: Option<String>,
    generation: i64,
    attempts: i64,
    finalize: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
}

impl From<RunRow> for WorkflowRun {
    fn from(row: RunRow) -> Self {
        WorkflowRun {
            id: row.id,
            name: row.name,
            version: row.version,
            args: row.args.0,
            status: row.status,
            result: row.result.map(|j| j.0),
            error: row.error.map(|j| j.0),
            waiting_for: row.waiting_for,
            wake_at: if row.status.is_finished() {
                None
            } else {
                row.ready_at.and_then(DateTime::from_timestamp_micros)
            },
            attempts: row.attempts,
            held_by: row.lease_owner,
            generation: row.generation,
            created_at: row.created_at,
            updated_at: row.updated_at,
            finished_at: row.finished_at,
        }
    }
}

/// Microseconds since the epoch, as scheduling columns store time.
pub fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}
