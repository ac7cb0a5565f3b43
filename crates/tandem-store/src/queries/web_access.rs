//! Widget keys and agent accounts: what the web pages sign in with.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sqlx::types::Json;
use tandem_model::{AgentAccount, NewWidgetKey, WidgetKey};

use crate::backend::{job, on_conn, on_pool};
use crate::{Store, StoreError};

/// Every widget key starts with this.
const WIDGET_KEY_PREFIX: &str = "wk_";

#[derive(sqlx::FromRow)]
struct WidgetKeyRow {
    key: String,
    name: String,
    allowed_origins: Json<Vec<String>>,
    identity_secret: String,
    identity_required: bool,
    created_at: DateTime<Utc>,
}

impl From<WidgetKeyRow> for WidgetKey {
    fn from(row: WidgetKeyRow) -> Self {
        WidgetKey {
            key: row.key,
            name: row.name,
            allowed_origins: row.allowed_origins.0,
            identity_secret: row.identity_secret,
            identity_required: row.identity_required,
            created_at: row.created_at,
        }
    }
}

const WIDGET_COLUMNS: &str =
    "key, name, allowed_origins, identity_secret, identity_required, created_at";

fn random_text(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buffer);
    URL_SAFE_NO_PAD.encode(buffer)
}

impl Store {
    /// Makes a widget key with a fresh identity secret.
    pub async fn create_widget_key(&self, new: NewWidgetKey) -> Result<WidgetKey, StoreError> {
        // Drawn once, so that a job run again writes the same key.
        let key = format!("{WIDGET_KEY_PREFIX}{}", random_text(18));
        let identity_secret = random_text(32);
        self.write(job(move |mut tx| {
            let row = WidgetKey {
                key: key.clone(),
                name: new.name.clone(),
                allowed_origins: new.allowed_origins.clone(),
                identity_secret: identity_secret.clone(),
                identity_required: new.identity_required,
                created_at: tx.now(),
            };
            Box::pin(async move {
                on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO widget_keys (key, name, allowed_origins, identity_secret,
                                              identity_required, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(&row.key)
                .bind(&row.name)
                .bind(Json(&row.allowed_origins))
                .bind(&row.identity_secret)
                .bind(row.identity_required)
                .bind(row.created_at)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(row)
            })
        }))
        .await
    }

    /// The live widget key `key`, if any.
    pub async fn widget_key(&self, key: &str) -> Result<Option<WidgetKey>, StoreError> {
        if !key.starts_with(WIDGET_KEY_PREFIX) {
            return Ok(None);
        }
        let sql = format!(
            "SELECT {WIDGET_COLUMNS} FROM widget_keys WHERE key = $1 AND revoked_at IS NULL"
        );
        let row = on_pool!(self, p => sqlx::query_as::<_, WidgetKeyRow>(&sql)
            .bind(key)
            .fetch_optional(p)
            .await)?;
        Ok(row.map(WidgetKey::from))
    }

    /// Every live widget key, oldest first.
    pub async fn widget_keys(&self) -> Result<Vec<WidgetKey>, StoreError> {
        let sql = format!(
            "SELECT {WIDGET_COLUMNS} FROM widget_keys WHERE revoked_at IS NULL
             ORDER BY created_at, key"
        );
        let rows = on_pool!(self, p => sqlx::query_as::<_, WidgetKeyRow>(&sql)
            .fetch_all(p)
            .await)?;
        Ok(rows.into_iter().map(WidgetKey::from).collect())
    }

    /// Revokes a widget key: no new session starts with it (sessions already
    /// open run until they expire). `false` when no live key has that name.
    pub async fn revoke_widget_key(&self, key: &str) -> Result<bool, StoreError> {
        self.revoke(
            "UPDATE widget_keys SET revoked_at = $2 WHERE key = $1 AND revoked_at IS NULL",
            key.to_owned(),
        )
        .await
    }

    /// Creates the account `name` or, when it exists, sets its password and
    /// enables it again. `password_hash` is an argon2 PHC string.
    pub async fn save_agent_account(
        &self,
        name: &str,
        password_hash: String,
    ) -> Result<(), StoreError> {
        let name = name.to_owned();
        self.write(job(move |mut tx| {
            let (name, hash) = (name.clone(), password_hash.clone());
            Box::pin(async move {
                let now = tx.now();
                on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO agent_accounts (name, password_hash, created_at, updated_at)
                     VALUES ($1, $2, $3, $3)
                     ON CONFLICT (name) DO UPDATE
                     SET password_hash = excluded.password_hash,
                         updated_at = excluded.updated_at,
                         disabled_at = NULL",
                )
                .bind(&name)
                .bind(&hash)
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(())
            })
        }))
        .await
    }

    /// Disables the account `name`: it can no longer sign in, and its open
    /// sign-in sessions stop working. `false` when there is no such account.
    pub async fn disable_agent_account(&self, name: &str) -> Result<bool, StoreError> {
        let name = name.to_owned();
        let disabled = self
            .write(job(move |mut tx| {
                let name = name.clone();
                Box::pin(async move {
                    let now = tx.now();
                    let disabled = on_conn!(&mut tx, c => sqlx::query(
                        "UPDATE agent_accounts SET disabled_at = $2, updated_at = $2
                         WHERE name = $1 AND disabled_at IS NULL",
                    )
                    .bind(&name)
                    .bind(now)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected()))?;
                    // Sessions only: tokens minted by hand are revoked by hand.
                    on_conn!(&mut tx, c => sqlx::query(
                        "UPDATE tokens SET revoked_at = $2
                         WHERE kind = 'agent' AND agent_name = $1 AND expires_at IS NOT NULL
                           AND revoked_at IS NULL",
                    )
                    .bind(&name)
                    .bind(now)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected()))?;
                    Ok(disabled)
                })
            }))
            .await?;
        // Revoked sessions must not live on in the token cache.
        self.token_cache().invalidate_all();
        Ok(disabled > 0)
    }

    /// The account `name`, enabled or not.
    pub async fn agent_account(&self, name: &str) -> Result<Option<AgentAccount>, StoreError> {
        Ok(on_pool!(self, p => sqlx::query_as::<_, AgentAccount>(
            "SELECT name, password_hash, created_at, disabled_at
             FROM agent_accounts WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(p)
        .await)?)
    }
}
