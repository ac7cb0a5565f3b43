//! The engine: starting runs, delivering events, pausing, resuming and
//! cancelling them, and the dispatcher that hands due runs to executors
//! within each workflow's pool.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_model::{
    ClaimedRun, DeliveredEvent, EventSource, JournalEntry, NewRun, RunId, RunStatus, WorkflowEvent,
    WorkflowRun,
};
use tandem_store::backend::BackendKind;
use tandem_store::{
    Change, ChangeSink, ClaimRequest, Clock, IdempotencyKey, NewEvent, RunChange, Store,
    StoreError, Written, micros,
};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::context::Control;
use crate::error::EngineError;
use crate::executor;
use crate::registry::Registry;
use crate::signing::Signer;

/// How the engine runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Runs of one workflow executing at once on this process, unless
    /// `concurrency` names the workflow.
    pub default_concurrency: usize,
    /// Per workflow name.
    pub concurrency: HashMap<String, usize>,
    /// How long an executor's hold on a run lasts without renewal; a dead
    /// process's runs are taken over after it (at once on PostgreSQL when
    /// the process's connections are gone).
    pub lease_secs: u64,
    /// How often the dispatcher looks for due runs it was not told of
    /// (other processes' runs, expired leases).
    pub poll_interval_ms: u64,
    /// How long a shutdown waits for actions in flight.
    pub shutdown_grace_secs: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            default_concurrency: 64,
            concurrency: HashMap::new(),
            lease_secs: 30,
            poll_interval_ms: 1_000,
            shutdown_grace_secs: 10,
        }
    }
}

/// A run's whole state, as `GET /v1/workflows/{id}` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunState {
    #[serde(flatten)]
    pub run: WorkflowRun,
    pub journal: Vec<JournalEntry>,
    /// Events delivered and not yet taken by a step.
    pub pending_events: Vec<WorkflowEvent>,
    /// Events steps have taken.
    pub consumed_events: Vec<WorkflowEvent>,
}

/// The engine's handle: cheap to clone.
#[derive(Clone)]
pub struct Engine {
    core: Arc<Core>,
}

pub(crate) struct Core {
    pub(crate) store: Store,
    pub(crate) registry: Registry,
    /// The store's clock: timers, deadlines and backoff follow it.
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) signer: Signer,
    pub(crate) config: RuntimeConfig,
    pools: HashMap<String, Arc<Semaphore>>,
    /// Executing runs, and how to tell each to stop.
    active: Mutex<HashMap<RunId, watch::Sender<Control>>>,
    /// Names whose pool was full with runs still due: a freed slot must
    /// wake the dispatcher.
    backlog: Mutex<HashSet<String>>,
    wake: Notify,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

