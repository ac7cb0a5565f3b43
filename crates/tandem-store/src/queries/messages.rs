//! Messages: post and page.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use tandem_model::names::REPLY_WORKFLOW;
use tandem_model::{
    Author, AuthorKind, Content, InboxItem, Message, MessageFilter, MessageId, MessageStatus,
    NewMessage, NewRun, Part, ReplyArgs, ReplyRun, Role, Thread, ThreadId, ThreadStatus,
    Visibility,
};

use super::idempotency::{IdempotencyKey, Written};
use super::inbox::inbox_columns;
use super::workflows::insert_run;
use crate::backend::{Conn, Pool, Tx, job, on_conn, on_pool};
use crate::changes::{Change, ThreadChange};
use crate::{Store, StoreError};

/// The columns a message row is read from, as a literal for `concat!`.
macro_rules! message_columns {
    () => {
        "id, thread_id, seq, role, agent_name, author_kind, author_id, content, visibility, \
         status, metadata, reply_to, created_at"
    };
}

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
    ///
    /// A customer message that must be answered comes with its `reply` run
    /// (`reply_run`), created in the same transaction: once the message is
    /// stored, its run exists, whatever crashes next.
    pub async fn post_message(
        &self,
        new: NewMessage,
        reply_run: Option<ReplyRun>,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Written<Message>, StoreError> {
        self.write_once(
            idempotency,
            job(move |mut tx| {
                let new = new.clone();
                let reply_run = reply_run.clone();
                Box::pin(async move {
                    let message = insert_message(&mut tx, new).await?;
                    if let Some(reply_run) = reply_run {
                        start_reply(&mut tx, &message, reply_run).await?;
                    }
                    Ok(message)
                })
            }),
        )
        .await
    }

    /// Every message after a seq, for several threads at once (at most
    /// `limit` rows), in `seq` order per thread: what the hub reads when it
    /// has heard of messages it has not received.
    pub async fn messages_after(
        &self,
        after: &[(ThreadId, i64)],
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        match self.pool() {
            Pool::Postgres(pool) => {
                // LATERAL, so that each thread is one range scan of the
                // (thread_id, seq) index from its own seq on.
                const SQL: &str = concat!(
                    "SELECT m.* FROM UNNEST($1::uuid[], $2::bigint[]) AS wanted (thread, after_seq)
                     CROSS JOIN LATERAL (
                         SELECT ",
                    message_columns!(),
                    " FROM messages
                         WHERE thread_id = wanted.thread AND seq > wanted.after_seq
                         ORDER BY seq
                         LIMIT $3
                     ) AS m
                     ORDER BY m.thread_id, m.seq
                     LIMIT $3"
                );
                let threads: Vec<uuid::Uuid> = after.iter().map(|(id, _)| id.0).collect();
                let seqs: Vec<i64> = after.iter().map(|(_, seq)| *seq).collect();
                let rows = sqlx::query_as::<_, MessageRow>(SQL)
                    .bind(threads)
                    .bind(seqs)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?;
                Ok(rows.into_iter().map(Message::from).collect())
            }
            // On SQLite the hub reads this only for the rare gap between
            // two local commits: one query per thread is fine.
            Pool::Sqlite(_) => {
                let mut messages = Vec::new();
                for (thread_id, after_seq) in after {
                    let room = limit.saturating_sub(messages.len() as u32);
                    if room == 0 {
                        break;
                    }
                    let filter = MessageFilter {
                        after_seq: *after_seq,
                        limit: room,
                        customer_view: false,
                    };
                    messages.extend(self.list_messages(*thread_id, &filter).await?);
                }
                Ok(messages)
            }
        }
    }

    /// The newest `limit` messages of a thread, in `seq` order, without
    /// drafts that wait for approval or were rejected: what a prompt is
    /// built from (the prompt builder leaves out more).
    pub async fn prompt_history(
        &self,
        thread_id: ThreadId,
        limit: u32,
    ) -> Result<Vec<Message>, StoreError> {
        const SQL: &str = concat!(
            "SELECT * FROM (
                 SELECT ",
            message_columns!(),
            " FROM messages
                 WHERE thread_id = $1 AND status NOT IN ('pending_approval', 'rejected')
                 ORDER BY seq DESC
                 LIMIT $2
             ) AS recent
             ORDER BY seq"
        );
        let rows = on_pool!(self, p => sqlx::query_as::<_, MessageRow>(SQL)
            .bind(thread_id)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(Message::from).collect())
    }

    /// One message of a thread, as staff see it.
    pub async fn get_message(
        &self,
        thread_id: ThreadId,
        id: MessageId,
    ) -> Result<Option<Message>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages WHERE id = $1 AND thread_id = $2"
        );
        let row = on_pool!(self, p => sqlx::query_as::<_, MessageRow>(SQL)
            .bind(id)
            .bind(thread_id)
            .fetch_optional(p)
            .await)?;
        Ok(row.map(Message::from))
    }

    /// A page of a thread's messages in `seq` order.
    pub async fn list_messages(
        &self,
        thread_id: ThreadId,
        filter: &MessageFilter,
    ) -> Result<Vec<Message>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            message_columns!(),
            " FROM messages
             WHERE thread_id = $1 AND seq > $2
               AND (NOT $3 OR (visibility = 'public' AND status = 'published'))
             ORDER BY seq
             LIMIT $4"
        );
        let rows = on_pool!(self, p => sqlx::query_as::<_, MessageRow>(SQL)
            .bind(thread_id)
            .bind(filter.after_seq)
            .bind(filter.customer_view)
            .bind(i64::from(filter.limit))
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(Message::from).collect())
    }
}

