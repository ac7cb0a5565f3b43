//! What Tandem knows of each model it uses: whether it answers.
//!
//! Each role (the reply, classifier and embedding model) is `unchecked`
//! until the start-up check ([`crate::Llm::check_models`]) or a real call
//! says otherwise; then `ok`, or `unavailable` with the endpoint's answer.
//! Every finished call updates the roles its model plays, so the state
//! follows the endpoint: an embedding model that comes back is `ok` again
//! at its next successful call.

use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::error::LlmError;

/// What a model is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelRole {
    /// Writes replies (and suggestions).
    Reply,
    /// Decides who answers.
    Classifier,
    /// Embeds routing examples and messages.
    Embedding,
}

impl ModelRole {
    /// Every role, in the order they are reported.
    pub const ALL: [ModelRole; 3] = [
        ModelRole::Reply,
        ModelRole::Classifier,
        ModelRole::Embedding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelRole::Reply => "reply",
            ModelRole::Classifier => "classifier",
            ModelRole::Embedding => "embedding",
        }
    }

    fn index(self) -> usize {
        match self {
            ModelRole::Reply => 0,
            ModelRole::Classifier => 1,
            ModelRole::Embedding => 2,
        }
    }
}

impl std::fmt::Display for ModelRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a model answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum ModelState {
    /// Not checked yet, and not called since the start.
    Unchecked,
    /// It answered.
    Ok,
    /// It did not; why, in the endpoint's words where it gave any.
    Unavailable(String),
}

impl ModelState {
    /// The state a finished call leaves: `ok` when it succeeded,
    /// `unavailable` when its failure says the model cannot be used now,
    /// none (unchanged) when the model answered but the call failed for
    /// another reason (a refused request, a malformed answer, a rate limit).
    pub fn after(result: Result<(), &LlmError>) -> Option<Self> {
        match result {
            Ok(()) => Some(ModelState::Ok),
            Err(error) if error.means_unavailable() => {
                Some(ModelState::Unavailable(unavailable_reason(error)))
            }
            Err(_) => None,
        }
    }
}

/// Why a model is unavailable, fit for an anonymous `/readyz`: the
/// endpoint's own words, except when it refused the key (a provider's 401
/// may quote part of it).
pub fn unavailable_reason(error: &LlmError) -> String {
    let reason = match error {
        LlmError::Status {
            status: status @ (401 | 403),
            ..
        } => format!("the endpoint refused the API key ({status})"),
        other => other.to_string(),
    };
    clip(&reason, 300)
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max).collect();
    clipped.push('…');
    clipped
}

/// The states of the three roles, shared by the clones of one client.
#[derive(Clone, Debug, Default)]
pub(crate) struct Health {
    states: Arc<Mutex<[Option<ModelState>; 3]>>,
}

impl Health {
    pub(crate) fn get(&self, role: ModelRole) -> ModelState {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)[role.index()]
            .clone()
            .unwrap_or(ModelState::Unchecked)
    }

    pub(crate) fn set(&self, role: ModelRole, state: ModelState) {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)[role.index()] = Some(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_move_the_state_only_when_they_say_something_about_the_model() {
        assert_eq!(ModelState::after(Ok(())), Some(ModelState::Ok));
        let missing = LlmError::Status {
            status: 404,
            message: "model 'llama3.1' not found".to_owned(),
        };
        assert_eq!(
            ModelState::after(Err(&missing)),
            Some(ModelState::Unavailable(
                "the model provider answered 404: model 'llama3.1' not found".to_owned()
            ))
        );
        let malformed = LlmError::Malformed("not JSON".to_owned());
        assert_eq!(ModelState::after(Err(&malformed)), None);
        let key = LlmError::Status {
            status: 401,
            message: "Incorrect API key provided: sk-abc***xyz".to_owned(),
        };
        let Some(ModelState::Unavailable(reason)) = ModelState::after(Err(&key)) else {
            panic!("a refused key makes the model unavailable");
        };
        assert!(!reason.contains("sk-"), "{reason}");

        let health = Health::default();
        assert_eq!(health.get(ModelRole::Embedding), ModelState::Unchecked);
        health.set(ModelRole::Embedding, ModelState::Ok);
        assert_eq!(health.clone().get(ModelRole::Embedding), ModelState::Ok);
    }
}
