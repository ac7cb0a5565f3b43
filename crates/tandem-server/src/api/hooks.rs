//! `POST /v1/hooks/workflows/{id}/events/{name}`: events from systems and
//! people without a token, proven by a signature instead.
//!
//! Two kinds of proof (see `docs/workflows.md`):
//!
//! - a **signed hook**: `Tandem-Timestamp` and `Tandem-Signature: v1=<hex>`,
//!   the HMAC of `"{timestamp}.{run_id}.{event}.{body}"` over the raw body.
//!   A redelivery of the same request (same signature) is accepted again
//!   with `duplicate: true` and changes nothing.
//! - a **resume URL** a step minted (`?step=&expires=&sig=`): single use
//!   (a second use is 409 `already_used`) until it expires (410).
//!
//! The signature is checked before anything else is read or written, so a
//! request that fails it changes nothing. The route counts against the
//! anonymous rate limit.

use aide::axum::ApiRouter;
use aide::axum::routing::post;
use axum::extract::State;
use axum::http::HeaderMap;
use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tandem_model::{EventId, EventSource, RunId, RunStatus};
use tandem_workflows::SignatureError;
use tandem_workflows::signing::{SIGNATURE_HEADER, TIMESTAMP_HEADER};

use super::workflows::{EventPath, check_event_name, run_id};
use crate::AppState;
use crate::http::extract::{ApiPath, parse_json};
use crate::http::{Accepted, ApiError, ApiQuery, RawBody};

pub fn router() -> ApiRouter<AppState> {
    ApiRouter::new().api_route("/v1/hooks/workflows/{id}/events/{name}", post(hook))
}

/// A resume URL's query; absent for a signed hook.
#[derive(Debug, Deserialize, JsonSchema)]
pub struct ResumeQuery {
    /// The journal step that minted the URL.
    pub step: Option<String>,
    /// Unix seconds after which the URL is refused (410).
    pub expires: Option<String>,
    /// The URL's signature.
    pub sig: Option<String>,
}

/// What a hook learns of the delivery: no more than it needs, since a resume
/// URL may be in the hands of anyone it was given to.
#[derive(Debug, Serialize, JsonSchema)]
pub struct HookAccepted {
    pub event_id: EventId,
    pub run_id: RunId,
    /// The run's status after the delivery.
    pub status: RunStatus,
    /// The same request was delivered before; nothing changed.
    pub duplicate: bool,
}

/// Delivers the event whose payload is the JSON body (empty: null), once the
/// signature holds: 401 `invalid_signature` or `stale_signature`, 410
/// `expired`, 409 `already_used` (a resume URL used before) or
/// `run_finished`.
async fn hook(
    State(state): State<AppState>,
    ApiPath(EventPath { id, name }): ApiPath<EventPath>,
    ApiQuery(query): ApiQuery<ResumeQuery>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Accepted<HookAccepted>, ApiError> {
    let run = run_id(&id)?;
    check_event_name(&name)?;
    let signer = state.workflows.signer();
    let resume = query.step.is_some() || query.expires.is_some() || query.sig.is_some();
    let (source, delivery) = if resume {
        let (Some(step), Some(expires), Some(sig)) = (
            query.step.and_then(|s| s.parse::<i64>().ok()),
            query.expires.and_then(|e| e.parse::<i64>().ok()),
            query.sig,
        ) else {
            return Err(SignatureError::Malformed.into());
        };
        // Resume URLs expire on the workflow clock, which minted them.
        let now = state.workflows.clock().now();
        signer.verify_resume(run, &name, step, expires, &sig, now)?;
        (EventSource::ResumeUrl, format!("resume:{step}"))
    } else {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signature = header(SIGNATURE_HEADER);
        // Hooks are signed on the sender's wall clock.
        signer.verify_hook(
            header(TIMESTAMP_HEADER),
            signature,
            run,
            &name,
            &body,
            Utc::now(),
        )?;
        // The same request, however it is spelled, is one delivery.
        let signature = signature.unwrap_or_default().trim().to_ascii_lowercase();
        (EventSource::Hook, signature)
    };
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_json::<Value>(&body)?
    };
    let delivered = state
        .workflows
        .deliver_event(run, &name, payload, source, Some(delivery))
        .await?;
    if delivered.duplicate && source == EventSource::ResumeUrl {
        return Err(ApiError::Conflict {
            code: "already_used",
            message: "this resume URL has been used already".into(),
        });
    }
    Ok(Accepted(HookAccepted {
        event_id: delivered.event.id,
        run_id: delivered.run.id,
        status: delivered.run.status,
        duplicate: delivered.duplicate,
    }))
}
