//! The closed sets of names the model uses, stored as text on both backends.

/// Declares an enum whose values are stored and sent as fixed strings.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize, schemars::JsonSchema,
        )]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and serialized name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName { kind: stringify!($name), name: s.to_owned() }),
                }
            }
        }

        #[cfg(feature = "sqlx")]
        impl<DB: sqlx::Database> sqlx::Type<DB> for $name
        where
            String: sqlx::Type<DB>,
        {
            fn type_info() -> DB::TypeInfo {
                <String as sqlx::Type<DB>>::type_info()
            }
            fn compatible(ty: &DB::TypeInfo) -> bool {
                <String as sqlx::Type<DB>>::compatible(ty)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'q, DB: sqlx::Database> sqlx::Encode<'q, DB> for $name
        where
            &'q str: sqlx::Encode<'q, DB>,
        {
            fn encode_by_ref(
                &self,
                buf: &mut <DB as sqlx::Database>::ArgumentBuffer<'q>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, DB>>::encode(self.as_str(), buf)
            }
        }

        #[cfg(feature = "sqlx")]
        impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for $name
        where
            &'r str: sqlx::Decode<'r, DB>,
        {
            fn decode(
                value: <DB as sqlx::Database>::ValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, DB>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    };
}

/// A stored name that is not one of the enum's values.
#[derive(Debug, thiserror::Error)]
#[error("unknown {kind} {name:?}")]
pub struct UnknownName {
    kind: &'static str,
    name: String,
}

text_enum! {
    /// Where a thread stands.
    pub enum ThreadStatus {
        Open = "open",
        WaitingOnHuman = "waiting_on_human",
        Closed = "closed",
    }
}

text_enum! {
    /// Who answers a thread next: the AI, a human, or whoever the router picks.
    pub enum AssignedTo {
        Ai = "ai",
        Human = "human",
        Unassigned = "unassigned",
    }
}

text_enum! {
    /// A message's role, as chat models know it.
    pub enum Role {
        User = "user",
        Assistant = "assistant",
        Tool = "tool",
        System = "system",
    }
}

text_enum! {
    /// What kind of party wrote a message.
    pub enum AuthorKind {
        Customer = "customer",
        Ai = "ai",
        Human = "human",
        System = "system",
    }
}

text_enum! {
    /// Who may see a message: `internal` messages never reach a customer.
    pub enum Visibility {
        Public = "public",
        Internal = "internal",
    }
}

text_enum! {
    /// Where a message stands in the approval flow.
    pub enum MessageStatus {
        Published = "published",
        PendingApproval = "pending_approval",
        Approved = "approved",
        Rejected = "rejected",
    }
}

text_enum! {
    /// The kind of party an API token speaks for.
    pub enum TokenKind {
        Admin = "admin",
        Agent = "agent",
        Customer = "customer",
    }
}

text_enum! {
    /// Why an inbox item asks for a human.
    pub enum InboxKind {
        /// The AI asked a human a question through a tool call.
        Question = "question",
        /// An AI draft waits for approval.
        Approval = "approval",
        /// The AI or the router handed the thread over.
        Escalation = "escalation",
        /// A thread assigned to humans needs a reply.
        Handoff = "handoff",
    }
}

text_enum! {
    /// Where an inbox item stands.
    pub enum InboxStatus {
        Open = "open",
        Claimed = "claimed",
        Resolved = "resolved",
        Expired = "expired",
    }
}

text_enum! {
    /// How urgent an inbox item is: with its kind, it picks the item's
    /// deadline. Taken from the thread's `metadata.priority`.
    pub enum Priority {
        Low = "low",
        Normal = "normal",
        High = "high",
        Urgent = "urgent",
    }
}

// `text_enum!` derives no `Default`.
#[allow(clippy::derivable_impls)]
impl Default for Priority {
    fn default() -> Self {
        Self::Normal
    }
}

text_enum! {
    /// Whether a support agent takes new work from the desk.
    pub enum Presence {
        /// Working: the desk assigns items, up to the agent's capacity.
        Online = "online",
        /// Keeps its items, gets no new ones.
        Away = "away",
        /// Gone: its claimed items go back to the queue.
        Offline = "offline",
    }
}

text_enum! {
    /// How the desk picks the agent for a waiting item.
    pub enum AssignmentMode {
        /// The agent holding the fewest items (then the one longest without
        /// a new item).
        LeastLoaded = "least_loaded",
        /// Each agent in turn: the one longest without a new item.
        RoundRobin = "round_robin",
        /// The desk assigns nothing: agents claim items themselves.
        Manual = "manual",
    }
}

text_enum! {
    /// What the desk does when an item's deadline passes.
    pub enum Fallback {
        /// Give it to another agent.
        Reassign = "reassign",
        /// Post the policy's holding message to the customer.
        Hold = "hold",
        /// Let the AI answer, with a note to the team.
        AiAnswer = "ai_answer",
    }
}

text_enum! {
    /// How a human resolved an inbox item.
    pub enum InboxResolution {
        /// A `question` was answered (the answer is the tool call's result).
        Answered = "answered",
        /// An `approval`'s draft was approved (perhaps edited) and published.
        Approved = "approved",
        /// An `approval`'s draft was rejected with a review; the thread went to humans.
        Rejected = "rejected",
    }
}

text_enum! {
    /// Who should answer a customer's message: what the router decides and
    /// what a routing example is labelled with.
    pub enum Responder {
        Ai = "ai",
        Human = "human",
    }
}

text_enum! {
    /// Where a workflow run stands.
    pub enum RunStatus {
        /// Executing, or queued to execute.
        Running = "running",
        /// Suspended until a timer fires or an event arrives.
        Waiting = "waiting",
        /// Stopped from outside before its next step; its timers hold.
        Paused = "paused",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl RunStatus {
    /// Whether the run has ended for good.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

text_enum! {
    /// Where one journaled step stands.
    pub enum StepStatus {
        /// A sleep or a wait that has begun and not ended.
        Pending = "pending",
        /// An action that failed and will be tried again.
        Retrying = "retrying",
        Completed = "completed",
        Failed = "failed",
    }
}

text_enum! {
    /// How an event reached a run.
    pub enum EventSource {
        /// `POST /v1/workflows/{id}/events/{name}` with a token.
        Api = "api",
        /// A signed `POST /v1/hooks/workflows/{id}/events/{name}`.
        Hook = "hook",
        /// A single-use resume URL a step minted.
        ResumeUrl = "resume_url",
    }
}
