//! The store side of the AI reply path, on SQLite, or on PostgreSQL when
//! `TANDEM_TEST_DATABASE_URL` is set: replies that check the thread in
//! their own transaction, inbox items opened by runs and resolved by
//! people (with the run told in the same transaction), routing settings
//! and examples, token usage.

mod changes;
mod support;

use chrono::{Duration, Utc};
use serde_json::{Value, json};
use support::{TestStore, ai_reply, assert_conflict};
use tandem_model::names::ASK_HUMAN_TOOL;
use tandem_model::{
    AssignedTo, Content, EffectOutput, InboxFilter, InboxKind, InboxResolution, InboxStatus,
    InboxStatuses, MessageFilter, MessageId, MessageStatus, NewAssignment, NewInboxItem,
    NewMessage, NewRoutingExample, OpenItem, Part, Responder, Role, RunStatus, SkipReason,
    StoreEffect, ThreadId, UsageRecord, Visibility,
};
use tandem_store::{StoreError, micros};

fn all_messages() -> MessageFilter {
    MessageFilter {
        after_seq: 0,
        limit: 100,
        customer_view: false,
    }
}

fn customer_view() -> MessageFilter {
    MessageFilter {
        customer_view: true,
        ..all_messages()
    }
}

fn item(kind: InboxKind, thread: ThreadId) -> NewInboxItem {
    NewInboxItem {
        kind,
        thread_id: thread,
        message_id: None,
        tool_call_id: None,
        body: None,
        suggestion: None,
        reason: None,
        due_at: None,
        due_in: None,
        team: None,
        priority: tandem_model::Priority::Normal,
        run_id: None,
    }
}

fn to_humans(thread: ThreadId, reason: &str) -> NewAssignment {
    NewAssignment {
        thread_id: thread,
        assigned_to: AssignedTo::Human,
        assignee: None,
        team: None,
        reason: Some(reason.into()),
        by_kind: "ai".into(),
        by_id: Some("Ada".into()),
    }
}

/// The AI's internal draft, waiting for approval.
fn draft(thread: ThreadId, text: &str, reply_to: MessageId) -> NewMessage {
    NewMessage {
        visibility: Visibility::Internal,
        status: MessageStatus::PendingApproval,
        reply_to: Some(reply_to),
        metadata: json!({"provider": "test-model", "confidence": 0.9}),
        ..ai_reply(thread, text)
    }
}

fn now() -> i64 {
    micros(Utc::now())
}

// 1. Replies

#[tokio::test]
async fn a_reply_is_posted_when_nothing_newer_came_and_the_ai_still_answers() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let asked = t.customer_says(thread.id, "Where is my parcel?").await;
    // An assistant message after the question does not make it stale.
    t.store
        .post_message(ai_reply(thread.id, "Looking…"), None, None)
        .await
        .expect("note");
    let run = t.run().await;
    let id = MessageId::new();
    let committed = run
        .effect(
            0,
            "post_reply",
            StoreEffect::PostReply {
                message: NewMessage {
                    id: Some(id),
                    ..ai_reply(thread.id, "It arrives Tuesday.")
                },
                after_seq: asked,
                follow_up: false,
            },
        )
        .await
        .expect("commit");
    let Some(EffectOutput::Message(posted)) = committed.effect else {
        panic!("expected a posted message, got {:?}", committed.effect);
    };
    assert_eq!(posted.id, id, "the id the run chose");
    assert_eq!(posted.seq, 3);
    let journal = t.store.journal(run.lease.run_id).await.expect("journal");
    assert_eq!(
        journal[0].output.as_ref().and_then(|m| m.get("id")),
        Some(&json!(id))
    );
    t.finish().await;
}

