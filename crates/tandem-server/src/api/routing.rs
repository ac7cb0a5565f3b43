//! `/v1/policy` and `/v1/routing/examples`: how the router decides who
//! answers, and the labelled examples the embeddings strategy compares
//! with; `/v1/threads/{id}/usage`: what the models cost per thread.

use aide::axum::ApiRouter;
use aide::axum::routing::get;
use axum::Json;
use axum::extract::State;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tandem_model::names::POLICY_SETTING;
use tandem_model::{NewRoutingExample, Policy, Responder, RoutingExample, ThreadUsage};

use super::threads::ThreadPath;
use crate::AppState;
use crate::http::extract::ApiPath;
use crate::http::{Admin, ApiError, ApiJson, Created, Staff};

/// Longest example text.
const MAX_EXAMPLE_CHARS: usize = 4_000;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/policy", get(get_policy).put(put_policy))
        .api_route("/v1/routing/examples", get(list_examples).post(add_example))
        .api_route("/v1/threads/{id}/usage", get(thread_usage))
}

/// The policy in force (the default until one is set).
async fn get_policy(State(state): State<AppState>, _: Staff) -> Result<Json<Policy>, ApiError> {
    Ok(Json(state.store.policy().await?))
}

/// Replaces the policy; fields left out take their defaults. Runs already
/// under way keep the policy they started with. 422 `invalid_policy`.
async fn put_policy(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(policy): ApiJson<Policy>,
) -> Result<Json<Policy>, ApiError> {
    policy
        .validate()
        .map_err(|message| ApiError::Unprocessable {
            code: "invalid_policy",
            message,
        })?;
    let value = serde_json::to_value(&policy).map_err(|e| ApiError::Internal(e.to_string()))?;
    state.store.put_setting(POLICY_SETTING, value).await?;
    Ok(Json(policy))
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddExample {
    /// A customer message, as customers write them.
    pub text: String,
    /// Who should answer messages like it.
    pub label: Responder,
}

/// Adds a labelled example. Its embedding is computed now when the AI is
/// on (and later, once, when it is not), and kept in the store.
async fn add_example(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(request): ApiJson<AddExample>,
) -> Result<Created<RoutingExample>, ApiError> {
    let chars = request.text.chars().count();
    if request.text.trim().is_empty() || chars > MAX_EXAMPLE_CHARS {
        return Err(ApiError::Unprocessable {
            code: "invalid_text",
            message: format!("`text` must hold 1 to {MAX_EXAMPLE_CHARS} characters"),
        });
    }
    let (vector, vector_model) = match &state.llm {
        Some(llm) => match llm.embed(vec![request.text.clone()]).await {
            Ok(mut embedded) => (embedded.vectors.pop(), Some(embedded.model)),
            Err(error) => {
                // The strategy embeds it on first use instead.
                tracing::warn!(%error, "routing: embedding an example failed");
                (None, None)
            }
        },
        None => (None, None),
    };
    let example = state
        .store
        .add_routing_example(NewRoutingExample {
            text: request.text,
            label: request.label,
            vector: vector.clone(),
            vector_model: vector.and(vector_model),
        })
        .await?;
    Ok(Created {
        value: example,
        replayed: false,
    })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExampleList {
    pub examples: Vec<ExampleSummary>,
}

/// An example without its vector (hundreds of numbers nobody reads).
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExampleSummary {
    pub id: tandem_model::RoutingExampleId,
    pub text: String,
    pub label: Responder,
    /// The model whose embedding is stored; none until computed.
    pub vector_model: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

async fn list_examples(
    State(state): State<AppState>,
    _: Staff,
) -> Result<Json<ExampleList>, ApiError> {
    let examples = state
        .store
        .routing_examples()
        .await?
        .into_iter()
        .map(|e| ExampleSummary {
            id: e.id,
            text: e.text,
            label: e.label,
            vector_model: e.vector.and(e.vector_model),
            created_at: e.created_at,
        })
        .collect();
    Ok(Json(ExampleList { examples }))
}

/// Tokens the models used for a thread: in all, and per model and purpose.
async fn thread_usage(
    State(state): State<AppState>,
    _: Staff,
    ApiPath(ThreadPath { id }): ApiPath<ThreadPath>,
) -> Result<Json<ThreadUsage>, ApiError> {
    state
        .store
        .get_thread(id, None)
        .await?
        .ok_or(ApiError::NotFound("thread"))?;
    Ok(Json(state.store.thread_usage(id).await?))
}
