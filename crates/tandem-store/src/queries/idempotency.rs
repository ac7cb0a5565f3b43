//! Idempotency records: the first answer to a retried POST.
//!
//! The record is claimed with `INSERT … ON CONFLICT DO NOTHING` at the start of
//! the same transaction that makes the change, and filled with the response at
//! its end. A racing retry blocks on the claim (PostgreSQL waits for the
//! claimer's transaction; SQLite has one writer) and then reads the response
//! the winner committed, so a change is never made twice.

use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::types::Json;

use crate::backend::{Job, Tx, job, on_conn};
use crate::{Store, StoreError};

/// An `Idempotency-Key` as scoped by the server.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    /// Who sent it and where (e.g. the token id and the route), so that two
    /// callers never see each other's answers.
    pub scope: String,
    /// The client's key.
    pub key: String,
    /// A digest of the request; the same key with another request is refused.
    pub request_hash: String,
}

/// The result of a write that may have been a retry.
#[derive(Debug, Clone)]
pub struct Written<T> {
    pub value: T,
    /// True when an earlier request with the same key made the change and
    /// this is its recorded answer.
    pub replayed: bool,
}

impl<T> Written<T> {
    pub(crate) fn fresh(value: T) -> Self {
        Self {
            value,
            replayed: false,
        }
    }
}

impl Store {
    /// Runs `effect` in a write transaction, once per idempotency key: a
    /// retry gets the first run's recorded value instead of a second effect.
    pub(crate) async fn write_once<T>(
        &self,
        idempotency: Option<IdempotencyKey>,
        effect: Job<T>,
    ) -> Result<Written<T>, StoreError>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let effect = Arc::new(effect);
        self.write(job(move |mut tx| {
            let effect = effect.clone();
            let idempotency = idempotency.clone();
            Box::pin(async move {
                if let Some(key) = &idempotency
                    && let Some(previous) = claim(&mut tx, key).await?
                {
                    return Ok(previous);
                }
                let value = effect(tx.reborrow()).await?;
                if let Some(key) = &idempotency {
                    complete(&mut tx, key, 201, &value).await?;
                }
                Ok(Written::fresh(value))
            })
        }))
        .await
    }
}

/// Claims `key` for this transaction. Returns the recorded answer when an
/// earlier request already holds it.
async fn claim<T: DeserializeOwned>(
    tx: &mut Tx<'_>,
    key: &IdempotencyKey,
) -> Result<Option<Written<T>>, StoreError> {
    let now = tx.now();
    let inserted = on_conn!(tx, c => sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, created_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(&key.request_hash)
    .bind(now)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    if inserted == 1 {
        return Ok(None);
    }
    let (request_hash, response): (String, Option<Json<Value>>) = on_conn!(tx, c => sqlx::query_as(
        "SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .fetch_one(c)
    .await)?;
    if request_hash != key.request_hash {
        return Err(StoreError::IdempotencyMismatch);
    }
    let Some(Json(response)) = response else {
        return Err(StoreError::Corrupt(
            "idempotency record committed without its response".into(),
        ));
    };
    let value = serde_json::from_value(response)
        .map_err(|e| StoreError::Corrupt(format!("recorded response: {e}")))?;
    Ok(Some(Written {
        value,
        replayed: true,
    }))
}

/// Records the answer for a key claimed in this transaction.
async fn complete<T: Serialize>(
    tx: &mut Tx<'_>,
    key: &IdempotencyKey,
    code: u16,
    value: &T,
) -> Result<(), StoreError> {
    let response =
        serde_json::to_value(value).map_err(|e| StoreError::Corrupt(format!("response: {e}")))?;
    on_conn!(tx, c => sqlx::query(
        "UPDATE idempotency_keys SET response_code = $3, response = $4 WHERE scope = $1 AND key = $2",
    )
    .bind(&key.scope)
    .bind(&key.key)
    .bind(i32::from(code))
    .bind(Json(&response))
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}
