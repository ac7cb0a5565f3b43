//! The change stream: every committed write announces what it changed,
//! after the commit, in commit order; a write that fails or replays
//! announces nothing.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tandem_model::{
    Content, InboxKind, NewMessage, Part, ReplyArgs, ReplyRun, Role, RunStatus, Visibility,
};
use tandem_store::{Change, ChangeSink, IdempotencyKey, StoreError, ThreadChange};

use super::support::{TestStore, ai_reply, assert_conflict};
use super::{item, to_humans};

/// Every change it is given, as one line each.
#[derive(Default)]
struct Recorder {
    lines: Mutex<Vec<String>>,
}

impl ChangeSink for Recorder {
    fn apply(&self, changes: &[Change]) {
        let mut lines = self.lines.lock().expect("lines");
        for change in changes {
            lines.push(match change {
                Change::Message(m) => format!("message {} seq {}", m.role, m.seq),
                Change::Thread { thread, kind } => {
                    let kind = match kind {
                        ThreadChange::Created => "created",
                        ThreadChange::Reopened => "reopened",
                        ThreadChange::Updated => "updated",
                    };
                    format!("thread {kind} {} {}", thread.status, thread.assigned_to)
                }
                Change::Assignment(a) => format!("assignment {}", a.assigned_to),
                Change::Item(item) => format!("item {} {}", item.kind, item.status),
                Change::Run { run, kind } => format!("run {} {kind:?} {}", run.name, run.status),
                Change::Agent(agent) => format!("agent {} {}", agent.name, agent.presence),
            });
        }
    }
}

impl Recorder {
    /// What was announced since the last call, once every commit so far
    /// has been delivered.
    async fn take(&self, t: &TestStore) -> Vec<String> {
        t.store.changes_delivered().await;
        std::mem::take(&mut *self.lines.lock().expect("lines"))
    }
}

/// A recorder of what is announced from now on (earlier commits delivered
/// first).
async fn recorder(t: &TestStore) -> Arc<Recorder> {
    t.store.changes_delivered().await;
    let recorder = Arc::new(Recorder::default());
    t.store.subscribe(recorder.clone());
    recorder
}

fn customer(thread: tandem_model::ThreadId, text: &str) -> NewMessage {
    NewMessage {
        role: Role::User,
        agent_name: None,
        author: tandem_model::Author {
            kind: tandem_model::AuthorKind::Customer,
            id: None,
        },
        ..ai_reply(thread, text)
    }
}

#[tokio::test]
async fn every_commit_announces_what_it_changed_in_order() {
    let t = TestStore::fresh().await;
    let seen = recorder(&t).await;
    let thread = t.thread().await;
    assert_eq!(seen.take(&t).await, ["thread created open unassigned"]);

    t.customer_says(thread.id, "Where is my parcel?").await;
    let opened = t
        .store
        .open_inbox_item(item(InboxKind::Handoff, thread.id))
        .await
        .expect("open");
    t.store
        .assign_thread(to_humans(thread.id, "a person should answer"))
        .await
        .expect("assign");
    assert_eq!(
        seen.take(&t).await,
        [
            "message user seq 1",
            "item handoff open",
            "thread updated open human",
            "assignment human",
        ]
    );

    // A human's public reply answers the handoff in the same commit: the
    // message first, then the item in its final state.
    let reply = NewMessage {
        role: Role::Assistant,
        agent_name: Some("Sam".into()),
        author: tandem_model::Author {
            kind: tandem_model::AuthorKind::Human,
            id: Some("Sam".into()),
        },
        ..ai_reply(thread.id, "It is on its way.")
    };
    t.store
        .post_message(reply, None, None)
        .await
        .expect("reply");
    assert_eq!(
        seen.take(&t).await,
        ["message assistant seq 2", "item handoff resolved"]
    );
    let answered = t
        .store
        .get_inbox_item(opened.id)
        .await
        .expect("read")
        .expect("item");
    assert_eq!(answered.status.as_str(), "resolved");

    // Closing the thread, then a customer message that reopens it.
    t.store
        .update_thread(
            thread.id,
            tandem_model::ThreadPatch {
                title: None,
                status: Some(tandem_model::ThreadStatus::Closed),
                metadata: None,
            },
        )
        .await
        .expect("close");
    t.customer_says(thread.id, "One more thing").await;
    assert_eq!(
        seen.take(&t).await,
        [
            "thread updated closed human",
            "message user seq 3",
            "thread reopened open human",
        ]
    );
    t.finish().await;
}

