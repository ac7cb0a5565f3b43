//! Prometheus metrics: requests by route and status, latency histograms,
//! database pool occupancy, rate-limit refusals, WebSocket connections and
//! workflow runs that ended. The registry lives in the
//! app state, not in a global, so several servers can share a process.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    rate_limited: Family<KindLabels, Counter>,
    pool: Family<PoolLabels, Gauge>,
    ws_connections: Gauge,
    ws_closed: Family<ReasonLabels, Counter>,
    runs_finished: Family<RunLabels, Counter>,
    replies: Family<OutcomeLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    workflow: String,
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tandem");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ])
        });
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route",
            latency.clone(),
        );
        let rate_limited = Family::<KindLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by token kind",
            rate_limited.clone(),
        );
        let pool = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections, by state",
            pool.clone(),
        );
        let ws_connections = Gauge::default();
        registry.register(
            "ws_connections",
            "Open WebSocket connections",
            ws_connections.clone(),
        );
        let ws_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "ws_closed",
            "WebSocket connections the server closed, by reason",
            ws_closed.clone(),
        );
        let runs_finished = Family::<RunLabels, Counter>::default();
        registry.register(
            "workflow_runs_finished",
            "Workflow runs that ended on this process, by workflow and status \
             (completed, failed, cancelled)",
            runs_finished.clone(),
        );
        let replies = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "replies",
            "Customer messages answered by the reply path on this process, by outcome \
             (replied, approved, rejected, handed_over, already_with_humans, superseded, \
             taken_over)",
            replies.clone(),
        );
        Self {
            registry,
            runs_finished,
            replies,
            requests,
            latency,
            rate_limited,
            pool,
            ws_connections,
            ws_closed,
        }
    }

    pub fn ws_connected(&self) {
        self.ws_connections.inc();
    }

    pub fn ws_disconnected(&self) {
        self.ws_connections.dec();
    }

    /// A connection the server closed: `too_slow`, `no_pong`, `flood`,
    /// `too_big`, `shutdown`.
    pub fn ws_closed(&self, reason: &'static str) {
        self.ws_closed.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A `reply` run ended with `outcome`.
    pub fn reply_finished(&self, outcome: &str) {
        self.replies
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A run ended (`completed`, `failed` or `cancelled`) by this process.
    pub fn run_finished(&self, workflow: &str, status: &'static str) {
        self.runs_finished
            .get_or_create(&RunLabels {
                workflow: workflow.to_owned(),
                status,
            })
            .inc();
    }

    pub fn rate_limited(&self, kind: &str) {
        self.rate_limited
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The text exposition, with the pool gauges read now.
    pub fn render(&self, pool: tandem_store::backend::PoolStats) -> String {
        self.pool
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(pool.idle));
        self.pool
            .get_or_create(&PoolLabels { state: "in_use" })
            .set(i64::from(pool.size.saturating_sub(pool.idle)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Middleware recording every request under its route template (never the
/// raw path, which would make one series per id).
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let response = next.run(request).await;
    let metrics = &state.metrics;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.clone(),
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}
