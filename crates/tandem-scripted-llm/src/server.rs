//! The HTTP side: the accept loop, and one handler that records each request
//! and answers it from the script.
//!
//! The accept loop is ours rather than `axum::serve` so that stopping the
//! server drops every connection at once, as a crashed provider would:
//! stalled and slow answers end with a closed socket, not a graceful wait.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::embedding::bag_of_words_embedding;
use crate::openai::{
    Answer, error_response, estimate_tokens, llama_cpp_error, llama_cpp_error_body,
};
use crate::reply::{Reply, ReplyKind};
use crate::request::RecordedRequest;

/// The chat completions path.
pub(crate) const CHAT_PATH: &str = "/v1/chat/completions";
/// The embeddings path.
pub(crate) const EMBEDDINGS_PATH: &str = "/v1/embeddings";
/// The list of models (`GET`), served once [`crate::ScriptedLlm::list_models`]
/// names them.
pub(crate) const MODELS_PATH: &str = "/v1/models";

/// The fallback for chat requests when the queues are empty.
pub(crate) type Responder = Arc<dyn Fn(&RecordedRequest) -> Reply + Send + Sync>;
/// The function that turns one input text into an embedding.
pub(crate) type Embedder = Arc<dyn Fn(&str) -> Vec<f32> + Send + Sync>;

/// What the handle and the connections share.
pub(crate) struct Shared {
    script: Mutex<Script>,
    /// Bumped after each recorded request, for `wait_for_*`.
    pub(crate) arrivals: watch::Sender<u64>,
    /// The key `Authorization: Bearer` must carry, when one was set.
    api_key: Option<String>,
    /// Cancelled when the server stops: ends the accept loop, every
    /// connection and every stall.
    pub(crate) shutdown: CancellationToken,
}

/// The script and the record. Held only for short, synchronous steps.
#[derive(Default)]
pub(crate) struct Script {
    pub(crate) requests: Vec<RecordedRequest>,
    pub(crate) any_model: VecDeque<Reply>,
    pub(crate) per_model: HashMap<String, VecDeque<Reply>>,
    pub(crate) embeddings: VecDeque<Reply>,
    pub(crate) responder: Option<Responder>,
    pub(crate) embedder: Option<Embedder>,
    /// What `GET /v1/models` lists; none: that path is a 404.
    pub(crate) models: Option<Vec<String>>,
    /// Refuse chat requests a strict chat template would refuse.
    pub(crate) strict_template: bool,
}

impl Script {
    /// How many scripted replies are still queued, in all queues.
    pub(crate) fn pending(&self) -> usize {
        self.any_model.len()
            + self.embeddings.len()
            + self.per_model.values().map(VecDeque::len).sum::<usize>()
    }
}

impl Shared {
    pub(crate) fn new(api_key: Option<String>) -> Self {
        Self {
            script: Mutex::default(),
            arrivals: watch::Sender::new(0),
            api_key,
            shutdown: CancellationToken::new(),
        }
    }

    /// The script, even if a panicking test thread poisoned the lock: the
    /// state stays consistent because no step panics half-way.
    pub(crate) fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Accepts connections until `shared.shutdown` is cancelled; each connection
/// runs on `tracker` and is dropped at shutdown.
pub(crate) async fn run(listener: TcpListener, shared: Arc<Shared>, tracker: TaskTracker) {
    let app = Router::new()
        .fallback(handle)
        .with_state(Arc::clone(&shared));
    loop {
        let stream = tokio::select! {
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    warn!(%error, "scripted LLM: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        // SSE frames are small; don't let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let shutdown = shared.shutdown.clone();
        tracker.spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service);
            // Shutdown first: an answer that becomes ready at the same moment
            // is not sent.
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {}
                result = connection => {
                    if let Err(error) = result {
                        debug!(%error, "scripted LLM: connection ended with an error");
                    }
                }
            }
        });
    }
}

/// The endpoints served.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Embeddings,
    Models,
}

/// What the script says to do with a request, decided as it is recorded.
enum Next {
    /// Answer with this error status and message (auth failure, unknown
    /// path, bad body).
    Reject(u16, String),
    /// Answer with this error status and message in llama.cpp's error body
    /// (a strict chat template refusing the conversation).
    RejectLikeLlamaCpp(u16, String),
    /// The list of models.
    Models(Vec<String>),
    /// A queued reply.
    Scripted(Reply),
    /// No queued reply for a chat request: ask the fallback.
    Respond(Responder),
    /// No queued reply and no fallback: a mistake in the test.
    Unscripted,
    /// An embeddings request without a queued reply.
    Embed,
}

