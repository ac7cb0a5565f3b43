//! What the suites share: a fresh database ([`TestDatabase`]), a folder of
//! definitions loaded into an engine on a manual clock, restartable; the
//! waits and views of a run the tests assert on.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};
use tandem_model::{
    AssignedTo, Content, Message, MessageFilter, NewThread, RunId, RunStatus, StepStatus, ThreadId,
};
use tandem_store::ManualClock;
use tandem_store::testing::TestDatabase;
use tandem_store::{DatabaseOptions, Store, Synchronous};
use tandem_workflows::declarative::Services;
use tandem_workflows::engine::RunState;
use tandem_workflows::{Engine, EngineConfig, Registry, Signer, load_definitions};

/// The public URL resume URLs start with.
pub const PUBLIC_URL: &str = "http://tandem.test";

/// A store and an engine running the definitions in `workflows/`, and
/// `remote`: the system outside Tandem that a suite's workflows call, faked
/// (the payments system, the scripted model).
pub struct Harness<R> {
    /// Holds `workflows/`; a test may add folders of its own.
    pub dir: tempfile::TempDir,
    db: TestDatabase,
    pub store: Store,
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    pub signer: Signer,
    services: Services,
    pub remote: R,
}

impl<R> Harness<R> {
    /// A fresh store, `files` (name, source) written to `workflows/` and
    /// loaded with `services`, and a started engine.
    pub async fn launch(files: &[(&str, String)], services: Services, remote: R) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        let db = TestDatabase::fresh().await;
        let options = DatabaseOptions {
            // No fsync per commit (SQLite): these tests do not survive power losses.
            synchronous: Synchronous::Normal,
            ..db.options()
        };
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let store = Store::connect_with_clock(&options, clock.clone())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");

        let definitions = dir.path().join("workflows");
        std::fs::create_dir(&definitions).expect("write the definitions");
        for (name, source) in files {
            std::fs::write(definitions.join(name), source).expect("write the definitions");
        }
        let signer = Signer::new("test-secret", PUBLIC_URL, Duration::from_secs(300));
        let engine = engine(&store, &definitions, &signer, &services).await;
        Self {
            dir,
            db,
            store,
            engine,
            clock,
            signer,
            services,
            remote,
        }
    }

    pub fn definitions(&self) -> PathBuf {
        self.dir.path().join("workflows")
    }

    /// Stops the engine and starts another on the same store, with the
    /// definitions loaded afresh: what a server restart does.
    pub async fn restart(&mut self) {
        self.engine.shutdown().await;
        self.engine = engine(
            &self.store,
            &self.definitions(),
            &self.signer,
            &self.services,
        )
        .await;
    }

    /// Stops the engine, closes the store and removes the database.
    pub async fn finish(self) {
        self.engine.shutdown().await;
        self.store.close().await;
        self.db.drop().await;
    }

    /// A new thread of the customer `cust-1`.
    pub async fn thread(&self) -> ThreadId {
        let new = NewThread {
            customer_id: "cust-1".into(),
            title: None,
            metadata: json!({}),
        };
        self.store
            .create_thread(new, None)
            .await
            .expect("create")
            .value
            .id
    }

    pub async fn start_run(&self, name: &str, args: Value) -> RunId {
        self.engine
            .start_run(name, args, None)
            .await
            .expect("start the run")
            .value
            .id
    }

    pub async fn state(&self, run: RunId) -> RunState {
        self.engine
            .state(run)
            .await
            .expect("store")
            .expect("the run exists")
    }

    /// Polls the run until `done` holds of it.
    pub async fn until(
        &self,
        run: RunId,
        what: &str,
        done: impl Fn(&RunState) -> bool,
    ) -> RunState {
        eventually(what, || async {
            let state = self.state(run).await;
            done(&state).then_some(state)
        })
        .await
    }

    pub async fn until_finished(&self, run: RunId) -> RunState {
        self.until(run, "the run to finish", |s| s.run.status.is_finished())
            .await
    }

    /// Waits for the run to finish, and fails unless it completed.
    pub async fn until_completed(&self, run: RunId) -> RunState {
        let state = self.until_finished(run).await;
        assert_eq!(
            state.run.status,
            RunStatus::Completed,
            "{:?}",
            state.run.error
        );
        state
    }

    /// Waits for the run to finish, and fails unless it failed.
    pub async fn until_failed(&self, run: RunId) -> RunState {
        let state = self.until_finished(run).await;
        assert_eq!(
            state.run.status,
            RunStatus::Failed,
            "{:?}",
            state.run.result
        );
        state
    }

    pub async fn assigned_to(&self, thread: ThreadId) -> AssignedTo {
        self.store
            .get_thread(thread, None)
            .await
            .expect("store")
            .expect("the thread exists")
            .assigned_to
    }

    /// The thread's messages, as its customer sees them or all of them.
    pub async fn messages(&self, thread: ThreadId, customer_view: bool) -> Vec<Message> {
        let filter = MessageFilter {
            after_seq: 0,
            limit: 100,
            customer_view,
        };
        self.store
            .list_messages(thread, &filter)
            .await
            .expect("store")
    }

    /// The texts of [`Harness::messages`].
    pub async fn texts(&self, thread: ThreadId, customer_view: bool) -> Vec<String> {
        let messages = self.messages(thread, customer_view).await;
        messages.iter().map(|m| text(m).to_owned()).collect()
    }
}

/// An engine on `store`, whose clock it follows.
async fn engine(store: &Store, dir: &Path, signer: &Signer, services: &Services) -> Engine {
    let mut registry = Registry::new();
    load_definitions(store, dir, &mut registry, services)
        .await
        .expect("the definitions load");
    let config = EngineConfig {
        poll_interval_ms: 50,
        ..EngineConfig::default()
    };
    let engine = Engine::new(store.clone(), registry, &config, signer.clone());
    engine.start().await.expect("start the engine");
    engine
}

/// Polls `check` every 10 ms until it returns a value, for at most 30 s (a
/// bound for a busy 2-core CI machine, where a 500-turn loop on PostgreSQL
/// takes over 10 s; no test asserts speed with it).
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn text(message: &Message) -> &str {
    match &message.content {
        Content::Text(text) => text,
        Content::Parts(_) => "",
    }
}

/// The journal as `(kind, name, status, attempts)`, inbox events named
/// `inbox:…`.
pub fn journal(state: &RunState) -> Vec<(String, String, StepStatus, i64)> {
    state
        .journal
        .iter()
        .map(|e| {
            let name = if e.name.starts_with("inbox:") {
                "inbox:…".to_owned()
            } else {
                e.name.clone()
            };
            (e.kind.clone(), name, e.status, e.attempts)
        })
        .collect()
}

/// Fails unless a run's or a step's `error` says `part`.
#[track_caller]
pub fn assert_mentions(error: &Value, part: &str) {
    let message = error["message"].as_str().unwrap_or_default();
    assert!(message.contains(part), "{part:?} is not in {error}");
}

/// A journal entry as [`journal`] shows it.
pub fn step(
    kind: &str,
    name: &str,
    status: StepStatus,
    attempts: i64,
) -> (String, String, StepStatus, i64) {
    (kind.into(), name.into(), status, attempts)
}

/// The journaled output of the step `name` (its last entry).
pub fn output(state: &RunState, kind: &str, name: &str) -> Value {
    state
        .journal
        .iter()
        .rev()
        .find(|e| e.kind == kind && e.name == name)
        .and_then(|e| e.output.clone())
        .unwrap_or_else(|| panic!("no {kind} {name:?} output in {:#?}", state.journal))
}
