//! `/v1/threads/{id}/suggestions`: a human agent asks the AI for a
//! suggested reply, then sends it, as written or edited, under its own
//! name. Staff only.
//!
//! A suggestion is an internal message of the thread (see
//! [`tandem_router::copilot`]): staff see it in the thread's list and live
//! on the hub, customers never do. Sending it posts an ordinary agent reply
//! (`role: assistant`, `agent_name` the sender, author `human`,
//! `metadata.provider` `"human"`) that points back at it in
//! `metadata.suggestion`; a suggestion is sent at most once.

use aide::OperationOutput;
use aide::axum::ApiRouter;
use aide::axum::routing::post;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, json};
use tandem_model::metadata::{PROVIDER, PROVIDER_METADATA, SUGGESTION};
use tandem_model::{Content, Message, MessageId, Role, ThreadId};
use tandem_router::copilot::{self, MAX_INSTRUCTIONS_CHARS};
use tandem_router::{Copilot, CopilotError, SuggestionRequest};
use tandem_store::StoreError;

use super::messages::{PostMessage, rules};
use super::threads::ThreadPath;
use crate::AppState;
use crate::http::error::{ErrorBody, ErrorDetail};
use crate::http::extract::ApiPath;
use crate::http::{ApiError, ApiJson, Created, Staff};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/threads/{id}/suggestions", post(suggest))
        .api_route("/v1/threads/{id}/suggestions/{message_id}/send", post(send))
}

/// The failures of these routes beyond [`ApiError`]'s: the AI being off
/// and the model failing have codes of their own, so that an inbox can
/// tell "no AI here" from "try again".
#[derive(Debug)]
pub enum SuggestionError {
    Api(ApiError),
    /// 503 `ai_off`: no model endpoint is configured.
    AiOff,
    /// 502 `ai_failed`: the model failed after the client's retries, or
    /// answered nothing.
    ModelFailed(String),
}

impl From<ApiError> for SuggestionError {
    fn from(error: ApiError) -> Self {
        Self::Api(error)
    }
}

impl From<StoreError> for SuggestionError {
    fn from(error: StoreError) -> Self {
        Self::Api(error.into())
    }
}

impl IntoResponse for SuggestionError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::Api(error) => return error.into_response(),
            Self::AiOff => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ai_off",
                "the AI is off on this server: no model endpoint is configured".to_owned(),
            ),
            Self::ModelFailed(why) => {
                tracing::warn!(cause = %why, "copilot: no suggestion");
                (
                    StatusCode::BAD_GATEWAY,
                    "ai_failed",
                    format!("the AI could not write a suggestion ({why}); try again"),
                )
            }
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_owned(),
                message,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl OperationOutput for SuggestionError {
    type Inner = ErrorBody;

    fn operation_response(ctx: &mut GenContext, operation: &mut Operation) -> Option<DocResponse> {
        ApiError::operation_response(ctx, operation)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, DocResponse)> {
        ApiError::inferred_responses(ctx, operation)
    }
}

/// The `{id}` and `{message_id}` of a suggestion's route.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct SuggestionPath {
    pub id: ThreadId,
    pub message_id: String,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Suggest {
    /// Guidance for this draft ("offer a refund", "keep it short"), at most
    /// 2000 characters; it goes to the model as the agent's words, never
    /// to the customer.
    pub instructions: Option<String>,
}

