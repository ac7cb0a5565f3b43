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
    /// `resume_url`, `post_message`, `assign`.
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
#[derive(Debug, Clone)]
pub enum StoreEffect {
    PostMessage(super::NewMessage),
    Assign(NewAssignment),
}

/// The outcome of a [`StoreEffect`], for the hub to push.
#[derive(Debug, Clone)]
pub enum EffectOutput {
    Message(crate::PostedMessage),
    Thread(super::Thread),
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