#[tokio::test]
async fn a_reply_is_skipped_when_the_customer_wrote_again() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let asked = t.customer_says(thread.id, "Where is my parcel?").await;
    t.customer_says(thread.id, "Actually, cancel it.").await;
    let run = t.run().await;
    let committed = run
        .effect(
            0,
            "post_reply",
            StoreEffect::PostReply {
                message: ai_reply(thread.id, "It arrives Tuesday."),
                after_seq: asked,
                follow_up: false,
            },
        )
        .await
        .expect("commit");
    assert!(
        matches!(
            committed.effect,
            Some(EffectOutput::Skipped {
                reason: SkipReason::NewerCustomerMessage
            })
        ),
        "{:?}",
        committed.effect
    );
    let messages = t
        .store
        .list_messages(thread.id, &all_messages())
        .await
        .expect("list");
    assert_eq!(messages.len(), 2, "nothing was posted");
    let journal = t.store.journal(run.lease.run_id).await.expect("journal");
    assert_eq!(
        journal[0].output,
        Some(json!({"skipped": "newer_customer_message"}))
    );
    t.finish().await;
}

#[tokio::test]
async fn a_reply_is_skipped_when_the_thread_went_to_humans_and_never_posted_twice() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let asked = t.customer_says(thread.id, "I want a human.").await;
    let run = t.run().await;
    run.effect(
        0,
        "assign",
        StoreEffect::Assign(to_humans(thread.id, "asked for one")),
    )
    .await
    .expect("assign");
    let reply = StoreEffect::PostReply {
        message: ai_reply(thread.id, "I can help!"),
        after_seq: asked,
        follow_up: false,
    };
    let committed = run
        .effect(1, "post_reply", reply.clone())
        .await
        .expect("commit");
    assert!(
        matches!(
            committed.effect,
            Some(EffectOutput::Skipped {
                reason: SkipReason::AssignedToHuman
            })
        ),
        "{:?}",
        committed.effect
    );
    assert_eq!(
        t.store.journal(run.lease.run_id).await.expect("journal")[1].output,
        Some(json!({"skipped": "assigned_to_human"}))
    );

    // Replayed on another thread that would take it, the step is already
    // journaled: the commit fails whole, and nothing is posted.
    let other = t.thread().await;
    let again = run
        .effect(
            1,
            "post_reply",
            StoreEffect::PostReply {
                message: ai_reply(other.id, "I can help!"),
                after_seq: 0,
                follow_up: false,
            },
        )
        .await;
    assert_conflict(again, "step_committed");
    assert!(
        t.store
            .list_messages(other.id, &all_messages())
            .await
            .expect("list")
            .is_empty(),
        "the refused commit posted nothing"
    );
    t.finish().await;
}

#[tokio::test]
async fn a_reply_step_commits_once_even_when_committed_again() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let asked = t.customer_says(thread.id, "Hello?").await;
    let run = t.run().await;
    let reply = StoreEffect::PostReply {
        message: ai_reply(thread.id, "Hello!"),
        after_seq: asked,
        follow_up: false,
    };
    run.effect(0, "post_reply", reply.clone())
        .await
        .expect("first");
    assert_conflict(run.effect(0, "post_reply", reply).await, "step_committed");
    let messages = t
        .store
        .list_messages(thread.id, &all_messages())
        .await
        .expect("list");
    assert_eq!(messages.len(), 2, "the reply was posted once");
    t.finish().await;
}

