//! Liveness and readiness, for platforms' health checks and load balancers.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;

use crate::app::Node;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 503 while draining, so the load balancer stops sending before the process stops.
pub async fn readyz(State(node): State<Arc<Node>>) -> (StatusCode, &'static str) {
    if node.drain.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}
