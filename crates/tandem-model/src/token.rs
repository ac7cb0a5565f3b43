//! API tokens. Only a hash of each secret is stored.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{TokenId, TokenKind};

/// A token as stored (without its secret).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct Token {
    pub id: TokenId,
    pub kind: TokenKind,
    /// For agent tokens: the name the agent replies under.
    pub agent_name: Option<String>,
    /// For customer tokens: the customer it speaks for.
    pub customer_id: Option<String>,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When a session token stops working; none for tokens minted by hand.
    pub expires_at: Option<DateTime<Utc>>,
}

impl Token {
    /// Whether the token has expired at `now`.
    pub fn expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// A freshly minted token and its secret, which is shown once and never stored.
#[derive(Clone)]
pub struct MintedToken {
    pub token: Token,
    pub secret: String,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("token", &self.token)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// What a new token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSubject {
    Admin,
    Agent { name: String },
    Customer { customer_id: String },
}