pub(crate) struct RuntimeConfig {
    pub(crate) lease_ttl: Duration,
    poll_interval: Duration,
    shutdown_grace: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Core {
    /// See [`Engine::lease_for`].
    fn lease_for(&self, name: &str) -> Option<(String, i64)> {
        self.has_room(name)
            .then(|| (self.store.node().to_owned(), self.lease_until()))
    }

    /// The end of a lease taken or renewed now (µs, wall clock). Leases
    /// stay on the wall clock, not the store's: another process judges
    /// them by its own clock, so they must hold in real time.
    pub(crate) fn lease_until(&self) -> i64 {
        micros(Utc::now()) + self.config.lease_ttl.as_micros() as i64
    }

    fn now(&self) -> i64 {
        micros(self.clock.now())
    }

    /// Called by an executor as it ends.
    pub(crate) fn executor_done(&self, run: RunId, name: &str) {
        lock(&self.active).remove(&run);
        if lock(&self.backlog).contains(name) {
            self.wake.notify_one();
        }
    }

    /// A slot to execute a run of `name` at once, when there is one and no
    /// queued run is waiting for it (queued runs start in order).
    fn fast_path(&self, name: &str) -> Option<OwnedSemaphorePermit> {
        if !self.has_room(name) {
            return None;
        }
        self.pool(name)?.clone().try_acquire_owned().ok()
    }

    /// Whether a run of `name` created now could start at once here: what
    /// decides whether to lease it to this process as it is created.
    fn has_room(&self, name: &str) -> bool {
        !self.shutdown.is_cancelled()
            && !lock(&self.backlog).contains(name)
            && self
                .pool(name)
                .is_some_and(|pool| pool.available_permits() > 0)
    }

    /// Executes a run created leased to this process, or gives it back to
    /// the queue when the pool filled up meanwhile.
    fn start_leased(self: &Arc<Self>, run: &WorkflowRun) {
        if self.shutdown.is_cancelled() || lock(&self.active).contains_key(&run.id) {
            return;
        }
        let lease = tandem_model::Lease {
            run_id: run.id,
            owner: self.store.node().to_owned(),
            generation: run.generation,
        };
        // Whoever leased a run this process cannot execute knows why.
        let Some(pool) = self
            .registry
            .get(&run.name, &run.version)
            .and_then(|_| self.pool(&run.name))
        else {
            return;
        };
        match pool.clone().try_acquire_owned().ok() {
            Some(permit) => {
                let claimed = ClaimedRun {
                    run: run.clone(),
                    lease,
                    finalize: false,
                };
                self.spawn(claimed, permit, true);
            }
            None => {
                let core = self.clone();
                let name = run.name.clone();
                self.tasks.spawn(async move {
                    if let Err(error) = core.store.release_lease(&lease, None).await {
                        tracing::warn!(%error, "workflows: giving back a run without room failed");
                    }
                    core.poke(&name);
                });
            }
        }
    }

    /// Something of workflow `name` became due: wake the dispatcher.
    pub(crate) fn poke(&self, name: &str) {
        lock(&self.backlog).insert(name.to_owned());
        self.wake.notify_one();
    }

    pub(crate) fn register_active(&self, run: RunId) -> watch::Receiver<Control> {
        let (tx, rx) = watch::channel(if self.shutdown.is_cancelled() {
            Control::Stop
        } else {
            Control::Go
        });
        lock(&self.active).insert(run, tx);
        rx
    }

    fn tell(&self, run: RunId, control: Control) {
        if let Some(tx) = lock(&self.active).get(&run) {
            tx.send_replace(control);
        }
    }

    fn pool(&self, name: &str) -> Option<&Arc<Semaphore>> {
        self.pools.get(name)
    }

    fn spawn(self: &Arc<Self>, claimed: ClaimedRun, permit: OwnedSemaphorePermit, fresh: bool) {
        let Some(def) = self
            .registry
            .get(&claimed.run.name, &claimed.run.version)
            .cloned()
        else {
            return;
        };
        let core = self.clone();
        self.tasks
            .spawn(executor::execute(core, def, claimed, permit, fresh));
    }
}

impl Engine {
    /// An engine running the workflows of `registry` on `store`, whose
    /// clock its timers follow.
    pub fn new(store: Store, registry: Registry, config: &EngineConfig, signer: Signer) -> Self {
        let pools = registry
            .names()
            .map(|name| {
                let size = config
                    .concurrency
                    .get(name)
                    .copied()
                    .unwrap_or(config.default_concurrency)
                    .max(1);
                (name.to_owned(), Arc::new(Semaphore::new(size)))
            })
            .collect();
        Self {
            core: Arc::new(Core {
                clock: store.clock().clone(),
                store,
                registry,
                signer,
                config: RuntimeConfig {
                    lease_ttl: Duration::from_secs(config.lease_secs.max(1)),
                    poll_interval: Duration::from_millis(config.poll_interval_ms.max(10)),
                    shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
                },
                pools,
                active: Mutex::default(),
                backlog: Mutex::default(),
                wake: Notify::new(),
                tasks: TaskTracker::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.core.registry
    }

    pub fn signer(&self) -> &Signer {
        &self.core.signer
    }

    /// The clock the engine reads and waits on: the store's.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.core.clock
    }

    /// Starts the dispatcher, and follows the store's change stream: runs
    /// created leased to this process start, runs that became due wake the
    /// dispatcher, and cancelled or paused runs executing here stop. On
    /// SQLite, one process owns the database, so leases left by an earlier
    /// process are freed first: its runs resume at once.
    pub async fn start(&self) -> Result<(), EngineError> {
        if self.core.store.kind() == BackendKind::Sqlite {
            let freed = self.core.store.release_all_leases().await?;
            if freed > 0 {
                tracing::info!(
                    runs = freed,
                    "workflows: resuming runs left by the previous process"
                );
            }
        }
        self.core.store.subscribe(Arc::new(FollowChanges {
            core: Arc::downgrade(&self.core),
        }));
        self.core.tasks.spawn(dispatch(self.core.clone()));
        Ok(())
    }

    /// Stops taking runs, asks every executor to stop before its next step,
    /// and waits for them (actions in flight get the grace period).
    pub async fn shutdown(&self) {
        self.core.shutdown.cancel();
        for tx in lock(&self.core.active).values() {
            tx.send_replace(Control::Stop);
        }
        self.core.tasks.close();
        if tokio::time::timeout(self.core.config.shutdown_grace, self.core.tasks.wait())
            .await
            .is_err()
        {
            for tx in lock(&self.core.active).values() {
                tx.send_replace(Control::Abort);
            }
            self.core.tasks.wait().await;
        }
    }

    /// Wakes the dispatcher: something may have become due (another
    /// process's signal, for instance).
    pub fn wake(&self) {
        self.core.wake.notify_one();
    }

    /// Starts a run of the current version of `name` (once per idempotency
    /// key). When this process has room, it executes the run at once.
    pub async fn start_run(
        &self,
        name: &str,
        args: Value,
        idempotency: Option<IdempotencyKey>,
    ) -> Result<Written<WorkflowRun>, EngineError> {
        let core = &self.core;
        if core.shutdown.is_cancelled() {
            return Err(EngineError::ShuttingDown);
        }
        let def = core
            .registry
            .current(name)
            .ok_or_else(|| EngineError::UnknownWorkflow(name.to_owned()))?
            .clone();
        if let Some(check) = &def.check_args {
            check(&args).map_err(EngineError::InvalidArgs)?;
        }
        let new = NewRun {
            name: def.name.clone(),
            version: def.version.clone(),
            args,
            has_on_complete: def.on_complete.is_some(),
        };
        // Leased to this process when it has room: the change stream then
        // starts it (see `FollowChanges`), with no claim of its own.
        Ok(core
            .store
            .create_run(new, core.now(), core.lease_for(name), idempotency)
            .await?)
    }

    /// How to lease a run of `name` created now: to this process, when it
    /// has room for it (the change stream then starts it here at once), or
    /// to nobody (the dispatchers claim it). For a write that creates a run
    /// in its own transaction, such as a customer message and its reply.
    pub fn lease_for(&self, name: &str) -> Option<(String, i64)> {
        self.core.lease_for(name)
    }

    /// The version runs of `name` start on now, if it is registered.
    pub fn current_version(&self, name: &str) -> Option<String> {
        self.core
            .registry
            .current(name)
            .map(|def| def.version.clone())
    }

    /// The workflow clock's now (µs).
    pub fn now_micros(&self) -> i64 {
        self.core.now()
    }

    /// A run's whole state: the run, its journal and its events.
    pub async fn state(&self, id: RunId) -> Result<Option<RunState>, EngineError> {
        let store = &self.core.store;
        let Some(run) = store.get_run(id).await? else {
            return Ok(None);
        };
        let (journal, events) = tokio::try_join!(store.journal(id), store.run_events(id, false))?;
        let (consumed_events, pending_events) =
            events.into_iter().partition(|e| e.consumed_by.is_some());
        Ok(Some(RunState {
            run,
            journal,
            pending_events,
            consumed_events,
        }))
    }

    /// Delivers an event. A run waiting for it is executed at once when
    /// this process has room. A finished run refuses events (409).
    pub async fn deliver_event(
        &self,
        run_id: RunId,
        name: &str,
        payload: Value,
        source: EventSource,
        delivery: Option<String>,
    ) -> Result<DeliveredEvent, EngineError> {
        let core = &self.core;
        // Which workflow the run belongs to decides the pool; a run of a
        // workflow this process cannot execute is left to the dispatchers.
        let run = core
            .store
            .get_run(run_id)
            .await?
            .ok_or(StoreError::NotFound("workflow run"))?;
        let permit = core
            .registry
            .get(&run.name, &run.version)
            .and_then(|_| core.fast_path(&run.name));
        let claim_for = permit
            .as_ref()
            .map(|_| (core.store.node().to_owned(), core.lease_until()));
        let event = NewEvent {
            run_id,
            name: name.to_owned(),
            payload,
            source,
            delivery,
        };
        let delivered = core
            .store
            .deliver_event(event, core.now(), claim_for)
            .await?;
        if delivered.duplicate {
            return Ok(delivered);
        }
        match (&delivered.claimed, permit) {
            (Some(lease), Some(permit)) => {
                let claimed = ClaimedRun {
                    run: delivered.run.clone(),
                    lease: lease.clone(),
                    finalize: false,
                };
                core.spawn(claimed, permit, false);
            }
            (None, _) if delivered.run.status == tandem_model::RunStatus::Running => {
                core.poke(&run.name);
            }
            _ => {}
        }
        Ok(delivered)
    }

    /// Pauses a run: it stops before its next step (wherever it executes:
    /// see [`Engine::start`]).
    pub async fn pause(&self, id: RunId) -> Result<WorkflowRun, EngineError> {
        Ok(self.core.store.pause_run(id).await?)
    }

    /// Resumes a paused run where it stopped.
    pub async fn resume(&self, id: RunId) -> Result<WorkflowRun, EngineError> {
        Ok(self.core.store.resume_run(id, self.core.now()).await?)
    }

    /// Cancels a run; an action in flight is dropped, and the on-complete
    /// handler, if any, gets the cancellation.
    pub async fn cancel(&self, id: RunId) -> Result<WorkflowRun, EngineError> {
        Ok(self.core.store.cancel_run(id, self.core.now()).await?)
    }
}

/// The dispatcher: claims due runs for every pool with room, then sleeps
/// until the next timer, a wake-up, or the poll interval.
async fn dispatch(core: Arc<Core>) {
    let executable: Vec<(String, Vec<String>)> = core
        .registry
        .executable()
        .map(|(name, versions)| (name.to_owned(), versions))
        .collect();
    loop {
        let mut next: Option<i64> = None;
        for (name, versions) in &executable {
            let Some(pool) = core.pool(name) else {
                continue;
            };
            match claim_due(&core, name, versions, pool).await {
                Ok(Some(at)) => next = Some(next.map_or(at, |n| n.min(at))),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%error, workflow = %name, "workflows: claiming runs failed")
                }
            }
        }
        let timer = next
            .and_then(DateTime::from_timestamp_micros)
            .map(|at| core.clock.sleep_until(at));
        tokio::select! {
            _ = core.shutdown.cancelled() => return,
            _ = core.wake.notified() => {}
            _ = tokio::time::sleep(core.config.poll_interval) => {}
            _ = async { match timer { Some(t) => t.await, None => std::future::pending().await } } => {}
        }
    }
}

/// Claims what is due of one workflow; returns when the next run of it
/// becomes due (µs, workflow clock), if known.
async fn claim_due(
    core: &Arc<Core>,
    name: &str,
    versions: &[String],
    pool: &Arc<Semaphore>,
) -> Result<Option<i64>, StoreError> {
    let free = pool.available_permits();
    if free == 0 {
        lock(&core.backlog).insert(name.to_owned());
        return Ok(None);
    }
    let owner = core.store.node().to_owned();
    let request = ClaimRequest {
        owner: &owner,
        name,
        versions,
        limit: free as u32,
        now: core.now(),
        // Leases are judged on the wall clock (see `Core::lease_until`).
        wall_now: micros(Utc::now()),
        lease_until: core.lease_until(),
    };
    let claimed = core.store.claim_runs(&request).await?;
    let full = claimed.len() >= free;
    for run in claimed {
        let Ok(permit) = pool.clone().try_acquire_owned() else {
            // Taken by a fast-path start meanwhile: hand the run back.
            core.store.release_lease(&run.lease, None).await?;
            continue;
        };
        core.spawn(run, permit, false);
    }
    if full {
        lock(&core.backlog).insert(name.to_owned());
        return Ok(None);
    }
    lock(&core.backlog).remove(name);
    core.store
        .next_ready_at(name, versions, micros(Utc::now()))
        .await
}

/// The engine's view of the change stream (held weakly: the store holds
/// its sinks, and the engine holds the store).
struct FollowChanges {
    core: std::sync::Weak<Core>,
}

impl ChangeSink for FollowChanges {
    fn apply(&self, changes: &[Change]) {
        let Some(core) = self.core.upgrade() else {
            return;
        };
        let node = core.store.node();
        let now = core.clock.now();
        for change in changes {
            let Change::Run { run, kind } = change else {
                continue;
            };
            match run.status {
                RunStatus::Running
                    if *kind == RunChange::Created && run.held_by.as_deref() == Some(node) =>
                {
                    core.start_leased(run);
                }
                // Due now, and nobody holds it: the dispatcher takes it.
                RunStatus::Running
                    if run.held_by.is_none() && run.wake_at.is_none_or(|at| at <= now) =>
                {
                    core.poke(&run.name)
                }
                RunStatus::Paused => core.tell(run.id, Control::Stop),
                RunStatus::Cancelled => {
                    core.tell(run.id, Control::Abort);
                    // Its on-complete handler, if any, is due.
                    core.poke(&run.name);
                }
                _ => {}
            }
        }
    }
}
