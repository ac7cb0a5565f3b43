//! `/v1/desk/metrics`: how the human desk is doing — time to the first
//! human response and to resolution, overall and per agent, what waits now,
//! and which deadlines passed. Staff only. The same figures feed the
//! `tandem_desk_*` series of `/metrics`.

use aide::axum::ApiRouter;
use aide::axum::routing::get;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Duration, Utc};
use schemars::JsonSchema;
use serde::Deserialize;
use tandem_model::DeskMetrics;
use tandem_store::Store;

use crate::AppState;
use crate::http::{ApiError, ApiQuery, Staff};

/// The window when the caller names none: the last day.
pub const DEFAULT_WINDOW: Duration = Duration::hours(24);

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route("/v1/desk/metrics", get(desk_metrics))
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeskMetricsQuery {
    /// The start of the window (RFC 3339); the last 24 hours when absent.
    /// Durations are those of the items opened since then; counts of open
    /// and claimed items are of now.
    pub since: Option<DateTime<Utc>>,
}

/// The desk's figures since `since`, overall and per agent.
async fn desk_metrics(
    State(state): State<AppState>,
    _: Staff,
    ApiQuery(query): ApiQuery<DeskMetricsQuery>,
) -> Result<Json<DeskMetrics>, ApiError> {
    let since = query.since.unwrap_or_else(|| default_since(&state.store));
    Ok(Json(state.store.desk_metrics(since).await?))
}

/// The start of the default window: [`DEFAULT_WINDOW`] ago on the store's
/// clock, which stamps the items.
pub fn default_since(store: &Store) -> DateTime<Utc> {
    store.now() - DEFAULT_WINDOW
}
