//! The HTTP layer under `async-openai`, and where `Retry-After` is read.
//!
//! `async-openai` 0.43 sends every request through a tower service. Its
//! default one retries on its own (three times, 100 ms doubling to 8 s, no
//! jitter, `Retry-After` only in whole seconds, never on timeouts or broken
//! streams), then turns an error response into an `OpenAIError::ApiError` that
//! keeps the status and the body but drops the headers. So [`Llm`] installs
//! this service instead (`Client::with_http_service`): it sends the request
//! once, and turns an error response into an [`ErrorResponse`] that keeps
//! the wait the provider asked for (`retry-after-ms`, or `Retry-After` in
//! seconds or as an HTTP date). It travels up as `OpenAIError::Boxed` to the
//! one retry loop in [`super::retry`], which sees every kind of failure,
//! streams included, and waits at least that long.
//!
//! [`Llm`]: super::Llm

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_openai::error::{OpenAIError, StreamError};
use async_openai::middleware::HttpRequestFactory;
use futures::future::BoxFuture;
use openai_reqwest as reqwest;
use rustls_platform_verifier::BuilderVerifierExt;

use crate::config::LlmConfig;
use crate::error::LlmError;

use super::retry::Failure;

/// Sends each request once; error responses become [`ErrorResponse`]s.
#[derive(Clone)]
pub(crate) struct Transport {
    http: reqwest::Client,
    /// Without an API key, no `Authorization` header at all (async-openai
    /// would send an empty `Bearer `).
    authorize: bool,
}

impl Transport {
    pub(crate) fn new(http: reqwest::Client, authorize: bool) -> Self {
        Self { http, authorize }
    }
}

impl tower::Service<HttpRequestFactory> for Transport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        let authorize = self.authorize;
        Box::pin(async move {
            let mut request = factory.build().await?;
            if !authorize {
                request.headers_mut().remove(reqwest::header::AUTHORIZATION);
            }
            let response = http.execute(request).await?;
            if response.status().is_success() {
                return Ok(response);
            }
            Err(OpenAIError::Boxed(Box::new(
                ErrorResponse::read(response).await,
            )))
        })
    }
}

/// An error answer of the provider, with the wait it asked for.
#[derive(Debug, thiserror::Error)]
#[error("{status}: {message}")]
pub(crate) struct ErrorResponse {
    pub status: u16,
    pub message: String,
    /// The error's `type` (`server_error`, `invalid_request_error`, …).
    pub kind: Option<String>,
    pub retry_after: Option<Duration>,
}

/// Enough of an error body to find its message.
const MAX_ERROR_BODY: usize = 16 * 1024;

impl ErrorResponse {
    async fn read(mut response: reqwest::Response) -> Self {
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
        let (message, kind) = match provider_error(&body) {
            Some(error) => (error.message, error.kind),
            None => (
                first_line(&body)
                    .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned()),
                None,
            ),
        };
        Self {
            status: status.as_u16(),
            message,
            kind,
            retry_after,
        }
    }
}

/// What an error body says, read leniently: OpenAI's
/// `{"error": {"message", "type", "code": "…"}}`, llama.cpp's and vLLM's
/// with a numeric `code` (which async-openai's own type refuses), a bare
/// `{"error": "…"}`, vLLM's unwrapped `{"object": "error", "message", …}`,
/// or a proxy's `{"message": "…"}`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ProviderError {
    pub message: String,
    pub kind: Option<String>,
    /// The HTTP status the body names, when its `code` is one.
    pub status: Option<u16>,
}

pub(crate) fn provider_error(body: &[u8]) -> Option<ProviderError> {
    use serde_json::Value;
    let value: Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let error = match object.get("error") {
        Some(Value::String(message)) => {
            return Some(ProviderError {
                message: message.clone(),
                kind: None,
                status: None,
            });
        }
        Some(Value::Object(error)) => error,
        _ if object.get("object").and_then(Value::as_str) == Some("error") => object,
        _ => {
            let message = object.get("message")?.as_str()?;
            return Some(ProviderError {
                message: message.to_owned(),
                kind: None,
                status: None,
            });
        }
    };
    let text = |key: &str| error.get(key).and_then(Value::as_str).map(str::to_owned);
    let status = match error.get("code") {
        Some(Value::Number(code)) => code.as_u64(),
        Some(Value::String(code)) => code.parse().ok(),
        _ => None,
    }
    .and_then(|code| u16::try_from(code).ok())
    .filter(|code| (400..=599).contains(code));
    Some(ProviderError {
        message: text("message")
            .or_else(|| text("msg"))
            .unwrap_or_else(|| Value::Object(error.clone()).to_string()),
        kind: text("type"),
        status,
    })
}

/// The body's first line of text, for error bodies that are not JSON.
fn first_line(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|line| !line.is_empty())?;
    Some(line.chars().take(300).collect())
}

