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

use async_openai::error::{OpenAIError, StreamError, WrappedError};
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
        let message = error_message(&body)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
        Self {
            status: status.as_u16(),
            message,
            retry_after,
        }
    }
}

/// The message of an OpenAI-style error body (`{"error": {"message": …}}`),
/// else the body's first line of text.
fn error_message(body: &[u8]) -> Option<String> {
    if let Ok(wrapped) = serde_json::from_slice::<WrappedError>(body) {
        return Some(wrapped.error.message);
    }
    if let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(body)
        && let Some(serde_json::Value::String(message)) =
            object.get("error").or_else(|| object.get("message"))
    {
        return Some(message.clone());
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().map(str::trim).find(|line| !line.is_empty())?;
    Some(line.chars().take(300).collect())
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
                error: LlmError::Status {
                    status: response.status,
                    message: response.message,
                },
                retry_after: response.retry_after,
            },
            Err(other) => LlmError::Transport(other.to_string()).into(),
        },
        OpenAIError::ApiError(response) => LlmError::Status {
            status: response.status_code.as_u16(),
            message: response.api_error.message,
        }
        .into(),
        OpenAIError::Reqwest(error) if error.is_timeout() => LlmError::Timeout.into(),
        OpenAIError::Reqwest(error) if error.is_builder() => {
            LlmError::Config(error.to_string()).into()
        }
        OpenAIError::Reqwest(error) => LlmError::Transport(transport_message(&error)).into(),
        // A stream that carries an error event instead of a chunk: the
        // provider failed mid-answer, which a new attempt may not.
        OpenAIError::JSONDeserialize(_, content)
            if serde_json::from_str::<WrappedError>(&content).is_ok() =>
        {
            let message = serde_json::from_str::<WrappedError>(&content)
                .map(|wrapped| wrapped.error.message)
                .unwrap_or_default();
            LlmError::Transport(format!("the provider failed mid-stream: {message}")).into()
        }
        OpenAIError::JSONDeserialize(error, _) => LlmError::Malformed(format!(
            "the provider's answer is not the expected JSON: {error}"
        ))
        .into(),
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
/// No overall timeout here: the retry loop bounds each attempt, stream
/// included.
pub(crate) fn http_client(config: &LlmConfig) -> Result<reqwest::Client, LlmError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| builder.with_platform_verifier())
        .map_err(|error| LlmError::Config(format!("TLS setup failed: {error}")))?
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connect_timeout = Duration::from_secs(config.request_timeout_secs.clamp(1, 10));
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
    fn error_messages_from_json_or_text() {
        assert_eq!(
            error_message(br#"{"error": {"message": "Rate limit reached", "type": "requests"}}"#)
                .as_deref(),
            Some("Rate limit reached")
        );
        assert_eq!(
            error_message(br#"{"error": "model not loaded"}"#).as_deref(),
            Some("model not loaded")
        );
        assert_eq!(
            error_message(b"\n  upstream connect error\nmore").as_deref(),
            Some("upstream connect error")
        );
        assert_eq!(error_message(b""), None);
    }

    #[test]
    fn the_tls_client_builds() {
        http_client(&LlmConfig::default()).expect("client");
    }
}
