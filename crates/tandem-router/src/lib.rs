//! Tandem's router and reply path: who answers each customer message, and
//! the durable `reply` run that carries the answer.
//!
//! The routing policy it follows is the domain's (`tandem_model::policy`:
//! strategies in order, thresholds, the approval gate, the desk), read with
//! the store's `Store::policy`; the workflow and tool names are
//! `tandem_model::names`.
//!
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
pub mod reply;
pub mod tools;

pub use copilot::{Copilot, CopilotError, SuggestionRequest};
pub use deadline::DeadlineWatch;
pub use decision::Decision;
pub use reply::{AgentConfig, Replier, ReplyArgs, ReplyEvents, ReplyOutcome};
