//! Inbox items: open, change, read.

use crate::backend::{job, on_conn, on_pool};
use crate::{InboxItem, InboxItemId, InboxStatus, NewInboxItem, Store, StoreError};

/// The columns an inbox item is read from, as a literal for `concat!`.
macro_rules! inbox_columns {
    () => {
        "id, kind, thread_id, message_id, tool_call_id, body, suggestion, reason, status, \
         claimed_by, due_at, created_at, updated_at"
    };
}

impl Store {
    /// Opens an item for humans.
    pub async fn open_inbox_item(&self, new: NewInboxItem) -> Result<InboxItem, StoreError> {
        const SQL: &str = concat!(
            "INSERT INTO inbox_items (",
            inbox_columns!(),
            ") SELECT $1, $2, t.id, $4, $5, $6, $7, $8, 'open', NULL, $9, $10, $10
               FROM threads t WHERE t.id = $3
             RETURNING ",
            inbox_columns!()
        );
        let id = InboxItemId::new();
        let now = super::now();
        self.write(job(move |mut tx| {
            let new = new.clone();
            Box::pin(async move {
                on_conn!(&mut tx, c => sqlx::query_as::<_, InboxItem>(SQL)
                    .bind(id)
                    .bind(new.kind)
                    .bind(new.thread_id)
                    .bind(new.message_id)
                    .bind(&new.tool_call_id)
                    .bind(&new.body)
                    .bind(&new.suggestion)
                    .bind(&new.reason)
                    .bind(new.due_at)
                    .bind(now)
                    .fetch_optional(c)
                    .await)?
                .ok_or(StoreError::NotFound("thread"))
            })
        }))
        .await
    }

    /// Moves an item to `status`, claimed by `claimed_by` (or by nobody).
    pub async fn set_inbox_item_status(
        &self,
        id: InboxItemId,
        status: InboxStatus,
        claimed_by: Option<String>,
    ) -> Result<InboxItem, StoreError> {
        const SQL: &str = concat!(
            "UPDATE inbox_items SET status = $2, claimed_by = $3, updated_at = $4
             WHERE id = $1 RETURNING ",
            inbox_columns!()
        );
        let now = super::now();
        self.write(job(move |mut tx| {
            let claimed_by = claimed_by.clone();
            Box::pin(async move {
                on_conn!(&mut tx, c => sqlx::query_as::<_, InboxItem>(SQL)
                    .bind(id)
                    .bind(status)
                    .bind(&claimed_by)
                    .bind(now)
                    .fetch_optional(c)
                    .await)?
                .ok_or(StoreError::NotFound("inbox item"))
            })
        }))
        .await
    }

    /// An inbox item by id.
    pub async fn get_inbox_item(&self, id: InboxItemId) -> Result<Option<InboxItem>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            inbox_columns!(),
            " FROM inbox_items WHERE id = $1"
        );
        Ok(on_pool!(self, p => sqlx::query_as::<_, InboxItem>(SQL)
            .bind(id)
            .fetch_optional(p)
            .await)?)
    }

    /// Items still waiting for someone (open or claimed), oldest first.
    pub async fn list_pending_inbox_items(&self, limit: u32) -> Result<Vec<InboxItem>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            inbox_columns!(),
            " FROM inbox_items WHERE status IN ('open', 'claimed') ORDER BY id LIMIT $1"
        );
        Ok(on_pool!(self, p => sqlx::query_as::<_, InboxItem>(SQL)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)?)
    }
}
