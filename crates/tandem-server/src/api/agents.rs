//! `/v1/agents`: support agents as the desk sees them — presence, teams,
//! capacity and load. Staff read them; an agent sets its own presence (an
//! admin anyone's); only an admin sets teams and capacity.
//!
//! Presence is a lease: an agent `online` or `away` refreshes it (the inbox
//! UI does, every minute or so) or goes offline after
//! `desk.presence_ttl_secs`. Going offline, by request or by silence, puts
//! the agent's items back in the queue, where the desk gives them to
//! someone else.

use aide::axum::ApiRouter;
use aide::axum::routing::{get, put};
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tandem_model::{AgentSettings, DeskAgent, Presence};
use tandem_store::queries::desk::{MAX_TEAM_CHARS, MAX_TEAMS};

use crate::AppState;
use crate::http::extract::ApiPath;
use crate::http::{Admin, ApiError, ApiJson, Staff};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/agents", get(list_agents))
        .api_route("/v1/agents/{name}", get(get_agent).put(configure))
        .api_route("/v1/agents/{name}/presence", put(set_presence))
}

/// The `{name}` of an agent route; `me` is the calling agent.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct AgentPath {
    pub name: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentList {
    /// By name.
    pub agents: Vec<DeskAgent>,
}

/// The agent a path names: `me` is the caller (an agent token only).
fn resolve(staff: &Staff, name: &str) -> Result<String, ApiError> {
    match (name, staff.agent_name()) {
        ("me", Some(me)) => Ok(me.to_owned()),
        ("me", None) => Err(ApiError::bad_request(
            "not_an_agent",
            "`me` names the calling agent; this token is not an agent's",
        )),
        (name, _) => Ok(name.to_owned()),
    }
}

/// Every agent the desk knows, with presence, teams, capacity and load.
async fn list_agents(State(state): State<AppState>, _: Staff) -> Result<Json<AgentList>, ApiError> {
    let agents = state.store.desk_agents().await?;
    Ok(Json(AgentList { agents }))
}

async fn get_agent(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(AgentPath { name }): ApiPath<AgentPath>,
) -> Result<Json<DeskAgent>, ApiError> {
    let name = resolve(&staff, &name)?;
    let agent = state
        .store
        .desk_agent(&name)
        .await?
        .ok_or(ApiError::NotFound("agent"))?;
    Ok(Json(agent))
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Configure {
    /// Most items the desk assigns the agent at once (0 to 1000).
    pub capacity: Option<u32>,
    /// The teams whose items the agent takes; replaces the list.
    pub teams: Option<Vec<String>>,
}

/// Sets an agent's capacity or teams (admin only); an agent the desk did not
/// know is added, offline.
async fn configure(
    State(state): State<AppState>,
    _: Admin,
    ApiPath(AgentPath { name }): ApiPath<AgentPath>,
    ApiJson(request): ApiJson<Configure>,
) -> Result<Json<DeskAgent>, ApiError> {
    check_name(&name)?;
    if request.capacity.is_some_and(|c| c > 1_000) {
        return Err(invalid("capacity must be between 0 and 1000"));
    }
    if let Some(teams) = &request.teams {
        if teams.len() > MAX_TEAMS {
            return Err(invalid(format!("at most {MAX_TEAMS} teams")));
        }
        if teams
            .iter()
            .any(|t| t.trim().is_empty() || t.chars().count() > MAX_TEAM_CHARS)
        {
            return Err(invalid(format!(
                "team names must be 1 to {MAX_TEAM_CHARS} characters"
            )));
        }
    }
    let default_capacity = default_capacity(&state).await?;
    let agent = state
        .store
        .configure_agent(
            &name,
            AgentSettings {
                capacity: request.capacity,
                teams: request.teams,
            },
            default_capacity,
        )
        .await?;
    Ok(Json(agent))
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPresence {
    pub presence: Presence,
}

/// Sets or refreshes an agent's presence: the agent itself (`me`), or an
/// admin for anyone. `offline` puts the agent's items back in the queue.
async fn set_presence(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(AgentPath { name }): ApiPath<AgentPath>,
    ApiJson(request): ApiJson<SetPresence>,
) -> Result<Json<DeskAgent>, ApiError> {
    let name = resolve(&staff, &name)?;
    if let Some(me) = staff.agent_name()
        && me != name
    {
        return Err(ApiError::forbidden(
            "not_yourself",
            "an agent sets only its own presence",
        ));
    }
    check_name(&name)?;
    let default_capacity = default_capacity(&state).await?;
    let change = state
        .store
        .set_presence(&name, request.presence, default_capacity)
        .await?;
    Ok(Json(change.agent))
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(invalid("an agent's name is 1 to 200 characters"));
    }
    Ok(())
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::Unprocessable {
        code: "invalid_agent",
        message: message.into(),
    }
}

async fn default_capacity(state: &AppState) -> Result<u32, ApiError> {
    Ok(state.store.policy().await?.desk.default_capacity)
}
