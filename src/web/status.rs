//! The cluster as this replica sees it, in the shape of `/api/status`; the page renders
//! the same structure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::discovery::report::{Evidence, Report, Reports};
use crate::drain::Drain;
use crate::identity::Me;
use crate::membership::{Member, Membership, State};
use crate::prober::{LoadBalancerCall, ViaLoadBalancer};
use crate::relay::{Relay, RelayView};
use crate::timeline::Timeline;
use crate::wire::TimelineEvent;
use crate::wire::{Identity, MeshCell, SystemFigures};
use crate::wire::{Method, MethodStatus};

#[derive(Debug, Serialize)]
pub struct Status {
    /// One sentence: can replicas talk directly, and what found them.
    pub verdict: String,
    /// What admits a member: a proof of CLUSTER_SECRET, or the service name alone.
    pub membership: &'static str,
    /// True from SIGTERM until the process exits: unready, serving out the last requests.
    pub draining: bool,
    /// How messages travel: directly, or relayed through a hub behind the load balancer.
    pub relay: RelayView,
    #[serde(rename = "self")]
    pub me: Identity,
    pub members: Vec<MemberView>,
    pub foreign: Vec<ForeignView>,
    pub aliases: Vec<AliasView>,
    pub discovery: Vec<MethodView>,
    pub expected_replicas: Option<u32>,
    /// For every alive member (this one included), its row of direct probes, as it last
    /// published it.
    pub mesh: BTreeMap<String, BTreeMap<String, MeshCell>>,
    /// A short hash of the member set this replica sees.
    pub view_hash: String,
    /// Each alive member's view hash: equal everywhere when views agree.
    pub views: BTreeMap<String, String>,
    pub converged: bool,
    /// The last 100 events of every alive replica (joins, deaths, restarts, foreign finds,
    /// errors), merged, each with the replica that saw it (`by`).
    pub timeline: Vec<TimelineEvent>,
    /// The last call through the public address (where PUBLIC_URL is set).
    pub via_load_balancer: Option<LoadBalancerCall>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberView {
    pub instance_id: String,
    pub name: String,
    pub addr: SocketAddr,
    #[serde(rename = "self")]
    pub is_self: bool,
    pub state: State,
    pub sources: Vec<Method>,
    pub rtt_ms: Option<f64>,
    pub last_seen_ms_ago: u64,
    pub system: SystemFigures,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ForeignView {
    pub addr: SocketAddr,
    pub reason: String,
    pub last_seen_ms_ago: u64,
}

#[derive(Debug, Serialize)]
pub struct AliasView {
    pub addr: SocketAddr,
    pub answered_as: Vec<String>,
    pub note: &'static str,
}

#[derive(Debug, Serialize)]
pub struct MethodView {
    pub method: Method,
    pub status: MethodStatus,
    pub found: usize,
    pub last_run_ms_ago: Option<u64>,
    pub duration_ms: Option<u64>,
    pub detail: String,
    /// What the method saw, one line each (registry rows, DNS names, seeds).
    pub evidence: Vec<Evidence>,
    /// Other replicas the method says exist, whether or not they answer directly.
    pub claimed: usize,
}

fn ms_since(then: Instant, now: Instant) -> u64 {
    now.saturating_duration_since(then).as_millis() as u64
}

/// The few settings views show.
#[derive(Clone, Copy)]
pub struct PageSettings {
    pub expected_replicas: Option<u32>,
    /// What admits a member, in words (see `status::membership_mode`).
    pub membership_mode: &'static str,
}

/// What the status view reads.
#[derive(Clone)]
pub struct StatusSources {
    pub me: Arc<Me>,
    pub membership: Membership,
    pub reports: Reports,
    pub relay: Relay,
    pub timeline: Timeline,
    pub via_load_balancer: ViaLoadBalancer,
    pub drain: Drain,
    pub page: PageSettings,
}

impl Status {
    pub fn of(sources: &StatusSources) -> Status {
        let now = Instant::now();
        let snapshot = sources.membership.snapshot();
        let draining = sources.drain.is_draining();
        let mut me = snapshot.published(sources.me.identity(), draining);
        let mut mesh = BTreeMap::new();
        let mut views = BTreeMap::new();
        let view_hash = me.view_hash.take().unwrap_or_default();
        mesh.insert(me.instance_id.clone(), me.mesh.take().unwrap_or_default());
        views.insert(me.instance_id.clone(), view_hash.clone());
        for m in snapshot.members.iter().filter(|m| m.state == State::Alive) {
            if let Some(row) = &m.identity.mesh {
                mesh.insert(m.identity.instance_id.clone(), row.clone());
            }
            if let Some(hash) = &m.identity.view_hash {
                views.insert(m.identity.instance_id.clone(), hash.clone());
            }
        }
        let converged = views.values().all(|h| *h == view_hash);
        let mut members = vec![MemberView {
            instance_id: me.instance_id.clone(),
            name: me.name.clone(),
            addr: me.addr,
            is_self: true,
            state: State::Alive,
            sources: Vec::new(),
            rtt_ms: None,
            last_seen_ms_ago: 0,
            system: me.system.clone(),
            error: None,
        }];
        members.extend(snapshot.members.iter().map(|m| member_view(m, now)));
        let discovery: Vec<MethodView> = sources
            .reports
            .all()
            .into_iter()
            .map(|(method, report)| {
                method_view(
                    method,
                    &report,
                    &snapshot.members,
                    sources.page.expected_replicas,
                    now,
                )
            })
            .collect();
        Status {
            verdict: verdict(&members, &discovery),
            relay: sources.relay.view(),
            membership: sources.page.membership_mode,
            draining,
            me,
            members,
            foreign: snapshot
                .foreign
                .iter()
                .map(|(addr, f)| ForeignView {
                    addr: *addr,
                    reason: f.reason.clone(),
                    last_seen_ms_ago: ms_since(f.seen, now),
                })
                .collect(),
            aliases: snapshot
                .aliases
                .iter()
                .map(|(addr, a)| AliasView {
                    addr: *addr,
                    answered_as: a.answered_as.clone(),
                    note: "load-balanced address",
                })
                .collect(),
            discovery,
            expected_replicas: sources.page.expected_replicas,
            mesh,
            view_hash,
            views,
            converged,
            timeline: sources.timeline.merged(sources.me.id()),
            via_load_balancer: sources.via_load_balancer.latest(),
        }
    }

    /// Members alive now, this replica included.
    pub fn alive(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.state == State::Alive)
            .count()
    }
}

pub fn membership_mode(settings: &crate::config::Settings) -> &'static str {
    match &settings.cluster_secret {
        Some(secret) if secret.is_placeholder() => {
            "unproven: CLUSTER_SECRET is still the deploy spec's placeholder, which anyone can \
             read, so anything that answers as this service is admitted (set a random secret \
             of 16 or more characters)"
        }
        Some(_) => "proven: members answer a fresh CLUSTER_SECRET challenge",
        None => {
            "by service name only: anything that answers as this service is admitted \
             (set CLUSTER_SECRET to require proof)"
        }
    }
}

