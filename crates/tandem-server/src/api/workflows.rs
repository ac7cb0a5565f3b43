//! `/v1/workflows`: start a run, read it, pause, resume and cancel it, and
//! send it events. Staff only (admin and agent tokens).

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_model::{EventSource, RunId, WorkflowEvent, WorkflowRun};
use tandem_workflows::RunState;

use crate::AppState;
use crate::http::extract::ApiPath;
use crate::http::{Accepted, ApiError, ApiJson, Created, IdempotencyHeader, Staff};

/// Longest event name.
const MAX_EVENT_NAME: usize = 64;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/workflows", post(start_workflow))
        .api_route("/v1/workflows/{id}", get(get_workflow))
        .api_route("/v1/workflows/{id}/pause", post(pause_workflow))
        .api_route("/v1/workflows/{id}/resume", post(resume_workflow))
        .api_route("/v1/workflows/{id}/cancel", post(cancel_workflow))
        .api_route("/v1/workflows/{id}/events/{name}", post(send_event))
}

/// The `{id}` of a run route. An id that does not parse is a run that does
/// not exist (404), not a bad request.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunPath {
    pub id: String,
}

/// The `{id}` and event `{name}` of an event route.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct EventPath {
    pub id: String,
    /// 1 to 64 of `A-Z a-z 0-9 _ . -`.
    pub name: String,
}

/// The run an `{id}` names, or 404.
pub(crate) fn run_id(id: &str) -> Result<RunId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("workflow run"))
}

/// Event names are 1 to 64 of `A-Z a-z 0-9 _ . -` (they appear in URLs and
/// signed strings).
pub(crate) fn check_event_name(name: &str) -> Result<(), ApiError> {
    let valid = (1..=MAX_EVENT_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(ApiError::Unprocessable {
            code: "invalid_event_name",
            message: format!(
                "event names are 1 to {MAX_EVENT_NAME} of the characters A-Z a-z 0-9 _ . -"
            ),
        })
    }
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartWorkflow {
    /// A workflow defined on this server.
    pub name: String,
    /// The workflow's arguments; null when absent.
    #[serde(default)]
    pub args: Value,
}

/// Starts a run of the workflow's current version (once per
/// `Idempotency-Key`). The answer is the run as created, with its (empty)
/// journal; a retry with the same key gets the same answer.
async fn start_workflow(
    State(state): State<AppState>,
    staff: Staff,
    IdempotencyHeader(key): IdempotencyHeader,
    ApiJson(request): ApiJson<StartWorkflow>,
) -> Result<Created<RunState>, ApiError> {
    let idempotency = super::idempotency_key(
        &staff.principal(),
        "POST /v1/workflows".into(),
        key,
        &request,
    );
    let written = state
        .workflows
        .start_run(&request.name, request.args, idempotency)
        .await?;
    // A run is created with nothing journaled and no events: this is the
    // state it was created in, the same for a replay.
    Ok(Created {
        value: RunState {
            run: written.value,
            journal: Vec::new(),
            pending_events: Vec::new(),
            consumed_events: Vec::new(),
        },
        replayed: written.replayed,
    })
}

/// The run, its journal (each step with its timings, attempts, output or
/// error) and its events.
async fn get_workflow(
    State(state): State<AppState>,
    _: Staff,
    ApiPath(RunPath { id }): ApiPath<RunPath>,
) -> Result<Json<RunState>, ApiError> {
    let run = state
        .workflows
        .state(run_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound("workflow run"))?;
    Ok(Json(run))
}

/// Stops a running or waiting run before its next step; its timers hold.
/// 409 `already_paused`, `run_finished`.
async fn pause_workflow(
    State(state): State<AppState>,
    _: Staff,
    ApiPath(RunPath { id }): ApiPath<RunPath>,
) -> Result<Json<WorkflowRun>, ApiError> {
    Ok(Json(state.workflows.pause(run_id(&id)?).await?))
}

/// Resumes a paused run where it stopped. 409 `not_paused`, `run_finished`.
async fn resume_workflow(
    State(state): State<AppState>,
    _: Staff,
    ApiPath(RunPath { id }): ApiPath<RunPath>,
) -> Result<Json<WorkflowRun>, ApiError> {
    Ok(Json(state.workflows.resume(run_id(&id)?).await?))
}

/// Cancels a run that has not finished. 409 `run_finished`.
async fn cancel_workflow(
    State(state): State<AppState>,
    _: Staff,
    ApiPath(RunPath { id }): ApiPath<RunPath>,
) -> Result<Json<WorkflowRun>, ApiError> {
    Ok(Json(state.workflows.cancel(run_id(&id)?).await?))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendEvent {
    /// Any JSON; null when absent. The step waiting for the event gets it.
    #[serde(default)]
    pub payload: Value,
}

/// An event as the run received it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct EventDelivered {
    pub event: WorkflowEvent,
    /// The run after the delivery (`running` again if it waited for this event).
    pub run: WorkflowRun,
    /// The same delivery was made before (the same `Idempotency-Key`):
    /// nothing changed, `event` is the first one.
    pub duplicate: bool,
}

/// Delivers an event: a run waiting for it goes on; otherwise it waits,
/// pending, for a step to take it. A retry with the same `Idempotency-Key`
/// is delivered once. 409 `run_finished`.
async fn send_event(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(EventPath { id, name }): ApiPath<EventPath>,
    IdempotencyHeader(key): IdempotencyHeader,
    ApiJson(request): ApiJson<SendEvent>,
) -> Result<Accepted<EventDelivered>, ApiError> {
    let run = run_id(&id)?;
    check_event_name(&name)?;
    let delivery = key.map(|key| format!("api:{}:{key}", staff.token_id()));
    let delivered = state
        .workflows
        .deliver_event(run, &name, request.payload, EventSource::Api, delivery)
        .await?;
    Ok(Accepted(EventDelivered {
        event: delivered.event,
        run: delivered.run,
        duplicate: delivered.duplicate,
    }))
}
