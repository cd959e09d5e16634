//! The cluster as this replica sees it, in the shape of `/api/status`; the page renders
//! the same structure.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::mesh_summary::{self, MeshSummary};
use crate::discovery::expected::{Expected, Listed, Match};
use crate::discovery::report::{Evidence, Report, Reports};
use crate::drain::Drain;
use crate::identity::Me;
use crate::membership::{Member, Membership, Snapshot, State};
use crate::prober::{LoadBalancerCall, ViaLoadBalancer};
use crate::relay::{Relay, RelayView};
use crate::timeline::Timeline;
use crate::verify::fails_proof;
use crate::wire::TimelineEvent;
use crate::wire::{Identity, MeshCell, SystemFigures};
use crate::wire::{Method, MethodStatus};

#[derive(Debug, Serialize)]
pub struct Status {
    /// One sentence: can replicas talk directly, and what found them.
    pub verdict: String,
    /// How the verdict reads at a glance (the page colours its box by it).
    #[serde(skip)]
    pub verdict_tone: Tone,
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
    /// EXPECTED_REPLICAS, else how many instances the platform's API says run.
    pub expected_replicas: Option<u32>,
    /// Where `expected_replicas` comes from: `setting` or `platform`.
    pub expected_from: Option<&'static str>,
    /// Instances the platform's API says run that no method has found (by name).
    pub not_found: Vec<NotFoundView>,
    /// For every alive member (this one included), its row of direct probes, as it last
    /// published it; in a large cluster (see [`mesh_summary::is_large`]) this replica's
    /// own row only, the others summarised in `mesh_summary`.
    pub mesh: BTreeMap<String, BTreeMap<String, MeshCell>>,
    /// In a large cluster only: one line per published row instead of the rows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mesh_summary: Option<MeshSummary>,
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
    /// Its address answers as a new instance: history, not a fault.
    #[serde(skip)]
    pub restarted: bool,
}

/// A running instance the platform lists and nobody here has found.
#[derive(Debug, Clone, Serialize)]
pub struct NotFoundView {
    pub name: String,
    /// Whose API lists it: "App Platform", "Kubernetes", "Fly".
    pub platform: &'static str,
    /// The platform's second name for it (App Platform's `main-service-0`, a Machine's name).
    pub alias: Option<String>,
    /// Where the platform says it listens; App Platform gives no address.
    pub addr: Option<std::net::IpAddr>,
    /// The platform's word on it.
    pub state: String,
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
        let mut views = BTreeMap::new();
        let view_hash = me.view_hash.take().unwrap_or_default();
        // This replica's own row whole: what it publishes to peers is capped.
        me.mesh = None;
        let own_row = snapshot.mesh_row(now);
        views.insert(me.instance_id.clone(), view_hash.clone());
        let alive = || snapshot.members.iter().filter(|m| m.state == State::Alive);
        for m in alive() {
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
            restarted: false,
        }];
        members.extend(snapshot.members.iter().map(|m| member_view(m, now)));
        let others: Vec<mesh_summary::Row> = alive()
            .filter_map(|m| Some((m.identity.instance_id.as_str(), m.identity.mesh.as_ref()?)))
            .collect();
        let states = member_states(&members);
        let (mesh, mesh_summary) =
            mesh_summary::mesh_fields(&states, (&me.instance_id, own_row), &others);
        let mut census = Census::of(&snapshot);
        let reports = sources.reports.all();
        // A listing that does not name this replica is of something else (another
        // component, names that are not hostnames here): it expects nothing of this view.
        let expected = reports
            .get(&Method::Platform)
            .and_then(Report::listing)
            .filter(|e| e.lists(&me.name));
        let not_found = expected
            .map(|e| not_found(e, &snapshot, &me.name))
            .unwrap_or_default();
        let discovery: Vec<MethodView> = reports
            .iter()
            .map(|(method, report)| method_view(*method, report, &snapshot, &me.name, now))
            .collect();
        census.claimed = discovery.iter().map(|d| d.claimed).max().unwrap_or(0);
        census.missing = not_found.len();
        let platform_count = expected
            .map(|e| u32::try_from(e.running().count()).unwrap_or(u32::MAX))
            .filter(|n| *n > 0);
        let (expected_replicas, expected_from) =
            match (sources.page.expected_replicas, platform_count) {
                (Some(n), _) => (Some(n), Some("setting")),
                (None, Some(n)) => (Some(n), Some("platform")),
                (None, None) => (None, None),
            };
        Status {
            verdict: verdict(&census, &discovery),
            verdict_tone: verdict_tone(&census),
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
            expected_replicas,
            expected_from,
            not_found,
            mesh,
            mesh_summary,
            view_hash,
            views,
            converged,
            timeline: sources.timeline.merged(sources.me.id()),
            via_load_balancer: sources.via_load_balancer.latest(),
        }
    }

    /// What [`Status::of`] makes of a status built with every row in `mesh` (tests
    /// build them so).
    #[cfg(test)]
    pub fn summarize_large_mesh(&mut self) {
        let id = self.me.instance_id.clone();
        let own = self.mesh.remove(&id).unwrap_or_default();
        let others = std::mem::take(&mut self.mesh);
        let rows: Vec<mesh_summary::Row> = others.iter().map(|(id, r)| (id.as_str(), r)).collect();
        let states = member_states(&self.members);
        (self.mesh, self.mesh_summary) = mesh_summary::mesh_fields(&states, (&id, own), &rows);
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
        restarted: m.replaced_by.is_some(),
    }
}

