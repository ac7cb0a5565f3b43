//! `/v1/threads/{id}/messages`: post and page.

pub mod rules;

use aide::axum::ApiRouter;
use aide::axum::routing::post;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_model::{
    Author, Content, Message, MessageFilter, MessageId, MessageStatus, Role, Visibility,
};

use super::threads::ThreadPath;
use crate::AppState;
use crate::http::extract::ApiPath;
use crate::http::{ApiError, ApiJson, ApiQuery, Created, IdempotencyHeader, Principal};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route(
        "/v1/threads/{id}/messages",
        post(post_message).get(list_messages),
    )
}

/// A message to post. Customers send `content` (and optionally `reply_to`
/// and their own `metadata` keys) only; the server fills in the rest.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostMessage {
    /// Customers: always `user`. Agents: `assistant` (default) or `tool`.
    /// Admin: any; `user` when absent.
    pub role: Option<Role>,
    pub content: Content,
    /// Agents: their own name (the default). Admin: any.
    pub agent_name: Option<String>,
    /// Admin only; derived from the token otherwise.
    pub author: Option<Author>,
    /// `internal` notes never reach a customer. Tool messages are always internal.
    pub visibility: Option<Visibility>,
    /// Admin only; `published` when absent.
    pub status: Option<MessageStatus>,
    pub metadata: Option<serde_json::Map<String, Value>>,
    /// The message this one answers.
    pub reply_to: Option<MessageId>,
}

async fn post_message(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
    IdempotencyHeader(key): IdempotencyHeader,
    ApiJson(request): ApiJson<PostMessage>,
) -> Result<Created<Message>, ApiError> {
    let idempotency = super::idempotency_key(
        &principal,
        format!("POST /v1/threads/{id}/messages"),
        key,
        &request,
    );
    let new = rules::new_message(&principal, id, request, &state.config.limits)?;
    let reply_run = crate::replies::reply_run(&state, &new);
    let written = state
        .store
        .post_message(new, reply_run, idempotency)
        .await?;
    Ok(Created {
        value: written.value,
        replayed: written.replayed,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListMessages {
    /// Only messages with a greater `seq` (0 when absent).
    pub after_seq: Option<i64>,
    /// 1 to 500; 100 when absent.
    pub limit: Option<u32>,
}

/// A page of a thread's messages in `seq` order.
#[derive(Debug, Serialize, JsonSchema)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    /// Whether messages after this page exist.
    pub has_more: bool,
    /// The `after_seq` for the next page.
    pub next_after_seq: i64,
}

async fn list_messages(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
    ApiQuery(query): ApiQuery<ListMessages>,
) -> Result<Json<MessagePage>, ApiError> {
    let after_seq = query.after_seq.unwrap_or(0);
    let limit = query.limit.unwrap_or(100);
    if after_seq < 0 || !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "after_seq must be at least 0 and limit between 1 and 500",
        ));
    }
    state
        .store
        .get_thread(id, principal.customer_scope())
        .await?
        .ok_or(ApiError::NotFound("thread"))?;
    let filter = MessageFilter {
        after_seq,
        limit: limit + 1,
        customer_view: principal.customer_scope().is_some(),
    };
    let mut messages = state.store.list_messages(id, &filter).await?;
    if filter.customer_view {
        for message in &mut messages {
            if let Some(view) = message.for_customer() {
                *message = view;
            }
        }
    }
    let has_more = messages.len() > limit as usize;
    messages.truncate(limit as usize);
    let next_after_seq = messages.last().map_or(after_seq, |m| m.seq);
    Ok(Json(MessagePage {
        messages,
        has_more,
        next_after_seq,
    }))
}
