//! Workflow runs, their journal and their events.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{EventId, EventSource, RunId, RunStatus, StepStatus};

/// One run of a workflow, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowRun {
    pub id: RunId,
    pub name: String,
    /// The definition's version the run is pinned to.
    pub version: String,
    pub args: Value,
    pub status: RunStatus,
    /// What the workflow returned, once `completed`.
    pub result: Option<Value>,
    /// Why it failed (`{code, message, …}`), once `failed`.
    pub error: Option<Value>,
    /// The event a `waiting` run waits for.
    pub waiting_for: Option<String>,
    /// When the run next wakes by itself (a timer, a deadline, a retry).
    pub wake_at: Option<DateTime<Utc>>,
    /// How many times an executor has taken the run up.
    pub attempts: i64,
    /// The server process executing the run, while one holds it.
    pub held_by: Option<String>,
    /// Bumped at every takeover; an executor holding an older one is fenced.
    pub generation: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One journaled step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JournalEntry {
    /// The step's place in the run, from 0.
    pub seq: i64,
    /// `run`, `sleep`, `wait_event`, `now`, `random`, `uuid`,
    /// `resume_url`, `post_message`, `assign`, `open_item`, `post_reply`.
    pub kind: String,
    pub name: String,
    pub status: StepStatus,
    /// What the step returned (serde JSON), replayed instead of running again.
    pub output: Option<Value>,
    /// The last error (`{message, retryable, attempt}`), for a failed or
    /// retrying step.
    pub error: Option<Value>,
    /// Attempts made so far.
    pub attempts: i64,
    /// When a pending sleep or wait ends, or a retrying step tries again.
    pub wake_at: Option<DateTime<Utc>>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// An event delivered to a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct WorkflowEvent {
    pub id: EventId,
    pub name: String,
    pub payload: Value,
    pub source: EventSource,
    pub received_at: DateTime<Utc>,
    /// The step that took the event; none while it is pending.
    pub consumed_by: Option<i64>,
}

/// A run to create.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub name: String,
    pub version: String,
    pub args: Value,
    /// Whether the definition has an on-complete handler to run at the end.
    pub has_on_complete: bool,
}

/// The arguments of a `reply` run: the customer message to answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplyArgs {
    pub thread_id: super::ThreadId,
    pub message_id: super::MessageId,
    pub seq: i64,
}

/// The `reply` run a customer message starts, created in the message's own
/// transaction so that no stored customer message is ever left without
/// one (see [`crate::names::REPLY_WORKFLOW`]).
#[derive(Debug, Clone)]
pub struct ReplyRun {
    /// The version of the `reply` workflow the run is pinned to.
    pub version: String,
    /// The workflow clock's now (µs): the run is ready from then.
    pub ready_at: i64,
    /// The creating process and the end of its lease (µs, wall clock): the
    /// run is leased to it in the same transaction, to start at once.
    pub lease: Option<(String, i64)>,
}

/// An executor's hold on a run: valid while the run's generation is this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub run_id: RunId,
    pub owner: String,
    pub generation: i64,
}

/// A run an executor has just taken up.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub run: WorkflowRun,
    pub lease: Lease,
    /// Whether the run has ended and only its on-complete handler is left.
    pub finalize: bool,
}

/// A step to write to the journal (inserted, or completing a pending or
/// retrying row of the same `seq`; a completed or failed row never changes).
#[derive(Debug, Clone)]
pub struct JournalWrite {
    pub seq: i64,
    pub kind: String,
    pub name: String,
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<Value>,
    pub attempts: i64,
    /// Microseconds since the epoch.
    pub wake_at: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The event this step takes; the commit fails if another step took it.
    pub consumes: Option<EventId>,
}

/// What a journal commit does to the run itself.
#[derive(Debug, Clone)]
pub enum RunUpdate {
    /// Nothing: the executor goes on (the lease is renewed).
    Continue,
    /// Suspend until `ready_at` (µs) or, with `waiting_for`, until that event
    /// arrives; the lease is released. A run waiting for an event that has
    /// already arrived is made ready at once.
    Suspend {
        ready_at: Option<i64>,
        waiting_for: Option<String>,
    },
    /// End the run (`completed` or `failed`) with its result or error.
    Finish {
        status: RunStatus,
        result: Option<Value>,
        error: Option<Value>,
    },
}

/// A write to Tandem's own tables made in the same transaction as the step
/// that journals it, so it happens exactly once.
// One value per step commit, moved once: boxing the big variant would save
// nothing that matters and cost every match a deref.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum StoreEffect {
    PostMessage(super::NewMessage),
    Assign(NewAssignment),
    /// Opens an inbox item, with the message it is about and the thread's
    /// reassignment when there are.
    OpenItem(OpenItem),
    /// Posts the AI's reply unless, in the same transaction, the thread turns
    /// out to be assigned to humans or to hold a customer message newer
    /// than `after_seq` (the reply would answer a stale question): then
    /// nothing is posted and the output is [`EffectOutput::Skipped`].
    PostReply {
        message: super::NewMessage,
        /// The seq of the newest customer message the reply answers.
        after_seq: i64,
        /// A follow-up (the AI's reply built on a human's answer to its
        /// question) is posted even after newer customer messages, as long
        /// as each of them was answered already: what it carries is new to
        /// the customer. A newer message still unanswered skips it, since
        /// that message's own reply will carry the answer.
        follow_up: bool,
    },
    /// Passes an inbox item's deadline: records the expiry and applies the
    /// policy's fallback.
    ExpireItem(super::ExpireItem),
}

