//! The page and `/api/status` of large clusters, on synthetic views: what they weigh at
//! 200 and 512 members (with as many gone, as after a rolling deploy), and that the worst
//! rows lead.

use std::collections::BTreeMap;
use std::time::Instant;

use askama::Template;

use super::{IndexPage, Regions};
use crate::membership::State;
use crate::web::mesh_summary::tests::cell;
use crate::web::mesh_summary::{FULL_VIEW_MAX, is_large};
use crate::web::status::{MemberView, MethodView, Status, Tone};
use crate::wire::{Method, MethodStatus, TimelineEvent};

/// What `/api/status` may weigh: a fixed part (the discovery report's lines, the
/// timeline's 100 events, this replica's own row), and a part per member (this replica
/// included, gone ones too: its entry in `members`, its cell in this replica's row, its
/// row's summary, its view hash, a registry row). docs/page.md states these.
pub const STATUS_BYTES_FIXED: usize = 48 * 1024;
pub const STATUS_BYTES_PER_MEMBER: usize = 1024;
/// What the page (and `/page/regions`) may weigh: a fixed part (12 cards, 8 worst rows,
/// 12 lines of evidence a method, 30 timeline lines), and a heat square per member.
pub const PAGE_BYTES_FIXED: usize = 40 * 1024;
pub const PAGE_BYTES_PER_MEMBER: usize = 128;

// The figures docs/page.md states: `/api/status` under 256 KiB at 200 members and 560 KiB
// at 512; the page under 128 KiB at 400 members and 256 KiB at 1,024, well under the
// 4 MiB `/page/regions` takes from another replica.
const _: () = {
    assert!(STATUS_BYTES_FIXED + STATUS_BYTES_PER_MEMBER * 200 <= 256 * 1024);
    assert!(STATUS_BYTES_FIXED + STATUS_BYTES_PER_MEMBER * 512 <= 560 * 1024);
    assert!(PAGE_BYTES_FIXED + PAGE_BYTES_PER_MEMBER * 400 <= 128 * 1024);
    assert!(PAGE_BYTES_FIXED + PAGE_BYTES_PER_MEMBER * 1024 <= 256 * 1024);
};

/// A 26-character id like a ULID, `i` in its tail.
fn id(i: usize) -> String {
    format!("01JQ7ZK3M8X4TYB2N5R6{i:06}")
}

/// A pod name of Kubernetes' full 63 characters.
fn name(i: usize) -> String {
    format!("checkout-api-with-a-long-deployment-name-abcde-768976868d-{i:05}")
}

/// This replica (member 0) and `alive - 1` other alive members, each publishing a row
/// of every member (the gone ones' calls failing), and `gone` dead or departed ones.
/// Rows of the `failing` members fail their calls to member 1, rows 3 to 5 find
/// member 2 slow, and member 6 is slow to reach everyone.
fn large_status(alive: usize, gone: usize, failing: &[usize]) -> Status {
    let member = |i: usize, state: State| MemberView {
        instance_id: id(i),
        name: name(i),
        addr: format!("10.244.{}.{}:8080", i / 250, i % 250 + 2)
            .parse()
            .expect("an address"),
        is_self: i == 0,
        state,
        sources: vec![Method::Scan, Method::Registry],
        rtt_ms: Some(0.4),
        last_seen_ms_ago: 300 + i as u64,
        system: Default::default(),
        error: (state != State::Alive).then(|| "connection refused".to_string()),
        restarted: false,
    };
    let mut members: Vec<MemberView> = (0..alive).map(|i| member(i, State::Alive)).collect();
    members.extend(
        (alive..alive + gone)
            .map(|i| member(i, if i % 2 == 0 { State::Dead } else { State::Left })),
    );
    let mesh: BTreeMap<String, BTreeMap<String, crate::wire::MeshCell>> = (0..alive)
        .map(|from| {
            let row = members
                .iter()
                .enumerate()
                .map(|(to, m)| {
                    let ok = m.state == State::Alive && !(to == 1 && failing.contains(&from));
                    let rtt = match (from, to) {
                        (3..=5, 2) => 7.5,
                        (6, _) => 6.0,
                        _ => 0.4,
                    };
                    (m.instance_id.clone(), cell(ok, rtt))
                })
                .collect();
            (id(from), row)
        })
        .collect();
    let me: crate::wire::Identity = serde_json::from_value(serde_json::json!({
        "instance_id": id(0), "name": name(0), "service": "checkout-api",
        "addr": "10.244.0.2:8080", "version": "0.1.0", "platform": "kubernetes"
    }))
    .expect("an identity");
    let evidence = (1..alive)
        .map(|i| crate::discovery::report::Evidence {
            subject: format!("{} 10.244.{}.{}:8080", id(i), i / 250, i % 250 + 2),
            // One row, late in the list, does not answer.
            status: if i == alive - 2 {
                MethodStatus::Fails
            } else {
                MethodStatus::Works
            },
            detail: "row written 2 s ago; answers as this service".into(),
        })
        .collect();
    let timeline = (0..100)
        .map(|i| TimelineEvent {
            at: format!("2026-11-23T07:{:02}:{:02}.000Z", i / 60, i % 60),
            kind: "joined".into(),
            instance_id: Some(id(i)),
            name: Some(name(i)),
            addr: Some(members[0].addr),
            detail: "found by scan".into(),
            by: Some(id(i % 7)),
        })
        .collect();
    let views = (0..alive)
        .map(|i| (id(i), "3f9a1c2b".to_string()))
        .collect();
    Status {
        verdict: "Replicas can call each other directly.".into(),
        verdict_tone: Tone::Good,
        membership: "by service name only",
        draining: false,
        relay: Default::default(),
        me,
        members,
        foreign: vec![],
        aliases: vec![],
        discovery: vec![MethodView {
            method: Method::Registry,
            status: MethodStatus::Works,
            found: alive - 1,
            last_run_ms_ago: Some(800),
            duration_ms: Some(12),
            detail: format!("{} rows", alive - 1),
            evidence,
            claimed: alive - 1,
        }],
        expected_replicas: Some(alive as u32),
        expected_from: None,
        not_found: vec![],
        mesh,
        mesh_summary: None,
        view_hash: "3f9a1c2b".into(),
        views,
        converged: true,
        timeline,
        via_load_balancer: None,
    }
}

