//! The routing policy: which strategies decide who replies, in what order,
//! and the thresholds and gates around the AI. Stored as one JSON document,
//! the setting [`POLICY_SETTING`](crate::names::POLICY_SETTING) (the store's
//! `Store::policy` reads it; `GET`/`PUT /v1/policy`); every field has a
//! default, so `{}` is a policy.

use std::collections::HashSet;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{AssignmentMode, Fallback, InboxKind, Priority, ThreadId};

/// How Tandem decides who answers a customer message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The strategies tried, in order, until one decides. Reaching the end
    /// without a decision means the AI answers.
    pub routing: Vec<Strategy>,
    pub classifier: ClassifierPolicy,
    pub embeddings: EmbeddingsPolicy,
    pub confidence: ConfidencePolicy,
    pub approval: ApprovalPolicy,
    /// Most model calls in one reply (tool round trips included); a reply
    /// that needs more is escalated.
    pub max_model_steps: u32,
    /// The prompt's size budget, in estimated tokens (system prompt
    /// included); the oldest turns are dropped first.
    pub history_budget_tokens: u32,
    pub desk: DeskPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            routing: vec![Strategy::Assignment, Strategy::Ai],
            classifier: ClassifierPolicy::default(),
            embeddings: EmbeddingsPolicy::default(),
            confidence: ConfidencePolicy::default(),
            approval: ApprovalPolicy::default(),
            max_model_steps: 5,
            history_budget_tokens: 8_000,
            desk: DeskPolicy::default(),
        }
    }
}

/// One way of deciding who replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// A thread assigned to humans gets a `handoff` item, and no AI call.
    Assignment,
    /// A cheap model answers `{responder, reason}`.
    Classifier,
    /// The nearest labelled examples vote.
    Embeddings,
    /// The AI answers, and may ask a human, escalate, or report a low
    /// confidence.
    Ai,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assignment => "assignment",
            Self::Classifier => "classifier",
            Self::Embeddings => "embeddings",
            Self::Ai => "ai",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierPolicy {
    /// Added to the classifier's instructions: what the team handles
    /// itself, which topics are sensitive.
    pub instructions: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddingsPolicy {
    /// How many nearest examples vote.
    pub k: u32,
    /// Examples less similar than this (cosine) do not vote.
    pub min_similarity: f32,
    /// The share of the votes the winning label needs to decide; below it
    /// the strategy abstains.
    pub min_vote_share: f32,
}

impl Default for EmbeddingsPolicy {
    fn default() -> Self {
        Self {
            k: 5,
            min_similarity: 0.5,
            min_vote_share: 0.6,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ConfidencePolicy {
    /// The AI reports a confidence with each reply (structured output);
    /// streaming is off while it does, since the reply is JSON.
    pub enabled: bool,
    /// Below it the reply is escalated with the AI's text as a suggestion.
    pub threshold: f64,
}

impl Default for ConfidencePolicy {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: 0.7,
        }
    }
}

/// When an AI reply waits for a human's approval before the customer sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalPolicy {
    pub mode: ApprovalMode,
    /// Threads whose replies always need approval, whatever the mode.
    pub threads: Vec<ThreadId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalMode {
    /// Replies are published as written (unless the thread is listed).
    #[default]
    Never,
    /// Every AI reply is a draft until approved.
    Always,
    /// Drafts where the classifier marked the topic sensitive.
    Sensitive,
}

/// The human desk: who gets an item, by when a human must respond, and
/// what happens when nobody does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct DeskPolicy {
    /// How waiting items are given to online agents.
    pub assignment: AssignmentMode,
    /// The capacity of an agent nobody configured.
    pub default_capacity: u32,
    /// Seconds humans have to respond to an item, by its priority.
    pub deadlines: Deadlines,
    /// Per kind of item, deadlines that replace `deadlines` (priorities not
    /// named keep theirs).
    pub deadlines_by_kind: KindDeadlines,
    /// What happens when a deadline passes.
    pub fallback: Fallback,
    /// What the customer is told when the fallback is `hold`.
    pub holding_message: String,
    /// How often one item is reassigned (fallback `reassign`) before it
    /// waits in the queue with no further deadline.
    pub max_reassignments: u32,
    /// How many of the thread's latest messages an inbox item carries.
    pub item_history: u32,
}

impl Default for DeskPolicy {
    fn default() -> Self {
        Self {
            assignment: AssignmentMode::LeastLoaded,
            default_capacity: 5,
            deadlines: Deadlines {
                low: Some(4 * 3_600),
                normal: Some(3_600),
                high: Some(900),
                urgent: Some(300),
            },
            deadlines_by_kind: KindDeadlines::default(),
            fallback: Fallback::Reassign,
            holding_message: "Thanks for your patience: a member of our team will be with you \
                shortly."
                .into(),
            max_reassignments: 3,
            item_history: 10,
        }
    }
}

/// Seconds to respond, per priority; none (or 0) for no deadline.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Deadlines {
    pub low: Option<u64>,
    pub normal: Option<u64>,
    pub high: Option<u64>,
    pub urgent: Option<u64>,
}

impl Deadlines {
    fn get(&self, priority: Priority) -> Option<u64> {
        match priority {
            Priority::Low => self.low,
            Priority::Normal => self.normal,
            Priority::High => self.high,
            Priority::Urgent => self.urgent,
        }
    }

    fn each(&self) -> [Option<u64>; 4] {
        [self.low, self.normal, self.high, self.urgent]
    }
}

