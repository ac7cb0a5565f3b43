//! Messages: post and page.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;

use super::idempotency::{self, IdempotencyKey, Written};
use crate::backend::{Tx, job, on_conn, on_pool};
use crate::{
    Author, AuthorKind, Content, Message, MessageFilter, MessageId, MessageStatus, NewMessage,
    Part, Role, Store, StoreError, ThreadId, Visibility,
};

const MESSAGE_COLUMNS: &str = "id, thread_id, seq, role, agent_name, author_kind, author_id, \
     content, visibility, status, metadata, reply_to, created_at";

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: MessageId,
    thread_id: ThreadId,
    seq: i64,
    role: Role,
    agent_name: Option<String>,
    author_kind: AuthorKind,
    author_id: Option<String>,
    content: Json<Content>,
    visibility: Visibility,
    status: MessageStatus,
    metadata: Json<Value>,
    reply_to: Option<MessageId>,
    created_at: DateTime<Utc>,
}

impl From<MessageRow> for Message {
    fn from(row: MessageRow) -> Self {
        Message {
            id: row.id,
            thread_id: row.thread_id,
            seq: row.seq,
            role: row.role,
            agent_name: row.agent_name,
            author: Author {
                kind: row.author_kind,
                id: row.author_id,
            },
            content: row.content.0,
            visibility: row.visibility,
            status: row.status,
            metadata: row.metadata.0,
            reply_to: row.reply_to,
            created_at: row.created_at,
        }
    }
}

impl Store {
    /// Appends a message to its thread with the thread's next `seq`, in the
    /// same transaction that advances the thread (once per idempotency key).
    pub async fn post_message(
        &self,
        new: NewMessage,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Written<Message>, StoreError> {
        self.write(job(move |mut tx| {
            let new = new.clone();
            let idempotency = idempotency.clone();
            Box::pin(async move {
                if let Some(key) = &idempotency
                    && let Some(previous) = idempotency::claim(&mut tx, key).await?
                {
                    return Ok(previous);
                }
                let message = insert_message(&mut tx, new).await?;
                if let Some(key) = &idempotency {
                    idempotency::complete(&mut tx, key, 201, &message).await?;
                }
                Ok(Written::fresh(message))
            })
        }))
        .await
    }

    /// A page of a thread's messages in `seq` order.
    pub async fn list_messages(
        &self,
        thread_id: ThreadId,
        filter: &MessageFilter,
    ) -> Result<Vec<Message>, StoreError> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE thread_id = $1 AND seq > $2
               AND (NOT $3 OR (visibility = 'public' AND status = 'published'))
             ORDER BY seq
             LIMIT $4"
        );
        let rows = on_pool!(self, p => sqlx::query_as::<_, MessageRow>(&sql)
            .bind(thread_id)
            .bind(filter.after_seq)
            .bind(filter.customer_view)
            .bind(i64::from(filter.limit))
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(Message::from).collect())
    }
}

