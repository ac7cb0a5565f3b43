//! What can stop a step, a run or a call into the engine.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tandem_store::StoreError;

/// An action's failure, as the action reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    pub message: String,
    /// Whether trying again may help (the retry policy decides how often).
    pub retryable: bool,
}

impl ActionError {
    /// A failure worth trying again (a timeout, a 503).
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that will not go away by trying again (a 400, bad input).
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Why a step did not return a value. Handlers pass it on with `?`; the
/// engine decides what it means for the run.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The step failed for good (retries spent, or not retryable). A handler
    /// may catch this one and go another way; unhandled, it fails the run.
    #[error("step {step:?} failed: {error}")]
    Failed { step: String, error: ActionError },
    /// The workflow itself decided to fail.
    #[error("{0}")]
    Workflow(String),
    /// The code took another path than the journal recorded.
    #[error("determinism error at step {seq}: {message}")]
    Determinism { seq: i64, message: String },
    /// The run is suspended (a timer, an event, a retry later) or stopped
    /// (paused, cancelled, taken over, shutting down). Not a failure: pass
    /// it on.
    #[error("the run is suspended")]
    Suspended,
    /// The store failed; the run is retried later from its journal.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StepError {
    /// A failure the workflow raises itself.
    pub fn fail(message: impl Into<String>) -> Self {
        Self::Workflow(message.into())
    }

    /// The error recorded on a failed run.
    pub(crate) fn to_json(&self) -> Value {
        match self {
            Self::Failed { step, error } => json!({
                "code": "step_failed", "step": step, "message": error.message,
                "retryable": error.retryable,
            }),
            Self::Workflow(message) => json!({"code": "workflow_failed", "message": message}),
            Self::Determinism { seq, message } => json!({
                "code": "determinism_error", "seq": seq, "message": message,
            }),
            Self::Suspended => json!({"code": "suspended", "message": self.to_string()}),
            Self::Store(e) => json!({"code": "store_error", "message": e.to_string()}),
        }
    }
}

/// What a call into the engine can fail with; the server maps it to HTTP.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No workflow of that name is defined on this server.
    #[error("no workflow named {0:?}")]
    UnknownWorkflow(String),
    /// The arguments do not fit the workflow.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// The engine is shutting down.
    #[error("the workflow engine is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(#[from] StoreError),
}
