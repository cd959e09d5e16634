//! `GET /api/probe?id=INSTANCE_ID`: SWIM's indirect probe. A replica that could not reach
//! a member asks a few others to try before it suspects it, so a one-way loss between two
//! replicas is not a death.
//!
//! Only a live member asking from its own address is answered, only a current member of
//! this replica's own table is probed (never an address the caller names), concurrent or
//! repeated asks about one member share one probe for [`REUSE_FOR`], and probes run for
//! others are limited in all (a refusal is a 429, never cached as an answer).

use std::time::Duration;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use serde::Deserialize;

use super::error::ApiError;
use crate::membership::{MAX_MEMBERS, Membership, State as MemberState};
use crate::verify::Verifier;
use crate::wire::{IndirectProbe, is_instance_id};

/// How long one member's probe answers every ask about it: under any probe interval, so
/// each asker's round gets a fresh look.
const REUSE_FOR: Duration = Duration::from_millis(100);

/// Probes run for others, in all: far above what members need (a few per failed check),
/// far below what would make this replica a probe cannon.
const PROBES_PER_SECOND: u32 = 100;

/// Asks about one member share one probe; probes in all are limited.
pub struct ProbeGate {
    recent: moka::future::Cache<String, IndirectProbe>,
    all: governor::DefaultDirectRateLimiter,
}

impl Default for ProbeGate {
    fn default() -> ProbeGate {
        let per_second =
            std::num::NonZeroU32::new(PROBES_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN);
        ProbeGate {
            recent: moka::future::Cache::builder()
                .max_capacity(MAX_MEMBERS as u64)
                .time_to_live(REUSE_FOR)
                .build(),
            all: governor::RateLimiter::direct(governor::Quota::per_second(per_second)),
        }
    }
}

/// What the indirect probe reads.
#[derive(Clone)]
pub struct Probing {
    pub(super) membership: Membership,
    pub(super) verifier: Verifier,
    pub(super) gate: std::sync::Arc<ProbeGate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeQuery {
    id: String,
}

pub async fn probe(
    State(probing): State<Probing>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    query: Result<Query<ProbeQuery>, QueryRejection>,
) -> Result<Json<IndirectProbe>, ApiError> {
    let Query(ProbeQuery { id }) = query?;
    if !is_instance_id(&id) {
        return Err(ApiError::BadRequest(
            "id must be an instance id (1 to 64 letters, digits, - or _)".into(),
        ));
    }
    let snapshot = probing.membership.snapshot();
    let caller = caller.ip().to_canonical();
    if !snapshot
        .members
        .iter()
        .any(|m| m.state == MemberState::Alive && m.identity.addr.ip().to_canonical() == caller)
    {
        return Err(ApiError::Forbidden(
            "only a live member of this replica's table may ask it to probe another".into(),
        ));
    }
    let Some(addr) = snapshot
        .member(&id)
        .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
        .map(|m| m.identity.addr)
    else {
        return Err(ApiError::NotFound(format!(
            "{id} is no live member of this replica's table"
        )));
    };
    if let Some(answer) = probing.gate.recent.get(&id).await {
        return Ok(Json(answer));
    }
    if probing.gate.all.check().is_err() {
        return Err(ApiError::TooMany(
            "too many indirect probes asked of this replica; try later".into(),
        ));
    }
    let verifier = probing.verifier.clone();
    let answer = probing
        .gate
        .recent
        .get_with(id.clone(), async move {
            match verifier.ask(addr).await {
                Ok(reply) if reply.identity.instance_id == id => IndirectProbe {
                    id,
                    ok: true,
                    rtt_ms: Some(reply.rtt_ms),
                    error: None,
                },
                Ok(reply) => IndirectProbe {
                    error: Some(format!("{addr} answers as {}", reply.identity.instance_id)),
                    id,
                    ok: false,
                    rtt_ms: None,
                },
                Err(e) => IndirectProbe {
                    id,
                    ok: false,
                    rtt_ms: None,
                    error: Some(e.to_string()),
                },
            }
        })
        .await;
    Ok(Json(answer))
}
