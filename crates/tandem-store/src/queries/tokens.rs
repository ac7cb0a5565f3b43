//! API tokens: mint, authenticate, and the first admin token.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tandem_model::{MintedToken, Token, TokenId, TokenKind, TokenSubject};

use crate::backend::{Tx, job, on_conn, on_pool};
use crate::{Store, StoreError};

/// Every secret starts with this, so a leaked one is easy to recognise.
const SECRET_PREFIX: &str = "tdm_";

/// The stored form of a secret. Secrets are 256 random bits, so a plain
/// SHA-256 is enough: there is nothing to brute-force.
pub(crate) fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Mints a token; the returned secret is the only copy.
    pub async fn create_token(
        &self,
        subject: TokenSubject,
        label: Option<String>,
    ) -> Result<MintedToken, StoreError> {
        self.create_session(subject, label, None).await
    }

    /// Mints a token that stops working after `ttl` (a widget visitor's or
    /// an agent's sign-in session); `None` never expires.
    pub async fn create_session(
        &self,
        subject: TokenSubject,
        label: Option<String>,
        ttl: Option<Duration>,
    ) -> Result<MintedToken, StoreError> {
        // A credential's expiry holds in real time: the wall clock.
        let expires_at = ttl.map(|ttl| {
            super::wall_now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX)
        });
        self.write(job(move |mut tx| {
            let subject = subject.clone();
            let label = label.clone();
            Box::pin(async move { insert_token(&mut tx, subject, label, expires_at).await })
        }))
        .await
    }

    /// Revokes the token this secret belongs to (signing out). `false` when
    /// no live token has it.
    pub async fn revoke_secret(&self, secret: &str) -> Result<bool, StoreError> {
        let hash = hash_secret(secret);
        let revoked = self
            .revoke(
                "UPDATE tokens SET revoked_at = $2 WHERE secret_hash = $1 AND revoked_at IS NULL",
                hash.clone(),
            )
            .await?;
        // After the commit: a request in between cannot cache it again.
        self.token_cache().invalidate(&hash);
        Ok(revoked)
    }

    /// Mints the first admin token, exactly once per database, however many
    /// servers start at the same moment. `None` when it was minted before.
    pub async fn bootstrap_admin(&self) -> Result<Option<MintedToken>, StoreError> {
        self.write(job(|mut tx| {
            Box::pin(async move {
                let now = tx.now();
                let first = on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO instance_facts (name, created_at) VALUES ('admin_token_issued', $1)
                     ON CONFLICT DO NOTHING",
                )
                .bind(now)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                if first == 0 {
                    return Ok(None);
                }
                let label = Some("first admin token".to_owned());
                Ok(Some(
                    insert_token(&mut tx, TokenSubject::Admin, label, None).await?,
                ))
            })
        }))
        .await
    }

    /// The live token this secret belongs to, if any.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Token>, StoreError> {
        if !secret.starts_with(SECRET_PREFIX) {
            return Ok(None);
        }
        const SQL: &str = "SELECT id, kind, agent_name, customer_id, label, created_at, expires_at
             FROM tokens WHERE secret_hash = $1 AND revoked_at IS NULL";
        let hash = hash_secret(secret);
        // Expiry is real time, as it was minted (see `create_session`).
        let now = super::wall_now();
        if let Some(token) = self.token_cache().get(&hash) {
            if token.expired_at(now) {
                self.token_cache().invalidate(&hash);
                return Ok(None);
            }
            return Ok(Some(token));
        }
        let token = on_pool!(self, p => sqlx::query_as::<_, Token>(SQL)
            .bind(&hash)
            .fetch_optional(p)
            .await)?
        .filter(|token| !token.expired_at(now));
        // Only hits are kept: a guessed secret must not fill the cache.
        if let Some(token) = &token {
            self.token_cache().insert(hash, token.clone());
        }
        Ok(token)
    }
}

async fn insert_token(
    tx: &mut Tx<'_>,
    subject: TokenSubject,
    label: Option<String>,
    expires_at: Option<DateTime<Utc>>,
) -> Result<MintedToken, StoreError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let (kind, agent_name, customer_id) = match subject {
        TokenSubject::Admin => (TokenKind::Admin, None, None),
        TokenSubject::Agent { name } => (TokenKind::Agent, Some(name), None),
        TokenSubject::Customer { customer_id } => (TokenKind::Customer, None, Some(customer_id)),
    };
    let token = Token {
        id: TokenId::new(),
        kind,
        agent_name,
        customer_id,
        label,
        created_at: tx.now(),
        expires_at,
    };
    on_conn!(tx, c => sqlx::query(
        "INSERT INTO tokens (id, kind, secret_hash, agent_name, customer_id, label, created_at,
                             expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(token.id)
    .bind(token.kind)
    .bind(hash_secret(&secret))
    .bind(&token.agent_name)
    .bind(&token.customer_id)
    .bind(&token.label)
    .bind(token.created_at)
    .bind(token.expires_at)
    .execute(c)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(MintedToken { token, secret })
}
