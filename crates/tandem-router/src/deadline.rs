//! The durable `inbox-deadline` workflow: the timer of one inbox item's
//! deadline.
//!
//! The store creates the run in the same transaction as the item, due when
//! the deadline passes, so a deadline never lacks its timer and a server
//! that was down when it passed runs it once, at start. Each round:
//!
//! 1. `due:N` reads the item and the policy: a resolved item, or one
//!    without a deadline any more, ends the run;
//! 2. a durable sleep until the deadline, if it is still ahead (it moved);
//! 3. `expire:N` passes the deadline, as one store effect with its journal
//!    entry: the expiry is recorded and the policy's fallback applied —
//!    reassign (with a new deadline, so another round follows), hold (the
//!    customer is told a person will answer), or let the AI answer.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tandem_model::metadata::{DESK, PROVIDER};
use tandem_model::names::{ASK_HUMAN_TOOL, DEADLINE_VERSION, DEADLINE_WORKFLOW, REPLY_WORKFLOW};
use tandem_model::{
    AssignmentMode, Author, AuthorKind, Content, ExpireItem, ExpiryAction, ExpiryOutcome, Fallback,
    InboxItemId, InboxKind, InboxStatus, MessageId, MessageStatus, NewMessage, NewRun, Part, Role,
    ThreadId, Visibility,
};
use tandem_store::Store;
use tandem_workflows::{ActionError, Context, StepError, WorkflowDef};

use crate::reply::actions::store_failed;
use crate::reply::{self, AgentConfig, ReplyArgs};

/// Most rounds one item goes through (reassignments are bounded by the
/// policy well below it).
const MAX_ROUNDS: u32 = 101;

/// What the note to the team says when the AI answers in their place.
const AI_ANSWER_NOTE: &str = "No one on the team responded before the deadline, so the AI \
    answers the customer in the meantime.";

/// What a question's run is told instead of an answer.
const NO_ANSWER: &str = "No one on the support team answered in time. Answer the customer as \
    well as you can without it, and tell them a person will follow up if needed.";

/// Runs each item's deadline.
#[derive(Clone)]
pub struct DeadlineWatch {
    store: Store,
    agent: AgentConfig,
    /// An agent whose presence is older is offline to a reassignment.
    presence_ttl: Duration,
}

/// The arguments the store creates each run with.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadlineArgs {
    pub item_id: InboxItemId,
}

/// What one round read: the item's deadline and what passing it does.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Watch {
    due_at: Option<DateTime<Utc>>,
    kind: InboxKind,
    thread_id: ThreadId,
    fallback: Fallback,
    assignment: AssignmentMode,
    holding_message: String,
    /// The next deadline, for a reassignment; none after the last one.
    next_due_in: Option<Duration>,
    /// The latest customer message, which a handed-back AI answers.
    latest_customer: Option<(MessageId, i64)>,
    tool_call_id: Option<String>,
}

/// How a run ended: every expiry it passed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadlineResult {
    pub expiries: Vec<ExpiryOutcome>,
}

impl DeadlineWatch {
    pub fn new(store: Store, agent: AgentConfig, presence_ttl: Duration) -> Self {
        Self {
            store,
            agent,
            presence_ttl,
        }
    }

    /// The workflow, to register with the engine.
    pub fn workflow(&self) -> WorkflowDef {
        let watch = self.clone();
        WorkflowDef::new(
            DEADLINE_WORKFLOW,
            DEADLINE_VERSION,
            move |ctx: Context, args: DeadlineArgs| {
                let watch = watch.clone();
                async move { watch.run(ctx, args).await }
            },
        )
    }

    async fn run(&self, ctx: Context, args: DeadlineArgs) -> Result<DeadlineResult, StepError> {
        let mut expiries = Vec::new();
        for round in 0..MAX_ROUNDS {
            let watch: Option<Watch> = ctx
                .run(&format!("due:{round}"), |_| self.watch(args.item_id))
                .await?;
            let Some((watch, due_at)) = watch.and_then(|w| w.due_at.map(|d| (w, d))) else {
                break;
            };
            let before = ctx.now().await?;
            if let Ok(ahead) = (due_at - before).to_std() {
                ctx.sleep(ahead).await?;
            }
            let now = ctx.now().await?;
            let expire = ExpireItem {
                item_id: args.item_id,
                due_at,
                action: self.action(&watch, args.item_id, now),
            };
            let expiry = ctx.expire_item(&format!("expire:{round}"), expire).await?;
            let again = matches!(
                expiry.outcome,
                ExpiryOutcome::Reassigned {
                    due_at: Some(_),
                    ..
                } | ExpiryOutcome::Moved { due_at: Some(_) }
            );
            if !matches!(expiry.outcome, ExpiryOutcome::Moved { .. }) {
                expiries.push(expiry.outcome);
            }
            if !again {
                break;
            }
        }
        Ok(DeadlineResult { expiries })
    }

