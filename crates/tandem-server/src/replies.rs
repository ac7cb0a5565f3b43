//! Starting the durable `reply` run of each customer message, and finding
//! the messages whose run was never started.

use std::time::Duration;

use tandem_model::Message;
use tandem_model::names::REPLY_WORKFLOW;
use tandem_router::ReplyArgs;
use tandem_store::{IdempotencyKey, Store};
use tandem_workflows::Engine;

/// The idempotency scope of reply runs: one run per message id.
const SCOPE: &str = "reply";

/// How far back the start-up sweep looks for unrouted messages.
const RECOVERY_WINDOW: Duration = Duration::from_secs(3_600);

/// Most messages one sweep starts runs for.
const RECOVERY_LIMIT: u32 = 10_000;

/// Starts the `reply` run of a customer message, once per message however
/// often it is called.
pub async fn start(engine: &Engine, message: &Message) {
    let args = ReplyArgs {
        thread_id: message.thread_id,
        message_id: message.id,
        seq: message.seq,
    };
    let key = IdempotencyKey {
        scope: SCOPE.into(),
        key: message.id.to_string(),
        request_hash: String::new(),
    };
    let args = match serde_json::to_value(&args) {
        Ok(args) => args,
        Err(error) => {
            tracing::error!(%error, "reply: arguments do not serialize");
            return;
        }
    };
    if let Err(error) = engine.start_run(REPLY_WORKFLOW, args, Some(key)).await {
        tracing::error!(%error, message = %message.id, "reply: starting the run failed");
    }
}

/// Starts the runs of customer messages of the last hour that have none: a
/// process that died between storing a message and starting its run (or
/// whose start failed) leaves such a message, and no customer message may
/// go unanswered. Runs are keyed by message, so a run another process is
/// starting at the same moment is not doubled.
pub async fn recover(engine: &Engine, store: &Store) {
    let since = chrono::Utc::now()
        - chrono::Duration::from_std(RECOVERY_WINDOW).unwrap_or_else(|_| chrono::Duration::zero());
    let unrouted = match store
        .customer_messages_without(SCOPE, since, RECOVERY_LIMIT)
        .await
    {
        Ok(messages) => messages,
        Err(error) => {
            tracing::error!(%error, "reply: looking for unrouted messages failed");
            return;
        }
    };
    if unrouted.is_empty() {
        return;
    }
    tracing::warn!(
        messages = unrouted.len(),
        "reply: starting the runs of customer messages that had none"
    );
    for message in &unrouted {
        start(engine, message).await;
    }
}