/// Moves a draft of `thread_id` out of `pending_approval` (to `approved` or
/// `rejected`); `None` if it is not such a draft.
pub(crate) async fn settle_draft_in(
    tx: &mut Tx<'_>,
    thread_id: ThreadId,
    id: MessageId,
    status: MessageStatus,
) -> Result<Option<Message>, StoreError> {
    const SQL: &str = concat!(
        "UPDATE messages SET status = $3
         WHERE id = $1 AND thread_id = $2 AND status = 'pending_approval'
         RETURNING ",
        message_columns!()
    );
    let row = on_conn!(tx, c => sqlx::query_as::<_, MessageRow>(SQL)
        .bind(id)
        .bind(thread_id)
        .bind(status)
        .fetch_optional(c)
        .await)?;
    Ok(row.map(Message::from))
}

/// The statement that inserts a message with its thread's next seq, reading
/// the thread `t` (checking the customer's scope, filling a customer author,
/// vetting `reply_to`); a trigger (see the migrations) then advances the
/// thread's `last_seq` and reopens a closed thread on a customer's message.
/// `$with` defines `t` (PostgreSQL: the thread row, locked, so concurrent
/// writers of one thread take seqs in commit order; SQLite has a single
/// writer), and `$was_closed` says whether the thread was closed before.
macro_rules! insert_message_sql {
    ($with:literal, $from:literal, $was_closed:literal) => {
        concat!(
            $with,
            "INSERT INTO messages
        (id, thread_id, seq, role, agent_name, author_kind, author_id,
         content, visibility, status, metadata, reply_to, created_at)
    SELECT $1, t.id, t.last_seq + 1, $3, $4, $5,
           COALESCE($6, CASE WHEN $5 = 'customer' THEN t.customer_id END),
           $7, $8, $9, $10,
           (SELECT m.id FROM messages m
             WHERE m.id = $11 AND m.thread_id = t.id
               AND ($13 IS NULL OR (m.visibility = 'public' AND m.status = 'published'))),
           $12
    FROM ",
            $from,
            " WHERE t.id = $2 AND ($13 IS NULL OR t.customer_id = $13)
    RETURNING seq, author_id, reply_to, ",
            $was_closed
        )
    };
}

/// Creates the `reply` run of a customer message just inserted.
async fn start_reply(
    tx: &mut Tx<'_>,
    message: &Message,
    reply_run: ReplyRun,
) -> Result<(), StoreError> {
    let args = ReplyArgs {
        thread_id: message.thread_id,
        message_id: message.id,
        seq: message.seq,
    };
    let new = NewRun {
        name: REPLY_WORKFLOW.to_owned(),
        version: reply_run.version,
        args: serde_json::to_value(&args)
            .map_err(|e| StoreError::Corrupt(format!("reply arguments: {e}")))?,
        has_on_complete: false,
    };
    insert_run(tx, &new, reply_run.ready_at, reply_run.lease).await?;
    Ok(())
}

