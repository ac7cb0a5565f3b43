//! [`Reply`]: one scripted answer, built from a constructor and modifiers.
//!
//! Modifiers that make no sense for a reply's kind (a `Retry-After` on a text
//! answer, a tool-call id on an error) panic at once: a script mistake is
//! cheaper to find where it is written than in a confusing test failure.

use std::time::Duration;

use serde_json::Value;

/// One scripted answer to a chat completion (or embeddings) request.
///
/// Build one with a constructor ([`Reply::text`], [`Reply::tool_call`],
/// [`Reply::status`], [`Reply::stall`], ...) and refine it with modifiers
/// ([`Reply::delay`], [`Reply::chunked`], [`Reply::usage`], ...), then queue
/// it with [`ScriptedLlm::push`](crate::ScriptedLlm::push).
#[derive(Clone, Debug)]
pub struct Reply {
    pub(crate) kind: ReplyKind,
    pub(crate) delay: Duration,
    pub(crate) chunks: Option<usize>,
    pub(crate) chunk_delay: Duration,
    pub(crate) usage: Option<(u32, u32)>,
    pub(crate) finish_reason: Option<String>,
    pub(crate) disconnect_after: Option<usize>,
    /// `(frames, status, message)`: an error event after that many frames.
    pub(crate) error_mid_stream: Option<(usize, u16, String)>,
}

/// What a reply answers with.
#[derive(Clone, Debug)]
pub(crate) enum ReplyKind {
    /// An assistant message: text, tool calls, or both.
    Message {
        content: Option<String>,
        tool_calls: Vec<ToolCall>,
    },
    /// An HTTP error with an OpenAI error body.
    Error {
        status: u16,
        message: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Accept the request and never answer.
    Stall,
}

/// One tool call in an assistant message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    pub(crate) id: Option<String>,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

impl ToolCall {
    /// A call to the function `name` with `arguments` (sent as a JSON string,
    /// as OpenAI does). The id is generated (`call_…`) unless set with
    /// [`ToolCall::with_id`].
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        Self::raw(name, arguments.to_string())
    }