/// Takes the thread's next seq and inserts the message, checking what it
/// refers to (its thread, `reply_to`, the tool calls it answers).
async fn insert_message(tx: &mut Tx<'_>, new: NewMessage) -> Result<Message, StoreError> {
    let now = super::now();
    let reopens = new.role == Role::User;
    let advanced: Option<(i64, String)> = on_conn!(tx, c => sqlx::query_as(
        "UPDATE threads SET
             last_seq = last_seq + 1,
             updated_at = $2,
             status = CASE WHEN $3 AND status = 'closed' THEN 'open' ELSE status END
         WHERE id = $1 AND ($4 IS NULL OR customer_id = $4)
         RETURNING last_seq, customer_id",
    )
    .bind(new.thread_id)
    .bind(now)
    .bind(reopens)
    .bind(new.customer_scope.as_deref())
    .fetch_optional(c)
    .await)?;
    let (seq, customer_id) = advanced.ok_or(StoreError::NotFound("thread"))?;
    let mut author = new.author;
    if author.kind == AuthorKind::Customer && author.id.is_none() {
        author.id = Some(customer_id);
    }

    if let Some(reply_to) = new.reply_to {
        let target: Option<(Visibility, MessageStatus)> = on_conn!(tx, c => sqlx::query_as(
            "SELECT visibility, status FROM messages WHERE id = $1 AND thread_id = $2",
        )
        .bind(reply_to)
        .bind(new.thread_id)
        .fetch_optional(c)
        .await)?;
        let visible = match target {
            None => false,
            Some(_) if new.customer_scope.is_none() => true,
            Some((visibility, status)) => {
                visibility == Visibility::Public && status == MessageStatus::Published
            }
        };
        if !visible {
            return Err(StoreError::invalid(
                "invalid_reply_to",
                format!("reply_to {reply_to} is not a message of this thread"),
            ));
        }
    }

    let message = Message {
        id: MessageId::new(),
        thread_id: new.thread_id,
        seq,
        role: new.role,
        agent_name: new.agent_name,
        author,
        content: new.content,
        visibility: new.visibility,
        status: new.status,
        metadata: new.metadata,
        reply_to: new.reply_to,
        created_at: now,
    };
    on_conn!(tx, c => sqlx::query(
        "INSERT INTO messages (id, thread_id, seq, role, agent_name, author_kind, author_id,
                               content, visibility, status, metadata, reply_to, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(message.id)
    .bind(message.thread_id)
    .bind(message.seq)
    .bind(message.role)
    .bind(&message.agent_name)
    .bind(message.author.kind)
    .bind(&message.author.id)
    .bind(Json(&message.content))
    .bind(message.visibility)
    .bind(message.status)
    .bind(Json(&message.metadata))
    .bind(message.reply_to)
    .bind(message.created_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;

    for part in message.content.parts() {
        match part {
            Part::ToolCall { id, name, .. } => record_tool_call(tx, &message, id, name).await?,
            Part::ToolResult { tool_call_id, .. } => {
                answer_tool_call(tx, &message, tool_call_id).await?
            }
            Part::Text { .. } => {}
        }
    }
    Ok(message)
}

async fn record_tool_call(
    tx: &mut Tx<'_>,
    message: &Message,
    tool_call_id: &str,
    name: &str,
) -> Result<(), StoreError> {
    let inserted = on_conn!(tx, c => sqlx::query(
        "INSERT INTO tool_calls (thread_id, tool_call_id, name, message_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(message.thread_id)
    .bind(tool_call_id)
    .bind(name)
    .bind(message.id)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if inserted == 0 {
        return Err(StoreError::conflict(
            "duplicate_tool_call",
            format!("tool call {tool_call_id:?} already exists in this thread"),
        ));
    }
    Ok(())
}

async fn answer_tool_call(
    tx: &mut Tx<'_>,
    message: &Message,
    tool_call_id: &str,
) -> Result<(), StoreError> {
    let answered: Option<Option<MessageId>> = on_conn!(tx, c => sqlx::query_scalar(
        "SELECT result_message_id FROM tool_calls WHERE thread_id = $1 AND tool_call_id = $2",
    )
    .bind(message.thread_id)
    .bind(tool_call_id)
    .fetch_optional(c)
    .await)?;
    match answered {
        None => Err(StoreError::invalid(
            "unknown_tool_call",
            format!("no tool call {tool_call_id:?} in this thread"),
        )),
        Some(Some(_)) => Err(StoreError::conflict(
            "tool_call_answered",
            format!("tool call {tool_call_id:?} already has a result"),
        )),
        Some(None) => {
            on_conn!(tx, c => sqlx::query(
                "UPDATE tool_calls SET result_message_id = $3 WHERE thread_id = $1 AND tool_call_id = $2",
            )
            .bind(message.thread_id)
            .bind(tool_call_id)
            .bind(message.id)
            .execute(c)
            .await
            .map(|r| r.rows_affected()))?;
            Ok(())
        }
    }
}
