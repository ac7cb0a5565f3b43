//! Routing decisions, as recorded with the message or the run.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tandem_llm::Usage;
use tandem_model::Responder;

/// One strategy's verdict, and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Decision {
    /// `assignment`, `classifier`, `embeddings`, `ai`, `confidence`,
    /// `approval` or `fallback`.
    pub strategy: String,
    /// Who it picked; none when it abstained.
    pub responder: Option<Responder>,
    pub reason: String,
    /// The model asked, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub latency_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<serde_json::Value>")]
    pub usage: Option<Usage>,
}

impl Decision {
    /// A decision taken without a model.
    pub fn rule(strategy: &str, responder: Option<Responder>, reason: impl Into<String>) -> Self {
        Self {
            strategy: strategy.to_owned(),
            responder,
            reason: reason.into(),
            model: None,
            latency_ms: 0,
            usage: None,
        }
    }
}