/// Records the request, takes its reply from the script, and answers.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, usize::MAX).await else {
        return error_response(400, Some("could not read the request body".into()), None);
    };
    let request = RecordedRequest::new(&parts, &body);

    let (number, next, embedder) = {
        let mut script = shared.script();
        let checked = check(&shared, &script, &request);
        script.requests.push(request.clone());
        let number = script.requests.len();
        let next = match checked {
            Err((status, message)) => Next::Reject(status, message),
            Ok(Endpoint::Models) => Next::Models(script.models.clone().unwrap_or_default()),
            Ok(Endpoint::Chat) if script.strict_template => match strict_refusal(&request) {
                Some(message) => Next::RejectLikeLlamaCpp(500, message),
                None => next_chat(&mut script, &request),
            },
            Ok(Endpoint::Chat) => next_chat(&mut script, &request),
            Ok(Endpoint::Embeddings) => script
                .embeddings
                .pop_front()
                .map_or(Next::Embed, Next::Scripted),
        };
        (number, next, script.embedder.clone())
    };
    shared.arrivals.send_modify(|count| *count += 1);
    debug!(number, method = %request.method, path = %request.path, model = ?request.model, "scripted LLM: request");

    let reply = match next {
        Next::Reject(status, message) => return error_response(status, Some(message), None),
        Next::RejectLikeLlamaCpp(status, message) => return llama_cpp_error(status, &message),
        Next::Models(models) => return models_response(&models),
        Next::Scripted(reply) => reply,
        Next::Embed => return embeddings(&request, embedder.as_ref()),
        Next::Unscripted => {
            let message = format!(
                "tandem-scripted-llm: no reply scripted for request #{number} ({} {}, model {:?}): \
                 the queues are empty and no respond_with fallback is set. \
                 The test must push one more Reply (or push_for this model) or set respond_with.",
                request.method,
                request.path,
                request.model.as_deref().unwrap_or("")
            );
            warn!("{message}");
            return error_response(500, Some(message), None);
        }
        Next::Respond(responder) => match catch_unwind(AssertUnwindSafe(|| responder(&request))) {
            Ok(reply) => reply,
            Err(_) => {
                let message = format!(
                    "tandem-scripted-llm: the respond_with fallback panicked on request #{number}"
                );
                warn!("{message}");
                return error_response(500, Some(message), None);
            }
        },
    };
    answer(&request, reply, embedder.as_ref()).await
}

/// The queued reply of a chat request, or what to do without one.
fn next_chat(script: &mut Script, request: &RecordedRequest) -> Next {
    let per_model = request
        .model
        .as_ref()
        .and_then(|model| script.per_model.get_mut(model))
        .and_then(VecDeque::pop_front);
    match per_model.or_else(|| script.any_model.pop_front()) {
        Some(reply) => Next::Scripted(reply),
        None => script
            .responder
            .clone()
            .map_or(Next::Unscripted, Next::Respond),
    }
}

/// What a strict chat template (Qwen's, Llama's, as llama.cpp renders
/// them) refuses in a conversation, in llama.cpp's words: a `system`
/// message anywhere but first, a `name` on a message, and tool call
/// arguments that are not a JSON object (the template reads them as a
/// mapping; llama.cpp parses them first).
fn strict_refusal(request: &RecordedRequest) -> Option<String> {
    for (index, message) in request.messages().iter().enumerate() {
        if index > 0 && message.get("role").and_then(Value::as_str) == Some("system") {
            return Some("System message must be at the beginning.".to_owned());
        }
        if message.get("name").is_some_and(|name| !name.is_null()) {
            return Some(format!(
                "Unexpected key 'name' in message {index}: this chat template does not \
                 support named messages"
            ));
        }
        for call in message
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let arguments = call
                .pointer("/function/arguments")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match serde_json::from_str::<Value>(arguments) {
                Ok(Value::Object(_)) => {}
                Ok(_) => {
                    return Some(format!(
                        "Tool call arguments must be a JSON object, got: {arguments}"
                    ));
                }
                Err(error) => {
                    return Some(format!(
                        "Failed to parse tool call arguments as JSON: {error}"
                    ));
                }
            }
        }
    }
    None
}

