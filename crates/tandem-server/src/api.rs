//! The API: one module per resource, each with its `router()`, the
//! WebSocket upgrade into the hub ([`ws`]), and the signed workflow hooks
//! that need no token ([`hooks`]).

pub mod agents;
pub mod assignments;
pub mod desk_metrics;
pub mod hooks;
pub mod inbox;
pub mod messages;
pub mod ops;
pub mod routing;
pub mod sessions;
pub mod suggestions;
pub mod threads;
pub mod workflows;
pub mod ws;

use aide::axum::ApiRouter;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tandem_store::IdempotencyKey;

use crate::AppState;
use crate::http::Principal;

/// Every `/v1` route that needs a token.
pub fn v1_router() -> ApiRouter<AppState> {
    ApiRouter::new()
        .merge(threads::router())
        .merge(assignments::router())
        .merge(messages::router())
        .merge(workflows::router())
        .merge(inbox::router())
        .merge(agents::router())
        .merge(desk_metrics::router())
        .merge(routing::router())
        .merge(suggestions::router())
        .merge(ws::router())
}

/// Scopes a client's `Idempotency-Key` to its token and route, with a digest
/// of the parsed request so that reusing a key for another request is caught.
pub(crate) fn idempotency_key(
    principal: &Principal,
    route: String,
    key: Option<String>,
    request: &impl Serialize,
) -> Option<IdempotencyKey> {
    let key = key?;
    let canonical = serde_json::to_vec(request).unwrap_or_default();
    let digest = Sha256::digest(&canonical);
    Some(IdempotencyKey {
        scope: format!("{} {route}", principal.token_id()),
        key,
        request_hash: digest.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// Deserializes a field that may be absent (`None`), null (`Some(None)`) or set.
pub(crate) fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<T>::deserialize(deserializer).map(Some)
}