/// The cluster as the verdict counts it. Current members (alive and suspect) make the
/// diagnosis; dead, left and restarted ones are history, told as such, never the cause.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Census {
    /// Other members answering direct calls now.
    pub reachable: usize,
    /// Other members that missed their last probes.
    pub suspect: usize,
    /// Members that stopped answering (crashed, or cut off).
    pub crashed: usize,
    /// Members whose address answers as a new instance now: counted once, as the new one.
    pub restarted: usize,
    /// Members that said goodbye.
    pub left: usize,
    /// Addresses that answer as this service but fail the CLUSTER_SECRET proof.
    pub refused: usize,
    /// Replicas the registry lists that are not known to be gone.
    pub claimed: usize,
    /// Running instances the platform's API lists that no method has found.
    pub missing: usize,
}

impl Census {
    /// The members and refusals in `snapshot`; `claimed` comes from the registry's report.
    pub fn of(snapshot: &Snapshot) -> Census {
        let mut census = Census {
            refused: snapshot
                .foreign
                .iter()
                .filter(|(_, f)| fails_proof(&f.reason))
                .count(),
            ..Census::default()
        };
        for m in &snapshot.members {
            match (m.state, &m.replaced_by) {
                (State::Alive, _) => census.reachable += 1,
                (State::Suspect, _) => census.suspect += 1,
                (State::Dead | State::Left, Some(_)) => census.restarted += 1,
                (State::Dead, None) => census.crashed += 1,
                (State::Left, None) => census.left += 1,
            }
        }
        census
    }

    /// Other members that are part of the cluster now.
    pub fn current(&self) -> usize {
        self.reachable + self.suspect
    }