/// Words of a server error that say the request itself could not be
/// handled: llama.cpp answers 500 when the JSON of a message or a chat
/// template refuses the conversation ("Failed to parse tool call arguments
/// as JSON", a template's `raise_exception`). The same bytes would be
/// refused again, so such an answer is not retried.
const CONTENT_REFUSALS: &[&str] = &[
    "parse",
    "template",
    "jinja",
    "raise_exception",
    "must alternate",
    "must be at the beginning",
    "not supported",
    "unsupported",
    "invalid request",
];

/// An error status with its message, classified: a server error whose
/// type or message says the request could not be handled is
/// [`LlmError::Rejected`], anything else a [`LlmError::Status`].
pub(crate) fn status_error(status: u16, kind: Option<&str>, message: String) -> LlmError {
    let content = kind == Some("invalid_request_error") || {
        let lower = message.to_lowercase();
        CONTENT_REFUSALS.iter().any(|word| lower.contains(word))
    };
    if status >= 500 && status != 501 && content {
        LlmError::Rejected { status, message }
    } else {
        LlmError::Status { status, message }
    }
}

/// An error event in the middle of a stream (`data: {"error": {…}}`), as
/// the error it is: its status is the body's numeric `code` when it has
/// one (llama.cpp, vLLM), else what its `type` says (a rate limit is a 429,
/// an invalid request a 400), else a server error, which a failure after
/// the answer began almost always is. `None` when `content` is no error.
pub(crate) fn stream_error(content: &str) -> Option<LlmError> {
    let value: serde_json::Value = serde_json::from_str(content).ok()?;
    let is_error = value.get("error").is_some()
        || value.get("object").and_then(serde_json::Value::as_str) == Some("error");
    if !is_error {
        return None;
    }
    let error = provider_error(content.as_bytes())?;
    let kind = error.kind.as_deref();
    let status = error.status.unwrap_or(match kind {
        Some(kind) if kind.contains("rate_limit") || kind == "requests" => 429,
        Some("invalid_request_error") => 400,
        _ => 500,
    });
    Some(status_error(status, kind, error.message))
}