/// A customer message racing the reply either commits first (the reply is
/// skipped) or after it (and comes after it in the thread): a reply never
/// lands after a customer message it did not see.
#[tokio::test]
async fn a_reply_racing_a_customer_message_never_lands_after_it() {
    let t = TestStore::fresh().await;
    let (mut posted, mut skipped) = (0, 0);
    for _ in 0..20 {
        let thread = t.thread().await;
        let asked = t.customer_says(thread.id, "Hi").await;
        let run = t.run().await;
        let reply = run.effect(
            0,
            "post_reply",
            StoreEffect::PostReply {
                message: ai_reply(thread.id, "Hello!"),
                after_seq: asked,
                follow_up: false,
            },
        );
        let (reply, _) = tokio::join!(reply, t.customer_says(thread.id, "Anyone?"));
        let messages = t
            .store
            .list_messages(thread.id, &all_messages())
            .await
            .expect("list");
        match reply.expect("commit").effect {
            Some(EffectOutput::Message(m)) => {
                posted += 1;
                let newer = messages
                    .iter()
                    .find(|m| m.role == Role::User && m.seq > asked);
                assert!(newer.expect("the second message").seq > m.seq);
            }
            Some(EffectOutput::Skipped {
                reason: SkipReason::NewerCustomerMessage,
            }) => {
                skipped += 1;
                assert_eq!(messages.len(), 2);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    eprintln!("{posted} replies posted first, {skipped} skipped");
    t.finish().await;
}

#[tokio::test]
async fn a_chosen_message_id_is_kept_and_cannot_be_taken_twice() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let id = MessageId::new();
    let message = NewMessage {
        id: Some(id),
        ..ai_reply(thread.id, "first")
    };
    let posted = t
        .store
        .post_message(message.clone(), None, None)
        .await
        .expect("post");
    assert_eq!(posted.value.id, id);
    assert_conflict(
        t.store.post_message(message, None, None).await,
        "message_exists",
    );
    t.finish().await;
}

// 2. Items opened by runs

#[tokio::test]
async fn an_escalation_opens_its_item_and_hands_the_thread_to_humans_in_one_step() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    t.customer_says(thread.id, "This is the third time!").await;
    let run = t.run().await;
    let committed = run
        .effect(
            0,
            "open_item",
            StoreEffect::OpenItem(OpenItem {
                message: None,
                item: NewInboxItem {
                    suggestion: Some("Offer a refund.".into()),
                    reason: Some("the customer is upset".into()),
                    ..item(InboxKind::Escalation, thread.id)
                },
                assign: Some(to_humans(thread.id, "escalated")),
            }),
        )
        .await
        .expect("commit");
    let Some(EffectOutput::Item {
        message: None,
        item,
        thread: Some(assigned),
    }) = committed.effect
    else {
        panic!("expected an item and a thread, got {:?}", committed.effect);
    };
    assert_eq!(item.kind, InboxKind::Escalation);
    assert_eq!(item.status, InboxStatus::Open);
    assert_eq!(item.suggestion.as_deref(), Some("Offer a refund."));
    assert_eq!(assigned.assigned_to, AssignedTo::Human);
    let stored = t
        .store
        .get_thread(thread.id, None)
        .await
        .expect("get")
        .expect("thread");
    assert_eq!(stored.assigned_to, AssignedTo::Human);
    // The journal holds what a replay returns: the opened item.
    let journal = t.store.journal(run.lease.run_id).await.expect("journal");
    let opened: tandem_model::OpenedItem =
        serde_json::from_value(journal[0].output.clone().expect("output")).expect("decode");
    assert_eq!(opened.item, item);
    assert_eq!(opened.thread, Some(assigned));
    assert_eq!(opened.message, None);
    t.finish().await;
}

#[tokio::test]
async fn an_item_whose_parts_name_other_threads_is_refused_whole() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let other = t.thread().await;
    let run = t.run().await;
    let refused = run
        .effect(
            0,
            "open_item",
            StoreEffect::OpenItem(OpenItem {
                message: Some(ai_reply(thread.id, "draft")),
                item: item(InboxKind::Handoff, thread.id),
                assign: Some(to_humans(other.id, "wrong thread")),
            }),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Invalid {
                code: "thread_mismatch",
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(
        t.store
            .list_messages(thread.id, &all_messages())
            .await
            .expect("list")
            .is_empty()
    );
    t.finish().await;
}

/// A run asks a human (an `ask_human` tool call and a `question` item),
/// then waits for the item's event.
async fn ask(t: &TestStore, thread: ThreadId) -> (support::Executor, tandem_model::InboxItem) {
    let run = t.run().await;
    let call = NewMessage {
        visibility: Visibility::Internal,
        content: Content::Parts(vec![Part::ToolCall {
            id: "call_1".into(),
            name: ASK_HUMAN_TOOL.into(),
            arguments: json!({"question": "May I refund order 7?"}),
        }]),
        ..ai_reply(thread, "")
    };
    let committed = run
        .effect(
            0,
            "open_item",
            StoreEffect::OpenItem(OpenItem {
                message: Some(call),
                item: NewInboxItem {
                    tool_call_id: Some("call_1".into()),
                    body: Some("May I refund order 7?".into()),
                    run_id: Some(run.lease.run_id),
                    ..item(InboxKind::Question, thread)
                },
                assign: None,
            }),
        )
        .await
        .expect("open");
    let Some(EffectOutput::Item {
        message: Some(posted),
        item,
        thread: None,
    }) = committed.effect
    else {
        panic!("expected a message and an item, got {:?}", committed.effect);
    };
    assert_eq!(
        item.message_id,
        Some(posted.id),
        "the item is about the call"
    );
    assert_eq!(item.run_id, Some(run.lease.run_id));
    (run, item)
}

// 3. Resolutions

#[tokio::test]
async fn an_answer_becomes_the_tool_result_and_wakes_the_waiting_run_in_the_same_write() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    t.customer_says(thread.id, "Refund order 7, please.").await;
    let (run, question) = ask(&t, thread.id).await;
    let event = format!("inbox:{}", question.id);
    let waiting = run.wait_for(1, &event).await;
    assert_eq!(waiting.run.status, RunStatus::Waiting);

    let woken_at = now();
    let resolved = t
        .store
        .answer_question(question.id, "Yes, refund it.".into(), "alice", woken_at)
        .await
        .expect("answer");
    assert_eq!(resolved.item.status, InboxStatus::Resolved);
    assert_eq!(resolved.item.resolution, Some(InboxResolution::Answered));
    assert_eq!(resolved.item.resolved_by.as_deref(), Some("alice"));
    assert!(resolved.item.resolved_at.is_some());
    assert!(resolved.run_ready);
    let run_after = resolved.run.clone().expect("run");
    assert_eq!(run_after.status, RunStatus::Running);
    assert_eq!(run_after.waiting_for, None);
    assert_eq!(run_after.wake_at.map(micros), Some(woken_at));

    let answer = resolved.message.clone().expect("answer");
    assert_eq!(answer.role, Role::Tool);
    assert_eq!(answer.visibility, Visibility::Internal);
    assert_eq!(answer.status, MessageStatus::Published);
    assert_eq!(answer.agent_name.as_deref(), Some("alice"));
    assert_eq!(answer.author.id.as_deref(), Some("alice"));
    assert_eq!(answer.reply_to, question.message_id);
    assert_eq!(
        answer.metadata,
        json!({"provider": "human", "providerMetadata": {"human": {"name": "alice"}}})
    );
    assert_eq!(
        answer.content,
        Content::Parts(vec![Part::ToolResult {
            tool_call_id: "call_1".into(),
            name: "ask_human".into(),
            result: json!({"answer": "Yes, refund it."}),
            is_error: false,
        }])
    );

    let events = t
        .store
        .run_events(run.lease.run_id, false)
        .await
        .expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].name, event);
    assert_eq!(
        events[0].payload,
        json!({"resolution": "answered", "by": "alice", "text": "Yes, refund it.",
               "message_id": answer.id})
    );

    // Answered once: a second answer is refused, and changes nothing.
    assert_conflict(
        t.store
            .answer_question(question.id, "No!".into(), "bob", now())
            .await,
        "item_closed",
    );
    let messages = t
        .store
        .list_messages(thread.id, &all_messages())
        .await
        .expect("list");
    assert_eq!(messages.len(), 3);
    assert_eq!(
        t.store
            .run_events(run.lease.run_id, false)
            .await
            .expect("events")
            .len(),
        1
    );
    t.finish().await;
}

