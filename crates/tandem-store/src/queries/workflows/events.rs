//! Delivering events to runs.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use tandem_model::{
    DeliveredEvent, EventId, EventSource, Lease, RunId, RunStatus, WorkflowEvent, WorkflowRun,
};

use super::runs::{finished, lock_run};
use super::{RunRow, run_columns};
use crate::backend::{Tx, job, on_conn};
use crate::changes::{Change, RunChange};
use crate::{Store, StoreError};

#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    id: EventId,
    name: String,
    payload: Json<Value>,
    source: EventSource,
    received_at: DateTime<Utc>,
    consumed_seq: Option<i64>,
}

impl From<EventRow> for WorkflowEvent {
    fn from(row: EventRow) -> Self {
        WorkflowEvent {
            id: row.id,
            name: row.name,
            payload: row.payload.0,
            source: row.source,
            received_at: row.received_at,
            consumed_by: row.consumed_seq,
        }
    }
}

/// An event to deliver.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub run_id: RunId,
    pub name: String,
    pub payload: Value,
    pub source: EventSource,
    /// Deduplicates deliveries: a second event with the same key is not
    /// stored again (a redelivered hook, a resume URL used twice).
    pub delivery: Option<String>,
}

impl Store {
    /// Stores an event for a run that has not finished. A run waiting for
    /// it becomes due at `now` (µs, workflow clock); with `claim_for` (the
    /// caller's process and lease end, wall clock µs) such a run is also
    /// leased to the caller, which then executes it without a claim of its
    /// own. Events for a paused run wait until it resumes.
    pub async fn deliver_event(
        &self,
        event: NewEvent,
        now: i64,
        claim_for: Option<(String, i64)>,
    ) -> Result<DeliveredEvent, StoreError> {
        self.write(job(move |mut tx| {
            let event = event.clone();
            let claim_for = claim_for.clone();
            Box::pin(async move {
                let run = lock_run(&mut tx, event.run_id).await?;
                deliver_in(&mut tx, run, event, now, claim_for).await
            })
        }))
        .await
    }
}

/// [`Store::deliver_event`] inside a transaction that has already locked
/// the run (`run`, read by [`lock_run`]), so other writes can deliver an
/// event in the same transaction as the change it announces.
pub(crate) async fn deliver_in(
    tx: &mut Tx<'_>,
    run: WorkflowRun,
    event: NewEvent,
    now: i64,
    claim_for: Option<(String, i64)>,
) -> Result<DeliveredEvent, StoreError> {
    const WAKE: &str = concat!(
        "UPDATE workflow_runs SET
             status = 'running', ready_at = $2, waiting_for = NULL,
             lease_owner = COALESCE($3, lease_owner), lease_until = COALESCE($4, lease_until),
             generation = generation + CASE WHEN $3 IS NULL THEN 0 ELSE 1 END,
             attempts = attempts + CASE WHEN $3 IS NULL THEN 0 ELSE 1 END,
             updated_at = $5
         WHERE id = $1 RETURNING ",
        run_columns!()
    );
    let id = EventId::new();
    let received_at = tx.now();
    let inserted = on_conn!(tx, c => sqlx::query(
        "INSERT INTO workflow_events
             (id, run_id, name, payload, source, delivery, consumed_seq, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, NULL, $7)
         ON CONFLICT (run_id, delivery) DO NOTHING",
    )
    .bind(id)
    .bind(event.run_id)
    .bind(&event.name)
    .bind(Json(&event.payload))
    .bind(event.source)
    .bind(&event.delivery)
    .bind(received_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if inserted == 0 {
        let existing = on_conn!(tx, c => sqlx::query_as::<_, EventRow>(
            "SELECT id, name, payload, source, received_at, consumed_seq
             FROM workflow_events WHERE run_id = $1 AND delivery = $2",
        )
        .bind(event.run_id)
        .bind(&event.delivery)
        .fetch_one(c)
        .await)?;
        // A redelivery is answered as such, even after the first delivery
        // finished the run.
        return Ok(DeliveredEvent {
            event: existing.into(),
            run,
            duplicate: true,
            claimed: None,
        });
    }
    if run.status.is_finished() {
        // The job fails, so the event just inserted is rolled back.
        return Err(finished(run.status));
    }
    let stored = WorkflowEvent {
        id,
        name: event.name.clone(),
        payload: event.payload,
        source: event.source,
        received_at,
        consumed_by: None,
    };
    let wakes =
        run.status == RunStatus::Waiting && run.waiting_for.as_deref() == Some(event.name.as_str());
    if !wakes {
        return Ok(DeliveredEvent {
            event: stored,
            run,
            duplicate: false,
            claimed: None,
        });
    }
    let (owner, until) = claim_for.unzip();
    let row = on_conn!(tx, c => sqlx::query_as::<_, RunRow>(WAKE)
        .bind(event.run_id)
        .bind(now)
        .bind(&owner)
        .bind(until)
        .bind(received_at)
        .fetch_one(c)
        .await)?;
    let run = WorkflowRun::from(row);
    tx.emit(Change::run(&run, RunChange::Updated));
    let claimed = owner.map(|owner| Lease {
        run_id: run.id,
        owner,
        generation: run.generation,
    });
    Ok(DeliveredEvent {
        event: stored,
        run,
        duplicate: false,
        claimed,
    })
}
