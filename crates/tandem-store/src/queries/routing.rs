//! What the router reads: settings (the routing policy is the setting
//! [`POLICY_SETTING`], read with [`Store::policy`]) and labelled examples
//! with their embeddings.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use tandem_model::names::POLICY_SETTING;
use tandem_model::{NewRoutingExample, Policy, Responder, RoutingExample, RoutingExampleId};

use crate::backend::{job, on_conn, on_pool};
use crate::{Store, StoreError};

#[derive(sqlx::FromRow)]
struct ExampleRow {
    id: RoutingExampleId,
    text: String,
    label: Responder,
    vector: Option<Vec<u8>>,
    vector_model: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<ExampleRow> for RoutingExample {
    type Error = StoreError;

    fn try_from(row: ExampleRow) -> Result<Self, StoreError> {
        Ok(RoutingExample {
            id: row.id,
            text: row.text,
            label: row.label,
            vector: row.vector.as_deref().map(decode_vector).transpose()?,
            vector_model: row.vector_model,
            created_at: row.created_at,
        })
    }
}

/// An embedding as stored: little-endian f32s, 4 bytes a dimension, the
/// same bytes on both backends, read back bit for bit.
fn encode_vector(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn decode_vector(bytes: &[u8]) -> Result<Vec<f32>, StoreError> {
    let chunks = bytes.chunks_exact(4);
    if !chunks.remainder().is_empty() {
        return Err(StoreError::Corrupt(format!(
            "a routing example's vector has {} bytes, not a multiple of 4",
            bytes.len()
        )));
    }
    Ok(chunks
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn check_vector(vector: &[f32]) -> Result<(), StoreError> {
    if vector.is_empty() || !vector.iter().all(|x| x.is_finite()) {
        return Err(StoreError::invalid(
            "invalid_vector",
            "an embedding must have at least one dimension, all finite",
        ));
    }
    Ok(())
}

impl Store {
    /// The setting called `name`, if it was ever set.
    pub async fn get_setting(&self, name: &str) -> Result<Option<Value>, StoreError> {
        let value: Option<Json<Value>> = on_pool!(self, p => sqlx::query_scalar(
            "SELECT value FROM settings WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(p)
        .await)?;
        Ok(value.map(|v| v.0))
    }

    /// The routing policy in force: the stored one, or the default when
    /// none was ever set. A stored document that no longer parses (written
    /// by a newer version, say) is reported and replaced by the default
    /// rather than stopping every reply.
    pub async fn policy(&self) -> Result<Policy, StoreError> {
        let Some(value) = self.get_setting(POLICY_SETTING).await? else {
            return Ok(Policy::default());
        };
        Ok(serde_json::from_value(value).unwrap_or_else(|error| {
            tracing::error!(%error, "router: the stored policy does not parse; using the default");
            Policy::default()
        }))
    }

    /// Sets (or replaces) the setting called `name`.
    pub async fn put_setting(&self, name: &str, value: Value) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(job(move |mut tx| {
            let (name, value) = (name.clone(), value.clone());
            Box::pin(async move {
                let now = tx.now();
                on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO settings (name, value, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO UPDATE SET
                         value = excluded.value, updated_at = excluded.updated_at",
                )
                .bind(&name)
                .bind(Json(&value))
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(())
            })
        }))
        .await
    }

    /// Adds a labelled example (with its embedding, if already computed).
    pub async fn add_routing_example(
        &self,
        new: NewRoutingExample,
    ) -> Result<RoutingExample, StoreError> {
        match (&new.vector, &new.vector_model) {
            (Some(vector), Some(_)) => check_vector(vector)?,
            (None, None) => {}
            _ => {
                return Err(StoreError::invalid(
                    "invalid_vector",
                    "a vector and the model that made it come together",
                ));
            }
        }
        let id = RoutingExampleId::new();
        self.write(job(move |mut tx| {
            let example = RoutingExample {
                id,
                text: new.text.clone(),
                label: new.label,
                vector: new.vector.clone(),
                vector_model: new.vector_model.clone(),
                created_at: tx.now(),
            };
            Box::pin(async move {
                on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO routing_examples (id, text, label, vector, vector_model, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(example.id)
                .bind(&example.text)
                .bind(example.label)
                .bind(example.vector.as_deref().map(encode_vector))
                .bind(&example.vector_model)
                .bind(example.created_at)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(example)
            })
        }))
        .await
    }

    /// Every labelled example, oldest first.
    pub async fn routing_examples(&self) -> Result<Vec<RoutingExample>, StoreError> {
        let rows = on_pool!(self, p => sqlx::query_as::<_, ExampleRow>(
            "SELECT id, text, label, vector, vector_model, created_at
             FROM routing_examples ORDER BY id",
        )
        .fetch_all(p)
        .await)?;
        rows.into_iter().map(RoutingExample::try_from).collect()
    }

    /// Stores an example's embedding, made by `model` (replacing any older one).
    pub async fn set_example_vector(
        &self,
        id: RoutingExampleId,
        vector: Vec<f32>,
        model: &str,
    ) -> Result<(), StoreError> {
        check_vector(&vector)?;
        let bytes = encode_vector(&vector);
        let model = model.to_owned();
        self.write(job(move |mut tx| {
            let (bytes, model) = (bytes.clone(), model.clone());
            Box::pin(async move {
                let updated = on_conn!(&mut tx, c => sqlx::query(
                    "UPDATE routing_examples SET vector = $2, vector_model = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(bytes)
                .bind(model)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                if updated == 0 {
                    return Err(StoreError::NotFound("routing example"));
                }
                Ok(())
            })
        }))
        .await
    }
}