#[tokio::test]
async fn an_answer_before_the_run_waits_is_kept_for_the_wait() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let (run, question) = ask(&t, thread.id).await;
    let resolved = t
        .store
        .answer_question(question.id, "Yes.".into(), "alice", now())
        .await
        .expect("answer");
    assert!(!resolved.run_ready, "the run was not waiting yet");
    // The run's wait then finds the event already there.
    let waited = run.wait_for(1, &format!("inbox:{}", question.id)).await;
    assert_eq!(waited.run.status, RunStatus::Running);
    t.finish().await;
}

#[tokio::test]
async fn resolutions_refuse_unknown_items_and_items_of_another_kind() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let (_run, question) = ask(&t, thread.id).await;
    let missing = tandem_model::InboxItemId::new();
    assert!(matches!(
        t.store
            .answer_question(missing, "x".into(), "alice", now())
            .await,
        Err(StoreError::NotFound("inbox item"))
    ));
    assert_conflict(
        t.store
            .approve_draft(question.id, None, "alice", now())
            .await,
        "wrong_item_kind",
    );
    assert_conflict(
        t.store
            .reject_draft(question.id, "no".into(), "alice", now())
            .await,
        "wrong_item_kind",
    );
    let still = t
        .store
        .get_inbox_item(question.id)
        .await
        .expect("get")
        .expect("item");
    assert_eq!(still.status, InboxStatus::Open);
    t.finish().await;
}

