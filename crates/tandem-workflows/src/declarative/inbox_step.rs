//! What `ask_human` and `approval` steps store for people, and what they
//! make of a person's resolution.
//!
//! Both open an inbox item with [`Context::open_item`] (the message it is
//! about, the item and the journal entry commit together: exactly once),
//! then wait for the event `inbox:<item id>` that resolving the item
//! delivers, in the resolution's own transaction:
//! `{"resolution", "by", "text", "message_id"}`.
//!
//! [`Context::open_item`]: crate::context::Context::open_item

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tandem_model::metadata::{PROVIDER, PROVIDER_METADATA};
use tandem_model::names::ASK_HUMAN_TOOL;
use tandem_model::{
    Author, AuthorKind, Content, InboxItemId, InboxKind, MessageStatus, NewInboxItem, NewMessage,
    OpenItem, OpenedItem, Part, Role, RunId, ThreadId, Visibility,
};
use tandem_store::{Store, StoreError};

use crate::error::ActionError;

/// Who stores an item, and for which run and step.
pub(crate) struct Origin<'a> {
    pub thread_id: ThreadId,
    pub run_id: RunId,
    pub agent_name: &'a str,
    /// `{name, version, run_id, step}`, kept in the message's metadata.
    pub workflow: Value,
    pub reason: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
}

impl Origin<'_> {
    fn message(&self, content: Content, status: MessageStatus) -> NewMessage {
        NewMessage {
            id: None,
            thread_id: self.thread_id,
            role: Role::Assistant,
            agent_name: Some(self.agent_name.to_owned()),
            author: Author {
                kind: AuthorKind::Ai,
                id: Some(self.agent_name.to_owned()),
            },
            content,
            visibility: Visibility::Internal,
            status,
            // As `post_message` marks an AI agent's messages: the provider
            // is the workflow.
            metadata: json!({
                PROVIDER: "workflow",
                PROVIDER_METADATA: {"workflow": self.workflow},
            }),
            reply_to: None,
            customer_scope: None,
        }
    }

    fn item(&self, kind: InboxKind, body: String, tool_call_id: Option<String>) -> NewInboxItem {
        NewInboxItem {
            kind,
            thread_id: self.thread_id,
            // The effect sets it to the message it stores with the item.
            message_id: None,
            tool_call_id,
            body: Some(body),
            suggestion: None,
            reason: self.reason.clone(),
            due_at: self.due_at,
            due_in: None,
            team: None,
            priority: tandem_model::Priority::Normal,
            run_id: Some(self.run_id),
        }
    }
}

/// A `question` item, about an internal assistant message that calls the
/// `ask_human` tool with `{"question": …}`: answering it stores the answer
/// as that call's result (`role: tool`, provider `human`), so a later model
/// call on the thread sees the question and its answer.
///
/// The call's id is drawn here, not journaled: the effect journals the item
/// (with the id) the first time, and a replay returns that item.
pub(crate) fn question(origin: &Origin<'_>, question: String) -> OpenItem {
    let call_id = format!("call_{}", uuid::Uuid::now_v7().simple());
    let call = Part::ToolCall {
        id: call_id.clone(),
        name: ASK_HUMAN_TOOL.to_owned(),
        arguments: json!({"question": question}),
    };
    OpenItem {
        message: Some(origin.message(Content::Parts(vec![call]), MessageStatus::Published)),
        item: origin.item(InboxKind::Question, question, Some(call_id)),
        assign: None,
    }
}

/// An `approval` item about a draft: an internal assistant message pending
/// approval. Approving publishes a copy as the thread's next message (the
/// inbox does); rejecting hands the thread to humans.
pub(crate) fn approval(origin: &Origin<'_>, text: String) -> OpenItem {
    OpenItem {
        message: Some(origin.message(Content::Text(text.clone()), MessageStatus::PendingApproval)),
        item: origin.item(InboxKind::Approval, text, None),
        assign: None,
    }
}

/// The event that resolving the opened item delivers to the run.
pub(crate) fn event(opened: &OpenedItem) -> String {
    format!("inbox:{}", opened.item.id)
}

/// An `ask_human` step's result.
pub(crate) fn answered(opened: &OpenedItem, payload: Option<&Value>) -> Value {
    let field = |name: &str| payload.and_then(|p| p.get(name)).cloned();
    json!({
        "answer": field("text").unwrap_or(Value::Null),
        "by": field("by").unwrap_or(Value::Null),
        "item_id": opened.item.id,
        "message_id": field("message_id").unwrap_or(Value::Null),
        "timed_out": payload.is_none(),
    })
}

/// An `approval` step's result: `text` is what was published (the edit,
/// or the draft as it was), `review` what a rejection said.
pub(crate) fn reviewed(opened: &OpenedItem, draft: &str, payload: Option<&Value>) -> Value {
    let field = |name: &str| payload.and_then(|p| p.get(name)).cloned();
    let resolution = field("resolution")
        .and_then(|r| r.as_str().map(str::to_owned))
        .unwrap_or_else(|| "expired".to_owned());
    let approved = resolution == "approved";
    let written = field("text").filter(|t| !t.is_null());
    let (text, review) = match (approved, written) {
        (true, Some(edited)) => (edited, Value::Null),
        (true, None) => (Value::String(draft.to_owned()), Value::Null),
        (false, review) => (Value::Null, review.unwrap_or(Value::Null)),
    };
    json!({
        "approved": approved,
        "resolution": resolution,
        "text": text,
        "review": review,
        "by": field("by").unwrap_or(Value::Null),
        "message_id": if approved { field("message_id").unwrap_or(Value::Null) } else { Value::Null },
        "draft_id": opened.message.as_ref().map(|m| m.id),
        "item_id": opened.item.id,
        "timed_out": payload.is_none(),
    })
}

/// Marks an item the run no longer waits for `expired`, unless a person
/// resolved it meanwhile (the store checks both in one statement).
/// `{"expired": bool}`.
pub(crate) async fn expire(store: &Store, item: InboxItemId) -> Result<Value, ActionError> {
    let expired = store
        .expire_inbox_item(item)
        .await
        .map_err(|e: StoreError| ActionError::retryable(e.to_string()))?;
    Ok(json!({"expired": expired.is_some()}))
}