/// Inserts the message and checks the tool calls it makes or answers;
/// announces the message, the thread it reopened and the items it answered.
pub(crate) async fn insert_message(
    tx: &mut Tx<'_>,
    new: NewMessage,
) -> Result<Message, StoreError> {
    let now = tx.now();
    let id = new.id.unwrap_or_default();
    // A customer's message reopens a closed thread (a trigger does it), and
    // the hub must hear of that change too. PostgreSQL reads the old status
    // in the insert itself, saving a round trip; SQLite asks first, in
    // process.
    let (sql, closed_before) = match tx.conn {
        Conn::Sqlite(_) => {
            let closed = new.role == Role::User && {
                let status: Option<ThreadStatus> = on_conn!(tx, c => sqlx::query_scalar(
                    "SELECT status FROM threads WHERE id = $1",
                )
                .bind(new.thread_id)
                .fetch_optional(c)
                .await)?;
                status == Some(ThreadStatus::Closed)
            };
            (insert_message_sql!("", "threads t", "FALSE"), closed)
        }
        Conn::Postgres(_) => (
            insert_message_sql!(
                "WITH t AS (SELECT id, customer_id, last_seq, status FROM threads
                            WHERE id = $2 FOR UPDATE) ",
                "t",
                "(SELECT status FROM t) = 'closed'"
            ),
            false,
        ),
    };
    // Before the insert: on PostgreSQL this locks the thread's pending
    // items and the insert then locks the thread, the order a resolution
    // takes them (item, run, thread), so an approval racing a reply waits
    // instead of deadlocking. Nothing changes if the insert then fails.
    let items = match human_reply_by(&new) {
        Some(agent) => respond_to_items(tx, new.thread_id, agent, now).await?,
        None => Vec::new(),
    };
    let inserted: Option<(i64, Option<String>, Option<MessageId>, bool)> =
        on_conn!(tx, c => sqlx::query_as(sql)
        .bind(id)
        .bind(new.thread_id)
        .bind(new.role)
        .bind(&new.agent_name)
        .bind(new.author.kind)
        .bind(&new.author.id)
        .bind(Json(&new.content))
        .bind(new.visibility)
        .bind(new.status)
        .bind(Json(&new.metadata))
        .bind(new.reply_to)
        .bind(now)
        .bind(new.customer_scope.as_deref())
        .fetch_optional(c)
        .await)
        .map_err(|e| match e {
            // Seqs are taken under the thread's lock (PostgreSQL) or by the one
            // writer (SQLite), so only the id the caller chose can clash.
            sqlx::Error::Database(db) if new.id.is_some() && db.is_unique_violation() => {
                StoreError::conflict("message_exists", format!("message {id} already exists"))
            }
            e => StoreError::from(e),
        })?;
    let (seq, author_id, reply_to, closed_in_insert) =
        inserted.ok_or(StoreError::NotFound("thread"))?;

    let was_closed = new.role == Role::User && (closed_before || closed_in_insert);
    if let Some(wanted) = new.reply_to
        && reply_to != Some(wanted)
    {
        return Err(StoreError::invalid(
            "invalid_reply_to",
            format!("reply_to {wanted} is not a message of this thread"),
        ));
    }
    let message = Message {
        id,
        thread_id: new.thread_id,
        seq,
        role: new.role,
        agent_name: new.agent_name,
        author: Author {
            kind: new.author.kind,
            id: author_id,
        },
        content: new.content,
        visibility: new.visibility,
        status: new.status,
        metadata: new.metadata,
        reply_to,
        created_at: now,
    };

    for part in message.content.parts() {
        match part {
            Part::ToolCall { id, name, .. } => record_tool_call(tx, &message, id, name).await?,
            Part::ToolResult { tool_call_id, .. } => {
                answer_tool_call(tx, &message, tool_call_id).await?
            }
            Part::Text { .. } => {}
        }
    }
    let reopened = if was_closed {
        on_conn!(tx, c => sqlx::query_as::<_, Thread>(super::threads::SELECT_THREAD)
            .bind(message.thread_id)
            .bind(None::<String>)
            .fetch_optional(c)
            .await)?
    } else {
        None
    };
    // The message first, then what it changed, as subscribers should see
    // them.
    tx.emit(Change::message(&message));
    if let Some(thread) = &reopened {
        tx.emit(Change::thread(thread, ThreadChange::Reopened));
    }
    tx.emit_all(items.iter().map(Change::item));
    Ok(message)
}

/// The agent, when `new` is a human agent's reply the customer sees: what
/// counts as a human response to the thread's inbox items.
fn human_reply_by(new: &NewMessage) -> Option<&str> {
    let reply = new.role == Role::Assistant
        && new.author.kind == AuthorKind::Human
        && new.visibility == Visibility::Public
        && new.status == MessageStatus::Published;
    reply
        .then(|| new.agent_name.as_deref().or(new.author.id.as_deref()))
        .flatten()
}

/// A human agent replied to the customer in `thread_id`: each pending item
/// of the thread gets its first response (if it has none), and handoffs and
/// escalations, which ask for just that reply, are resolved `answered` by
/// the agent. Questions and approvals wait for their own routes. Returns
/// the items changed.
async fn respond_to_items(
    tx: &mut Tx<'_>,
    thread_id: ThreadId,
    agent: &str,
    now: DateTime<Utc>,
) -> Result<Vec<InboxItem>, StoreError> {
    // Each SET expression reads the row as it was before the update.
    const SQL: &str = concat!(
        "UPDATE inbox_items SET
             first_response_by = CASE WHEN first_response_at IS NULL THEN $2
                                      ELSE first_response_by END,
             first_response_at = COALESCE(first_response_at, $3),
             status = CASE WHEN kind IN ('handoff', 'escalation') THEN 'resolved'
                           ELSE status END,
             resolution = CASE WHEN kind IN ('handoff', 'escalation') THEN 'answered'
                               ELSE resolution END,
             resolved_by = CASE WHEN kind IN ('handoff', 'escalation') THEN $2
                                ELSE resolved_by END,
             resolved_at = CASE WHEN kind IN ('handoff', 'escalation') THEN $3
                                ELSE resolved_at END,
             updated_at = $3
         WHERE thread_id = $1 AND status IN ('open', 'claimed')
           AND (first_response_at IS NULL OR kind IN ('handoff', 'escalation'))
         RETURNING ",
        inbox_columns!()
    );
    let mut items = on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(SQL)
        .bind(thread_id)
        .bind(agent)
        .bind(now)
        .fetch_all(c)
        .await)?;
    items.sort_by_key(|item| item.id);
    Ok(items)
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
