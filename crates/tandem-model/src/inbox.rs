//! Inbox items: work waiting for a human support agent.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    InboxItemId, InboxKind, InboxResolution, InboxStatus, Message, MessageId, Priority, RunId,
    Thread, ThreadId,
};

/// One piece of work for a human: a question, a draft to approve, an
/// escalation or a handoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct InboxItem {
    pub id: InboxItemId,
    pub kind: InboxKind,
    pub thread_id: ThreadId,
    /// The message the item is about (the question's tool call, the draft,
    /// the escalated reply).
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
    /// When the current claim was taken; none while unclaimed.
    pub claimed_at: Option<DateTime<Utc>>,
    /// When the claim's holder last showed they are on it (claiming it, or
    /// claiming it again); a claim idle for longer than the desk allows
    /// goes back to the queue.
    pub last_activity_at: Option<DateTime<Utc>>,
    /// When the item should have had a human response; past it, the
    /// policy's fallback runs.
    pub due_at: Option<DateTime<Utc>>,
    /// The team the item is for; any agent's when none.
    pub team: Option<String>,
    pub priority: Priority,
    /// When a human first responded: resolved the item, or replied in its
    /// thread.
    pub first_response_at: Option<DateTime<Utc>>,
    pub first_response_by: Option<String>,
    /// How many times the item's deadline passed.
    pub expiries: i32,
    pub last_expired_at: Option<DateTime<Utc>>,
    /// The workflow run waiting on the item: resolving the item sends it
    /// the event `inbox:<item id>`.
    pub run_id: Option<RunId>,
    /// How the item was resolved, once it is.
    pub resolution: Option<InboxResolution>,
    /// A rejected draft's review.
    pub review: Option<String>,
    /// The human who resolved it.
    pub resolved_by: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An inbox item with what an agent needs to act on it without opening
/// anything else: the thread (its customer, title, assignment and the
/// integrator's metadata) and its latest messages, internal ones included.
/// The AI's suggestion or draft and the routing reason are the item's own
/// `suggestion`, `body` and `reason`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InboxView {
    #[serde(flatten)]
    pub item: InboxItem,
    pub thread: Option<Thread>,
    /// The thread's latest messages, oldest first.
    pub history: Vec<Message>,
}

impl InboxView {
    /// The item without its context (none could be read).
    pub fn bare(item: InboxItem) -> Self {
        Self {
            item,
            thread: None,
            history: Vec::new(),
        }
    }
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
    /// A fixed deadline, kept by the caller's own timer (a declarative
    /// step's `timeout_secs`).
    pub due_at: Option<DateTime<Utc>>,
    /// How long humans have to respond: the store sets `due_at` from it at
    /// the moment the item opens, and creates the item's deadline run.
    pub due_in: Option<std::time::Duration>,
    /// The team to ask; the thread's assigned team when none.
    pub team: Option<String>,
    pub priority: Priority,
    /// The run that will wait for the item's resolution.
    pub run_id: Option<RunId>,
}

/// Which statuses [`InboxFilter`] lists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum InboxStatuses {
    /// Items still waiting for someone: `open` or `claimed`.
    #[default]
    Pending,
    /// Every item.
    All,
    Only(InboxStatus),
}

/// Which inbox items to list: most urgent first (by `due_at`, items without
/// one last, then oldest first).
#[derive(Debug, Clone)]
pub struct InboxFilter {
    pub kind: Option<InboxKind>,
    pub status: InboxStatuses,
    pub thread_id: Option<ThreadId>,
    /// Only items claimed by this agent.
    pub claimed_by: Option<String>,
    /// Only items for this team.
    pub team: Option<String>,
    /// Only items after this one in the listing's order (the page cursor:
    /// the last item of the previous page).
    pub after: Option<InboxItemId>,
    pub limit: u32,
}

impl Default for InboxFilter {
    fn default() -> Self {
        Self {
            kind: None,
            status: InboxStatuses::Pending,
            thread_id: None,
            claimed_by: None,
            team: None,
            after: None,
            limit: 50,
        }
    }
}

/// What resolving an inbox item did (announced on the store's change
/// stream as it commits).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The item, resolved.
    pub item: InboxItem,
    /// The message the resolution posted: the answer (a tool result), or
    /// the approved reply as the thread's next public message.
    pub message: Option<Message>,
    /// The draft an approval or a rejection changed the status of.
    pub draft: Option<Message>,
    /// The thread, when the resolution reassigned it (a rejection).
    pub thread: Option<Thread>,
    /// The run waiting on the item, after the event was delivered to it.
    pub run: Option<crate::WorkflowRun>,
    /// Whether the event made the run due.
    pub run_ready: bool,
}

/// Who acts on an inbox item: an agent by name, or an admin (who may act on
/// an item another agent holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxActor {
    /// The name the action is recorded under.
    pub name: String,
    /// Whether the actor may override another agent's claim.
    pub overrides_claims: bool,
}

impl InboxActor {
    /// An agent, bound by other agents' claims.
    pub fn agent(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            overrides_claims: false,
        }
    }

    /// An admin, recorded as `name`, who may act on any claimed item.
    pub fn admin(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            overrides_claims: true,
        }
    }
}

impl From<&str> for InboxActor {
    fn from(name: &str) -> Self {
        Self::agent(name)
    }
}

/// What releasing a claimed item did.
#[derive(Debug, Clone)]
pub enum Release {
    /// The item is back in the queue.
    Released(InboxItem),
    /// The item was not claimed: nothing changed.
    NotClaimed(InboxItem),
    /// Another agent holds the item (and the actor may not override it).
    HeldByOther { holder: String },
}
