//! Assembles the app and serves it.

use std::future::Future;
use std::sync::Arc;

use aide::axum::ApiRouter;
use aide::openapi::{Info, OpenApi, SecurityScheme};
use axum::Router;
use axum::extract::Request;
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::AppState;
use crate::api;
use crate::http::{ApiError, auth, metrics};
use crate::net::{self, Client};

/// The whole HTTP surface: `/v1` (authenticated), operations, the OpenAPI
/// document and the web pages.
pub fn build_app(state: AppState) -> Router {
    let mut openapi = OpenApi {
        info: Info {
            title: "Tandem".into(),
            description: Some(
                "Threads and messages where an AI and human support agents answer customers together."
                    .into(),
            ),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Info::default()
        },
        ..OpenApi::default()
    };
    let authenticated =
        api::v1_router().route_layer(from_fn_with_state(state.clone(), auth::authenticate));
    // Hooks carry a signature instead of a token: anonymous rate limit.
    let hooks =
        api::hooks::router().route_layer(from_fn_with_state(state.clone(), auth::limit_anonymous));
    // Sign-in routes check their own credentials (a widget key, a password,
    // the session cookie).
    let sessions = api::sessions::router()
        .route_layer(from_fn_with_state(state.clone(), auth::limit_anonymous));
    let router = ApiRouter::new()
        .merge(authenticated)
        .merge(hooks)
        .merge(sessions)
        .merge(api::ops::router())
        .finish_api(&mut openapi)
        .merge(api::ws::upgrade_router())
        .merge(crate::web::router());
    openapi
        .components
        .get_or_insert_default()
        .security_schemes
        .insert(
            "bearer".into(),
            aide::openapi::ReferenceOr::Item(SecurityScheme::Http {
                scheme: "bearer".into(),
                bearer_format: Some("tdm_…".into()),
                description: Some("An admin, agent or customer token.".into()),
                extensions: Default::default(),
            }),
        );
    let openapi = Arc::new(openapi);

    let x_request_id = axum::http::HeaderName::from_static("x-request-id");
    router
        .route(
            "/openapi.json",
            get(move || {
                let openapi = openapi.clone();
                async move { axum::Json(openapi) }
            }),
        )
        .route(
            "/",
            get(|| async { axum::response::Redirect::to("/inbox") }),
        )
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .route_layer(from_fn_with_state(state.clone(), metrics::track))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    // Only the method, path, request id and client address:
                    // never headers (tokens) or query strings.
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        path = %request.uri().path(),
                        request_id = %id,
                        client = %Client::from_parts(request.extensions()).address,
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::DEBUG)),
        )
        // The client's address (behind trusted proxies, from their header),
        // before the span that shows it and the rate limits that use it.
        .layer(from_fn_with_state(state.clone(), net::client::resolve))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .layer(CatchPanicLayer::custom(|_| -> Response {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .with_state(state)
}

/// Serves the app on `listener` (each connection held to the limits of
/// `connections`, see [`net`]) until `shutdown` resolves, then lets the
/// requests in flight finish, stops the workflow engine (its runs are handed
/// back), closes the WebSockets and closes the store.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store = state.store.clone();
    let hub = state.hub.clone();
    let engine = state.workflows.clone();
    hub.start();
    if let Err(error) = engine.start().await {
        hub.shutdown().await;
        store.close().await;
        return Err(std::io::Error::other(format!(
            "starting the workflow engine: {error}"
        )));
    }
    // The desk's passes (idle claims, presence, assignment); the hub's
    // shutdown stops and joins them before the store closes.
    let desk = state.desk.clone();
    hub.on_waiting_item({
        let desk = desk.clone();
        move || desk.kick()
    });
    tokio::spawn(hub.track(desk.run(store.clone(), hub.clone(), state.config.desk.clone())));
    // Other processes' runs that become due wake this one's dispatcher.
    let waker = engine.clone();
    hub.on_workflow_signal(move || waker.wake());
    // Whether each model answers, checked beside the server (not before
    // it); the hub's shutdown stops and joins it.
    if let Some(llm) = state.llm.clone()
        && state.config.ai.check_models_on_start
    {
        tokio::spawn(hub.track(crate::models::check(llm, store.clone(), hub.clone())));
    }
    let (config, metrics) = (state.config.clone(), state.metrics.clone());
    let app = build_app(state);
    let served = net::serve(listener, app, &config, metrics, shutdown).await;
    // Executors stop before their next step and release their leases while
    // the hub can still tell subscribers and the store is open.
    engine.shutdown().await;
    // WebSockets outlive their upgrade request: close them (1001) and wait.
    hub.shutdown().await;
    store.close().await;
    served
}
