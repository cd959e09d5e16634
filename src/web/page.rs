//! `GET /`: the page for browsers, the status JSON for everything else (so plain `curl`
//! gets JSON). `GET /page/regions`: the page's live regions, rendered by the same template
//! blocks, which static/app.js swaps in every 2 s.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use super::negotiate::{accepts, wants_html};
use super::status::{MemberView, MethodView, Status, StatusSources};
use crate::broadcast::{Broadcaster, Message};
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
    "verdict",
    "membership",
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
pub async fn regions(
    State(sources): State<StatusSources>,
    Query(query): Query<RegionsQuery>,
) -> Response {
    let mut s = Status::of(&sources);
    if let Some(page) = query
        .page
        .filter(|id| s.members.iter().any(|m| m.instance_id == *id))
    {
        for m in &mut s.members {
            m.is_self = m.instance_id == page;
        }
    }
    let page = IndexPage {
        s,
        // Messages arrive by /events; no region shows the history.
        history: Vec::new(),
    };
    let mut response = Regions { page }.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A stable colour per replica, so rotation is visible at a glance. The page carries it
/// (`--hue`, and `data-hue` on the hero, which the strip of answers reuses).
pub fn hue(instance_id: &str) -> u32 {
    // FNV-1a: tiny and stable across builds and platforms.
    let hash = instance_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash % 360
}

/// The last `n` characters (ids in messages from outside need not be ASCII).
fn last_chars(s: &str, n: usize) -> String {
    let skip = s.chars().count().saturating_sub(n);
    s.chars().skip(skip).collect()
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn ago(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms ago"),
        1000..=119_999 => format!("{:.0} s ago", ms as f64 / 1000.0),
        _ => format!("{} min ago", ms / 60_000),
    }
}

impl MemberView {
    fn hue(&self) -> u32 {
        hue(&self.instance_id)
    }
    fn rtt_text(&self) -> String {
        match (self.is_self, self.rtt_ms) {
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

impl MethodView {
    fn name(&self) -> &'static str {
        self.method.as_str()
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
            format!(
                "views agree ({} replicas, view {})",
                self.s.views.len(),
                self.s.view_hash
            )
        } else {
            let distinct: std::collections::BTreeSet<&String> = self.s.views.values().collect();
            format!("split views: {} different member sets", distinct.len())
        }
    }
    fn seen_by(&self, e: &crate::wire::TimelineEvent) -> String {
        e.by.as_deref()
            .map_or_else(String::new, |id| self.name_of(id))
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
    fn event_subject(&self, e: &crate::wire::TimelineEvent) -> String {
        match (&e.name, &e.addr) {
            (Some(name), Some(addr)) => format!("{name} {addr}"),
            (None, Some(addr)) => addr.to_string(),
            _ => String::new(),
        }
    }
    /// The N×N grid: escaped here, since it is built as text.
    fn mesh_html(&self) -> String {
        let ids: Vec<&String> = self.s.mesh.keys().collect();
        let esc = |s: &str| {
            askama::filters::escape(s, askama::filters::Html)
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let mut html = String::from("<tr><th>from \\ to</th>");
        for to in &ids {
            html += &format!("<th>{}</th>", esc(&self.name_of(to)));
        }
        html += "</tr>";
        for from in &ids {
            html += &format!("<tr><th>{}</th>", esc(&self.name_of(from)));
            for to in &ids {
                let cell = self.s.mesh.get(*from).and_then(|row| row.get(*to));
                html += &match (from == to, cell) {
                    (true, _) => "<td class=\"self\">·</td>".to_string(),
                    (false, Some(c)) if c.ok => {
                        let rtt = c.rtt_ms.unwrap_or(0.0);
                        let class = if rtt < 1.0 {
                            "fast"
                        } else if rtt < 5.0 {
                            "ok"
                        } else {
                            "slow"
                        };
                        format!("<td class=\"{class}\">{rtt:.2} ms</td>")
                    }
                    (false, Some(c)) => format!(
                        "<td class=\"fail\" title=\"{}\">✗</td>",
                        esc(c.error.as_deref().unwrap_or("no answer"))
                    ),
                    (false, None) => "<td class=\"none\">?</td>".to_string(),
                };
            }
            html += "</tr>";
        }
        html
    }
    fn short_id(&self) -> &str {
        let id = &self.s.me.instance_id;
        &id[id.len().saturating_sub(6)..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::MethodStatus;

    #[test]
    fn hue_is_a_stable_angle() {
        // Pinned: the strip keeps hues across reloads (sessionStorage), and replicas of two
        // builds share a page during a rolling deploy; one replica, one colour.
        assert_eq!(hue(""), 0x811c_9dc5 % 360);
        assert_eq!(hue("01JTEST"), 84);
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
        };
        let members = vec![
            member("01JSELF", "r<1>", true),
            member("01JPEER", "r2", false),
        ];
        IndexPage {
            s: Status {
                verdict: "Replicas can call each other directly (1 reachable).".into(),
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
                mesh: Default::default(),
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
