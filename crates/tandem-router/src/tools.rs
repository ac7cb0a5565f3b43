//! The tools the AI may call while writing a reply. Their schemas come from
//! these types, and a call whose arguments do not fit goes back to the
//! model as a tool error: nothing runs from anything but a well-formed,
//! structured tool call.
//!
//! The schemas' descriptions are written for the model
//! (`#[schemars(description = …)]`, which schemars takes over the doc
//! comments); the doc comments are for developers and never reach it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tandem_llm::{ToolSpec, tool};
use tandem_model::names::{ASK_HUMAN_TOOL, ESCALATE_TOOL};

/// `ask_human`: the AI needs a fact or a decision only a person can give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "One question for the human support team.")]
pub struct AskHuman {
    /// The question the `question` item shows the support team.
    #[schemars(
        description = "The question, written so that a colleague understands it without \
                       reading the conversation: what the customer wants, and what you need to \
                       know or have decided."
    )]
    pub question: String,
}

/// `escalate`: the thread should be answered by humans from now on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "Why the conversation should go to a person, and the reply you suggest.")]
pub struct Escalate {
    /// The escalation item's reason, and the thread's assignment reason.
    #[schemars(
        description = "Why a person should take over, in one sentence for the support team."
    )]
    pub reason: String,
    /// The item's suggestion, for the human to start from.
    #[serde(default)]
    #[schemars(
        description = "The reply you would send the customer, for the person to start from; \
                       null when you have none."
    )]
    pub suggested_reply: Option<String>,
}

/// The tools offered to the reply model.
pub fn specs() -> Vec<ToolSpec> {
    vec![
        tool::<AskHuman>(
            ASK_HUMAN_TOOL,
            "Ask the human support team a question when you need information or a decision \
             you do not have. The conversation waits for their answer, which comes back as \
             this tool's result; then write the reply to the customer.",
        ),
        tool::<Escalate>(
            ESCALATE_TOOL,
            "Hand the conversation to the human support team, when the customer asks for a \
             person or you cannot help. Give the reason, and the reply you would suggest.",
        ),
    ]
}

/// Longest question or reason kept from the model.
pub const MAX_TOOL_TEXT: usize = 4_000;

/// Checks the text fields a model filled in: not empty, not huge.
pub fn check_text(field: &str, text: &str) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err(format!("`{field}` must not be empty"));
    }
    if text.chars().count() > MAX_TOOL_TEXT {
        return Err(format!(
            "`{field}` is longer than {MAX_TOOL_TEXT} characters"
        ));
    }
    Ok(())
}