fn member_view(m: &Member, now: Instant) -> MemberView {
    MemberView {
        instance_id: m.identity.instance_id.clone(),
        name: m.identity.name.clone(),
        addr: m.identity.addr,
        is_self: false,
        state: m.state,
        sources: m.sources.iter().copied().collect(),
        rtt_ms: m.rtt_ms,
        last_seen_ms_ago: ms_since(m.last_ok, now),
        system: m.identity.system.clone(),
        error: m.last_error.clone(),
    }
}

/// How well a method worked: by the live members it found, against the expected count.
fn method_view(
    method: Method,
    report: &Report,
    members: &[Member],
    expected: Option<u32>,
    now: Instant,
) -> MethodView {
    let found = members
        .iter()
        .filter(|m| matches!(m.state, State::Alive | State::Suspect) && m.sources.contains(&method))
        .count();
    let others_expected = expected
        .filter(|_| method.enumerates())
        .map(|e| e.saturating_sub(1) as usize);
    let status = match (&report.off, report.failed, found) {
        (Some(_), _, _) => MethodStatus::Off,
        (None, true, _) => MethodStatus::Fails,
        (None, false, 0) => MethodStatus::Fails,
        (None, false, n) if others_expected.is_some_and(|want| n < want) => MethodStatus::Partial,
        _ => MethodStatus::Works,
    };
    let detail = match &report.off {
        Some(why) => why.clone(),
        None => report.detail.clone(),
    };
    MethodView {
        method,
        status,
        found,
        last_run_ms_ago: report.last_run.map(|t| ms_since(t, now)),
        duration_ms: report.duration.map(|d| d.as_millis() as u64),
        detail,
        evidence: report.evidence.clone(),
        claimed: report.claimed,
    }
}

