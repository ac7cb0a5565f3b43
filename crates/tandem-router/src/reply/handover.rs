//! The items a run opens for humans: a question, a draft, an escalation or
//! a handoff, each with the thread's assignment where it changes.

use tandem_llm::ToolCall;
use tandem_model::{
    AssignedTo, InboxKind, NewAssignment, NewInboxItem, NewMessage, OpenItem, RunId,
};

use super::ReplyArgs;
use super::actions::Snapshot;

/// Why and how a reply goes to humans.
pub(super) struct Handover {
    kind: InboxKind,
    reason: String,
    suggestion: Option<String>,
}

impl Handover {
    /// The thread is, or must be, with humans; no AI text to offer.
    pub(super) fn handoff(reason: &str) -> Self {
        Self {
            kind: InboxKind::Handoff,
            reason: reason.to_owned(),
            suggestion: None,
        }
    }

    /// The AI or the router handed over, maybe with a suggested reply.
    pub(super) fn escalation(reason: String, suggestion: Option<String>) -> Self {
        Self {
            kind: InboxKind::Escalation,
            reason,
            suggestion,
        }
    }

    /// The item, and the assignment to humans unless the thread is theirs.
    pub(super) fn into_open_item(
        self,
        args: &ReplyArgs,
        run: &RunId,
        snapshot: &Snapshot,
    ) -> OpenItem {
        let assign = (!snapshot.with_humans).then(|| NewAssignment {
            thread_id: args.thread_id,
            assigned_to: AssignedTo::Human,
            assignee: None,
            team: None,
            reason: Some(self.reason.clone()),
            by_kind: "ai".into(),
            by_id: None,
        });
        OpenItem {
            message: None,
            item: NewInboxItem {
                kind: self.kind,
                thread_id: args.thread_id,
                message_id: Some(args.message_id),
                tool_call_id: None,
                body: snapshot.customer_text.clone(),
                suggestion: self.suggestion,
                due_in: snapshot.policy.desk.due_in(self.kind, snapshot.priority),
                reason: Some(self.reason),
                due_at: None,
                team: None,
                priority: snapshot.priority,
                run_id: Some(*run),
            },
            assign,
        }
    }
}

/// The AI's `ask_human` call (an internal message) and its `question` item.
pub(super) fn question(
    args: &ReplyArgs,
    run: &RunId,
    snapshot: &Snapshot,
    message: NewMessage,
    call: &ToolCall,
    question: &str,
) -> OpenItem {
    OpenItem {
        message: Some(message),
        item: NewInboxItem {
            kind: InboxKind::Question,
            thread_id: args.thread_id,
            message_id: None,
            tool_call_id: Some(call.id.clone()),
            body: Some(question.to_owned()),
            suggestion: None,
            reason: Some("the AI asked the support team".into()),
            due_at: None,
            due_in: snapshot
                .policy
                .desk
                .due_in(InboxKind::Question, snapshot.priority),
            team: None,
            priority: snapshot.priority,
            run_id: Some(*run),
        },
        assign: None,
    }
}

/// A draft reply (internal, pending approval) and its `approval` item.
pub(super) fn approval(
    args: &ReplyArgs,
    run: &RunId,
    snapshot: &Snapshot,
    draft: NewMessage,
    text: String,
    why: &str,
) -> OpenItem {
    OpenItem {
        message: Some(draft),
        item: NewInboxItem {
            kind: InboxKind::Approval,
            thread_id: args.thread_id,
            message_id: None,
            tool_call_id: None,
            body: Some(text),
            suggestion: None,
            reason: Some(why.to_owned()),
            due_at: None,
            due_in: snapshot
                .policy
                .desk
                .due_in(InboxKind::Approval, snapshot.priority),
            team: None,
            priority: snapshot.priority,
            run_id: Some(*run),
        },
        assign: None,
    }
}
