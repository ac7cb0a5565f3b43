//! `/v1/ws/tickets` and `/v1/ws`: getting a WebSocket to the hub.
//!
//! The upgrade is checked in this order, each refusal an HTTP error before
//! any WebSocket exists: the `Origin` (403), the request being an upgrade
//! (426), the credentials (a ticket or a Bearer token, 401), and the token's
//! number of open sockets (429). A ticket is spent by the last check only.

mod connection;

use std::time::Duration;

use aide::axum::ApiRouter;
use aide::axum::routing::post;
use axum::Router;
use axum::extract::State;
use axum::extract::ws::{WebSocketUpgrade, rejection::WebSocketUpgradeRejection};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::get;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::config::HubConfig;
use crate::http::origin::Origin;
use crate::http::{ApiError, ApiQuery, Created, Principal, auth};

/// Bytes of frames gathered before a write to the socket, within a batch.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// Authenticated routes (behind the Bearer middleware).
pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route("/v1/ws/tickets", post(create_ticket))
}

/// The upgrade route, which authenticates itself (a ticket or a token).
pub fn upgrade_router() -> Router<AppState> {
    Router::new().route("/v1/ws", get(upgrade))
}

/// A single-use credential for one WebSocket upgrade.
#[derive(Debug, Serialize, JsonSchema)]
pub struct Ticket {
    /// Pass as `GET /v1/ws?ticket=…`.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

/// Mints a ticket for the caller's token: single use, valid for
/// `hub.ticket_ttl_secs` (60 s).
async fn create_ticket(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Created<Ticket>, ApiError> {
    let ttl = Duration::from_secs(state.config.hub.ticket_ttl_secs);
    let minted = state
        .store
        .create_ws_ticket(principal.token_id(), ttl)
        .await?;
    Ok(Created {
        value: Ticket {
            ticket: minted.secret,
            expires_at: minted.expires_at,
        },
        replayed: false,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpgradeQuery {
    ticket: Option<String>,
}

async fn upgrade(
    State(state): State<AppState>,
    client: crate::net::Client,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<UpgradeQuery>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if !origin_allowed(&headers, &state.config.hub) {
        return Err(ApiError::forbidden(
            "origin_not_allowed",
            "this origin may not open a WebSocket here",
        ));
    }
    let upgrade = upgrade.map_err(|_| ApiError::UpgradeRequired)?;
    let token = match (query.ticket, auth::bearer_secret(&headers)) {
        (Some(ticket), _) => state.store.redeem_ws_ticket(&ticket).await?,
        (None, Some(secret)) => state.store.authenticate(secret).await?,
        (None, None) => None,
    };
    let principal = auth::admit(&state, token, client.address)?;
    let hub = state.hub.clone();
    let config = hub.config().clone();
    let admission = hub
        .admit(principal.token_id())
        .ok_or(ApiError::TooManyConnections {
            limit: config.max_connections_per_token,
        })?;
    let max = config.max_message_bytes;
    Ok(upgrade
        .read_buffer_size(config.read_buffer_bytes)
        // The send task feeds a batch and flushes once: one write for many
        // frames. The buffer grows only as far as a batch needs.
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(config.queue_bytes.max(max) + max)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let task = connection::run(socket, hub.clone(), principal, admission);
            hub.track(task)
        }))
}

/// Whether a browser on this `Origin` may connect: no `Origin` (not a
/// browser), the server's own host (the request's `Host`, by either scheme,
/// since a TLS proxy may stand in front), or one listed in `allowed_origins`,
/// compared exactly. `null` (sandboxed frames, files) is never allowed.
fn origin_allowed(headers: &HeaderMap, config: &HubConfig) -> bool {
    Origin::of(headers).permits(headers, &config.allowed_origins)
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, header};

    use super::*;

    fn headers(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn origins() {
        let config = HubConfig {
            allowed_origins: vec!["https://shop.example.com/".into()],
            ..HubConfig::default()
        };
        let host = "chat.example.com";
        let cases = [
            (None, true),
            (Some("https://chat.example.com"), true),
            (Some("http://chat.example.com"), true),
            (Some("https://shop.example.com"), true),
            (Some("https://SHOP.example.com"), true),
            (Some("null"), false),
            (Some("https://shop.example.com.evil.com"), false),
            (Some("https://evil-shop.example.com"), false),
            (Some("https://shop.example.com:8443"), false),
            (Some("http://shop.example.com"), false),
            (Some("https://chat.example.com.evil.com"), false),
            (Some("chat.example.com"), false),
        ];
        for (origin, allowed) in cases {
            assert_eq!(
                origin_allowed(&headers(host, origin), &config),
                allowed,
                "{origin:?}"
            );
        }
    }
}
