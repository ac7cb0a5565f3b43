//! What goes into a model call and what comes out, in Tandem's own words
//! (the `async-openai` types stay inside [`crate::client`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One chat completion call.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call; none means plain text.
    pub tools: Vec<ToolSpec>,
    /// A JSON schema the answer must follow.
    pub response_format: Option<ResponseFormat>,
    /// Stream the answer, calling `on_delta` with each fragment of text.
    pub stream: bool,
}

impl ChatRequest {
    /// A plain, unstreamed request without tools.
    pub fn new(model: impl Into<String>, messages: Vec<ChatMessage>) -> Self {
        Self {
            model: model.into(),
            messages,
            tools: Vec::new(),
            response_format: None,
            stream: false,
        }
    }
}

/// One turn of a conversation, as the chat API knows it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ChatMessage {
    System(String),
    /// What the customer wrote, verbatim.
    User(String),
    /// The AI's turn, or a human agent's (then `name` is set to the agent's
    /// name, in the API's `[A-Za-z0-9_-]{1,64}` charset).
    Assistant {
        name: Option<String>,
        text: Option<String>,
        tool_calls: Vec<ToolCall>,
    },
    /// The result of a tool call, answering `tool_call_id`.
    Tool {
        tool_call_id: String,
        content: String,
    },
}

/// A fragment of a streamed answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delta {
    /// More text of the answer.
    Text(String),
    /// An attempt failed after text was shown; a retry starts over, so
    /// everything shown so far must be discarded.
    Restart,
}

/// A finished chat completion.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Completion {
    /// The answer's text; empty when the model only called tools.
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: Usage,
    /// The model that answered, as the provider names it.
    pub model: String,
    /// `stop`, `length`, `tool_calls`, `content_filter`, …
    pub finish_reason: Option<String>,
    /// Wall time of the whole call, retries and their waits included.
    pub latency_ms: u64,
    /// How many attempts it took (1 when the first one succeeded).
    pub attempts: u32,
}

/// A tool call the model asked for.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// Raw JSON text as the model sent it; see [`crate::parse_arguments`].
    pub arguments: String,
}

/// Tokens a call consumed, as the provider reported them (zeros when it did
/// not; nothing is estimated).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Self) {
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
    }
}

/// A structured answer parsed into `T`, with the completion that carried it.
#[derive(Clone, Debug, PartialEq)]
pub struct Structured<T> {
    pub value: T,
    pub completion: Completion,
}

/// Embedding vectors, one per input, in input order.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
    pub model: String,
    /// Wall time of the whole call, retries and their waits included.
    pub latency_ms: u64,
}

/// A tool the model may call; build one from a Rust type with
/// [`crate::tool`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ToolSpec {
    pub name: String,
    pub description: String,
    /// JSON schema of the arguments (an object).
    pub parameters: Value,
}

/// A JSON schema the answer must follow (`response_format: json_schema`).
/// Strict mode is asked for whenever the schema allows it (see
/// [`crate::schema::strict`]).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResponseFormat {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    pub schema: Value,
}
