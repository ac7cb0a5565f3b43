//! Names that more than one crate must spell alike: defined here once.

/// The `settings` row that holds the routing policy
/// ([`Policy`](crate::Policy)).
pub const POLICY_SETTING: &str = "policy";

/// The tool the AI calls to ask the support team a question: a `question`
/// inbox item opens and the human's answer comes back as the tool's result.
pub const ASK_HUMAN_TOOL: &str = "ask_human";

/// The tool the AI calls to hand the thread to humans.
pub const ESCALATE_TOOL: &str = "escalate";

/// The durable workflow that routes each customer message and carries its
/// answer.
pub const REPLY_WORKFLOW: &str = "reply";

/// The workflow that carries an item's deadline: one run per item with a
/// deadline, created with the item and due when the deadline passes, when
/// it applies the policy's fallback.
pub const DEADLINE_WORKFLOW: &str = "inbox-deadline";

/// The version of [`DEADLINE_WORKFLOW`] runs are created at.
pub const DEADLINE_VERSION: &str = "1";
