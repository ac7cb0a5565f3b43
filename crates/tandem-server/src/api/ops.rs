//! Operations: liveness, readiness, metrics. (The OpenAPI document is served
//! by the app, which owns it.)

use aide::OperationOutput;
use aide::axum::ApiRouter;
use aide::axum::routing::get;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse};
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use tandem_llm::{ModelRole, ModelState};
use tandem_store::backend::BackendKind;

use crate::AppState;

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/healthz", get(healthz))
        .api_route("/readyz", get(readyz))
        .route("/metrics", axum::routing::get(metrics))
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Health {
    pub status: &'static str,
}

/// The process is up.
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    pub database: DatabaseReadiness,
    pub ai: AiReadiness,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DatabaseReadiness {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    pub reachable: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AiReadiness {
    /// A model endpoint is configured and the reply path is on; whether its
    /// models answer is in `models`.
    pub enabled: bool,
    /// Why the AI is off, when it is: every thread then routes to humans.
    pub reason: Option<&'static str>,
    /// Each configured model's state; null while no endpoint is configured.
    pub models: Option<ModelsReadiness>,
}

/// The model of each role.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelsReadiness {
    /// Writes the replies: while it is unavailable, replies go to humans.
    pub reply: ModelReadiness,
    /// Routes by classification: while it is unavailable, the classifier
    /// strategy sends messages to humans.
    pub classifier: ModelReadiness,
    /// Embeds routing examples and messages: while it is unavailable,
    /// examples are kept pending and the embeddings strategy abstains.
    pub embedding: ModelReadiness,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ModelReadiness {
    /// The model's name, as configured (unset classifier and embedding
    /// models are the reply model on an endpoint that is not the
    /// provider's standard one).
    pub model: String,
    /// `ok` (it answered), `unavailable` (it did not: see `reason`) or
    /// `unchecked` (not asked yet: the start-up check is under way, or
    /// turned off, and no call has gone to it).
    pub state: &'static str,
    /// The endpoint's answer, when `unavailable`.
    pub reason: Option<String>,
}

fn models_readiness(llm: &tandem_llm::Llm) -> ModelsReadiness {
    let of = |role: ModelRole| {
        let (state, reason) = match llm.model_state(role) {
            ModelState::Ok => ("ok", None),
            ModelState::Unavailable(reason) => ("unavailable", Some(reason)),
            ModelState::Unchecked => ("unchecked", None),
        };
        ModelReadiness {
            model: llm.config().role_model(role).to_owned(),
            state,
            reason,
        }
    };
    ModelsReadiness {
        reply: of(ModelRole::Reply),
        classifier: of(ModelRole::Classifier),
        embedding: of(ModelRole::Embedding),
    }
}

/// `/readyz`'s answer: the same body, 200 when ready and 503 when not; both
/// documented.
pub struct ReadinessResponse(Readiness);

impl IntoResponse for ReadinessResponse {
    fn into_response(self) -> Response {
        let status = if self.0.database.reachable {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(self.0)).into_response()
    }
}

impl OperationOutput for ReadinessResponse {
    type Inner = Readiness;

    fn operation_response(ctx: &mut GenContext, operation: &mut Operation) -> Option<DocResponse> {
        Json::<Readiness>::operation_response(ctx, operation)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, DocResponse)> {
        let Some(response) = Json::<Readiness>::operation_response(ctx, operation) else {
            return Vec::new();
        };
        vec![(Some(200), response.clone()), (Some(503), response)]
    }
}

/// The database answers; 503 when it does not. The AI's state (`ai`) does
/// not make the server unready: without it, threads go to humans.
async fn readyz(State(state): State<AppState>) -> ReadinessResponse {
    let reachable = state.store.ping().await.is_ok();
    let readiness = Readiness {
        status: if reachable { "ready" } else { "unavailable" },
        database: DatabaseReadiness {
            backend: match state.store.kind() {
                BackendKind::Sqlite => "sqlite",
                BackendKind::Postgres => "postgres",
            },
            reachable,
        },
        ai: match (&state.llm, state.replies) {
            (llm, false) => AiReadiness {
                enabled: false,
                reason: Some("the built-in reply path is off (reply.enabled = false)"),
                models: llm.as_ref().map(models_readiness),
            },
            (Some(llm), true) => AiReadiness {
                enabled: true,
                reason: None,
                models: Some(models_readiness(llm)),
            },
            (None, true) => AiReadiness {
                enabled: false,
                reason: Some(
                    "no OpenAI-compatible endpoint is configured; threads route to humans",
                ),
                models: None,
            },
        },
    };
    ReadinessResponse(readiness)
}

/// Prometheus text exposition. The desk's series are read from the store
/// now, over the last 24 hours; if that read fails the rest is still served.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let since = super::desk_metrics::default_since(&state.store);
    let desk = state
        .store
        .desk_metrics(since)
        .await
        .inspect_err(|error| tracing::warn!(%error, "metrics: could not read the desk's figures"))
        .ok();
    let body = state
        .metrics
        .render_with_desk(state.store.pool_stats(), desk.as_ref());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}
