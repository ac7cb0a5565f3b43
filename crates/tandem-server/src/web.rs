//! The web pages: the customer chat (`/chat`, and `/widget.js` that embeds
//! it in any site), the agent inbox (`/inbox`), and their files under
//! `/web/…`. They are the static files of `web/`, built into the binary
//! (or read from `web.dir` while working on them).
//!
//! Every page gets a Content-Security-Policy that allows this server's own
//! scripts, styles and connections only. Who may frame a page is decided
//! here too: the chat by the origins its widget key lists, the inbox by
//! nobody. Files are revalidated on every load (`ETag`, 304).

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Component, Path};

use axum::Router;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::http::ApiError;
use crate::http::origin;

/// The files of `web/`, in the binary.
#[derive(rust_embed::RustEmbed)]
#[folder = "../../web"]
struct Embedded;

/// What the pages may load: only this server's own files and API.
const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                   style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; \
                   form-action 'self'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/chat", get(chat))
        .route("/inbox", get(inbox))
        .route("/widget.js", get(widget))
        .route("/web/{*path}", get(file))
}

/// The chat page. Sites the widget key (`?key=`) lists may frame it.
async fn chat(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let mut ancestors = vec!["'self'".to_owned()];
    let key = match query.get("key") {
        Some(key) => state.store.widget_key(key).await?,
        None => None,
    };
    if let Some(key) = key {
        ancestors.extend(
            key.allowed_origins
                .into_iter()
                .filter(|o| origin::is_well_formed(o))
                .map(|o| o.trim_end_matches('/').to_owned()),
        );
    }
    let csp = format!("{CSP}; frame-ancestors {}", ancestors.join(" "));
    serve(&state, "chat/index.html", &headers, Some(&csp)).await
}

/// The inbox page: never framed.
async fn inbox(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let csp = format!("{CSP}; frame-ancestors 'none'");
    serve(&state, "inbox/index.html", &headers, Some(&csp)).await
}

/// The embed script, loaded by other sites' pages.
async fn widget(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let mut response = serve(&state, "widget.js", &headers, None).await?;
    response.headers_mut().insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    Ok(response)
}

async fn file(
    State(state): State<AppState>,
    UrlPath(path): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    serve(&state, &path, &headers, None).await
}

/// A file of `web/`, with its type, validators and security headers; an
/// HTML page gets `csp`.
async fn serve(
    state: &AppState,
    path: &str,
    request: &HeaderMap,
    csp: Option<&str>,
) -> Result<Response, ApiError> {
    let content_type = content_type(path).ok_or(ApiError::NotFound("file"))?;
    let (bytes, etag) = load(state, path).await?.ok_or(ApiError::NotFound("file"))?;
    let etag = format!("\"{etag}\"");
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| tags.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            bytes.into_owned(),
        )
            .into_response()
    };
    let headers = response.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, etag);
    }
    // Always revalidate: a deploy is seen at the next load, and an
    // unchanged file costs a 304.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Some(csp) = csp {
        let csp = HeaderValue::from_str(csp)
            .map_err(|e| ApiError::Internal(format!("content security policy: {e}")))?;
        headers.insert(header::CONTENT_SECURITY_POLICY, csp);
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
    }
    Ok(response)
}

/// The file's bytes and a hash of them: from `web.dir` when set, else the
/// copy in the binary. `None` for a path outside `web/` or not there.
async fn load(
    state: &AppState,
    path: &str,
) -> Result<Option<(Cow<'static, [u8]>, String)>, ApiError> {
    let relative = Path::new(path);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Ok(None);
    }
    if let Some(dir) = &state.config.web.dir {
        return match tokio::fs::read(dir.join(relative)).await {
            Ok(bytes) => {
                let etag = hex(&Sha256::digest(&bytes));
                Ok(Some((Cow::Owned(bytes), etag)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ApiError::Internal(format!("reading {path}: {e}"))),
        };
    }
    Ok(Embedded::get(path).map(|file| {
        let etag = hex(&file.metadata.sha256_hash());
        (file.data, etag)
    }))
}

/// The types of the files the pages are made of; anything else is not served.
fn content_type(path: &str) -> Option<&'static str> {
    let extension = Path::new(path).extension()?.to_str()?;
    Some(match extension {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" => "application/json",
        _ => return None,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