/// The answer to the page's question, from the member table and the report.
pub fn verdict(members: &[MemberView], discovery: &[MethodView]) -> String {
    let others: Vec<&MemberView> = members.iter().filter(|m| !m.is_self).collect();
    let reachable = others.iter().filter(|m| m.state == State::Alive).count();
    let claimed = discovery.iter().map(|d| d.claimed).max().unwrap_or(0);
    let mut parts = vec![match (others.len().max(claimed), reachable) {
        (0, _) => "No other replica found yet".to_string(),
        (n, 0) => format!(
            "Replicas know of each other ({n} other(s)) but cannot call each other directly"
        ),
        (n, r) if r == n => format!("Replicas can call each other directly ({r} reachable)"),
        (n, r) => format!("Replicas can call each other directly ({r} of {n} reachable)"),
    }];
    let working: Vec<&str> = discovery
        .iter()
        .filter(|d| d.status == MethodStatus::Works)
        .map(|d| d.method.as_str())
        .collect();
    if !working.is_empty() {
        parts.push(format!("found by {}", join_and(&working)));
    }
    if let Some(dns) = discovery
        .iter()
        .find(|d| d.method == Method::Dns && d.status != MethodStatus::Off)
    {
        parts.push(if dns.found > 0 {
            "a DNS name lists them".into()
        } else {
            "no DNS name lists them".into()
        });
    }
    format!("{}.", parts.join("; "))
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(is_self: bool, state: State) -> MemberView {
        MemberView {
            instance_id: "x".into(),
            name: "x".into(),
            addr: "127.0.0.2:80".parse().unwrap(),
            is_self,
            state,
            sources: vec![],
            rtt_ms: None,
            last_seen_ms_ago: 0,
            system: Default::default(),
            error: None,
        }
    }

    fn method(method: Method, status: MethodStatus, found: usize) -> MethodView {
        MethodView {
            method,
            status,
            found,
            last_run_ms_ago: None,
            duration_ms: None,
            detail: String::new(),
            evidence: vec![],
            claimed: 0,
        }
    }

    #[test]
    fn verdicts() {
        let me = member(true, State::Alive);
        let report = [
            method(Method::Scan, MethodStatus::Works, 2),
            method(Method::Registry, MethodStatus::Works, 2),
            method(Method::Dns, MethodStatus::Fails, 0),
            method(Method::Seed, MethodStatus::Off, 0),
        ];
        let three = [
            me.clone(),
            member(false, State::Alive),
            member(false, State::Alive),
        ];
        assert_eq!(
            verdict(&three, &report),
            "Replicas can call each other directly (2 reachable); found by scan and registry; no DNS name lists them."
        );
        let isolated = [
            me.clone(),
            member(false, State::Dead),
            member(false, State::Suspect),
        ];
        assert!(verdict(&isolated, &report[1..2]).starts_with(
            "Replicas know of each other (2 other(s)) but cannot call each other directly"
        ));
        // Known only from registry rows, never reached: still not alone.
        let mut registry = method(Method::Registry, MethodStatus::Fails, 0);
        registry.claimed = 2;
        assert!(
            verdict(std::slice::from_ref(&me), &[registry])
                .starts_with("Replicas know of each other (2 other(s))")
        );
        assert_eq!(verdict(&[me], &[]), "No other replica found yet.");
    }
}