/// An inbox item to open, as one effect: `message` is posted first (the
/// item's `message_id` is set to it unless the item names one), then the
/// item is opened, then `assign` is applied.
#[derive(Debug, Clone)]
pub struct OpenItem {
    /// The AI's tool call for a `question`; the draft (an internal
    /// `pending_approval` message) for an `approval`.
    pub message: Option<super::NewMessage>,
    pub item: super::NewInboxItem,
    /// For an `escalation` or a `handoff`: the thread goes to humans.
    pub assign: Option<NewAssignment>,
}

/// Why a [`StoreEffect::PostReply`] posted nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SkipReason {
    /// The customer wrote again after the message being answered.
    NewerCustomerMessage,
    /// The thread was handed to humans meanwhile.
    AssignedToHuman,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewerCustomerMessage => "newer_customer_message",
            Self::AssignedToHuman => "assigned_to_human",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a [`StoreEffect`]: what the step journals (see
/// [`EffectOutput::journal_value`]). What it changed is announced on the
/// store's change stream, like every commit's.
// One value per step commit (see `StoreEffect`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum EffectOutput {
    Message(super::Message),
    Thread(super::Thread),
    /// An [`OpenItem`] effect: the message posted, the item, the thread
    /// reassigned, where there were.
    Item {
        message: Option<super::Message>,
        item: super::InboxItem,
        thread: Option<super::Thread>,
    },
    /// A [`StoreEffect::PostReply`] that posted nothing.
    Skipped {
        reason: SkipReason,
    },
    /// A [`StoreEffect::ExpireItem`]: what it did.
    Expired(super::Expiry),
}

impl EffectOutput {
    /// What the step that made the effect journals as its output, and
    /// returns again on replay: a [`super::Message`], a
    /// [`super::Thread`], an [`OpenedItem`] or a [`PostedReply`].
    pub fn journal_value(&self) -> Result<Value, serde_json::Error> {
        match self {
            Self::Message(message) => serde_json::to_value(message),
            Self::Thread(thread) => serde_json::to_value(thread),
            Self::Item {
                message,
                item,
                thread,
            } => serde_json::to_value(OpenedItemRef {
                message: message.as_ref(),
                item,
                thread: thread.as_ref(),
            }),
            Self::Skipped { reason } => {
                serde_json::to_value(PostedReply::Skipped { skipped: *reason })
            }
            Self::Expired(expiry) => serde_json::to_value(expiry),
        }
    }
}

/// What an [`OpenItem`] step returns (and journals).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct OpenedItem {
    pub message: Option<super::Message>,
    pub item: super::InboxItem,
    pub thread: Option<super::Thread>,
}

/// [`OpenedItem`] borrowed, to journal it without cloning.
#[derive(Serialize)]
struct OpenedItemRef<'a> {
    message: Option<&'a super::Message>,
    item: &'a super::InboxItem,
    thread: Option<&'a super::Thread>,
}

/// What a [`StoreEffect::PostReply`] step journals: the reply posted, or
/// `{"skipped": reason}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PostedReply {
    Skipped { skipped: SkipReason },
    Posted(super::Message),
}

impl From<PostedReply> for Result<super::Message, SkipReason> {
    fn from(reply: PostedReply) -> Self {
        match reply {
            PostedReply::Posted(message) => Ok(message),
            PostedReply::Skipped { skipped } => Err(skipped),
        }
    }
}

/// A thread's assignment to change, with why and by whom.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewAssignment {
    pub thread_id: super::ThreadId,
    pub assigned_to: super::AssignedTo,
    /// The human agent, when assigned to one.
    pub assignee: Option<String>,
    pub team: Option<String>,
    pub reason: Option<String>,
    /// `admin`, `human`, `ai`, `system` or `workflow`.
    pub by_kind: String,
    pub by_id: Option<String>,
}

/// What a commit saw of the run after it.
#[derive(Debug, Clone)]
pub struct Committed {
    pub run: WorkflowRun,
    /// Whether the commit changed the run's status or wake-up time.
    pub changed: bool,
    pub effect: Option<EffectOutput>,
}

/// The outcome of delivering an event.
#[derive(Debug, Clone)]
pub struct DeliveredEvent {
    pub event: WorkflowEvent,
    pub run: WorkflowRun,
    /// The same delivery was made before; nothing changed.
    pub duplicate: bool,
    /// The run was taken up by the caller, which must execute it.
    pub claimed: Option<Lease>,
}
