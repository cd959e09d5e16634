//! The mesh of a large cluster, one line per member instead of one row of N cells: N rows
//! of N cells grow as N² (about 20 MB of `/api/status` at 512 members), and nobody reads
//! 40,000 cells. Above [`FULL_VIEW_MAX`] members, `/api/status` keeps this replica's own
//! row in `mesh` and one [`RowSummary`] per published row in `mesh_summary`; the page
//! draws a heat strip and the worst rows from the same summaries.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::membership::State;
use crate::wire::MeshCell;

/// The most members (this replica, the current ones and those not yet forgotten) shown
/// in full: a card each, and every cell of the N×N matrix. A cell reads "0.40 ms", about
/// 60 px wide, so 12 columns and the row labels fill the page's 980 px column; past that
/// the matrix scrolls on a desktop too, and a rolling deploy of 7 pods (7 new, 7 gone)
/// already crosses it.
pub const FULL_VIEW_MAX: usize = 12;

/// Members a row summary names as not reached: enough to point at the culprit; the
/// count says how many more.
pub const FAILING_NAMED: usize = 3;

/// Whether `members` (this replica included) is past what is shown in full.
pub fn is_large(members: usize) -> bool {
    members > FULL_VIEW_MAX
}

/// One member's published row, reduced to what a reader looks for: whom it cannot
/// reach, and how slow its slowest call is. Only current members (alive and suspect)
/// count: calls to dead and departed ones failing is history, not a fault.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowSummary {
    pub instance_id: String,
    /// Current members its row has a probe of (itself left out).
    pub probed: usize,
    /// Of those, the ones whose last probe answered.
    pub reaches: usize,
    /// Up to [`FAILING_NAMED`] of the current members it does not reach, by instance id.
    pub failing: Vec<String>,
    pub worst_rtt_ms: Option<f64>,
    /// The member its slowest answered call went to.
    pub worst_rtt_to: Option<String>,
    pub median_rtt_ms: Option<f64>,
    /// Published rows that have a probe of this member.
    pub probed_by: usize,
    /// Of those, the rows whose last probe of it answered.
    pub reached_by: usize,
}

impl RowSummary {
    /// Current members it does not reach.
    pub fn fails(&self) -> usize {
        self.probed - self.reaches
    }

    /// Rows that do not reach it.
    pub fn missed_by(&self) -> usize {
        self.probed_by - self.reached_by
    }
}

/// What `/api/status` says of the rows it leaves out.
#[derive(Debug, Clone, Serialize)]
pub struct MeshSummary {
    /// Published rows not in `mesh` (every alive member's but this replica's).
    pub rows_left_out: usize,
    /// One per published row, the worst first (see [`worst_first`]).
    pub rows: Vec<RowSummary>,
}

/// The members a summary is about: every member's id and state, this replica included.
pub type Members<'a> = [(&'a str, State)];

/// A row as it was published: whose, and its cells by the instance id probed.
pub type Row<'a> = (&'a str, &'a BTreeMap<String, MeshCell>);

/// `/api/status`'s `mesh` and `mesh_summary` from this replica's own row and the other
/// alive members' published rows: every row, copied, up to [`FULL_VIEW_MAX`] members; past
/// it, the own row and a summary of each, without copying the others' N² cells.
pub fn mesh_fields(
    members: &Members,
    own: (&str, BTreeMap<String, MeshCell>),
    others: &[Row],
) -> (
    BTreeMap<String, BTreeMap<String, MeshCell>>,
    Option<MeshSummary>,
) {
    let (own_id, own_row) = own;
    if !is_large(members.len()) {
        let mut mesh: BTreeMap<String, BTreeMap<String, MeshCell>> = others
            .iter()
            .map(|(id, row)| (id.to_string(), (*row).clone()))
            .collect();
        mesh.insert(own_id.to_string(), own_row);
        return (mesh, None);
    }
    let summary = {
        let all: Vec<Row> = std::iter::once((own_id, &own_row))
            .chain(others.iter().copied().filter(|(id, _)| *id != own_id))
            .collect();
        MeshSummary {
            rows_left_out: all.len() - 1,
            rows: summarize(members, &all),
        }
    };
    let mesh = [(own_id.to_string(), own_row)].into_iter().collect();
    (mesh, Some(summary))
}

