//! `GET /peer`: proof that replicas talk directly. The replica that got the request calls
//! every alive member (or the one named) itself, past the load balancer. With `from`, it
//! hands the call to that member instead, directly, which runs it: a page behind a load
//! balancer can run the calls on the replica that served it.
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
use crate::membership::{MAX_MEMBERS, Member, Membership, Snapshot, State as MemberState};
use crate::metrics::Metrics;
use crate::verify::{Verifier, clip};
use crate::wire::Identity;
use axum::http::HeaderMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerQuery {
    to: Option<String>,
    from: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerCalls {
    /// Who ran the calls.
    from: Identity,
    results: Vec<CallResult>,
    /// Who got the request and handed it to `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forwarded_by: Option<Identity>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    instance_id: String,
    name: String,
    addr: SocketAddr,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A handed-on fan-out's answer names at most every member, each with its identity.
const MAX_FORWARDED_BYTES: usize = MAX_MEMBERS * 2 * 1024;

/// One fan-out at a time, its result reused for [`REUSE_FOR`]; rate limits are in
/// [`Limits`].
pub struct PeerGate {
    flight: tokio::sync::Mutex<()>,
    /// Results by who ran them (`None`: this replica) and target (`None`: every member);
    /// both are member ids, and the cache is bounded by the member cap.
    /// A hand-on that failed is kept too (why, for a 502): it held the flight for up to
    /// twice the peer timeout, and is not tried again for a second.
    recent: moka::sync::Cache<(Option<String>, Option<String>), Result<PeerCalls, String>>,
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
    let snapshot = membership.snapshot();
    if is_member(&snapshot, client) {
        // A member handing on a page's click was limited where the click arrived; here it
        // counts in all only, or every page it serves would share one client's bucket.
        limits.peer.admit_in_all("/peer")?;
    } else {
        limits
            .peer
            .admit(&limits.client(client, &headers), "/peer")?;
    }
    // `to` and `from` name members, never addresses: this endpoint must not reach anything
    // else.
    if let Some(id) = &query.to {
        current(&snapshot, id)?;
    }
    let from = query.from.filter(|id| id != verifier.me().id());
    if let Some(id) = &from {
        runner(&snapshot, id)?;
    }
    let key = (from, query.to);
    if let Some(calls) = gate.recent.get(&key) {
        return answered(calls, &headers);
    }
    // One fan-out (or hand-on) at a time; whoever waited here gets its result.
    let _flight = gate.flight.lock().await;
    if let Some(calls) = gate.recent.get(&key) {
        return answered(calls, &headers);
    }
    let snapshot = membership.snapshot();
    let calls = match &key {
        (Some(from), to) => hand_on(&verifier, runner(&snapshot, from)?, to.as_deref()).await,
        (None, to) => Ok(fan_out(&verifier, &metrics, &snapshot, to.as_deref()).await),
    };
    gate.recent.insert(key, calls.clone());
    answered(calls, &headers)
}

fn answered(calls: Result<PeerCalls, String>, headers: &HeaderMap) -> Result<Response, ApiError> {
    calls
        .map(|calls| answer(calls, headers))
        .map_err(ApiError::BadGateway)
}

/// Whether the caller is a member (its verified address): a replica handing on a call.
fn is_member(snapshot: &Snapshot, caller: SocketAddr) -> bool {
    let ip = caller.ip().to_canonical();
    snapshot
        .members
        .iter()
        .any(|m| m.state == MemberState::Alive && m.identity.addr.ip().to_canonical() == ip)
}

/// This replica calls every alive member, or the one named.
async fn fan_out(
    verifier: &Verifier,
    metrics: &Metrics,
    snapshot: &Snapshot,
    to: Option<&str>,
) -> PeerCalls {
    let targets: Vec<&Member> = snapshot
        .members
        .iter()
        .filter(|m| match to {
            Some(id) => m.identity.instance_id == id && m.state != MemberState::Left,
            None => m.state == MemberState::Alive,
        })
        .collect();
    metrics.peer_calls(targets.len() as u64);
    let results = join_all(targets.into_iter().map(|m| call(verifier, m))).await;
    PeerCalls {
        from: compact(verifier.me().identity()),
        results,
        forwarded_by: None,
    }
}

/// The member `id` names, when it is current (not left, not forgotten).
fn current<'a>(snapshot: &'a Snapshot, id: &str) -> Result<&'a Member, ApiError> {
    snapshot
        .member(id)
        .filter(|m| m.state != MemberState::Left)
        .ok_or_else(|| ApiError::NotFound(format!("'{}' is not a current member", clip(id))))
}

/// The member `id` names, when it may run calls: alive, or suspect (it may answer yet).
/// A dead one is not dialled: its address may be someone else's now.
fn runner<'a>(snapshot: &'a Snapshot, id: &str) -> Result<&'a Member, ApiError> {
    current(snapshot, id)?;
    snapshot
        .member(id)
        .filter(|m| matches!(m.state, MemberState::Alive | MemberState::Suspect))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "'{}' is not answering: it cannot run the calls",
                clip(id)
            ))
        })
}

/// An identity as a result shows it: without the mesh row it publishes for the matrix
/// (which grows with the cluster, and would make a fan-out's answer grow with its square).
fn compact(mut identity: Identity) -> Identity {
    identity.mesh = None;
    identity
}

/// Hands the call to `runner`, directly: it runs the fan-out (or the one call to `to`) and
/// its answer must say it ran it.
async fn hand_on(
    verifier: &Verifier,
    runner: &Member,
    to: Option<&str>,
) -> Result<PeerCalls, String> {
    let path = match to {
        // A member id is letters and digits (`is_instance_id`): nothing to escape.
        Some(to) => format!("/peer?to={to}"),
        None => "/peer".to_string(),
    };
    let who = &runner.identity;
    let failed = |why: String| {
        format!(
            "{} ({}) could not run the calls: {why}",
            clip(&who.name),
            who.addr
        )
    };
    let body = verifier
        .client()
        .get_fan_out(who.addr, &path, MAX_FORWARDED_BYTES)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut calls: PeerCalls = serde_json::from_slice(&body)
        .map_err(|_| failed("its answer is not a /peer result".into()))?;
    if calls.from.instance_id != who.instance_id {
        return Err(failed(format!(
            "answered as another instance ({})",
            clip(&calls.from.instance_id)
        )));
    }
    // What the runner says it called is its word; who it is comes from our own table,
    // and what it says is cut to the size of a real answer.
    calls.from = compact(Identity::clone(who));
    calls.results.truncate(MAX_MEMBERS);
    for result in &mut calls.results {
        result.to.name = clip(&result.to.name);
        result.error = result.error.as_deref().map(clip);
        result.reply = result.reply.take().map(compact);
    }
    calls.forwarded_by = Some(compact(verifier.me().identity()));
    Ok(calls)
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
                reply: Some(compact(reply.identity)),
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
