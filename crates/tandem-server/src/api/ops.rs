//! Operations: liveness, readiness, metrics. (The OpenAPI document is served
//! by the app, which owns it.)

use aide::axum::ApiRouter;
use aide::axum::routing::get;
use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use schemars::JsonSchema;
use serde::Serialize;
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
    pub enabled: bool,
    /// Why the AI is off, when it is: every thread then routes to humans.
    pub reason: Option<&'static str>,
}

/// The database answers; 503 when it does not.
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
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
            (_, false) => AiReadiness {
                enabled: false,
                reason: Some("the built-in reply path is off (reply.enabled = false)"),
            },
            (Some(_), true) => AiReadiness {
                enabled: true,
                reason: None,
            },
            (None, true) => AiReadiness {
                enabled: false,
                reason: Some(
                    "no OpenAI-compatible endpoint is configured; threads route to humans",
                ),
            },
        },
    };
    let status = if reachable {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

/// Prometheus text exposition. The desk's series are read from the store
/// now, over the last 24 hours; if that read fails the rest is still served.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let since = super::desk_metrics::default_since();
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