/// The summaries of `rows`, the worst first.
pub fn summarize(members: &Members, rows: &[Row]) -> Vec<RowSummary> {
    let current: BTreeMap<&str, ()> = members
        .iter()
        .filter(|(_, state)| matches!(state, State::Alive | State::Suspect))
        .map(|(id, _)| (*id, ()))
        .collect();
    // Each current member's column: (rows that probe it, rows that reach it).
    let mut columns: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut summaries: Vec<RowSummary> = rows
        .iter()
        .map(|(from, row)| {
            let mut rtts: Vec<(f64, &str)> = Vec::new();
            let mut failing = Vec::new();
            let mut probed = 0;
            for (to, cell) in *row {
                if to == from || !current.contains_key(to.as_str()) {
                    continue;
                }
                probed += 1;
                let column = columns.entry(to.as_str()).or_default();
                column.0 += 1;
                if cell.ok {
                    column.1 += 1;
                    rtts.push((cell.rtt_ms.unwrap_or(0.0), to.as_str()));
                } else {
                    failing.push(to.as_str());
                }
            }
            rtts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let worst = rtts.last();
            RowSummary {
                instance_id: from.to_string(),
                probed,
                reaches: rtts.len(),
                failing: failing
                    .iter()
                    .take(FAILING_NAMED)
                    .map(|id| id.to_string())
                    .collect(),
                worst_rtt_ms: worst.map(|(rtt, _)| *rtt),
                worst_rtt_to: worst.map(|(_, to)| to.to_string()),
                median_rtt_ms: rtts.get(rtts.len() / 2).map(|(rtt, _)| *rtt),
                probed_by: 0,
                reached_by: 0,
            }
        })
        .collect();
    for row in &mut summaries {
        if let Some((probed_by, reached_by)) = columns.get(row.instance_id.as_str()) {
            row.probed_by = *probed_by;
            row.reached_by = *reached_by;
        }
    }
    worst_first(&mut summaries);
    summaries
}

/// Rows that fail calls first (the most failures first), then rows nobody reaches, then
/// the slowest; ties in instance-id order, so every replica lists them alike.
pub fn worst_first(rows: &mut [RowSummary]) {
    rows.sort_by(|a, b| {
        b.fails()
            .cmp(&a.fails())
            .then(b.missed_by().cmp(&a.missed_by()))
            .then(
                b.worst_rtt_ms
                    .unwrap_or(0.0)
                    .total_cmp(&a.worst_rtt_ms.unwrap_or(0.0)),
            )
            .then(a.instance_id.cmp(&b.instance_id))
    });
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::web::status::MemberView;

    /// A member view of `id`, named `pod-<id>`.
    pub fn member(id: &str, state: State) -> MemberView {
        MemberView {
            instance_id: id.into(),
            name: format!("checkout-api-768976868d-{id}"),
            addr: "127.0.0.2:8080".parse().expect("an address"),
            is_self: false,
            state,
            sources: vec![crate::wire::Method::Scan],
            rtt_ms: Some(0.4),
            last_seen_ms_ago: 300,
            system: Default::default(),
            error: None,
            restarted: false,
        }
    }

    pub fn cell(ok: bool, rtt_ms: f64) -> MeshCell {
        MeshCell {
            ok,
            rtt_ms: ok.then_some(rtt_ms),
            last_ok_ms_ago: Some(300),
            error: (!ok).then(|| "connection refused".into()),
        }
    }

    #[test]
    fn a_row_counts_current_members_only_and_names_whom_it_misses() {
        let members = [
            member("a", State::Alive),
            member("b", State::Alive),
            member("c", State::Alive),
            member("d", State::Dead),
        ];
        let row = |cells: &[(&str, bool, f64)]| -> BTreeMap<String, MeshCell> {
            cells
                .iter()
                .map(|(to, ok, rtt)| (to.to_string(), cell(*ok, *rtt)))
                .collect()
        };
        let mesh: BTreeMap<String, BTreeMap<String, MeshCell>> = [
            // a reaches everyone; its calls to the dead d fail, which is history.
            (
                "a",
                row(&[
                    ("a", true, 0.0),
                    ("b", true, 0.3),
                    ("c", true, 2.5),
                    ("d", false, 0.0),
                ]),
            ),
            ("b", row(&[("a", true, 0.2), ("c", false, 0.0)])),
            ("c", row(&[("a", true, 0.9), ("b", true, 0.1)])),
        ]
        .into_iter()
        .map(|(id, r)| (id.to_string(), r))
        .collect();
        let rows: Vec<Row> = mesh.iter().map(|(id, r)| (id.as_str(), r)).collect();
        let members: Vec<(&str, State)> = members
            .iter()
            .map(|m| (m.instance_id.as_str(), m.state))
            .collect();
        let rows = summarize(&members, &rows);
        let order: Vec<&str> = rows.iter().map(|r| r.instance_id.as_str()).collect();
        // b fails a call; c is missed by b; a is the slowest of the rest.
        assert_eq!(order, ["b", "c", "a"]);
        assert_eq!((rows[0].probed, rows[0].reaches), (2, 1));
        assert_eq!(rows[0].failing, ["c"]);
        assert_eq!((rows[1].probed_by, rows[1].reached_by), (2, 1));
        assert_eq!((rows[2].probed, rows[2].reaches), (2, 2));
        assert_eq!(rows[2].worst_rtt_ms, Some(2.5));
        assert_eq!(rows[2].worst_rtt_to.as_deref(), Some("c"));
        assert!(rows[2].failing.is_empty());
    }
}