/// A run drafts a reply to the customer's message and waits for approval.
async fn drafted(
    t: &TestStore,
    text: &str,
) -> (ThreadId, support::Executor, tandem_model::InboxItem) {
    let thread = t.thread().await;
    let seq = t.customer_says(thread.id, "Can I return shoes?").await;
    let asked = t
        .store
        .list_messages(thread.id, &all_messages())
        .await
        .expect("list");
    let asked = asked.iter().find(|m| m.seq == seq).expect("question").id;
    let run = t.run().await;
    let committed = run
        .effect(
            0,
            "open_item",
            StoreEffect::OpenItem(OpenItem {
                message: Some(draft(thread.id, text, asked)),
                item: NewInboxItem {
                    body: Some(text.into()),
                    run_id: Some(run.lease.run_id),
                    ..item(InboxKind::Approval, thread.id)
                },
                assign: None,
            }),
        )
        .await
        .expect("draft");
    let Some(EffectOutput::Item { item, .. }) = committed.effect else {
        panic!("expected an item");
    };
    run.wait_for(1, &format!("inbox:{}", item.id)).await;
    (thread.id, run, item)
}

#[tokio::test]
async fn an_edited_approval_publishes_the_edit_as_the_next_seq_and_the_draft_stays_internal() {
    let t = TestStore::fresh().await;
    let (thread, run, approval) = drafted(&t, "Yes, within 30 days.").await;
    assert!(
        t.store
            .list_messages(thread, &customer_view())
            .await
            .expect("list")
            .len()
            == 1,
        "the customer sees no draft"
    );
    let resolved = t
        .store
        .approve_draft(
            approval.id,
            Some("Yes, within 30 days, unworn.".into()),
            "alice",
            now(),
        )
        .await
        .expect("approve");
    assert_eq!(resolved.item.resolution, Some(InboxResolution::Approved));
    assert!(resolved.run_ready);
    let draft = resolved.draft.clone().expect("draft");
    assert_eq!(draft.status, MessageStatus::Approved);
    assert_eq!(draft.visibility, Visibility::Internal);
    let published = resolved.message.clone().expect("published");
    assert_eq!(published.seq, draft.seq + 1);
    assert_eq!(published.role, Role::Assistant);
    assert_eq!(published.visibility, Visibility::Public);
    assert_eq!(published.status, MessageStatus::Published);
    assert_eq!(published.agent_name, draft.agent_name);
    assert_eq!(published.author, draft.author);
    assert_eq!(published.reply_to, draft.reply_to);
    assert_eq!(
        published.content,
        Content::Text("Yes, within 30 days, unworn.".into())
    );
    assert_eq!(
        published.metadata,
        json!({"provider": "test-model", "confidence": 0.9,
               "approval": {"draft_id": draft.id, "approved_by": "alice", "edited": true}})
    );

    let seen = t
        .store
        .list_messages(thread, &customer_view())
        .await
        .expect("list");
    let texts: Vec<_> = seen.iter().map(|m| (m.seq, m.content.clone())).collect();
    assert_eq!(
        texts,
        [
            (1, Content::Text("Can I return shoes?".into())),
            (3, Content::Text("Yes, within 30 days, unworn.".into())),
        ]
    );
    let events = t
        .store
        .run_events(run.lease.run_id, false)
        .await
        .expect("events");
    assert_eq!(
        events[0].payload,
        json!({"resolution": "approved", "by": "alice", "text": "Yes, within 30 days, unworn.",
               "message_id": published.id})
    );
    assert_conflict(
        t.store.approve_draft(approval.id, None, "bob", now()).await,
        "item_closed",
    );
    t.finish().await;
}

