//! `GET /`: the page for browsers, the status JSON for everything else (so plain `curl`
//! gets JSON). `GET /page/regions`: the page's live regions, rendered by the same template
//! blocks, which static/app.js swaps in every 2 s.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::SystemTime;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::labels::short_labels;
use super::large_view;
use super::mesh_summary;
use super::negotiate::{accepts, wants_html};
use super::status::{MemberView, MethodView, NotFoundView, Status, StatusSources};
pub use super::text::{ago, hue, mib};
use super::text::{esc, rtt_class};
use super::timeline_lines::{Line, lines};
use crate::broadcast::{Broadcaster, Message};
use crate::client::PeerClient;
use crate::discovery::report::Evidence;
use crate::membership::State as MemberState;
use crate::relay::RelayMode;

/// The page. Each named block is a live region that `/page/regions` renders again.
#[derive(Template, WebTemplate)]
#[template(
    path = "index.html",
    blocks = [
        "hero",
        "draining",
        "verdict",
        "found",
        "members",
        "views",
        "mesh",
        "via_lb",
        "relay_mode",
        "discovery",
        "timeline",
        "not_members"
    ]
)]
struct IndexPage {
    s: Status,
    history: Vec<Message>,
}

/// The ids of the page's live regions: what `/page/regions` serves and static/app.js
/// swaps in (a region's block may hold more than one).
pub const REGION_IDS: &[&str] = &[
    "hero",
    "draining",
    "verdict-box",
    "found",
    "members",
    "views",
    "mesh",
    "via-lb",
    "relay-mode",
    "discovery",
    "timeline",
    "not-members",
];

/// The live regions alone: each block of [`IndexPage`], one after another.
#[derive(Template, WebTemplate)]
#[template(path = "regions.html")]
struct Regions {
    page: IndexPage,
    /// Off when another replica asks for the regions of a page it hands on: it shows its
    /// own hero (who answered) above them.
    with_hero: bool,
}

pub async fn index(
    State(sources): State<StatusSources>,
    State(inbox): State<Broadcaster>,
    headers: HeaderMap,
) -> Response {
    let status = Status::of(&sources);
    let mut response = if wants_html(&headers) {
        IndexPage {
            s: status,
            history: inbox.history(),
        }
        .into_response()
    } else if accepts(&headers, "text/plain") {
        (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            plain(&status),
        )
            .into_response()
    } else {
        for_curl(&status)
    };
    let headers = response.headers_mut();
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[derive(Debug, Deserialize)]
pub struct RegionsQuery {
    /// The instance that served the page: "this replica" stays that one, whichever
    /// replica renders the regions.
    page: Option<String>,
    /// Asked by a replica handing the page on: the regions without the hero.
    #[serde(default)]
    without_hero: bool,
}

/// `curl /`: the status JSON, pretty, ending in a newline, led by a summary a person reads
/// first. `/api/status` stays compact, for scripts.
fn for_curl(status: &Status) -> Response {
    #[derive(Serialize)]
    struct ForCurl<'a> {
        served_by: String,
        alive: String,
        #[serde(flatten)]
        status: &'a Status,
    }
    let body = ForCurl {
        served_by: format!("{} ({})", status.me.name, status.me.addr),
        alive: alive_text(status),
        status,
    };
    match serde_json::to_string_pretty(&body) {
        Ok(json) => (
            [(header::CONTENT_TYPE, "application/json")],
            format!("{json}\n"),
        )
            .into_response(),
        Err(_) => Json(status).into_response(),
    }
}

/// `curl -H 'Accept: text/plain' /`: a few lines, like whoami's.
fn plain(status: &Status) -> String {
    let mut lines = vec![
        format!(
            "Served by: {} {} (instance {})",
            status.me.name, status.me.addr, status.me.instance_id
        ),
        format!("Verdict: {}", status.verdict),
        format!("Alive: {}", alive_text(status)),
    ];
    lines.extend(status.members.iter().filter(|m| !m.is_self).map(|m| {
        format!(
            "Member: {} {} {} {}",
            m.name,
            m.addr,
            m.state_text(),
            m.rtt_text()
        )
    }));
    lines.extend(status.not_found.iter().map(|n| {
        format!(
            "Not found: {} ({} says it is {})",
            n.name, n.platform, n.state
        )
    }));
    lines.join("\n") + "\n"
}