    /// The item's deadline, and the policy for it; none once the item is
    /// resolved or gone.
    async fn watch(&self, item_id: InboxItemId) -> Result<Option<Watch>, ActionError> {
        let item = self
            .store
            .get_inbox_item(item_id)
            .await
            .map_err(store_failed)?;
        let Some(item) =
            item.filter(|i| matches!(i.status, InboxStatus::Open | InboxStatus::Claimed))
        else {
            return Ok(None);
        };
        let policy = self.store.policy().await.map_err(store_failed)?.desk;
        let reassigned = u32::try_from(item.expiries).unwrap_or(u32::MAX);
        let next_due_in = (reassigned.saturating_add(1) < policy.max_reassignments)
            .then(|| policy.due_in(item.kind, item.priority))
            .flatten();
        let latest_customer = if matches!(item.kind, InboxKind::Handoff | InboxKind::Escalation) {
            let history = self
                .store
                .prompt_history(item.thread_id, 50)
                .await
                .map_err(store_failed)?;
            history
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| (m.id, m.seq))
        } else {
            None
        };
        Ok(Some(Watch {
            due_at: item.due_at,
            kind: item.kind,
            thread_id: item.thread_id,
            fallback: policy.fallback,
            assignment: policy.assignment,
            holding_message: policy.holding_message,
            next_due_in,
            latest_customer,
            tool_call_id: item.tool_call_id,
        }))
    }

    /// The fallback's store action, built the same on every replay from
    /// what the round read.
    fn action(&self, watch: &Watch, item_id: InboxItemId, now: DateTime<Utc>) -> ExpiryAction {
        match watch.fallback {
            Fallback::Reassign => ExpiryAction::Reassign {
                due_in: watch.next_due_in,
                presence_since: now
                    - chrono::Duration::from_std(self.presence_ttl)
                        .unwrap_or_else(|_| chrono::Duration::zero()),
                mode: watch.assignment,
            },
            Fallback::Hold => ExpiryAction::Hold {
                message: self.system_message(
                    watch.thread_id,
                    Role::Assistant,
                    Content::Text(watch.holding_message.clone()),
                    Visibility::Public,
                    json!({PROVIDER: "tandem", DESK: {"holding": true}}),
                ),
            },
            Fallback::AiAnswer => ExpiryAction::AiAnswer {
                note: self.system_message(
                    watch.thread_id,
                    Role::Assistant,
                    Content::Text(AI_ANSWER_NOTE.into()),
                    Visibility::Internal,
                    json!({PROVIDER: "tandem", DESK: {"deadline_passed": item_id}}),
                ),
                answer: watch.tool_call_id.clone().map(|id| {
                    self.system_message(
                        watch.thread_id,
                        Role::Tool,
                        Content::Parts(vec![Part::ToolResult {
                            tool_call_id: id,
                            name: ASK_HUMAN_TOOL.into(),
                            result: json!({"answer": null, "note": NO_ANSWER}),
                            is_error: false,
                        }]),
                        Visibility::Internal,
                        json!({PROVIDER: "tandem"}),
                    )
                }),
                follow_up: watch.latest_customer.map(|(message_id, seq)| NewRun {
                    name: REPLY_WORKFLOW.into(),
                    version: reply::VERSION.into(),
                    args: json!(ReplyArgs {
                        thread_id: watch.thread_id,
                        message_id,
                        seq,
                    }),
                    has_on_complete: false,
                }),
                now: tandem_store::micros(now),
            },
        }
    }

    /// A message the desk itself posts, under the AI agent's name.
    fn system_message(
        &self,
        thread_id: ThreadId,
        role: Role,
        content: Content,
        visibility: Visibility,
        metadata: serde_json::Value,
    ) -> NewMessage {
        NewMessage {
            id: None,
            thread_id,
            role,
            agent_name: Some(self.agent.name.clone()),
            author: Author {
                kind: AuthorKind::System,
                id: Some("desk".into()),
            },
            content,
            visibility,
            status: MessageStatus::Published,
            metadata,
            reply_to: None,
            customer_scope: None,
        }
    }
}
