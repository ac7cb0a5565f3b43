//! The `[ai]` section of the server config.

use serde::{Deserialize, Serialize};

/// How Tandem reaches its model provider. Every field has a default, so an
/// empty `[ai]` section is valid (and leaves the AI off).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// `OPENAI_API_KEY`; sent as `Authorization: Bearer …`. Without one, no
    /// `Authorization` header is sent (a local endpoint that needs none).
    pub api_key: Option<String>,
    /// `OPENAI_BASE_URL`, e.g. `http://127.0.0.1:11434/v1`; the provider's
    /// standard base (`https://api.openai.com/v1`) when unset.
    pub base_url: Option<String>,
    /// The model that writes replies.
    pub reply_model: String,
    /// The cheap model the router asks who should answer.
    pub classifier_model: String,
    /// The model that embeds routing examples and messages.
    pub embedding_model: String,
    /// Limit for one attempt, from sending the request to the last byte of the
    /// answer (a stream included).
    pub request_timeout_secs: u64,
    /// Attempts after the first one, for 429s, 5xx, timeouts and broken
    /// connections.
    pub max_retries: u32,
    /// Cap of the exponential backoff. A `Retry-After` longer than this ends
    /// the retries at once: the caller (a durable workflow) is better placed to
    /// wait that long than a request in flight.
    pub max_backoff_secs: u64,
    /// Backoff before the first retry; it doubles on each retry, with jitter.
    pub initial_backoff_ms: u64,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: None,
            reply_model: "gpt-4o-mini".to_owned(),
            classifier_model: "gpt-4o-mini".to_owned(),
            embedding_model: "text-embedding-3-small".to_owned(),
            request_timeout_secs: 60,
            max_retries: 4,
            max_backoff_secs: 30,
            initial_backoff_ms: 500,
        }
    }
}

impl LlmConfig {
    /// Whether an endpoint is configured at all; without one the server runs
    /// with every thread routed to humans.
    pub fn enabled(&self) -> bool {
        self.api_key.as_deref().is_some_and(|key| !key.is_empty())
            || self.base_url.as_deref().is_some_and(|url| !url.is_empty())
    }
}

impl std::fmt::Debug for LlmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmConfig")
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("reply_model", &self.reply_model)
            .field("classifier_model", &self.classifier_model)
            .field("embedding_model", &self.embedding_model)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("max_retries", &self.max_retries)
            .field("max_backoff_secs", &self.max_backoff_secs)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let config = LlmConfig {
            api_key: Some("sk-secret-123".to_owned()),
            ..LlmConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk-secret-123"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn enabled_by_a_key_or_a_base_url() {
        assert!(!LlmConfig::default().enabled());
        let keyed = LlmConfig {
            api_key: Some("sk".to_owned()),
            ..LlmConfig::default()
        };
        assert!(keyed.enabled());
        let local = LlmConfig {
            base_url: Some("http://127.0.0.1:11434/v1".to_owned()),
            ..LlmConfig::default()
        };
        assert!(local.enabled());
    }

    #[test]
    fn an_empty_section_takes_the_defaults_and_unknown_keys_are_refused() {
        let config: LlmConfig = serde_json::from_str("{}").expect("defaults");
        assert_eq!(config, LlmConfig::default());
        assert_eq!(config.reply_model, "gpt-4o-mini");
        assert_eq!(config.embedding_model, "text-embedding-3-small");
        assert!(serde_json::from_str::<LlmConfig>(r#"{"modle": "x"}"#).is_err());
    }
}
