//! An OpenAI-compatible HTTP server for tests, scripted reply by reply.
//!
//! A test starts a [`ScriptedLlm`] on `127.0.0.1` (a free port), points the
//! code under test at [`ScriptedLlm::base_url`] (what `OPENAI_BASE_URL` is set
//! to), queues the answers it wants, and afterwards reads back every request
//! the server received:
//!
//! ```no_run
//! # async fn demo() {
//! use std::time::Duration;
//! use serde_json::json;
//! use tandem_scripted_llm::{Reply, ScriptedLlm};
//!
//! let llm = ScriptedLlm::start().await;
//! llm.push(Reply::text("Hello!"));
//! llm.push_for("classifier", Reply::json(json!({"responder": "ai"})));
//! llm.push(Reply::tool_call("ask_human", json!({"question": "Refund?"})).with_id("call_1"));
//! llm.push(Reply::status(429).retry_after(Duration::from_secs(1)));
//! llm.push(Reply::stall());
//! // ... run the code under test against llm.base_url() ...
//! let requests = llm.wait_for_requests(5, Duration::from_secs(5)).await;
//! assert_eq!(requests[0].tools(), Vec::<String>::new());
//! # }
//! ```
//!
//! How a chat request finds its answer: the queue of its model
//! ([`ScriptedLlm::push_for`]) first, then the shared queue
//! ([`ScriptedLlm::push`]), then the fallback ([`ScriptedLlm::respond_with`]);
//! with none of them, a 500 whose message names the test's mistake.
//! Concurrent requests take replies in the order their bodies arrived.
//!
//! Endpoints: `POST /v1/chat/completions` (plain or `"stream": true`, as
//! OpenAI sends them), `POST /v1/embeddings`, and `GET /v1/models` once
//! [`ScriptedLlm::list_models`] names them; anything else is a 404 with an
//! OpenAI error body. Every request is recorded before it is answered.
//!
//! Besides OpenAI's behaviour it can play llama.cpp's: refuse what a strict
//! chat template refuses ([`ScriptedLlm::set_strict_template`]), send an
//! error event in the middle of a stream ([`Reply::error_mid_stream`]), and
//! error bodies whose `code` is a number.
//!
//! - [`reply`]: [`Reply`] and [`ToolCall`], what the script is made of.
//! - [`request`]: [`RecordedRequest`], what the server received.
//! - `server`: the accept loop and the handler that records and answers.
//! - `openai`: the wire format (completion objects, stream chunks, errors,
//!   the token estimate).
//! - `embedding`: the default embedder, [`bag_of_words_embedding`].

mod embedding;
mod openai;
pub mod reply;
pub mod request;
mod server;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use embedding::{EMBEDDING_DIMS, bag_of_words_embedding};
pub use openai::estimate_tokens;
pub use reply::{Reply, ToolCall};
pub use request::RecordedRequest;

use server::Shared;

/// A scripted OpenAI-compatible server on `127.0.0.1`, serving until it is
/// dropped or [stopped](ScriptedLlm::stop).
///
/// All methods take `&self`; the script can be changed while requests are
/// being served.
pub struct ScriptedLlm {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tasks: TaskTracker,
}