/// [`Deadlines`] per kind of item.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct KindDeadlines {
    pub question: Option<Deadlines>,
    pub approval: Option<Deadlines>,
    pub escalation: Option<Deadlines>,
    pub handoff: Option<Deadlines>,
}

impl DeskPolicy {
    /// How long humans have to respond to an item of `kind` and
    /// `priority`; none when it has no deadline.
    pub fn due_in(&self, kind: InboxKind, priority: Priority) -> Option<std::time::Duration> {
        let by_kind = match kind {
            InboxKind::Question => &self.deadlines_by_kind.question,
            InboxKind::Approval => &self.deadlines_by_kind.approval,
            InboxKind::Escalation => &self.deadlines_by_kind.escalation,
            InboxKind::Handoff => &self.deadlines_by_kind.handoff,
        };
        by_kind
            .as_ref()
            .and_then(|d| d.get(priority))
            .or_else(|| self.deadlines.get(priority))
            .filter(|secs| *secs > 0)
            .map(std::time::Duration::from_secs)
    }

    fn validate(&self) -> Result<(), String> {
        const YEAR: u64 = 366 * 24 * 3_600;
        let k = &self.deadlines_by_kind;
        let all = [
            Some(&self.deadlines),
            k.question.as_ref(),
            k.approval.as_ref(),
        ]
        .into_iter()
        .chain([k.escalation.as_ref(), k.handoff.as_ref()])
        .flatten();
        for deadlines in all {
            if deadlines
                .each()
                .into_iter()
                .flatten()
                .any(|secs| secs > YEAR)
            {
                return Err("desk.deadlines: at most a year (31622400 seconds)".into());
            }
        }
        if self.default_capacity > 1_000 {
            return Err("desk.default_capacity: at most 1000".into());
        }
        if self.holding_message.trim().is_empty() || self.holding_message.len() > 4_000 {
            return Err("desk.holding_message: 1 to 4000 bytes".into());
        }
        if self.max_reassignments > 100 {
            return Err("desk.max_reassignments: at most 100".into());
        }
        if self.item_history > 100 {
            return Err("desk.item_history: at most 100".into());
        }
        Ok(())
    }
}

impl Policy {
    /// Checks what the types cannot: ranges, and each strategy once.
    pub fn validate(&self) -> Result<(), String> {
        if self.routing.is_empty() {
            return Err("routing: name at least one strategy".into());
        }
        let mut seen = HashSet::new();
        if let Some(dup) = self.routing.iter().find(|s| !seen.insert(**s)) {
            return Err(format!("routing: `{}` is listed twice", dup.as_str()));
        }
        if !(1..=20).contains(&self.max_model_steps) {
            return Err("max_model_steps: must be between 1 and 20".into());
        }
        if !(500..=200_000).contains(&self.history_budget_tokens) {
            return Err("history_budget_tokens: must be between 500 and 200000".into());
        }
        if !(0.0..=1.0).contains(&self.confidence.threshold) {
            return Err("confidence.threshold: must be between 0 and 1".into());
        }
        let e = &self.embeddings;
        if !(1..=50).contains(&e.k) {
            return Err("embeddings.k: must be between 1 and 50".into());
        }
        if !(-1.0..=1.0).contains(&e.min_similarity) {
            return Err("embeddings.min_similarity: must be between -1 and 1".into());
        }
        if !(0.0..=1.0).contains(&e.min_vote_share) {
            return Err("embeddings.min_vote_share: must be between 0 and 1".into());
        }
        if self.approval.threads.len() > 10_000 {
            return Err("approval.threads: at most 10000 threads".into());
        }
        if self
            .classifier
            .instructions
            .as_ref()
            .is_some_and(|i| i.len() > 8_000)
        {
            return Err("classifier.instructions: at most 8000 bytes".into());
        }
        self.desk.validate()
    }

    /// Whether the AI's reply in `thread` waits for approval.
    pub fn needs_approval(&self, thread: ThreadId, sensitive: bool) -> Option<&'static str> {
        if self.approval.threads.contains(&thread) {
            return Some("the policy requires approval in this thread");
        }
        match self.approval.mode {
            ApprovalMode::Always => Some("the policy requires approval of every AI reply"),
            ApprovalMode::Sensitive if sensitive => {
                Some("the classifier marked the topic as sensitive")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_document_is_the_default_policy() {
        let policy: Policy = serde_json::from_str("{}").expect("parses");
        assert_eq!(policy, Policy::default());
        assert_eq!(policy.confidence.threshold, 0.7);
        assert_eq!(policy.max_model_steps, 5);
        assert!(policy.validate().is_ok());
    }

    #[test]
    fn unknown_fields_duplicates_and_ranges_are_refused() {
        assert!(serde_json::from_str::<Policy>(r#"{"routng": []}"#).is_err());
        let twice = Policy {
            routing: vec![Strategy::Ai, Strategy::Ai],
            ..Policy::default()
        };
        assert!(twice.validate().unwrap_err().contains("twice"));
        let mut bad = Policy::default();
        bad.confidence.threshold = 1.5;
        assert!(bad.validate().unwrap_err().starts_with("confidence"));
    }

    #[test]
    fn approval_follows_mode_thread_list_and_sensitivity() {
        let thread = ThreadId::new();
        let mut policy = Policy::default();
        assert_eq!(policy.needs_approval(thread, true), None);
        policy.approval.mode = ApprovalMode::Sensitive;
        assert!(policy.needs_approval(thread, false).is_none());
        assert!(policy.needs_approval(thread, true).is_some());
        policy.approval.mode = ApprovalMode::Never;
        policy.approval.threads.push(thread);
        assert!(policy.needs_approval(thread, false).is_some());
    }
}
