//! `/v1/threads/{id}/assignment` and `/assignments`: takeover, hand-back
//! and the history of who a thread was assigned to.
//!
//! A human takeover stops the AI at once: the thread's unfinished `reply`
//! runs are cancelled (dropping a model call in flight) and the text they
//! streamed is voided with a `reset` delta. A reply that reaches its publish
//! step first is refused there anyway (the thread is assigned to humans).

use aide::axum::ApiRouter;
use aide::axum::routing::{get, put};
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tandem_model::{AssignedTo, Assignment, MessageId, NewAssignment, Thread, ThreadId};

use super::threads::ThreadPath;
use crate::AppState;
use crate::http::extract::ApiPath;
use crate::http::{Admin, Agent, ApiError, ApiJson, Staff, StaffOnThread};

const MAX_REASON_CHARS: usize = 500;
const MAX_NAME_CHARS: usize = 255;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/threads/{id}/assignment", put(put_assignment))
        .api_route("/v1/threads/{id}/assignments", get(list_assignments))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PutAssignment {
    /// `human` takes the thread over (the AI stops at once); `ai` hands it back.
    pub assigned_to: AssignedTo,
    /// The human agent (only with `human`). An agent token may name only
    /// itself; without `agent_id` or `team`, an agent takes the thread itself.
    pub agent_id: Option<String>,
    pub team: Option<String>,
    /// Why, 1 to 500 characters.
    pub reason: Option<String>,
}

/// A thread's assignment history, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AssignmentHistory {
    pub assignments: Vec<Assignment>,
}

async fn put_assignment(
    State(state): State<AppState>,
    StaffOnThread(staff): StaffOnThread,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
    ApiJson(request): ApiJson<PutAssignment>,
) -> Result<Json<Thread>, ApiError> {
    let new = check(&staff, id, request)?;
    let takeover = new.assigned_to == AssignedTo::Human;
    let thread = state.store.assign_thread(new).await?;
    if takeover {
        stop_replies(&state, id).await;
    }
    Ok(Json(thread))
}

async fn list_assignments(
    State(state): State<AppState>,
    _: StaffOnThread,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
) -> Result<Json<AssignmentHistory>, ApiError> {
    state
        .store
        .get_thread(id, None)
        .await?
        .ok_or(ApiError::NotFound("thread"))?;
    let assignments = state.store.assignments(id).await?;
    Ok(Json(AssignmentHistory { assignments }))
}

/// Validates the request against the caller's permissions.
fn check(
    staff: &Staff,
    thread_id: ThreadId,
    request: PutAssignment,
) -> Result<NewAssignment, ApiError> {
    let reason = request
        .reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty())
        .ok_or_else(|| invalid("a `reason` is required"))?;
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(invalid(format!(
            "`reason` is longer than {MAX_REASON_CHARS} characters"
        )));
    }
    let agent_id = name(request.agent_id, "agent_id")?;
    let team = name(request.team, "team")?;
    if agent_id.is_some() && request.assigned_to != AssignedTo::Human {
        return Err(invalid("`agent_id` goes only with `assigned_to: human`"));
    }
    let (by_kind, by_id, assignee) = match staff {
        Staff::Admin(Admin { token }) => ("admin", token.to_string(), agent_id),
        Staff::Agent(Agent { name, .. }) => {
            if agent_id.as_ref().is_some_and(|a| a != name) {
                return Err(ApiError::forbidden(
                    "forbidden",
                    "an agent may assign a thread only to itself or a team",
                ));
            }
            // An agent taking a thread without naming a team takes it itself.
            let assignee = match request.assigned_to {
                AssignedTo::Human if team.is_none() => Some(name.clone()),
                _ => agent_id,
            };
            ("human", name.clone(), assignee)
        }
    };
    Ok(NewAssignment {
        thread_id,
        assigned_to: request.assigned_to,
        assignee,
        team,
        reason: Some(reason),
        by_kind: by_kind.into(),
        by_id: Some(by_id),
    })
}

fn name(value: Option<String>, field: &str) -> Result<Option<String>, ApiError> {
    match value {
        Some(v) if v.trim().is_empty() || v.chars().count() > MAX_NAME_CHARS => Err(invalid(
            format!("`{field}` must be 1 to {MAX_NAME_CHARS} characters"),
        )),
        other => Ok(other),
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_assignment",
        message: message.into(),
    }
}

/// Cancels the thread's unfinished `reply` runs and voids what they
/// streamed. Best effort: the assignment has committed, and a reply that
/// escapes the cancel is refused at its publish step.
async fn stop_replies(state: &AppState, thread_id: ThreadId) {
    let runs = match state.store.unfinished_reply_runs(thread_id).await {
        Ok(runs) => runs,
        Err(error) => {
            tracing::warn!(%error, %thread_id, "takeover: listing reply runs failed");
            return;
        }
    };
    for run_id in runs {
        if let Err(error) = state.workflows.cancel(run_id).await {
            // Most often the run finished in the meantime.
            tracing::debug!(%error, %run_id, "takeover: cancelling a reply run failed");
        }
        // A cancelled run does not reach the router's own reset: the reply
        // id is the run's one journaled `uuid` step.
        match state.store.journal(run_id).await {
            Ok(journal) => {
                for entry in journal.iter().filter(|e| e.kind == "uuid") {
                    if let Some(id) = entry
                        .output
                        .as_ref()
                        .and_then(|o| serde_json::from_value::<uuid::Uuid>(o.clone()).ok())
                    {
                        state.hub.publish_delta(thread_id, MessageId(id), "", true);
                    }
                }
            }
            Err(error) => tracing::warn!(%error, %run_id, "takeover: reading a run failed"),
        }
    }
}
