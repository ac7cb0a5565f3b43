//! Signing in from the web pages, without a token beforehand.
//!
//! - `POST /v1/customers/sessions`: a chat visitor gets a customer token by
//!   a public widget key, anonymously or as a user the integrator vouches
//!   for (an HMAC-SHA256 of the user's id with the key's identity secret).
//! - `POST`, `GET`, `DELETE /v1/agents/sessions`: an agent signs in to the
//!   inbox with a name and password and gets an HttpOnly, SameSite=Strict
//!   cookie that stands for an agent token until it expires or is signed out.

use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::post;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::CookieJar;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tandem_model::{TokenSubject, WidgetKey};

use crate::AppState;
use crate::accounts;
use crate::http::origin::Origin;
use crate::http::{ApiError, ApiJson, Created, auth};
use crate::net::Client;

/// Most characters of a verified user's id (it becomes the customer id).
const MAX_USER_ID_CHARS: usize = 255;
/// Most characters of a visitor's display name.
const MAX_VISITOR_NAME_CHARS: usize = 100;
/// Anonymous visitors' customer ids start with this.
const VISITOR_PREFIX: &str = "visitor_";

/// The routes; each authenticates itself, under the anonymous rate limit.
pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .api_route("/v1/customers/sessions", post(customer_session))
        .api_route(
            "/v1/agents/sessions",
            post(sign_in).get(current).delete(sign_out),
        )
}

/// A chat visitor's request for a session.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerSessionRequest {
    /// The widget's public key (`wk_…`).
    pub widget_key: String,
    /// A signed-in user of the integrator's site, vouched for by `user_hash`.
    pub user_id: Option<String>,
    /// Hex HMAC-SHA256 of `user_id` with the widget key's identity secret,
    /// computed by the integrator's backend.
    pub user_hash: Option<String>,
    /// How the visitor calls themselves (shown to agents on the session).
    pub name: Option<String>,
}

/// A visitor's session: a customer token for the chat.
#[derive(Debug, Serialize, JsonSchema)]
pub struct CustomerSession {
    /// A customer token: `Authorization: Bearer …`.
    pub token: String,
    /// The verified user's id, or a fresh `visitor_…` id.
    pub customer_id: String,
    /// Whether the integrator vouched for this user.
    pub verified: bool,
    pub expires_at: DateTime<Utc>,
}

/// Starts a chat visitor's session. Answers 401 `widget_key_invalid`
/// (unknown or revoked key), 403 `origin_not_allowed` (a browser on a site
/// the key does not list), 401 `identity_invalid` (the hash does not match
/// the user id: nothing of that user's is reachable), 403
/// `identity_required` (the key takes verified users only).
async fn customer_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiJson(request): ApiJson<CustomerSessionRequest>,
) -> Result<Created<CustomerSession>, ApiError> {
    let key = state
        .store
        .widget_key(request.widget_key.trim())
        .await?
        .ok_or_else(|| ApiError::denied("widget_key_invalid", "no such widget key"))?;
    if !Origin::of(&headers).permits(&headers, &key.allowed_origins) {
        return Err(ApiError::forbidden(
            "origin_not_allowed",
            "this widget key may not be used from this site",
        ));
    }
    if let Some(name) = &request.name
        && (name.chars().count() > MAX_VISITOR_NAME_CHARS || name.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("a name is at most {MAX_VISITOR_NAME_CHARS} characters"),
        ));
    }
    let (customer_id, verified) = match (request.user_id, request.user_hash) {
        (Some(user_id), Some(hash)) => (verified_user(&key, user_id, &hash)?, true),
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "user_hash_required",
                "a user_id comes with its user_hash",
            ));
        }
        (None, Some(_)) => {
            return Err(ApiError::bad_request(
                "user_id_required",
                "a user_hash comes with its user_id",
            ));
        }
        (None, None) if key.identity_required => {
            return Err(ApiError::forbidden(
                "identity_required",
                "this chat is for signed-in users only",
            ));
        }
        (None, None) => (
            format!("{VISITOR_PREFIX}{}", uuid::Uuid::now_v7().simple()),
            false,
        ),
    };
    let label = match request.name {
        Some(name) => format!("chat session ({}): {name}", key.name),
        None => format!("chat session ({})", key.name),
    };
    let ttl = Duration::from_secs(state.config.web.customer_session_secs);
    let minted = state
        .store
        .create_session(
            TokenSubject::Customer {
                customer_id: customer_id.clone(),
            },
            Some(label),
            Some(ttl),
        )
        .await?;
    Ok(Created {
        value: CustomerSession {
            expires_at: minted.token.expires_at.unwrap_or_else(Utc::now),
            token: minted.secret,
            customer_id,
            verified,
        },
        replayed: false,
    })
}

