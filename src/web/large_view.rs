//! The page of a cluster past [`FULL_VIEW_MAX`] members: a card for the members worth a
//! look and counts for the rest, a heat strip of one square per current member, the worst
//! rows of the mesh, and the gone members in a line. What it costs grows with N (one
//! square per member), not N², and what it leaves out it says, pointing at `/api/status`.

use std::collections::BTreeMap;

use super::mesh_summary::{FULL_VIEW_MAX, RowSummary};
use super::status::{MemberView, Status};
use super::text::{ago, esc, hue, rtt_class};
use crate::discovery::report::Evidence;
use crate::membership::State;
use crate::wire::MethodStatus;

/// Cards shown at most: this replica, then the suspect ones, then the most recently gone.
pub const CARDS_MAX: usize = FULL_VIEW_MAX;
/// Rows of the mesh shown in full, the worst first.
pub const WORST_ROWS: usize = 8;
/// Of those, rows not read (suspect members) at most: the others' failures still show
/// when a partition makes half the cluster suspect.
pub const UNREAD_ROWS: usize = WORST_ROWS / 2;
/// Gone members named in the gone line, the most recent first.
const GONE_NAMED: usize = 3;
/// Lines of evidence shown under each discovery method: a registry or a DNS name lists
/// every replica, a line each.
pub const EVIDENCE_SHOWN: usize = FULL_VIEW_MAX;

fn is_current(m: &MemberView) -> bool {
    matches!(m.state, State::Alive | State::Suspect)
}

/// The cards worth a look: this replica, the suspect, the most recently gone; at most
/// [`CARDS_MAX`].
pub fn cards(members: &[MemberView]) -> Vec<&MemberView> {
    let mut suspect: Vec<&MemberView> = members
        .iter()
        .filter(|m| m.state == State::Suspect)
        .collect();
    suspect.sort_by_key(|m| m.last_seen_ms_ago);
    let mut gone: Vec<&MemberView> = members.iter().filter(|m| !is_current(m)).collect();
    gone.sort_by_key(|m| m.last_seen_ms_ago);
    members
        .iter()
        .filter(|m| m.is_self)
        .chain(suspect)
        .chain(gone)
        .take(CARDS_MAX)
        .collect()
}

