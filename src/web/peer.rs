//! `GET /peer`: proof that replicas talk directly. The replica that got the request calls
//! every alive member (or the one named) itself, past the load balancer.
//!
//! A public endpoint that makes outbound calls must not amplify traffic: one fan-out at a
//! time per replica, its result reused for a second, and rate limits per client and in all.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::response::{IntoResponse, Response};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::limits::Limits;
use super::negotiate::wants_html;
use crate::membership::{MAX_MEMBERS, Member, Membership, State as MemberState};
use crate::metrics::Metrics;
use crate::verify::{Verifier, clip};
use crate::wire::Identity;
use axum::http::HeaderMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerQuery {
    to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PeerCalls {
    from: Identity,
    results: Vec<CallResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    instance_id: String,
    name: String,
    addr: SocketAddr,
}

#[derive(Debug, Clone, Serialize)]
pub struct CallResult {
    to: Target,
    ok: bool,
    status: Option<u16>,
    rtt_ms: Option<f64>,
    reply: Option<Identity>,
    error: Option<String>,
}

/// How long a fan-out's result answers later requests.
const REUSE_FOR: Duration = Duration::from_secs(1);

/// One fan-out at a time, its result reused for [`REUSE_FOR`]; rate limits are in
/// [`Limits`].
pub struct PeerGate {
    flight: tokio::sync::Mutex<()>,
    /// Results by target (`None`: every member); a target is a member id, so at most
    /// one entry per member plus one.
    recent: moka::sync::Cache<Option<String>, PeerCalls>,
}

impl Default for PeerGate {
    fn default() -> PeerGate {
        PeerGate {
            flight: tokio::sync::Mutex::new(()),
            recent: moka::sync::Cache::builder()
                .max_capacity(MAX_MEMBERS as u64 + 1)
                .time_to_live(REUSE_FOR)
                .build(),
        }
    }
}

/// What `/peer` reads: the members, the way to call them, and its own gate.
#[derive(Clone)]
pub struct Peers {
    pub(super) membership: Membership,
    pub(super) verifier: Verifier,
    pub(super) metrics: Metrics,
    pub(super) gate: Arc<PeerGate>,
}

pub async fn call_peers(
    State(Peers {
        membership,
        verifier,
        metrics,
        gate,
    }): State<Peers>,
    State(limits): State<Arc<Limits>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<PeerQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    limits
        .peer
        .admit(&limits.client(client, &headers), "/peer")?;
    let snapshot = membership.snapshot();
    // `to` names a member, never an address: this endpoint must not reach anything else.
    if let Some(id) = &query.to
        && snapshot
            .member(id)
            .is_none_or(|m| m.state == MemberState::Left)
    {
        return Err(ApiError::NotFound(format!(
            "'{}' is not a current member",
            clip(id)
        )));
    }
    if let Some(calls) = gate.recent.get(&query.to) {
        return Ok(answer(calls, &headers));
    }
    // One fan-out at a time; whoever waited here gets its result.
    let _flight = gate.flight.lock().await;
    if let Some(calls) = gate.recent.get(&query.to) {
        return Ok(answer(calls, &headers));
    }
    let snapshot = membership.snapshot();
    let targets: Vec<&Member> = snapshot
        .members
        .iter()
        .filter(|m| match &query.to {
            Some(id) => m.identity.instance_id == *id && m.state != MemberState::Left,
            None => m.state == MemberState::Alive,
        })
        .collect();
    metrics.peer_calls(targets.len() as u64);
    let results = join_all(targets.into_iter().map(|m| call(&verifier, m))).await;
    let calls = PeerCalls {
        from: verifier.me().identity(),
        results,
    };
    gate.recent.insert(query.to, calls.clone());
    Ok(answer(calls, &headers))
}

/// The page for a browser that called without JavaScript (the page's own form), JSON for
/// everything else.
fn answer(calls: PeerCalls, headers: &HeaderMap) -> Response {
    if wants_html(headers) {
        PeerPage { calls }.into_response()
    } else {
        Json(calls).into_response()
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "peer.html")]
struct PeerPage {
    calls: PeerCalls,
}

async fn call(verifier: &Verifier, member: &Member) -> CallResult {
    let to = Target {
        instance_id: member.identity.instance_id.clone(),
        name: member.identity.name.clone(),
        addr: member.identity.addr,
    };
    match verifier.ask(member.identity.addr).await {
        Ok(reply) => {
            let same = reply.identity.instance_id == member.identity.instance_id;
            CallResult {
                to,
                ok: same,
                status: Some(reply.status),
                rtt_ms: Some(reply.rtt_ms),
                error: (!same).then(|| {
                    format!(
                        "answered as another instance ({})",
                        reply.identity.instance_id
                    )
                }),
                reply: Some(reply.identity),
            }
        }
        Err(e) => CallResult {
            to,
            ok: false,
            status: None,
            rtt_ms: None,
            reply: None,
            error: Some(e.to_string()),
        },
    }
}
