//! Inbox items: work waiting for a human support agent.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{InboxItemId, InboxKind, InboxStatus, MessageId, ThreadId};

/// One piece of work for a human: a question, a draft to approve, an
/// escalation or a handoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
pub struct InboxItem {
    pub id: InboxItemId,
    pub kind: InboxKind,
    pub thread_id: ThreadId,
    /// The message the item is about (the draft, the escalated reply).
    pub message_id: Option<MessageId>,
    /// The tool call a `question` answers.
    pub tool_call_id: Option<String>,
    /// The question, or the draft's text.
    pub body: Option<String>,
    /// The AI's suggested reply.
    pub suggestion: Option<String>,
    /// Why the item was opened.
    pub reason: Option<String>,
    pub status: InboxStatus,
    /// The agent working on it.
    pub claimed_by: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An item to open.
#[derive(Debug, Clone)]
pub struct NewInboxItem {
    pub kind: InboxKind,
    pub thread_id: ThreadId,
    pub message_id: Option<MessageId>,
    pub tool_call_id: Option<String>,
    pub body: Option<String>,
    pub suggestion: Option<String>,
    pub reason: Option<String>,
    pub due_at: Option<DateTime<Utc>>,
}
