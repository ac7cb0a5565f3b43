//! Tokens spent on the LLM.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{RunId, ThreadId};

/// One model call, recorded once per step of the run that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub run_id: RunId,
    /// The journal seq of the step that made the call.
    pub step_seq: i64,
    /// The thread the call was for, if any (an example's embedding has none).
    pub thread_id: Option<ThreadId>,
    /// `reply`, `classifier`, `embedding`, or another name.
    pub purpose: String,
    pub model: String,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// What a thread has cost in tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ThreadUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    /// Per model and purpose, by model name then purpose.
    pub by_model: Vec<ModelUsage>,
}

/// Tokens spent with one model for one purpose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct ModelUsage {
    pub model: String,
    pub purpose: String,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// How many calls.
    pub calls: i64,
}
