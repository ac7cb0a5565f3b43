//! The reply path's store effects through the step API: a reply posted or
//! skipped exactly once, replayed as it was; a question item whose run
//! sleeps until a human's answer wakes it.

use serde_json::{Value, json};
use tandem_model::names::ASK_HUMAN_TOOL;
use tandem_model::{
    AssignedTo, Content, InboxKind, MessageFilter, MessageId, NewAssignment, NewInboxItem,
    NewMessage, NewThread, OpenItem, Part, RunStatus, ThreadId, Visibility,
};
use tandem_store::micros;
use tandem_workflows::{Registry, WorkflowDef};

use crate::agent_message;
use crate::support::Harness;

fn reply_workflow() -> Registry {
    let mut r = Registry::new();
    r.register(WorkflowDef::new(
        "reply",
        "1",
        |ctx, (thread, after_seq): (ThreadId, i64)| async move {
            // The id is chosen (and journaled) first, as a run streaming
            // deltas under it would.
            let id = MessageId(ctx.uuid().await?);
            let message = NewMessage {
                id: Some(id),
                ..agent_message(thread, "It arrives Tuesday.")
            };
            let outcome = ctx.post_reply("reply", message, after_seq).await?;
            ctx.wait_for_event("done", None).await?;
            Ok(match outcome {
                Ok(posted) => json!({"id": posted.id, "seq": posted.seq, "chosen": id}),
                Err(reason) => json!({"skipped": reason}),
            })
        },
    ));
    r.register(WorkflowDef::new(
        "assign",
        "1",
        |ctx, (thread, to): (ThreadId, AssignedTo)| async move {
            let assignment = NewAssignment {
                thread_id: thread,
                assigned_to: to,
                assignee: None,
                team: None,
                reason: Some("test".into()),
                by_kind: "workflow".into(),
                by_id: None,
            };
            Ok(ctx.assign("assign", assignment).await?.assigned_to)
        },
    ));
    r.register(WorkflowDef::new(
        "ask",
        "1",
        |ctx, thread: ThreadId| async move {
            let call = NewMessage {
                visibility: Visibility::Internal,
                content: Content::Parts(vec![Part::ToolCall {
                    id: "call_1".into(),
                    name: ASK_HUMAN_TOOL.into(),
                    arguments: json!({"question": "Refund?"}),
                }]),
                ..agent_message(thread, "")
            };
            let opened = ctx
                .open_item(
                    "ask",
                    OpenItem {
                        message: Some(call),
                        item: NewInboxItem {
                            kind: InboxKind::Question,
                            thread_id: thread,
                            message_id: None,
                            tool_call_id: Some("call_1".into()),
                            body: Some("Refund?".into()),
                            suggestion: None,
                            reason: None,
                            due_at: None,
                            due_in: None,
                            team: None,
                            priority: tandem_model::Priority::Normal,
                            run_id: Some(ctx.run_id()),
                        },
                        assign: None,
                    },
                )
                .await?;
            let answer = ctx
                .wait_for_event(&format!("inbox:{}", opened.item.id), None)
                .await?;
            Ok(json!({"answer": match answer {
                tandem_workflows::Wakeup::Event(payload) => payload,
                tandem_workflows::Wakeup::TimedOut => Value::Null,
            }, "call": opened.message.map(|m| m.id)}))
        },
    ));
    r
}

async fn thread(h: &Harness) -> ThreadId {
    h.store
        .create_thread(
            NewThread {
                customer_id: "c1".into(),
                title: None,
                metadata: json!({}),
            },
            None,
        )
        .await
        .expect("thread")
        .value
        .id
}

async fn customer_says(h: &Harness, thread: ThreadId, text: &str) -> i64 {
    let message = NewMessage {
        role: tandem_model::Role::User,
        agent_name: None,
        author: tandem_model::Author {
            kind: tandem_model::AuthorKind::Customer,
            id: None,
        },
        ..agent_message(thread, text)
    };
    h.store
        .post_message(message, None, None)
        .await
        .expect("post")
        .value
        .seq
}

fn everything() -> MessageFilter {
    MessageFilter {
        after_seq: 0,
        limit: 100,
        customer_view: false,
    }
}

