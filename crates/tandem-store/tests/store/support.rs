//! A fresh store per test, on the backend `TANDEM_TEST_DATABASE_URL`
//! selects ([`TestDatabase`]).

use chrono::Utc;
use serde_json::json;
use tandem_model::{
    Author, AuthorKind, Content, JournalWrite, Lease, MessageStatus, NewMessage, NewRun, NewThread,
    Role, StepStatus, StoreEffect, Thread, ThreadId, Visibility,
};
use tandem_store::testing::TestDatabase;
use tandem_store::{StepCommit, Store, StoreError, micros};

pub struct TestStore {
    pub store: Store,
    db: TestDatabase,
}

impl TestStore {
    pub async fn fresh() -> Self {
        let db = TestDatabase::fresh().await;
        let store = Store::connect(&db.options()).await.expect("connect");
        store.migrate().await.expect("migrate");
        Self { store, db }
    }

    pub async fn finish(self) {
        self.store.close().await;
        self.db.drop().await;
    }

    pub async fn thread(&self) -> Thread {
        self.store
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
    }

    /// The customer writes; returns the message's seq.
    pub async fn customer_says(&self, thread: ThreadId, text: &str) -> i64 {
        let message = NewMessage {
            author: Author {
                kind: AuthorKind::Customer,
                id: None,
            },
            role: Role::User,
            agent_name: None,
            ..ai_reply(thread, text)
        };
        self.store
            .post_message(message, None, None)
            .await
            .expect("customer message")
            .value
            .seq
    }

    /// A run leased to this process, as an executor holds it.
    pub async fn run(&self) -> Executor {
        let now = micros(Utc::now());
        let run = self
            .store
            .create_run(
                NewRun {
                    name: "reply".into(),
                    version: "1".into(),
                    args: json!({}),
                    has_on_complete: false,
                },
                now,
                Some((self.store.node().to_owned(), now + 3_600_000_000)),
                None,
            )
            .await
            .expect("run")
            .value;
        Executor {
            store: self.store.clone(),
            lease: Lease {
                run_id: run.id,
                owner: self.store.node().to_owned(),
                generation: run.generation,
            },
        }
    }
}

/// Commits journal entries for a run, as the engine does.
pub struct Executor {
    store: Store,
    pub lease: Lease,
}

impl Executor {
    /// Journals step `seq` with `effect`, its output the effect's.
    pub async fn effect(
        &self,
        seq: i64,
        kind: &str,
        effect: StoreEffect,
    ) -> Result<tandem_model::Committed, StoreError> {
        self.commit(
            vec![entry(seq, kind, StepStatus::Completed)],
            Some(effect),
            tandem_model::RunUpdate::Continue,
        )
        .await
    }

    /// Journals a pending wait for `event` at step `seq` and suspends.
    pub async fn wait_for(&self, seq: i64, event: &str) -> tandem_model::Committed {
        let mut wait = entry(seq, "wait_event", StepStatus::Pending);
        wait.name = event.to_owned();
        wait.finished_at = None;
        self.commit(
            vec![wait],
            None,
            tandem_model::RunUpdate::Suspend {
                ready_at: None,
                waiting_for: Some(event.to_owned()),
            },
        )
        .await
        .expect("suspend")
    }

    async fn commit(
        &self,
        writes: Vec<JournalWrite>,
        effect: Option<StoreEffect>,
        update: tandem_model::RunUpdate,
    ) -> Result<tandem_model::Committed, StoreError> {
        let now = micros(Utc::now());
        self.store
            .commit_steps(StepCommit {
                lease: self.lease.clone(),
                effect: effect.map(|e| (writes.len() - 1, e)),
                writes,
                update,
                now,
                lease_until: now + 3_600_000_000,
            })
            .await
    }
}

fn entry(seq: i64, kind: &str, status: StepStatus) -> JournalWrite {
    JournalWrite {
        seq,
        kind: kind.to_owned(),
        name: kind.to_owned(),
        status,
        output: None,
        error: None,
        attempts: 1,
        wake_at: None,
        started_at: Utc::now(),
        finished_at: Some(Utc::now()),
        consumes: None,
    }
}

/// The AI agent "Ada"'s public reply.
pub fn ai_reply(thread: ThreadId, text: &str) -> NewMessage {
    NewMessage {
        id: None,
        thread_id: thread,
        role: Role::Assistant,
        agent_name: Some("Ada".into()),
        author: Author {
            kind: AuthorKind::Ai,
            id: Some("Ada".into()),
        },
        content: Content::Text(text.into()),
        visibility: Visibility::Public,
        status: MessageStatus::Published,
        metadata: json!({"provider": "test-model"}),
        reply_to: None,
        customer_scope: None,
    }
}

/// Asserts a 409-style refusal with this code.
#[track_caller]
pub fn assert_conflict<T: std::fmt::Debug>(result: Result<T, StoreError>, expected: &str) {
    match result {
        Err(StoreError::Conflict { code, .. }) if code == expected => {}
        other => panic!("expected conflict {expected:?}, got {other:?}"),
    }
}
