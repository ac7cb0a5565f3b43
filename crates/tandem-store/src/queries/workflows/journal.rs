//! Committing journal entries, with their store effects, in one transaction.

use sqlx::types::Json;
use tandem_model::{
    AssignedBy, AssignedTo, Assignment, AssignmentId, Committed, EffectOutput, InboxItemId,
    JournalWrite, Lease, NewAssignment, OpenItem, RunStatus, RunUpdate, SkipReason, StoreEffect,
    Thread, ThreadId, WorkflowRun,
};

use super::runs::lease_lost;
use super::{RunRow, run_columns};
use crate::backend::{Conn, Tx, job, on_conn};
use crate::changes::{Change, RunChange, ThreadChange};
use crate::queries::inbox::open_item_in;
use crate::queries::messages::insert_message;
use crate::{Store, StoreError};

/// One commit of an executor.
#[derive(Debug, Clone)]
pub struct StepCommit {
    pub lease: Lease,
    /// Entries in step order.
    pub writes: Vec<JournalWrite>,
    /// A write to Tandem's own tables; its output becomes the `output` of
    /// the entry at `writes[index]`.
    pub effect: Option<(usize, StoreEffect)>,
    pub update: RunUpdate,
    /// The workflow clock's now (µs).
    pub now: i64,
    /// The renewed lease's end (µs, wall clock).
    pub lease_until: i64,
}

impl Store {
    /// Commits journal entries (and a store effect) if the lease is still
    /// the current one; fails with `lease_lost` otherwise, committing
    /// nothing. A paused run still takes the commit of the step that was
    /// in flight when it was paused.
    pub async fn commit_steps(&self, commit: StepCommit) -> Result<Committed, StoreError> {
        self.write(job(move |mut tx| {
            let commit = commit.clone();
            Box::pin(async move { commit_in(&mut tx, commit).await })
        }))
        .await
    }
}

async fn commit_in(tx: &mut Tx<'_>, commit: StepCommit) -> Result<Committed, StoreError> {
    const FENCE: &str = concat!(
        "UPDATE workflow_runs SET lease_until = $4, updated_at = $5
         WHERE id = $1 AND lease_owner = $2 AND generation = $3
           AND status IN ('running', 'waiting', 'paused')
         RETURNING ",
        run_columns!()
    );
    let StepCommit {
        lease,
        mut writes,
        effect,
        update,
        now,
        lease_until,
    } = commit;
    let updated_at = tx.now();
    let before = on_conn!(tx, c => sqlx::query_as::<_, RunRow>(FENCE)
        .bind(lease.run_id)
        .bind(&lease.owner)
        .bind(lease.generation)
        .bind(lease_until)
        .bind(updated_at)
        .fetch_optional(c)
        .await)?
    .map(WorkflowRun::from)
    .ok_or_else(lease_lost)?;

    let effect = match effect {
        Some((index, effect)) => {
            let (output, value) = apply_effect(tx, effect).await?;
            if let Some(write) = writes.get_mut(index) {
                write.output = Some(value);
            }
            Some(output)
        }
        None => None,
    };
    for write in &writes {
        write_entry(tx, &lease, write).await?;
    }

    let run = match update {
        RunUpdate::Continue => before.clone(),
        RunUpdate::Suspend {
            ready_at,
            waiting_for,
        } => {
            // The run row is locked (the fence above), so an event delivered
            // concurrently either committed before this statement, and is
            // seen here, or waits and then sees `waiting_for`.
            let arrived = match &waiting_for {
                Some(name) => {
                    on_conn!(tx, c => sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM workflow_events
                     WHERE run_id = $1 AND name = $2 AND consumed_seq IS NULL",
                )
                .bind(lease.run_id)
                .bind(name)
                .fetch_one(c)
                .await)? > 0
                }
                None => false,
            };
            let (status, ready_at, waiting_for) = if arrived {
                (RunStatus::Running, Some(now), None)
            } else {
                (RunStatus::Waiting, ready_at, waiting_for)
            };
            const SUSPEND: &str = concat!(
                "UPDATE workflow_runs SET
                     status = CASE WHEN status = 'paused' THEN 'paused' ELSE $2 END,
                     ready_at = $3, waiting_for = $4, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 RETURNING ",
                run_columns!()
            );
            on_conn!(tx, c => sqlx::query_as::<_, RunRow>(SUSPEND)
                .bind(lease.run_id)
                .bind(status)
                .bind(ready_at)
                .bind(&waiting_for)
                .fetch_one(c)
                .await)?
            .into()
        }
        RunUpdate::Finish {
            status,
            result,
            error,
        } => {
            const FINISH: &str = concat!(
                "UPDATE workflow_runs SET
                     status = $2, result = $3, error = $4, waiting_for = NULL, finished_at = $5,
                     ready_at = CASE WHEN finalize THEN $6 ELSE NULL END,
                     lease_owner = CASE WHEN finalize THEN lease_owner ELSE NULL END,
                     lease_until = CASE WHEN finalize THEN lease_until ELSE NULL END
                 WHERE id = $1 RETURNING ",
                run_columns!()
            );
            on_conn!(tx, c => sqlx::query_as::<_, RunRow>(FINISH)
                .bind(lease.run_id)
                .bind(status)
                .bind(result.map(Json))
                .bind(error.map(Json))
                .bind(updated_at)
                .bind(now)
                .fetch_one(c)
                .await)?
            .into()
        }
    };
    let changed = run.status != before.status || run.wake_at != before.wake_at;
    if changed {
        tx.emit(Change::run(&run, RunChange::Updated));
    }
    Ok(Committed {
        run,
        changed,
        effect,
    })
}

