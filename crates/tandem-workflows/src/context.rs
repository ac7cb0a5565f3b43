//! The step context: what a workflow's code calls to take each step.
//!
//! Every call is one step with a place (`seq`) in the run's journal. The
//! first time a run reaches a step, the step runs and its outcome is
//! journaled; when the run is executed again (after a suspension, a crash
//! or a restart) the code runs from the top and every journaled step
//! returns its recorded outcome instead of running again. A step whose kind
//! or name differs from the journal's at the same place is a determinism
//! error: the run stops, it never goes on down a path the journal did not
//! take.
//!
//! Outcomes are buffered and committed with the next durable write: before
//! the next action starts, with a suspension, a store effect or the end of
//! the run. An action therefore runs only after the journal before it is
//! durable, and nothing an outcome leads to leaves the process before the
//! outcome is journaled; a crash in between repeats at most the last
//! action (at least once), never an effect the journal already holds.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tandem_model::{
    Committed, EffectOutput, JournalEntry, JournalWrite, Lease, Message, NewAssignment, NewMessage,
    OpenItem, OpenedItem, PostedReply, RunId, RunStatus, RunUpdate, SkipReason, StepStatus,
    StoreEffect, Thread, WorkflowEvent, WorkflowRun,
};
use tandem_store::{StepCommit, StoreError, micros};
use tokio::sync::{Mutex, watch};

use crate::engine::Core;
use crate::error::{ActionError, StepError};
use crate::retry::RetryPolicy;

/// What the engine asks of an executing run from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Go,
    /// Stop before the next step (a pause, a shutdown).
    Stop,
    /// Stop now, dropping an action in flight (a cancel).
    Abort,
}

/// What an action is told about its attempt.
#[derive(Debug, Clone)]
pub struct StepInfo {
    /// The same for every attempt of this step of this run, and unique to
    /// it: pass it to the system the action calls, so that an attempt
    /// repeated after a crash has its effect once.
    pub idempotency_key: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// The run, and the step's position in its journal: together they name
    /// the step (records keyed by step, like token usage, use them).
    pub run_id: RunId,
    pub seq: i64,
}

/// How a wait for an event ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Wakeup {
    Event(Value),
    TimedOut,
}

/// The step API handed to a workflow's code. Cheap to clone; steps must be
/// awaited one at a time.
#[derive(Clone)]
pub struct Context {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) core: Arc<Core>,
    pub(crate) run: WorkflowRun,
    pub(crate) lease: Lease,
    pub(crate) control: watch::Receiver<Control>,
    pub(crate) state: Mutex<State>,
}

/// An executing run's view of its journal.
pub(crate) struct State {
    /// The journal as stored, indexed by `seq`, plus what this execution
    /// committed.
    pub(crate) journal: Vec<JournalEntry>,
    /// The next step's `seq`.
    pub(crate) cursor: usize,
    /// Entries not yet committed.
    pub(crate) buffer: Vec<JournalWrite>,
    /// Events no step has taken.
    pub(crate) events: Vec<WorkflowEvent>,
    /// The run's status as last seen.
    pub(crate) status: RunStatus,
    /// Set once the run has suspended or stopped: every later step says so.
    pub(crate) halted: Option<Halt>,
    /// Set when a step did not match the journal.
    pub(crate) diverged: Option<(i64, String)>,
}

/// Why an execution ended before the workflow returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// A suspension was committed; the lease is released.
    Suspended,
    /// Stopped before a step (paused, shutting down): the lease must be
    /// given back.
    Stopped,
    /// The lease is no longer ours: nothing more to do.
    LeaseLost,
}

