//! Liveness and readiness, for platforms' health checks and load balancers.

use axum::extract::State;
use axum::http::StatusCode;

use crate::drain::Drain;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 503 while draining, so the load balancer stops sending before the process stops.
pub async fn readyz(State(drain): State<Drain>) -> (StatusCode, &'static str) {
    if drain.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    }
}