/// Asks the AI for a suggested reply: one model call (no tools, nothing
/// streamed) with the thread's history, for the caller to send under its
/// own name. Answers 201 with the suggestion, an internal message (author
/// `ai`, `metadata.suggestion.requested_by` the caller) that staff
/// subscribers of the thread also get live. Agents and admin (recorded as
/// `admin`); 403 for customers, 404 for an unknown thread, 422
/// `instructions_too_long`, 503 `ai_off` while no model endpoint is
/// configured, 502 `ai_failed` when the model fails after its retries.
async fn suggest(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
    ApiJson(request): ApiJson<Suggest>,
) -> Result<Created<Message>, SuggestionError> {
    let requested_by = staff.name().to_owned();
    let instructions = request.instructions.filter(|text| !text.trim().is_empty());
    if instructions
        .as_ref()
        .is_some_and(|text| text.chars().count() > MAX_INSTRUCTIONS_CHARS)
    {
        return Err(ApiError::Unprocessable {
            code: "instructions_too_long",
            message: format!("`instructions` is longer than {MAX_INSTRUCTIONS_CHARS} characters"),
        }
        .into());
    }
    let Some(llm) = state.llm.clone() else {
        return Err(SuggestionError::AiOff);
    };
    let copilot = Copilot::new(state.store.clone(), llm, state.config.agent.clone());
    let request = SuggestionRequest {
        thread_id: id,
        requested_by,
        instructions,
    };
    match copilot.suggest(&request).await {
        Ok(message) => Ok(Created {
            value: message,
            replayed: false,
        }),
        Err(CopilotError::ThreadNotFound) => Err(ApiError::NotFound("thread").into()),
        Err(CopilotError::Store(error)) => Err(error.into()),
        Err(CopilotError::Model(error)) => Err(SuggestionError::ModelFailed(format!(
            "{}: {error}",
            error.code()
        ))),
        Err(CopilotError::EmptyAnswer) => Err(SuggestionError::ModelFailed(
            "the model's answer was empty".into(),
        )),
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SendSuggestion {
    /// The reply as the agent edited it; the suggestion as written when
    /// absent.
    pub text: Option<String>,
    /// Admin only, and then required: the human agent the reply is sent
    /// as. Agents always send as themselves.
    pub agent_name: Option<String>,
}

/// Sends a suggestion to the customer: a public reply in the thread under
/// the caller's own name, stored exactly as an agent's reply to
/// `POST /v1/threads/{id}/messages` (author `human`, `metadata.provider`
/// `"human"`), with `metadata.suggestion` `{id, edited}`. Answers 201 with
/// the reply. Once per suggestion: 409 `suggestion_sent` after that. 403
/// for customers, 404 when the message is not a suggestion of the thread,
/// 422 `empty_text`, `text_too_long` (`limits.max_message_chars`), and for
/// admin tokens `agent_name_required`.
async fn send(
    State(state): State<AppState>,
    staff: Staff,
    ApiPath(SuggestionPath { id, message_id }): ApiPath<SuggestionPath>,
    ApiJson(request): ApiJson<SendSuggestion>,
) -> Result<Created<Message>, ApiError> {
    if matches!(staff, Staff::Admin(_)) && request.agent_name.is_none() {
        return Err(ApiError::Unprocessable {
            code: "agent_name_required",
            message: "an admin token sends a suggestion as a human agent: name it in `agent_name`"
                .into(),
        });
    }
    if let Some(text) = &request.text {
        check_text(&state, text)?;
    }
    let suggestion_id: MessageId = message_id
        .parse()
        .map_err(|_| ApiError::NotFound("suggestion"))?;
    state
        .store
        .get_thread(id, None)
        .await?
        .ok_or(ApiError::NotFound("thread"))?;
    let suggestion = copilot::find_suggestion(&state.store, id, suggestion_id)
        .await?
        .ok_or(ApiError::NotFound("suggestion"))?;
    let original = match &suggestion.content {
        Content::Text(text) => text.clone(),
        Content::Parts(_) => String::new(),
    };
    let edited = request.text.as_ref().is_some_and(|text| *text != original);
    let text = request.text.unwrap_or(original);
    check_text(&state, &text)?;

    let mut metadata = Map::new();
    if matches!(staff, Staff::Admin(_)) {
        // What an agent's reply carries, for the agent the admin names.
        let name = request.agent_name.clone().unwrap_or_default();
        metadata.insert(PROVIDER.into(), json!("human"));
        metadata.insert(PROVIDER_METADATA.into(), json!({"human": {"name": name}}));
    }
    let post = PostMessage {
        role: Some(Role::Assistant),
        content: Content::Text(text),
        agent_name: request.agent_name,
        author: None,
        visibility: None,
        status: None,
        metadata: Some(metadata),
        reply_to: suggestion.reply_to,
    };
    let mut new = rules::new_message(&staff.principal(), id, post, &state.config.limits)?;
    // Reserved: only this route marks a reply as a sent suggestion.
    new.metadata[SUGGESTION] = json!({"id": suggestion.id, "edited": edited});
    let written = state
        .store
        .post_message(new, None, Some(copilot::sent_key(suggestion_id)))
        .await?;
    if written.replayed {
        return Err(ApiError::Conflict {
            code: "suggestion_sent",
            message: format!(
                "suggestion {suggestion_id} was already sent (message {})",
                written.value.id
            ),
        });
    }
    Ok(Created {
        value: written.value,
        replayed: false,
    })
}

fn check_text(state: &AppState, text: &str) -> Result<(), ApiError> {
    let max = state.config.limits.max_message_chars;
    if text.trim().is_empty() {
        return Err(ApiError::Unprocessable {
            code: "empty_text",
            message: "`text` must not be empty".into(),
        });
    }
    if text.chars().count() > max {
        return Err(ApiError::Unprocessable {
            code: "text_too_long",
            message: format!("`text` is longer than {max} characters"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ai_errors_have_their_own_codes() {
        let off = SuggestionError::AiOff.into_response();
        assert_eq!(off.status(), StatusCode::SERVICE_UNAVAILABLE);
        let failed = SuggestionError::ModelFailed("timeout".into()).into_response();
        assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
        let api = SuggestionError::from(ApiError::NotFound("thread")).into_response();
        assert_eq!(api.status(), StatusCode::NOT_FOUND);
    }
}