fn page_of(status: Status) -> IndexPage {
    IndexPage {
        s: status,
        history: vec![],
    }
}

#[test]
fn status_json_grows_with_the_members_not_their_square() {
    for (alive, gone) in [(200, 0), (200, 200), (512, 0), (512, 512)] {
        let mut status = large_status(alive, gone, &[]);
        let full = serde_json::to_vec(&status).expect("json").len();
        status.summarize_large_mesh();
        let json = serde_json::to_vec(&status).expect("json").len();
        let members = alive + gone;
        let bound = STATUS_BYTES_FIXED + STATUS_BYTES_PER_MEMBER * members;
        println!("{alive} alive, {gone} gone: /api/status {json} bytes (all rows: {full})");
        assert!(
            json < bound,
            "{json} bytes at {members} members, over {bound}"
        );
        let summary = status.mesh_summary.as_ref().expect("a summary");
        assert_eq!(summary.rows.len(), alive);
        assert_eq!(summary.rows_left_out, alive - 1);
        // This replica's own row stays, whole.
        assert_eq!(status.mesh.len(), 1);
        assert_eq!(status.mesh[&id(0)].len(), members);
    }
}

#[test]
fn a_small_cluster_keeps_every_row() {
    let mut status = large_status(FULL_VIEW_MAX, 0, &[]);
    status.summarize_large_mesh();
    assert!(status.mesh_summary.is_none());
    assert_eq!(status.mesh.len(), FULL_VIEW_MAX);
    let json = serde_json::to_value(&status).expect("json");
    assert!(json.get("mesh_summary").is_none(), "the field is absent");
    let html = page_of(status).render().expect("a page");
    assert!(html.contains("<table class=\"mesh\" id=\"mesh\">"));
    assert_eq!(html.matches("<li class=\"member ").count(), FULL_VIEW_MAX);
    assert!(!html.contains("members-note"));
}