#[tokio::test]
async fn a_write_that_fails_or_replays_announces_nothing() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let seen = recorder(&t).await;

    // The message is inserted, then refused for its tool result: the
    // transaction rolls back, and nothing was announced.
    let orphan = NewMessage {
        role: Role::Tool,
        visibility: Visibility::Internal,
        content: Content::Parts(vec![Part::ToolResult {
            tool_call_id: "call_404".into(),
            name: "lookup".into(),
            result: json!({}),
            is_error: false,
        }]),
        ..ai_reply(thread.id, "")
    };
    let refused = t.store.post_message(orphan, None, None).await;
    assert!(
        matches!(
            refused,
            Err(StoreError::Invalid {
                code: "unknown_tool_call",
                ..
            })
        ),
        "{refused:?}"
    );

    // Writes committed together with failing ones (SQLite commits
    // concurrent writes in one transaction): only the ones that stood are
    // announced.
    let mut writes = Vec::new();
    for i in 0..20 {
        let store = t.store.clone();
        let new = if i % 2 == 0 {
            customer(thread.id, &format!("message {i}"))
        } else {
            NewMessage {
                thread_id: tandem_model::ThreadId::new(),
                ..customer(thread.id, "to a thread that does not exist")
            }
        };
        writes.push(tokio::spawn(async move {
            store.post_message(new, None, None).await
        }));
    }
    let mut stored = 0;
    for write in writes {
        match write.await.expect("task") {
            Ok(_) => stored += 1,
            Err(StoreError::NotFound("thread")) => {}
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!(stored, 10);
    let announced = seen.take(&t).await;
    assert_eq!(announced.len(), 10, "{announced:?}");
    let seqs: Vec<String> = (1..=10)
        .map(|seq| format!("message user seq {seq}"))
        .collect();
    assert_eq!(announced, seqs, "in commit order");

    // A retried write with the same key replays the first answer and
    // changes nothing: nothing to announce.
    let key = IdempotencyKey {
        scope: "test".into(),
        key: "k1".into(),
        request_hash: "h".into(),
    };
    let first = t
        .store
        .post_message(customer(thread.id, "once"), None, Some(key.clone()))
        .await
        .expect("first");
    let again = t
        .store
        .post_message(customer(thread.id, "once"), None, Some(key))
        .await
        .expect("again");
    assert!(again.replayed);
    assert_eq!(again.value.id, first.value.id);
    assert_eq!(seen.take(&t).await, ["message user seq 11"]);
    t.finish().await;
}

#[tokio::test]
async fn a_customer_message_and_its_reply_run_commit_together() {
    let t = TestStore::fresh().await;
    let thread = t.thread().await;
    let seen = recorder(&t).await;
    let node = t.store.node().to_owned();
    let reply_run = ReplyRun {
        version: "7".into(),
        ready_at: 1_000,
        lease: Some((node.clone(), i64::MAX / 2)),
    };

    let message = t
        .store
        .post_message(customer(thread.id, "Hello?"), Some(reply_run.clone()), None)
        .await
        .expect("post")
        .value;
    assert_eq!(
        seen.take(&t).await,
        ["message user seq 1", "run reply Created running"]
    );
    let runs = t
        .store
        .unfinished_reply_runs(thread.id)
        .await
        .expect("runs");
    assert_eq!(runs.len(), 1);
    let run = t.store.get_run(runs[0]).await.expect("read").expect("run");
    assert_eq!(run.version, "7");
    assert_eq!(run.status, RunStatus::Running);
    assert_eq!(
        run.held_by.as_deref(),
        Some(node.as_str()),
        "leased as asked"
    );
    let args: ReplyArgs = serde_json::from_value(run.args).expect("reply args");
    assert_eq!(
        args,
        ReplyArgs {
            thread_id: thread.id,
            message_id: message.id,
            seq: message.seq,
        }
    );

    // A message that is not stored starts no run: both or neither.
    let mut foreign = customer(thread.id, "not my thread");
    foreign.customer_scope = Some("someone else".into());
    let refused = t
        .store
        .post_message(foreign, Some(reply_run.clone()), None)
        .await;
    assert!(
        matches!(refused, Err(StoreError::NotFound("thread"))),
        "{refused:?}"
    );
    let mut taken = customer(thread.id, "same id again");
    taken.id = Some(message.id);
    assert_conflict(
        t.store.post_message(taken, Some(reply_run), None).await,
        "message_exists",
    );
    assert_eq!(
        t.store
            .unfinished_reply_runs(thread.id)
            .await
            .expect("runs")
            .len(),
        1
    );
    assert!(seen.take(&t).await.is_empty());
    t.finish().await;
}
