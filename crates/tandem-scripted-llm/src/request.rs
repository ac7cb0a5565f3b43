//! [`RecordedRequest`]: what the server received, kept for assertions.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;

/// One request the server received, recorded before it was answered (errors,
/// unauthorised requests and unknown paths included).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The path, without the query string: `/v1/chat/completions`.
    pub path: String,
    /// The method: `POST`.
    pub method: String,
    /// The headers, names lowercased; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    /// The JSON body; `Null` when empty, a `String` holding the raw text when
    /// it is not JSON.
    pub body: Value,
    /// The body's `model`, when it names one.
    pub model: Option<String>,
    /// When the whole body had arrived.
    pub received_at: Instant,
}

impl RecordedRequest {
    /// Records a request from its head and body.
    pub(crate) fn new(parts: &axum::http::request::Parts, body: &[u8]) -> Self {
        let mut headers = BTreeMap::<String, String>::new();
        for (name, value) in &parts.headers {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert(value);
        }
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
        };
        let model = body.get("model").and_then(Value::as_str).map(str::to_owned);
        Self {
            path: parts.uri.path().to_owned(),
            method: parts.method.as_str().to_owned(),
            headers,
            body,
            model,
            received_at: Instant::now(),
        }
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Whether this is a chat completion request (`/v1/chat/completions`).
    pub fn is_chat(&self) -> bool {
        self.path == crate::server::CHAT_PATH
    }

    /// The body's `messages` array; empty when there is none.
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map_or(&[], Vec::as_slice)
    }

    /// The text of the last message with role `user`: its `content` string,
    /// or its text parts joined when `content` is an array of parts.
    pub fn last_user_text(&self) -> Option<String> {
        self.messages()
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| content_text(m.get("content").unwrap_or(&Value::Null)))
    }

    /// The names of the tools offered (`tools[].function.name`), in order.
    pub fn tools(&self) -> Vec<String> {
        self.body
            .get("tools")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|tool| tool.pointer("/function/name").and_then(Value::as_str))
            .map(str::to_owned)
            .collect()
    }

    /// Whether the body asks for a stream (`"stream": true`).
    pub fn stream(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
    }

    /// Whether a streaming body asks for a usage chunk
    /// (`"stream_options": {"include_usage": true}`).
    pub fn include_usage(&self) -> bool {
        self.body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            == Some(true)
    }

    /// The body's `response_format`, when it has one.
    pub fn response_format(&self) -> Option<&Value> {
        self.body.get("response_format")
    }
}

/// The text of a message `content`: the string itself, or the `text` of its
/// parts joined with newlines.
pub(crate) fn content_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}