#[test]
fn the_page_of_a_large_cluster_is_bounded_and_leads_with_the_worst_rows() {
    for (alive, gone) in [(200, 200), (512, 512)] {
        // Members 150 and 7 fail their calls to member 1.
        let mut status = large_status(alive, gone, &[150, 7]);
        status.summarize_large_mesh();
        let members = alive + gone;
        let began = Instant::now();
        let html = page_of(status).render().expect("a page");
        let took = began.elapsed();
        let mut status = large_status(alive, gone, &[150, 7]);
        status.summarize_large_mesh();
        let regions = Regions {
            page: page_of(status),
            with_hero: true,
        }
        .render()
        .expect("regions");
        println!(
            "{alive} alive, {gone} gone: page {} bytes, regions {} bytes, rendered in {took:?}",
            html.len(),
            regions.len()
        );
        let bound = PAGE_BYTES_FIXED + PAGE_BYTES_PER_MEMBER * members;
        assert!(html.len() < bound, "{} bytes, over {bound}", html.len());
        assert!(
            regions.len() < bound,
            "{} bytes, over {bound}",
            regions.len()
        );
        assert!(is_large(members));

        // Cards: this replica, then the most recently gone; counts for the rest.
        assert_eq!(
            html.matches("<li class=\"member ").count(),
            super::large_view::CARDS_MAX
        );
        let left_out = alive - 1;
        assert!(
            html.contains(&format!("Not drawn: {left_out} alive, ")),
            "the cards say what they leave out"
        );
        assert!(html.contains(&format!("{alive} alive")));

        // One square per current member, this replica's marked.
        let heat = html
            .split("<div class=\"heat\">")
            .nth(1)
            .and_then(|h| h.split("</div>").next())
            .expect("a heat strip");
        assert_eq!(heat.matches("<span").count(), alive);
        assert_eq!(heat.matches("class=\"fast me\"").count(), 1);
        // Member 1, which two rows cannot reach, and those two rows are red; member 6,
        // slow to everyone, is amber; one slow call (rows 3 to 5) leaves a square green.
        assert_eq!(heat.matches("class=\"fail").count(), 3, "{heat}");
        assert_eq!(heat.matches("class=\"slow").count(), 1, "{heat}");
        assert_eq!(heat.matches("class=\"fast").count(), alive - 4, "{heat}");

        // The worst rows: the two failing first, then the slow ones.
        let rows = worst_rows(&html);
        assert_eq!(rows.len(), super::large_view::WORST_ROWS);
        for row in &rows[..2] {
            assert!(row.contains("<td class=\"fail\">"), "{row}");
            assert!(row.contains(&format!("✗ {}", &name(1)[58..])), "{row}");
        }
        // Ties in instance-id order.
        assert!(
            rows[0].contains(&format!("title=\"{}\"", name(7))),
            "{}",
            rows[0]
        );
        assert!(
            rows[1].contains(&format!("title=\"{}\"", name(150))),
            "{}",
            rows[1]
        );
        // Then the member they cannot reach: its own calls answer, two calls to it fail.
        assert!(
            rows[2].contains(&format!("title=\"{}\"", name(1))),
            "{}",
            rows[2]
        );
        assert!(!rows[2].contains("✗"), "{}", rows[2]);
        let reached_by = format!("<td class=\"fail\">{} / {}</td>", alive - 3, alive - 1);
        assert!(rows[2].contains(&reached_by), "{}", rows[2]);
        // Then the slowest calls.
        for row in &rows[3..6] {
            assert!(row.contains("7.50 ms"), "{row}");
        }
        assert!(rows[6].contains("6.00 ms"), "{}", rows[6]);
        assert!(html.contains(&format!(
            "and {} more rows: {} fine",
            alive - super::large_view::WORST_ROWS,
            alive - super::large_view::WORST_ROWS
        )));
        // The registry's rows: 12 lines, the one that fails first, and the count of
        // the rest.
        let report = html
            .split("id=\"discovery\"")
            .nth(1)
            .and_then(|t| t.split("</table>").next())
            .expect("the report");
        assert_eq!(report.matches("<tr class=\"evidence\">").count(), 13);
        let first = report
            .split("<tr class=\"evidence\">")
            .nth(1)
            .expect("a line");
        assert!(first.contains("st-fails"), "{first}");
        assert!(
            report.contains(&format!(
                "and {} more lines ({} works); /api/status has every line",
                alive - 13,
                alive - 13
            )),
            "{report}"
        );
        // The gone in a line, not a row each.
        assert!(html.contains(&format!(
            "Gone, until forgotten: {} stopped answering, {} left",
            gone / 2,
            gone / 2
        )));
    }
}

#[test]
fn suspect_members_lead_the_cards_and_the_worst_rows_without_hiding_failures() {
    let mut status = large_status(200, 0, &[7]);
    // Ten members missed their probes: their rows are not read any more.
    for i in 100..110 {
        status.members[i].state = State::Suspect;
        status.mesh.remove(&id(i));
    }
    status.summarize_large_mesh();
    let html = page_of(status).render().expect("a page");
    let cards: Vec<&str> = html.split("<li class=\"member ").skip(1).collect();
    // This replica and the ten suspect ones: nobody is gone.
    assert_eq!(cards.len(), 11);
    assert!(cards[0].starts_with("state-alive me"), "{}", cards[0]);
    assert!(cards[1..].iter().all(|c| c.starts_with("state-suspect")));
    assert!(html.contains("Not drawn: 189 alive."), "{html}");
    let rows = worst_rows(&html);
    let unread = super::large_view::UNREAD_ROWS;
    for row in &rows[..unread] {
        assert!(row.contains("row not read (suspect)"), "{row}");
    }
    // Member 7's failed call still shows, after them.
    assert!(
        rows[unread].contains(&format!("title=\"{}\"", name(7))),
        "{}",
        rows[unread]
    );
    assert!(
        rows[unread].contains("<td class=\"fail\">"),
        "{}",
        rows[unread]
    );
    assert!(html.contains("6 not read; every row is in"), "{html}");
    let heat = html
        .split("<div class=\"heat\">")
        .nth(1)
        .and_then(|h| h.split("</div>").next())
        .expect("a heat strip");
    assert_eq!(heat.matches("class=\"none\"").count(), 10, "{heat}");
}

/// The rows of the page's worst-rows table, header left out.
fn worst_rows(html: &str) -> Vec<&str> {
    let worst = html
        .split("<table class=\"mesh worst\">")
        .nth(1)
        .and_then(|t| t.split("</table>").next())
        .expect("the worst rows");
    worst
        .split("</tr>")
        .skip(1)
        .filter(|r| !r.is_empty())
        .collect()
}