#[tokio::test]
async fn a_reply_is_posted_once_and_replayed_as_posted_after_a_restart() {
    let mut h = Harness::start(reply_workflow).await;
    let thread = thread(&h).await;
    let asked = customer_says(&h, thread, "Where is my parcel?").await;
    let id = h
        .engine
        .start_run("reply", json!([thread, asked]), None)
        .await
        .expect("start")
        .value
        .id;
    h.wait_status(id, RunStatus::Waiting).await;
    // The customer writes again: a replay must still find its reply posted,
    // not skip it now.
    customer_says(&h, thread, "Hello?").await;
    h.restart().await;
    h.engine
        .deliver_event(
            id,
            "done",
            json!(null),
            tandem_model::EventSource::Api,
            None,
        )
        .await
        .expect("deliver");
    let state = h.wait_status(id, RunStatus::Completed).await;
    let result = state.run.result.expect("result");
    assert_eq!(result["seq"], json!(2));
    assert_eq!(
        result["id"], result["chosen"],
        "posted under the id the run chose"
    );
    let messages = h
        .store
        .list_messages(thread, &everything())
        .await
        .expect("list");
    assert_eq!(messages.len(), 3, "one reply");
    h.finish().await;
}

#[tokio::test]
async fn a_skipped_reply_stays_skipped_on_replay() {
    let mut h = Harness::start(reply_workflow).await;
    let thread = thread(&h).await;
    let asked = customer_says(&h, thread, "A human, please.").await;
    assign(&h, thread, AssignedTo::Human).await;
    let id = h
        .engine
        .start_run("reply", json!([thread, asked]), None)
        .await
        .expect("start")
        .value
        .id;
    let state = h.wait_status(id, RunStatus::Waiting).await;
    assert_eq!(
        state.journal[1].output,
        Some(json!({"skipped": "assigned_to_human"}))
    );
    // Were the reply checked again now, it would be posted: the replay
    // must answer what the journal holds.
    assign(&h, thread, AssignedTo::Ai).await;
    h.restart().await;
    h.engine
        .deliver_event(
            id,
            "done",
            json!(null),
            tandem_model::EventSource::Api,
            None,
        )
        .await
        .expect("deliver");
    let state = h.wait_status(id, RunStatus::Completed).await;
    assert_eq!(
        state.run.result,
        Some(json!({"skipped": "assigned_to_human"}))
    );
    let messages = h
        .store
        .list_messages(thread, &everything())
        .await
        .expect("list");
    assert_eq!(messages.len(), 1, "no reply");
    h.finish().await;
}

/// Assigns the thread through a run's step, as the router would.
async fn assign(h: &Harness, thread: ThreadId, to: AssignedTo) {
    let id = h
        .engine
        .start_run("assign", json!([thread, to]), None)
        .await
        .expect("start")
        .value
        .id;
    h.wait_status(id, RunStatus::Completed).await;
}

#[tokio::test]
async fn a_question_sleeps_until_the_answer_wakes_it_in_the_same_write() {
    let h = Harness::start(reply_workflow).await;
    let thread = thread(&h).await;
    customer_says(&h, thread, "Refund order 7?").await;
    let id = h
        .engine
        .start_run("ask", json!(thread), None)
        .await
        .expect("start")
        .value
        .id;
    let state = h.wait_status(id, RunStatus::Waiting).await;
    let items = h.store.open_items_for_run(id).await.expect("items");
    assert_eq!(items.len(), 1);
    let question = &items[0];
    assert_eq!(
        state.run.waiting_for,
        Some(format!("inbox:{}", question.id))
    );
    let resolved = h
        .store
        .answer_question(question.id, "Yes.".into(), "alice", micros(h.clock_now()))
        .await
        .expect("answer");
    assert!(resolved.run_ready);
    h.engine.wake();
    let state = h.wait_status(id, RunStatus::Completed).await;
    let answer = resolved.message.expect("answer");
    assert_eq!(
        state.run.result,
        Some(json!({
            "answer": {"resolution": "answered", "by": "alice", "text": "Yes.",
                       "message_id": answer.id},
            "call": question.message_id,
        }))
    );
    h.finish().await;
}