    fn history(&self) -> Option<String> {
        let parts: Vec<String> = [
            (self.crashed, "stopped answering"),
            (self.left, "left"),
            (self.restarted, "restarted as a new instance"),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        (!parts.is_empty()).then(|| format!("recently {}", join_and_owned(&parts)))
    }
}

/// How well a method worked, judged on what it could see: it `works` when it found every
/// current member that was there when its last round began (dead and departed replicas,
/// and replicas newer than its last look, never make it `partial`, nor `fails` when it
/// had found them and nobody is left), `partial` when another method found current
/// members it did not.
fn method_view(
    method: Method,
    report: &Report,
    snapshot: &Snapshot,
    me: &str,
    now: Instant,
) -> MethodView {
    let current = || {
        snapshot
            .members
            .iter()
            .filter(|m| matches!(m.state, State::Alive | State::Suspect))
    };
    let found = current().filter(|m| m.sources.contains(&method)).count();
    let round_began = report.last_run.map(|end| {
        end.checked_sub(report.duration.unwrap_or_default())
            .unwrap_or(end)
    });
    let missed = current()
        .filter(|m| !m.sources.contains(&method))
        .filter(|m| round_began.is_some_and(|began| m.joined <= began))
        .count();
    // It found replicas that are gone now, and has missed nobody it could have found
    // since (a restarted peer it has not looked for yet, or nobody left): it works.
    let found_before = snapshot.members.iter().any(|m| m.sources.contains(&method));
    let status = match (&report.off, report.failed, found) {
        (Some(_), _, _) => MethodStatus::Off,
        (None, true, _) => MethodStatus::Fails,
        (None, false, 0) if found_before && missed == 0 => MethodStatus::Works,
        (None, false, 0) => MethodStatus::Fails,
        // Announce only hears from replicas that found this one: it lists nobody.
        (None, false, _) if method.enumerates() && missed > 0 => MethodStatus::Partial,
        _ => MethodStatus::Works,
    };
    let detail = match &report.off {
        Some(why) => why.clone(),
        None => report.detail.clone(),
    };
    let mut view = MethodView {
        method,
        status,
        found,
        last_run_ms_ago: report.last_run.map(|t| ms_since(t, now)),
        duration_ms: report.duration.map(|d| d.as_millis() as u64),
        detail,
        evidence: report.evidence.clone(),
        claimed: report.claimed(snapshot),
    };
    if let Some(expected) = report.listing() {
        listing_view(&mut view, expected, report.failed, snapshot, me);
    }
    view
}

/// A platform's listing, matched by name against the table now: the method works when the
/// API answered and lists this replica, is partial when it answered without listing this
/// replica (another component, or names that are not replicas' names here), and fails
/// when the API failed (the last answer is still shown).
fn listing_view(
    view: &mut MethodView,
    expected: &Expected,
    failed: bool,
    snapshot: &Snapshot,
    me: &str,
) {
    let mut found = 0;
    let mut missing = Vec::new();
    let mut gone = 0;
    view.evidence = expected
        .instances
        .iter()
        .map(|listed| {
            let matched = Expected::find(listed, snapshot, me);
            match (listed.running, matched) {
                (true, Match::NotFound) => missing.push(listed.name.as_str()),
                (true, m) if m.is_current() => found += 1,
                (true, _) => gone += 1,
                (false, _) => {}
            }
            listed_evidence(listed, matched)
        })
        .collect();
    let running = expected.running().count();
    view.status = match (failed, expected.lists(me)) {
        (true, _) => MethodStatus::Fails,
        (false, true) => MethodStatus::Works,
        (false, false) => MethodStatus::Partial,
    };
    // A failing API's last answer is history: said in the past tense, with its age.
    let (runs, when) = if failed {
        (
            "ran",
            format!(
                "When last asked, {} s ago, ",
                expected.listed_at.elapsed().as_secs()
            ),
        )
    } else {
        ("runs", String::new())
    };
    let mut summary = format!(
        "{when}{} {runs} {running} instance{} of {}: found {found}",
        expected.platform,
        if running == 1 { "" } else { "s" },
        expected.scope
    );
    if !missing.is_empty() {
        summary.push_str(&format!("; not found: {}", names_and_more(&missing, 8)));
    }
    if gone > 0 {
        summary.push_str(&format!(
            "; {gone} stopped answering here and {} still listed",
            if gone == 1 { "is" } else { "are" }
        ));
    }
    if !expected.lists(me) {
        summary.push_str(&format!("; this replica ({me}) is not among them"));
    }
    view.detail = if view.detail.is_empty() {
        format!("{summary}.")
    } else {
        format!("{summary}. {}", view.detail)
    };
}

fn listed_evidence(listed: &Listed, matched: Match<'_>) -> Evidence {
    let subject = match &listed.alias {
        Some(alias) => format!("{} ({alias})", listed.name),
        None => listed.name.clone(),
    };
    let at = listed.addr.map_or(String::new(), |ip| format!(" at {ip}"));
    let (status, detail) = match (matched, listed.running) {
        (Match::ThisReplica, _) => (
            MethodStatus::Works,
            format!("{}{at}: this replica", listed.state),
        ),
        (Match::Member(m), true) if matched.is_current() => (
            MethodStatus::Works,
            format!(
                "{}{at}: found, {} at {}",
                listed.state,
                m.state.as_str(),
                m.identity.addr
            ),
        ),
        (Match::Member(m), true) => (
            MethodStatus::Partial,
            format!(
                "{}{at}: still listed, {} here",
                listed.state,
                m.state.as_str()
            ),
        ),
        (Match::NotFound, true) => (
            MethodStatus::Partial,
            format!("{}{at}: not found yet", listed.state),
        ),
        (_, false) => (
            MethodStatus::Off,
            format!("{}{at}: not running, not expected", listed.state),
        ),
    };
    Evidence {
        subject,
        status,
        detail,
    }
}

/// The running instances the platform lists that no member by that name was found for,
/// this replica aside (see [`Expected::missing`]).
fn not_found(expected: &Expected, snapshot: &Snapshot, me: &str) -> Vec<NotFoundView> {
    expected
        .missing(snapshot, me)
        .map(|listed| NotFoundView {
            name: listed.name.clone(),
            platform: expected.platform,
            alias: listed.alias.clone(),
            addr: listed.addr,
            state: listed.state.clone(),
        })
        .collect()
}

/// "a, b, c and 4 more".
fn names_and_more(names: &[&str], shown: usize) -> String {
    match names.len().checked_sub(shown) {
        Some(more) if more > 0 => format!("{} and {more} more", names[..shown].join(", ")),
        _ => names.join(", "),
    }
}

/// The answer to the page's question, from the census and the report. The cases are
/// tabled in docs/how-it-works.md#the-verdict.
pub fn verdict(census: &Census, discovery: &[MethodView]) -> String {
    let current = census.current();
    // Registry rows of replicas that are neither current nor known gone: they exist, and
    // this replica cannot reach them.
    let known = current.max(census.claimed);
    let reachable = census.reachable;
    let mut parts = vec![match (known, reachable) {
        (0, _) if census.refused > 0 => format!(
            "No replica admitted: {} the CLUSTER_SECRET proof",
            refused(census.refused)
        ),
        (0, _) if census.history().is_some() => "No other replica now".to_string(),
        (0, _) => "No other replica found yet".to_string(),
        (n, 0) if census.claimed > current => format!(
            "Replicas know of each other ({n} other(s)) but cannot call each other directly"
        ),
        (n, 0) => format!("No other replica answers right now ({n} not answering)"),
        (n, r) if r == n => format!("Replicas can call each other directly ({r} reachable)"),
        (n, r) => format!("Replicas can call each other directly ({r} of {n} reachable)"),
    }];
    let working: Vec<&str> = discovery
        .iter()
        .filter(|d| d.status == MethodStatus::Works)
        // Names alone (App Platform) tell who runs, not where: that finds nobody.
        .filter(|d| d.method != Method::Platform || d.found > 0)
        .map(|d| d.method.as_str())
        .collect();
    if !working.is_empty() && reachable > 0 {
        parts.push(format!("found by {}", join_and(&working)));
    }
    if let Some(dns) = discovery
        .iter()
        .find(|d| d.method == Method::Dns && d.status != MethodStatus::Off)
        .filter(|_| known > 0)
    {
        parts.push(if dns.found > 0 {
            "a DNS name lists them".into()
        } else {
            "no DNS name lists them".into()
        });
    }
    if known > 0 && census.refused > 0 {
        parts.push(format!(
            "{} the CLUSTER_SECRET proof",
            refused(census.refused)
        ));
    }
    if census.missing > 0 {
        parts.push(match census.missing {
            1 => "1 instance the platform runs has not been found".to_string(),
            n => format!("{n} instances the platform runs have not been found"),
        });
    }
    if let Some(history) = census.history() {
        parts.push(history);
    }
    format!("{}.", parts.join("; "))
}

/// What a colour on the page means: the same four everywhere (the verdict, member states,
/// the timeline), and nothing else is drawn in them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
    /// Nothing wrong and nothing to praise: alone, or gone gracefully.
    #[default]
    Neutral,
}

