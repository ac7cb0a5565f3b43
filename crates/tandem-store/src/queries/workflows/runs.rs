//! Creating, claiming, reading and controlling runs.

use sqlx::types::Json;
use tandem_model::{
    ClaimedRun, JournalEntry, Lease, NewRun, RunId, RunStatus, StepStatus, WorkflowEvent,
    WorkflowRun,
};

use super::{RunRow, run_columns};
use crate::backend::{Conn, Pool, Tx, job, on_conn, on_pool};
use crate::changes::{Change, RunChange};
use crate::queries::idempotency::{IdempotencyKey, Written};
use crate::{Store, StoreError};

/// When a claim may take a run: its lease is free or has expired, or (on
/// PostgreSQL) the process holding it no longer has a connection, so a
/// restarted node takes its old runs back at once.
const PG_CLAIM: &str = concat!(
    "UPDATE workflow_runs r SET
         lease_owner = $1, lease_until = $2, generation = r.generation + 1,
         attempts = r.attempts + CASE WHEN r.status IN ('completed', 'failed', 'cancelled') THEN 0 ELSE 1 END,
         status = CASE WHEN r.status = 'waiting' THEN 'running' ELSE r.status END,
         waiting_for = CASE WHEN r.status = 'waiting' THEN NULL ELSE r.waiting_for END,
         updated_at = $3
     WHERE r.id IN (
         SELECT id FROM workflow_runs
         WHERE name = $4 AND version = ANY($5) AND ready_at <= $6 AND status <> 'paused'
           AND (lease_owner IS NULL OR lease_until < $7
                OR NOT (lease_owner = ANY(ARRAY(SELECT application_name FROM pg_stat_activity
                                                WHERE application_name IS NOT NULL))))
         ORDER BY ready_at, id
         LIMIT $8
         FOR UPDATE SKIP LOCKED)
     RETURNING ",
    run_columns!()
);

const SQLITE_CLAIM: &str = concat!(
    "UPDATE workflow_runs SET
         lease_owner = $1, lease_until = $2, generation = generation + 1,
         attempts = attempts + CASE WHEN status IN ('completed', 'failed', 'cancelled') THEN 0 ELSE 1 END,
         status = CASE WHEN status = 'waiting' THEN 'running' ELSE status END,
         waiting_for = CASE WHEN status = 'waiting' THEN NULL ELSE waiting_for END,
         updated_at = $3
     WHERE id IN (
         SELECT id FROM workflow_runs
         WHERE name = $4 AND version IN (SELECT value FROM json_each($5))
           AND ready_at <= $6 AND status <> 'paused'
           AND (lease_owner IS NULL OR lease_until < $7)
         ORDER BY ready_at, id
         LIMIT $8)
     RETURNING ",
    run_columns!()
);

/// Which runs of one workflow a dispatcher may take, and how many.
#[derive(Debug, Clone)]
pub struct ClaimRequest<'a> {
    /// The claiming process ([`Store::node`]).
    pub owner: &'a str,
    pub name: &'a str,
    /// The versions this process can execute.
    pub versions: &'a [String],
    pub limit: u32,
    /// The workflow clock's now (µs): runs ready by then are due.
    pub now: i64,
    /// The wall clock's now (µs): leases that ended before it are free.
    pub wall_now: i64,
    /// Until when (µs, wall clock) the claim holds.
    pub lease_until: i64,
}

