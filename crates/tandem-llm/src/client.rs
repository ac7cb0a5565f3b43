//! [`Llm`]: chat (streamed or not), structured output and embeddings, each
//! call retried as `client/retry.rs` says, each attempt bounded by its own
//! limits and the whole call by its total budget; and the start-up check
//! of the configured models.
//!
//! The limits, from [`LlmConfig`]:
//! - a streamed attempt waits `first_token_timeout_secs` for its first
//!   token (a chunk with text, a tool call or the end; a role-only chunk
//!   does not count), then at most `idle_timeout_secs` between two chunks:
//!   a slow model that keeps writing is never cut off, a silent one is;
//! - an unstreamed attempt (its answer comes in one piece) waits
//!   `request_timeout_secs` for the whole of it;
//! - the call, every attempt and wait included, ends after
//!   `total_timeout_secs`, and no retry starts that could not begin before.
//!
//! A call that gives up says so once, at `warn`, with the model, the
//! attempts, the time spent and why.

mod convert;
mod retry;
mod transport;

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionResponseStream, CreateChatCompletionRequest, CreateChatCompletionStreamResponse,
};
use async_openai::types::embeddings::{CreateEmbeddingRequest, EmbeddingInput};
use futures::StreamExt;
use openai_reqwest as reqwest;
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::config::LlmConfig;
use crate::error::LlmError;
use crate::health::{Health, ModelRole, ModelState, unavailable_reason};
use crate::schema;
use crate::types::{
    ChatMessage, ChatRequest, Completion, Delta, Embeddings, Structured, ToolCall, Usage,
};
use retry::{Attempts, Backoff, Failure, GiveUp};
use transport::{Transport, failure};

/// The most inputs one embeddings request carries (OpenAI's limit); longer
/// lists are sent in several requests.
const EMBEDDING_BATCH: usize = 2048;

/// The most one start-up check of a model may take: it must not hold
/// anything up for long, and a model that needs longer to say one token
/// is not fit to answer customers anyway.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// The LLM client. Cheap to clone: clones share one connection pool and
/// what is known of each model ([`Llm::model_statuses`]).
#[derive(Clone)]
pub struct Llm {
    client: async_openai::Client<OpenAIConfig>,
    /// The same connection pool, for the calls async-openai has no type
    /// for (the list of models).
    http: reqwest::Client,
    config: Arc<LlmConfig>,
    backoff: Backoff,
    limits: Limits,
    health: Health,
}

/// The per-attempt limits.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// An unstreamed answer, whole.
    answer: Duration,
    /// A streamed answer's first token.
    first_token: Duration,
    /// A streamed answer's longest silence after its first token.
    idle: Duration,
}

impl std::fmt::Debug for Llm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llm").field("config", &self.config).finish()
    }
}