/// Inserts an entry, or completes the pending or retrying row of the same
/// step. A completed or failed row never changes: a second commit of a step
/// fails instead.
async fn write_entry(
    tx: &mut Tx<'_>,
    lease: &Lease,
    write: &JournalWrite,
) -> Result<(), StoreError> {
    let written = on_conn!(tx, c => sqlx::query(
        "INSERT INTO workflow_steps
             (run_id, seq, kind, name, status, output, error, attempts, wake_at, started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (run_id, seq) DO UPDATE SET
             status = excluded.status, output = excluded.output, error = excluded.error,
             attempts = excluded.attempts, wake_at = excluded.wake_at,
             finished_at = excluded.finished_at
         WHERE workflow_steps.status IN ('pending', 'retrying')
           AND workflow_steps.kind = excluded.kind AND workflow_steps.name = excluded.name",
    )
    .bind(lease.run_id)
    .bind(write.seq)
    .bind(&write.kind)
    .bind(&write.name)
    .bind(write.status)
    .bind(write.output.as_ref().map(Json))
    .bind(write.error.as_ref().map(Json))
    .bind(write.attempts)
    .bind(write.wake_at)
    .bind(write.started_at)
    .bind(write.finished_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if written != 1 {
        return Err(StoreError::conflict(
            "step_committed",
            format!(
                "step {} of run {} is already in the journal",
                write.seq, lease.run_id
            ),
        ));
    }
    if let Some(event) = write.consumes {
        let taken = on_conn!(tx, c => sqlx::query(
            "UPDATE workflow_events SET consumed_seq = $3
             WHERE id = $1 AND run_id = $2 AND consumed_seq IS NULL",
        )
        .bind(event)
        .bind(lease.run_id)
        .bind(write.seq)
        .execute(c)
        .await
        .map(|r| r.rows_affected()))?;
        if taken != 1 {
            return Err(StoreError::conflict(
                "event_taken",
                format!("event {event} was already taken by another step"),
            ));
        }
    }
    Ok(())
}

/// Makes a store effect inside the commit's transaction.
async fn apply_effect(
    tx: &mut Tx<'_>,
    effect: StoreEffect,
) -> Result<(EffectOutput, serde_json::Value), StoreError> {
    let output = match effect {
        StoreEffect::PostMessage(new) => EffectOutput::Message(insert_message(tx, new).await?),
        StoreEffect::Assign(assignment) => EffectOutput::Thread(assign_in(tx, assignment).await?),
        StoreEffect::OpenItem(open) => open_item(tx, open).await?,
        StoreEffect::ExpireItem(expire) => crate::queries::desk::expire_item_in(tx, expire).await?,
        StoreEffect::PostReply {
            message,
            after_seq,
            follow_up,
        } => match reply_skip_reason(tx, message.thread_id, after_seq, follow_up).await? {
            Some(reason) => EffectOutput::Skipped { reason },
            None => EffectOutput::Message(insert_message(tx, message).await?),
        },
    };
    let value = output
        .journal_value()
        .map_err(|e| StoreError::Corrupt(format!("effect output: {e}")))?;
    Ok((output, value))
}

/// Posts the item's message, opens the item about it, then reassigns the
/// thread: all of one thread.
async fn open_item(tx: &mut Tx<'_>, open: OpenItem) -> Result<EffectOutput, StoreError> {
    let OpenItem {
        message,
        mut item,
        assign,
    } = open;
    let other_thread = (message.iter().map(|m| m.thread_id))
        .chain(assign.iter().map(|a| a.thread_id))
        .find(|thread| *thread != item.thread_id);
    if let Some(other) = other_thread {
        return Err(StoreError::invalid(
            "thread_mismatch",
            format!(
                "the item is of thread {}, its message or assignment of thread {other}",
                item.thread_id
            ),
        ));
    }
    let message = match message {
        Some(new) => Some(insert_message(tx, new).await?),
        None => None,
    };
    if item.message_id.is_none() {
        item.message_id = message.as_ref().map(|message| message.id);
    }
    let item = open_item_in(tx, InboxItemId::new(), item).await?;
    let thread = match assign {
        Some(assignment) => Some(assign_in(tx, assignment).await?),
        None => None,
    };
    Ok(EffectOutput::Item {
        message,
        item,
        thread,
    })
}

/// Why the AI's reply to a thread, answering its messages up to
/// `after_seq`, must not be posted now, if it must not. On PostgreSQL the
/// thread's row is locked first, as every message insert does, so no
/// customer message or reassignment can commit between this check and the
/// reply's insert; SQLite has a single writer.
async fn reply_skip_reason(
    tx: &mut Tx<'_>,
    thread_id: ThreadId,
    after_seq: i64,
    follow_up: bool,
) -> Result<Option<SkipReason>, StoreError> {
    let assigned_to: Option<AssignedTo> = match &mut tx.conn {
        Conn::Postgres(c) => {
            sqlx::query_scalar("SELECT assigned_to FROM threads WHERE id = $1 FOR UPDATE")
                .bind(thread_id)
                .fetch_optional(&mut **c)
                .await?
        }
        Conn::Sqlite(c) => {
            sqlx::query_scalar("SELECT assigned_to FROM threads WHERE id = $1")
                .bind(thread_id)
                .fetch_optional(&mut **c)
                .await?
        }
    };
    match assigned_to {
        None => return Err(StoreError::NotFound("thread")),
        Some(AssignedTo::Human) => return Ok(Some(SkipReason::AssignedToHuman)),
        Some(_) => {}
    }
    // Range scans of the (thread_id, seq) index.
    let newest_customer: Option<i64> = on_conn!(tx, c => sqlx::query_scalar(
        "SELECT MAX(seq) FROM messages WHERE thread_id = $1 AND seq > $2 AND role = 'user'",
    )
    .bind(thread_id)
    .bind(after_seq)
    .fetch_one(c)
    .await)?;
    let Some(newest_customer) = newest_customer else {
        return Ok(None);
    };
    if !follow_up {
        return Ok(Some(SkipReason::NewerCustomerMessage));
    }
    // Answered: a public reply (the AI's or a human's) came after it.
    let answered: Option<i64> = on_conn!(tx, c => sqlx::query_scalar(
        "SELECT seq FROM messages
         WHERE thread_id = $1 AND seq > $2 AND role = 'assistant'
           AND visibility = 'public' AND status = 'published'
         LIMIT 1",
    )
    .bind(thread_id)
    .bind(newest_customer)
    .fetch_optional(c)
    .await)?;
    Ok(answered
        .is_none()
        .then_some(SkipReason::NewerCustomerMessage))
}

/// Assigns a thread and records the change in its history.
pub(crate) async fn assign_in(tx: &mut Tx<'_>, new: NewAssignment) -> Result<Thread, StoreError> {
    const SQL: &str = concat!(
        "UPDATE threads SET assigned_to = $2, assignee = $3, updated_at = $4 WHERE id = $1 RETURNING ",
        crate::queries::threads::thread_columns!()
    );
    let now = tx.now();
    let thread = on_conn!(tx, c => sqlx::query_as::<_, Thread>(SQL)
        .bind(new.thread_id)
        .bind(new.assigned_to)
        .bind(&new.assignee)
        .bind(now)
        .fetch_optional(c)
        .await)?
    .ok_or(StoreError::NotFound("thread"))?;
    let assignment = Assignment {
        id: AssignmentId::new(),
        thread_id: new.thread_id,
        assigned_to: new.assigned_to,
        assignee: new.assignee.clone(),
        team: new.team.clone(),
        reason: new.reason.clone(),
        by: AssignedBy {
            kind: new.by_kind.clone(),
            id: new.by_id.clone(),
        },
        created_at: now,
    };
    on_conn!(tx, c => sqlx::query(
        "INSERT INTO assignments
             (id, thread_id, assigned_to, assignee, team, reason, by_kind, by_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(assignment.id)
    .bind(new.thread_id)
    .bind(new.assigned_to)
    .bind(&new.assignee)
    .bind(&new.team)
    .bind(&new.reason)
    .bind(&new.by_kind)
    .bind(&new.by_id)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    tx.emit(Change::thread(&thread, ThreadChange::Updated));
    tx.emit(Change::Assignment(std::sync::Arc::new(assignment)));
    Ok(thread)
}
