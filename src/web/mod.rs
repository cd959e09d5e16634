//! HTTP: the router and its layers. Handlers only read snapshots; none waits on discovery.

mod api;
mod assets;
mod error;
mod events;
mod health;
mod labels;
mod large_view;
mod limits;
mod mesh_summary;
mod negotiate;
mod page;
mod peer;
mod probe;
pub mod serve;
pub mod state;
pub mod status;
mod text;
mod timeline_lines;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::compression::CompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::drain::Drain;
use crate::membership::Membership;
use crate::metrics::Metrics;
pub use error::ApiError;
pub use events::{RelaySlots, StreamSlots, relay_slots, stream_slots};
pub use limits::Limits;
pub use page::{REGION_IDS, ViewGate};
pub use peer::PeerGate;
pub use state::AppState;
pub use status::PageSettings;

/// No handler has a reason to take long; `/peer` bounds its own calls well below this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Every route. With `status_page` off, only what replicas and platforms need.
pub fn router(state: AppState, status_page: bool) -> Router {
    // What replicas need from each other, and platforms from a replica.
    let core = Router::new()
        .route("/api/identity", get(api::identity))
        .route("/api/hello", post(api::hello))
        .route("/api/goodbye", post(api::goodbye))
        .route("/api/probe", get(probe::probe))
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
            state.drain.clone(),
            note_traffic,
        ))
        // Collected by peers every few seconds.
        .route("/api/timeline", get(api::timeline));
    let app = if status_page {
        core.merge(public)
    } else {
        core
    };
    app.fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer((
            axum::middleware::from_fn_with_state(
                (state.metrics.clone(), state.drain.clone()),
                count_request,
            ),
            // Failures are logged by `count_request`, which knows which are planned.
            TraceLayer::new_for_http().on_failure(()),
            // Page, assets and JSON; never the event streams (the default predicate skips
            // text/event-stream) or bodies too small to gain.
            CompressionLayer::new(),
            axum::middleware::from_fn(error::uniform),
            TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT),
            RequestBodyLimitLayer::new(error::MAX_BODY_BYTES),
        ))
        .with_state(state)
}

/// `GET /metrics`: Prometheus text.
async fn metrics(
    State(metrics): State<Metrics>,
    State(membership): State<Membership>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(&membership.snapshot()),
    )
}

/// Counts every request by its route pattern (never the raw path: bounded labels).
async fn count_request(
    State((metrics, drain)): State<(Metrics, Drain)>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let mut response = next.run(request).await;
    if drain.is_draining() {
        // A balancer should not reuse a connection to a replica on its way out.
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    let status = response.status();
    metrics.request(&route, status.as_u16(), started.elapsed());
    let planned = route == "/readyz" && status == StatusCode::SERVICE_UNAVAILABLE;
    if status.is_server_error() && !planned {
        tracing::warn!(route = %route, status = status.as_u16(), "request failed");
    }
    response
}

async fn note_traffic(State(drain): State<Drain>, request: Request, next: Next) -> Response {
    drain.saw_traffic();
    next.run(request).await
}
