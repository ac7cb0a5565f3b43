//! The start-up check of the model endpoint: each configured model is asked
//! once, cheaply ([`Llm::check_models`]); a model that does not answer is
//! named in an ERROR line with the endpoint's answer, and `/readyz` shows
//! each model's state. It runs beside the server, never before it: the
//! server answers (routing to humans what the AI cannot take) while the
//! check is under way. When the embedding model answers, the routing
//! examples still pending (added while it did not) are embedded.

use tandem_llm::{Llm, ModelRole, ModelState};
use tandem_router::embeddings::{embed_pending, is_embedded};
use tandem_store::Store;

use crate::hub::Hub;

/// What goes to humans while each role's model does not answer.
fn consequence(role: ModelRole) -> &'static str {
    match role {
        ModelRole::Reply => "every reply goes to a human",
        ModelRole::Classifier => "the classifier strategy sends every message to a human",
        ModelRole::Embedding => {
            "routing examples stay pending and the embeddings strategy abstains"
        }
    }
}

/// Checks the models, reports, and embeds pending examples; ends early
/// when the server stops.
pub async fn check(llm: Llm, store: Store, hub: Hub) {
    let endpoint = llm.config().endpoint().to_owned();
    let statuses = tokio::select! {
        () = hub.stopping() => return,
        statuses = llm.check_models() => statuses,
    };
    for status in &statuses {
        let (role, model) = (status.role, status.model.as_str());
        match &status.state {
            ModelState::Ok => tracing::info!(%role, model, "ai: the {role} model answers"),
            ModelState::Unavailable(answer) => tracing::error!(
                %role,
                model,
                %endpoint,
                %answer,
                "ai: the {role} model {model:?} does not answer at {endpoint}: {answer}; until it \
                 does, {}",
                consequence(role),
            ),
            ModelState::Unchecked => {}
        }
    }
    if llm.model_state(ModelRole::Embedding) != ModelState::Ok {
        return;
    }
    let mut examples = match store.routing_examples().await {
        Ok(examples) => examples,
        Err(error) => {
            tracing::warn!(%error, "ai: could not read the routing examples to embed");
            return;
        }
    };
    let model = llm.config().embedding_model().to_owned();
    let pending = examples.iter().filter(|e| !is_embedded(e, &model)).count();
    if pending == 0 {
        return;
    }
    tokio::select! {
        () = hub.stopping() => {}
        embedded = embed_pending(&store, &llm, &mut examples) => match embedded {
            Ok(_) => tracing::info!(examples = pending, model, "ai: embedded the pending routing examples"),
            Err(error) => tracing::warn!(%error, model, "ai: embedding the pending routing examples failed"),
        },
    }
}
