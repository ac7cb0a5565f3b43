//! The OpenAI wire format: completion objects, stream chunks, error bodies
//! and the token estimate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::reply::{Reply, ToolCall};
use crate::request::{RecordedRequest, content_text};

/// The deterministic token estimate used for `usage`: a quarter of the
/// characters (not bytes), rounded up, and at least 1.
pub fn estimate_tokens(text: &str) -> u32 {
    let chars = u32::try_from(text.chars().count()).unwrap_or(u32::MAX);
    chars.div_ceil(4).max(1)
}

/// The estimate for a chat request's prompt: the text of all its messages.
pub(crate) fn prompt_tokens(request: &RecordedRequest) -> u32 {
    let text: String = request
        .messages()
        .iter()
        .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
        .collect();
    estimate_tokens(&text)
}

/// An OpenAI error response: `{"error": {"message", "type", "param", "code"}}`
/// with a type and code that follow the status.
pub(crate) fn error_response(
    status: u16,
    message: Option<String>,
    retry_after: Option<Duration>,
) -> Response {
    let (kind, code, default_message) = match status {
        400 => (
            "invalid_request_error",
            "invalid_request",
            "Invalid request (scripted).",
        ),
        401 => (
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided (scripted).",
        ),
        403 => (
            "invalid_request_error",
            "forbidden",
            "Forbidden (scripted).",
        ),
        404 => (
            "invalid_request_error",
            "not_found",
            "Not found (scripted).",
        ),
        429 => (
            "requests",
            "rate_limit_exceeded",
            "Rate limit reached (scripted).",
        ),
        500..=599 => (
            "server_error",
            "server_error",
            "The server had an error while processing your request (scripted).",
        ),
        _ => (
            "invalid_request_error",
            "error",
            "Request failed (scripted).",
        ),
    };
    let body = json!({
        "error": {
            "message": message.as_deref().unwrap_or(default_message),
            "type": kind,
            "param": null,
            "code": code,
        }
    });
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(body)).into_response();
    if let Some(after) = retry_after {
        let headers = response.headers_mut();
        let seconds = after.as_millis().div_ceil(1000);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
        headers.insert(
            "retry-after-ms",
            HeaderValue::from(after.as_millis() as u64),
        );
    }
    response
}

/// llama.cpp's error body, `{"error": {"code", "message", "type"}}`, whose
/// `code` is the HTTP status as a number (OpenAI's is a string), with the
/// type llama.cpp gives each status.
pub(crate) fn llama_cpp_error_body(status: u16, message: &str) -> Value {
    let kind = match status {
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        501 => "not_supported_error",
        503 => "unavailable_error",
        _ => "server_error",
    };
    json!({"error": {"code": status, "message": message, "type": kind}})
}

/// An error response with llama.cpp's body.
pub(crate) fn llama_cpp_error(status: u16, message: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(llama_cpp_error_body(status, message))).into_response()
}

/// A message reply resolved for one request: ids generated, usage counted.
pub(crate) struct Answer {
    pub(crate) id: String,
    pub(crate) created: u64,
    pub(crate) model: String,
    pub(crate) content: Option<String>,
    /// `(id, name, arguments)` in order.
    pub(crate) tool_calls: Vec<(String, String, String)>,
    pub(crate) finish_reason: String,
    pub(crate) prompt_tokens: u32,
    pub(crate) completion_tokens: u32,
}