impl Context {
    pub(crate) fn new(shared: Shared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn run_id(&self) -> RunId {
        self.shared.run.id
    }

    /// The workflow's name and the version this run is pinned to.
    pub fn workflow(&self) -> (&str, &str) {
        (&self.shared.run.name, &self.shared.run.version)
    }

    /// The server's signer, for steps that sign what they send out.
    pub fn signer(&self) -> &crate::signing::Signer {
        &self.shared.core.signer
    }

    /// The arguments the run was started with.
    pub fn args(&self) -> &Value {
        &self.shared.run.args
    }

    /// Runs `action` as the step `name` with the default retry policy, and
    /// journals its result.
    pub async fn run<T, F, Fut>(&self, name: &str, action: F) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(StepInfo) -> Fut,
        Fut: Future<Output = Result<T, ActionError>>,
    {
        self.run_with(name, &RetryPolicy::default(), action).await
    }

    /// Runs `action` as the step `name`, retried as `policy` says; journals
    /// its result, or its failure once retries are spent. Each failed
    /// attempt is journaled, and the backoff before the next is a durable
    /// timer: a restart during it loses nothing.
    pub async fn run_with<T, F, Fut>(
        &self,
        name: &str,
        policy: &RetryPolicy,
        action: F,
    ) -> Result<T, StepError>
    where
        T: Serialize + DeserializeOwned,
        F: Fn(StepInfo) -> Fut,
        Fut: Future<Output = Result<T, ActionError>>,
    {
        let mut state = self.lock()?;
        let (seq, entry) = self.step(&mut state, "run", name)?;
        let (attempt, started_at) = match entry {
            Some(e) if e.status == StepStatus::Completed => return decode(name, e.output),
            Some(e) if e.status == StepStatus::Failed => {
                return Err(StepError::Failed {
                    step: name.to_owned(),
                    error: recorded_error(e.error),
                });
            }
            Some(e) => (e.attempts as u32 + 1, e.started_at),
            None => (1, self.now_instant()),
        };
        self.stop_if_asked(&mut state)?;
        if !state.buffer.is_empty() {
            self.commit(&mut state, Vec::new(), None, RunUpdate::Continue)
                .await?;
            self.stop_if_asked(&mut state)?;
        }
        let info = StepInfo {
            idempotency_key: format!("{}:{seq}", self.shared.run.id),
            attempt,
            run_id: self.shared.run.id,
            seq: seq as i64,
        };
        let outcome = self.guard(&mut state, action(info)).await?;
        let finished_at = self.now_instant();
        let mut write = JournalWrite {
            seq: seq as i64,
            kind: "run".into(),
            name: name.to_owned(),
            status: StepStatus::Completed,
            output: None,
            error: None,
            attempts: i64::from(attempt),
            wake_at: None,
            started_at,
            finished_at: Some(finished_at),
            consumes: None,
        };
        let error = match outcome.and_then(|value| {
            serde_json::to_value(&value)
                .map(|json| (value, json))
                .map_err(|e| ActionError::permanent(format!("result does not serialize: {e}")))
        }) {
            Ok((value, json)) => {
                // Committed with the next durable write, which comes before
                // the next action starts (see the module's doc).
                write.output = Some(json);
                remember(&mut state, &write);
                state.buffer.push(write);
                return Ok(value);
            }
            Err(error) => error,
        };
        write.error = Some(json!({
            "message": error.message, "retryable": error.retryable, "attempt": attempt,
        }));
        if error.retryable && attempt < policy.max_attempts {
            let retry_at = after(finished_at, policy.backoff(attempt));
            write.status = StepStatus::Retrying;
            write.finished_at = None;
            write.wake_at = Some(micros(retry_at));
            let update = RunUpdate::Suspend {
                ready_at: Some(micros(retry_at)),
                waiting_for: None,
            };
            self.commit(&mut state, vec![write], None, update).await?;
            state.halted = Some(Halt::Suspended);
            return Err(StepError::Suspended);
        }
        write.status = StepStatus::Failed;
        remember(&mut state, &write);
        state.buffer.push(write);
        Err(StepError::Failed {
            step: name.to_owned(),
            error,
        })
    }

    /// Sleeps durably: the run is suspended and wakes at the time computed
    /// the first time (a restart does not start the sleep over).
    pub async fn sleep(&self, duration: Duration) -> Result<(), StepError> {
        let mut state = self.lock()?;
        let (seq, entry) = self.step(&mut state, "sleep", "sleep")?;
        let until = match entry {
            Some(e) if e.status == StepStatus::Completed => return Ok(()),
            Some(e) => e.wake_at.unwrap_or_else(|| self.now_instant()),
            None => {
                self.stop_if_asked(&mut state)?;
                let now = self.now_instant();
                after(now, duration)
            }
        };
        let now = self.now_instant();
        if now >= until {
            let started_at = state.journal.get(seq).map_or(now, |e| e.started_at);
            self.buffer(
                &mut state,
                seq,
                "sleep",
                "sleep",
                Some(json!({"until": until})),
                started_at,
                None,
            );
            return Ok(());
        }
        let pending = (state.journal.len() <= seq).then(|| JournalWrite {
            seq: seq as i64,
            kind: "sleep".into(),
            name: "sleep".into(),
            status: StepStatus::Pending,
            output: None,
            error: None,
            attempts: 1,
            wake_at: Some(micros(until)),
            started_at: now,
            finished_at: None,
            consumes: None,
        });
        let update = RunUpdate::Suspend {
            ready_at: Some(micros(until)),
            waiting_for: None,
        };
        self.commit(&mut state, pending.into_iter().collect(), None, update)
            .await?;
        state.halted = Some(Halt::Suspended);
        Err(StepError::Suspended)
    }

    /// Waits, durably, for the event `name` (delivered over HTTP, a signed
    /// hook or a resume URL), or until `timeout` has passed since the wait
    /// began. An event that arrived before the wait is taken at once.
    pub async fn wait_for_event(
        &self,
        name: &str,
        timeout: Option<Duration>,
    ) -> Result<Wakeup, StepError> {
        let mut state = self.lock()?;
        let (seq, entry) = self.step(&mut state, "wait_event", name)?;
        let deadline = match entry {
            Some(e) if e.status == StepStatus::Completed => {
                let output = e.output.unwrap_or(Value::Null);
                return Ok(match output.get("event") {
                    Some(payload) => Wakeup::Event(payload.clone()),
                    None => Wakeup::TimedOut,
                });
            }
            Some(e) => e.wake_at,
            None => {
                self.stop_if_asked(&mut state)?;
                timeout.map(|t| after(self.now_instant(), t))
            }
        };
        let now = self.now_instant();
        let started_at = state.journal.get(seq).map_or(now, |e| e.started_at);
        if let Some(index) = state.events.iter().position(|e| e.name == name) {
            let event = state.events.remove(index);
            let output = json!({"event": event.payload, "event_id": event.id});
            self.buffer(
                &mut state,
                seq,
                "wait_event",
                name,
                Some(output),
                started_at,
                Some(event.id),
            );
            return Ok(Wakeup::Event(event.payload));
        }
        if deadline.is_some_and(|d| now >= d) {
            self.buffer(
                &mut state,
                seq,
                "wait_event",
                name,
                Some(json!({"timeout": true})),
                started_at,
                None,
            );
            return Ok(Wakeup::TimedOut);
        }
        let pending = (state.journal.len() <= seq).then(|| JournalWrite {
            seq: seq as i64,
            kind: "wait_event".into(),
            name: name.to_owned(),
            status: StepStatus::Pending,
            output: None,
            error: None,
            attempts: 1,
            wake_at: deadline.map(micros),
            started_at: now,
            finished_at: None,
            consumes: None,
        });
        let update = RunUpdate::Suspend {
            ready_at: deadline.map(micros),
            waiting_for: Some(name.to_owned()),
        };
        self.commit(&mut state, pending.into_iter().collect(), None, update)
            .await?;
        state.halted = Some(Halt::Suspended);
        Err(StepError::Suspended)
    }

    /// The time, recorded the first time: the same on every replay.
    pub async fn now(&self) -> Result<DateTime<Utc>, StepError> {
        let value = self.record("now", || json!(self.now_instant())).await?;
        decode("now", Some(value))
    }

    /// A random number, recorded the first time: the same on every replay.
    pub async fn random_u64(&self) -> Result<u64, StepError> {
        let value = self
            .record("random", || json!(rand::random::<u64>()))
            .await?;
        decode("random", Some(value))
    }

    /// A fresh UUID, recorded the first time: the same on every replay.
    pub async fn uuid(&self) -> Result<uuid::Uuid, StepError> {
        let value = self.record("uuid", || json!(uuid::Uuid::now_v7())).await?;
        decode("uuid", Some(value))
    }

    /// A single-use URL that delivers the event `event` to this run when
    /// POSTed to (its body is the payload), valid for `ttl`. Hand it to a
    /// person or a system that has no token.
    pub async fn resume_url(&self, event: &str, ttl: Duration) -> Result<String, StepError> {
        let mut state = self.lock()?;
        let (seq, entry) = self.step(&mut state, "resume_url", event)?;
        if let Some(e) = entry {
            let output = e.output.unwrap_or(Value::Null);
            return decode("resume_url", output.get("url").cloned());
        }
        let now = self.now_instant();
        let expires = after(now, ttl);
        let url = self.shared.core.signer.resume_url(
            self.shared.run.id,
            event,
            seq as i64,
            expires.timestamp(),
        );
        let output = json!({"url": url, "expires_at": expires});
        self.buffer(
            &mut state,
            seq,
            "resume_url",
            event,
            Some(output),
            now,
            None,
        );
        Ok(url)
    }

    /// Posts a message as the step `name`; the message and the journal
    /// entry commit together, so it is posted exactly once.
    pub async fn post_message(
        &self,
        name: &str,
        message: NewMessage,
    ) -> Result<Message, StepError> {
        let value = self
            .effect("post_message", name, StoreEffect::PostMessage(message))
            .await?;
        decode(name, Some(value))
    }

    /// Assigns a thread as the step `name`, exactly once, recorded in the
    /// thread's assignment history.
    pub async fn assign(&self, name: &str, assignment: NewAssignment) -> Result<Thread, StepError> {
        let value = self
            .effect("assign", name, StoreEffect::Assign(assignment))
            .await?;
        decode(name, Some(value))
    }

    /// Opens an inbox item as the step `name`, exactly once: the message it
    /// is about (when `open.message` is set), the item, and the thread's
    /// reassignment (when `open.assign` is set) commit together with the
    /// journal entry. To wait for the item's resolution, set
    /// `open.item.run_id` to this run and wait for the event
    /// `inbox:<item id>`.
    pub async fn open_item(&self, name: &str, open: OpenItem) -> Result<OpenedItem, StepError> {
        let value = self
            .effect("open_item", name, StoreEffect::OpenItem(open))
            .await?;
        decode(name, Some(value))
    }

    /// Passes an inbox item's deadline as the step `name`, exactly once: the
    /// expiry is recorded and the fallback applied (see
    /// [`tandem_model::ExpiryAction`]) together with the journal entry.
    pub async fn expire_item(
        &self,
        name: &str,
        expire: tandem_model::ExpireItem,
    ) -> Result<tandem_model::Expiry, StepError> {
        let value = self
            .effect("expire_item", name, StoreEffect::ExpireItem(expire))
            .await?;
        decode(name, Some(value))
    }

    /// Posts the AI's reply as the step `name`, exactly once, unless the
    /// customer wrote again after `after_seq` or the thread went to humans
    /// (checked in the reply's own transaction): then nothing is posted,
    /// and every replay answers the same [`SkipReason`].
    pub async fn post_reply(
        &self,
        name: &str,
        message: NewMessage,
        after_seq: i64,
    ) -> Result<Result<Message, SkipReason>, StepError> {
        self.post_reply_with(name, message, after_seq, false).await
    }

    /// [`Context::post_reply`] for a follow-up: the AI's reply built on a
    /// human's answer, posted after newer customer messages that were all
    /// answered already (see [`StoreEffect::PostReply`]).
    pub async fn post_follow_up(
        &self,
        name: &str,
        message: NewMessage,
        after_seq: i64,
    ) -> Result<Result<Message, SkipReason>, StepError> {
        self.post_reply_with(name, message, after_seq, true).await
    }

    async fn post_reply_with(
        &self,
        name: &str,
        message: NewMessage,
        after_seq: i64,
        follow_up: bool,
    ) -> Result<Result<Message, SkipReason>, StepError> {
        let effect = StoreEffect::PostReply {
            message,
            after_seq,
            follow_up,
        };
        let value = self.effect("post_reply", name, effect).await?;
        decode::<PostedReply>(name, Some(value)).map(Result::from)
    }

    async fn effect(
        &self,
        kind: &str,
        name: &str,
        effect: StoreEffect,
    ) -> Result<Value, StepError> {
        let mut state = self.lock()?;
        let (seq, entry) = self.step(&mut state, kind, name)?;
        match entry {
            Some(e) if e.status == StepStatus::Failed => {
                return Err(StepError::Failed {
                    step: name.to_owned(),
                    error: recorded_error(e.error),
                });
            }
            Some(e) => return Ok(e.output.unwrap_or(Value::Null)),
            None => self.stop_if_asked(&mut state)?,
        }
        let now = self.now_instant();
        let write = JournalWrite {
            seq: seq as i64,
            kind: kind.to_owned(),
            name: name.to_owned(),
            status: StepStatus::Completed,
            output: None,
            error: None,
            attempts: 1,
            wake_at: None,
            started_at: now,
            finished_at: Some(now),
            consumes: None,
        };
        match self
            .commit(
                &mut state,
                vec![write.clone()],
                Some(effect),
                RunUpdate::Continue,
            )
            .await
        {
            Ok(_) => Ok(state.journal[seq].output.clone().unwrap_or(Value::Null)),
            // The effect was refused (an unknown thread, an invalid
            // message): that is the step's failure, journaled as such.
            Err(StepError::Store(e)) if is_refusal(&e) => {
                let error = ActionError::permanent(e.to_string());
                let failed = JournalWrite {
                    status: StepStatus::Failed,
                    error: Some(
                        json!({"message": error.message, "retryable": false, "attempt": 1}),
                    ),
                    ..write
                };
                self.commit(&mut state, vec![failed], None, RunUpdate::Continue)
                    .await?;
                Err(StepError::Failed {
                    step: name.to_owned(),
                    error,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// A step that records a value made by `make` the first time.
    async fn record(&self, kind: &str, make: impl FnOnce() -> Value) -> Result<Value, StepError> {
        let mut state = self.lock()?;
        let (seq, entry) = self.step(&mut state, kind, kind)?;
        if let Some(e) = entry {
            return Ok(e.output.unwrap_or(Value::Null));
        }
        let value = make();
        let now = self.now_instant();
        self.buffer(&mut state, seq, kind, kind, Some(value.clone()), now, None);
        Ok(value)
    }

    fn lock(&self) -> Result<tokio::sync::MutexGuard<'_, State>, StepError> {
        self.shared
            .state
            .try_lock()
            .map_err(|_| StepError::Determinism {
                seq: -1,
                message: "two steps ran at once; await each step before the next".into(),
            })
    }

    /// Takes the next step's place: its journal entry when it has one (of
    /// the same kind and name, or a determinism error).
    fn step(
        &self,
        state: &mut State,
        kind: &str,
        name: &str,
    ) -> Result<(usize, Option<JournalEntry>), StepError> {
        if state.halted.is_some() {
            return Err(StepError::Suspended);
        }
        let seq = state.cursor;
        state.cursor += 1;
        let Some(entry) = state.journal.get(seq) else {
            return Ok((seq, None));
        };
        if entry.kind != kind || entry.name != name {
            let message = format!(
                "the journal has {} {:?} here, the workflow now takes {kind} {name:?}",
                entry.kind, entry.name
            );
            state.diverged = Some((seq as i64, message.clone()));
            return Err(StepError::Determinism {
                seq: seq as i64,
                message,
            });
        }
        Ok((seq, Some(entry.clone())))
    }

    /// Stops before a new step when the run was paused, cancelled or the
    /// engine is shutting down.
    fn stop_if_asked(&self, state: &mut State) -> Result<(), StepError> {
        let asked = *self.shared.control.borrow() != Control::Go;
        if asked || state.status == RunStatus::Paused {
            state.halted = Some(Halt::Stopped);
            return Err(StepError::Suspended);
        }
        Ok(())
    }

    /// Runs an action, renewing the lease while it takes long, and dropping
    /// it if the run is cancelled or the lease is lost.
    async fn guard<T>(
        &self,
        state: &mut State,
        action: impl Future<Output = T>,
    ) -> Result<T, StepError> {
        let core = &self.shared.core;
        let mut control = self.shared.control.clone();
        let mut renew = tokio::time::interval(core.config.lease_ttl / 3);
        renew.tick().await;
        let mut action = std::pin::pin!(action);
        loop {
            tokio::select! {
                outcome = &mut action => return Ok(outcome),
                _ = renew.tick() => {
                    match core.store.renew_lease(&self.shared.lease, core.lease_until()).await {
                        Ok(status) => state.status = status,
                        Err(e) if is_lease_lost(&e) => {
                            state.halted = Some(Halt::LeaseLost);
                            return Err(StepError::Suspended);
                        }
                        Err(e) => tracing::warn!(error = %e, "workflows: renewing a lease failed"),
                    }
                }
                changed = control.changed() => {
                    if changed.is_err() || *control.borrow() == Control::Abort {
                        state.halted = Some(Halt::Stopped);
                        return Err(StepError::Suspended);
                    }
                }
            }
        }
    }

    /// Adds a completed entry to the buffer (and to this execution's view
    /// of the journal).
    #[allow(clippy::too_many_arguments)]
    fn buffer(
        &self,
        state: &mut State,
        seq: usize,
        kind: &str,
        name: &str,
        output: Option<Value>,
        started_at: DateTime<Utc>,
        consumes: Option<tandem_model::EventId>,
    ) {
        let write = JournalWrite {
            seq: seq as i64,
            kind: kind.to_owned(),
            name: name.to_owned(),
            status: StepStatus::Completed,
            output,
            error: None,
            attempts: 1,
            wake_at: None,
            started_at,
            finished_at: Some(self.now_instant()),
            consumes,
        };
        remember(state, &write);
        state.buffer.push(write);
    }

    /// Commits the buffer, then `writes`, with a run update and an effect
    /// whose output becomes the last write's.
    pub(crate) async fn commit(
        &self,
        state: &mut State,
        writes: Vec<JournalWrite>,
        effect: Option<StoreEffect>,
        update: RunUpdate,
    ) -> Result<Committed, StepError> {
        let core = &self.shared.core;
        let mut all = std::mem::take(&mut state.buffer);
        let buffered = all.len();
        all.extend(writes);
        let effect = effect.map(|e| (all.len() - 1, e));
        let suspending = matches!(update, RunUpdate::Suspend { .. });
        let commit = StepCommit {
            lease: self.shared.lease.clone(),
            writes: all.clone(),
            effect,
            update,
            now: micros(self.now_instant()),
            lease_until: core.lease_until(),
        };
        let committed = match core.store.commit_steps(commit).await {
            Ok(committed) => committed,
            Err(e) => {
                if is_lease_lost(&e) {
                    state.halted = Some(Halt::LeaseLost);
                    return Err(StepError::Suspended);
                }
                // Nothing was committed: keep the buffer for a later try.
                all.truncate(buffered);
                state.buffer = all;
                return Err(StepError::Store(e));
            }
        };
        if let (Some(effect), Some(last)) = (&committed.effect, all.last_mut()) {
            last.output = Some(effect_json(effect));
        }
        for write in &all {
            remember(state, write);
        }
        state.status = committed.run.status;
        if suspending && committed.run.status == RunStatus::Running {
            // The event it was to wait for arrived meanwhile: the run is due
            // again at once, and nobody else knows.
            core.poke(&self.shared.run.name);
        }
        Ok(committed)
    }

    fn now_instant(&self) -> DateTime<Utc> {
        use chrono::SubsecRound;
        self.shared.core.clock.now().trunc_subsecs(6)
    }
}

/// `at` plus `wait`, at most the latest time both backends store (a wait
/// too long to represent is a wait forever, not an overflow).
fn after(at: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    const LATEST_MICROS: i64 = 253_402_300_799_000_000; // 9999-12-31T23:59:59Z
    let latest = DateTime::from_timestamp_micros(LATEST_MICROS).unwrap_or(DateTime::<Utc>::MAX_UTC);
    chrono::Duration::from_std(wait)
        .ok()
        .and_then(|wait| at.checked_add_signed(wait))
        .map_or(latest, |t| t.min(latest))
}

fn effect_json(effect: &EffectOutput) -> Value {
    effect.journal_value().unwrap_or(Value::Null)
}

/// Puts a written entry in this execution's view of the journal.
fn remember(state: &mut State, write: &JournalWrite) {
    let entry = JournalEntry {
        seq: write.seq,
        kind: write.kind.clone(),
        name: write.name.clone(),
        status: write.status,
        output: write.output.clone(),
        error: write.error.clone(),
        attempts: write.attempts,
        wake_at: write.wake_at.and_then(DateTime::from_timestamp_micros),
        started_at: write.started_at,
        finished_at: write.finished_at,
    };
    let seq = write.seq as usize;
    if seq < state.journal.len() {
        state.journal[seq] = entry;
    } else if seq == state.journal.len() {
        state.journal.push(entry);
    }
}

fn decode<T: DeserializeOwned>(step: &str, value: Option<Value>) -> Result<T, StepError> {
    serde_json::from_value(value.unwrap_or(Value::Null)).map_err(|e| StepError::Determinism {
        seq: -1,
        message: format!("the journaled output of step {step:?} no longer fits its type: {e}"),
    })
}

fn recorded_error(error: Option<Value>) -> ActionError {
    let error = error.unwrap_or(Value::Null);
    ActionError {
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("failed")
            .to_owned(),
        retryable: error
            .get("retryable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

pub(crate) fn is_lease_lost(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Conflict {
            code: "lease_lost",
            ..
        }
    )
}

/// A store error that refuses the effect itself, rather than a failure of
/// the store: retrying would not help.
fn is_refusal(error: &StoreError) -> bool {
    match error {
        StoreError::NotFound(_) | StoreError::Invalid { .. } => true,
        StoreError::Conflict { code, .. } => *code != "lease_lost",
        _ => false,
    }
}
