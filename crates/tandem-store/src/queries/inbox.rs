//! Inbox items: open, change, read, and resolve.
//!
//! A resolution (an answer, an approval, a rejection) is one transaction
//! that also delivers the event `inbox:<item id>` to the run waiting on the
//! item: a crash can never leave an item resolved and its run asleep.
//! Locks are taken item, run, thread, the same order a journal commit takes
//! run then thread, so resolutions and commits do not deadlock.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tandem_model::metadata::{APPROVAL, PROVIDER, PROVIDER_METADATA};
use tandem_model::names::{ASK_HUMAN_TOOL, DEADLINE_VERSION, DEADLINE_WORKFLOW};
use tandem_model::{
    AssignedTo, Author, AuthorKind, Content, EventSource, InboxActor, InboxFilter, InboxItem,
    InboxItemId, InboxKind, InboxResolution, InboxStatus, InboxStatuses, InboxView, Message,
    MessageId, MessageStatus, NewAssignment, NewInboxItem, NewMessage, NewRun, Part, Release,
    Resolved, Role, RunId, RunStatus, Thread, ThreadId, Visibility, WorkflowRun,
};

use super::messages::{insert_message, settle_draft_in};
use super::workflows::{NewEvent, assign_in, create_run_in, deliver_in, lock_run};
use crate::backend::{Tx, job, on_conn, on_pool};
use crate::changes::Change;
use crate::{Store, StoreError};

/// The columns an inbox item is read from, as a literal for `concat!`.
macro_rules! inbox_columns {
    () => {
        "id, kind, thread_id, message_id, tool_call_id, body, suggestion, reason, status, \
         claimed_by, claimed_at, last_activity_at, due_at, team, priority, first_response_at, \
         first_response_by, expiries, last_expired_at, run_id, resolution, review, resolved_by, \
         resolved_at, created_at, updated_at"
    };
}

pub(crate) use inbox_columns;

