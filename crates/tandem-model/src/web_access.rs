//! What the web pages sign in with: the chat widget's keys and the inbox's
//! agent accounts.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// A public key the customer chat carries. Browsers on `allowed_origins`
/// may embed the chat with it; `identity_secret` is what the integrator
/// signs its users' ids with, so that a visitor can be vouched for.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct WidgetKey {
    /// `wk_…`: public, it is in the integrator's page.
    pub key: String,
    pub name: String,
    /// Origins (`https://shop.example.com`) whose pages may embed the chat.
    pub allowed_origins: Vec<String>,
    /// The HMAC-SHA256 key of identity verification. Never in an API answer.
    #[serde(skip)]
    pub identity_secret: String,
    /// Whether anonymous visitors are refused: every session must carry a
    /// verified user id.
    pub identity_required: bool,
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for WidgetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WidgetKey")
            .field("key", &self.key)
            .field("name", &self.name)
            .field("allowed_origins", &self.allowed_origins)
            .field("identity_secret", &"[redacted]")
            .field("identity_required", &self.identity_required)
            .finish()
    }
}

/// A widget key to make.
#[derive(Debug, Clone, Default)]
pub struct NewWidgetKey {
    pub name: String,
    pub allowed_origins: Vec<String>,
    pub identity_required: bool,
}

/// An inbox sign-in: the agent name and its argon2 password hash (a PHC
/// string, never the password).
#[derive(Clone, PartialEq, Eq)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct AgentAccount {
    pub name: String,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub disabled_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for AgentAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentAccount")
            .field("name", &self.name)
            .field("password_hash", &"[redacted]")
            .field("disabled_at", &self.disabled_at)
            .finish()
    }
}
