//! What a client asked for, from its `Accept` header.

use axum::http::{HeaderMap, header};

/// Whether `Accept` names `kind` (browsers name `text/html`; curl names nothing).
pub fn accepts(headers: &HeaderMap, kind: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(kind))
}

/// A browser, as opposed to curl or a script.
pub fn wants_html(headers: &HeaderMap) -> bool {
    accepts(headers, "text/html")
}
