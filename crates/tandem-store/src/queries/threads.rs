//! Threads: create, read, list, update.

use serde_json::Value;
use sqlx::types::Json;
use tandem_model::{
    AssignedTo, NewThread, Thread, ThreadFilter, ThreadId, ThreadPatch, ThreadStatus,
};

use super::idempotency::{IdempotencyKey, Written};
use crate::backend::{Pool, job, on_conn, on_pool};
use crate::changes::{Change, ThreadChange};
use crate::{Store, StoreError};

/// The columns a [`Thread`] is read from, as a literal for `concat!`, so
/// every query's SQL is a constant.
macro_rules! thread_columns {
    () => {
        "id, customer_id, title, status, assigned_to, assignee, metadata, last_seq, \
         created_at, updated_at"
    };
}
pub(crate) use thread_columns;

/// A thread by id (`$1`), if it is the customer's (`$2`) or `$2` is null.
pub(crate) const SELECT_THREAD: &str = concat!(
    "SELECT ",
    thread_columns!(),
    " FROM threads WHERE id = $1 AND ($2 IS NULL OR customer_id = $2)"
);

impl Store {
    /// Creates a thread (once per idempotency key).
    pub async fn create_thread(
        &self,
        new: NewThread,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Written<Thread>, StoreError> {
        self.write_once(
            idempotency,
            job(move |mut tx| {
                let new = new.clone();
                Box::pin(async move {
                    let now = tx.now();
                    let thread = Thread {
                        id: ThreadId::new(),
                        customer_id: new.customer_id,
                        title: new.title,
                        status: ThreadStatus::Open,
                        assigned_to: AssignedTo::Unassigned,
                        assignee: None,
                        metadata: new.metadata,
                        last_seq: 0,
                        created_at: now,
                        updated_at: now,
                    };
                    on_conn!(&mut tx, c => sqlx::query(
                        "INSERT INTO threads (id, customer_id, title, status, assigned_to, assignee,
                                              metadata, last_seq, created_at, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                    )
                    .bind(thread.id)
                    .bind(&thread.customer_id)
                    .bind(&thread.title)
                    .bind(thread.status)
                    .bind(thread.assigned_to)
                    .bind(&thread.assignee)
                    .bind(Json(&thread.metadata))
                    .bind(thread.last_seq)
                    .bind(thread.created_at)
                    .bind(thread.updated_at)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected()))?;
                    tx.emit(Change::thread(&thread, ThreadChange::Created));
                    Ok(thread)
                })
            }),
        )
        .await
    }

    /// A thread by id; with `customer_scope`, only if it is that customer's.
    pub async fn get_thread(
        &self,
        id: ThreadId,
        customer_scope: Option<&str>,
    ) -> Result<Option<Thread>, StoreError> {
        Ok(
            on_pool!(self, p => sqlx::query_as::<_, Thread>(SELECT_THREAD)
            .bind(id)
            .bind(customer_scope)
            .fetch_optional(p)
            .await)?,
        )
    }

    /// The `last_seq` of each of these threads that exists.
    pub async fn last_seqs(&self, ids: &[ThreadId]) -> Result<Vec<(ThreadId, i64)>, StoreError> {
        match self.pool() {
            Pool::Postgres(pool) => {
                let ids: Vec<uuid::Uuid> = ids.iter().map(|id| id.0).collect();
                Ok(
                    sqlx::query_as("SELECT id, last_seq FROM threads WHERE id = ANY($1)")
                        .bind(ids)
                        .fetch_all(pool)
                        .await?,
                )
            }
            // One process owns a SQLite file, so this is rarely asked there.
            Pool::Sqlite(pool) => {
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    let last_seq: Option<i64> =
                        sqlx::query_scalar("SELECT last_seq FROM threads WHERE id = $1")
                            .bind(id)
                            .fetch_optional(pool)
                            .await?;
                    found.extend(last_seq.map(|seq| (*id, seq)));
                }
                Ok(found)
            }
        }
    }

    /// Threads matching the filter, newest first.
    pub async fn list_threads(&self, filter: &ThreadFilter) -> Result<Vec<Thread>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            thread_columns!(),
            " FROM threads
             WHERE ($1 IS NULL OR customer_id = $1)
               AND ($2 IS NULL OR status = $2)
               AND ($3 IS NULL OR assigned_to = $3)
               AND ($4 IS NULL OR id < $4)
             ORDER BY id DESC
             LIMIT $5"
        );
        Ok(on_pool!(self, p => sqlx::query_as::<_, Thread>(SQL)
            .bind(filter.customer_id.as_deref())
            .bind(filter.status)
            .bind(filter.assigned_to)
            .bind(filter.before)
            .bind(i64::from(filter.limit))
            .fetch_all(p)
            .await)?)
    }

    /// Changes a thread's title, status or metadata.
    pub async fn update_thread(
        &self,
        id: ThreadId,
        patch: ThreadPatch,
    ) -> Result<Thread, StoreError> {
        const SQL: &str = concat!(
            "UPDATE threads SET
                 title = CASE WHEN $2 THEN $3 ELSE title END,
                 status = COALESCE($4, status),
                 metadata = COALESCE($5, metadata),
                 updated_at = $6
             WHERE id = $1
             RETURNING ",
            thread_columns!()
        );
        self.write(job(move |mut tx| {
            let patch = patch.clone();
            Box::pin(async move {
                let now = tx.now();
                let metadata: Option<Json<Value>> = patch.metadata.map(Json);
                let updated = on_conn!(&mut tx, c => sqlx::query_as::<_, Thread>(SQL)
                    .bind(id)
                    .bind(patch.title.is_some())
                    .bind(patch.title.flatten())
                    .bind(patch.status)
                    .bind(metadata)
                    .bind(now)
                    .fetch_optional(c)
                    .await)?;
                let thread = updated.ok_or(StoreError::NotFound("thread"))?;
                tx.emit(Change::thread(&thread, ThreadChange::Updated));
                Ok(thread)
            })
        }))
        .await
    }
}
