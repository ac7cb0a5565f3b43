//! Messages: what customers, the AI, human agents and tools said in a thread.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AuthorKind, MessageId, MessageStatus, Role, ThreadId, Visibility};
use crate::metadata;

/// One message of a thread, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub id: MessageId,
    pub thread_id: ThreadId,
    /// Position in the thread: strictly increasing, gapless in commit order.
    pub seq: i64,
    pub role: Role,
    /// The AI agent's or the human's name; null for the customer.
    pub agent_name: Option<String>,
    pub author: Author,
    pub content: Content,
    pub visibility: Visibility,
    pub status: MessageStatus,
    /// `provider` (`"human"` for people, the model for the AI),
    /// `providerMetadata`, usage, confidence, routing decision, and the
    /// integrator's own keys.
    pub metadata: Value,
    /// The prompt message this one answers.
    pub reply_to: Option<MessageId>,
    pub created_at: DateTime<Utc>,
}

impl Message {
    /// The message as a customer may see it: without the staff-only
    /// metadata ([`metadata::is_staff_only`]: how the reply was decided and
    /// reviewed, and what it cost). `None` when it is already that (nothing
    /// to leave out).
    pub fn for_customer(&self) -> Option<Message> {
        let object = self.metadata.as_object()?;
        if !metadata::staff_only_keys().any(|key| object.contains_key(key)) {
            return None;
        }
        let mut view = self.clone();
        if let Some(object) = view.metadata.as_object_mut() {
            object.retain(|key, _| !metadata::is_staff_only(key));
        }
        Some(view)
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Author {
    pub kind: AuthorKind,
    /// The customer's id, the human agent's name, the AI agent's name.
    pub id: Option<String>,
}

/// A message's content: plain text, or a list of parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

impl Content {
    /// The parts; none for plain text.
    pub fn parts(&self) -> &[Part] {
        match self {
            Content::Text(_) => &[],
            Content::Parts(parts) => parts,
        }
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Part {
    Text {
        text: String,
    },
    /// The AI asks for a tool to run.
    ToolCall {
        /// The model's id for this call; a `tool_result` answers it by this id.
        id: String,
        name: String,
        arguments: Value,
    },
    /// The outcome of a tool call.
    ToolResult {
        tool_call_id: String,
        name: String,
        result: Value,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        is_error: bool,
    },
}

/// A message to store, already checked against the caller's permissions.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The id to store the message under; a fresh one when `None`. A run
    /// streaming a reply picks it first, so the deltas it pushes carry the
    /// id its message will have.
    pub id: Option<MessageId>,
    pub thread_id: ThreadId,
    pub role: Role,
    pub agent_name: Option<String>,
    pub author: Author,
    pub content: Content,
    pub visibility: Visibility,
    pub status: MessageStatus,
    pub metadata: Value,
    pub reply_to: Option<MessageId>,
    /// When set, the thread must belong to this customer, and `reply_to`
    /// must be a message the customer can see.
    pub customer_scope: Option<String>,
}

/// Which messages of a thread to list, in `seq` order.
#[derive(Debug, Clone)]
pub struct MessageFilter {
    pub after_seq: i64,
    pub limit: u32,
    /// Only public, published messages.
    pub customer_view: bool,
}