impl Store {
    /// Creates a run, ready at `now` (µs, workflow clock), once per
    /// idempotency key. With `claim_for` (the caller's process and lease
    /// end), a fresh run is leased to the caller in the same transaction
    /// (generation 1), so it starts without a claim of its own.
    pub async fn create_run(
        &self,
        new: NewRun,
        now: i64,
        claim_for: Option<(String, i64)>,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Written<WorkflowRun>, StoreError> {
        self.write_once(
            idempotency,
            job(move |mut tx| {
                let new = new.clone();
                let claim_for = claim_for.clone();
                Box::pin(async move { insert_run(&mut tx, &new, now, claim_for).await })
            }),
        )
        .await
    }

    /// Leases up to `limit` due runs of one workflow to the caller, oldest
    /// first (PostgreSQL skips rows other nodes are claiming).
    pub async fn claim_runs(
        &self,
        request: &ClaimRequest<'_>,
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        if request.limit == 0 || request.versions.is_empty() {
            return Ok(Vec::new());
        }
        let owner = request.owner.to_owned();
        let name = request.name.to_owned();
        let versions = request.versions.to_vec();
        let (limit, now, wall_now, until) = (
            i64::from(request.limit),
            request.now,
            request.wall_now,
            request.lease_until,
        );
        let mut rows = self
            .write(job(move |mut tx| {
                let (owner, name, versions) = (owner.clone(), name.clone(), versions.clone());
                Box::pin(async move {
                    let updated = tx.now();
                    let rows = match &mut tx.conn {
                        Conn::Postgres(c) => {
                            sqlx::query_as::<_, RunRow>(PG_CLAIM)
                                .bind(&owner)
                                .bind(until)
                                .bind(updated)
                                .bind(&name)
                                .bind(&versions)
                                .bind(now)
                                .bind(wall_now)
                                .bind(limit)
                                .fetch_all(&mut **c)
                                .await
                        }
                        Conn::Sqlite(c) => {
                            sqlx::query_as::<_, RunRow>(SQLITE_CLAIM)
                                .bind(&owner)
                                .bind(until)
                                .bind(updated)
                                .bind(&name)
                                .bind(Json(&versions))
                                .bind(now)
                                .bind(wall_now)
                                .bind(limit)
                                .fetch_all(&mut **c)
                                .await
                        }
                    }
                    .map_err(StoreError::from)?;
                    for row in &rows {
                        // A run that only has its on-complete handler left
                        // changes for nobody.
                        if !(row.finalize && row.status.is_finished()) {
                            let run = WorkflowRun::from(row.clone());
                            tx.emit(Change::run(&run, RunChange::Claimed));
                        }
                    }
                    Ok(rows)
                })
            }))
            .await?;
        rows.sort_by_key(|row| (row.ready_at, row.id));
        let owner = request.owner.to_owned();
        Ok(rows
            .into_iter()
            .map(|row| {
                let lease = Lease {
                    run_id: row.id,
                    owner: owner.clone(),
                    generation: row.generation,
                };
                let finalize = row.finalize && row.status.is_finished();
                ClaimedRun {
                    run: WorkflowRun::from(row),
                    lease,
                    finalize,
                }
            })
            .collect())
    }

    /// The earliest time (µs, workflow clock) a run of this workflow that
    /// nobody holds becomes due.
    pub async fn next_ready_at(
        &self,
        name: &str,
        versions: &[String],
        wall_now: i64,
    ) -> Result<Option<i64>, StoreError> {
        let next: Option<i64> = match self.pool() {
            Pool::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT MIN(ready_at) FROM workflow_runs
                 WHERE name = $1 AND version = ANY($2) AND ready_at IS NOT NULL
                   AND status <> 'paused' AND (lease_owner IS NULL OR lease_until < $3)",
                )
                .bind(name)
                .bind(versions)
                .bind(wall_now)
                .fetch_one(p)
                .await?
            }
            Pool::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT MIN(ready_at) FROM workflow_runs
                 WHERE name = $1 AND version IN (SELECT value FROM json_each($2))
                   AND ready_at IS NOT NULL
                   AND status <> 'paused' AND (lease_owner IS NULL OR lease_until < $3)",
                )
                .bind(name)
                .bind(Json(versions))
                .bind(wall_now)
                .fetch_one(p)
                .await?
            }
        };
        Ok(next)
    }

    /// Frees every lease. For SQLite at startup: one process owns the file,
    /// so any lease left over is from a process that is gone.
    pub async fn release_all_leases(&self) -> Result<u64, StoreError> {
        self.write(job(|mut tx| {
            Box::pin(async move {
                Ok(on_conn!(&mut tx, c => sqlx::query(
                    "UPDATE workflow_runs SET lease_owner = NULL, lease_until = NULL
                     WHERE lease_owner IS NOT NULL",
                )
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?)
            })
        }))
        .await
    }

    /// Renews a lease until `lease_until` (µs, wall clock), and says what
    /// the run's status is now; fails with `lease_lost` when the lease is no
    /// longer the caller's (taken over, or the run was cancelled).
    pub async fn renew_lease(
        &self,
        lease: &Lease,
        lease_until: i64,
    ) -> Result<RunStatus, StoreError> {
        let lease = lease.clone();
        self.write(job(move |mut tx| {
            let lease = lease.clone();
            Box::pin(async move {
                let status: Option<RunStatus> = on_conn!(&mut tx, c => sqlx::query_scalar(
                    "UPDATE workflow_runs SET lease_until = $4
                     WHERE id = $1 AND lease_owner = $2 AND generation = $3
                       AND status IN ('running', 'waiting', 'paused')
                     RETURNING status",
                )
                .bind(lease.run_id)
                .bind(&lease.owner)
                .bind(lease.generation)
                .bind(lease_until)
                .fetch_optional(c)
                .await)?;
                status.ok_or_else(lease_lost)
            })
        }))
        .await
    }

    /// Gives a run back without changing it (an executor stopping at a
    /// pause or a shutdown); with `retry_at` (µs), it is due again then.
    pub async fn release_lease(
        &self,
        lease: &Lease,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.write(job(move |mut tx| {
            let lease = lease.clone();
            Box::pin(async move {
                const SQL: &str = concat!(
                    "UPDATE workflow_runs
                     SET lease_owner = NULL, lease_until = NULL, ready_at = COALESCE($4, ready_at)
                     WHERE id = $1 AND lease_owner = $2 AND generation = $3
                     RETURNING ",
                    run_columns!()
                );
                let row = on_conn!(&mut tx, c => sqlx::query_as::<_, RunRow>(SQL)
                    .bind(lease.run_id)
                    .bind(&lease.owner)
                    .bind(lease.generation)
                    .bind(retry_at)
                    .fetch_optional(c)
                    .await)?;
                // Due again later: whoever dispatches must know.
                if let (Some(row), Some(_)) = (row, retry_at) {
                    tx.emit(Change::run(&WorkflowRun::from(row), RunChange::Updated));
                }
                Ok(())
            })
        }))
        .await
    }

    /// Records that a finished run's on-complete handler has run.
    pub async fn finalized(&self, lease: &Lease) -> Result<(), StoreError> {
        let lease = lease.clone();
        self.write(job(move |mut tx| {
            let lease = lease.clone();
            Box::pin(async move {
                on_conn!(&mut tx, c => sqlx::query(
                    "UPDATE workflow_runs
                     SET finalize = FALSE, ready_at = NULL, lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND lease_owner = $2 AND generation = $3",
                )
                .bind(lease.run_id)
                .bind(&lease.owner)
                .bind(lease.generation)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(())
            })
        }))
        .await
    }

    /// A run by id.
    pub async fn get_run(&self, id: RunId) -> Result<Option<WorkflowRun>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            run_columns!(),
            " FROM workflow_runs WHERE id = $1"
        );
        let row =
            on_pool!(self, p => sqlx::query_as::<_, RunRow>(SQL).bind(id).fetch_optional(p).await)?;
        Ok(row.map(WorkflowRun::from))
    }

    /// A run's journal, in step order.
    pub async fn journal(&self, id: RunId) -> Result<Vec<JournalEntry>, StoreError> {
        let rows = on_pool!(self, p => sqlx::query_as::<_, StepRow>(
            "SELECT seq, kind, name, status, output, error, attempts, wake_at, started_at, finished_at
             FROM workflow_steps WHERE run_id = $1 ORDER BY seq",
        )
        .bind(id)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(JournalEntry::from).collect())
    }

    /// A run's events, oldest first; with `pending_only`, those no step has
    /// taken yet.
    pub async fn run_events(
        &self,
        id: RunId,
        pending_only: bool,
    ) -> Result<Vec<WorkflowEvent>, StoreError> {
        let rows = on_pool!(self, p => sqlx::query_as::<_, super::events::EventRow>(
            "SELECT id, name, payload, source, received_at, consumed_seq FROM workflow_events
             WHERE run_id = $1 AND (NOT $2 OR consumed_seq IS NULL) ORDER BY id",
        )
        .bind(id)
        .bind(pending_only)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(WorkflowEvent::from).collect())
    }

    /// Pauses a running or waiting run: it stops before its next step, and
    /// its timers hold (a deadline that passes meanwhile fires on resume).
    pub async fn pause_run(&self, id: RunId) -> Result<WorkflowRun, StoreError> {
        self.control_run(
            id,
            |run| match run.status {
                RunStatus::Running | RunStatus::Waiting => Ok(()),
                RunStatus::Paused => Err(StoreError::conflict(
                    "already_paused",
                    "the run is already paused",
                )),
                _ => Err(finished(run.status)),
            },
            "status = 'paused'",
        )
        .await
    }

    /// Resumes a paused run where it stopped: waiting again for its event or
    /// timer, or due at once.
    pub async fn resume_run(&self, id: RunId, now: i64) -> Result<WorkflowRun, StoreError> {
        // `$2` is now (µs). A run whose awaited event has arrived, or whose
        // timer has passed, is due at once; one still waiting goes back to
        // waiting with its timer as it was.
        self.control_run_at(
            id,
            now,
            |run| match run.status {
                RunStatus::Paused => Ok(()),
                RunStatus::Running | RunStatus::Waiting => {
                    Err(StoreError::conflict("not_paused", "the run is not paused"))
                }
                _ => Err(finished(run.status)),
            },
            "status = CASE
                 WHEN waiting_for IS NOT NULL AND NOT EXISTS (
                     SELECT 1 FROM workflow_events e
                     WHERE e.run_id = workflow_runs.id AND e.name = workflow_runs.waiting_for
                       AND e.consumed_seq IS NULL)
                     AND (ready_at IS NULL OR ready_at > $2) THEN 'waiting'
                 WHEN waiting_for IS NULL AND ready_at > $2 THEN 'waiting'
                 ELSE 'running' END,
             ready_at = CASE
                 WHEN waiting_for IS NOT NULL AND EXISTS (
                     SELECT 1 FROM workflow_events e
                     WHERE e.run_id = workflow_runs.id AND e.name = workflow_runs.waiting_for
                       AND e.consumed_seq IS NULL) THEN $2
                 WHEN waiting_for IS NULL AND ready_at IS NULL THEN $2
                 ELSE ready_at END",
        )
        .await
    }

    /// Cancels a run that has not finished. An executor holding it is fenced
    /// off at its next commit; the on-complete handler, if any, runs next.
    pub async fn cancel_run(&self, id: RunId, now: i64) -> Result<WorkflowRun, StoreError> {
        self.control_run_at(
            id,
            now,
            |run| {
                if run.status.is_finished() {
                    Err(finished(run.status))
                } else {
                    Ok(())
                }
            },
            "status = 'cancelled', waiting_for = NULL, lease_owner = NULL, lease_until = NULL,
            finished_at = $3, ready_at = CASE WHEN finalize THEN $2 ELSE NULL END",
        )
        .await
    }

    async fn control_run(
        &self,
        id: RunId,
        allowed: fn(&WorkflowRun) -> Result<(), StoreError>,
        set: &'static str,
    ) -> Result<WorkflowRun, StoreError> {
        self.control_run_at(id, 0, allowed, set).await
    }

    /// Reads the run locked, checks the change is `allowed`, applies `set`
    /// (which may use `$2`, now in µs, and `$3`, now as a timestamp).
    async fn control_run_at(
        &self,
        id: RunId,
        now: i64,
        allowed: fn(&WorkflowRun) -> Result<(), StoreError>,
        set: &'static str,
    ) -> Result<WorkflowRun, StoreError> {
        let update = format!(
            "UPDATE workflow_runs SET {set}, updated_at = $3 WHERE id = $1 RETURNING {}",
            run_columns!()
        );
        self.write(job(move |mut tx| {
            let update = update.clone();
            Box::pin(async move {
                let run = lock_run(&mut tx, id).await?;
                allowed(&run)?;
                let updated_at = tx.now();
                let row = on_conn!(&mut tx, c => sqlx::query_as::<_, RunRow>(&update)
                    .bind(id)
                    .bind(now)
                    .bind(updated_at)
                    .fetch_one(c)
                    .await)?;
                let run = WorkflowRun::from(row);
                tx.emit(Change::run(&run, RunChange::Updated));
                Ok(run)
            })
        }))
        .await
    }
}

