//! Keeps member states fresh: every `PROBE_INTERVAL_MS` each member is asked for its
//! identity directly, which measures the round trip and refreshes its system figures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;

use crate::client::PeerClient;
use crate::config::PublicUrl;
use crate::discovery::candidate::{Candidate, CandidateQueue};
use crate::membership::{Member, Membership, State};
use crate::metrics::Metrics;
use crate::verify::Verifier;

/// A member must have been alive this long before a new instance at its address is taken
/// at once as its restart.
const RESTART_AFTER: Duration = Duration::from_secs(10);
/// Dead and left members are probed every this many rounds.
const GONE_PROBE_EVERY: u64 = 5;

/// What probing needs: who to ask, where to record, where a restarted member's address
/// goes to be verified again.
#[derive(Clone)]
pub struct Prober {
    pub verifier: Verifier,
    pub membership: Membership,
    pub candidates: CandidateQueue,
    pub metrics: Metrics,
    pub interval: Duration,
}

pub async fn run(prober: Prober) {
    let mut ticker = tokio::time::interval(prober.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut round: u64 = 0;
    loop {
        ticker.tick().await;
        round += 1;
        let snapshot = prober.membership.snapshot();
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
            .map(|m| prober.probe(m));
        join_all(probes).await;
    }
}

/// Silence is measured by the clock, not by probe rounds: a member that stopped answering
/// turns dead `DEAD_AFTER_SECS` after its last answer, give or take one tick.
pub async fn run_clock(membership: Membership, probe_interval: Duration) {
    let period = (probe_interval / 10).clamp(Duration::from_millis(20), Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        membership.tick();
    }
}

impl Prober {
    async fn probe(&self, member: &Member) {
        let id = &member.identity.instance_id;
        let answer = self.verifier.ask(member.identity.addr).await;
        let rtt = match &answer {
            Ok(reply) if reply.identity.instance_id == *id => {
                Some(std::time::Duration::from_secs_f64(reply.rtt_ms / 1000.0))
            }
            _ => None,
        };
        self.metrics.probe(rtt);
        match answer {
            // Displaced from its address, yet it answers there: two instances share it, which
            // admission records as a conflict.
            Ok(reply) if reply.identity.instance_id == *id && member.replaced_by.is_some() => {
                if let Some(method) = member.sources.iter().next().copied() {
                    self.membership.admit(reply.identity, method, reply.rtt_ms);
                }
            }
            Ok(reply) if reply.identity.instance_id == *id => {
                self.membership.probe_ok(reply.identity, reply.rtt_ms);
            }
            // The other claimant of a shared address answered this time: no news about either.
            Ok(reply)
                if member.conflict_with.as_deref() == Some(reply.identity.instance_id.as_str()) => {
            }
            Ok(reply)
                if reply.identity.service == member.identity.service
                    && reply.identity.addr == member.identity.addr =>
            {
                // The replica restarted in place: a new member, and the old one is gone. An
                // address whose instance changes again within moments is not restarting, it
                // is minting identities: the new one waits for discovery to find it again.
                self.membership.replaced(id, &reply.identity.instance_id);
                let method = member.sources.iter().next().copied();
                // Once per member: a dead one keeps being probed, and its address keeps
                // answering as whoever holds it now.
                let settled = member.replaced_by.is_none()
                    && (matches!(member.state, State::Dead | State::Left)
                        || member.state_since.elapsed() >= RESTART_AFTER);
                if let Some(method) = method.filter(|_| settled) {
                    let _ = self
                        .candidates
                        .try_send(Candidate::new(member.identity.addr, method));
                }
            }
            Ok(reply) => self.membership.probe_failed(
                id,
                format!(
                    "address now answers as {} of '{}'",
                    reply.identity.instance_id, reply.identity.service
                ),
            ),
            Err(e) => self.membership.probe_failed(id, e.to_string()),
        }
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

/// The last call through the public address, to compare with direct calls.
#[derive(Clone, Default)]
pub struct ViaLoadBalancer(Arc<Mutex<Option<LoadBalancerCall>>>);

impl ViaLoadBalancer {
    pub fn latest(&self) -> Option<LoadBalancerCall> {
        self.0.lock().ok().and_then(|c| c.clone())
    }

    fn set(&self, call: LoadBalancerCall) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(call);
        }
    }
}

/// Every few seconds, where `PUBLIC_URL` is set, asks the public address who answers and
/// how long it takes.
pub async fn run_load_balancer(
    client: PeerClient,
    public: Option<PublicUrl>,
    latest: ViaLoadBalancer,
) {
    let Some(public) = public else {
        return;
    };
    let url = public.join("/api/identity");
    loop {
        let answer = match client.get_url(&url).await {
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
        latest.set(call);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
