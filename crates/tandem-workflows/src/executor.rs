//! Executing one claimed run: replay its journal through the workflow's
//! code, take its next steps, and record how the execution ended.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Value, json};
use tandem_model::{ClaimedRun, RunStatus, RunUpdate};
use tandem_store::micros;
use tokio::sync::{Mutex, OwnedSemaphorePermit};

use crate::context::{Context, Halt, Shared, State, is_lease_lost};
use crate::engine::Core;
use crate::error::StepError;
use crate::registry::{End, Outcome, WorkflowDef};

/// How long a run waits after a store failure before it is tried again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// Executes a claimed run. `fresh` runs were just created by this process:
/// they have no journal and no events to read.
pub(crate) async fn execute(
    core: Arc<Core>,
    def: Arc<WorkflowDef>,
    claimed: ClaimedRun,
    permit: OwnedSemaphorePermit,
    fresh: bool,
) {
    let run_id = claimed.run.id;
    let name = claimed.run.name.clone();
    let control = core.register_active(run_id);
    if claimed.finalize {
        finalize(&core, &def, &claimed).await;
    } else {
        let span = tracing::info_span!("workflow", run = %run_id, workflow = %name);
        let _ = tracing::Instrument::instrument(
            execute_steps(core.clone(), def, claimed, control, fresh),
            span,
        )
        .await;
    }
    drop(permit);
    core.executor_done(run_id, &name);
}

async fn execute_steps(
    core: Arc<Core>,
    def: Arc<WorkflowDef>,
    claimed: ClaimedRun,
    control: tokio::sync::watch::Receiver<crate::context::Control>,
    fresh: bool,
) {
    let (journal, events) = if fresh {
        (Vec::new(), Vec::new())
    } else {
        let id = claimed.run.id;
        match tokio::try_join!(core.store.journal(id), core.store.run_events(id, true)) {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "workflows: reading the journal failed");
                release(&core, &claimed, Some(STORE_RETRY)).await;
                return;
            }
        }
    };
    let ctx = Context::new(Shared {
        core: core.clone(),
        run: claimed.run.clone(),
        lease: claimed.lease.clone(),
        control,
        state: Mutex::new(State {
            journal,
            cursor: 0,
            buffer: Vec::new(),
            events,
            status: claimed.run.status,
            halted: None,
            diverged: None,
        }),
    });
    let outcome = AssertUnwindSafe((def.handler)(ctx.clone(), claimed.run.args.clone()))
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the workflow panicked".to_owned());
            Err(StepError::fail(format!("panicked: {message}")))
        });

    let shared = ctx.shared();
    let mut state = shared.state.lock().await;
    match state.halted {
        Some(Halt::Suspended) | Some(Halt::LeaseLost) => return,
        Some(Halt::Stopped) => {
            release(&core, &claimed, None).await;
            return;
        }
        None => {}
    }
    let finish = match (outcome, state.diverged.clone()) {
        (_, Some((seq, message))) => failed(StepError::Determinism { seq, message }),
        (Ok(_), None) if state.cursor < state.journal.len() => failed(StepError::Determinism {
            seq: state.cursor as i64,
            message: format!(
                "the workflow returned after {} steps, the journal has {}",
                state.cursor,
                state.journal.len()
            ),
        }),
        (Ok(result), None) => RunUpdate::Finish {
            status: RunStatus::Completed,
            result: Some(result),
            error: None,
        },
        (Err(StepError::Store(error)), None) => {
            tracing::warn!(%error, "workflows: a store failure stopped the run; retrying it");
            drop(state);
            release(&core, &claimed, Some(STORE_RETRY)).await;
            return;
        }
        (Err(StepError::Suspended), None) => {
            // The code caught a suspension and returned: the journal is
            // where it was, so the next execution goes on from there.
            drop(state);
            release(&core, &claimed, None).await;
            return;
        }
        (Err(error), None) => failed(error),
    };
    let committed = match ctx.commit(&mut state, Vec::new(), None, finish).await {
        Ok(committed) => committed,
        Err(StepError::Store(error)) => {
            tracing::warn!(%error, "workflows: recording the end of a run failed; retrying it");
            drop(state);
            release(&core, &claimed, Some(STORE_RETRY)).await;
            return;
        }
        Err(_) => return,
    };
    drop(state);
    if def.on_complete.is_some() {
        let claimed = ClaimedRun {
            run: committed.run,
            lease: claimed.lease.clone(),
            finalize: true,
        };
        finalize(&core, &def, &claimed).await;
    }
}

fn failed(error: StepError) -> RunUpdate {
    RunUpdate::Finish {
        status: RunStatus::Failed,
        result: None,
        error: Some(error.to_json()),
    }
}

/// Runs the on-complete handler of a finished run, then records that it ran.
async fn finalize(core: &Arc<Core>, def: &WorkflowDef, claimed: &ClaimedRun) {
    if let Some(on_complete) = &def.on_complete {
        let run = &claimed.run;
        let end = match run.status {
            RunStatus::Completed => End::Completed(run.result.clone().unwrap_or(Value::Null)),
            RunStatus::Cancelled => End::Cancelled,
            _ => End::Failed(
                run.error
                    .clone()
                    .unwrap_or_else(|| json!({"code": "failed"})),
            ),
        };
        let outcome = Outcome {
            run: run.clone(),
            end,
        };
        if AssertUnwindSafe(on_complete(outcome))
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!(run = %run.id, "workflows: the on-complete handler panicked");
        }
    }
    if let Err(error) = core.store.finalized(&claimed.lease).await {
        tracing::warn!(%error, "workflows: recording the on-complete handler failed");
    }
}

/// Gives the run back; with `retry_in`, it is due again after that long.
async fn release(core: &Arc<Core>, claimed: &ClaimedRun, retry_in: Option<Duration>) {
    let retry_at = retry_in.map(|wait| micros(core.clock.now()) + wait.as_micros() as i64);
    if let Err(error) = core.store.release_lease(&claimed.lease, retry_at).await
        && !is_lease_lost(&error)
    {
        tracing::warn!(%error, "workflows: releasing a run failed");
    }
}
