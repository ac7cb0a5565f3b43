//! The action of an `http` step: one signed request per attempt, its answer
//! sorted into success, a failure worth retrying, and a permanent one.

use std::time::Duration;

use chrono::Utc;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::{Value, json};

use super::definition::Method;
use crate::context::StepInfo;
use crate::error::ActionError;
use crate::signing::{SIGNATURE_HEADER, Signer, TIMESTAMP_HEADER};

/// The header with the step's idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// The header with the run's id.
pub const RUN_ID_HEADER: &str = "tandem-run-id";

/// The most of a response body kept in the journal.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// A rendered request: the same for every attempt.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    /// The JSON body's bytes, exactly as signed and sent.
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
    pub expect: Option<Vec<u16>>,
    pub run_id: String,
}

/// The client `http` steps share. Redirects are not followed: a signed
/// request must not be replayed to another address.
pub(crate) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// One attempt: `{status, body}` on success.
pub(crate) async fn send(
    client: &reqwest::Client,
    signer: &Signer,
    request: &Request,
    info: StepInfo,
) -> Result<Value, ActionError> {
    let url = url::Url::parse(&request.url).map_err(|e| {
        ActionError::permanent(format!("{:?} is not a valid URL: {e}", request.url))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(ActionError::permanent(format!(
            "{:?} is not an http:// or https:// URL",
            request.url
        )));
    }
    // Errors name the address without its query, which may carry secrets.
    let shown = format!(
        "{} {}{}",
        method_name(request.method),
        url.origin().ascii_serialization(),
        url.path()
    );
    let mut builder = client
        .request(reqwest_method(request.method), url)
        .timeout(request.timeout);
    let mut has_content_type = false;
    for (name, value) in &request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| ActionError::permanent(format!("header {name:?}: {e}")))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| ActionError::permanent(format!("header {name}: {e}")))?;
        has_content_type |= name == CONTENT_TYPE;
        builder = builder.header(name, value);
    }
    let body = request.body.clone().unwrap_or_default();
    if request.body.is_some() && !has_content_type {
        builder = builder.header(CONTENT_TYPE, "application/json");
    }
    // The signing time is the moment of this attempt, not a journaled one:
    // receivers check it against their clock, and it decides nothing in the
    // run, so replay stays deterministic.
    let timestamp = Utc::now().timestamp();
    let signature = signer.outbound_signature(timestamp, &body);
    builder = builder
        .header(IDEMPOTENCY_HEADER, &info.idempotency_key)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(SIGNATURE_HEADER, signature)
        .header(RUN_ID_HEADER, &request.run_id);
    if request.body.is_some() {
        builder = builder.body(body);
    }

    let mut response = builder.send().await.map_err(|e| {
        if e.is_builder() {
            ActionError::permanent(format!("{shown}: {e}"))
        } else {
            ActionError::retryable(format!("{shown}: {e}"))
        }
    })?;
    let status = response.status().as_u16();
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| ActionError::retryable(format!("{shown}: reading the response: {e}")))?
    {
        if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(ActionError::permanent(format!(
                "{shown}: the response is over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk);
    }
    let body = parse_body(&bytes);
    match classify(status, request.expect.as_deref()) {
        Class::Success => Ok(json!({"status": status, "body": body})),
        class => {
            let text = super::template::as_text(&body);
            let snippet: String = text.chars().take(300).collect();
            let message = format!("{shown} answered {status}: {snippet}");
            Err(if class == Class::Retryable {
                ActionError::retryable(message)
            } else {
                ActionError::permanent(message)
            })
        }
    }
}

/// The body as JSON when it is JSON, else as text; none when empty.
fn parse_body(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    Success,
    Retryable,
    Permanent,
}

/// How a status counts: `expect` (or any 2xx) succeeds; a timeout, too
/// early, too many requests or a server error may pass; anything else will
/// not.
pub(crate) fn classify(status: u16, expect: Option<&[u16]>) -> Class {
    let success = match expect {
        Some(expect) => expect.contains(&status),
        None => (200..300).contains(&status),
    };
    if success {
        Class::Success
    } else if matches!(status, 408 | 425 | 429 | 500..=599) {
        Class::Retryable
    } else {
        Class::Permanent
    }
}

fn reqwest_method(method: Method) -> reqwest::Method {
    match method {
        Method::Get => reqwest::Method::GET,
        Method::Post => reqwest::Method::POST,
        Method::Put => reqwest::Method::PUT,
        Method::Patch => reqwest::Method::PATCH,
        Method::Delete => reqwest::Method::DELETE,
    }
}

fn method_name(method: Method) -> &'static str {
    match method {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_sorted_into_success_retry_and_failure() {
        for status in [200, 201, 204, 299] {
            assert_eq!(classify(status, None), Class::Success, "{status}");
        }
        for status in [408, 425, 429, 500, 502, 503, 599] {
            assert_eq!(classify(status, None), Class::Retryable, "{status}");
        }
        for status in [100, 301, 400, 401, 403, 404, 409, 422] {
            assert_eq!(classify(status, None), Class::Permanent, "{status}");
        }
        assert_eq!(classify(404, Some(&[200, 404])), Class::Success);
        assert_eq!(classify(201, Some(&[200])), Class::Permanent);
        assert_eq!(classify(503, Some(&[200])), Class::Retryable);
    }

    #[test]
    fn a_body_is_json_when_it_parses_and_text_otherwise() {
        assert_eq!(parse_body(b"{\"a\":1}"), json!({"a": 1}));
        assert_eq!(parse_body(b"plain"), json!("plain"));
        assert_eq!(parse_body(b""), Value::Null);
    }
}
