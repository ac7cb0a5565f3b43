//! Threads: one conversation between a customer and the support side, and
//! the history of who it was assigned to.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AssignedTo, AssignmentId, ThreadId, ThreadStatus};

/// A conversation between one customer and the support side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Thread {
    pub id: ThreadId,
    /// The integrator's id for the customer this thread belongs to.
    pub customer_id: String,
    pub title: Option<String>,
    pub status: ThreadStatus,
    /// Who answers next.
    pub assigned_to: AssignedTo,
    /// The human agent the thread is assigned to, if any.
    pub assignee: Option<String>,
    /// The integrator's own data about the thread (a JSON object).
    #[cfg_attr(feature = "sqlx", sqlx(json))]
    pub metadata: Value,
    /// The `seq` of the thread's newest message (0 when it has none).
    pub last_seq: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A thread to create, already checked by the caller's permissions.
#[derive(Debug, Clone)]
pub struct NewThread {
    pub customer_id: String,
    pub title: Option<String>,
    pub metadata: Value,
}

/// A change to a thread's own fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct ThreadPatch {
    /// `Some(None)` clears the title.
    pub title: Option<Option<String>>,
    pub status: Option<ThreadStatus>,
    pub metadata: Option<Value>,
}

/// Which threads to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct ThreadFilter {
    /// Only this customer's threads.
    pub customer_id: Option<String>,
    pub status: Option<ThreadStatus>,
    pub assigned_to: Option<AssignedTo>,
    /// Only threads older than this one (the page cursor).
    pub before: Option<ThreadId>,
    pub limit: u32,
}

/// Who made an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AssignedBy {
    /// `admin`, `human`, `ai`, `system` or `workflow`.
    pub kind: String,
    pub id: Option<String>,
}

/// One change of a thread's assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Assignment {
    pub id: AssignmentId,
    pub thread_id: ThreadId,
    pub assigned_to: AssignedTo,
    /// The human agent, when assigned to one.
    pub assignee: Option<String>,
    pub team: Option<String>,
    pub reason: Option<String>,
    pub by: AssignedBy,
    pub created_at: DateTime<Utc>,
}
