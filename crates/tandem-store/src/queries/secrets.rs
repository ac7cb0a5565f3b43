//! Secrets the server makes for itself, and declarative workflow definitions
//! kept by version.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

use crate::backend::{job, on_conn, on_pool};
use crate::{Store, StoreError};

impl Store {
    /// The secret called `name`, made (32 random bytes) on first use and the
    /// same for every process on this database from then on.
    pub async fn server_secret(&self, name: &str) -> Result<String, StoreError> {
        let name = name.to_owned();
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let fresh = URL_SAFE_NO_PAD.encode(bytes);
        self.write(job(move |mut tx| {
            let (name, fresh) = (name.clone(), fresh.clone());
            Box::pin(async move {
                let now = tx.now();
                on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                )
                .bind(&name)
                .bind(&fresh)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(on_conn!(&mut tx, c => sqlx::query_scalar::<_, String>(
                    "SELECT value FROM server_secrets WHERE name = $1",
                )
                .bind(&name)
                .fetch_one(c)
                .await)?)
            })
        }))
        .await
    }

    /// Keeps a workflow definition's source under its version (once).
    pub async fn save_definition(
        &self,
        name: &str,
        version: &str,
        source: &str,
    ) -> Result<(), StoreError> {
        let (name, version, source) = (name.to_owned(), version.to_owned(), source.to_owned());
        self.write(job(move |mut tx| {
            let (name, version, source) = (name.clone(), version.clone(), source.clone());
            Box::pin(async move {
                let now = tx.now();
                on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO workflow_definitions (name, version, source, created_at)
                     VALUES ($1, $2, $3, $4) ON CONFLICT (name, version) DO NOTHING",
                )
                .bind(&name)
                .bind(&version)
                .bind(&source)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(())
            })
        }))
        .await
    }

    /// Every stored definition as `(name, version, source)`, oldest first.
    pub async fn definitions(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as(
            "SELECT name, version, source FROM workflow_definitions ORDER BY created_at, name",
        )
        .fetch_all(p)
        .await)?)
    }
}
