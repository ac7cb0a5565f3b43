//! Tandem's one LLM client: every model call of the server goes through [`Llm`].
//!
//! It speaks to any OpenAI-compatible endpoint through `async-openai`, and
//! adds what a support reply needs on top: retries that honour `Retry-After`
//! and never repeat a request the provider refused for its content, limits
//! on the first token, on a stream's silences and on a whole call, text
//! deltas as they arrive, tool calls, JSON-schema structured output,
//! embeddings, and a start-up check that each model answers.
//!
//! - [`config`]: [`LlmConfig`], the `[ai]` section of the server config, and
//!   which model plays each role.
//! - [`client`]: [`Llm`] (`chat`, `structured`, `embed`, `check_models`);
//!   the HTTP layer that reads error responses (and error events inside a
//!   stream) lives in `client/transport.rs`, the retry policy in
//!   `client/retry.rs`.
//! - [`health`]: whether each model answers, as `/readyz` reports it.
//! - [`types`]: what goes in and comes out: [`ChatRequest`], [`ChatMessage`],
//!   [`Completion`], [`ToolCall`], [`Usage`], [`Embeddings`].
//! - [`schema`]: JSON schemas from Rust types ([`tool`], structured output),
//!   and [`parse_arguments`] for the model's tool calls.
//! - [`prompt`]: a thread's stored history turned into chat turns that fit a
//!   token budget.
//! - [`error`]: [`LlmError`] and its short machine codes.

pub mod client;
pub mod config;
pub mod error;
pub mod health;
pub mod prompt;
pub mod schema;
pub mod types;

pub use client::{Llm, ModelStatus};
pub use config::LlmConfig;
pub use error::LlmError;
pub use health::{ModelRole, ModelState};
pub use schema::{parse_arguments, tool};
pub use types::{
    ChatMessage, ChatRequest, Completion, Delta, Embeddings, ResponseFormat, Structured, ToolCall,
    ToolSpec, Usage,
};
