//! Extractors whose failures are [`ApiError`]s, so malformed input is answered
//! in the same format as every other error.

use aide::OperationIo;
use aide::OperationOutput;
use aide::generate::GenContext;
use aide::openapi::{Operation, Response as DocResponse};
use aide::operation::OperationInput;
use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schemars::JsonSchema;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::AppState;

/// A JSON body, size-limited by `limits.max_body_bytes`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        if !has_json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = read_body(req, state.config.limits.max_body_bytes).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A request body as sent, size-limited by `limits.max_body_bytes`, for
/// routes that check a signature over the exact bytes. Any content type.
#[derive(Debug, Clone)]
pub struct RawBody(pub axum::body::Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        read_body(req, state.config.limits.max_body_bytes)
            .await
            .map(RawBody)
    }
}

impl OperationInput for RawBody {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<serde_json::Value>::operation_input(ctx, operation);
    }
}

/// Reads a body of at most `limit` bytes (413 above it; 408 when it does not
/// arrive within `connections.body_timeout_secs`).
async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::PayloadTooLarge { limit }
            } else if let Some(timeout) = crate::net::body::timeout_of(&e) {
                ApiError::BodyTimeout(timeout)
            } else {
                ApiError::bad_request("unreadable_body", "the request body could not be read")
            }
        })
}

/// Parses a JSON body, naming the offending field on a type error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if has_nul_escape(bytes) {
        return Err(nul_refused());
    }
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // Some shape mismatches surface as syntax errors (e.g. an array where
        // an object is expected); only JSON that does not parse is malformed.
        let well_formed = serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok();
        match inner.classify() {
            serde_json::error::Category::Syntax | serde_json::error::Category::Eof
                if !well_formed =>
            {
                ApiError::bad_request("malformed_json", format!("malformed JSON: {inner}"))
            }
            _ if path == "." => ApiError::bad_request("invalid_body", inner.to_string()),
            _ => ApiError::bad_request("invalid_body", format!("{path}: {inner}")),
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::bad_request("malformed_json", format!("malformed JSON: {e}")))?;
    Ok(value)
}

/// Whether a JSON text holds the escape `\u0000` (a raw NUL cannot appear in
/// valid JSON). PostgreSQL cannot store U+0000 in `text` or `jsonb`, so it is
/// refused everywhere and both backends accept exactly the same input.
fn has_nul_escape(bytes: &[u8]) -> bool {
    bytes.windows(6).enumerate().any(|(at, window)| {
        window == b"\\u0000"
            && bytes[..at]
                .iter()
                .rev()
                .take_while(|b| **b == b'\\')
                .count()
                % 2
                == 0
    })
}

fn nul_refused() -> ApiError {
    ApiError::bad_request(
        "invalid_text",
        "text may not contain the NUL character (U+0000)",
    )
}

fn has_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = value.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
        || (mime.len() > 5 && mime[..mime.len() - 5].contains('/') && mime.ends_with("+json"))
}

impl<T: JsonSchema> OperationInput for ApiJson<T> {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        Json::<T>::operation_input(ctx, operation);
    }
}

/// Query parameters; unknown or ill-typed ones are a 400 `invalid_query`.
#[derive(Debug, Clone, OperationIo)]
#[aide(input_with = "Query<T>", json_schema)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        if parts
            .uri
            .query()
            .is_some_and(|q| q.to_ascii_lowercase().contains("%00"))
        {
            return Err(nul_refused());
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// Path parameters; an id that does not parse is a 400 `invalid_id`.
#[derive(Debug, Clone, OperationIo)]
#[aide(input_with = "Path<T>", json_schema)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| ApiError::bad_request("invalid_id", e.body_text()))
    }
}

/// The optional `Idempotency-Key` header: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone)]
pub struct IdempotencyHeader(pub Option<String>);

const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyHeader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(Self(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        Ok(Self(Some(key.to_owned())))
    }
}

impl OperationInput for IdempotencyHeader {
    fn operation_input(ctx: &mut GenContext, operation: &mut Operation) {
        use aide::openapi::{HeaderStyle, Parameter, ParameterData, ParameterSchemaOrContent};
        let schema = ctx.schema.subschema_for::<String>();
        aide::operation::add_parameters(
            ctx,
            operation,
            [Parameter::Header {
                parameter_data: ParameterData {
                    name: "Idempotency-Key".into(),
                    description: Some(
                        "A retried POST with the same key returns the first answer and changes nothing."
                            .into(),
                    ),
                    required: false,
                    format: ParameterSchemaOrContent::Schema(aide::openapi::SchemaObject {
                        json_schema: schema,
                        example: None,
                        external_docs: None,
                    }),
                    extensions: Default::default(),
                    deprecated: None,
                    example: None,
                    examples: Default::default(),
                    explode: None,
                },
                style: HeaderStyle::Simple,
            }],
        );
    }
}

/// A 201 with the created resource; `Idempotent-Replayed: true` when it is
/// the recorded answer to an earlier request with the same key.
#[derive(Debug)]
pub struct Created<T> {
    pub value: T,
    pub replayed: bool,
}

impl<T> From<tandem_store::Written<T>> for Created<T> {
    fn from(written: tandem_store::Written<T>) -> Self {
        Self {
            value: written.value,
            replayed: written.replayed,
        }
    }
}

impl<T: Serialize> IntoResponse for Created<T> {
    fn into_response(self) -> Response {
        let mut response = (StatusCode::CREATED, Json(self.value)).into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

impl<T: JsonSchema> OperationOutput for Created<T> {
    type Inner = T;

    fn operation_response(ctx: &mut GenContext, operation: &mut Operation) -> Option<DocResponse> {
        Json::<T>::operation_response(ctx, operation)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, DocResponse)> {
        json_with_status::<T>(ctx, operation, 201)
    }
}

/// The OpenAPI answer of a JSON body `T` under a status other than 200.
fn json_with_status<T: JsonSchema>(
    ctx: &mut GenContext,
    operation: &mut Operation,
    status: u16,
) -> Vec<(Option<u16>, DocResponse)> {
    Json::<T>::operation_response(ctx, operation)
        .map(|response| vec![(Some(status), response)])
        .unwrap_or_default()
}

/// A 202: the request was taken and will be acted on.
#[derive(Debug)]
pub struct Accepted<T>(pub T);

impl<T: Serialize> IntoResponse for Accepted<T> {
    fn into_response(self) -> Response {
        (StatusCode::ACCEPTED, Json(self.0)).into_response()
    }
}

impl<T: JsonSchema> OperationOutput for Accepted<T> {
    type Inner = T;

    fn operation_response(ctx: &mut GenContext, operation: &mut Operation) -> Option<DocResponse> {
        Json::<T>::operation_response(ctx, operation)
    }

    fn inferred_responses(
        ctx: &mut GenContext,
        operation: &mut Operation,
    ) -> Vec<(Option<u16>, DocResponse)> {
        json_with_status::<T>(ctx, operation, 202)
    }
}
