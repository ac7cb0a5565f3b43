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
use tandem_router::embeddings::is_embedded;

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

/// Whether an example's embedding is there to vote with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmbeddingState {
    /// Embedded by the configured embedding model: the example votes.
    Ready,
    /// Not embedded by it yet (the AI is off, the embedding model did not
    /// answer, or the model changed): the example is kept and embedded when
    /// the model answers, at the next start-up check or routing by
    /// examples; until then it does not vote.
    Pending,
}

/// Why an example is pending, said when it is added.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ExampleWarning {
    /// `ai_off` (no model endpoint is configured) or `embeddings_unavailable`
    /// (the embedding model did not answer).
    pub code: &'static str,
    pub message: String,
}

/// The example as stored, and whether it can vote yet.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AddedExample {
    #[serde(flatten)]
    pub example: RoutingExample,
    pub embedding: EmbeddingState,
    /// Present when `embedding` is `pending`: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<ExampleWarning>,
}

/// Adds a labelled example, embedding it now when the embedding model
/// answers. When it does not (a 501 from a server that does not embed, a
/// model it does not have) or the AI is off, the example is stored all the
/// same, with `embedding: pending` and a `warning` that says why: it is
/// embedded as soon as the model answers, and an integrator loading
/// examples before the model is up loses none of them.
async fn add_example(
    State(state): State<AppState>,
    _: Admin,
    ApiJson(request): ApiJson<AddExample>,
) -> Result<Created<AddedExample>, ApiError> {
    let chars = request.text.chars().count();
    if request.text.trim().is_empty() || chars > MAX_EXAMPLE_CHARS {
        return Err(ApiError::Unprocessable {
            code: "invalid_text",
            message: format!("`text` must hold 1 to {MAX_EXAMPLE_CHARS} characters"),
        });
    }
    let (vector, warning) = match &state.llm {
        Some(llm) => {
            let model = llm.config().embedding_model();
            match llm.embed(vec![request.text.clone()]).await {
                Ok(mut embedded) => (embedded.vectors.pop().map(|v| (v, model.to_owned())), None),
                Err(error) => {
                    tracing::warn!(
                        model,
                        code = error.code(),
                        %error,
                        "routing: the embedding model did not embed an example; it is stored as pending",
                    );
                    let warning = ExampleWarning {
                        code: "embeddings_unavailable",
                        message: format!(
                            "the embedding model {model:?} did not answer ({}: {error}); the \
                             example is stored and will be embedded when the model answers",
                            error.code()
                        ),
                    };
                    (None, Some(warning))
                }
            }
        }
        None => (
            None,
            Some(ExampleWarning {
                code: "ai_off",
                message: "no model endpoint is configured; the example is stored and will be \
                          embedded once one is"
                    .to_owned(),
            }),
        ),
    };
    // Stored under the model's name as configured (not as the provider
    // reports it): that is the name the strategy looks vectors up by.
    let (vector, vector_model) = vector.unzip();
    let example = state
        .store
        .add_routing_example(NewRoutingExample {
            text: request.text,
            label: request.label,
            vector,
            vector_model,
        })
        .await?;
    let embedding = if warning.is_none() && example.vector.is_some() {
        EmbeddingState::Ready
    } else {
        EmbeddingState::Pending
    };
    Ok(Created {
        value: AddedExample {
            example,
            embedding,
            warning,
        },
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
    /// `ready` once embedded by the configured embedding model.
    pub embedding: EmbeddingState,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

async fn list_examples(
    State(state): State<AppState>,
    _: Staff,
) -> Result<Json<ExampleList>, ApiError> {
    let model = state.llm.as_ref().map(|llm| llm.config().embedding_model());
    let examples = state
        .store
        .routing_examples()
        .await?
        .into_iter()
        .map(|e| ExampleSummary {
            embedding: match model {
                Some(model) if is_embedded(&e, model) => EmbeddingState::Ready,
                _ => EmbeddingState::Pending,
            },
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
