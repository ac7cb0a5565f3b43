//! Takeover and hand-back: who a thread is assigned to, its history, and the
//! `reply` runs a human takeover must stop.

use chrono::{DateTime, Utc};
use tandem_model::names::REPLY_WORKFLOW;
use tandem_model::{
    AssignedBy, AssignedTo, Assignment, AssignmentId, NewAssignment, RunId, Thread, ThreadId,
};

use super::workflows::assign_in;
use crate::backend::{Pool, job, on_pool};
use crate::{Store, StoreError};

#[derive(sqlx::FromRow)]
struct AssignmentRow {
    id: AssignmentId,
    thread_id: ThreadId,
    assigned_to: AssignedTo,
    assignee: Option<String>,
    team: Option<String>,
    reason: Option<String>,
    by_kind: String,
    by_id: Option<String>,
    created_at: DateTime<Utc>,
}

impl From<AssignmentRow> for Assignment {
    fn from(row: AssignmentRow) -> Self {
        Self {
            id: row.id,
            thread_id: row.thread_id,
            assigned_to: row.assigned_to,
            assignee: row.assignee,
            team: row.team,
            reason: row.reason,
            by: AssignedBy {
                kind: row.by_kind,
                id: row.by_id,
            },
            created_at: row.created_at,
        }
    }
}

impl Store {
    /// Assigns a thread and records the change in its history, in one
    /// transaction; `NotFound("thread")` when there is no such thread.
    pub async fn assign_thread(&self, new: NewAssignment) -> Result<Thread, StoreError> {
        self.write(job(move |mut tx| {
            let new = new.clone();
            Box::pin(async move { assign_in(&mut tx, new).await })
        }))
        .await
    }

    /// A thread's assignment history, newest first.
    pub async fn assignments(&self, thread_id: ThreadId) -> Result<Vec<Assignment>, StoreError> {
        let rows = on_pool!(self, p => sqlx::query_as::<_, AssignmentRow>(
            "SELECT id, thread_id, assigned_to, assignee, team, reason, by_kind, by_id, created_at
             FROM assignments WHERE thread_id = $1 ORDER BY id DESC",
        )
        .bind(thread_id)
        .fetch_all(p)
        .await)?;
        Ok(rows.into_iter().map(Assignment::from).collect())
    }

    /// When the thread was last handed back to the AI, if ever: the prompt
    /// closes a human stretch there.
    pub async fn last_hand_back(
        &self,
        thread_id: ThreadId,
    ) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_scalar(
            "SELECT created_at FROM assignments WHERE thread_id = $1 AND assigned_to = 'ai'
             ORDER BY id DESC LIMIT 1",
        )
        .bind(thread_id)
        .fetch_optional(p)
        .await)?)
    }

    /// The thread's `reply` runs that have not ended (running, waiting or
    /// paused), oldest first.
    pub async fn unfinished_reply_runs(
        &self,
        thread_id: ThreadId,
    ) -> Result<Vec<RunId>, StoreError> {
        // Ids are serialized into `args` as hyphenated UUID strings.
        let thread = thread_id.0.hyphenated().to_string();
        let ids = match self.pool() {
            Pool::Postgres(p) => {
                sqlx::query_scalar(
                    "SELECT id FROM workflow_runs
                     WHERE name = $1 AND status IN ('running', 'waiting', 'paused')
                       AND args->>'thread_id' = $2
                     ORDER BY id",
                )
                .bind(REPLY_WORKFLOW)
                .bind(&thread)
                .fetch_all(p)
                .await?
            }
            Pool::Sqlite(p) => {
                sqlx::query_scalar(
                    "SELECT id FROM workflow_runs
                     WHERE name = $1 AND status IN ('running', 'waiting', 'paused')
                       AND json_extract(args, '$.thread_id') = $2
                     ORDER BY id",
                )
                .bind(REPLY_WORKFLOW)
                .bind(&thread)
                .fetch_all(p)
                .await?
            }
        };
        Ok(ids)
    }
}
