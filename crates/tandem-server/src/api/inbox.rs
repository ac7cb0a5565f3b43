//! `/v1/inbox`: the work waiting for humans — questions the AI asked,
//! drafts to approve, escalations, handoffs — and answering, approving or
//! rejecting it. Staff only.
//!
//! One agent works an item at a time: `claim` takes it (a conditional
//! update, so of two agents racing exactly one wins), `release` gives it
//! back, and an item claimed by another agent can be resolved only by an
//! admin. A claim left idle for `desk.claim_idle_secs` goes back to the
//! queue ([`crate::desk`]). An open item may still be resolved unclaimed.
//!
//! Each resolution is one store transaction that also wakes the reply run
//! waiting on the item, so an answer can never be recorded while its run
//! sleeps on.

use aide::axum::ApiRouter;
use aide::axum::routing::{get, post};
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tandem_model::{
    ExpiryRecord, InboxActor, InboxFilter, InboxItem, InboxItemId, InboxKind, InboxStatus,
    InboxStatuses, InboxView, Message, Release, Resolved, ThreadId,
};

use crate::AppState;
use crate::http::extract::ApiPath;
use crate::http::{ApiError, ApiJson, ApiQuery, Staff};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/inbox", get(list_inbox))
        .api_route("/v1/inbox/{id}", get(get_item))
        .api_route("/v1/inbox/{id}/expiries", get(expiries))
        .api_route("/v1/inbox/{id}/claim", post(claim))
        .api_route("/v1/inbox/{id}/release", post(release))
        .api_route("/v1/inbox/{id}/answer", post(answer))
        .api_route("/v1/inbox/{id}/approve", post(approve))
        .api_route("/v1/inbox/{id}/reject", post(reject))
}

/// The `{id}` of an inbox route; an id that does not parse is an item that
/// does not exist.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ItemPath {
    pub id: String,
}

fn item_id(id: &str) -> Result<InboxItemId, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound("inbox item"))
}

/// The caller as an inbox actor: an agent by its name, or an admin
/// (recorded as `admin`, and free to act on items other agents hold).
fn actor(staff: &Staff) -> InboxActor {
    let name = staff.name().to_owned();
    match staff {
        Staff::Admin(_) => InboxActor::admin(name),
        Staff::Agent(_) => InboxActor::agent(name),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListInbox {
    pub kind: Option<InboxKind>,
    /// Open and claimed items when absent.
    pub status: Option<InboxStatus>,
    pub thread_id: Option<ThreadId>,
    /// Only items claimed by this agent; `me` for the caller's own.
    pub claimed_by: Option<String>,
    /// Only items for this team.
    pub team: Option<String>,
    /// The next page: the items after this one (the last of the previous
    /// page), in the listing's order.
    pub after: Option<InboxItemId>,
    /// 1 to 200; 50 when absent.
    pub limit: Option<u32>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct InboxPage {
    /// Oldest due first, then oldest opened; each with its thread and the
    /// thread's latest messages.
    pub items: Vec<InboxView>,
}

/// Items, filtered, oldest due first.
async fn list_inbox(
    State(state): State<AppState>,
    staff: Staff,
    ApiQuery(query): ApiQuery<ListInbox>,
) -> Result<Json<InboxPage>, ApiError> {
    let me = staff.name().to_owned();
    let limit = query.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 200",
        ));
    }
    let items = state
        .store
        .list_inbox(&InboxFilter {
            kind: query.kind,
            status: query
                .status
                .map_or(InboxStatuses::Pending, InboxStatuses::Only),
            thread_id: query.thread_id,
            claimed_by: query
                .claimed_by
                .map(|name| if name == "me" { me } else { name }),
            team: query.team,
            after: query.after,
            limit,
        })
        .await?;
    let items = state
        .store
        .inbox_views(items, item_history(&state).await?)
        .await?;
    Ok(Json(InboxPage { items }))
}