/// The user id `hash` vouches for, checked in constant time.
fn verified_user(key: &WidgetKey, user_id: String, hash: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::denied(
            "identity_invalid",
            "the user's identity could not be verified",
        )
    };
    let chars = user_id.chars().count();
    if chars == 0 || chars > MAX_USER_ID_CHARS || user_id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_user_id",
            format!("a user_id is 1 to {MAX_USER_ID_CHARS} characters"),
        ));
    }
    // A verified id never looks like an anonymous one: a visitor's history
    // cannot be claimed by signing its id.
    if user_id.starts_with(VISITOR_PREFIX) {
        return Err(invalid());
    }
    let expected = decode_hex(hash.trim()).ok_or_else(invalid)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.identity_secret.as_bytes())
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    mac.update(user_id.as_bytes());
    mac.verify_slice(&expected).map_err(|_| invalid())?;
    Ok(user_id)
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An agent's sign-in.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignIn {
    pub name: String,
    pub password: String,
}

/// The signed-in agent.
#[derive(Debug, Serialize, JsonSchema)]
pub struct AgentSession {
    /// The name the agent replies under.
    pub name: String,
    pub expires_at: DateTime<Utc>,
}

/// Signs an agent in: 201 with the session and its cookie, or 401
/// `invalid_credentials` (an unknown name, a disabled account and a wrong
/// password all look the same).
async fn sign_in(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    ApiJson(request): ApiJson<SignIn>,
) -> Result<Response, ApiError> {
    // A page of another site must not sign a browser in (login CSRF).
    if from_another_site(&headers) {
        return Err(ApiError::forbidden(
            "cross_origin",
            "sign in from this site's own inbox page",
        ));
    }
    let name = accounts::verify(&state.store, &request.name, &request.password)
        .await?
        .ok_or_else(|| ApiError::denied("invalid_credentials", "wrong name or password"))?;
    let ttl = Duration::from_secs(state.config.web.agent_session_secs);
    let minted = state
        .store
        .create_session(
            TokenSubject::Agent { name: name.clone() },
            Some("inbox sign-in".into()),
            Some(ttl),
        )
        .await?;
    let cookie = auth::session_cookie(minted.secret, ttl, secure_cookies(&state, client));
    let session = AgentSession {
        name,
        expires_at: minted.token.expires_at.unwrap_or_else(Utc::now),
    };
    Ok((
        StatusCode::CREATED,
        CookieJar::new().add(cookie),
        Json(session),
    )
        .into_response())
}

/// The agent the sign-in cookie stands for, or 401.
async fn current(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<AgentSession>, ApiError> {
    let token = auth::session_token(&state, &headers)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok(Json(AgentSession {
        name: token.agent_name.unwrap_or_default(),
        expires_at: token.expires_at.unwrap_or_else(Utc::now),
    }))
}

/// Signs out: the session's token is revoked and the cookie removed. 204
/// whether or not the session was still live.
async fn sign_out(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if from_another_site(&headers) {
        return Err(ApiError::forbidden(
            "cross_origin",
            "sign out from this site's own inbox page",
        ));
    }
    if let Some(secret) = auth::session_secret(&headers) {
        state.store.revoke_secret(&secret).await?;
    }
    let cookie = auth::expired_session_cookie(secure_cookies(&state, client));
    Ok((StatusCode::NO_CONTENT, CookieJar::new().add(cookie)).into_response())
}

/// Whether a browser sent the request from a page of another origin (no
/// `Origin`: not a browser, or a same-origin navigation).
fn from_another_site(headers: &HeaderMap) -> bool {
    let origin = Origin::of(headers);
    origin != Origin::Absent && !origin.is_own(headers)
}

/// Whether cookies get `Secure`: as configured, else when the server is
/// reached over HTTPS (its public URL says so, or a trusted proxy does).
fn secure_cookies(state: &AppState, client: Client) -> bool {
    if let Some(secure) = state.config.web.secure_cookies {
        return secure;
    }
    let public_https = state
        .config
        .workflows
        .public_url
        .as_deref()
        .is_some_and(|url| url.starts_with("https://"));
    public_https || client.https
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> WidgetKey {
        WidgetKey {
            key: "wk_test".into(),
            name: "shop".into(),
            allowed_origins: vec![],
            identity_secret: "s3cret".into(),
            identity_required: false,
            created_at: Utc::now(),
        }
    }

    fn sign(secret: &str, user_id: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(user_id.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn identity_holds_only_for_its_own_user_and_secret() {
        let key = key();
        let good = sign("s3cret", "alice");
        assert_eq!(verified_user(&key, "alice".into(), &good).unwrap(), "alice");
        assert_eq!(
            verified_user(&key, "alice".into(), &good.to_uppercase()).unwrap(),
            "alice"
        );
        for (user, hash) in [
            ("bob", good.clone()),
            ("alice", sign("other secret", "alice")),
            ("alice", good[..62].to_owned()),
            ("alice", format!("{}zz", &good[..62])),
            ("alice", String::new()),
            ("visitor_0192", sign("s3cret", "visitor_0192")),
        ] {
            let error = verified_user(&key, user.into(), &hash).unwrap_err();
            assert_eq!(error.code(), "identity_invalid", "{user} {hash}");
        }
        let error = verified_user(&key, "a\u{7}".into(), &good).unwrap_err();
        assert_eq!(error.code(), "invalid_user_id");
    }
}
