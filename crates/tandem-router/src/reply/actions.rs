//! The actions of the `reply` workflow's steps: what runs (and is
//! journaled) between the durable points. Each reads the store before or
//! after its model call, never inside a transaction across it.

use std::sync::Mutex;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tandem_llm::prompt::{self, PromptOptions};
use tandem_llm::schema::response_format;
use tandem_llm::{ChatMessage, ChatRequest, Completion, Delta, LlmError, Usage};
use tandem_model::{
    InboxFilter, InboxItemId, InboxKind, InboxStatus, InboxStatuses, Message, MessageId, Part,
    Policy, Responder, Role, UsageRecord,
};
use tandem_store::StoreError;
use tandem_workflows::{ActionError, StepInfo};

use super::{Replier, ReplyArgs};
use crate::classifier::{self, Classification};
use crate::decision::Decision;
use crate::embeddings;
use crate::tools;

/// How many of the newest messages a step reads to build a prompt; the
/// token budget then trims them.
const HISTORY_WINDOW: u32 = 200;
/// The classifier sees less of the conversation than the reply model.
const CLASSIFIER_BUDGET_TOKENS: usize = 3_000;

/// What a run knows of its thread when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Snapshot {
    pub policy: Policy,
    /// The thread is assigned to humans.
    pub with_humans: bool,
    /// A newer customer message exists: its own run answers both.
    pub superseded: bool,
    /// The text of the message being answered.
    pub customer_text: Option<String>,
    /// An open handoff or escalation item of the thread: humans already
    /// have it, and a second one would only crowd the inbox.
    pub open_item: Option<InboxItemId>,
    /// The thread's `metadata.priority`: with an item's kind, it picks the
    /// item's deadline.
    #[serde(default)]
    pub priority: tandem_model::Priority,
}

/// The classifier's verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Verdict {
    pub decision: Decision,
    pub sensitive: bool,
}

/// One model call's outcome. A failure after the client's retries is an
/// outcome too (journaled, so a restart does not call again): the thread
/// then goes to a human, with the reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum ModelTurn {
    Answered(Completion),
    Failed { code: String, message: String },
}

/// The reply with a confidence, when the policy asks for one. The
/// schema's descriptions are the model's (see [`crate::tools`]).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(description = "Your reply to the customer, and how sure you are of it.")]
pub(crate) struct ConfidentReply {
    /// The reply's text, published or escalated as the suggestion.
    #[schemars(description = "The reply to the customer, as they will read it.")]
    pub reply: String,
    /// Compared with the policy's threshold.
    #[schemars(
        description = "How sure you are that the reply is correct and complete, from 0 (a \
                       guess) to 1 (certain)."
    )]
    pub confidence: f64,
}

pub(crate) fn store_failed(error: StoreError) -> ActionError {
    match error {
        StoreError::NotFound(what) => ActionError::permanent(format!("{what} not found")),
        other => ActionError::retryable(other.to_string()),
    }
}

