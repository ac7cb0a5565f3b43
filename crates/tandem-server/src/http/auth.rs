//! Bearer-token authentication and the caller's identity.
//!
//! The middleware resolves the token once per request, applies the rate limit
//! of the token's kind (or of the client address when there is no valid
//! token), and leaves a [`Principal`] in the request for handlers to extract
//! (or to narrow, with the extractors of [`super::access`]).
//! A request without `Authorization` may carry the inbox's sign-in cookie
//! instead ([`SESSION_COOKIE`]): it stands for an agent only, and a request
//! that changes something must come from the server's own origin.

use std::net::IpAddr;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use tandem_model::{Token, TokenId, TokenKind};

use super::ApiError;
use super::origin::Origin;
use crate::AppState;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// The integrator's backend: may do everything.
    Admin { token: TokenId },
    /// A human support agent, replying under `name`.
    Agent { token: TokenId, name: String },
    /// One end user, who sees only their own threads.
    Customer { token: TokenId, customer_id: String },
}

impl Principal {
    pub fn token_id(&self) -> TokenId {
        match self {
            Self::Admin { token } | Self::Agent { token, .. } | Self::Customer { token, .. } => {
                *token
            }
        }
    }

    pub fn kind(&self) -> TokenKind {
        match self {
            Self::Admin { .. } => TokenKind::Admin,
            Self::Agent { .. } => TokenKind::Agent,
            Self::Customer { .. } => TokenKind::Customer,
        }
    }

    /// The customer a customer token is limited to; `None` for staff.
    pub fn customer_scope(&self) -> Option<&str> {
        match self {
            Self::Customer { customer_id, .. } => Some(customer_id),
            _ => None,
        }
    }

    fn from_token(token: Token) -> Option<Self> {
        Some(match token.kind {
            TokenKind::Admin => Self::Admin { token: token.id },
            TokenKind::Agent => Self::Agent {
                token: token.id,
                name: token.agent_name?,
            },
            TokenKind::Customer => Self::Customer {
                token: token.id,
                customer_id: token.customer_id?,
            },
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or(ApiError::Unauthorized)
    }
}

/// Middleware for every authenticated route.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let client = client_address(&request);
    let headers = request.headers();
    let token = match bearer_secret(headers) {
        Some(secret) => state
            .store
            .authenticate(secret)
            .await
            .map_err(ApiError::from),
        None => {
            if session_secret(headers).is_some()
                && !is_safe(request.method())
                && !Origin::of(headers).is_own(headers)
            {
                return ApiError::forbidden(
                    "cross_origin",
                    "a signed-in request that changes something must come from this site",
                )
                .into_response();
            }
            session_token(&state, headers).await
        }
    };
    let token = match token {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    match admit(&state, token, client) {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(error) => error.into_response(),
    }
}

/// Middleware for routes that take no token (signed hooks): the rate limit
/// of requests without a valid token, per client address.
pub async fn limit_anonymous(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match check_anonymous(&state, client_address(&request)) {
        Ok(()) => next.run(request).await,
        Err(error) => error.into_response(),
    }
}

fn check_anonymous(state: &AppState, client: IpAddr) -> Result<(), ApiError> {
    state
        .rate_limits
        .check_anonymous(client)
        .map_err(|retry_after| {
            state.metrics.rate_limited("anonymous");
            ApiError::RateLimited { retry_after }
        })
}

/// The client the request came from: the TCP peer, or the address a
/// trusted proxy gives (see [`crate::net::client`]).
pub fn client_address(request: &Request) -> IpAddr {
    crate::net::Client::from_parts(request.extensions()).address
}

/// The secret of an `Authorization: Bearer …` header.
pub fn bearer_secret(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, secret) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| secret.trim())
        })
}

/// The inbox's sign-in cookie: an agent session token's secret.
pub const SESSION_COOKIE: &str = "tandem_session";

/// The secret of the sign-in cookie, if the request carries one.
pub fn session_secret(headers: &HeaderMap) -> Option<String> {
    CookieJar::from_headers(headers)
        .get(SESSION_COOKIE)
        .map(|cookie| cookie.value().to_owned())
}

/// The live agent session the sign-in cookie holds, if any. The cookie is
/// the inbox's: another kind of token in it counts for nothing.
pub async fn session_token(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Token>, ApiError> {
    let Some(secret) = session_secret(headers) else {
        return Ok(None);
    };
    let token = state.store.authenticate(&secret).await?;
    Ok(token.filter(|t| t.kind == TokenKind::Agent))
}

/// The sign-in cookie for `secret`: HttpOnly (no script reads it),
/// SameSite=Strict (no other site's page sends it), for the whole site.
pub fn session_cookie(
    secret: String,
    max_age: std::time::Duration,
    secure: bool,
) -> Cookie<'static> {
    let max_age = i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX);
    Cookie::build((SESSION_COOKIE, secret))
        .http_only(true)
        .same_site(SameSite::Strict)
        .path("/")
        .secure(secure)
        .max_age(cookie::time::Duration::seconds(max_age))
        .build()
}

/// A cookie that removes the sign-in cookie.
pub fn expired_session_cookie(secure: bool) -> Cookie<'static> {
    let mut cookie = session_cookie(String::new(), std::time::Duration::ZERO, secure);
    cookie.make_removal();
    cookie
}

fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The caller a resolved token stands for, after the rate limit of its kind
/// (or, without a valid token, of the client address).
pub fn admit(
    state: &AppState,
    token: Option<Token>,
    client: IpAddr,
) -> Result<Principal, ApiError> {
    let Some(principal) = token.and_then(Principal::from_token) else {
        check_anonymous(state, client)?;
        return Err(ApiError::Unauthorized);
    };
    if let Err(retry_after) = state.rate_limits.check_token(&principal) {
        state.metrics.rate_limited(principal.kind().as_str());
        return Err(ApiError::RateLimited { retry_after });
    }
    Ok(principal)
}