/// "alive 195 · suspect 2 · dead 3 · left 180": the count of each state present.
pub fn state_counts(members: &[MemberView]) -> String {
    [State::Alive, State::Suspect, State::Dead, State::Left]
        .iter()
        .map(|state| (state, members.iter().filter(|m| m.state == *state).count()))
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// What the cards leave out, by state: "Not drawn: 187 alive, 2 left".
pub fn cards_left_out(members: &[MemberView], shown: &[&MemberView]) -> Option<String> {
    let parts: Vec<String> = [State::Alive, State::Suspect, State::Dead, State::Left]
        .iter()
        .map(|state| {
            let all = members.iter().filter(|m| m.state == *state).count();
            let drawn = shown.iter().filter(|m| m.state == *state).count();
            (state, all - drawn)
        })
        .filter(|(_, n)| *n > 0)
        .map(|(state, n)| format!("{n} {}", state.as_str()))
        .collect();
    (!parts.is_empty()).then(|| format!("Not drawn: {}.", parts.join(", ")))
}

/// The evidence lines worth a look, at most [`EVIDENCE_SHOWN`]: those that did not work
/// first (in their order), then the others; and what is left out, by status.
pub fn evidence(all: &[Evidence]) -> (Vec<&Evidence>, Option<String>) {
    let mut shown: Vec<&Evidence> = all.iter().collect();
    // Stable: lines keep their order within each kind.
    shown.sort_by_key(|e| e.status == MethodStatus::Works);
    let rest = shown.split_off(shown.len().min(EVIDENCE_SHOWN));
    if rest.is_empty() {
        return (shown, None);
    }
    let mut by_status: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &rest {
        *by_status.entry(e.status.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = by_status
        .iter()
        .map(|(status, n)| format!("{n} {status}"))
        .collect();
    let note = format!(
        "and {} more lines ({}); /api/status has every line",
        rest.len(),
        counts.join(", ")
    );
    (shown, Some(note))
}

/// The mesh of a large cluster, as HTML (escaped here): a heat strip, the worst rows,
/// and the gone members in a line. `labels` maps each member's id to its short label.
pub fn mesh_html(s: &Status, labels: &BTreeMap<&str, &str>) -> String {
    let by_id: BTreeMap<&str, &MemberView> = s
        .members
        .iter()
        .map(|m| (m.instance_id.as_str(), m))
        .collect();
    let rows: &[RowSummary] = s.mesh_summary.as_ref().map_or(&[], |m| &m.rows);
    let row_of: BTreeMap<&str, &RowSummary> =
        rows.iter().map(|r| (r.instance_id.as_str(), r)).collect();
    let label = |id: &str| labels.get(id).map_or_else(|| esc(id), |l| esc(l));
    let name = |id: &str| by_id.get(id).map_or(id, |m| m.name.as_str()).to_string();

    let mut current: Vec<&MemberView> = s.members.iter().filter(|m| is_current(m)).collect();
    current.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    let mut html = format!(
        "<p class=\"muted\">{} current members: one square each, coloured by its own \
         calls and the calls to it (red: a call fails; else by its median call, green \
         under 5 ms, amber over; grey: row not read); names and figures on hover.</p><div class=\"heat\">",
        current.len()
    );
    for m in &current {
        let (class, title) = match row_of.get(m.instance_id.as_str()) {
            Some(r) => (square_class(r), row_title(&m.name, r)),
            None => (
                "none",
                format!("{} ({}): its row is not read", m.name, m.state.as_str()),
            ),
        };
        let me = if m.is_self { " me" } else { "" };
        html += &format!(
            "<span class=\"{class}{me}\" title=\"{}\"></span>",
            esc(&title)
        );
    }
    html += "</div>";

    // Current members whose row is not read (suspect) lead: their silence is the news.
    let unread: Vec<&&MemberView> = current
        .iter()
        .filter(|m| !row_of.contains_key(m.instance_id.as_str()))
        .collect();
    html += "<table class=\"mesh worst\"><tr><th>worst rows</th><th>reaches</th>\
             <th>slowest</th><th>reached by</th></tr>";
    let shown_unread = unread.len().min(UNREAD_ROWS);
    for m in unread.iter().take(shown_unread) {
        html += &format!(
            "<tr><th title=\"{} ({})\" style=\"--hue: {}\">{}</th><td class=\"none\" colspan=\"3\">row not read ({})</td></tr>",
            esc(&m.name),
            m.state.as_str(),
            hue(&m.instance_id),
            label(&m.instance_id),
            m.state.as_str(),
        );
    }
    let shown_rows = WORST_ROWS - shown_unread;
    for r in rows.iter().take(shown_rows) {
        let failing: Vec<String> = r.failing.iter().map(|id| label(id)).collect();
        let more = r.fails().saturating_sub(r.failing.len());
        let reaches = if r.fails() == 0 {
            format!("<td class=\"fast\">{} / {}</td>", r.reaches, r.probed)
        } else {
            let and_more = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            format!(
                "<td class=\"fail\">{} / {}<div>✗ {}{and_more}</div></td>",
                r.reaches,
                r.probed,
                failing.join(", ")
            )
        };
        let slowest = match (r.worst_rtt_ms, &r.worst_rtt_to) {
            (Some(rtt), Some(to)) => format!(
                "<td class=\"{}\" title=\"to {}\">{rtt:.2} ms</td>",
                rtt_class(rtt),
                esc(&name(to))
            ),
            _ => "<td class=\"none\">—</td>".into(),
        };
        let reached_class = if r.missed_by() > 0 { "fail" } else { "fast" };
        html += &format!(
            "<tr><th title=\"{}\" style=\"--hue: {}\">{}</th>{reaches}{slowest}<td class=\"{reached_class}\">{} / {}</td></tr>",
            esc(&name(&r.instance_id)),
            hue(&r.instance_id),
            label(&r.instance_id),
            r.reached_by,
            r.probed_by,
        );
    }
    html += "</table>";
    html += &rest_line(
        unread.len() - shown_unread,
        rows.get(shown_rows..).unwrap_or(&[]),
    );
    if let Some(gone) = gone_line(&s.members) {
        html += &gone;
    }
    html
}

/// How a member's square reads: red when a call from it or to it fails, else by its
/// median call. Not by its slowest: of 199 calls one is slow on any busy network, and
/// a strip all amber tells nothing; the slowest lead the worst rows instead.
fn square_class(r: &RowSummary) -> &'static str {
    if r.fails() > 0 || r.missed_by() > 0 {
        "fail"
    } else {
        r.median_rtt_ms.map_or("none", rtt_class)
    }
}

fn row_title(name: &str, r: &RowSummary) -> String {
    let rtt = match (r.median_rtt_ms, r.worst_rtt_ms) {
        (Some(median), Some(worst)) => format!(", median {median:.2} ms, slowest {worst:.2} ms"),
        _ => String::new(),
    };
    format!(
        "{name}: reaches {} of {}{rtt}; reached by {} of {}",
        r.reaches, r.probed, r.reached_by, r.probed_by
    )
}

/// The rows not drawn, in one line: how many are fine, how many are not.
fn rest_line(unread: usize, rest: &[RowSummary]) -> String {
    if unread == 0 && rest.is_empty() {
        return String::new();
    }
    let fine: Vec<&RowSummary> = rest
        .iter()
        .filter(|r| r.fails() == 0 && r.missed_by() == 0)
        .collect();
    let slowest = fine
        .iter()
        .filter_map(|r| r.worst_rtt_ms)
        .fold(None, |worst: Option<f64>, rtt| {
            Some(worst.map_or(rtt, |w| w.max(rtt)))
        });
    let mut parts = vec![match slowest {
        Some(rtt) => format!(
            "{} fine (every call answered, the slowest {rtt:.2} ms)",
            fine.len()
        ),
        None => format!("{} fine", fine.len()),
    }];
    let failing = rest.len() - fine.len();
    if failing > 0 {
        parts.push(format!("{failing} with failed calls"));
    }
    if unread > 0 {
        parts.push(format!("{unread} not read"));
    }
    format!(
        "<p class=\"muted\">and {} more rows: {}; every row is in <a href=\"/api/status\">/api/status</a>'s mesh_summary.</p>",
        rest.len() + unread,
        parts.join(", ")
    )
}

/// Dead and departed members in one line, the most recent few named.
fn gone_line(members: &[MemberView]) -> Option<String> {
    let mut gone: Vec<&MemberView> = members.iter().filter(|m| !is_current(m)).collect();
    if gone.is_empty() {
        return None;
    }
    gone.sort_by_key(|m| m.last_seen_ms_ago);
    let count = |state: State, restarted: bool| {
        gone.iter()
            .filter(|m| m.state == state && m.restarted == restarted)
            .count()
    };
    let restarted = gone.iter().filter(|m| m.restarted).count();
    let counts: Vec<String> = [
        (count(State::Dead, false), "stopped answering"),
        (count(State::Left, false), "left"),
        (restarted, "restarted as a new instance"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let recent: Vec<String> = gone
        .iter()
        .take(GONE_NAMED)
        .map(|m| {
            format!(
                "<span title=\"{}\">{}</span> ({}, seen {})",
                esc(&m.instance_id),
                esc(&m.name),
                m.state.as_str(),
                ago(m.last_seen_ms_ago)
            )
        })
        .collect();
    Some(format!(
        "<p class=\"gone-line\">Gone, until forgotten: {}; the latest {}.</p>",
        counts.join(", "),
        recent.join(", ")
    ))
}