/// A message's text: its text parts, joined.
pub(crate) fn text_of(message: &Message) -> String {
    match &message.content {
        tandem_model::Content::Text(text) => text.clone(),
        tandem_model::Content::Parts(parts) => parts
            .iter()
            .filter_map(|p| match p {
                Part::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

impl Replier {
    /// The `context` step. Its reads are independent, so they go to the
    /// store at once. Also hands back the history it read, for the first
    /// model call to use rather than read again (not journaled: a replay
    /// reads it afresh).
    pub(super) async fn snapshot(
        &self,
        args: &ReplyArgs,
        history_out: &Mutex<Option<Vec<Message>>>,
    ) -> Result<Snapshot, ActionError> {
        let store = &self.inner.store;
        let open_items = InboxFilter {
            thread_id: Some(args.thread_id),
            status: InboxStatuses::Only(InboxStatus::Open),
            ..InboxFilter::default()
        };
        let (thread, policy, history, open) = tokio::join!(
            store.get_thread(args.thread_id, None),
            store.policy(),
            store.prompt_history(args.thread_id, HISTORY_WINDOW),
            store.list_inbox(&open_items),
        );
        let thread = thread
            .map_err(store_failed)?
            .ok_or_else(|| ActionError::permanent("thread not found"))?;
        let policy = policy.map_err(store_failed)?;
        let history = history.map_err(store_failed)?;
        let open = open.map_err(store_failed)?;
        let customer_text = history
            .iter()
            .find(|m| m.id == args.message_id)
            .map(text_of);
        let superseded = history
            .iter()
            .any(|m| m.role == Role::User && m.seq > args.seq);
        let open_item = open
            .iter()
            .find(|i| matches!(i.kind, InboxKind::Handoff | InboxKind::Escalation))
            .map(|i| i.id);
        *history_out.lock().unwrap_or_else(|e| e.into_inner()) = Some(history);
        Ok(Snapshot {
            policy,
            with_humans: thread.assigned_to == tandem_model::AssignedTo::Human,
            superseded,
            customer_text,
            open_item,
            priority: thread
                .metadata
                .get("priority")
                .and_then(|p| p.as_str())
                .and_then(|p| p.parse().ok())
                .unwrap_or_default(),
        })
    }

    async fn record_usage(
        &self,
        args: &ReplyArgs,
        info: &StepInfo,
        purpose: &str,
        model: &str,
        usage: Usage,
    ) -> Result<(), ActionError> {
        self.inner
            .store
            .record_usage(UsageRecord {
                run_id: info.run_id,
                step_seq: info.seq,
                thread_id: Some(args.thread_id),
                purpose: purpose.to_owned(),
                model: model.to_owned(),
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            })
            .await
            .map(|_| ())
            .map_err(store_failed)
    }

    async fn history(&self, args: &ReplyArgs) -> Result<Vec<Message>, ActionError> {
        self.inner
            .store
            .prompt_history(args.thread_id, HISTORY_WINDOW)
            .await
            .map_err(store_failed)
    }

    /// When the thread was last handed back to the AI.
    async fn hand_back(
        &self,
        args: &ReplyArgs,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, ActionError> {
        self.inner
            .store
            .last_hand_back(args.thread_id)
            .await
            .map_err(store_failed)
    }

    pub(super) async fn classify(
        &self,
        args: &ReplyArgs,
        snapshot: &Snapshot,
        info: StepInfo,
    ) -> Result<Verdict, ActionError> {
        let Some(llm) = &self.inner.llm else {
            return Err(ActionError::permanent("the AI is off"));
        };
        let history = self.history(args).await?;
        let handed_back_at = self.hand_back(args).await?;
        let messages = prompt::build_after_hand_back(
            &history,
            &PromptOptions {
                system_prompt: classifier::instructions(
                    snapshot.policy.classifier.instructions.as_deref(),
                ),
                ai_name: self.inner.agent.name.clone(),
                budget_tokens: CLASSIFIER_BUDGET_TOKENS,
            },
            handed_back_at,
        );
        let model = llm.config().classifier_model().to_owned();
        let started = std::time::Instant::now();
        let verdict = match llm
            .structured::<Classification>(&model, "routing_decision", messages)
            .await
        {
            Ok(structured) => {
                let c = &structured.completion;
                self.record_usage(args, &info, "classifier", &c.model, c.usage)
                    .await?;
                Verdict {
                    decision: Decision {
                        strategy: "classifier".into(),
                        responder: Some(structured.value.responder),
                        reason: clip(&structured.value.reason),
                        model: Some(c.model.clone()),
                        latency_ms: c.latency_ms,
                        usage: Some(c.usage),
                    },
                    sensitive: structured.value.sensitive,
                }
            }
            Err(error) => Verdict {
                decision: Decision {
                    strategy: "classifier".into(),
                    responder: Some(Responder::Human),
                    reason: match &error {
                        LlmError::Malformed(why) => {
                            format!("the classifier's answer was malformed ({})", clip(why))
                        }
                        other => format!(
                            "the classifier failed ({}): {}",
                            other.code(),
                            clip(&other.to_string())
                        ),
                    },
                    model: Some(model),
                    latency_ms: started.elapsed().as_millis() as u64,
                    usage: None,
                },
                sensitive: false,
            },
        };
        Ok(verdict)
    }

    pub(super) async fn embed_vote(
        &self,
        args: &ReplyArgs,
        snapshot: &Snapshot,
        info: StepInfo,
    ) -> Result<Decision, ActionError> {
        let Some(llm) = &self.inner.llm else {
            return Err(ActionError::permanent("the AI is off"));
        };
        let store = &self.inner.store;
        let model = llm.config().embedding_model().to_owned();
        let abstain = |reason: String, latency_ms: u64, usage: Option<Usage>| Decision {
            strategy: "embeddings".into(),
            responder: None,
            reason,
            model: Some(model.clone()),
            latency_ms,
            usage,
        };
        let Some(text) = snapshot
            .customer_text
            .clone()
            .filter(|t| !t.trim().is_empty())
        else {
            return Ok(abstain(
                "the message has no text to compare".into(),
                0,
                None,
            ));
        };
        let started = std::time::Instant::now();
        let mut examples = store.routing_examples().await.map_err(store_failed)?;
        if examples.is_empty() {
            return Ok(abstain("there are no labelled examples".into(), 0, None));
        }
        // Examples get their vectors when they are added; one added while
        // the embedding model did not answer, or under another model, gets
        // it here, once.
        let mut usage = match embeddings::embed_pending(store, llm, &mut examples).await {
            Ok(usage) => usage,
            Err(embeddings::PendingError::Store(error)) => return Err(store_failed(error)),
            Err(embeddings::PendingError::Model(error)) => {
                return Ok(abstain(
                    format!("embedding the examples failed ({})", error.code()),
                    started.elapsed().as_millis() as u64,
                    None,
                ));
            }
        };
        let query = match llm.embed(vec![text]).await {
            Ok(e) => e,
            Err(error) => {
                return Ok(abstain(
                    format!("embedding the message failed ({})", error.code()),
                    started.elapsed().as_millis() as u64,
                    Some(usage),
                ));
            }
        };
        usage += query.usage;
        self.record_usage(args, &info, "embedding", &model, usage)
            .await?;
        let Some(vector) = query.vectors.first() else {
            return Ok(abstain(
                "the embedding endpoint returned no vector".into(),
                0,
                Some(usage),
            ));
        };
        let vote = embeddings::vote(vector, &examples, &model, &snapshot.policy.embeddings);
        Ok(Decision {
            strategy: "embeddings".into(),
            responder: vote.winner,
            reason: vote.reason,
            model: Some(model),
            latency_ms: started.elapsed().as_millis() as u64,
            usage: Some(usage),
        })
    }

    pub(super) async fn model_turn(
        &self,
        args: &ReplyArgs,
        snapshot: &Snapshot,
        local: &[ChatMessage],
        stream_to: Option<MessageId>,
        read_ahead: &Mutex<Option<Vec<Message>>>,
        info: StepInfo,
    ) -> Result<ModelTurn, ActionError> {
        let Some(llm) = &self.inner.llm else {
            return Err(ActionError::permanent("the AI is off"));
        };
        let fresh = read_ahead.lock().unwrap_or_else(|e| e.into_inner()).take();
        let history = match fresh {
            Some(history) => history,
            None => self.history(args).await?,
        };
        let handed_back_at = self.hand_back(args).await?;
        let agent = &self.inner.agent;
        let mut messages = prompt::build_after_hand_back(
            &history,
            &PromptOptions {
                system_prompt: agent.system_prompt.clone(),
                ai_name: agent.name.clone(),
                budget_tokens: snapshot.policy.history_budget_tokens as usize,
            },
            handed_back_at,
        );
        messages.extend(local.iter().cloned());
        let request = ChatRequest {
            model: llm.config().reply_model.clone(),
            messages,
            tools: tools::specs(),
            response_format: snapshot
                .policy
                .confidence
                .enabled
                .then(|| response_format::<ConfidentReply>("reply_with_confidence")),
            stream: stream_to.is_some(),
        };
        let events = self.inner.events.clone();
        let thread_id = args.thread_id;
        let mut on_delta = move |delta: Delta| {
            if let Some(id) = stream_to {
                events.delta(thread_id, id, &delta);
            }
        };
        match llm.chat(request, &mut on_delta).await {
            Ok(completion) => {
                self.record_usage(args, &info, "reply", &completion.model, completion.usage)
                    .await?;
                Ok(ModelTurn::Answered(completion))
            }
            Err(error) => Ok(ModelTurn::Failed {
                code: error.code().to_owned(),
                message: clip(&error.to_string()),
            }),
        }
    }
}

/// A reason short enough for a record.
fn clip(text: &str) -> String {
    const MAX: usize = 500;
    if text.chars().count() <= MAX {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(MAX).collect();
    clipped.push('…');
    clipped
}