#[tokio::test]
async fn an_approval_as_drafted_publishes_the_drafts_content() {
    let t = TestStore::fresh().await;
    let (thread, _run, approval) = drafted(&t, "Yes, within 30 days.").await;
    let resolved = t
        .store
        .approve_draft(approval.id, None, "alice", now())
        .await
        .expect("approve");
    let published = resolved.message.expect("published");
    assert_eq!(
        published.content,
        Content::Text("Yes, within 30 days.".into())
    );
    assert_eq!(published.metadata["approval"]["edited"], json!(false));
    assert_eq!(
        t.store
            .list_messages(thread, &customer_view())
            .await
            .expect("list")
            .len(),
        2
    );
    t.finish().await;
}

#[tokio::test]
async fn a_rejection_records_the_review_and_hands_the_thread_to_humans() {
    let t = TestStore::fresh().await;
    let (thread, run, approval) = drafted(&t, "No returns.").await;
    let resolved = t
        .store
        .reject_draft(approval.id, "We do take returns.".into(), "alice", now())
        .await
        .expect("reject");
    assert_eq!(resolved.item.status, InboxStatus::Resolved);
    assert_eq!(resolved.item.resolution, Some(InboxResolution::Rejected));
    assert_eq!(resolved.item.review.as_deref(), Some("We do take returns."));
    assert!(resolved.message.is_none());
    assert_eq!(
        resolved.draft.expect("draft").status,
        MessageStatus::Rejected
    );
    assert_eq!(
        resolved.thread.expect("thread").assigned_to,
        AssignedTo::Human
    );
    assert!(resolved.run_ready);
    let events = t
        .store
        .run_events(run.lease.run_id, false)
        .await
        .expect("events");
    assert_eq!(
        events[0].payload,
        json!({"resolution": "rejected", "by": "alice", "text": "We do take returns.",
               "message_id": null})
    );
    // A rejected draft can no longer be approved.
    assert_conflict(
        t.store.approve_draft(approval.id, None, "bob", now()).await,
        "item_closed",
    );
    assert_eq!(
        t.store
            .list_messages(thread, &customer_view())
            .await
            .expect("list")
            .len(),
        1,
        "the customer saw nothing of it"
    );
    t.finish().await;
}

#[tokio::test]
async fn a_draft_whose_run_was_cancelled_is_never_approved() {
    let t = TestStore::fresh().await;
    let (_thread, run, approval) = drafted(&t, "Draft.").await;
    t.store
        .cancel_run(run.lease.run_id, now())
        .await
        .expect("cancel");
    let refused = t
        .store
        .approve_draft(approval.id, None, "alice", now())
        .await
        .expect_err("approving a cancelled reply's draft");
    assert!(
        matches!(&refused, StoreError::Conflict { code, .. } if *code == "run_cancelled"),
        "{refused:?}"
    );
    assert!(
        t.store
            .run_events(run.lease.run_id, false)
            .await
            .expect("events")
            .is_empty()
    );
    t.finish().await;
}

// 4. Listing the inbox