/// Where items without a `due_at` sort: after every real deadline
/// (9999-12-31T23:59:59Z, the latest time both backends store).
fn no_deadline() -> DateTime<Utc> {
    DateTime::from_timestamp(253_402_300_799, 0).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl Store {
    /// Opens an item for humans.
    pub async fn open_inbox_item(&self, new: NewInboxItem) -> Result<InboxItem, StoreError> {
        let id = InboxItemId::new();
        self.write(job(move |mut tx| {
            let new = new.clone();
            Box::pin(async move { open_item_in(&mut tx, id, new).await })
        }))
        .await
    }

    /// Marks an item `expired` if it is still `open` or `claimed`, in one
    /// statement, so that a resolution committed at the same moment wins.
    /// The item when it was expired; none when it was already resolved (or
    /// does not exist).
    pub async fn expire_inbox_item(
        &self,
        id: InboxItemId,
    ) -> Result<Option<InboxItem>, StoreError> {
        const SQL: &str = concat!(
            "UPDATE inbox_items SET status = 'expired', updated_at = $2
             WHERE id = $1 AND status IN ('open', 'claimed') RETURNING ",
            inbox_columns!()
        );
        self.write(job(move |mut tx| {
            Box::pin(async move {
                let now = tx.now();
                let item = on_conn!(&mut tx, c => sqlx::query_as::<_, InboxItem>(SQL)
                    .bind(id)
                    .bind(now)
                    .fetch_optional(c)
                    .await)?;
                tx.emit_all(item.iter().map(Change::item));
                Ok(item)
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
        self.write(job(move |mut tx| {
            let claimed_by = claimed_by.clone();
            Box::pin(async move {
                let now = tx.now();
                let item = on_conn!(&mut tx, c => sqlx::query_as::<_, InboxItem>(SQL)
                    .bind(id)
                    .bind(status)
                    .bind(&claimed_by)
                    .bind(now)
                    .fetch_optional(c)
                    .await)?
                .ok_or(StoreError::NotFound("inbox item"))?;
                tx.emit(Change::item(&item));
                Ok(item)
            })
        }))
        .await
    }

    /// Claims an item for `actor`, in one conditional statement: an `open`
    /// item becomes `claimed` by the actor; an item the actor already holds
    /// stays theirs, its activity refreshed (a claim again is idempotent).
    /// 409 `already_claimed` when another agent holds it (whoever the actor
    /// is: an admin takes an item over by releasing it first), `item_closed`
    /// when it is resolved or expired.
    pub async fn claim_inbox_item(
        &self,
        id: InboxItemId,
        actor: &InboxActor,
    ) -> Result<InboxItem, StoreError> {
        const SQL: &str = concat!(
            "UPDATE inbox_items SET status = 'claimed', claimed_by = $2,
                 claimed_at = CASE WHEN status = 'claimed' THEN claimed_at ELSE $3 END,
                 last_activity_at = $3, updated_at = $3
             WHERE id = $1 AND (status = 'open' OR (status = 'claimed' AND claimed_by = $2))
             RETURNING ",
            inbox_columns!()
        );
        let by = actor.name.clone();
        let claimed = self
            .write(job(move |mut tx| {
                let by = by.clone();
                Box::pin(async move {
                    let now = tx.now();
                    let item = on_conn!(&mut tx, c => sqlx::query_as::<_, InboxItem>(SQL)
                        .bind(id)
                        .bind(&by)
                        .bind(now)
                        .fetch_optional(c)
                        .await)?;
                    tx.emit_all(item.iter().map(Change::item));
                    Ok(item)
                })
            }))
            .await?;
        if let Some(item) = claimed {
            return Ok(item);
        }
        // Why not: read after the fact, so the answer may trail a change
        // made since, never the claim itself.
        let item = self
            .get_inbox_item(id)
            .await?
            .ok_or(StoreError::NotFound("inbox item"))?;
        match (item.status, item.claimed_by) {
            (InboxStatus::Claimed, Some(holder)) => Err(StoreError::conflict(
                "already_claimed",
                format!("inbox item {id} is claimed by {holder}"),
            )),
            (InboxStatus::Resolved | InboxStatus::Expired, _) => Err(StoreError::conflict(
                "item_closed",
                format!("inbox item {id} is already {}", item.status),
            )),
            _ => Err(StoreError::conflict(
                "already_claimed",
                format!("inbox item {id} changed while being claimed; try again"),
            )),
        }
    }

    /// Gives a claimed item back to the queue (`open`, claimed by nobody),
    /// if `actor` holds it or may override claims. An item that is not
    /// claimed is left as it is; 409 `item_closed` for a resolved or
    /// expired one.
    pub async fn release_inbox_item(
        &self,
        id: InboxItemId,
        actor: &InboxActor,
    ) -> Result<Release, StoreError> {
        const SQL: &str = concat!(
            "UPDATE inbox_items SET status = 'open', claimed_by = NULL, claimed_at = NULL,
                 last_activity_at = NULL, updated_at = $3
             WHERE id = $1 AND status = 'claimed' AND ($2 OR claimed_by = $4)
             RETURNING ",
            inbox_columns!()
        );
        let (by, overrides) = (actor.name.clone(), actor.overrides_claims);
        let released = self
            .write(job(move |mut tx| {
                let by = by.clone();
                Box::pin(async move {
                    let now = tx.now();
                    let item = on_conn!(&mut tx, c => sqlx::query_as::<_, InboxItem>(SQL)
                        .bind(id)
                        .bind(overrides)
                        .bind(now)
                        .bind(&by)
                        .fetch_optional(c)
                        .await)?;
                    tx.emit_all(item.iter().map(Change::item));
                    Ok(item)
                })
            }))
            .await?;
        if let Some(item) = released {
            return Ok(Release::Released(item));
        }
        let item = self
            .get_inbox_item(id)
            .await?
            .ok_or(StoreError::NotFound("inbox item"))?;
        match item.status {
            InboxStatus::Resolved | InboxStatus::Expired => Err(StoreError::conflict(
                "item_closed",
                format!("inbox item {id} is already {}", item.status),
            )),
            InboxStatus::Claimed => Ok(Release::HeldByOther {
                holder: item.claimed_by.unwrap_or_default(),
            }),
            InboxStatus::Open => Ok(Release::NotClaimed(item)),
        }
    }

    /// Gives every claim idle since before `idle_before` back to the queue,
    /// in one guarded statement (a claim refreshed or resolved meanwhile is
    /// left alone), and returns the items it released. Claims taken before
    /// activity was recorded count from their last change.
    pub async fn release_idle_claims(
        &self,
        idle_before: DateTime<Utc>,
    ) -> Result<Vec<InboxItem>, StoreError> {
        const SQL: &str = concat!(
            "UPDATE inbox_items SET status = 'open', claimed_by = NULL, claimed_at = NULL,
                 last_activity_at = NULL, updated_at = $2
             WHERE status = 'claimed' AND COALESCE(last_activity_at, updated_at) < $1
             RETURNING ",
            inbox_columns!()
        );
        self.write(job(move |mut tx| {
            Box::pin(async move {
                let now = tx.now();
                let items = on_conn!(&mut tx, c => sqlx::query_as::<_, InboxItem>(SQL)
                    .bind(idle_before)
                    .bind(now)
                    .fetch_all(c)
                    .await)?;
                tx.emit_all(items.iter().map(Change::item));
                Ok(items)
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

    /// Items changed since `since`, in the order they changed (at most
    /// `limit`): what a process that may have missed another's signal
    /// reads again (PostgreSQL).
    pub async fn inbox_items_changed_since(
        &self,
        since: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<InboxItem>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            inbox_columns!(),
            " FROM inbox_items WHERE updated_at >= $1 ORDER BY updated_at, id LIMIT $2"
        );
        Ok(on_pool!(self, p => sqlx::query_as::<_, InboxItem>(SQL)
            .bind(since)
            .bind(i64::from(limit))
            .fetch_all(p)
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

    /// Items matching the filter, most urgent first: by `due_at` (items without one last),
    /// then oldest first. An `after` cursor that names no
    /// item gives an empty page.
    pub async fn list_inbox(&self, filter: &InboxFilter) -> Result<Vec<InboxItem>, StoreError> {
        // The sort key is (COALESCE(due_at, $1), id); the cursor's key is
        // read from its row. Pending items are few: the sort is in memory.
        const SQL: &str = concat!(
            "SELECT ",
            inbox_columns!(),
            " FROM inbox_items
             WHERE ($2 IS NULL OR kind = $2)
               AND (NOT $3 OR status IN ('open', 'claimed'))
               AND ($4 IS NULL OR status = $4)
               AND ($5 IS NULL OR thread_id = $5)
               AND ($8 IS NULL OR claimed_by = $8)
               AND ($9 IS NULL OR team = $9)
               AND ($6 IS NULL OR COALESCE(due_at, $1) > (SELECT COALESCE(c.due_at, $1)
                                                           FROM inbox_items c WHERE c.id = $6)
                    OR (COALESCE(due_at, $1) = (SELECT COALESCE(c.due_at, $1)
                                                FROM inbox_items c WHERE c.id = $6)
                        AND id > $6))
             ORDER BY COALESCE(due_at, $1), id
             LIMIT $7"
        );
        let (pending, only) = match filter.status {
            InboxStatuses::Pending => (true, None),
            InboxStatuses::All => (false, None),
            InboxStatuses::Only(status) => (false, Some(status)),
        };
        Ok(on_pool!(self, p => sqlx::query_as::<_, InboxItem>(SQL)
            .bind(no_deadline())
            .bind(filter.kind)
            .bind(pending)
            .bind(only)
            .bind(filter.thread_id)
            .bind(filter.after)
            .bind(i64::from(filter.limit))
            .bind(&filter.claimed_by)
            .bind(&filter.team)
            .fetch_all(p)
            .await)?)
    }

    /// Items with their context ([`InboxView`]): the thread and its latest
    /// `history` messages, read once per thread.
    pub async fn inbox_views(
        &self,
        items: Vec<InboxItem>,
        history: u32,
    ) -> Result<Vec<InboxView>, StoreError> {
        use futures::{StreamExt, TryStreamExt};
        // Each thread once, several at a time: a burst of changes (a claim
        // race, a sweep) must not queue behind one round trip per thread.
        const READS_AT_ONCE: usize = 8;
        let mut ids: Vec<ThreadId> = items.iter().map(|i| i.thread_id).collect();
        ids.sort_unstable();
        ids.dedup();
        let threads: std::collections::HashMap<ThreadId, (Option<Thread>, Vec<Message>)> =
            futures::stream::iter(ids)
                .map(|id| async move {
                    let read = tokio::try_join!(
                        self.get_thread(id, None),
                        self.prompt_history(id, history),
                    )?;
                    Ok::<_, StoreError>((id, read))
                })
                .buffer_unordered(READS_AT_ONCE)
                .try_collect()
                .await?;
        Ok(items
            .into_iter()
            .map(|item| {
                let (thread, history) = threads[&item.thread_id].clone();
                InboxView {
                    item,
                    thread,
                    history,
                }
            })
            .collect())
    }

    /// The items a run waits on that are still open or claimed, oldest first.
    pub async fn open_items_for_run(&self, run_id: RunId) -> Result<Vec<InboxItem>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            inbox_columns!(),
            " FROM inbox_items WHERE run_id = $1 AND status IN ('open', 'claimed') ORDER BY id"
        );
        Ok(on_pool!(self, p => sqlx::query_as::<_, InboxItem>(SQL)
            .bind(run_id)
            .fetch_all(p)
            .await)?)
    }

    /// Answers a `question`: the answer is stored as the result of the AI's
    /// `ask_human` tool call (`role: tool`, internal, provider `human`), the
    /// item is resolved `answered`, and the run waiting on it is sent
    /// `inbox:<item id>` (due at `now`, µs on the workflow clock).
    pub async fn answer_question(
        &self,
        item_id: InboxItemId,
        text: String,
        by: impl Into<InboxActor>,
        now: i64,
    ) -> Result<Resolved, StoreError> {
        self.answer_item(item_id, Some(InboxKind::Question), text, by.into(), now)
            .await
    }

    /// Answers an item as its kind asks: a `question` as
    /// [`Store::answer_question`]; a `handoff` or an `escalation` with
    /// `text` posted to the customer as the agent's reply (public,
    /// `agent_name` and provider `human`); any other kind is 409
    /// `wrong_item_kind`. The item is resolved `answered`.
    pub async fn answer(
        &self,
        item_id: InboxItemId,
        text: String,
        by: impl Into<InboxActor>,
        now: i64,
    ) -> Result<Resolved, StoreError> {
        self.answer_item(item_id, None, text, by.into(), now).await
    }

    /// Takes item `item_id` as a `kind` item (by default, as its own kind
    /// asks), posts the answer `text` (see [`answer_message`]), and
    /// resolves the item `answered` with it, in one transaction.
    async fn answer_item(
        &self,
        item_id: InboxItemId,
        kind: Option<InboxKind>,
        text: String,
        actor: InboxActor,
        now: i64,
    ) -> Result<Resolved, StoreError> {
        self.write(job(move |mut tx| {
            let (text, actor) = (text.clone(), actor.clone());
            Box::pin(async move {
                let tx = &mut tx;
                let item = lock_item(tx, item_id)
                    .await?
                    .ok_or(StoreError::NotFound("inbox item"))?;
                let kind = kind.unwrap_or(match item.kind {
                    InboxKind::Handoff | InboxKind::Escalation => InboxKind::Handoff,
                    _ => InboxKind::Question,
                });
                let (item, run) = take_locked(tx, item, kind, &actor).await?;
                let message = answer_message(&item, kind, &actor.name, &text)?;
                let answer = insert_message(tx, message).await?;
                let resolution = Resolution {
                    kind: InboxResolution::Answered,
                    by: actor.name,
                    review: None,
                    text: Some(text),
                    message_id: Some(answer.id),
                };
                let (item, run, run_ready) = resolve(tx, &item, run, resolution, now).await?;
                Ok(Resolved {
                    item,
                    thread: None,
                    message: Some(answer),
                    draft: None,
                    run,
                    run_ready,
                })
            })
        }))
        .await
    }

    /// Approves an `approval`'s draft, `edited` or as it is: the draft
    /// becomes `approved` (and stays internal), and the reply is published
    /// as the thread's next message, with `metadata.approval` saying who
    /// approved which draft and whether they edited it. The item is
    /// resolved `approved` and its run sent `inbox:<item id>`.
    pub async fn approve_draft(
        &self,
        item_id: InboxItemId,
        edited: Option<String>,
        by: impl Into<InboxActor>,
        now: i64,
    ) -> Result<Resolved, StoreError> {
        let actor = by.into();
        self.write(job(move |mut tx| {
            let (edited, actor) = (edited.clone(), actor.clone());
            let by = actor.name.clone();
            Box::pin(async move {
                let tx = &mut tx;
                let (item, run) = take_item(tx, item_id, InboxKind::Approval, &actor).await?;
                let (draft, reply) = publish_draft_in(
                    tx,
                    &item,
                    edited.clone(),
                    json!({"approved_by": by, "edited": edited.is_some()}),
                )
                .await?;
                let resolution = Resolution {
                    kind: InboxResolution::Approved,
                    by,
                    review: None,
                    text: edited,
                    message_id: Some(reply.id),
                };
                let (item, run, run_ready) = resolve(tx, &item, run, resolution, now).await?;
                Ok(Resolved {
                    item,
                    thread: None,
                    message: Some(reply),
                    draft: Some(draft),
                    run,
                    run_ready,
                })
            })
        }))
        .await
    }

    /// Rejects an `approval`'s draft with a review: the draft becomes
    /// `rejected`, the item is resolved `rejected` (with the review), the
    /// thread is assigned to humans, and the run is sent `inbox:<item id>`.
    pub async fn reject_draft(
        &self,
        item_id: InboxItemId,
        review: String,
        by: impl Into<InboxActor>,
        now: i64,
    ) -> Result<Resolved, StoreError> {
        let actor = by.into();
        self.write(job(move |mut tx| {
            let (review, actor) = (review.clone(), actor.clone());
            let by = actor.name.clone();
            Box::pin(async move {
                let tx = &mut tx;
                let (item, run) = take_item(tx, item_id, InboxKind::Approval, &actor).await?;
                let draft = settle_draft(tx, &item, MessageStatus::Rejected).await?;
                let thread = assign_in(
                    tx,
                    NewAssignment {
                        thread_id: item.thread_id,
                        assigned_to: AssignedTo::Human,
                        assignee: None,
                        team: None,
                        reason: Some(format!("draft rejected: {review}")),
                        by_kind: "human".into(),
                        by_id: Some(by.clone()),
                    },
                )
                .await?;
                let resolution = Resolution {
                    kind: InboxResolution::Rejected,
                    by,
                    review: Some(review.clone()),
                    text: Some(review),
                    message_id: None,
                };
                let (item, run, run_ready) = resolve(tx, &item, run, resolution, now).await?;
                Ok(Resolved {
                    item,
                    message: None,
                    draft: Some(draft),
                    thread: Some(thread),
                    run,
                    run_ready,
                })
            })
        }))
        .await
    }
}

/// Inserts an item of an existing thread. Its team is the one named, else
/// the team of the thread's latest assignment; its deadline is `due_at`, or
/// `due_in` from now, in which case the item's deadline run is created in
/// the same transaction ([`DEADLINE_WORKFLOW`]), so a deadline can never be
/// left without its timer.
pub(crate) async fn open_item_in(
    tx: &mut Tx<'_>,
    id: InboxItemId,
    new: NewInboxItem,
) -> Result<InboxItem, StoreError> {
    const SQL: &str = concat!(
        "INSERT INTO inbox_items (",
        inbox_columns!(),
        ") SELECT $1, $2, t.id, $4, $5, $6, $7, $8, 'open', NULL, NULL, NULL, $9,
                  COALESCE($12, (SELECT a.team FROM assignments a WHERE a.thread_id = t.id
                                 ORDER BY a.id DESC LIMIT 1)),
                  $13, NULL, NULL, 0, NULL, $11, NULL, NULL, NULL, NULL, $10, $10
           FROM threads t WHERE t.id = $3
         RETURNING ",
        inbox_columns!()
    );
    let now = tx.now();
    let due_at = new.due_at.or_else(|| {
        let due_in = chrono::Duration::from_std(new.due_in?).ok()?;
        now.checked_add_signed(due_in)
    });
    let item = on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(SQL)
        .bind(id)
        .bind(new.kind)
        .bind(new.thread_id)
        .bind(new.message_id)
        .bind(&new.tool_call_id)
        .bind(&new.body)
        .bind(&new.suggestion)
        .bind(&new.reason)
        .bind(due_at)
        .bind(now)
        .bind(new.run_id)
        .bind(&new.team)
        .bind(new.priority)
        .fetch_optional(c)
        .await)?
    .ok_or(StoreError::NotFound("thread"))?;
    tx.emit(Change::item(&item));
    if let (Some(due_at), Some(_)) = (item.due_at, new.due_in) {
        create_run_in(
            tx,
            &NewRun {
                name: DEADLINE_WORKFLOW.into(),
                version: DEADLINE_VERSION.into(),
                args: json!({"item_id": item.id}),
                has_on_complete: false,
            },
            super::workflows::micros(due_at),
        )
        .await?;
    }
    Ok(item)
}

/// A message written by the human `by` about `item` (a reply to the
/// message the item is about), marked as an agent's: provider `human`.
/// The message answering `item` as a `kind` item: the result of the AI's
/// `ask_human` tool call for a question, else the agent's public reply.
fn answer_message(
    item: &InboxItem,
    kind: InboxKind,
    by: &str,
    text: &str,
) -> Result<NewMessage, StoreError> {
    if kind != InboxKind::Question {
        return Ok(human_message(
            item,
            by,
            Role::Assistant,
            Content::Text(text.to_owned()),
            Visibility::Public,
        ));
    }
    let tool_call_id = item.tool_call_id.clone().ok_or_else(|| {
        StoreError::invalid(
            "no_tool_call",
            format!("question {} names no tool call to answer", item.id),
        )
    })?;
    Ok(human_message(
        item,
        by,
        Role::Tool,
        Content::Parts(vec![Part::ToolResult {
            tool_call_id,
            name: ASK_HUMAN_TOOL.to_owned(),
            result: json!({"answer": text}),
            is_error: false,
        }]),
        Visibility::Internal,
    ))
}

fn human_message(
    item: &InboxItem,
    by: &str,
    role: Role,
    content: Content,
    visibility: Visibility,
) -> NewMessage {
    NewMessage {
        id: None,
        thread_id: item.thread_id,
        role,
        agent_name: Some(by.to_owned()),
        author: Author {
            kind: AuthorKind::Human,
            id: Some(by.to_owned()),
        },
        content,
        visibility,
        status: MessageStatus::Published,
        metadata: json!({
            PROVIDER: "human",
            PROVIDER_METADATA: {"human": {"name": by}},
        }),
        reply_to: item.message_id,
        customer_scope: None,
    }
}

/// Publishes an approval's draft (`edited`, or as written) as the thread's
/// next public message, the draft becoming `approved`; `approval` (who, how)
/// is recorded in the reply's `metadata.approval`, with the draft's id.
pub(crate) async fn publish_draft_in(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    edited: Option<String>,
    approval: Value,
) -> Result<(tandem_model::Message, tandem_model::Message), StoreError> {
    let draft = settle_draft(tx, item, MessageStatus::Approved).await?;
    let mut metadata = match draft.metadata.clone() {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    let mut approval = match approval {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    approval.insert("draft_id".into(), json!(draft.id));
    metadata.insert(APPROVAL.into(), Value::Object(approval));
    let reply = NewMessage {
        id: None,
        thread_id: item.thread_id,
        role: Role::Assistant,
        agent_name: draft.agent_name.clone(),
        author: draft.author.clone(),
        content: edited.map_or_else(|| draft.content.clone(), Content::Text),
        visibility: Visibility::Public,
        status: MessageStatus::Published,
        metadata: Value::Object(metadata),
        reply_to: draft.reply_to,
        customer_scope: None,
    };
    let reply = insert_message(tx, reply).await?;
    Ok((draft, reply))
}

/// Who holds `item`, when it is claimed by someone other than `actor` and
/// `actor` may not override claims.
fn held_by_other<'a>(item: &'a InboxItem, actor: &InboxActor) -> Option<&'a str> {
    if item.status != InboxStatus::Claimed || actor.overrides_claims {
        return None;
    }
    item.claimed_by
        .as_deref()
        .filter(|holder| *holder != actor.name)
}

/// Reads an item in a write transaction, locked on PostgreSQL (SQLite's
/// one writer needs no lock).
pub(crate) async fn lock_item(
    tx: &mut Tx<'_>,
    id: InboxItemId,
) -> Result<Option<InboxItem>, StoreError> {
    const SELECT: &str = concat!(
        "SELECT ",
        inbox_columns!(),
        " FROM inbox_items WHERE id = $1"
    );
    const LOCK: &str = concat!(
        "SELECT ",
        inbox_columns!(),
        " FROM inbox_items WHERE id = $1 FOR UPDATE"
    );
    let sql = if tx.is_postgres() { LOCK } else { SELECT };
    Ok(on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(sql)
        .bind(id)
        .fetch_optional(c)
        .await)?)
}

/// Reads and locks an item about to be resolved, and the run waiting on it,
/// checking that it is of `kind`, still waiting for someone, and not held by
/// another agent.
async fn take_item(
    tx: &mut Tx<'_>,
    id: InboxItemId,
    kind: InboxKind,
    actor: &InboxActor,
) -> Result<(InboxItem, Option<WorkflowRun>), StoreError> {
    let item = lock_item(tx, id)
        .await?
        .ok_or(StoreError::NotFound("inbox item"))?;
    take_locked(tx, item, kind, actor).await
}

/// [`take_item`] for an item already locked in this transaction.
async fn take_locked(
    tx: &mut Tx<'_>,
    item: InboxItem,
    kind: InboxKind,
    actor: &InboxActor,
) -> Result<(InboxItem, Option<WorkflowRun>), StoreError> {
    let id = item.id;
    let kind_fits = match kind {
        // An escalation and a handoff ask for the same: a human's reply.
        InboxKind::Handoff | InboxKind::Escalation => {
            matches!(item.kind, InboxKind::Handoff | InboxKind::Escalation)
        }
        kind => item.kind == kind,
    };
    if !kind_fits {
        return Err(StoreError::conflict(
            "wrong_item_kind",
            format!("inbox item {id} is a {} item, not a {kind} item", item.kind),
        ));
    }
    if !matches!(item.status, InboxStatus::Open | InboxStatus::Claimed) {
        return Err(StoreError::conflict(
            "item_closed",
            format!("inbox item {id} is already {}", item.status),
        ));
    }
    if let Some(holder) = held_by_other(&item, actor) {
        return Err(StoreError::conflict(
            "claimed_by_other",
            format!("inbox item {id} is claimed by {holder}"),
        ));
    }
    let run = match item.run_id {
        Some(run_id) => Some(lock_run(tx, run_id).await?),
        None => None,
    };
    // A question or a draft belongs to its reply run: once that run was
    // cancelled (a takeover, an operator), answering or approving it would
    // publish a reply nobody is waiting for.
    if matches!(kind, InboxKind::Question | InboxKind::Approval)
        && run
            .as_ref()
            .is_some_and(|r| r.status == RunStatus::Cancelled)
    {
        return Err(StoreError::conflict(
            "run_cancelled",
            format!("the reply inbox item {id} belongs to was cancelled"),
        ));
    }
    Ok((item, run))
}

/// Moves an approval's draft out of `pending_approval`.
async fn settle_draft(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    status: MessageStatus,
) -> Result<tandem_model::Message, StoreError> {
    let draft_id = item.message_id.ok_or_else(|| {
        StoreError::invalid(
            "no_draft",
            format!("approval {} names no draft message", item.id),
        )
    })?;
    settle_draft_in(tx, item.thread_id, draft_id, status)
        .await?
        .ok_or_else(|| {
            StoreError::conflict(
                "draft_not_pending",
                format!("message {draft_id} is not a draft waiting for approval"),
            )
        })
}

/// How an item is being resolved, and what its run is told.
struct Resolution {
    kind: InboxResolution,
    by: String,
    review: Option<String>,
    /// What the human wrote: the answer, the edited reply, the review.
    text: Option<String>,
    /// The message the resolution posted.
    message_id: Option<MessageId>,
}

/// Marks the item resolved and delivers `inbox:<item id>` to its run (one
/// that has not finished); says whether the run became due.
async fn resolve(
    tx: &mut Tx<'_>,
    item: &InboxItem,
    run: Option<WorkflowRun>,
    resolution: Resolution,
    now: i64,
) -> Result<(InboxItem, Option<WorkflowRun>, bool), StoreError> {
    const SQL: &str = concat!(
        "UPDATE inbox_items SET
             status = 'resolved', resolution = $2, review = $3, resolved_by = $4,
             resolved_at = $5, updated_at = $5,
             first_response_by = CASE WHEN first_response_at IS NULL THEN $4
                                      ELSE first_response_by END,
             first_response_at = COALESCE(first_response_at, $5)
         WHERE id = $1 RETURNING ",
        inbox_columns!()
    );
    let resolved_at = tx.now();
    let resolved = on_conn!(tx, c => sqlx::query_as::<_, InboxItem>(SQL)
        .bind(item.id)
        .bind(resolution.kind)
        .bind(&resolution.review)
        .bind(&resolution.by)
        .bind(resolved_at)
        .fetch_one(c)
        .await)?;
    tx.emit(Change::item(&resolved));
    let Some(run) = run else {
        return Ok((resolved, None, false));
    };
    if run.status.is_finished() {
        // Nobody waits any more (the run was cancelled, or failed).
        return Ok((resolved, Some(run), false));
    }
    let was_waiting = run.status == RunStatus::Waiting;
    let name = format!("inbox:{}", item.id);
    let event = NewEvent {
        run_id: run.id,
        payload: json!({
            "resolution": resolution.kind,
            "by": resolution.by,
            "text": resolution.text,
            "message_id": resolution.message_id,
        }),
        source: EventSource::Api,
        // An item is resolved once; the key makes that a constraint.
        delivery: Some(name.clone()),
        name,
    };
    let delivered = deliver_in(tx, run, event, now, None).await?;
    let ready = was_waiting && !delivered.duplicate && delivered.run.status == RunStatus::Running;
    Ok((resolved, Some(delivered.run), ready))
}