/// Alive members, this one included, out of the expected number when one is set.
fn alive_text(status: &Status) -> String {
    match status.expected_replicas {
        Some(expected) => format!("{} / {expected}", status.alive()),
        None => status.alive().to_string(),
    }
}

/// `GET /page/regions[?page=INSTANCE_ID]`: what changes on the page, as HTML. Always HTML,
/// whatever `Accept` says, and never cached: each poll may land on another replica.
/// The page's regions, as the replica that served the page sees the cluster: a poll that
/// lands on another replica is handed on to it directly, so the page shows one view and not
/// each replica's in turn; the hero says who answered. When the page's replica does not
/// answer, this replica's own view (the verdict box says whose view it is).
pub async fn regions(
    State(views): State<PageViews>,
    Query(query): Query<RegionsQuery>,
) -> Response {
    let own = views.sources.me.id().to_string();
    let page = query.page.filter(|id| *id != own);
    let handed_on = match (&page, query.without_hero) {
        (Some(page), false) => views.handed_on(page).await,
        _ => None,
    };
    let body = match handed_on {
        Some(theirs) => {
            let hero = Bytes::from(render_own(&views.sources, None, true, true) + "\n");
            // The other replica's regions serve every poll of the page for a second: sent
            // as they are, not copied into each answer.
            Body::from_stream(futures_util::stream::iter([
                Ok::<_, Infallible>(hero),
                Ok(theirs),
            ]))
        }
        None => Body::from(render_own(
            &views.sources,
            page.as_deref(),
            !query.without_hero,
            false,
        )),
    };
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// This replica's regions (or its hero alone), with "this replica" marking `page`.
fn render_own(
    sources: &StatusSources,
    page: Option<&str>,
    with_hero: bool,
    hero_only: bool,
) -> String {
    let mut s = Status::of(sources);
    if let Some(page) = page.filter(|id| s.members.iter().any(|m| m.instance_id == *id)) {
        for m in &mut s.members {
            m.is_self = m.instance_id == page;
        }
    }
    let page = IndexPage {
        s,
        // Messages arrive by /events; no region shows the history.
        history: Vec::new(),
    };
    let rendered = if hero_only {
        page.as_hero().render()
    } else {
        Regions { page, with_hero }.render()
    };
    rendered.unwrap_or_default()
}

/// The largest regions answer taken from another replica. This build's regions grow with
/// N (about 100 KB at 200 members and 200 gone, 210 KB at 512 and 512 gone: see
/// `large_tests`); the margin is for a replica of an older build, whose N×N matrix grows
/// with the square of the cluster, during a rolling deploy.
const MAX_REGIONS_BYTES: usize = 4 * 1024 * 1024;
/// How long another replica's regions answer later polls of the same page.
const REGIONS_REUSE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Regions other replicas sent for pages served by them, reused for
/// [`REGIONS_REUSE_FOR`]: polls of many viewers cost a page's replica at most one call a
/// second from here, and concurrent polls of one page wait for one call.
pub struct ViewGate {
    /// `None`: the page's replica did not answer, and is not asked again for a second.
    recent: moka::future::Cache<String, Option<Bytes>>,
}

/// What the cached regions may weigh in all.
const MAX_CACHED_REGIONS_BYTES: u64 = 32 * 1024 * 1024;

impl Default for ViewGate {
    fn default() -> ViewGate {
        ViewGate {
            recent: moka::future::Cache::builder()
                .weigher(|_, regions: &Option<Bytes>| {
                    regions
                        .as_ref()
                        .map_or(1, |r| u32::try_from(r.len()).unwrap_or(u32::MAX))
                })
                .max_capacity(MAX_CACHED_REGIONS_BYTES)
                .time_to_live(REGIONS_REUSE_FOR)
                .build(),
        }
    }
}

/// What `/page/regions` reads: this replica's status, and the way to the page's replica.
#[derive(Clone)]
pub struct PageViews {
    pub(super) sources: StatusSources,
    pub(super) client: PeerClient,
    pub(super) gate: Arc<ViewGate>,
}

impl PageViews {
    /// The regions of `page`'s replica, without its hero, when it is alive and answers.
    async fn handed_on(&self, page: &str) -> Option<Bytes> {
        let snapshot = self.sources.membership.snapshot();
        let member = snapshot
            .member(page)
            .filter(|m| m.state == MemberState::Alive)?;
        let addr = member.identity.addr;
        // A member id is letters, digits, '-' and '_': nothing to escape.
        let path = format!("/page/regions?page={page}&without_hero=true");
        let fetch = async {
            let body = self
                .client
                .get_up_to(addr, &path, MAX_REGIONS_BYTES)
                .await
                .ok()?;
            std::str::from_utf8(&body)
                .is_ok()
                .then(|| Bytes::from(body))
        };
        self.gate.recent.get_with(page.to_string(), fetch).await
    }
}

/// Lines of the timeline shown: the latest happenings, not the whole history.
const TIMELINE_LINES: usize = 30;

/// Each member's short label, in order (see [`short_labels`]). A restart leaves its old
/// instance (dead or left) beside the new one under one name: they share the name's
/// label, and the matrix's marks tell them apart. Only current members with one name
/// (a misconfiguration) are told apart by their ids.
fn labels_of(members: &[&MemberView]) -> Vec<String> {
    let current = |m: &MemberView| matches!(m.state, MemberState::Alive | MemberState::Suspect);
    // (name, a representative id, whether a current member is in the group)
    let mut groups: Vec<(&str, &str, bool)> = Vec::new();
    let mut group_of = Vec::with_capacity(members.len());
    for m in members {
        let joins = groups
            .iter()
            .position(|(name, _, has_current)| *name == m.name && !(*has_current && current(m)));
        let g = match joins {
            Some(g) => {
                // A current member speaks for the group: its id, where ids are shown.
                if current(m) {
                    groups[g].1 = m.instance_id.as_str();
                    groups[g].2 = true;
                }
                g
            }
            None => {
                groups.push((m.name.as_str(), m.instance_id.as_str(), current(m)));
                groups.len() - 1
            }
        };
        group_of.push(g);
    }
    let named: Vec<(&str, &str)> = groups.iter().map(|(name, id, _)| (*name, *id)).collect();
    let labels = short_labels(&named);
    group_of.into_iter().map(|g| labels[g].clone()).collect()
}

/// A matrix header: the short label, the whole name and state on hover; gone ones marked.
fn mesh_header(m: &MemberView, label: &str) -> String {
    let mark = match m.state {
        MemberState::Dead => "✗ ",
        MemberState::Left => "– ",
        _ => "",
    };
    format!(
        "<th class=\"state-{state}\" title=\"{name} ({state})\" style=\"--hue: {hue}\">{mark}{label}</th>",
        state = m.state_text(),
        name = esc(&m.name),
        hue = m.hue(),
        label = esc(label),
    )
}

/// The last `n` characters (ids in messages from outside need not be ASCII).
fn last_chars(s: &str, n: usize) -> String {
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}

impl MemberView {
    fn hue(&self) -> u32 {
        hue(&self.instance_id)
    }
    fn rtt_text(&self) -> String {
        let gone = matches!(self.state, MemberState::Dead | MemberState::Left);
        match (self.is_self || gone, self.rtt_ms) {
            (true, _) => "—".into(),
            (false, Some(rtt)) => format!("{rtt:.2} ms"),
            (false, None) => "…".into(),
        }
    }
    fn cpu_text(&self) -> String {
        format!("{:.1} %", self.system.cpu_pct)
    }
    fn rss_text(&self) -> String {
        mib(self.system.rss_bytes)
    }
    fn seen_text(&self) -> String {
        if self.is_self {
            "now".into()
        } else {
            ago(self.last_seen_ms_ago)
        }
    }
    fn state_text(&self) -> &'static str {
        self.state.as_str()
    }
}

