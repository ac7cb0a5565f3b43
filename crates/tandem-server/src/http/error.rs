//! The API's error type and its one mapping to HTTP.
//!
//! Every failure leaves the server as `{"error": {"code", "message"}}` with a
//! fitting status. A 500's body says nothing about its cause; the cause is
//! logged inside the request's span.

use std::time::Duration;

use aide::OperationOutput;
use aide::generate::GenContext;
use aide::openapi::{MediaType, Operation, Response as DocResponse, SchemaObject};
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use tandem_store::StoreError;
use tandem_workflows::{EngineError, SignatureError};

/// An error answered to a client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("a valid bearer token is required")]
    Unauthorized,
    /// A signed request (a hook, a resume URL) whose signature does not hold.
    #[error("{message}")]
    BadSignature { code: &'static str, message: String },
    /// Credentials other than a token (a password, a widget key, a signed
    /// identity) that do not hold.
    #[error("{message}")]
    Denied { code: &'static str, message: String },
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A 404 with a code of its own (a workflow name that is not defined).
    #[error("{message}")]
    Missing { code: &'static str, message: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    Gone { code: &'static str, message: String },
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// A body that did not arrive within `connections.body_timeout_secs`.
    #[error("the request body did not arrive within {} s", .0.as_secs())]
    BodyTimeout(Duration),
    #[error("expected a JSON body with Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    #[error("this token already holds {limit} WebSocket connections")]
    TooManyConnections { limit: usize },
    #[error("this route takes a WebSocket upgrade request")]
    UpgradeRequired,
    #[error("too many requests; retry after {} s", retry_after_secs(*.retry_after))]
    RateLimited { retry_after: Duration },
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            message: message.into(),
        }
    }

    pub fn denied(code: &'static str, message: impl Into<String>) -> Self {
        Self::Denied {
            code,
            message: message.into(),
        }
    }

    /// A field the caller's token may not set.
    pub fn field_not_allowed(field: &str, who: &str) -> Self {
        Self::bad_request(
            "field_not_allowed",
            format!("{who} tokens may not set `{field}`"),
        )
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::BadSignature { .. } | Self::Denied { .. } => {
                StatusCode::UNAUTHORIZED
            }
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound(_) | Self::Missing { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Gone { .. } => StatusCode::GONE,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited { .. } | Self::TooManyConnections { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. }
            | Self::BadSignature { code, .. }
            | Self::Denied { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Missing { code, .. }
            | Self::Conflict { code, .. }
            | Self::Gone { code, .. }
            | Self::Unprocessable { code, .. } => code,
            Self::Unauthorized => "unauthorized",
            Self::NotFound(_) => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "body_too_large",
            Self::BodyTimeout(_) => "body_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::TooManyConnections { .. } => "too_many_connections",
            Self::UpgradeRequired => "websocket_upgrade_required",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }
}

fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// The JSON body of every error.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable name for the failure.
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            Self::Internal(cause) => {
                tracing::error!(%cause, "request failed");
                "internal server error".to_owned()
            }
            Self::Unavailable(cause) => {
                tracing::warn!(%cause, "dependency unavailable");
                "service unavailable, try again later".to_owned()
            }
            other => other.to_string(),
        };
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code().to_owned(),
                message,
            },
        };
        let mut response = (status, Json(body)).into_response();
        match &self {
            Self::RateLimited { retry_after } => {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs(*retry_after).max(1)),
                );
            }
            Self::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body is not read: the connection cannot go on.
            Self::BodyTimeout(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Conflict { code, message } => Self::Conflict { code, message },
            StoreError::Invalid { code, message } => Self::BadRequest { code, message },
            StoreError::IdempotencyMismatch => Self::Unprocessable {
                code: "idempotency_key_reused",
                message: e.to_string(),
            },
            StoreError::Closed => Self::Unavailable("the store is shutting down".into()),
            // Text PostgreSQL cannot store (e.g. U+0000); the API refuses it
            // first, this keeps any path that slips through a 400.
            StoreError::Database(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("22021") | Some("22P05")) =>
            {
                Self::bad_request(
                    "invalid_text",
                    "text contains a character that cannot be stored",
                )
            }
            StoreError::Database(sqlx::Error::PoolTimedOut) => {
                Self::Unavailable("database pool exhausted".into())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::UnknownWorkflow(name) => Self::Missing {
                code: "unknown_workflow",
                message: format!("no workflow named {name:?} is defined on this server"),
            },
            EngineError::InvalidArgs(reason) => Self::Unprocessable {
                code: "invalid_args",
                message: format!("the workflow refused its arguments: {reason}"),
            },
            EngineError::ShuttingDown => {
                Self::Unavailable("the workflow engine is shutting down".into())
            }
            EngineError::Store(e) => e.into(),
        }
    }
}

impl From<SignatureError> for ApiError {
    fn from(e: SignatureError) -> Self {
        match e {
            SignatureError::Malformed | SignatureError::Mismatch => Self::BadSignature {
                code: "invalid_signature",
                message: e.to_string(),
            },
            SignatureError::Stale => Self::BadSignature {
                code: "stale_signature",
                message: e.to_string(),
            },
            SignatureError::Expired => Self::Gone {
                code: "expired",
                message: e.to_string(),
            },
        }
    }
}

impl OperationOutput for ApiError {
    type Inner = ErrorBody;

    fn operation_response(ctx: &mut GenContext, _operation: &mut Operation) -> Option<DocResponse> {
        let json_schema = ctx.schema.subschema_for::<ErrorBody>();
        Some(DocResponse {
            description: "An error: `{\"error\": {\"code\", \"message\"}}`".into(),
            content: [(
                "application/json".into(),
                MediaType {
                    schema: Some(SchemaObject {
                        json_schema,
                        example: None,
                        external_docs: None,
                    }),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        })
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, DocResponse)> {
        Self::operation_response(ctx, operation)
            .map(|response| vec![(None, response)])
            .unwrap_or_default()
    }
}
