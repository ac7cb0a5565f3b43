//! WebSocket tickets: a short-lived, single-use stand-in for a token, for
//! browsers, which cannot send an `Authorization` header on a WebSocket.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use rand::RngCore;
use tandem_model::{Token, TokenId};

use super::tokens::hash_secret;
use crate::backend::{job, on_conn, on_pool};
use crate::{Store, StoreError};

/// Every ticket starts with this.
const TICKET_PREFIX: &str = "wst_";

/// A minted ticket; `secret` is the only copy.
#[derive(Clone)]
pub struct WsTicket {
    pub secret: String,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for WsTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTicket")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Mints a ticket that stands for `token` until `ttl` has passed or it is
    /// redeemed, whichever comes first. Expired tickets are swept on the way.
    pub async fn create_ws_ticket(
        &self,
        token: TokenId,
        ttl: Duration,
    ) -> Result<WsTicket, StoreError> {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let secret = format!("{TICKET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        // A credential: minted, swept and redeemed on the wall clock.
        let now = super::wall_now();
        let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        let hash = hash_secret(&secret);
        self.write(job(move |mut tx| {
            let hash = hash.clone();
            Box::pin(async move {
                on_conn!(&mut tx, c => sqlx::query("DELETE FROM ws_tickets WHERE expires_at <= $1")
                    .bind(now)
                    .execute(c)
                    .await
                    .map(|r| r.rows_affected()))?;
                on_conn!(&mut tx, c => sqlx::query(
                    "INSERT INTO ws_tickets (secret_hash, token_id, expires_at) VALUES ($1, $2, $3)",
                )
                .bind(&hash)
                .bind(token)
                .bind(expires_at)
                .execute(c)
                .await
                .map(|r| r.rows_affected()))?;
                Ok(())
            })
        }))
        .await?;
        Ok(WsTicket { secret, expires_at })
    }

    /// The live token a ticket stands for, using the ticket up: a second
    /// redemption, an expired ticket or a revoked token all give `None`.
    pub async fn redeem_ws_ticket(&self, secret: &str) -> Result<Option<Token>, StoreError> {
        if !secret.starts_with(TICKET_PREFIX) {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        let now = super::wall_now();
        let token_id: Option<TokenId> = self
            .write(job(move |mut tx| {
                let hash = hash.clone();
                Box::pin(async move {
                    Ok(on_conn!(&mut tx, c => sqlx::query_scalar(
                        "DELETE FROM ws_tickets WHERE secret_hash = $1 AND expires_at > $2
                         RETURNING token_id",
                    )
                    .bind(&hash)
                    .bind(now)
                    .fetch_optional(c)
                    .await)?)
                })
            }))
            .await?;
        let Some(token_id) = token_id else {
            return Ok(None);
        };
        Ok(on_pool!(self, p => sqlx::query_as::<_, Token>(
            "SELECT id, kind, agent_name, customer_id, label, created_at, expires_at
             FROM tokens WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(token_id)
        .fetch_optional(p)
        .await)?
        .filter(|token| !token.expired_at(now)))
    }
}
