//! The `[ai]` section of the server config.

use serde::{Deserialize, Serialize};

use crate::health::ModelRole;

/// The provider's standard base URL: the endpoint when `base_url` is unset.
pub const STANDARD_BASE_URL: &str = async_openai::config::OPENAI_API_BASE;

/// The classifier model on the provider's standard endpoint, when none is set.
pub const STANDARD_CLASSIFIER_MODEL: &str = "gpt-4o-mini";

/// The embedding model on the provider's standard endpoint, when none is set.
pub const STANDARD_EMBEDDING_MODEL: &str = "text-embedding-3-small";

/// How Tandem reaches its model provider. Every field has a default, so an
/// empty `[ai]` section is valid (and leaves the AI off).
///
/// The timeouts suit a hosted provider and a slow local model alike: a
/// model that is working is never cut off for being slow as long as its
/// tokens keep coming, while one that says nothing is given up on within a
/// minute, and no call, retries included, holds a customer longer than
/// `total_timeout_secs`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// `OPENAI_API_KEY`; sent as `Authorization: Bearer …`. Without one, no
    /// `Authorization` header is sent (a local endpoint that needs none).
    pub api_key: Option<String>,
    /// `OPENAI_BASE_URL`, e.g. `http://127.0.0.1:11434/v1`; the provider's
    /// standard base ([`STANDARD_BASE_URL`]) when unset.
    pub base_url: Option<String>,
    /// The model that writes replies.
    pub reply_model: String,
    /// The cheap model the router asks who should answer. Unset: `gpt-4o-mini`
    /// on the provider's standard endpoint, the reply model on any other
    /// (a local server rarely has the provider's models); see
    /// [`LlmConfig::classifier_model`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier_model: Option<String>,
    /// The model that embeds routing examples and messages. Unset:
    /// `text-embedding-3-small` on the provider's standard endpoint, the reply
    /// model on any other; see [`LlmConfig::embedding_model`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// Limit for one attempt of an unstreamed call (structured answers,
    /// drafts, suggestions, embeddings), from sending the request to the
    /// last byte of the answer: such an answer comes in one piece, so this
    /// is also its time to the first byte. Streamed answers are bounded by
    /// `first_token_timeout_secs` and `idle_timeout_secs` instead.
    pub request_timeout_secs: u64,
    /// Limit for one attempt of a streamed answer, from sending the request
    /// to its first token (the first chunk that carries text, a tool call
    /// or the end): the time a model takes to read the prompt.
    pub first_token_timeout_secs: u64,
    /// The longest silence allowed between two chunks of a streamed answer
    /// once its first token came: a model that is still writing is not cut
    /// off for being slow, one that stopped is.
    pub idle_timeout_secs: u64,
    /// Limit for a whole call: every attempt and every wait between them.
    /// When it runs out the call gives up (an attempt in flight is dropped),
    /// and the reply goes to a human with the reason.
    pub total_timeout_secs: u64,
    /// Attempts after the first one, for 429s, 5xx, timeouts and broken
    /// connections.
    pub max_retries: u32,
    /// Cap of the exponential backoff. A `Retry-After` longer than this ends
    /// the retries at once: the caller (a durable workflow) is better placed to
    /// wait that long than a request in flight.
    pub max_backoff_secs: u64,
    /// Backoff before the first retry; it doubles on each retry, with jitter.
    pub initial_backoff_ms: u64,
    /// Check at start that each configured model answers (a list of the
    /// endpoint's models, else a one-token chat or a one-input embedding),
    /// without holding the start up: `/readyz` says `unchecked` meanwhile.
    pub check_models_on_start: bool,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            api_key: None,
            base_url: None,
            reply_model: "gpt-4o-mini".to_owned(),
            classifier_model: None,
            embedding_model: None,
            request_timeout_secs: 120,
            first_token_timeout_secs: 60,
            idle_timeout_secs: 30,
            total_timeout_secs: 180,
            max_retries: 4,
            max_backoff_secs: 30,
            initial_backoff_ms: 500,
            check_models_on_start: true,
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

    /// The base URL requests go to, without a trailing slash.
    pub fn endpoint(&self) -> &str {
        self.base_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or(STANDARD_BASE_URL)
            .trim()
            .trim_end_matches('/')
    }

    /// Whether requests go to the provider's standard endpoint, where the
    /// default classifier and embedding models exist.
    pub fn uses_standard_endpoint(&self) -> bool {
        self.endpoint()
            .eq_ignore_ascii_case(STANDARD_BASE_URL.trim_end_matches('/'))
    }

    /// The classifier model: as set, else the standard one on the
    /// standard endpoint and the reply model on any other.
    pub fn classifier_model(&self) -> &str {
        self.role_model(ModelRole::Classifier)
    }

    /// The embedding model: as set, else the standard one on the standard
    /// endpoint and the reply model on any other (which may not embed: the
    /// start-up check and `/readyz` say so).
    pub fn embedding_model(&self) -> &str {
        self.role_model(ModelRole::Embedding)
    }

    /// The model that plays `role`.
    pub fn role_model(&self, role: ModelRole) -> &str {
        let (set, standard) = match role {
            ModelRole::Reply => return &self.reply_model,
            ModelRole::Classifier => (&self.classifier_model, STANDARD_CLASSIFIER_MODEL),
            ModelRole::Embedding => (&self.embedding_model, STANDARD_EMBEDDING_MODEL),
        };
        match set.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
            Some(model) => model,
            None if self.uses_standard_endpoint() => standard,
            None => &self.reply_model,
        }
    }

    /// Whether `role`'s model was left unset and is the reply model
    /// because the endpoint is not the provider's standard one.
    pub fn defaults_to_reply_model(&self, role: ModelRole) -> bool {
        let set = match role {
            ModelRole::Reply => return false,
            ModelRole::Classifier => &self.classifier_model,
            ModelRole::Embedding => &self.embedding_model,
        };
        set.as_deref().is_none_or(|m| m.trim().is_empty()) && !self.uses_standard_endpoint()
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
            .field("first_token_timeout_secs", &self.first_token_timeout_secs)
            .field("idle_timeout_secs", &self.idle_timeout_secs)
            .field("total_timeout_secs", &self.total_timeout_secs)
            .field("max_retries", &self.max_retries)
            .field("max_backoff_secs", &self.max_backoff_secs)
            .field("initial_backoff_ms", &self.initial_backoff_ms)
            .field("check_models_on_start", &self.check_models_on_start)
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
        assert_eq!(config.classifier_model(), "gpt-4o-mini");
        assert_eq!(config.embedding_model(), "text-embedding-3-small");
        assert!(serde_json::from_str::<LlmConfig>(r#"{"modle": "x"}"#).is_err());
    }

    #[test]
    fn on_another_endpoint_unset_models_are_the_reply_model() {
        // The README's local example: only the reply model is named.
        let local = LlmConfig {
            base_url: Some("http://127.0.0.1:11434/v1".to_owned()),
            reply_model: "llama3.1".to_owned(),
            ..LlmConfig::default()
        };
        assert!(!local.uses_standard_endpoint());
        assert_eq!(local.classifier_model(), "llama3.1");
        assert_eq!(local.embedding_model(), "llama3.1");
        assert!(local.defaults_to_reply_model(ModelRole::Classifier));
        assert!(local.defaults_to_reply_model(ModelRole::Embedding));

        // Set explicitly: as set, on any endpoint.
        let explicit = LlmConfig {
            classifier_model: Some("qwen2.5:0.5b".to_owned()),
            embedding_model: Some("nomic-embed-text".to_owned()),
            ..local.clone()
        };
        assert_eq!(explicit.classifier_model(), "qwen2.5:0.5b");
        assert_eq!(explicit.embedding_model(), "nomic-embed-text");
        assert!(!explicit.defaults_to_reply_model(ModelRole::Embedding));

        // The standard endpoint, named or not, keeps the standard models.
        for base_url in [None, Some("https://api.openai.com/v1/".to_owned())] {
            let hosted = LlmConfig {
                api_key: Some("sk".to_owned()),
                base_url,
                reply_model: "gpt-4o".to_owned(),
                ..LlmConfig::default()
            };
            assert!(hosted.uses_standard_endpoint());
            assert_eq!(hosted.classifier_model(), "gpt-4o-mini");
            assert_eq!(hosted.embedding_model(), "text-embedding-3-small");
        }
    }
}
