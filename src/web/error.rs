//! The web layer's one error type, mapped to HTTP in one place.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::discovery::announce::AnnounceError;
use crate::discovery::announcements::COOLDOWN;

/// Bodies are identities and short messages: a few KiB is plenty (the 413 below names it).
pub const MAX_BODY_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// A member this replica handed a call to did not answer as itself.
    #[error("{0}")]
    BadGateway(String),
    #[error("{0}")]
    TooMany(String),
    /// Over a rate limit: answered with `Retry-After`.
    #[error("{what}: too many requests; retry in {} s", retry_secs(*.retry_after))]
    RateLimited {
        what: &'static str,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    UnsupportedType(String),
}

impl From<AnnounceError> for ApiError {
    fn from(e: AnnounceError) -> ApiError {
        match e {
            AnnounceError::Forbidden(why) => ApiError::Forbidden(why),
            AnnounceError::Busy(_) => ApiError::RateLimited {
                what: "hello",
                retry_after: COOLDOWN / 5,
            },
            e @ AnnounceError::NotMember { .. } => ApiError::NotFound(e.to_string()),
        }
    }
}

impl ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::TooMany(_) | ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

/// Whole seconds to wait, at least one (what `Retry-After` can say).
fn retry_secs(wait: std::time::Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = match &self {
            ApiError::RateLimited { retry_after, .. } => Some(retry_secs(*retry_after)),
            ApiError::TooMany(_) => Some(1),
            _ => None,
        };
        let mut response = (
            self.status_code(),
            Json(json!({ "error": self.to_string() })),
        )
            .into_response();
        if let Some(secs) = retry {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        ApiError::BadRequest(r.body_text())
    }
}

/// Error bodies that layers and axum's own rejections write in plain text (body limit,
/// timeout, unknown method), rewritten to the `{"error": …}` shape every handler uses, so
/// a client parses one shape. Answers that say nothing about caching are not cached:
/// everything but the static files changes from one request to the next. And the headers
/// every answer carries.
pub async fn uniform(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let mut response = if (status.is_client_error() || status.is_server_error()) && !is_json {
        let (mut parts, body) = response.into_parts();
        let text = axum::body::to_bytes(body, 1024).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let reason = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the request body is over {} bytes", MAX_BODY_BYTES)
            }
            _ if !text.trim().is_empty() => text.trim().to_string(),
            _ => status.canonical_reason().unwrap_or("error").to_lowercase(),
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::CONTENT_TYPE);
        let mut fresh = (status, Json(json!({ "error": reason }))).into_response();
        for (name, value) in parts.headers.iter() {
            fresh.headers_mut().insert(name.clone(), value.clone());
        }
        fresh
    } else {
        response
    };
    let headers = response.headers_mut();
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    // No other site may frame the page (its buttons post), and no answer is sniffed into
    // another type than it says. Scripts come only from this origin's files: markup in a
    // region another replica rendered (the page's regions are handed on) runs nothing.
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "script-src 'self'; object-src 'none'; frame-ancestors 'none'; form-action 'self'; \
             base-uri 'none'",
        ),
    );
    response
}
