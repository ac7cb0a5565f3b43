//! The WebSocket protocol: one JSON object per text frame, each with a
//! `type` (see `docs/websocket.md`).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_model::{InboxView, Message, MessageId, RunId, Thread, ThreadId, WorkflowRun};

/// Close codes the server uses beyond the standard ones.
pub mod close {
    /// The server is shutting down: reconnect and resubscribe with `after_seq`.
    pub const GOING_AWAY: u16 = 1001;
    /// The client kept flooding after `rate_limited` errors.
    pub const POLICY: u16 = 1008;
    /// A frame larger than the hub's `max_message_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The outbound queue overflowed: reconnect and resubscribe with `after_seq`.
    pub const TOO_SLOW: u16 = 4008;
    /// No sign of life (not even a pong) since the previous ping.
    pub const NO_PONG: u16 = 4010;
}

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    Subscribe {
        topic: String,
        after_seq: Option<i64>,
    },
    Unsubscribe {
        topic: String,
    },
    Typing {
        thread_id: ThreadId,
    },
    Ping {
        nonce: Option<Value>,
    },
}

/// What a client may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    Thread(ThreadId),
    Inbox,
    /// One workflow run's status (staff only).
    Workflow(RunId),
}

impl Topic {
    /// Parses `thread:<id>`, `inbox` or `workflow:<id>`.
    pub fn parse(topic: &str) -> Option<Self> {
        if topic == "inbox" {
            return Some(Self::Inbox);
        }
        if let Some(id) = topic.strip_prefix("workflow:") {
            return id.parse().ok().map(Self::Workflow);
        }
        let id = topic.strip_prefix("thread:")?;
        id.parse().ok().map(Self::Thread)
    }
}

impl std::fmt::Display for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Thread(id) => write!(f, "thread:{id}"),
            Self::Inbox => f.write_str("inbox"),
            Self::Workflow(id) => write!(f, "workflow:{id}"),
        }
    }
}

/// Who is typing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typist {
    /// `customer`, `human` (an agent) or `admin`.
    pub kind: String,
    /// The customer's id or the agent's name; none for admin.
    pub name: Option<String>,
}

/// A frame to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Subscribed {
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seq: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        items: Option<usize>,
    },
    Unsubscribed {
        topic: String,
    },
    Message {
        thread_id: ThreadId,
        seq: i64,
        message: &'a Message,
    },
    Thread {
        thread: &'a Thread,
    },
    /// AI text as it streams, before its message is stored. `reset`: what
    /// was streamed so far for this message is void (a retried call).
    Delta {
        thread_id: ThreadId,
        message_id: MessageId,
        text: &'a str,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        reset: bool,
    },
    Inbox {
        item: &'a InboxView,
    },
    Workflow {
        run: &'a WorkflowRun,
    },
    Typing {
        thread_id: ThreadId,
        who: &'a Typist,
    },
    Presence {
        thread_id: ThreadId,
        agents: &'a [String],
    },
    Error {
        code: &'static str,
        message: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<String>,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<Value>,
    },
}

impl ServerFrame<'_> {
    /// The frame's text.
    pub fn encode(&self) -> String {
        // Every field serializes infallibly (strings, numbers, JSON values).
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A refused client frame: answered with an `error` frame, and the
/// connection goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
    /// The topic the refused frame named.
    pub topic: Option<String>,
}

impl FrameError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            topic: None,
        }
    }

    pub fn with_topic(self, topic: &str) -> Self {
        Self {
            topic: Some(topic.to_owned()),
            ..self
        }
    }

    /// The `error` frame that tells the client.
    pub fn frame(&self) -> String {
        ServerFrame::Error {
            code: self.code,
            message: self.message.clone(),
            topic: self.topic.clone(),
        }
        .encode()
    }

    pub fn not_found() -> Self {
        Self::new("not_found", "no such thread")
    }

    pub fn run_not_found() -> Self {
        Self::new("not_found", "no such workflow run")
    }

    /// The connection is closing: nothing more will be answered.
    pub fn closed() -> Self {
        Self::new("closed", "the connection is closing")
    }

    pub fn is_closed(&self) -> bool {
        self.code == "closed"
    }

    pub fn internal() -> Self {
        Self::new("internal", "the server could not do this; try again")
    }
}

impl From<tandem_store::StoreError> for FrameError {
    fn from(error: tandem_store::StoreError) -> Self {
        tracing::error!(%error, "hub: store error");
        Self::internal()
    }
}