/// The `GET /v1/models` answer.
fn models_response(models: &[String]) -> Response {
    let data: Vec<Value> = models
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "scripted"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// Checks auth, the route and the body: the endpoint when all is well, the
/// error status and message otherwise.
fn check(
    shared: &Shared,
    script: &Script,
    request: &RecordedRequest,
) -> Result<Endpoint, (u16, String)> {
    if let Some(key) = &shared.api_key {
        let expected = format!("Bearer {key}");
        if request.header("authorization") != Some(expected.as_str()) {
            return Err((
                401,
                "Incorrect API key provided (scripted): the Authorization header must be \
                 `Bearer <the key given to start_with_key>`."
                    .into(),
            ));
        }
    }
    let invalid_url = || {
        let message = format!("Invalid URL ({} {})", request.method, request.path);
        (404, message)
    };
    if request.method == Method::GET.as_str()
        && request.path == MODELS_PATH
        && script.models.is_some()
    {
        return Ok(Endpoint::Models);
    }
    if request.method != Method::POST.as_str() {
        return Err(invalid_url());
    }
    let bad = |message: &str| Err((400, message.to_owned()));
    let endpoint = match request.path.as_str() {
        CHAT_PATH => Endpoint::Chat,
        EMBEDDINGS_PATH => Endpoint::Embeddings,
        _ => return Err(invalid_url()),
    };
    if !request.body.is_object() {
        return bad("We could not parse the JSON body of your request.");
    }
    if request.model.is_none() {
        return bad("You must provide a model parameter.");
    }
    match endpoint {
        Endpoint::Chat if !request.body.get("messages").is_some_and(Value::is_array) => {
            bad("'messages' is a required property (an array).")
        }
        Endpoint::Embeddings if embedding_inputs(&request.body).is_none() => {
            bad("'input' must be a string or an array of strings.")
        }
        _ => Ok(endpoint),
    }
}

/// Plays one reply: the delay, then the error, the stall or the answer.
async fn answer(request: &RecordedRequest, reply: Reply, embedder: Option<&Embedder>) -> Response {
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    match &reply.kind {
        ReplyKind::Error {
            status,
            message,
            retry_after,
        } => error_response(*status, message.clone(), *retry_after),
        // Never answers: the connection task drops this future, and the
        // connection, when the server stops.
        ReplyKind::Stall => std::future::pending().await,
        ReplyKind::Message { .. } if !request.is_chat() => embeddings(request, embedder),
        ReplyKind::Message { .. } if reply.error_mid_stream.is_some() && !request.stream() => {
            let (_, status, message) = reply.error_mid_stream.as_ref().expect("checked");
            llama_cpp_error(*status, message)
        }
        ReplyKind::Message {
            content,
            tool_calls,
        } => {
            let answer = Answer::new(request, &reply, content.as_deref(), tool_calls);
            if let Some((frames, status, message)) = &reply.error_mid_stream {
                let mut sent: Vec<Bytes> = answer
                    .frames(reply.chunks, request.include_usage())
                    .into_iter()
                    .take(*frames)
                    .collect();
                sent.push(Bytes::from(format!(
                    "data: {}\n\n",
                    llama_cpp_error_body(*status, message)
                )));
                let mut response = framed(sent, reply.chunk_delay, None).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                response
            } else if request.stream() {
                let frames = answer.frames(reply.chunks, request.include_usage());
                let body = framed(frames, reply.chunk_delay, reply.disconnect_after);
                let mut response = body.into_response();
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/event-stream"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
                response
            } else if reply.disconnect_after.is_some() {
                let mut json = answer.completion().to_string().into_bytes();
                json.truncate(json.len() / 2);
                let mut response =
                    framed(vec![Bytes::from(json)], Duration::ZERO, Some(1)).into_response();
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                response
            } else {
                axum::Json(answer.completion()).into_response()
            }
        }
    }
}

/// A body sending `frames` with `delay` between two of them; with `cut`,
/// only the first `cut` frames and then a dropped connection.
fn framed(frames: Vec<Bytes>, delay: Duration, cut: Option<usize>) -> Body {
    let count = cut.map_or(frames.len(), |cut| cut.min(frames.len()));
    let frames = futures::stream::iter(frames.into_iter().take(count).enumerate()).then(
        move |(index, frame)| async move {
            if index > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, io::Error>(frame)
        },
    );
    let drop_connection = futures::stream::iter(cut.map(|_| ())).then(|()| async {
        // Let the frames reach the socket before the error closes it.
        tokio::time::sleep(Duration::from_millis(10)).await;
        Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "scripted disconnect",
        ))
    });
    Body::from_stream(frames.chain(drop_connection))
}

/// The `input` texts of an embeddings body: a string or an array of strings.
fn embedding_inputs(body: &Value) -> Option<Vec<&str>> {
    match body.get("input")? {
        Value::String(text) => Some(vec![text.as_str()]),
        Value::Array(items) => items.iter().map(Value::as_str).collect(),
        _ => None,
    }
}

/// The embeddings answer for a checked request.
fn embeddings(request: &RecordedRequest, embedder: Option<&Embedder>) -> Response {
    let inputs = embedding_inputs(&request.body).unwrap_or_default();
    let embed = |text: &str| match embedder {
        Some(embedder) => embedder(text),
        None => bag_of_words_embedding(text),
    };
    let Ok(vectors) = catch_unwind(AssertUnwindSafe(|| {
        inputs.iter().map(|text| embed(text)).collect::<Vec<_>>()
    })) else {
        let message = "tandem-scripted-llm: the set_embedder function panicked";
        warn!("{message}");
        return error_response(500, Some(message.into()), None);
    };
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, embedding)| {
            json!({ "object": "embedding", "index": index, "embedding": embedding })
        })
        .collect();
    let tokens: u32 = inputs.iter().map(|text| estimate_tokens(text)).sum();
    axum::Json(json!({
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response()
}
