//! HTTP: the router and its layers. Handlers only read snapshots; none waits on discovery.

mod api;
mod assets;
mod error;
mod events;
mod health;
mod limits;
mod page;
mod peer;
pub mod serve;
pub mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::app::Node;
pub use error::ApiError;

/// Bodies are identities and short messages: a few KiB is plenty.
pub(crate) const MAX_BODY_BYTES: usize = 16 * 1024;
/// No handler has a reason to take long; `/peer` bounds its own calls well below this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(node: Arc<Node>) -> Router {
    // What replicas need from each other, and platforms from a replica.
    let core = Router::new()
        .route("/api/identity", get(api::identity))
        .route("/api/hello", post(api::hello))
        .route("/api/goodbye", post(api::goodbye))
        .route("/api/deliver", post(events::deliver))
        .route("/api/relay", get(events::relay))
        .route("/api/relay/publish", post(events::relay_publish))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics));
    // What people look at: names and private addresses, by design. Their requests are the
    // traffic a draining replica waits out; peers' and health checks' calls never stop.
    let public = Router::new()
        .route("/", get(page::index))
        .route("/page/regions", get(page::regions))
        .route("/api/status", get(api::status))
        .route("/peer", get(peer::call_peers))
        .route("/events", get(events::events))
        .route("/api/broadcast", post(events::broadcast))
        .route("/static/{file}", get(assets::serve))
        .route_layer(axum::middleware::from_fn_with_state(
            node.clone(),
            note_traffic,
        ))
        // Collected by peers every few seconds.
        .route("/api/timeline", get(api::timeline));
    let app = if node.settings.status_page == "off" {
        core
    } else {
        core.merge(public)
    };
    app.fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer((
            Extension(Arc::new(peer::PeerGate::default())),
            Extension(events::stream_slots()),
            Extension(events::relay_slots()),
            Extension(Arc::new(limits::Limits::new(
                node.settings.broadcast_rate,
                node.settings.trusted_proxies.clone().unwrap_or_default(),
            ))),
            axum::middleware::from_fn_with_state(node.clone(), count_request),
            // Failures are logged by `count_request`, which knows which are planned.
            TraceLayer::new_for_http().on_failure(()),
            // Page, assets and JSON; never the event streams (the default predicate skips
            // text/event-stream) or bodies too small to gain.
            CompressionLayer::new(),
            axum::middleware::from_fn(error::uniform),
            TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT),
            RequestBodyLimitLayer::new(MAX_BODY_BYTES),
        ))
        .with_state(node)
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        node.metrics.render(&node.membership.snapshot()),
    )
}

/// Counts every request by its route pattern (never the raw path: bounded labels).
async fn count_request(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let mut response = next.run(request).await;
    if node.drain.is_draining() {
        // A balancer should not reuse a connection to a replica on its way out.
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    let status = response.status();
    node.metrics.request(&route, status.as_u16());
    let planned = route == "/readyz" && status == StatusCode::SERVICE_UNAVAILABLE;
    if status.is_server_error() && !planned {
        tracing::warn!(route = %route, status = status.as_u16(), "request failed");
    }
    response
}

async fn note_traffic(State(node): State<Arc<Node>>, request: Request, next: Next) -> Response {
    node.drain.saw_traffic();
    next.run(request).await
}
