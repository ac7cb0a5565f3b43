//! The handles every request may use, passed explicitly with axum's `State`.

use std::sync::Arc;

use tandem_llm::Llm;
use tandem_router::{DeadlineWatch, Replier};
use tandem_store::{Store, StoreError};
use tandem_workflows::{Engine, Registry};

use crate::config::Config;
use crate::http::metrics::Metrics;
use crate::http::rate_limit::RateLimits;
use crate::hub::Hub;
use crate::workflows;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub rate_limits: Arc<RateLimits>,
    pub hub: Hub,
    /// The workflow engine; [`crate::serve`] starts and stops it.
    pub workflows: Engine,
    /// The model client; none while the AI is off.
    pub llm: Option<Llm>,
    /// Whether customer messages start `reply` runs.
    pub replies: bool,
    /// The desk's assignment pass, to kick when work or agents change.
    pub desk: crate::desk::Desk,
}

impl AppState {
    /// The state of a server that runs the workflows of `registry` (the
    /// binary: the declarative workflows; tests: their own). The engine
    /// and the desk follow the store's clock ([`Store::clock`]: the system
    /// clock, or in tests a clock they move). Reads or makes the signing
    /// secret, hence async.
    pub async fn build(
        store: Store,
        config: Config,
        registry: Registry,
    ) -> Result<Self, StoreError> {
        let signer = workflows::signer(&store, &config).await?;
        Ok(Self::assemble(store, config, registry, signer))
    }

    /// The state of a server without workflows of its own (tools and
    /// benchmarks). Hooks and resume URLs are checked with
    /// `workflows.signing_secret`, or else with a secret of this process
    /// alone: a server that should accept them uses [`AppState::build`].
    pub fn new(store: Store, config: Config) -> Self {
        let secret = config.workflows.signing_secret.clone().unwrap_or_else(|| {
            format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            )
        });
        let signer = workflows::signer_with(&secret, &config);
        Self::assemble(store, config, Registry::new(), signer)
    }

    fn assemble(
        store: Store,
        config: Config,
        mut registry: Registry,
        signer: tandem_workflows::Signer,
    ) -> Self {
        let rate_limits = Arc::new(RateLimits::new(&config.rate_limits));
        let metrics = Arc::new(Metrics::new());
        let hub = Hub::new(store.clone(), config.hub.clone(), metrics.clone());
        let llm = model_client(&config);
        let replies = config.reply.enabled;
        if replies {
            let replier = Replier::new(
                store.clone(),
                llm.clone(),
                config.agent.clone(),
                Arc::new(hub.clone()),
            );
            registry.register(replier.workflow());
        }
        // Deadlines are kept whether or not this process routes replies:
        // their runs exist from the moment their items do.
        registry.register(
            DeadlineWatch::new(
                store.clone(),
                config.agent.clone(),
                config.desk.presence_ttl(),
            )
            .workflow(),
        );
        let workflows = Engine::new(store.clone(), registry, &config.workflows.engine, signer);
        // What every commit means beyond the push hub (which follows the
        // stream once started) and the engine (likewise).
        let desk = crate::desk::Desk::default();
        store.subscribe(metrics.clone());
        store.subscribe(Arc::new(desk.clone()));
        Self {
            store,
            config: Arc::new(config),
            metrics,
            rate_limits,
            hub,
            workflows,
            llm,
            replies,
            desk,
        }
    }
}

/// The model client the configuration asks for. A configuration the
/// client refuses (a malformed base URL, say) is reported and leaves the
/// AI off; `tandem serve` checks it first and refuses to start.
fn model_client(config: &Config) -> Option<Llm> {
    if !config.ai.enabled() {
        return None;
    }
    Llm::new(&config.ai)
        .inspect_err(|error| tracing::error!(%error, "ai: the model endpoint is misconfigured; the AI is off"))
        .ok()
}