#[tokio::test]
async fn the_inbox_lists_the_most_urgent_first_and_pages_by_cursor() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let soon = Utc::now() + Duration::minutes(5);
    let later = Utc::now() + Duration::hours(1);
    let open = |kind, due_at| {
        t.store.open_inbox_item(NewInboxItem {
            due_at,
            ..item(kind, thread.id)
        })
    };
    let undated = open(InboxKind::Handoff, None).await.expect("open");
    let late = open(InboxKind::Escalation, Some(later))
        .await
        .expect("open");
    let urgent = open(InboxKind::Handoff, Some(soon)).await.expect("open");
    let undated2 = open(InboxKind::Handoff, None).await.expect("open");
    let done = open(InboxKind::Handoff, Some(soon)).await.expect("open");
    t.store
        .set_inbox_item_status(done.id, InboxStatus::Resolved, None)
        .await
        .expect("resolve");

    let ids =
        |items: Vec<tandem_model::InboxItem>| items.into_iter().map(|i| i.id).collect::<Vec<_>>();
    let pending = t
        .store
        .list_inbox(&InboxFilter::default())
        .await
        .expect("list");
    assert_eq!(ids(pending), [urgent.id, late.id, undated.id, undated2.id]);

    let mut pages = Vec::new();
    let mut after = None;
    loop {
        let page = t
            .store
            .list_inbox(&InboxFilter {
                after,
                limit: 2,
                ..InboxFilter::default()
            })
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        after = page.last().map(|i| i.id);
        pages.push(ids(page));
    }
    assert_eq!(
        pages,
        [vec![urgent.id, late.id], vec![undated.id, undated2.id]]
    );

    let handoffs = t
        .store
        .list_inbox(&InboxFilter {
            kind: Some(InboxKind::Handoff),
            status: InboxStatuses::All,
            thread_id: Some(thread.id),
            ..InboxFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(handoffs), [urgent.id, done.id, undated.id, undated2.id]);
    let resolved = t
        .store
        .list_inbox(&InboxFilter {
            status: InboxStatuses::Only(InboxStatus::Resolved),
            ..InboxFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(ids(resolved), [done.id]);
    let elsewhere = t
        .store
        .list_inbox(&InboxFilter {
            thread_id: Some(ThreadId::new()),
            ..InboxFilter::default()
        })
        .await
        .expect("list");
    assert!(elsewhere.is_empty());
    t.finish().await;
}

#[tokio::test]
async fn a_runs_open_items_are_found_by_run() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let (run, question) = ask(&t, thread.id).await;
    let open = t
        .store
        .open_items_for_run(run.lease.run_id)
        .await
        .expect("list");
    assert_eq!(open, std::slice::from_ref(&question));
    t.store
        .answer_question(question.id, "yes".into(), "alice", now())
        .await
        .expect("answer");
    assert!(
        t.store
            .open_items_for_run(run.lease.run_id)
            .await
            .expect("list")
            .is_empty()
    );
    t.finish().await;
}

// 5. What prompts are built from

#[tokio::test]
async fn the_prompt_history_is_the_newest_messages_in_order_without_pending_or_rejected_drafts() {
    let t = TestStore::fresh().await;
    let (thread, _run, approval) = drafted(&t, "No returns.").await;
    t.store
        .reject_draft(approval.id, "wrong".into(), "alice", now())
        .await
        .expect("reject");
    for text in ["one", "two", "three"] {
        t.customer_says(thread, text).await;
    }
    let pending = NewMessage {
        visibility: Visibility::Internal,
        status: MessageStatus::PendingApproval,
        ..ai_reply(thread, "pending")
    };
    t.store
        .post_message(pending, None, None)
        .await
        .expect("pending");
    let history = t.store.prompt_history(thread, 3).await.expect("history");
    let seqs: Vec<i64> = history.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [3, 4, 5]);
    let all = t.store.prompt_history(thread, 50).await.expect("history");
    let seqs: Vec<i64> = all.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        [1, 3, 4, 5],
        "the rejected draft (2) and the pending one (6) are left out"
    );
    t.finish().await;
}

// 6. Policy, examples, usage

#[tokio::test]
async fn settings_are_put_and_got() {
    let t = TestStore::fresh().await;
    assert_eq!(
        t.store
            .get_setting(tandem_model::names::POLICY_SETTING)
            .await
            .expect("get"),
        None
    );
    let policy = json!({"order": ["assignment", "classifier", "embeddings"], "threshold": 0.7});
    t.store
        .put_setting(tandem_model::names::POLICY_SETTING, policy.clone())
        .await
        .expect("put");
    assert_eq!(
        t.store.get_setting("policy").await.expect("get"),
        Some(policy)
    );
    let replaced = json!({"order": ["assignment"], "threshold": 0.5, "note": "ünïcode"});
    t.store
        .put_setting("policy", replaced.clone())
        .await
        .expect("put");
    assert_eq!(
        t.store.get_setting("policy").await.expect("get"),
        Some(replaced)
    );
    t.finish().await;
}

