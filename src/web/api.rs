//! The JSON API: status, identity, and the hello/goodbye that replicas send each other.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::ApiError;
use super::status::Status;
use crate::app::Node;
use crate::discovery::announce::{self, Refused};
use crate::proof;
use crate::verify::clip;
use crate::wire::{Identity, is_instance_id};

pub async fn status(State(node): State<Arc<Node>>) -> Json<Status> {
    Json(Status::of(&node))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityQuery {
    nonce: Option<String>,
    /// The challenger's instance id, bound into the proof.
    from: Option<String>,
}

pub async fn identity(
    State(node): State<Arc<Node>>,
    query: Result<Query<IdentityQuery>, QueryRejection>,
) -> Result<Json<Identity>, ApiError> {
    let Query(query) = query?;
    if let Some(nonce) = &query.nonce
        && (nonce.is_empty() || nonce.len() > 128 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::BadRequest(
            "nonce must be 1 to 128 hex digits".into(),
        ));
    }
    if query.from.as_deref().is_some_and(|id| !is_instance_id(id)) {
        return Err(ApiError::BadRequest(
            "from must be an instance id (1 to 64 letters, digits, - or _)".into(),
        ));
    }
    let mut identity = node.published_identity();
    if let (Some(nonce), Some(secret)) = (&query.nonce, node.settings.proof_secret()) {
        identity.proof = Some(proof::prove(
            secret,
            &proof::Challenge {
                nonce,
                challenger: query.from.as_deref().unwrap_or_default(),
                prover: &identity.instance_id,
                service: &identity.service,
                addr: identity.addr,
            },
        ));
    }
    Ok(Json(identity))
}

/// Checks that a replica's announcement comes from the address it claims, so nobody can
/// make this replica call arbitrary addresses.
fn claimed_by_caller(node: &Node, claim: &Identity, caller: SocketAddr) -> Result<(), ApiError> {
    if claim.service != node.me.service() {
        return Err(ApiError::Forbidden(format!(
            "service '{}' is not '{}'",
            clip(&claim.service),
            node.me.service()
        )));
    }
    let canonical = |ip: IpAddr| ip.to_canonical();
    if canonical(claim.addr.ip()) != canonical(caller.ip()) {
        return Err(ApiError::Forbidden(format!(
            "claimed address {} is not the caller's address {}",
            claim.addr.ip(),
            caller.ip()
        )));
    }
    Ok(())
}

/// `POST /api/hello`: a replica that found us says so; we verify it by calling back.
pub async fn hello(
    State(node): State<Arc<Node>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Result<Json<Identity>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(claim) = body?;
    claimed_by_caller(&node, &claim, caller)?;
    // A load balancer's address answers as some replica: a hello from it is no replica's.
    let snapshot = node.membership.snapshot();
    if snapshot
        .aliases
        .iter()
        .any(|(a, _)| a.ip().to_canonical() == caller.ip().to_canonical())
    {
        return Err(ApiError::Forbidden(format!(
            "{} is a load-balanced address, not a replica",
            caller.ip()
        )));
    }
    node.announcements
        .submit(claim.addr)
        .map_err(|refused| match refused {
            Refused::OutOfScope(_) => ApiError::Forbidden(refused.to_string()),
            Refused::Busy(_) | Refused::RecentlyFailed(_) | Refused::Full => {
                ApiError::RateLimited {
                    what: "hello",
                    retry_after: announce::COOLDOWN / 5,
                }
            }
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "queued": claim.addr, "by": node.me.id() })),
    ))
}

/// `POST /api/goodbye`: a member shutting down gracefully; it turns `left` at once.
pub async fn goodbye(
    State(node): State<Arc<Node>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Result<Json<Identity>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(claim) = body?;
    claimed_by_caller(&node, &claim, caller)?;
    let known = node
        .membership
        .snapshot()
        .member(&claim.instance_id)
        .is_some_and(|m| m.identity.addr == claim.addr);
    if !known || !node.membership.left(&claim.instance_id) {
        return Err(ApiError::NotFound(format!(
            "{} is not a member at {}",
            claim.instance_id, claim.addr
        )));
    }
    Ok(Json(json!({ "left": claim.instance_id })))
}

/// `GET /api/timeline`: this replica's own last events, for the other members to merge.
pub async fn timeline(State(node): State<Arc<Node>>) -> Json<Vec<crate::wire::TimelineEvent>> {
    Json(node.membership.timeline())
}
