//! The JSON API: status, identity, and the hello/goodbye that replicas send each other.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::status::{Status, StatusSources};
use crate::discovery::announce::Announce;
use crate::drain::Drain;
use crate::gossip::Rumours;
use crate::identity::Me;
use crate::membership::{Membership, State as MemberState};
use crate::proof;
use crate::timeline::Timeline;
use crate::verify::Verifier;
use crate::wire::{Identity, TimelineEvent, is_instance_id};

pub async fn status(State(sources): State<StatusSources>) -> Json<Status> {
    Json(Status::of(&sources))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityQuery {
    nonce: Option<String>,
    /// The challenger's instance id, bound into the proof.
    from: Option<String>,
    /// `false`: without the mesh row (a probe that does not need it this time).
    mesh: Option<bool>,
}

pub async fn identity(
    State(me): State<Arc<Me>>,
    State(membership): State<Membership>,
    State(drain): State<Drain>,
    State(verifier): State<Verifier>,
    State(rumours): State<Rumours>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
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
    let snapshot = membership.snapshot();
    let mut identity = snapshot.published(me.identity(), drain.is_draining());
    // News (and the members it samples) only for a member asking from its own address:
    // anyone else's calls would use up its retransmissions, or read the member list.
    let member_asks = query.from.as_deref().is_some_and(|from| {
        snapshot.member(from).is_some_and(|m| {
            matches!(m.state, MemberState::Alive | MemberState::Suspect)
                && m.identity.addr.ip().to_canonical() == caller.ip().to_canonical()
        })
    });
    if member_asks {
        identity.news = rumours.for_answer(&snapshot);
    }
    if query.mesh == Some(false) {
        identity.mesh = None;
    }
    if let (Some(nonce), Some(secret)) = (&query.nonce, verifier.secret()) {
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

/// `POST /api/hello`: a replica that found us says so; we verify it by calling back.
pub async fn hello(
    State(announce): State<Announce>,
    State(me): State<Arc<Me>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Result<Json<Identity>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(claim) = body?;
    announce.hello(&claim, caller)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "queued": claim.addr, "by": me.id() })),
    ))
}

/// `POST /api/goodbye`: a member shutting down gracefully; it turns `left` at once.
pub async fn goodbye(
    State(announce): State<Announce>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Result<Json<Identity>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(claim) = body?;
    announce.goodbye(&claim, caller)?;
    Ok(Json(json!({ "left": claim.instance_id })))
}

/// `GET /api/timeline`: this replica's own last events, for the other members to merge.
pub async fn timeline(State(timeline): State<Timeline>) -> Json<Vec<TimelineEvent>> {
    Json(timeline.own())
}
