//! [`Llm`]: chat (streamed or not), structured output and embeddings, each
//! call retried as `client/retry.rs` says and each attempt bounded by
//! `request_timeout_secs`, stream included.

mod convert;
mod retry;
mod transport;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_openai::config::{OPENAI_API_BASE, OpenAIConfig};
use async_openai::types::chat::CreateChatCompletionRequest;
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;

use crate::config::LlmConfig;
use crate::error::LlmError;
use crate::schema;
use crate::types::{
    ChatMessage, ChatRequest, Completion, Delta, Embeddings, Structured, ToolCall, Usage,
};
use retry::{Backoff, Failure};
use transport::{Transport, failure};

/// The most inputs one embeddings request carries (OpenAI's limit); longer
/// lists are sent in several requests.
const EMBEDDING_BATCH: usize = 2048;

/// The LLM client. Cheap to clone: clones share one connection pool.
#[derive(Clone)]
pub struct Llm {
    client: async_openai::Client<OpenAIConfig>,
    config: Arc<LlmConfig>,
    backoff: Backoff,
    attempt_timeout: Duration,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm").field("config", &self.config).finish()
    }
}

impl Llm {
    /// A client for the configured endpoint. Fails when none is configured
    /// (see [`LlmConfig::enabled`]) or the configuration cannot work.
    pub fn new(config: &LlmConfig) -> Result<Self, LlmError> {
        if !config.enabled() {
            return Err(LlmError::Config(
                "set an API key (OPENAI_API_KEY) or a base URL (OPENAI_BASE_URL)".to_owned(),
            ));
        }
        if config.request_timeout_secs == 0 {
            return Err(LlmError::Config(
                "request_timeout_secs must be at least 1".to_owned(),
            ));
        }
        let base_url = config
            .base_url
            .as_deref()
            .filter(|url| !url.is_empty())
            .unwrap_or(OPENAI_API_BASE)
            .trim_end_matches('/');
        match openai_reqwest::Url::parse(base_url) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => {}
            _ => {
                return Err(LlmError::Config(format!(
                    "base_url {base_url:?} is not an http(s) URL"
                )));
            }
        }
        let api_key = config.api_key.clone().filter(|key| !key.is_empty());
        // Everything comes from `config`: `OpenAIConfig::new` also reads
        // OPENAI_* variables, which the server's config layer already has.
        let openai = OpenAIConfig::new()
            .with_api_base(base_url)
            .with_api_key(api_key.clone().unwrap_or_default())
            .with_org_id("")
            .with_project_id("");
        let http = transport::http_client(config)?;
        let client = async_openai::Client::build(http.clone(), openai)
            .with_http_service(Transport::new(http, api_key.is_some()));
        Ok(Self {
            client,
            config: Arc::new(config.clone()),
            backoff: Backoff::from_config(config),
            attempt_timeout: Duration::from_secs(config.request_timeout_secs),
        })
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// One chat completion. When `request.stream`, the answer is streamed and
    /// `on_delta` gets each fragment of text as it arrives, and
    /// [`Delta::Restart`] before a retry that follows shown text; otherwise
    /// it gets the whole text once, when the answer is complete.
    pub async fn chat(
        &self,
        request: ChatRequest,
        on_delta: &mut (dyn FnMut(Delta) + Send),
    ) -> Result<Completion, LlmError> {
        let started = Instant::now();
        let body = convert::chat_request(&request);
        let mut attempts = self.backoff.attempts();
        let mut answer = loop {
            attempts.start();
            let mut shown = false;
            let attempt = async {
                if request.stream {
                    self.stream_attempt(&body, on_delta, &mut shown).await
                } else {
                    self.plain_attempt(&body).await
                }
            };
            match self.bounded(attempt).await {
                Ok(answer) => break answer,
                Err(failure) => {
                    let wait = attempts.after_failure("chat", failure)?;
                    if shown {
                        on_delta(Delta::Restart);
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        };
        if answer.text.is_empty() && !answer.refusal.is_empty() {
            // No JSON to parse in a refusal; as a reply, it is what the model says.
            if request.response_format.is_some() {
                return Err(LlmError::Malformed(format!(
                    "the model refused: {}",
                    answer.refusal
                )));
            }
            answer.text = std::mem::take(&mut answer.refusal);
            if request.stream {
                on_delta(Delta::Text(answer.text.clone()));
            }
        }
        if !request.stream && !answer.text.is_empty() {
            on_delta(Delta::Text(answer.text.clone()));
        }
        Ok(Completion {
            text: answer.text,
            tool_calls: answer.tool_calls,
            usage: answer.usage,
            model: answer.model.unwrap_or(request.model),
            finish_reason: answer.finish_reason,
            latency_ms: millis(started.elapsed()),
            attempts: attempts.made(),
        })
    }

    /// An answer following `T`'s JSON schema (`response_format: json_schema`,
    /// strict when the schema allows it), parsed into `T`. An answer that is
    /// empty, not JSON, or does not fit `T` (unknown fields included, when
    /// `T` denies them) is [`LlmError::Malformed`], never retried.
    pub async fn structured<T: JsonSchema + DeserializeOwned>(
        &self,
        model: &str,
        schema_name: &str,
        messages: Vec<ChatMessage>,
    ) -> Result<Structured<T>, LlmError> {
        let request = ChatRequest {
            response_format: Some(schema::response_format::<T>(schema_name)),
            ..ChatRequest::new(model, messages)
        };
        let completion = self.chat(request, &mut |_| {}).await?;
        let content = completion.text.trim();
        if content.is_empty() {
            return Err(LlmError::Malformed(
                match completion.finish_reason.as_deref() {
                    Some("length") => "the answer was cut off before any content".to_owned(),
                    _ => "the answer has no content".to_owned(),
                },
            ));
        }
        let value = serde_json::from_str(content).map_err(|error| {
            LlmError::Malformed(if error.is_syntax() || error.is_eof() {
                format!("the answer is not valid JSON: {error}")
            } else {
                format!("the answer does not fit {schema_name}: {error}")
            })
        })?;
        Ok(Structured { value, completion })
    }

    /// Embeddings of `inputs` with the configured embedding model, one vector
    /// per input, in input order.
    pub async fn embed(&self, inputs: Vec<String>) -> Result<Embeddings, LlmError> {
        let started = Instant::now();
        let model = self.config.embedding_model.clone();
        let mut embeddings = Embeddings {
            vectors: Vec::with_capacity(inputs.len()),
            usage: Usage::default(),
            model: model.clone(),
            latency_ms: 0,
        };
        for batch in inputs.chunks(EMBEDDING_BATCH) {
            let body = CreateEmbeddingRequest {
                model: model.clone(),
                input: EmbeddingInput::StringArray(batch.to_vec()),
                ..CreateEmbeddingRequest::default()
            };
            let mut attempts = self.backoff.attempts();
            let mut response = loop {
                attempts.start();
                let attempt = async {
                    let embeddings = self.client.embeddings();
                    embeddings.create(body.clone()).await.map_err(failure)
                };
                match self.bounded(attempt).await {
                    Ok(response) => break response,
                    Err(failure) => {
                        tokio::time::sleep(attempts.after_failure("embed", failure)?).await;
                    }
                }
            };
            response.data.sort_by_key(|embedding| embedding.index);
            let in_order = response
                .data
                .iter()
                .enumerate()
                .all(|(position, embedding)| embedding.index as usize == position);
            if response.data.len() != batch.len() || !in_order {
                return Err(LlmError::Malformed(format!(
                    "{} embeddings for {} inputs",
                    response.data.len(),
                    batch.len()
                )));
            }
            embeddings.vectors.extend(
                response
                    .data
                    .into_iter()
                    .map(|embedding| embedding.embedding),
            );
            embeddings.usage += Usage {
                prompt_tokens: response.usage.prompt_tokens,
                completion_tokens: 0,
                total_tokens: response.usage.total_tokens,
            };
            embeddings.model = response.model;
        }
        embeddings.latency_ms = millis(started.elapsed());
        Ok(embeddings)
    }

    /// One attempt, bounded by the per-attempt timeout.
    async fn bounded<T>(
        &self,
        attempt: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::time::timeout(self.attempt_timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(LlmError::Timeout.into()))
    }

    async fn plain_attempt(&self, body: &CreateChatCompletionRequest) -> Result<Answer, Failure> {
        let response = self
            .client
            .chat()
            .create(body.clone())
            .await
            .map_err(failure)?;
        let mut answer = Answer {
            model: Some(response.model).filter(|model| !model.is_empty()),
            usage: response
                .usage
                .as_ref()
                .map(convert::usage)
                .unwrap_or_default(),
            ..Answer::default()
        };
        let choice = response.choices.into_iter().next().ok_or_else(|| {
            Failure::from(LlmError::Malformed("the answer has no choices".to_owned()))
        })?;
        answer.text = choice.message.content.unwrap_or_default();
        answer.tool_calls = choice
            .message
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .map(convert::tool_call)
            .collect();
        answer.finish_reason = choice.finish_reason.map(convert::finish_reason);
        answer.refusal = choice.message.refusal.unwrap_or_default();
        Ok(answer)
    }

    /// A streamed attempt: text fragments go to `on_delta` as they arrive
    /// (`shown` says whether any did), tool call fragments are put together
    /// by their index, usage comes from the last chunk.
    async fn stream_attempt(
        &self,
        body: &CreateChatCompletionRequest,
        on_delta: &mut (dyn FnMut(Delta) + Send),
        shown: &mut bool,
    ) -> Result<Answer, Failure> {
        let mut stream = self
            .client
            .chat()
            .create_stream(body.clone())
            .await
            .map_err(failure)?;
        let mut answer = Answer::default();
        let mut calls: BTreeMap<u32, ToolCall> = BTreeMap::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(failure)?;
            if !chunk.model.is_empty() {
                answer.model = Some(chunk.model);
            }
            if let Some(usage) = &chunk.usage {
                answer.usage = convert::usage(usage);
            }
            for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
                if let Some(refusal) = choice.delta.refusal {
                    answer.refusal.push_str(&refusal);
                }
                if let Some(text) = choice.delta.content.filter(|text| !text.is_empty()) {
                    answer.text.push_str(&text);
                    *shown = true;
                    on_delta(Delta::Text(text));
                }
                for fragment in choice.delta.tool_calls.unwrap_or_default() {
                    let call = calls.entry(fragment.index).or_insert_with(|| ToolCall {
                        id: String::new(),
                        name: String::new(),
                        arguments: String::new(),
                    });
                    if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
                        call.id = id;
                    }
                    if let Some(function) = fragment.function {
                        if let Some(name) = function.name.filter(|name| !name.is_empty())
                            && call.name.is_empty()
                        {
                            call.name = name;
                        }
                        if let Some(arguments) = function.arguments {
                            call.arguments.push_str(&arguments);
                        }
                    }
                }
                if let Some(reason) = choice.finish_reason {
                    answer.finish_reason = Some(convert::finish_reason(reason));
                }
            }
        }
        if answer.finish_reason.is_none() {
            // The body ended without the last chunk: a cut connection.
            return Err(LlmError::Transport(
                "the stream ended before the answer was complete".to_owned(),
            )
            .into());
        }
        answer.tool_calls = calls.into_values().collect();
        if let Some(call) = answer
            .tool_calls
            .iter()
            .find(|call| call.id.is_empty() || call.name.is_empty())
        {
            return Err(LlmError::Malformed(format!(
                "a streamed tool call lacks its id or name: {call:?}"
            ))
            .into());
        }
        Ok(answer)
    }
}

/// What one successful attempt brought back.
#[derive(Debug, Default)]
struct Answer {
    text: String,
    tool_calls: Vec<ToolCall>,
    usage: Usage,
    model: Option<String>,
    finish_reason: Option<String>,
    /// What a model that declines says instead of an answer (OpenAI's
    /// `refusal` field).
    refusal: String,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
