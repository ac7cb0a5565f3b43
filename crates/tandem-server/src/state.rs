//! The handles every request may use, passed explicitly with axum's `State`.

use std::sync::Arc;

use tandem_store::Store;

use crate::config::Config;
use crate::http::metrics::Metrics;
use crate::http::rate_limit::RateLimits;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub rate_limits: Arc<RateLimits>,
}

impl AppState {
    pub fn new(store: Store, config: Config) -> Self {
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limits));
        Self {
            store,
            config: Arc::new(config),
            metrics: Arc::new(Metrics::new()),
            rate_limits,
        }
    }
}
