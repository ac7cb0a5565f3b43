//! The workflow engine's place in the server: the secret it signs with,
//! the declarative definitions it loads, and the AI's streamed text on its
//! way to the hub. (What the engine commits reaches the hub on the store's
//! change stream, like every commit.)

use std::time::Duration;

use tandem_model::{MessageId, ThreadId};
use tandem_store::{Store, StoreError};
use tandem_workflows::{Registry, Signer};

use crate::config::Config;
use crate::hub::Hub;

/// The name of the generated signing secret in the store.
pub const SIGNING_SECRET_NAME: &str = "workflow_signing";

/// The signer of hooks and resume URLs: `workflows.signing_secret`, or the
/// secret kept in the database (generated on first use), so that every
/// process on one database and every restart agrees on it.
pub async fn signer(store: &Store, config: &Config) -> Result<Signer, StoreError> {
    let secret = match &config.workflows.signing_secret {
        Some(secret) => secret.clone(),
        None => store.server_secret(SIGNING_SECRET_NAME).await?,
    };
    Ok(signer_with(&secret, config))
}

/// A signer with the given secret and the configured URL and tolerance.
pub(crate) fn signer_with(secret: &str, config: &Config) -> Signer {
    Signer::new(
        secret,
        &public_url(config),
        Duration::from_secs(config.workflows.hook_tolerance_secs),
    )
}

/// The server's address as callers reach it: `workflows.public_url`, or
/// `http://{listen}`.
pub fn public_url(config: &Config) -> String {
    config
        .workflows
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.listen))
}

/// Adds the declarative workflows of `workflows.definitions_dir` to
/// `registry` (with every older version still stored, for the runs pinned
/// to them) and returns how many definitions were loaded. It runs before
/// the [`AppState`](crate::state::AppState) exists, so it builds its own
/// model client from `ai` for `llm` steps (none while the AI is off: a
/// definition with an `llm` step then does not load); `ask_human` and
/// `approval` steps speak as `agent.name`.
pub async fn load_declarative(
    store: &Store,
    config: &Config,
    registry: &mut Registry,
) -> Result<usize, tandem_workflows::DefinitionError> {
    let Some(dir) = &config.workflows.definitions_dir else {
        return Ok(0);
    };
    // As the server's own client: a configuration the client refuses is
    // reported and leaves the AI off (`tandem serve` refuses it first).
    let llm = config
        .ai
        .enabled()
        .then(|| tandem_llm::Llm::new(&config.ai))
        .and_then(|client| {
            client
                .inspect_err(|error| {
                    tracing::error!(%error, "workflows: the model endpoint is misconfigured; `llm` steps cannot run")
                })
                .ok()
        });
    let services = tandem_workflows::declarative::Services {
        llm,
        agent_name: config.agent.name.clone(),
    };
    let loaded = tandem_workflows::load_definitions(store, dir, registry, &services).await?;
    for definition in &loaded {
        tracing::info!(
            name = %definition.name,
            version = %definition.version,
            path = %definition.path.display(),
            steps = definition.steps,
            "workflows: loaded a definition"
        );
    }
    Ok(loaded.len())
}

/// Streams the AI's text to the thread's subscribers as it is written.
impl tandem_router::ReplyEvents for Hub {
    fn delta(&self, thread_id: ThreadId, message_id: MessageId, delta: &tandem_llm::Delta) {
        match delta {
            tandem_llm::Delta::Text(text) => self.publish_delta(thread_id, message_id, text, false),
            tandem_llm::Delta::Restart => self.publish_delta(thread_id, message_id, "", true),
        }
    }
}
