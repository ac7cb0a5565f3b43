//! `/v1/threads`: create, list, get, patch.

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_model::{
    AssignedTo, NewThread, Thread, ThreadFilter, ThreadId, ThreadPatch, ThreadStatus,
};

use crate::AppState;
use crate::http::extract::ApiPath;
use crate::http::{
    ApiError, ApiJson, ApiQuery, Created, IdempotencyHeader, Principal, StaffOnThread,
};

const MAX_TITLE_CHARS: usize = 500;
const MAX_CUSTOMER_ID_CHARS: usize = 255;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/threads", post(create_thread).get(list_threads))
        .api_route("/v1/threads/{id}", get(get_thread).patch(patch_thread))
}

/// The `{id}` of a thread route.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ThreadPath {
    pub id: ThreadId,
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateThread {
    /// Whose thread it is. Required for admin and agent tokens; customers
    /// create threads for themselves and may not set it.
    pub customer_id: Option<String>,
    pub title: Option<String>,
    /// The integrator's own data (admin and agent tokens only).
    pub metadata: Option<serde_json::Map<String, Value>>,
}

async fn create_thread(
    State(state): State<AppState>,
    principal: Principal,
    IdempotencyHeader(key): IdempotencyHeader,
    ApiJson(request): ApiJson<CreateThread>,
) -> Result<Created<Thread>, ApiError> {
    let idempotency = super::idempotency_key(&principal, "POST /v1/threads".into(), key, &request);
    let customer_id = match principal.customer_scope() {
        Some(own) => {
            if request.customer_id.is_some() {
                return Err(ApiError::field_not_allowed("customer_id", "customer"));
            }
            if request.metadata.is_some() {
                return Err(ApiError::field_not_allowed("metadata", "customer"));
            }
            own.to_owned()
        }
        None => {
            let customer_id = request.customer_id.clone().ok_or_else(|| {
                ApiError::bad_request(
                    "missing_customer_id",
                    "admin and agent tokens must say whose thread it is (`customer_id`)",
                )
            })?;
            check_customer_id(&customer_id)?;
            customer_id
        }
    };
    let metadata = request.metadata.clone().unwrap_or_default();
    super::messages::rules::check_metadata_size(&metadata, &state.config.limits)?;
    let new = NewThread {
        customer_id,
        title: check_title(request.title.clone())?,
        metadata: Value::Object(metadata),
    };
    let written = state.store.create_thread(new, idempotency).await?;
    Ok(written.into())
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListThreads {
    pub status: Option<ThreadStatus>,
    pub assigned_to: Option<AssignedTo>,
    /// Only this customer's threads (admin and agent tokens).
    pub customer_id: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<ThreadId>,
    /// 1 to 200; 50 when absent.
    pub limit: Option<u32>,
}

/// A page of threads, newest first.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ThreadPage {
    pub threads: Vec<Thread>,
    /// Pass as `cursor` to get the next page; null on the last page.
    pub next_cursor: Option<ThreadId>,
}

async fn list_threads(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(query): ApiQuery<ListThreads>,
) -> Result<Json<ThreadPage>, ApiError> {
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 200",
        ));
    }
    let customer_id = match principal.customer_scope() {
        Some(own) => {
            if query.customer_id.is_some() {
                return Err(ApiError::field_not_allowed("customer_id", "customer"));
            }
            Some(own.to_owned())
        }
        None => query.customer_id,
    };
    let filter = ThreadFilter {
        customer_id,
        status: query.status,
        assigned_to: query.assigned_to,
        before: query.cursor,
        limit,
    };
    let threads = state.store.list_threads(&filter).await?;
    let next_cursor = if threads.len() == limit as usize {
        threads.last().map(|t| t.id)
    } else {
        None
    };
    Ok(Json(ThreadPage {
        threads,
        next_cursor,
    }))
}

async fn get_thread(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
) -> Result<Json<Thread>, ApiError> {
    let thread = state
        .store
        .get_thread(id, principal.customer_scope())
        .await?
        .ok_or(ApiError::NotFound("thread"))?;
    Ok(Json(thread))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchThread {
    /// A new title, or null to clear it.
    #[serde(default, deserialize_with = "super::nullable")]
    pub title: Option<Option<String>>,
    pub status: Option<ThreadStatus>,
    /// Replaces the thread's metadata.
    pub metadata: Option<serde_json::Map<String, Value>>,
}

async fn patch_thread(
    State(state): State<AppState>,
    _: StaffOnThread,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
    ApiJson(request): ApiJson<PatchThread>,
) -> Result<Json<Thread>, ApiError> {
    if request.title.is_none() && request.status.is_none() && request.metadata.is_none() {
        return Err(ApiError::bad_request(
            "empty_patch",
            "give at least one of `title`, `status`, `metadata`",
        ));
    }
    if let Some(metadata) = &request.metadata {
        super::messages::rules::check_metadata_size(metadata, &state.config.limits)?;
    }
    let patch = ThreadPatch {
        title: match request.title {
            Some(title) => Some(check_title(title)?),
            None => None,
        },
        status: request.status,
        metadata: request.metadata.map(Value::Object),
    };
    Ok(Json(state.store.update_thread(id, patch).await?))
}

fn check_title(title: Option<String>) -> Result<Option<String>, ApiError> {
    let Some(title) = title else { return Ok(None) };
    let title = title.trim();
    if title.chars().count() > MAX_TITLE_CHARS {
        return Err(ApiError::bad_request(
            "title_too_long",
            format!("title is longer than {MAX_TITLE_CHARS} characters"),
        ));
    }
    Ok((!title.is_empty()).then(|| title.to_owned()))
}

fn check_customer_id(customer_id: &str) -> Result<(), ApiError> {
    if customer_id.trim().is_empty() || customer_id.chars().count() > MAX_CUSTOMER_ID_CHARS {
        return Err(ApiError::bad_request(
            "invalid_customer_id",
            format!("customer_id must be 1 to {MAX_CUSTOMER_ID_CHARS} characters"),
        ));
    }
    Ok(())
}
