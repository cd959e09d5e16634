//! Liveness and readiness, for platforms' health checks and load balancers.

use axum::extract::State;
use axum::http::StatusCode;

use crate::drain::Drain;

pub async fn healthz() -> &'static str {
    "ok\n"
}

/// 503 until the replica serves, and again while it drains, so the load balancer sends
/// nothing to a replica that is not there yet or no longer.
pub async fn readyz(State(drain): State<Drain>) -> (StatusCode, &'static str) {
    if drain.is_ready() {
        (StatusCode::OK, "ready\n")
    } else if drain.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n")
    }
}
