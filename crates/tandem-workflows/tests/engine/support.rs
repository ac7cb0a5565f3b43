//! A store and an engine on a manual clock, restartable, on the backend
//! `TANDEM_TEST_DATABASE_URL` selects ([`TestDatabase`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tandem_model::{RunId, RunStatus};
use tandem_store::testing::TestDatabase;
use tandem_store::{Clock, ManualClock, Store};
use tandem_workflows::{Engine, EngineConfig, Registry, RunState, Signer};

/// Calls counted by name.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<HashMap<String, usize>>>);

impl Calls {
    pub fn get(&self, name: &str) -> usize {
        self.0.lock().expect("lock").get(name).copied().unwrap_or(0)
    }
}

/// Counts a call; returns how many there have been.
pub fn counter(calls: &Calls, name: &str) -> usize {
    let mut map = calls.0.lock().expect("lock");
    let n = map.entry(name.to_owned()).or_insert(0);
    *n += 1;
    *n
}

pub struct Harness {
    pub store: Store,
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
    registry: Box<dyn Fn() -> Registry>,
    config: EngineConfig,
    db: TestDatabase,
}

impl Harness {
    pub async fn start(registry: impl Fn() -> Registry + 'static) -> Self {
        Self::start_with(registry, |_| {}).await
    }

    pub async fn start_with(
        registry: impl Fn() -> Registry + 'static,
        configure: impl FnOnce(&mut EngineConfig),
    ) -> Self {
        let db = TestDatabase::fresh().await;
        let mut config = EngineConfig {
            poll_interval_ms: 50,
            ..EngineConfig::default()
        };
        configure(&mut config);
        let clock = Arc::new(ManualClock::new(
            "2026-01-01T00:00:00Z".parse().expect("time"),
        ));
        let store = Store::connect_with_clock(&db.options(), clock.clone())
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let engine = new_engine(&store, registry(), &config);
        engine.start().await.expect("start");
        Self {
            store,
            engine,
            clock,
            registry: Box::new(registry),
            config,
            db,
        }
    }

    pub fn is_postgres(&self) -> bool {
        self.db.is_postgres()
    }

    /// Another process on the same database (on its own, system, clock).
    pub async fn second_node(&self) -> Store {
        Store::connect(&self.db.options()).await.expect("connect")
    }

    pub fn clock_now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// Stops the engine and closes the store, as a process exiting.
    pub async fn stop(&mut self) {
        self.engine.shutdown().await;
        self.store.close().await;
    }

    /// A new process on the same database, with the registry built anew.
    pub async fn start_again(&mut self) {
        self.store = Store::connect_with_clock(&self.db.options(), self.clock.clone())
            .await
            .expect("connect");
        self.engine = new_engine(&self.store, (self.registry)(), &self.config);
        self.engine.start().await.expect("start");
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    pub async fn state(&self, id: RunId) -> RunState {
        self.engine
            .state(id)
            .await
            .expect("state")
            .expect("the run exists")
    }

    pub async fn wait_until(&self, id: RunId, done: impl Fn(&RunState) -> bool) -> RunState {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.state(id).await;
            if done(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out; the run is {state:#?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn wait_status(&self, id: RunId, status: RunStatus) -> RunState {
        self.wait_until(id, |s| s.run.status == status).await
    }

    /// Gives the engine time to do what it would wrongly do (a check that
    /// something does *not* happen). Generous against the 50 ms poll.
    pub async fn settle(&self) {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    pub async fn finish(mut self) {
        self.stop().await;
        self.db.drop().await;
    }
}

/// An engine on `store`, whose clock it follows.
fn new_engine(store: &Store, registry: Registry, config: &EngineConfig) -> Engine {
    let signer = Signer::new(
        "test-secret",
        "http://127.0.0.1:1",
        Duration::from_secs(300),
    );
    Engine::new(store.clone(), registry, config, signer)
}

/// Waits for a condition that other tasks make true.
pub async fn eventually(done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
