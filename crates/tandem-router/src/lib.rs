//! Tandem's router and reply path: who answers each customer message, and
//! the durable `reply` run that carries the answer.
//!
//! - [`policy`]: the routing policy (`GET`/`PUT /v1/policy`): strategies in
//!   order, thresholds, the approval gate.
//! - [`classifier`], [`embeddings`]: two of the strategies; the others
//!   (assignment, the AI with its tools and confidence) live in the run.
//! - [`tools`]: `ask_human` and `escalate`, with schemas from their types.
//! - [`decision`]: what each strategy decided and why, as recorded.
//! - [`reply`]: the `reply` workflow.
//! - [`deadline`]: the `inbox-deadline` workflow, each item's deadline
//!   and the policy's fallback when it passes.
//! - [`copilot`]: replies the AI suggests to a human agent, who sends them
//!   under its own name.

pub mod classifier;
pub mod copilot;
pub mod deadline;
pub mod decision;
pub mod embeddings;
pub mod policy;
pub mod reply;
pub mod tools;

pub use copilot::{Copilot, CopilotError, SuggestionRequest};
pub use deadline::DeadlineWatch;
pub use decision::Decision;
pub use policy::Policy;
pub use reply::{AgentConfig, Replier, ReplyArgs, ReplyEvents, ReplyOutcome};

use tandem_store::{Store, StoreError};

/// The `settings` row that holds the policy.
pub const POLICY_SETTING: &str = "policy";

/// The stored policy, or the default when none was ever set. A stored
/// document that no longer parses (written by a newer version, say) is
/// reported and replaced by the default rather than stopping every reply.
pub async fn load_policy(store: &Store) -> Result<Policy, StoreError> {
    let Some(value) = store.get_setting(POLICY_SETTING).await? else {
        return Ok(Policy::default());
    };
    Ok(serde_json::from_value(value).unwrap_or_else(|error| {
        tracing::error!(%error, "router: the stored policy does not parse; using the default");
        Policy::default()
    }))
}
