//! Prometheus metrics: requests by route and status, latency histograms,
//! database pool occupancy, rate-limit refusals, TCP connections open and
//! closed by the server, WebSocket connections and
//! workflow runs that ended; and, read from the store at each scrape, the
//! desk's (inbox items open, response and resolution times, expiries). The
//! registry lives in the app state, not in a global, so several servers
//! can share a process.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tandem_model::{DeskMetrics, DurationFigures};

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
    connections: Gauge,
    connections_closed: Family<ReasonLabels, Counter>,
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
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open TCP connections from clients (upgraded WebSockets included)",
            connections.clone(),
        );
        let connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "connections_closed",
            "TCP connections the server refused or closed, by reason (per_address, \
             capacity, header_timeout, idle_timeout)",
            connections_closed.clone(),
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
            connections,
            connections_closed,
            ws_connections,
            ws_closed,
        }
    }

    pub fn connection_opened(&self) {
        self.connections.inc();
    }

    pub fn connection_ended(&self) {
        self.connections.dec();
    }

    /// A connection refused (`per_address`, `capacity`) or closed
    /// (`header_timeout`, `idle_timeout`) by the server.
    pub fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&ReasonLabels { reason })
            .inc();
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
        self.render_with_desk(pool, None)
    }

    /// [`Metrics::render`], and the desk's series from `desk` (read from
    /// the store at this scrape; none when that failed).
    pub fn render_with_desk(
        &self,
        pool: tandem_store::backend::PoolStats,
        desk: Option<&DeskMetrics>,
    ) -> String {
        self.pool
            .get_or_create(&PoolLabels { state: "idle" })
            .set(i64::from(pool.idle));
        self.pool
            .get_or_create(&PoolLabels { state: "in_use" })
            .set(i64::from(pool.size.saturating_sub(pool.idle)));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = text::encode_registry(&mut out, &self.registry);
        if let Some(desk) = desk {
            let _ = text::encode_registry(&mut out, &desk_registry(desk));
        }
        let _ = text::encode_eof(&mut out);
        out
    }
}

/// A label set of the desk's series: `quantile` and, but for the desk as a
/// whole, `agent`.
type DeskLabels = Vec<(&'static str, String)>;

/// The desk's series, built afresh at each scrape from the store's figures,
/// so that an agent who left the figures leaves no stale series. Agents
/// are at most [`DeskMetrics::MAX_AGENTS`], which bounds the labels.
fn desk_registry(desk: &DeskMetrics) -> Registry {
    let mut registry = Registry::with_prefix("tandem");
    let open = Gauge::<i64>::default();
    open.set(gauge_value(desk.overall.open));
    registry.register(
        "desk_items_open",
        "Inbox items waiting for a human now (open or claimed)",
        open,
    );
    // A counter: `inbox_expiries` only grows.
    let expired = Counter::<u64>::default();
    expired.inc_by(desk.expiries_all_time);
    registry.register(
        "desk_items_expired",
        "Times an inbox item's deadline passed, since the database began",
        expired,
    );
    let first_response = Family::<DeskLabels, Gauge<f64, AtomicU64>>::default();
    let resolution = Family::<DeskLabels, Gauge<f64, AtomicU64>>::default();
    let agent_open = Family::<DeskLabels, Gauge>::default();
    let quantiles = |family: &Family<DeskLabels, Gauge<f64, AtomicU64>>,
                     figures: &DurationFigures,
                     agent: Option<&str>| {
        for (quantile, value) in [("0.5", figures.p50_seconds), ("0.9", figures.p90_seconds)] {
            let Some(value) = value else { continue };
            let mut labels = vec![("quantile", quantile.to_owned())];
            if let Some(agent) = agent {
                labels.push(("agent", agent.to_owned()));
            }
            family.get_or_create(&labels).set(value);
        }
    };
    quantiles(&first_response, &desk.overall.first_response, None);
    quantiles(&resolution, &desk.overall.resolution, None);
    for agent in &desk.agents {
        quantiles(&first_response, &agent.first_response, Some(&agent.agent));
        quantiles(&resolution, &agent.resolution, Some(&agent.agent));
        agent_open
            .get_or_create(&vec![("agent", agent.agent.clone())])
            .set(gauge_value(agent.claimed));
    }
    registry.register(
        "desk_first_response_seconds",
        "Time from an inbox item's opening to the first human response, over the items \
         opened in the last 24 hours, by quantile (and agent who responded)",
        first_response,
    );
    registry.register(
        "desk_resolution_seconds",
        "Time from an inbox item's opening to its resolution, over the items opened in \
         the last 24 hours and resolved, by quantile (and agent who resolved it)",
        resolution,
    );
    registry.register(
        "desk_agent_open_items",
        "Inbox items each agent holds now",
        agent_open,
    );
    registry
}

fn gauge_value(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
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

/// Counts the runs this process ends, from the store's change stream: a
/// run's end is committed once, by the process that ends it.
impl tandem_store::ChangeSink for Metrics {
    fn apply(&self, changes: &[tandem_store::Change]) {
        for change in changes {
            let tandem_store::Change::Run { run, .. } = change else {
                continue;
            };
            if !run.status.is_finished() {
                continue;
            }
            self.run_finished(&run.name, run.status.as_str());
            if run.name == tandem_model::names::REPLY_WORKFLOW
                && let Some(outcome) = run
                    .result
                    .as_ref()
                    .and_then(|r| r.get("outcome"))
                    .and_then(|o| o.as_str())
            {
                self.reply_finished(outcome);
            }
        }
    }
}