/// Instances the platform runs that are shown as cards; the rest are counted.
const NOT_FOUND_SHOWN: usize = 8;

impl NotFoundView {
    fn addr_text(&self) -> String {
        match (self.addr, &self.alias) {
            (Some(ip), _) => format!("{ip} (from the platform's API)"),
            (None, Some(alias)) => format!("alias {alias} · no address from the API"),
            (None, None) => "no address from the API".into(),
        }
    }
    fn note_text(&self) -> String {
        format!(
            "{} says it is {}; no method has found it",
            self.platform, self.state
        )
    }
}

impl MethodView {
    fn name(&self) -> &'static str {
        self.method.as_str()
    }
    /// A platform API that gives names alone finds nobody itself: "names", not "0".
    fn found_text(&self) -> String {
        if self.method == crate::wire::Method::Platform
            && self.found == 0
            && !self.evidence.is_empty()
        {
            "names".into()
        } else {
            self.found.to_string()
        }
    }
    fn last_run_text(&self) -> String {
        match (self.last_run_ms_ago, self.duration_ms) {
            (Some(ago_ms), Some(took)) => format!("{} · took {took} ms", ago(ago_ms)),
            (Some(ago_ms), None) => ago(ago_ms),
            _ => String::new(),
        }
    }
}

impl IndexPage {
    fn hue(&self) -> u32 {
        hue(&self.s.me.instance_id)
    }
    fn found_text(&self) -> String {
        alive_text(&self.s)
    }
    fn relay_text(&self) -> String {
        match (&self.s.relay.hub, self.s.relay.mode) {
            (Some(hub), _) => format!("relayed through hub {}", self.name_of(hub)),
            (None, RelayMode::Relay) => format!("relay: {}", self.s.relay.detail),
            _ => "sent directly to every member".into(),
        }
    }
    fn name_of(&self, id: &str) -> String {
        self.s
            .members
            .iter()
            .find(|m| m.instance_id == id)
            .map_or_else(|| format!("…{}", last_chars(id, 6)), |m| m.name.clone())
    }
    fn path_text(&self, m: &Message) -> String {
        let path: Vec<String> = m.via.iter().map(|id| self.name_of(id)).collect();
        format!(
            "entered by {} · {}",
            self.name_of(&m.origin),
            path.join(" → ")
        )
    }
    fn views_text(&self) -> String {
        if self.s.converged {
            match self.s.views.len() {
                1 => format!("one replica, view {}", self.s.view_hash),
                n => format!("views agree ({n} replicas, view {})", self.s.view_hash),
            }
        } else {
            let distinct: std::collections::BTreeSet<&String> = self.s.views.values().collect();
            format!("split views: {} different member sets", distinct.len())
        }
    }
    /// The timeline, one line per happening, newest first.
    fn timeline_lines(&self) -> Vec<Line> {
        let mut all = lines(&self.s.timeline);
        all.truncate(TIMELINE_LINES);
        all
    }
    fn seen_by(&self, line: &Line) -> String {
        let names: Vec<String> = line.by.iter().map(|id| self.name_of(id)).collect();
        names.join(", ")
    }
    /// "12 s ago" as of this rendering: the page renders its regions again every 2 s.
    fn ago_text(&self, line: &Line) -> String {
        line.ms_ago(SystemTime::now())
            .map_or_else(|| line.first.at.clone(), ago)
    }
    fn via_lb_text(&self) -> String {
        let direct: Vec<f64> = self.s.members.iter().filter_map(|m| m.rtt_ms).collect();
        let direct = match direct.len() {
            0 => "no direct call yet".to_string(),
            n => format!(
                "direct calls from here average {:.2} ms",
                direct.iter().sum::<f64>() / n as f64
            ),
        };
        match &self.s.via_load_balancer {
            None => {
                format!("{direct}; set PUBLIC_URL to compare with a call through the load balancer")
            }
            Some(c) if c.ok => format!(
                "Through the load balancer: {:.2} ms (answered by {}); {direct}",
                c.rtt_ms.unwrap_or(0.0),
                c.answered_by
                    .as_deref()
                    .map_or_else(String::new, |id| self.name_of(id))
            ),
            Some(c) => format!(
                "Through the load balancer: {}; {direct}",
                c.error.as_deref().unwrap_or("no answer")
            ),
        }
    }
    fn event_subject(&self, line: &Line) -> String {
        let e = &line.first;
        match (&e.name, &e.addr) {
            (Some(name), Some(addr)) => format!("{name} {addr}"),
            (None, Some(addr)) => addr.to_string(),
            _ => String::new(),
        }
    }
    /// The matrix's replicas: every member not yet forgotten (dead and departed ones keep
    /// their row and column until then), in instance-id order, so that every replica draws
    /// the same matrix while the polls rotate between them.
    fn mesh_members(&self) -> Vec<&MemberView> {
        let mut members: Vec<&MemberView> = self.s.members.iter().collect();
        members.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        members
    }

