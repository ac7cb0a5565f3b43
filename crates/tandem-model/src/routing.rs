//! What the router learns from: labelled examples. (The routing policy is
//! [`crate::policy`].)

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Responder, RoutingExampleId};

/// A message labelled with who should answer messages like it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoutingExample {
    pub id: RoutingExampleId,
    pub text: String,
    pub label: Responder,
    /// The text's embedding, once computed.
    pub vector: Option<Vec<f32>>,
    /// The embedding model that made `vector`.
    pub vector_model: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// An example to add; its vector may come now or later (the store's
/// `set_example_vector`).
#[derive(Debug, Clone)]
pub struct NewRoutingExample {
    pub text: String,
    pub label: Responder,
    /// With `vector_model`, or neither.
    pub vector: Option<Vec<f32>>,
    pub vector_model: Option<String>,
}