/// What is known of one configured model ([`Llm::model_statuses`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelStatus {
    pub role: ModelRole,
    /// The model's name, as configured (or defaulted).
    pub model: String,
    pub state: ModelState,
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
        for (name, secs) in [
            ("request_timeout_secs", config.request_timeout_secs),
            ("first_token_timeout_secs", config.first_token_timeout_secs),
            ("idle_timeout_secs", config.idle_timeout_secs),
            ("total_timeout_secs", config.total_timeout_secs),
        ] {
            if secs == 0 {
                return Err(LlmError::Config(format!("{name} must be at least 1")));
            }
        }
        let base_url = config.endpoint();
        match reqwest::Url::parse(base_url) {
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
            .with_http_service(Transport::new(http.clone(), api_key.is_some()));
        Ok(Self {
            client,
            http,
            config: Arc::new(config.clone()),
            backoff: Backoff::from_config(config),
            limits: Limits {
                answer: Duration::from_secs(config.request_timeout_secs),
                first_token: Duration::from_secs(config.first_token_timeout_secs),
                idle: Duration::from_secs(config.idle_timeout_secs),
            },
            health: Health::default(),
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
        let body = convert::chat_request(&request);
        let mut attempts = self.backoff.attempts();
        let answer = loop {
            attempts.start();
            let mut shown = false;
            let attempt = async {
                if request.stream {
                    self.stream_attempt(&body, on_delta, &mut shown).await
                } else {
                    self.plain_attempt(&body).await
                }
            };
            match self.within_budget(&attempts, attempt).await {
                Ok(answer) => break answer,
                Err(failure) => match attempts.after_failure("chat", &request.model, failure) {
                    Ok(wait) => {
                        if shown {
                            on_delta(Delta::Restart);
                        }
                        tokio::time::sleep(wait).await;
                    }
                    Err((error, why)) => {
                        return Err(self.give_up("chat", &request.model, &attempts, error, why));
                    }
                },
            }
        };
        self.record_chat(&request.model, Ok(()));
        let mut answer = answer;
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
            latency_ms: millis(attempts.elapsed()),
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
        let model = self.config.embedding_model().to_owned();
        let mut embeddings = Embeddings {
            vectors: Vec::with_capacity(inputs.len()),
            usage: Usage::default(),
            model: model.clone(),
            latency_ms: 0,
        };
        // One budget for the whole call, however many batches it takes.
        let mut attempts = self.backoff.attempts();
        for batch in inputs.chunks(EMBEDDING_BATCH) {
            let body = CreateEmbeddingRequest {
                model: model.clone(),
                input: EmbeddingInput::StringArray(batch.to_vec()),
                ..CreateEmbeddingRequest::default()
            };
            let mut response = loop {
                attempts.start();
                let attempt = self.answer_within_limit(async {
                    let embeddings = self.client.embeddings();
                    embeddings.create(body.clone()).await.map_err(failure)
                });
                match self.within_budget(&attempts, attempt).await {
                    Ok(response) => break response,
                    Err(failure) => match attempts.after_failure("embed", &model, failure) {
                        Ok(wait) => tokio::time::sleep(wait).await,
                        Err((error, why)) => {
                            self.record(ModelRole::Embedding, Err(&error));
                            return Err(self.give_up("embed", &model, &attempts, error, why));
                        }
                    },
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
        self.record(ModelRole::Embedding, Ok(()));
        embeddings.latency_ms = millis(attempts.elapsed());
        Ok(embeddings)
    }

    /// What is known of each configured model: `unchecked` until
    /// [`Llm::check_models`] or a call says otherwise.
    pub fn model_statuses(&self) -> Vec<ModelStatus> {
        ModelRole::ALL
            .into_iter()
            .map(|role| ModelStatus {
                role,
                model: self.config.role_model(role).to_owned(),
                state: self.health.get(role),
            })
            .collect()
    }

    /// The state of the model that plays `role`.
    pub fn model_state(&self, role: ModelRole) -> ModelState {
        self.health.get(role)
    }

    /// Checks that each configured model answers, cheaply and quickly (at
    /// most [`CHECK_TIMEOUT`] per model, all at once, no retries): a chat
    /// model listed by the endpoint's `GET /models` is taken as answering,
    /// any other gets a one-token chat; the embedding model always gets a
    /// one-input embedding (a server may list a model that does not embed).
    /// The states are kept ([`Llm::model_statuses`]) and returned.
    pub async fn check_models(&self) -> Vec<ModelStatus> {
        let listed = self.listed_models().await;
        let reply = self.config.role_model(ModelRole::Reply).to_owned();
        let classifier = self.config.role_model(ModelRole::Classifier).to_owned();
        let check_chat = |model: String| {
            let listed = listed
                .as_ref()
                .is_some_and(|listed| listed.contains(&model));
            async move {
                if listed {
                    return ModelState::Ok;
                }
                checked(self.check_chat(&model).await)
            }
        };
        let same = reply == classifier;
        let (reply_state, classifier_state, embedding_state) = tokio::join!(
            check_chat(reply),
            async {
                if same {
                    None
                } else {
                    Some(check_chat(classifier.clone()).await)
                }
            },
            async { checked(self.check_embedding().await) },
        );
        let classifier_state = classifier_state.unwrap_or_else(|| reply_state.clone());
        self.health.set(ModelRole::Reply, reply_state);
        self.health.set(ModelRole::Classifier, classifier_state);
        self.health.set(ModelRole::Embedding, embedding_state);
        self.model_statuses()
    }

    /// The ids `GET /models` lists, when the endpoint offers the list.
    async fn listed_models(&self) -> Option<HashSet<String>> {
        let mut request = self
            .http
            .get(format!("{}/models", self.config.endpoint()))
            .timeout(CHECK_TIMEOUT);
        if let Some(key) = self.config.api_key.as_deref().filter(|k| !k.is_empty()) {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let list: serde_json::Value = response.json().await.ok()?;
        let ids: HashSet<String> = list
            .get("data")?
            .as_array()?
            .iter()
            .filter_map(|model| model.get("id")?.as_str().map(str::to_owned))
            .collect();
        Some(ids)
    }

    /// One unretried one-token chat with `model`.
    async fn check_chat(&self, model: &str) -> Result<(), LlmError> {
        let mut body = convert::chat_request(&ChatRequest::new(
            model,
            vec![ChatMessage::User("Reply with OK.".to_owned())],
        ));
        body.max_completion_tokens = Some(1);
        let attempt = async {
            self.client
                .chat()
                .create(body)
                .await
                .map(|_| ())
                .map_err(|error| failure(error).error)
        };
        tokio::time::timeout(CHECK_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(check_timed_out()))
    }

    /// One unretried one-input embedding with the embedding model.
    async fn check_embedding(&self) -> Result<(), LlmError> {
        let body = CreateEmbeddingRequest {
            model: self.config.embedding_model().to_owned(),
            input: EmbeddingInput::StringArray(vec!["ping".to_owned()]),
            ..CreateEmbeddingRequest::default()
        };
        let attempt = async {
            match self.client.embeddings().create(body).await {
                Ok(response) if response.data.is_empty() => Err(LlmError::Malformed(
                    "the endpoint returned no embedding".to_owned(),
                )),
                Ok(_) => Ok(()),
                Err(error) => Err(failure(error).error),
            }
        };
        tokio::time::timeout(CHECK_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(check_timed_out()))
    }

    /// Records a finished call of `role`'s model (see [`ModelState::after`]).
    fn record(&self, role: ModelRole, result: Result<(), &LlmError>) {
        if let Some(state) = ModelState::after(result) {
            self.health.set(role, state);
        }
    }

    /// Records a finished chat with `model` for every chat role it plays.
    fn record_chat(&self, model: &str, result: Result<(), &LlmError>) {
        for role in [ModelRole::Reply, ModelRole::Classifier] {
            if self.config.role_model(role) == model {
                self.record(role, result);
            }
        }
    }

    /// A call that will not be retried again: logged once, with why.
    fn give_up(
        &self,
        call: &str,
        model: &str,
        attempts: &Attempts,
        error: LlmError,
        why: GiveUp,
    ) -> LlmError {
        if call == "chat" {
            self.record_chat(model, Err(&error));
        }
        tracing::warn!(
            call,
            model,
            attempts = attempts.made(),
            elapsed_ms = millis(attempts.elapsed()),
            code = error.code(),
            error = %error,
            why = why.as_str(),
            "model call gave up",
        );
        error
    }

    /// One attempt, cut off when the call's total budget runs out.
    async fn within_budget<T>(
        &self,
        attempts: &Attempts,
        attempt: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::time::timeout_at(attempts.deadline(), attempt)
            .await
            .unwrap_or_else(|_| {
                Err(LlmError::Timeout(format!(
                    "the call's total budget of {} s ran out",
                    attempts.budget().as_secs()
                ))
                .into())
            })
    }

    /// An unstreamed attempt, bounded by the time its whole answer may take.
    async fn answer_within_limit<T>(
        &self,
        attempt: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T, Failure> {
        tokio::time::timeout(self.limits.answer, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(LlmError::Timeout(format!(
                    "no answer within {} s (request_timeout_secs)",
                    self.limits.answer.as_secs()
                ))
                .into())
            })
    }

    async fn plain_attempt(&self, body: &CreateChatCompletionRequest) -> Result<Answer, Failure> {
        let response = self
            .answer_within_limit(async {
                self.client
                    .chat()
                    .create(body.clone())
                    .await
                    .map_err(failure)
            })
            .await?;
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

    /// The next chunk of a stream: before the first token, by the
    /// first-token deadline; after it, within the idle limit. `None` at the
    /// end of the stream.
    async fn next_chunk(
        &self,
        stream: &mut ChatCompletionResponseStream,
        first_token_by: Option<tokio::time::Instant>,
    ) -> Result<Option<CreateChatCompletionStreamResponse>, Failure> {
        let next = match first_token_by {
            Some(deadline) => tokio::time::timeout_at(deadline, stream.next()).await,
            None => tokio::time::timeout(self.limits.idle, stream.next()).await,
        };
        match next {
            Ok(Some(chunk)) => chunk.map(Some).map_err(failure),
            Ok(None) => Ok(None),
            Err(_) => Err(LlmError::Timeout(match first_token_by {
                Some(_) => self.first_token_missing(),
                None => format!(
                    "the stream was silent for {} s (idle_timeout_secs)",
                    self.limits.idle.as_secs()
                ),
            })
            .into()),
        }
    }

    fn first_token_missing(&self) -> String {
        format!(
            "no first token within {} s (first_token_timeout_secs)",
            self.limits.first_token.as_secs()
        )
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
        let mut first_token_by = Some(tokio::time::Instant::now() + self.limits.first_token);
        let opened = tokio::time::timeout(
            self.limits.first_token,
            self.client.chat().create_stream(body.clone()),
        )
        .await;
        let mut stream = match opened {
            Ok(opened) => opened.map_err(failure)?,
            Err(_) => return Err(LlmError::Timeout(self.first_token_missing()).into()),
        };
        let mut answer = Answer::default();
        let mut calls: BTreeMap<u32, ToolCall> = BTreeMap::new();
        while let Some(chunk) = self.next_chunk(&mut stream, first_token_by).await? {
            if !chunk.model.is_empty() {
                answer.model = Some(chunk.model);
            }
            if let Some(usage) = &chunk.usage {
                answer.usage = convert::usage(usage);
            }
            for choice in chunk.choices.into_iter().filter(|choice| choice.index == 0) {
                let delta = &choice.delta;
                let token = delta
                    .content
                    .as_deref()
                    .is_some_and(|text| !text.is_empty())
                    || delta.refusal.is_some()
                    || delta.tool_calls.is_some()
                    || choice.finish_reason.is_some();
                if token {
                    first_token_by = None;
                }
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

fn check_timed_out() -> LlmError {
    LlmError::Timeout(format!(
        "no answer to the start-up check within {} s",
        CHECK_TIMEOUT.as_secs()
    ))
}

/// The state a start-up check leaves.
fn checked(result: Result<(), LlmError>) -> ModelState {
    match result {
        Ok(()) => ModelState::Ok,
        Err(error) => ModelState::Unavailable(unavailable_reason(&error)),
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