    /// Past [`mesh_summary::FULL_VIEW_MAX`] members the page counts and summarises
    /// instead of drawing every card and every cell.
    fn is_large(&self) -> bool {
        mesh_summary::is_large(self.s.members.len())
    }
    /// The member cards drawn: every member, or in a large cluster those worth a look.
    fn shown_members(&self) -> Vec<&MemberView> {
        if self.is_large() {
            large_view::cards(&self.s.members)
        } else {
            self.s.members.iter().collect()
        }
    }
    fn state_counts(&self) -> String {
        large_view::state_counts(&self.s.members)
    }
    fn shown_not_found(&self) -> &[NotFoundView] {
        &self.s.not_found[..self.s.not_found.len().min(NOT_FOUND_SHOWN)]
    }
    fn not_found_left_out(&self) -> Option<String> {
        let more = self.s.not_found.len().checked_sub(NOT_FOUND_SHOWN)?;
        (more > 0).then(|| {
            format!(
                "and {more} more instances the platform runs, not found yet; /api/status lists them"
            )
        })
    }
    fn members_left_out(&self) -> Option<String> {
        large_view::cards_left_out(&self.s.members, &self.shown_members())
    }
    /// The evidence lines under a method: all of them, or in a large cluster the ones
    /// worth a look.
    fn evidence_shown<'a>(&self, d: &'a MethodView) -> Vec<&'a Evidence> {
        if self.summarises_evidence(d) {
            large_view::evidence(&d.evidence).0
        } else {
            d.evidence.iter().collect()
        }
    }
    fn evidence_left_out(&self, d: &MethodView) -> Option<String> {
        if self.summarises_evidence(d) {
            large_view::evidence(&d.evidence).1
        } else {
            None
        }
    }
    /// A large cluster, or a method with more lines than a large cluster shows (a
    /// platform listing hundreds of instances while few replicas are found).
    fn summarises_evidence(&self, d: &MethodView) -> bool {
        self.is_large() || d.evidence.len() > large_view::EVIDENCE_SHOWN
    }
    /// The heat strip and worst rows of a large cluster.
    fn large_mesh_html(&self) -> String {
        let members = self.mesh_members();
        let labels = labels_of(&members);
        let by_id = members
            .iter()
            .zip(&labels)
            .map(|(m, label)| (m.instance_id.as_str(), label.as_str()))
            .collect();
        large_view::mesh_html(&self.s, &by_id)
    }

    /// The N×N grid: escaped here, since it is built as text. Headers are the shortest
    /// part of each name that tells it apart, with the whole name on hover.
    fn mesh_html(&self) -> String {
        let members = self.mesh_members();
        let labels = labels_of(&members);
        let heads: Vec<String> = members
            .iter()
            .zip(&labels)
            .map(|(m, label)| mesh_header(m, label))
            .collect();
        let mut html = String::from("<tr><th>from \\ to</th>");
        html.extend(heads.iter().cloned());
        html += "</tr>";
        for (from, head) in members.iter().zip(&heads) {
            html += "<tr>";
            html += head;
            for to in &members {
                html += &self.mesh_cell(from, to);
            }
            html += "</tr>";
        }
        html
    }

    /// What `from`'s own probes say of `to`; a row that is dead, gone or unread says so.
    fn mesh_cell(&self, from: &MemberView, to: &MemberView) -> String {
        let cell = self
            .s
            .mesh
            .get(&from.instance_id)
            .and_then(|row| row.get(&to.instance_id));
        let (class, text, title) = match (from.state, to.state, cell) {
            (MemberState::Dead, _, _) => ("fail", "✗".into(), format!("{} is dead", from.name)),
            (MemberState::Left, _, _) => ("gone", "–".into(), format!("{} left", from.name)),
            _ if from.instance_id == to.instance_id => ("self", "·".into(), String::new()),
            (_, _, Some(c)) if c.ok => {
                let rtt = c.rtt_ms.unwrap_or(0.0);
                (rtt_class(rtt), format!("{rtt:.2} ms"), String::new())
            }
            (_, _, Some(c)) => (
                "fail",
                "✗".into(),
                c.error.clone().unwrap_or_else(|| "no answer".into()),
            ),
            (_, MemberState::Dead, None) => ("fail", "✗".into(), format!("{} is dead", to.name)),
            (_, MemberState::Left, None) => ("gone", "–".into(), format!("{} left", to.name)),
            (MemberState::Suspect, _, None) => (
                "none",
                "?".into(),
                format!("{} is suspect: its row is not read", from.name),
            ),
            _ => ("none", "?".into(), "not probed yet".into()),
        };
        format!(
            "<td class=\"{class}\" title=\"{}\">{text}</td>",
            esc(&title)
        )
    }

    /// The serving replica's short label among the members: the strip of answers shows it.
    /// The regions static/app.js swaps in from a poll: every one but the hero, which stays
    /// the replica that served the page. Nothing else a poll returns enters the page.
    fn swapped_regions(&self) -> String {
        REGION_IDS
            .iter()
            .filter(|id| **id != "hero")
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    }
    fn hero_label(&self) -> String {
        let members = self.mesh_members();
        labels_of(&members)
            .into_iter()
            .zip(&members)
            .find(|(_, m)| m.instance_id == self.s.me.instance_id)
            .map_or_else(|| self.s.me.name.clone(), |(label, _)| label)
    }
    fn short_id(&self) -> &str {
        let id = &self.s.me.instance_id;
        &id[id.len().saturating_sub(6)..]
    }
}