impl Answer {
    pub(crate) fn new(
        request: &RecordedRequest,
        reply: &Reply,
        content: Option<&str>,
        tool_calls: &[ToolCall],
    ) -> Self {
        let tool_calls: Vec<_> = tool_calls
            .iter()
            .map(|call| {
                let id = call
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("call_{}", uuid::Uuid::now_v7().simple()));
                (id, call.name.clone(), call.arguments.clone())
            })
            .collect();
        let finish_reason = reply.finish_reason.clone().unwrap_or_else(|| {
            if tool_calls.is_empty() {
                "stop"
            } else {
                "tool_calls"
            }
            .to_owned()
        });
        let (prompt_tokens, completion_tokens) = reply.usage.unwrap_or_else(|| {
            let mut completion = content.unwrap_or_default().to_owned();
            for (_, name, arguments) in &tool_calls {
                completion.push_str(name);
                completion.push_str(arguments);
            }
            (prompt_tokens(request), estimate_tokens(&completion))
        });
        Self {
            id: format!("chatcmpl-{}", uuid::Uuid::now_v7().simple()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: request.model.clone().unwrap_or_default(),
            content: content.map(str::to_owned),
            tool_calls,
            finish_reason,
            prompt_tokens,
            completion_tokens,
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }

    /// The `chat.completion` object of a non-streaming answer.
    pub(crate) fn completion(&self) -> Value {
        let mut message = json!({ "role": "assistant", "content": self.content });
        if !self.tool_calls.is_empty() {
            message["tool_calls"] = self
                .tool_calls
                .iter()
                .map(|(id, name, arguments)| {
                    json!({
                        "id": id,
                        "type": "function",
                        "function": { "name": name, "arguments": arguments },
                    })
                })
                .collect();
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": self.finish_reason,
            }],
            "usage": self.usage(),
        })
    }

    /// The SSE frames of a streaming answer, `data: [DONE]` included, in the
    /// order OpenAI sends them: the role, the text chunks, for each tool call
    /// a head (id, type, name, empty arguments) and argument fragments, the
    /// finish reason, and the usage chunk when asked for.
    pub(crate) fn frames(&self, chunks: Option<usize>, include_usage: bool) -> Vec<Bytes> {
        let chunk = |delta: Value, finish_reason: Value| {
            let mut chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": null,
                "choices": [{
                    "index": 0,
                    "delta": delta,
                    "logprobs": null,
                    "finish_reason": finish_reason,
                }],
            });
            if include_usage {
                chunk["usage"] = Value::Null;
            }
            chunk
        };
        let mut chunks_out = Vec::new();
        let role_content = if self.content.is_some() {
            json!("")
        } else {
            Value::Null
        };
        chunks_out.push(chunk(
            json!({ "role": "assistant", "content": role_content }),
            Value::Null,
        ));
        if let Some(content) = &self.content {
            let pieces = match chunks {
                Some(n) => split_even(content, n),
                None => content.split_inclusive(char::is_whitespace).collect(),
            };
            for piece in pieces {
                chunks_out.push(chunk(json!({ "content": piece }), Value::Null));
            }
        }
        for (index, (id, name, arguments)) in self.tool_calls.iter().enumerate() {
            chunks_out.push(chunk(
                json!({ "tool_calls": [{
                    "index": index,
                    "id": id,
                    "type": "function",
                    "function": { "name": name, "arguments": "" },
                }]}),
                Value::Null,
            ));
            let n = chunks.unwrap_or_else(|| arguments.chars().count().div_ceil(10));
            for fragment in split_even(arguments, n) {
                chunks_out.push(chunk(
                    json!({ "tool_calls": [{
                        "index": index,
                        "function": { "arguments": fragment },
                    }]}),
                    Value::Null,
                ));
            }
        }
        chunks_out.push(chunk(json!({}), json!(self.finish_reason)));
        if include_usage {
            chunks_out.push(json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": null,
                "choices": [],
                "usage": self.usage(),
            }));
        }
        let mut frames: Vec<Bytes> = chunks_out
            .into_iter()
            .map(|chunk| Bytes::from(format!("data: {chunk}\n\n")))
            .collect();
        frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
        frames
    }
}

/// Splits `text` into at most `n` non-empty pieces of about equal length in
/// characters; none for an empty text.
fn split_even(text: &str, n: usize) -> Vec<&str> {
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let chars = boundaries.len() - 1;
    let n = n.clamp(1, chars.max(1));
    (0..n)
        .map(|k| &text[boundaries[k * chars / n]..boundaries[(k + 1) * chars / n]])
        .filter(|piece| !piece.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_even_keeps_every_character() {
        for (text, n) in [
            ("a b c d", 4),
            ("héllo wörld", 3),
            ("ab", 5),
            ("", 3),
            ("x", 1),
        ] {
            let pieces = split_even(text, n);
            assert_eq!(pieces.concat(), text);
            assert!(pieces.len() <= n);
        }
        assert_eq!(split_even("abcdefgh", 4), ["ab", "cd", "ef", "gh"]);
    }

    #[test]
    fn estimate_rounds_up_and_is_at_least_one() {
        assert_eq!(estimate_tokens(""), 1);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
    }
}