/// An item with its thread and the thread's latest messages.
async fn get_item(
    State(state): State<AppState>,
    _: Staff,
    ApiPath(ItemPath { id }): ApiPath<ItemPath>,
) -> Result<Json<InboxView>, ApiError> {
    let item = state
        .store
        .get_inbox_item(item_id(&id)?)
        .await?
        .ok_or(ApiError::NotFound("inbox item"))?;
    let views = state
        .store
        .inbox_views(vec![item], item_history(&state).await?)
        .await?;
    views
        .into_iter()
        .next()
        .map(Json)
        .ok_or(ApiError::NotFound("inbox item"))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExpiryList {
    /// Oldest first.
    pub expiries: Vec<ExpiryRecord>,
}

/// Each time the item's deadline passed, and what the fallback did.
async fn expiries(
    State(state): State<AppState>,
    _: Staff,
    ApiPath(ItemPath { id }): ApiPath<ItemPath>,
) -> Result<Json<ExpiryList>, ApiError> {
    let id = item_id(&id)?;
    state
        .store
        .get_inbox_item(id)
        .await?
        .ok_or(ApiError::NotFound("inbox item"))?;
    let expiries = state.store.item_expiries(id).await?;
    Ok(Json(ExpiryList { expiries }))
}

/// How many of its thread's messages an item carries (the policy's).
async fn item_history(state: &AppState) -> Result<u32, ApiError> {
    Ok(state.store.policy().await?.desk.item_history)
}

/// Claims an item for the caller: one agent at a time. Claiming an item
/// the caller already holds again is a 200 that refreshes the claim (it
/// keeps an idle claim from going back to the queue). 409 `already_claimed`
/// (the message names the holder), `item_closed`.
async fn claim(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(ItemPath { id }): ApiPath<ItemPath>,
) -> Result<Json<InboxItem>, ApiError> {
    let actor = actor(&staff);
    Ok(Json(
        state.store.claim_inbox_item(item_id(&id)?, &actor).await?,
    ))
}

/// Gives a claimed item back to the queue: by the agent who holds it, or
/// an admin. An item nobody holds is answered as it is. 403
/// `not_your_claim`, 409 `item_closed`.
async fn release(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(ItemPath { id }): ApiPath<ItemPath>,
) -> Result<Json<InboxItem>, ApiError> {
    let actor = actor(&staff);
    match state
        .store
        .release_inbox_item(item_id(&id)?, &actor)
        .await?
    {
        Release::Released(item) | Release::NotClaimed(item) => Ok(Json(item)),
        Release::HeldByOther { holder } => Err(ApiError::forbidden(
            "not_your_claim",
            format!("inbox item {id} is claimed by {holder}"),
        )),
    }
}

/// The item after its resolution, and the message it published or stored.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Resolution {
    pub item: InboxItem,
    /// The answer (`answer`: a tool result, internal), the published reply
    /// (`approve`); none for `reject`.
    pub message: Option<Message>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// A question's answer, from which the AI writes the customer's reply;
    /// for a handoff or an escalation, the reply to the customer itself.
    pub text: String,
}

/// Answers a `question`: stored as the tool's result (`role: tool`,
/// provider human), and the AI goes on. Answers a `handoff` or an
/// `escalation`: the text is the caller's reply to the customer, under its
/// own name. 409 `item_closed`, `wrong_item_kind` (an approval),
/// `claimed_by_other`.
async fn answer(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(ItemPath { id }): ApiPath<ItemPath>,
    ApiJson(request): ApiJson<Answer>,
) -> Result<Json<Resolution>, ApiError> {
    let by = actor(&staff);
    let id = item_id(&id)?;
    check_text(&state, "text", &request.text)?;
    let resolved = state
        .store
        .answer(id, request.text, by, now(&state))
        .await?;
    Ok(Json(Resolution::from(resolved)))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approve {
    /// The reply as edited by the agent; the draft as written when absent.
    pub text: Option<String>,
}

/// Approves a draft: it is published to the customer as the thread's next
/// message (edited, if `text` is given). 409 `item_closed`, `wrong_item_kind`,
/// `claimed_by_other`.
async fn approve(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(ItemPath { id }): ApiPath<ItemPath>,
    ApiJson(request): ApiJson<Approve>,
) -> Result<Json<Resolution>, ApiError> {
    let by = actor(&staff);
    let id = item_id(&id)?;
    if let Some(text) = &request.text {
        check_text(&state, "text", text)?;
    }
    let resolved = state
        .store
        .approve_draft(id, request.text, by, now(&state))
        .await?;
    Ok(Json(Resolution::from(resolved)))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    /// Why the draft is wrong: kept with the item, for the team and for
    /// tuning the AI.
    pub review: String,
}

/// Rejects a draft: it is never published, the review is recorded, and the
/// thread goes to humans. 409 `item_closed`, `wrong_item_kind`,
/// `claimed_by_other`.
async fn reject(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(ItemPath { id }): ApiPath<ItemPath>,
    ApiJson(request): ApiJson<Reject>,
) -> Result<Json<Resolution>, ApiError> {
    let by = actor(&staff);
    let id = item_id(&id)?;
    check_text(&state, "review", &request.review)?;
    let resolved = state
        .store
        .reject_draft(id, request.review, by, now(&state))
        .await?;
    Ok(Json(Resolution::from(resolved)))
}

/// Now on the workflow clock, when the waiting run becomes due.
fn now(state: &AppState) -> i64 {
    tandem_store::micros(state.workflows.clock().now())
}

fn check_text(state: &AppState, field: &str, text: &str) -> Result<(), ApiError> {
    let max = state.config.limits.max_message_chars;
    if text.trim().is_empty() {
        return Err(ApiError::Unprocessable {
            code: "empty_text",
            message: format!("`{field}` must not be empty"),
        });
    }
    if text.chars().count() > max {
        return Err(ApiError::Unprocessable {
            code: "text_too_long",
            message: format!("`{field}` is longer than {max} characters"),
        });
    }
    Ok(())
}

impl From<Resolved> for Resolution {
    fn from(resolved: Resolved) -> Self {
        Resolution {
            item: resolved.item,
            message: resolved.message,
        }
    }
}