impl Tone {
    /// The CSS class's suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Neutral => "neutral",
        }
    }
}

/// The verdict's tone, on the same cases as [`verdict`]: the current cluster only, so
/// replicas that left or crashed never turn it.
pub fn verdict_tone(census: &Census) -> Tone {
    let known = census.current().max(census.claimed);
    match (known, census.reachable) {
        (0, _) if census.refused > 0 => Tone::Bad,
        (0, _) if census.missing > 0 => Tone::Warn,
        (0, _) => Tone::Neutral,
        (_, 0) => Tone::Bad,
        (n, r) if r == n && census.refused == 0 && census.missing == 0 => Tone::Good,
        _ => Tone::Warn,
    }
}

/// "2 answer as this service but fail", in agreement with the count.
fn refused(n: usize) -> String {
    let s = if n == 1 { "s" } else { "" };
    format!("{n} answer{s} as this service but fail{s}")
}

fn join_and_owned(items: &[String]) -> String {
    let items: Vec<&str> = items.iter().map(String::as_str).collect();
    join_and(&items)
}

fn join_and(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Each member's id and state, as the mesh summary reads them.
fn member_states(members: &[MemberView]) -> Vec<(&str, State)> {
    members
        .iter()
        .map(|m| (m.instance_id.as_str(), m.state))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn census(reachable: usize, claimed: usize) -> Census {
        Census {
            reachable,
            claimed,
            ..Census::default()
        }
    }

    /// The table in docs/how-it-works.md#the-verdict, row by row.
    #[test]
    fn verdicts() {
        let report = [
            method(Method::Scan, MethodStatus::Works, 2),
            method(Method::Registry, MethodStatus::Works, 2),
            method(Method::Dns, MethodStatus::Fails, 0),
            method(Method::Seed, MethodStatus::Off, 0),
        ];
        let cases = [
            (
                "steady",
                census(2, 2),
                "Replicas can call each other directly (2 reachable); found by scan and registry; no DNS name lists them.",
            ),
            (
                "one crashed, still listed",
                Census {
                    crashed: 1,
                    ..census(1, 1)
                },
                "Replicas can call each other directly (1 reachable); found by scan and registry; no DNS name lists them; recently 1 stopped answering.",
            ),
            (
                "one left",
                Census {
                    left: 1,
                    ..census(1, 1)
                },
                "Replicas can call each other directly (1 reachable); found by scan and registry; no DNS name lists them; recently 1 left.",
            ),
            (
                "scaled down to one",
                Census {
                    left: 2,
                    ..census(0, 0)
                },
                "No other replica now; recently 2 left.",
            ),
            (
                "restarted",
                Census {
                    restarted: 1,
                    ..census(2, 2)
                },
                "Replicas can call each other directly (2 reachable); found by scan and registry; no DNS name lists them; recently 1 restarted as a new instance.",
            ),
            (
                "secrets differ",
                Census {
                    refused: 2,
                    ..census(0, 0)
                },
                "No replica admitted: 2 answer as this service but fail the CLUSTER_SECRET proof.",
            ),
            (
                "one admitted, one with another secret",
                Census {
                    refused: 1,
                    ..census(1, 1)
                },
                "Replicas can call each other directly (1 reachable); found by scan and registry; no DNS name lists them; 1 answers as this service but fails the CLUSTER_SECRET proof.",
            ),
            ("no peers", census(0, 0), "No other replica found yet."),
            (
                "registry lists replicas that do not answer directly",
                census(0, 2),
                "Replicas know of each other (2 other(s)) but cannot call each other directly; no DNS name lists them.",
            ),
        ];
        for (case, census, want) in cases {
            assert_eq!(verdict(&census, &report), want, "{case}");
        }
    }

    #[test]
    fn verdict_tones() {
        let cases = [
            ("steady", census(2, 2), Tone::Good),
            (
                "one crashed: history",
                Census {
                    crashed: 1,
                    ..census(1, 1)
                },
                Tone::Good,
            ),
            (
                "scaled down to one: gone gracefully",
                Census {
                    left: 2,
                    ..census(0, 0)
                },
                Tone::Neutral,
            ),
            ("no peers yet", census(0, 0), Tone::Neutral),
            (
                "one of two answers",
                Census {
                    suspect: 1,
                    ..census(1, 0)
                },
                Tone::Warn,
            ),
            (
                "one admitted, one with another secret",
                Census {
                    refused: 1,
                    ..census(1, 1)
                },
                Tone::Warn,
            ),
            (
                "secrets differ",
                Census {
                    refused: 2,
                    ..census(0, 0)
                },
                Tone::Bad,
            ),
            ("listed but unreachable", census(0, 2), Tone::Bad),
        ];
        for (case, census, want) in cases {
            assert_eq!(verdict_tone(&census), want, "{case}");
        }
    }

    #[test]
    fn instances_the_platform_runs_and_nobody_found_are_told_and_warned_of() {
        // App Platform's API found nobody (names only): it is not named as a finder.
        let report = [method(Method::Platform, MethodStatus::Works, 0)];
        let one = Census {
            missing: 1,
            ..census(1, 0)
        };
        assert_eq!(
            verdict(&one, &report),
            "Replicas can call each other directly (1 reachable); 1 instance the platform runs has not been found."
        );
        assert_eq!(verdict_tone(&one), Tone::Warn);
        let alone = Census {
            missing: 2,
            ..census(0, 0)
        };
        assert_eq!(
            verdict(&alone, &[]),
            "No other replica found yet; 2 instances the platform runs have not been found."
        );
        assert_eq!(verdict_tone(&alone), Tone::Warn);
    }

    #[test]
    fn a_platform_listing_is_matched_by_name_when_viewed() {
        use crate::discovery::expected::{Expected, Listed};
        use crate::membership::{Membership, Timing};
        let identity = |id: &str, name: &str, addr: &str| -> Identity {
            serde_json::from_value(serde_json::json!({
                "instance_id": id, "name": name, "service": "main-service", "addr": addr,
            }))
            .unwrap()
        };
        let table = Membership::new(Timing {
            dead_after: std::time::Duration::from_secs(3),
            forget_after: std::time::Duration::from_secs(600),
        });
        table.admit(identity("B", "ms-rq7kk", "127.0.0.3:80"), Method::Scan, 0.3);
        let listed = |name: &str, running: bool| Listed {
            name: name.into(),
            alias: None,
            addr: None,
            state: if running { "running" } else { "stopped" }.into(),
            running,
        };
        let expected = Expected {
            platform: "App Platform",
            scope: "component main-service".into(),
            instances: vec![
                listed("ms-gtxdh", true),
                listed("ms-rq7kk", true),
                listed("ms-vprdj", true),
                listed("ms-old", false),
            ],
            truncated: false,
            listed_at: Instant::now(),
        };
        let report = Report {
            detail: "GET …".into(),
            expected: Some(expected.clone()),
            ..Report::default()
        };
        let view = |table: &Membership, me: &str| {
            method_view(
                Method::Platform,
                &report,
                &table.snapshot(),
                me,
                Instant::now(),
            )
        };
        let seen = view(&table, "ms-gtxdh");
        assert_eq!(seen.status, MethodStatus::Works);
        // Found by this method: none (names only); by name among members: 2.
        assert_eq!(seen.found, 0);
        assert!(
            seen.detail.starts_with(
                "App Platform runs 3 instances of component main-service: found 2; not found: ms-vprdj. GET"
            ),
            "{}",
            seen.detail
        );
        let lines: Vec<(MethodStatus, &str)> = seen
            .evidence
            .iter()
            .map(|e| (e.status, e.detail.as_str()))
            .collect();
        assert_eq!(lines[0], (MethodStatus::Works, "running: this replica"));
        assert_eq!(
            lines[1],
            (MethodStatus::Works, "running: found, alive at 127.0.0.3:80")
        );
        assert_eq!(lines[2], (MethodStatus::Partial, "running: not found yet"));
        assert_eq!(
            lines[3],
            (MethodStatus::Off, "stopped: not running, not expected")
        );
        let missing = not_found(&expected, &table.snapshot(), "ms-gtxdh");
        assert_eq!(missing.len(), 1);
        assert_eq!(missing[0].name, "ms-vprdj");
        // B dies while still listed: it has its own card and counts as history, so it
        // is not missing as well, and the report says it is still listed.
        table.replaced("B", "gone");
        let missing = not_found(&expected, &table.snapshot(), "ms-gtxdh");
        assert_eq!(missing.len(), 1, "{missing:?}");
        let dead = view(&table, "ms-gtxdh");
        assert!(
            dead.detail.contains(
                "found 1; not found: ms-vprdj; 1 stopped answering here and is still listed."
            ),
            "{}",
            dead.detail
        );
        assert!(dead.evidence[1].detail.ends_with("still listed, dead here"));
        // So with one that said goodbye (the listing lags a scale-down).
        table.admit(
            identity("B2", "ms-rq7kk", "127.0.0.3:80"),
            Method::Scan,
            0.3,
        );
        assert!(table.left("B2"));
        let missing = not_found(&expected, &table.snapshot(), "ms-gtxdh");
        assert_eq!(missing.len(), 1, "{missing:?}");
        // A listing without this replica is of something else.
        let elsewhere = view(&table, "ms-other");
        assert_eq!(elsewhere.status, MethodStatus::Partial);
        assert!(
            elsewhere
                .detail
                .contains("this replica (ms-other) is not among them")
        );
        // A failed API keeps the last listing, and fails.
        let failed = Report {
            failed: true,
            ..report.clone()
        };
        let view = method_view(
            Method::Platform,
            &failed,
            &table.snapshot(),
            "ms-gtxdh",
            Instant::now(),
        );
        assert_eq!(view.status, MethodStatus::Fails);
        assert!(
            view.detail
                .starts_with("When last asked, 0 s ago, App Platform ran 3 instances"),
            "{}",
            view.detail
        );
    }

    #[test]
    fn suspects_are_current_and_not_reachable() {
        let census = Census {
            suspect: 1,
            ..census(1, 0)
        };
        assert_eq!(
            verdict(&census, &[]),
            "Replicas can call each other directly (1 of 2 reachable)."
        );
    }

    #[test]
    fn a_method_is_judged_on_the_current_members_only() {
        use crate::membership::{Membership, Timing};
        use crate::wire::Identity;
        let identity = |id: &str, addr: &str| -> Identity {
            serde_json::from_value(serde_json::json!({
                "instance_id": id, "name": id, "service": "svc", "addr": addr,
            }))
            .unwrap()
        };
        let table = Membership::new(Timing {
            dead_after: std::time::Duration::from_secs(3),
            forget_after: std::time::Duration::from_secs(600),
        });
        table.admit(identity("A", "127.0.0.2:80"), Method::Scan, 0.3);
        // B joins before scan's round began: scan could have found it.
        table.admit(identity("B", "127.0.0.3:80"), Method::Registry, 0.3);
        let round = Report {
            last_run: Some(Instant::now()),
            duration: Some(std::time::Duration::ZERO),
            ..Report::default()
        };
        let scan = |table: &Membership| {
            method_view(
                Method::Scan,
                &round,
                &table.snapshot(),
                "me",
                Instant::now(),
            )
            .status
        };
        // B is current and scan missed it.
        assert_eq!(scan(&table), MethodStatus::Partial);
        // B restarted elsewhere: history, not a miss.
        table.replaced("B", "C");
        assert_eq!(scan(&table), MethodStatus::Works);
        // D is newer than scan's last look: not a miss either, until scan looks again.
        table.admit(identity("D", "127.0.0.4:80"), Method::Registry, 0.3);
        assert_eq!(scan(&table), MethodStatus::Works);
        // Scaled down to one: everyone scan found left, and nobody is left to find.
        for id in ["A", "D"] {
            assert!(table.left(id));
        }
        assert_eq!(scan(&table), MethodStatus::Works);
        // Two replicas: scan's only find restarted, and the new instance came by registry
        // after scan's last round. Scan missed nobody it could have found.
        let pair = Membership::new(Timing {
            dead_after: std::time::Duration::from_secs(3),
            forget_after: std::time::Duration::from_secs(600),
        });
        pair.admit(identity("B", "127.0.0.3:80"), Method::Scan, 0.3);
        let round = Report {
            last_run: Some(Instant::now()),
            duration: Some(std::time::Duration::ZERO),
            ..Report::default()
        };
        pair.admit(identity("B2", "127.0.0.3:80"), Method::Registry, 0.3);
        let status =
            method_view(Method::Scan, &round, &pair.snapshot(), "me", Instant::now()).status;
        assert_eq!(status, MethodStatus::Works);
        // A scan that never found anyone cannot say it works.
        let empty = Membership::new(Timing {
            dead_after: std::time::Duration::from_secs(3),
            forget_after: std::time::Duration::from_secs(600),
        });
        assert_eq!(scan(&empty), MethodStatus::Fails);
    }
}
