//! `GET /peer`: proof that replicas talk directly. The replica that got the request calls
//! every alive member (or the one named) itself, past the load balancer.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use futures_util::future::join_all;
use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::app::Node;
use crate::identity::Identity;
use crate::membership::{Member, State as MemberState};
use crate::verify::clip;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerQuery {
    to: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PeerCalls {
    from: Identity,
    results: Vec<CallResult>,
}

#[derive(Debug, Serialize)]
pub struct Target {
    instance_id: String,
    name: String,
    addr: SocketAddr,
}

#[derive(Debug, Serialize)]
pub struct CallResult {
    to: Target,
    ok: bool,
    status: Option<u16>,
    rtt_ms: Option<f64>,
    reply: Option<Identity>,
    error: Option<String>,
}

pub async fn call_peers(
    State(node): State<Arc<Node>>,
    query: Result<Query<PeerQuery>, QueryRejection>,
) -> Result<Json<PeerCalls>, ApiError> {
    let Query(query) = query?;
    let snapshot = node.membership.snapshot();
    // `to` names a member, never an address: this endpoint must not reach anything else.
    let targets: Vec<&Member> = match &query.to {
        Some(id) => vec![
            snapshot
                .member(id)
                .filter(|m| m.state != MemberState::Left)
                .ok_or_else(|| {
                    ApiError::NotFound(format!("'{}' is not a current member", clip(id)))
                })?,
        ],
        None => snapshot
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .collect(),
    };
    let results = join_all(targets.into_iter().map(|m| call(&node, m))).await;
    Ok(Json(PeerCalls {
        from: node.me.identity(),
        results,
    }))
}

async fn call(node: &Node, member: &Member) -> CallResult {
    let to = Target {
        instance_id: member.identity.instance_id.clone(),
        name: member.identity.name.clone(),
        addr: member.identity.addr,
    };
    match node.client.identity(member.identity.addr).await {
        Ok(reply) => {
            let same = reply.identity.instance_id == member.identity.instance_id;
            CallResult {
                to,
                ok: same,
                status: Some(reply.status),
                rtt_ms: Some((reply.rtt_ms * 100.0).round() / 100.0),
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