/// Creates a run in the caller's transaction, ready at `ready_at` (µs,
/// workflow clock), for whichever process claims it first: how a store
/// write starts the run that must follow it, atomically.
pub(crate) async fn create_run_in(
    tx: &mut Tx<'_>,
    new: &NewRun,
    ready_at: i64,
) -> Result<WorkflowRun, StoreError> {
    insert_run(tx, new, ready_at, None).await
}

/// Inserts a run, leased to `claim_for` (its process and lease end) if
/// given, and announces it: the engine of the process it is leased to
/// starts it, and any other learns that a run may be due.
pub(crate) async fn insert_run(
    tx: &mut Tx<'_>,
    new: &NewRun,
    ready_at: i64,
    claim_for: Option<(String, i64)>,
) -> Result<WorkflowRun, StoreError> {
    const SQL: &str = concat!(
        "INSERT INTO workflow_runs
             (id, name, version, args, status, ready_at, lease_owner, lease_until,
              generation, attempts, finalize, created_at, updated_at)
         VALUES ($1, $2, $3, $4, 'running', $5, $6, $7, $8, $8, $9, $10, $10)
         RETURNING ",
        run_columns!()
    );
    let id = RunId::new();
    let (owner, until) = claim_for.unzip();
    let generation = i64::from(owner.is_some());
    let created_at = tx.now();
    let row = on_conn!(tx, c => sqlx::query_as::<_, RunRow>(SQL)
        .bind(id)
        .bind(&new.name)
        .bind(&new.version)
        .bind(Json(&new.args))
        .bind(ready_at)
        .bind(owner)
        .bind(until)
        .bind(generation)
        .bind(new.has_on_complete)
        .bind(created_at)
        .fetch_one(c)
        .await)?;
    let run = WorkflowRun::from(row);
    tx.emit(Change::run(&run, RunChange::Created));
    Ok(run)
}

