//! The desk's view of support agents (presence, teams, capacity) and of
//! deadlines passing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{InboxItem, InboxItemId, MessageId, NewMessage, NewRun, Presence, RunId};

/// A support agent as the desk assigns work to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeskAgent {
    /// The agent's name: the one its token replies under.
    pub name: String,
    /// The teams it takes items of; an item without a team goes to anyone.
    pub teams: Vec<String>,
    /// Most items the desk assigns it at once.
    pub capacity: i32,
    pub presence: Presence,
    /// When the presence was last set or refreshed: an `online` agent that
    /// stops refreshing it goes offline.
    pub presence_at: DateTime<Utc>,
    /// When the desk last gave it an item.
    pub last_assigned_at: Option<DateTime<Utc>>,
    /// Items it holds now (claimed).
    pub load: i64,
    pub updated_at: DateTime<Utc>,
}

/// A change to an agent's desk settings; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AgentSettings {
    pub capacity: Option<u32>,
    pub teams: Option<Vec<String>>,
}

/// What changing an agent's presence did.
#[derive(Debug, Clone)]
pub struct PresenceChange {
    pub agent: DeskAgent,
    /// The items it held, back in the queue (it went offline).
    pub released: Vec<InboxItem>,
}

/// A deadline to pass, as one workflow effect: the expiry is recorded and
/// its fallback applied in the journal's own transaction, so it happens once.
#[derive(Debug, Clone)]
pub struct ExpireItem {
    pub item_id: InboxItemId,
    /// The deadline that passed. An item whose deadline moved since (or
    /// that was resolved) is left as it is.
    pub due_at: DateTime<Utc>,
    pub action: ExpiryAction,
}

/// What the policy's fallback does with an item past its deadline.
// One value per step commit, moved once (as `StoreEffect`).
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum ExpiryAction {
    /// Give the item to another online agent with room (the queue when
    /// there is none), with a new deadline `due_in` from now (none: no
    /// further deadline).
    Reassign {
        due_in: Option<Duration>,
        /// Agents whose presence is older count as offline.
        presence_since: DateTime<Utc>,
        mode: super::AssignmentMode,
    },
    /// Tell the customer a person will answer: `message` is posted.
    Hold { message: NewMessage },
    /// Let the AI answer: the item closes (`expired`), `note` is posted for
    /// the team, and the AI is let go on. A question's run is sent the item's
    /// event with no answer (`answer` is stored as the tool's result); a
    /// draft is published as written; a handoff's thread goes back to the
    /// AI and `follow_up` (a reply run) is created.
    AiAnswer {
        note: NewMessage,
        /// The tool result a question's run gets instead of an answer.
        answer: Option<NewMessage>,
        follow_up: Option<NewRun>,
        /// Now on the workflow clock (µs): when the woken run is due.
        now: i64,
    },
}

/// What passing a deadline did: recorded with the expiry, journaled, and
/// pushed on `inbox`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ExpiryOutcome {
    /// The item was resolved (or closed) in time: nothing to do.
    Closed,
    /// The item's deadline had moved: the new one is watched instead.
    Moved { due_at: Option<DateTime<Utc>> },
    /// The item went to another agent (`to`), or back to the queue.
    Reassigned {
        from: Option<String>,
        to: Option<String>,
        due_at: Option<DateTime<Utc>>,
    },
    /// The holding message was posted.
    Held { message_id: MessageId },
    /// The AI answers instead; the item is `expired`.
    AiAnswered {
        note_id: MessageId,
        /// The draft published, for an approval.
        message_id: Option<MessageId>,
        /// The reply run started, for a handoff or an escalation.
        run_id: Option<RunId>,
    },
}

/// A deadline passing: the item after it and what was done.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Expiry {
    pub item: Option<InboxItem>,
    #[serde(flatten)]
    pub outcome: ExpiryOutcome,
}

/// One recorded passing of an item's deadline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExpiryRecord {
    /// The deadline that passed.
    pub due_at: DateTime<Utc>,
    /// `reassign`, `hold` or `ai_answer`.
    pub fallback: String,
    /// Who held the item then.
    pub holder: Option<String>,
    #[serde(flatten)]
    pub outcome: ExpiryOutcome,
    /// When the fallback ran.
    pub created_at: DateTime<Utc>,
}