#[cfg(test)]
#[path = "page_large_tests.rs"]
mod large_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::text::REPLICA_HUES;
    use crate::wire::MethodStatus;
    use std::time::Duration;

    #[test]
    fn hue_is_a_stable_angle() {
        // Pinned: the strip keeps hues across reloads (sessionStorage), and replicas of two
        // builds share a page during a rolling deploy; one replica, one colour.
        // Re-pinned when hues moved to REPLICA_HUES (a deliberate change: a replica's
        // colour differed between the two builds for one rolling deploy).
        assert_eq!(hue(""), REPLICA_HUES[0x811c_9dc5 % 8]);
        assert_eq!(hue(""), 270);
        assert_eq!(hue("01JTEST"), 255);
    }

    #[test]
    fn replica_hues_stay_clear_of_the_status_colours() {
        // The hues of style.css's --bad (dead, failures), --warn (suspect, slow) and --ok
        // (alive, fast); 35° away reads as another colour.
        let status = [0, 43, 158];
        let distance = |a: u32, b: u32| {
            let d = a.abs_diff(b) % 360;
            d.min(360 - d)
        };
        for h in REPLICA_HUES {
            for s in status {
                assert!(distance(h, s) >= 35, "{h} is close to {s}");
            }
        }
        for i in 0..1000 {
            assert!(REPLICA_HUES.contains(&hue(&format!("01J{i}"))));
        }
    }

    fn sample_page() -> IndexPage {
        let me: crate::wire::Identity = serde_json::from_value(serde_json::json!({
            "instance_id": "01JSELF", "name": "r<1>", "service": "rollcall",
            "addr": "127.0.0.2:8080", "version": "0.1.0", "platform": "local"
        }))
        .unwrap();
        let member = |id: &str, name: &str, is_self: bool| MemberView {
            instance_id: id.into(),
            name: name.into(),
            addr: me.addr,
            is_self,
            state: crate::membership::State::Alive,
            sources: vec![],
            rtt_ms: (!is_self).then_some(0.4),
            last_seen_ms_ago: 300,
            system: Default::default(),
            error: None,
            restarted: false,
        };
        let members = vec![
            member("01JSELF", "r<1>", true),
            member("01JPEER", "r2", false),
        ];
        IndexPage {
            s: Status {
                verdict: "Replicas can call each other directly (1 reachable).".into(),
                verdict_tone: crate::web::status::Tone::Good,
                membership: "by service name only",
                draining: false,
                relay: Default::default(),
                me,
                members,
                foreign: vec![],
                aliases: vec![],
                discovery: vec![MethodView {
                    method: crate::wire::Method::Scan,
                    status: MethodStatus::Works,
                    found: 1,
                    last_run_ms_ago: Some(800),
                    duration_ms: Some(12),
                    detail: "scanned 127.0.0.0/24".into(),
                    evidence: vec![],
                    claimed: 0,
                }],
                expected_replicas: Some(2),
                expected_from: Some("setting"),
                not_found: vec![],
                mesh: Default::default(),
                mesh_summary: None,
                view_hash: "abc".into(),
                views: Default::default(),
                converged: true,
                timeline: vec![],
                via_load_balancer: None,
            },
            history: vec![],
        }
    }

    #[test]
    fn the_regions_are_the_page_s_own_blocks() {
        let page = sample_page();
        let full = page.render().unwrap();
        let regions = Regions {
            page: sample_page(),
            with_hero: true,
        }
        .render()
        .unwrap();
        // Everything static/app.js swaps, by the ids it swaps them by.
        for id in REGION_IDS {
            let attr = format!(" id=\"{id}\"");
            assert_eq!(regions.matches(&attr).count(), 1, "{id} in {regions}");
            assert_eq!(full.matches(&attr).count(), 1, "{id} in the page");
        }
        for block in [
            page.as_hero().render().unwrap(),
            page.as_members().render().unwrap(),
            page.as_discovery().render().unwrap(),
        ] {
            assert!(full.contains(&block), "{block}");
            assert!(regions.contains(&block), "{block}");
        }
        // Escaped once, as in the page: neither raw nor twice.
        assert!(!regions.contains("r<1>"), "{regions}");
        assert!(!regions.contains("&amp;#"), "{regions}");
        assert!(regions.contains("data-name=\"r&#60;1&#62;\""), "{regions}");
        assert!(regions.contains("data-hue=\""), "{regions}");
        // Only regions: no page around them, no script, no messages.
        assert!(!regions.contains("<html") && !regions.contains("<script"));
    }

    #[test]
    fn instances_the_platform_runs_and_nobody_found_are_grey_cards_by_name() {
        let mut page = sample_page();
        let missing = |i: usize| NotFoundView {
            name: format!("main-service-768976868d-<{i}>"),
            platform: "App Platform",
            alias: Some(format!("main-service-{i}")),
            addr: None,
            state: "running".into(),
        };
        page.s.not_found = vec![missing(2)];
        let members = page.as_members().render().unwrap();
        assert!(
            members.contains(
                "<li class=\"member not-found\" data-name=\"main-service-768976868d-&#60;2&#62;\">"
            ),
            "{members}"
        );
        assert!(members.contains("not found yet"), "{members}");
        assert!(members.contains("alias main-service-2 · no address from the API"));
        assert!(members.contains("App Platform says it is running; no method has found it"));
        assert!(
            plain(&page.s).contains(
                "Not found: main-service-768976868d-<2> (App Platform says it is running)"
            )
        );
        // Many missing: a few cards, the rest counted.
        page.s.not_found = (0..20).map(missing).collect();
        let members = page.as_members().render().unwrap();
        assert_eq!(members.matches("member not-found").count(), NOT_FOUND_SHOWN);
        assert!(
            members.contains("and 12 more instances the platform runs"),
            "{members}"
        );
        // Its evidence, one line an instance, is summarised like a large cluster's.
        page.s.discovery[0].evidence = (0..500)
            .map(|i| Evidence {
                subject: format!("pod-{i}"),
                status: MethodStatus::Partial,
                detail: "Running, ready: not found yet".into(),
            })
            .collect();
        let report = page.as_discovery().render().unwrap();
        assert_eq!(
            report.matches("pod-").count(),
            large_view::EVIDENCE_SHOWN,
            "{report}"
        );
        assert!(
            report.contains("and 488 more lines (488 partial)"),
            "{report}"
        );
    }

    /// A page of three pods, as 01JSELF sees them: 01JPEER alive, 01JDEAD dead.
    fn page_with_a_dead_pod() -> IndexPage {
        let mut page = sample_page();
        let pod = |hash: &str| format!("checkout-api-768976868d-{hash}");
        page.s.members[0].name = pod("aaaaa");
        page.s.members[1].name = pod("bbbbb");
        let mut dead = page.s.members[1].clone();
        dead.instance_id = "01JDEAD".into();
        dead.name = pod("ccccc");
        dead.state = crate::membership::State::Dead;
        page.s.members.push(dead);
        let cell = |ok: bool| crate::wire::MeshCell {
            ok,
            rtt_ms: ok.then_some(0.4),
            last_ok_ms_ago: Some(300),
            error: (!ok).then(|| "connection refused".into()),
        };
        // Both alive members reach each other, and not the dead one.
        let row: std::collections::BTreeMap<String, crate::wire::MeshCell> = [
            ("01JSELF".to_string(), cell(true)),
            ("01JPEER".to_string(), cell(true)),
            ("01JDEAD".to_string(), cell(false)),
        ]
        .into_iter()
        .collect();
        page.s.mesh = [("01JSELF", row.clone()), ("01JPEER", row)]
            .into_iter()
            .map(|(id, r)| (id.to_string(), r))
            .collect();
        page
    }

    #[test]
    fn the_matrix_keeps_dead_members_and_labels_pods_by_their_hash() {
        let html = page_with_a_dead_pod().mesh_html();
        let rows: Vec<&str> = html.split("</tr>").filter(|r| !r.is_empty()).collect();
        assert_eq!(rows.len(), 4, "a header and three rows: {html}");
        // Instance-id order, whoever renders: DEAD, PEER, SELF.
        assert!(rows[0].contains(">✗ ccccc</th>"), "{}", rows[0]);
        assert!(rows[0].contains(">bbbbb</th>") && rows[0].contains(">aaaaa</th>"));
        assert!(rows[0].contains("title=\"checkout-api-768976868d-ccccc (dead)\""));
        // The dead pod's row: it publishes none, and says why.
        assert_eq!(
            rows[1].matches("<td class=\"fail\"").count(),
            3,
            "{}",
            rows[1]
        );
        assert!(rows[1].contains("is dead"));
        // Its column: the others' failed probes of it.
        for row in &rows[2..] {
            assert!(
                row.contains("<td class=\"fail\" title=\"connection refused\">✗</td>"),
                "{row}"
            );
            assert_eq!(row.matches("<td class=\"fast\"").count(), 1, "{row}");
            assert_eq!(row.matches("<td class=\"self\"").count(), 1, "{row}");
        }
    }

    #[test]
    fn members_that_left_are_grey_in_the_matrix_not_failures() {
        let mut page = page_with_a_dead_pod();
        page.s.members[2].state = crate::membership::State::Left;
        // Members drop a departed replica from their rows.
        for row in page.s.mesh.values_mut() {
            row.remove("01JDEAD");
        }
        let html = page.mesh_html();
        assert!(!html.contains("fail"), "{html}");
        assert_eq!(html.matches("<td class=\"gone\"").count(), 5, "{html}");
        assert!(html.contains(">– ccccc</th>"), "{html}");
    }

    #[test]
    fn a_restarted_pod_s_old_instance_shares_its_label() {
        // The dead pod came back under its name as 01JNEW.
        let mut page = page_with_a_dead_pod();
        let mut back = page.s.members[2].clone();
        back.instance_id = "01JNEW".into();
        back.state = crate::membership::State::Alive;
        page.s.members.push(back);
        let html = page.mesh_html();
        assert!(html.contains(">✗ ccccc</th>"), "{html}");
        assert!(html.contains(">ccccc</th>"), "{html}");
        assert!(!html.contains('…'), "no instance ids: {html}");
        // Two current members under one name are told apart by their ids.
        page.s.members[2].state = crate::membership::State::Alive;
        let html = page.mesh_html();
        assert!(html.contains(">…01JNEW</th>"), "{html}");
    }

    #[test]
    fn the_verdict_box_carries_its_tone() {
        let mut page = sample_page();
        page.s.verdict_tone = crate::web::status::Tone::Neutral;
        let html = page.as_verdict().render().unwrap();
        assert!(
            html.starts_with("<div class=\"verdict tone-neutral\" id=\"verdict-box\""),
            "{html}"
        );
    }

    #[test]
    fn the_timeline_is_one_line_per_happening_with_its_time_on_hover() {
        let mut page = page_with_a_dead_pod();
        let at = humantime::format_rfc3339_millis(SystemTime::now() - Duration::from_secs(12))
            .to_string();
        let seen_by = |by: &str| crate::wire::TimelineEvent {
            at: at.clone(),
            kind: "dead".into(),
            instance_id: Some("01JDEAD".into()),
            name: Some("checkout-api-768976868d-ccccc".into()),
            addr: None,
            detail: "no answer".into(),
            by: Some(by.into()),
        };
        page.s.timeline = vec![seen_by("01JSELF"), seen_by("01JPEER")];
        let html = page.as_timeline().render().unwrap();
        assert_eq!(html.matches("<li").count(), 1, "{html}");
        assert!(html.contains("<li class=\"tone-bad\">"), "{html}");
        assert!(
            html.contains(&format!("title=\"{at}\">12 s ago</time>")),
            "{html}"
        );
        assert!(
            html.contains("seen by checkout-api-768976868d-aaaaa, checkout-api-768976868d-bbbbb"),
            "{html}"
        );
    }

    #[test]
    fn short_names_cut_on_characters() {
        assert_eq!(last_chars("01JABCDEFG", 6), "BCDEFG");
        assert_eq!(last_chars("ééééééé", 6), "éééééé");
        assert_eq!(last_chars("ab", 6), "ab");
    }

    #[test]
    fn human_figures() {
        assert_eq!(ago(420), "420 ms ago");
        assert_eq!(ago(4200), "4 s ago");
        assert_eq!(ago(600_000), "10 min ago");
        assert_eq!(mib(12 * 1024 * 1024), "12.0 MiB");
    }
}