/// Reads a run, locking its row on PostgreSQL (SQLite has one writer).
pub(crate) async fn lock_run(tx: &mut Tx<'_>, id: RunId) -> Result<WorkflowRun, StoreError> {
    let row = match &mut tx.conn {
        Conn::Postgres(c) => {
            sqlx::query_as::<_, RunRow>(concat!(
                "SELECT ",
                run_columns!(),
                " FROM workflow_runs WHERE id = $1 FOR UPDATE"
            ))
            .bind(id)
            .fetch_optional(&mut **c)
            .await?
        }
        Conn::Sqlite(c) => {
            sqlx::query_as::<_, RunRow>(concat!(
                "SELECT ",
                run_columns!(),
                " FROM workflow_runs WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&mut **c)
            .await?
        }
    };
    row.map(WorkflowRun::from)
        .ok_or(StoreError::NotFound("workflow run"))
}

pub(super) fn finished(status: RunStatus) -> StoreError {
    StoreError::conflict("run_finished", format!("the run has already {status}"))
}

pub(super) fn lease_lost() -> StoreError {
    StoreError::conflict(
        "lease_lost",
        "the run was taken over, cancelled or finished by someone else",
    )
}

#[derive(sqlx::FromRow)]
pub(super) struct StepRow {
    seq: i64,
    kind: String,
    name: String,
    status: StepStatus,
    output: Option<Json<serde_json::Value>>,
    error: Option<Json<serde_json::Value>>,
    attempts: i64,
    wake_at: Option<i64>,
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<StepRow> for JournalEntry {
    fn from(row: StepRow) -> Self {
        JournalEntry {
            seq: row.seq,
            kind: row.kind,
            name: row.name,
            status: row.status,
            output: row.output.map(|j| j.0),
            error: row.error.map(|j| j.0),
            attempts: row.attempts,
            wake_at: row
                .wake_at
                .and_then(chrono::DateTime::from_timestamp_micros),
            started_at: row.started_at,
            finished_at: row.finished_at,
        }
    }
}
