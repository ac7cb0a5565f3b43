//! The handles every request may use, passed explicitly with axum's `State`.

use std::sync::Arc;

use tandem_store::Store;

use crate::config::Config;
use crate::http::metrics::Metrics;
use crate::http::rate_limit::RateLimits;
use crate::hub::Hub;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub rate_limits: Arc<RateLimits>,
    pub hub: Hub,
}

impl AppState {
    pub fn new(store: Store, config: Config) -> Self {
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limits));
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(store.clone(), config.hub.clone(), metrics.clone());
        Self {
            store,
            config: Arc::new(config),
            metrics,
            rate_limits,
            hub,
        }
    }
}