/// The wait a response asks for: `retry-after-ms` (OpenAI, Azure) when
/// present, else `Retry-After` as delay-seconds or an HTTP date.
pub(crate) fn retry_after(
    headers: &reqwest::header::HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    };
    if let Some(millis) = header("retry-after-ms").and_then(|value| value.parse::<f64>().ok())
        && millis.is_finite()
        && millis >= 0.0
    {
        return Some(Duration::from_secs_f64(millis / 1000.0));
    }
    let value = header("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What an `async-openai` error means for the caller and for the retry loop.
pub(crate) fn failure(error: OpenAIError) -> Failure {
    match error {
        OpenAIError::Boxed(boxed) => match boxed.downcast::<ErrorResponse>() {
            Ok(response) => Failure {
                error: status_error(response.status, response.kind.as_deref(), response.message),
                retry_after: response.retry_after,
            },
            Err(other) => LlmError::Transport(other.to_string()).into(),
        },
        OpenAIError::ApiError(response) => status_error(
            response.status_code.as_u16(),
            response.api_error.r#type.as_deref(),
            response.api_error.message,
        )
        .into(),
        OpenAIError::Reqwest(error) if error.is_timeout() => {
            LlmError::Timeout(transport_message(&error)).into()
        }
        OpenAIError::Reqwest(error) if error.is_builder() => {
            LlmError::Config(error.to_string()).into()
        }
        OpenAIError::Reqwest(error) => LlmError::Transport(transport_message(&error)).into(),
        // A stream that carries an error event instead of a chunk: the
        // provider's error, with its message and its status, retried as
        // that status says (a new attempt may well succeed).
        OpenAIError::JSONDeserialize(error, content) => match stream_error(&content) {
            Some(error) => {
                tracing::warn!(
                    code = error.code(),
                    %error,
                    "the model provider sent an error in the middle of its answer",
                );
                error.into()
            }
            None => LlmError::Malformed(format!(
                "the provider's answer is not the expected JSON: {error}"
            ))
            .into(),
        },
        OpenAIError::StreamError(error) => match *error {
            StreamError::EventStream(message) => {
                LlmError::Transport(format!("the stream broke: {message}")).into()
            }
            StreamError::UnknownEvent(event) => {
                LlmError::Malformed(format!("unexpected stream event {:?}", event.event)).into()
            }
        },
        OpenAIError::InvalidArgument(message) => LlmError::Config(message).into(),
        other => LlmError::Transport(other.to_string()).into(),
    }
}

/// reqwest's message with its causes (its `Display` alone says only "error
/// sending request").
fn transport_message(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

/// The HTTP client: rustls on ring with the platform's trust store, HTTP/1.1.
/// No overall timeout here: the client bounds each attempt (its first
/// token, the silences of a stream, an unstreamed answer) and the whole
/// call.
pub(crate) fn http_client(config: &LlmConfig) -> Result<reqwest::Client, LlmError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_platform_verifier())
        .map_err(|error| LlmError::Config(format!("TLS setup failed: {error}")))?
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connect_timeout = Duration::from_secs(config.first_token_timeout_secs.clamp(1, 10));
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .user_agent(concat!("tandem/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| LlmError::Config(format!("HTTP client setup failed: {error}")))
}

#[cfg(test)]
mod tests {
    use reqwest::header::{HeaderMap, HeaderValue};

    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).expect("header value"));
        }
        map
    }

    #[test]
    fn retry_after_in_seconds_milliseconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1.5")]), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "2"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &later)]), now),
            Some(Duration::from_secs(7))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(
            retry_after(&headers(&[("retry-after", &past)]), now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(&headers(&[("retry-after", "-3")]), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn error_bodies_of_every_shape() {
        let read = |body: &[u8]| provider_error(body);
        assert_eq!(
            read(br#"{"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}"#),
            Some(ProviderError {
                message: "Rate limit reached".to_owned(),
                kind: Some("requests".to_owned()),
                status: None,
            })
        );
        // llama.cpp: a numeric code, which async-openai's error type refuses.
        assert_eq!(
            read(br#"{"error":{"code":501,"message":"This server does not support embeddings. Start it with `--embeddings`","type":"not_supported_error"}}"#),
            Some(ProviderError {
                message: "This server does not support embeddings. Start it with `--embeddings`"
                    .to_owned(),
                kind: Some("not_supported_error".to_owned()),
                status: Some(501),
            })
        );
        assert_eq!(
            read(br#"{"object": "error", "message": "The model `x` does not exist.", "type": "NotFoundError", "code": 404}"#)
                .map(|e| (e.message, e.status)),
            Some(("The model `x` does not exist.".to_owned(), Some(404)))
        );
        assert_eq!(
            read(br#"{"error": "model not loaded"}"#).map(|e| e.message),
            Some("model not loaded".to_owned())
        );
        assert_eq!(read(b"upstream connect error"), None);
        assert_eq!(
            first_line(b"\n  upstream connect error\nmore").as_deref(),
            Some("upstream connect error")
        );
        assert_eq!(first_line(b""), None);
    }

    #[test]
    fn a_server_error_about_the_request_is_a_rejection() {
        let parse = status_error(
            500,
            Some("server_error"),
            "Failed to parse tool call arguments as JSON: parse error at line 1".to_owned(),
        );
        assert!(
            matches!(parse, LlmError::Rejected { status: 500, .. }),
            "{parse:?}"
        );
        assert!(!parse.is_retryable());
        let template = status_error(
            500,
            None,
            "System message must be at the beginning.".to_owned(),
        );
        assert!(
            matches!(template, LlmError::Rejected { .. }),
            "{template:?}"
        );
        let typed = status_error(500, Some("invalid_request_error"), "bad".to_owned());
        assert!(matches!(typed, LlmError::Rejected { .. }), "{typed:?}");
        let transient = status_error(
            500,
            Some("server_error"),
            "The server had an error while processing your request.".to_owned(),
        );
        assert!(matches!(transient, LlmError::Status { status: 500, .. }));
        assert!(transient.is_retryable());
        let unsupported =
            status_error(501, Some("not_supported_error"), "no embeddings".to_owned());
        assert!(matches!(unsupported, LlmError::Status { status: 501, .. }));
        assert!(!unsupported.is_retryable());
    }

    #[test]
    fn stream_error_events_keep_their_status_and_message() {
        let llama = stream_error(
            r#"{"error":{"code":500,"message":"slot unavailable","type":"server_error"}}"#,
        )
        .expect("an error");
        assert!(
            matches!(&llama, LlmError::Status { status: 500, message } if message == "slot unavailable"),
            "{llama:?}"
        );
        assert!(llama.is_retryable());
        let openai = stream_error(
            r#"{"error":{"message":"The server had an error","type":"server_error","param":null,"code":null}}"#,
        )
        .expect("an error");
        assert!(openai.is_retryable(), "{openai:?}");
        let limited =
            stream_error(r#"{"error":{"message":"slow down","type":"rate_limit_error"}}"#)
                .expect("an error");
        assert!(
            matches!(limited, LlmError::Status { status: 429, .. }),
            "{limited:?}"
        );
        let refused = stream_error(
            r#"{"error":{"code":400,"message":"context too long","type":"invalid_request_error"}}"#,
        )
        .expect("an error");
        assert!(!refused.is_retryable(), "{refused:?}");
        assert_eq!(
            stream_error(r#"{"choices": []}"#).map(|e| e.to_string()),
            None
        );
        assert_eq!(stream_error("not json").map(|e| e.to_string()), None);
    }

    #[test]
    fn the_tls_client_builds() {
        http_client(&LlmConfig::default()).expect("client");
    }
}