impl fmt::Debug for ScriptedLlm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedLlm")
            .field("addr", &self.addr)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl ScriptedLlm {
    /// Starts a server on `127.0.0.1` and a free port, accepting any (or no)
    /// API key.
    ///
    /// # Panics
    ///
    /// If no port can be bound, or outside a Tokio runtime.
    pub async fn start() -> Self {
        Self::start_inner(None).await
    }

    /// Starts a server that answers 401 (after recording the request) unless
    /// the request carries `Authorization: Bearer {key}`.
    ///
    /// # Panics
    ///
    /// If no port can be bound, or outside a Tokio runtime.
    pub async fn start_with_key(key: impl Into<String>) -> Self {
        Self::start_inner(Some(key.into())).await
    }

    async fn start_inner(api_key: Option<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("tandem-scripted-llm: bind 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("tandem-scripted-llm: read the bound address");
        let shared = Arc::new(Shared::new(api_key));
        let tasks = TaskTracker::new();
        tasks.spawn(server::run(listener, Arc::clone(&shared), tasks.clone()));
        Self {
            shared,
            addr,
            tasks,
        }
    }

    /// The base URL of the API, `http://127.0.0.1:PORT/v1`: what
    /// `OPENAI_BASE_URL` is set to.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues a reply for the next chat completion request of any model.
    pub fn push(&self, reply: Reply) {
        self.shared.script().any_model.push_back(reply);
    }

    /// Queues a reply for the next chat completion request of `model`. A
    /// model's queue is tried before the shared one.
    pub fn push_for(&self, model: impl Into<String>, reply: Reply) {
        self.shared
            .script()
            .per_model
            .entry(model.into())
            .or_default()
            .push_back(reply);
    }

    /// Queues a reply for the next embeddings request: a
    /// [`Reply::status`], a [`Reply::stall`], or any reply with a
    /// [`Reply::delay`] (its text is ignored; the vectors come from the
    /// embedder). Without a queued reply, embeddings requests are answered
    /// by the embedder at once.
    pub fn push_embeddings(&self, reply: Reply) {
        self.shared.script().embeddings.push_back(reply);
    }

    /// Sets the fallback that answers chat requests when their queues are
    /// empty (instant answers for a benchmark, an adversarial script). It is
    /// called outside the server's lock; if it panics, the request gets a 500.
    pub fn respond_with(
        &self,
        responder: impl Fn(&RecordedRequest) -> Reply + Send + Sync + 'static,
    ) {
        self.shared.script().responder = Some(Arc::new(responder));
    }

    /// Serves `GET /v1/models` with these model ids (without it, that path
    /// is a 404, as on servers that do not list their models).
    pub fn list_models<I, S>(&self, models: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.shared.script().models = Some(models.into_iter().map(Into::into).collect());
    }

    /// Refuses, from now on, what a strict chat template refuses, as
    /// llama.cpp does with Qwen's or Llama's templates: a chat request with
    /// a `system` message anywhere but first, a `name` on any message, or
    /// tool call arguments that are not a JSON object is answered 500 with
    /// llama.cpp's error body (`{"error": {"code": 500, "message", "type":
    /// "server_error"}}`), before any scripted reply is taken. The request
    /// is recorded all the same.
    pub fn set_strict_template(&self, strict: bool) {
        self.shared.script().strict_template = strict;
    }

    /// Replaces the embedder of `/v1/embeddings` (by default
    /// [`bag_of_words_embedding`]); it is called once per input text.
    pub fn set_embedder(&self, embedder: impl Fn(&str) -> Vec<f32> + Send + Sync + 'static) {
        self.shared.script().embedder = Some(Arc::new(embedder));
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.script().requests.clone()
    }

    /// The chat completion requests received so far, in arrival order.
    pub fn chat_requests(&self) -> Vec<RecordedRequest> {
        self.shared
            .script()
            .requests
            .iter()
            .filter(|r| r.is_chat())
            .cloned()
            .collect()
    }

    /// Every request received so far, forgetting them: for long benchmarks
    /// that would otherwise keep every body.
    pub fn take_requests(&self) -> Vec<RecordedRequest> {
        std::mem::take(&mut self.shared.script().requests)
    }

    /// How many scripted replies are still queued, in all queues (shared,
    /// per model and embeddings).
    pub fn pending(&self) -> usize {
        self.shared.script().pending()
    }

    /// Waits until at least `n` requests have arrived and returns all of
    /// them.
    ///
    /// # Panics
    ///
    /// After `timeout`, naming the requests that did arrive.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<RecordedRequest> {
        self.wait_for(n, timeout, "requests", |_| true).await
    }

    /// Waits until at least `n` chat completion requests have arrived and
    /// returns them.
    ///
    /// # Panics
    ///
    /// After `timeout`, naming the requests that did arrive.
    pub async fn wait_for_chat_requests(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        self.wait_for(n, timeout, "chat requests", RecordedRequest::is_chat)
            .await
    }

    async fn wait_for(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        keep: impl Fn(&RecordedRequest) -> bool,
    ) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut arrivals = self.shared.arrivals.subscribe();
        loop {
            arrivals.borrow_and_update();
            let matching: Vec<_> = self
                .shared
                .script()
                .requests
                .iter()
                .filter(|r| keep(r))
                .cloned()
                .collect();
            if matching.len() >= n {
                return matching;
            }
            let arrived = tokio::time::timeout_at(deadline, arrivals.changed()).await;
            if !matches!(arrived, Ok(Ok(()))) {
                let seen: Vec<_> = self
                    .requests()
                    .iter()
                    .map(|r| format!("{} {} (model {:?})", r.method, r.path, r.model))
                    .collect();
                panic!(
                    "tandem-scripted-llm: waited {timeout:?} for {n} {what}, {} arrived; all requests: {seen:?}",
                    matching.len()
                );
            }
        }
    }

    /// Stops the server and waits until every connection is closed. Stalled
    /// and unfinished answers end with a dropped connection, never with a
    /// response. Dropping the server stops it the same way without waiting.
    pub async fn stop(self) {
        self.shared.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for ScriptedLlm {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}
