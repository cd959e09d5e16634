//! Keeps member states fresh: every `PROBE_INTERVAL_MS` each member is asked for its
//! identity directly, which measures the round trip and refreshes its system figures.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::app::Node;
use crate::discovery::Candidate;
use crate::membership::{Member, State};

/// A member must have been alive this long before a new instance at its address is taken
/// at once as its restart.
const RESTART_AFTER: Duration = Duration::from_secs(10);
/// Dead and left members are probed every this many rounds.
const GONE_PROBE_EVERY: u64 = 5;

pub async fn run(node: Arc<Node>) {
    let mut ticker = tokio::time::interval(node.probe_interval());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        ticker.tick().await;
        round += 1;
        let snapshot = node.membership.snapshot();
        // Dead and left members too, now and then: one that answers again (and is not
        // leaving) comes back, but a table full of them must not cost a probe each every
        // round.
        let probes = snapshot
            .members
            .iter()
            .filter(|m| {
                !matches!(m.state, State::Dead | State::Left)
                    || round.is_multiple_of(GONE_PROBE_EVERY)
            })
            .map(|m| probe(&node, m));
        join_all(probes).await;
    }
}

/// Silence is measured by the clock, not by probe rounds: a member that stopped answering
/// turns dead `DEAD_AFTER_SECS` after its last answer, give or take one tick.
pub async fn run_clock(node: Arc<Node>) {
    let period =
        (node.probe_interval() / 10).clamp(Duration::from_millis(20), Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        node.membership.tick();
    }
}

async fn probe(node: &Node, member: &Member) {
    let id = &member.identity.instance_id;
    let answer = crate::verify::ask(node, member.identity.addr).await;
    let rtt = match &answer {
        Ok(reply) if reply.identity.instance_id == *id => {
            Some(std::time::Duration::from_secs_f64(reply.rtt_ms / 1000.0))
        }
        _ => None,
    };
    node.metrics.probe(rtt);
    match answer {
        // Displaced from its address, yet it answers there: two instances share it, which
        // admission records as a conflict.
        Ok(reply) if reply.identity.instance_id == *id && member.replaced_by.is_some() => {
            if let Some(method) = member.sources.iter().next().copied() {
                node.membership.admit(reply.identity, method, reply.rtt_ms);
            }
        }
        Ok(reply) if reply.identity.instance_id == *id => {
            node.membership.probe_ok(reply.identity, reply.rtt_ms);
        }
        // The other claimant of a shared address answered this time: no news about either.
        Ok(reply)
            if member.conflict_with.as_deref() == Some(reply.identity.instance_id.as_str()) => {}
        Ok(reply)
            if reply.identity.service == member.identity.service
                && reply.identity.addr == member.identity.addr =>
        {
            // The replica restarted in place: a new member, and the old one is gone. An
            // address whose instance changes again within moments is not restarting, it
            // is minting identities: the new one waits for discovery to find it again.
            node.membership.replaced(id, &reply.identity.instance_id);
            let method = member.sources.iter().next().copied();
            // Once per member: a dead one keeps being probed, and its address keeps
            // answering as whoever holds it now.
            let settled = member.replaced_by.is_none()
                && (matches!(member.state, State::Dead | State::Left)
                    || member.state_since.elapsed() >= RESTART_AFTER);
            if let Some(method) = method.filter(|_| settled) {
                let _ = node
                    .candidates
                    .try_send(Candidate::new(member.identity.addr, method));
            }
        }
        Ok(reply) => node.membership.probe_failed(
            id,
            format!(
                "address now answers as {} of '{}'",
                reply.identity.instance_id, reply.identity.service
            ),
        ),
        Err(e) => node.membership.probe_failed(id, e.to_string()),
    }
}

/// Probes must finish before the next round starts; a second is plenty on any network that
/// clusters sensibly.
pub fn probe_timeout(interval: Duration) -> Duration {
    interval.clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// A call through the public address (the load balancer), to set beside direct calls.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadBalancerCall {
    pub url: String,
    pub ok: bool,
    pub rtt_ms: Option<f64>,
    /// The replica that answered.
    pub answered_by: Option<String>,
    pub error: Option<String>,
}

/// Every few seconds, where `PUBLIC_URL` is set, asks the public address who answers and
/// how long it takes.
pub async fn run_load_balancer(node: Arc<Node>) {
    let Some(public) = node.settings.public_url.clone() else {
        return;
    };
    let url = public.join("/api/identity");
    loop {
        let answer = match node.client.get_url(&url).await {
            Ok((body, rtt)) => crate::client::parse_identity(&body).map(|id| (id, rtt)),
            Err(e) => Err(e),
        };
        let call = match answer {
            Ok((identity, rtt)) => LoadBalancerCall {
                url: url.clone(),
                ok: true,
                rtt_ms: Some(rtt),
                answered_by: Some(identity.instance_id),
                error: None,
            },
            Err(e) => LoadBalancerCall {
                url: url.clone(),
                ok: false,
                rtt_ms: None,
                answered_by: None,
                error: Some(e.to_string()),
            },
        };
        if let Ok(mut slot) = node.via_load_balancer.lock() {
            *slot = Some(call);
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