#[tokio::test]
async fn routing_examples_keep_their_vectors_bit_for_bit() {
    let t = TestStore::fresh().await;
    let awkward = vec![
        0.1_f32,
        -0.0,
        1.0 / 3.0,
        f32::MIN_POSITIVE,
        1e-40, // subnormal
        f32::MAX,
        -123_456.79,
    ];
    let with = t
        .store
        .add_routing_example(NewRoutingExample {
            text: "Where is my parcel?".into(),
            label: Responder::Ai,
            vector: Some(awkward.clone()),
            vector_model: Some("embed-small".into()),
        })
        .await
        .expect("add");
    let without = t
        .store
        .add_routing_example(NewRoutingExample {
            text: "I want to speak to a manager".into(),
            label: Responder::Human,
            vector: None,
            vector_model: None,
        })
        .await
        .expect("add");
    let refused = t
        .store
        .add_routing_example(NewRoutingExample {
            text: "x".into(),
            label: Responder::Ai,
            vector: Some(vec![1.0]),
            vector_model: None,
        })
        .await;
    assert!(matches!(
        refused,
        Err(StoreError::Invalid {
            code: "invalid_vector",
            ..
        })
    ));

    let stored = t.store.routing_examples().await.expect("list");
    assert_eq!(stored, [with.clone(), without.clone()]);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    assert_eq!(
        bits(stored[0].vector.as_deref().expect("vector")),
        bits(&awkward)
    );

    let computed: Vec<f32> = (0..1536).map(|i| (i as f32).sin() / 7.0).collect();
    t.store
        .set_example_vector(without.id, computed.clone(), "embed-large")
        .await
        .expect("set");
    let stored = t.store.routing_examples().await.expect("list");
    assert_eq!(stored[1].label, Responder::Human);
    assert_eq!(stored[1].vector_model.as_deref(), Some("embed-large"));
    assert_eq!(
        bits(stored[1].vector.as_deref().expect("vector")),
        bits(&computed)
    );
    assert!(matches!(
        t.store
            .set_example_vector(tandem_model::RoutingExampleId::new(), vec![1.0], "m")
            .await,
        Err(StoreError::NotFound("routing example"))
    ));
    t.finish().await;
}

#[tokio::test]
async fn usage_is_recorded_once_per_step_and_summed_per_thread() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let other = t.thread().await;
    let run = t.run().await.lease.run_id;
    let usage = |step_seq, thread_id, purpose: &str, model: &str, prompt, completion| UsageRecord {
        run_id: run,
        step_seq,
        thread_id,
        purpose: purpose.into(),
        model: model.into(),
        prompt_tokens: prompt,
        completion_tokens: completion,
    };
    let first = usage(0, Some(thread.id), "classifier", "small", 100, 5);
    assert!(t.store.record_usage(first.clone()).await.expect("record"));
    assert!(
        !t.store.record_usage(first).await.expect("again"),
        "a step counts once"
    );
    for record in [
        usage(1, Some(thread.id), "embedding", "embed", 12, 0),
        usage(2, Some(thread.id), "reply", "large", 1_000, 200),
        usage(3, Some(thread.id), "reply", "large", 1_500, 300),
        usage(4, Some(other.id), "reply", "large", 9, 9),
        usage(5, None, "embedding", "embed", 7, 0),
    ] {
        assert!(t.store.record_usage(record).await.expect("record"));
    }
    let summed = t.store.thread_usage(thread.id).await.expect("usage");
    assert_eq!(summed.prompt_tokens, 2_612);
    assert_eq!(summed.completion_tokens, 505);
    assert_eq!(summed.total_tokens, 3_117);
    let by_model: Vec<Value> = summed
        .by_model
        .iter()
        .map(|m| {
            json!([
                m.model,
                m.purpose,
                m.prompt_tokens,
                m.completion_tokens,
                m.calls
            ])
        })
        .collect();
    assert_eq!(
        by_model,
        [
            json!(["embed", "embedding", 12, 0, 1]),
            json!(["large", "reply", 2_500, 500, 2]),
            json!(["small", "classifier", 100, 5, 1]),
        ]
    );
    let none = t.store.thread_usage(ThreadId::new()).await.expect("usage");
    assert_eq!(none, tandem_model::ThreadUsage::default());
    t.finish().await;
}