    /// A call whose arguments string is sent verbatim, valid JSON or not:
    /// for testing how a client copes with a model that emits broken
    /// arguments.
    pub fn raw(name: impl Into<String>, arguments: impl Into<String>) -> Self {
        Self {
            id: None,
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    /// Sets the call's id instead of a generated one.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

impl Reply {
    fn of(kind: ReplyKind) -> Self {
        Self {
            kind,
            delay: Duration::ZERO,
            chunks: None,
            chunk_delay: Duration::ZERO,
            usage: None,
            finish_reason: None,
            disconnect_after: None,
            error_mid_stream: None,
        }
    }

    fn message(content: Option<String>, tool_calls: Vec<ToolCall>) -> Self {
        Self::of(ReplyKind::Message {
            content,
            tool_calls,
        })
    }

    /// An assistant message with this text (`finish_reason: "stop"`).
    pub fn text(text: impl Into<String>) -> Self {
        Self::message(Some(text.into()), Vec::new())
    }

    /// An assistant message serialising `value` as its text: what a model
    /// asked for a JSON schema (`response_format`) answers.
    pub fn json(value: Value) -> Self {
        Self::text(value.to_string())
    }

    /// An assistant message whose text is sent verbatim: content that is not
    /// what the request's schema asked for (`"not json {"`). The same as
    /// [`Reply::text`]; the name says what the test means.
    pub fn raw_content(text: impl Into<String>) -> Self {
        Self::text(text)
    }

    /// An assistant message with one tool call and no text
    /// (`content: null`, `finish_reason: "tool_calls"`). Set the call's id
    /// with [`Reply::with_id`].
    pub fn tool_call(name: impl Into<String>, arguments: Value) -> Self {
        Self::tool_calls(vec![ToolCall::new(name, arguments)])
    }

    /// An assistant message with these tool calls, in order, and no text.
    pub fn tool_calls(calls: Vec<ToolCall>) -> Self {
        Self::message(None, calls)
    }

    /// An error answer with this HTTP status (400–599) and an OpenAI error
    /// body `{"error": {"message", "type", "param", "code"}}`, streaming
    /// requested or not. Type and code follow the status (429:
    /// `rate_limit_exceeded`, 5xx: `server_error`, ...).
    ///
    /// # Panics
    ///
    /// If `status` is not an error status (400–599).
    pub fn status(status: u16) -> Self {
        assert!(
            (400..=599).contains(&status),
            "Reply::status({status}): only error statuses (400-599) can be scripted"
        );
        Self::of(ReplyKind::Error {
            status,
            message: None,
            retry_after: None,
        })
    }

    /// Accepts the request and never answers, not even headers, until the
    /// server stops (then the connection is dropped): for client timeouts
    /// and for killing a process in the middle of a completion.
    pub fn stall() -> Self {
        Self::of(ReplyKind::Stall)
    }

    /// A streamed text answer that drops the connection after two SSE
    /// frames (the role frame and one text chunk), before `[DONE]`. See
    /// [`Reply::disconnect_after`].
    pub fn disconnect_mid_stream() -> Self {
        Self::text("This answer is cut off before it ends.").disconnect_after(2)
    }

    /// Adds a tool call after the existing ones (or after the text of a
    /// [`Reply::text`]): an assistant message with both text and tool calls.
    ///
    /// # Panics
    ///
    /// If the reply is not a message (an error or a stall).
    pub fn with_tool_call(mut self, name: impl Into<String>, arguments: Value) -> Self {
        match &mut self.kind {
            ReplyKind::Message { tool_calls, .. } => {
                tool_calls.push(ToolCall::new(name, arguments))
            }
            _ => panic!("Reply::with_tool_call: only a message reply can carry tool calls"),
        }
        self
    }

    /// Sets the id of the last tool call (the only one for
    /// [`Reply::tool_call`]) instead of a generated `call_…` one.
    ///
    /// # Panics
    ///
    /// If the reply has no tool call.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        match &mut self.kind {
            ReplyKind::Message { tool_calls, .. } if !tool_calls.is_empty() => {
                if let Some(last) = tool_calls.last_mut() {
                    last.id = Some(id.into());
                }
            }
            _ => panic!("Reply::with_id: the reply has no tool call to name"),
        }
        self
    }

    /// Waits this long before answering anything, headers included. Applies
    /// to every kind of reply.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    /// When the request streams: splits the text into `n` chunks of about
    /// equal length (and each tool call's arguments into `n` fragments).
    /// Without it, text is sent one word per chunk and arguments in
    /// fragments of about ten characters. Ignored when the request does not
    /// stream.
    pub fn chunked(mut self, n: usize) -> Self {
        self.chunks = Some(n.max(1));
        self
    }

    /// When the request streams: waits this long between two SSE frames.
    pub fn chunk_delay(mut self, delay: Duration) -> Self {
        self.chunk_delay = delay;
        self
    }

    /// Reports this usage instead of the estimate (a quarter of the
    /// characters, rounded up; see [`estimate_tokens`](crate::estimate_tokens)).
    pub fn usage(mut self, prompt_tokens: u32, completion_tokens: u32) -> Self {
        self.usage = Some((prompt_tokens, completion_tokens));
        self
    }

    /// Reports this `finish_reason` (say `"length"` for a truncated answer)
    /// instead of `"stop"` or `"tool_calls"`.
    pub fn finish_reason(mut self, reason: impl Into<String>) -> Self {
        self.finish_reason = Some(reason.into());
        self
    }

    /// Drops the connection part-way: a streaming request gets this many SSE
    /// frames (the first is the role frame) and then a closed connection
    /// with no `[DONE]`; a non-streaming request gets the headers and half
    /// the JSON body.
    ///
    /// # Panics
    ///
    /// If the reply is not a message (an error or a stall).
    pub fn disconnect_after(mut self, frames: usize) -> Self {
        assert!(
            matches!(self.kind, ReplyKind::Message { .. }),
            "Reply::disconnect_after: only a message reply is sent in frames"
        );
        self.disconnect_after = Some(frames);
        self
    }

    /// Fails part-way as llama.cpp (and vLLM) do when generation breaks
    /// after the answer began: a streaming request gets this many SSE
    /// frames (the first is the role frame), then an error event,
    /// `data: {"error": {"code": status, "message", "type"}}` (the code a
    /// number, as llama.cpp sends it), and the end of the body, with no
    /// `[DONE]`; a non-streaming request gets the error as its response.
    ///
    /// # Panics
    ///
    /// If the reply is not a message, or `status` not an error status.
    pub fn error_mid_stream(
        mut self,
        frames: usize,
        status: u16,
        message: impl Into<String>,
    ) -> Self {
        assert!(
            matches!(self.kind, ReplyKind::Message { .. }),
            "Reply::error_mid_stream: only a message reply is sent in frames"
        );
        assert!(
            (400..=599).contains(&status),
            "Reply::error_mid_stream({status}): only error statuses (400-599)"
        );
        self.error_mid_stream = Some((frames, status, message.into()));
        self
    }

    /// Replaces the error body's message.
    ///
    /// # Panics
    ///
    /// If the reply is not a [`Reply::status`].
    pub fn error_message(mut self, text: impl Into<String>) -> Self {
        match &mut self.kind {
            ReplyKind::Error { message, .. } => *message = Some(text.into()),
            _ => panic!("Reply::error_message: only a Reply::status has an error message"),
        }
        self
    }

    /// Adds a `Retry-After` header (whole seconds, rounded up) and a
    /// `retry-after-ms` header (milliseconds, which OpenAI's SDKs read
    /// first), as OpenAI does on 429 and 503.
    ///
    /// # Panics
    ///
    /// If the reply is not a [`Reply::status`].
    pub fn retry_after(mut self, after: Duration) -> Self {
        match &mut self.kind {
            ReplyKind::Error { retry_after, .. } => *retry_after = Some(after),
            _ => panic!("Reply::retry_after: only a Reply::status carries Retry-After"),
        }
        self
    }
}
