//! The cluster's timeline: each replica keeps the last events it saw; this task collects
//! the other members' (every few seconds, in the background) so any replica can show one
//! merged timeline without a request ever waiting on a peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;

use crate::client::PeerClient;
use crate::membership::{Membership, State};
use crate::wire::TimelineEvent;
use crate::wire::{is_display_text, is_instance_id};

const EVERY: Duration = Duration::from_secs(3);
/// Events shown in the merged timeline.
const MERGED: usize = 100;
/// Events taken from one peer: enough for its story, too few to crowd out the others'.
pub const PER_PEER: usize = 20;

/// A peer's events as this replica will show them: only well-formed ones, none dated
/// after this replica's own clock (a peer's clock, or a liar, cannot pin its events to
/// the top), short texts, and the newest [`PER_PEER`] only.
fn from_a_peer(events: Vec<TimelineEvent>, now: SystemTime) -> Vec<TimelineEvent> {
    let mut kept: Vec<(SystemTime, TimelineEvent)> = events
        .into_iter()
        .filter_map(|mut e| {
            let at = humantime::parse_rfc3339_weak(&e.at).ok()?;
            let at = at.min(now);
            e.at = humantime::format_rfc3339_millis(at).to_string();
            if !is_display_text(&e.kind) || e.kind.len() > 32 {
                return None;
            }
            e.detail = clip_text(&e.detail, 200);
            e.name = e.name.filter(|n| is_display_text(n));
            e.instance_id = e.instance_id.filter(|id| is_instance_id(id));
            Some((at, e))
        })
        .collect();
    kept.sort_by_key(|(at, _)| *at);
    let skip = kept.len().saturating_sub(PER_PEER);
    kept.into_iter().skip(skip).map(|(_, e)| e).collect()
}

fn clip_text(s: &str, chars: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(chars).collect()
}

/// Other members' timelines, as last collected (instance id → events).
#[derive(Clone, Default)]
pub struct PeerTimelines(Arc<Mutex<HashMap<String, Vec<TimelineEvent>>>>);

/// Collects the alive members' timelines every few seconds.
pub async fn run(peers: PeerTimelines, membership: Membership, client: PeerClient) {
    loop {
        tokio::time::sleep(EVERY).await;
        let snapshot = membership.snapshot();
        let calls = snapshot
            .members
            .iter()
            .filter(|m| m.state == State::Alive)
            .map(|m| {
                let client = client.clone();
                async move {
                    let body = client.get(m.identity.addr, "/api/timeline").await.ok()?;
                    let events: Vec<TimelineEvent> = serde_json::from_slice(&body).ok()?;
                    Some((m.identity.instance_id.clone(), events))
                }
            });
        let now = SystemTime::now();
        let gathered: HashMap<String, Vec<TimelineEvent>> = join_all(calls)
            .await
            .into_iter()
            .flatten()
            .map(|(id, events)| (id, from_a_peer(events, now)))
            .collect();
        if let Ok(mut kept) = peers.0.lock() {
            *kept = gathered;
        }
    }
}

/// This replica's events (seen by `me`) and the members' it last collected, newest last.
pub fn merged(own: Vec<TimelineEvent>, me: &str, peers: &PeerTimelines) -> Vec<TimelineEvent> {
    let mut all: Vec<TimelineEvent> = own
        .into_iter()
        .map(|mut e| {
            e.by = Some(me.to_string());
            e
        })
        .collect();
    if let Ok(peers) = peers.0.lock() {
        for (by, events) in peers.iter() {
            all.extend(events.iter().cloned().map(|mut e| {
                e.by = Some(by.clone());
                e
            }));
        }
    }
    // RFC 3339 times in UTC sort as text.
    all.sort_by(|a, b| a.at.cmp(&b.at));
    let skip = all.len().saturating_sub(MERGED);
    all.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: &str) -> TimelineEvent {
        TimelineEvent {
            at: at.into(),
            kind: "dead".into(),
            instance_id: Some("01A".into()),
            name: Some("a".into()),
            addr: None,
            detail: "x".repeat(1000),
            by: None,
        }
    }

    #[test]
    fn a_peer_cannot_date_events_in_the_future_or_crowd_the_timeline() {
        let now = humantime::parse_rfc3339("2026-11-22T12:00:00Z").unwrap();
        let mut events = vec![event("9999-12-31T23:59:59Z"); 500];
        events.push(event("2026-11-22T11:59:00Z"));
        events.push(event("not a time"));
        let kept = from_a_peer(events, now);
        assert_eq!(kept.len(), PER_PEER);
        assert!(
            kept.iter()
                .all(|e| e.at.as_str() <= "2026-11-22T12:00:00.000Z")
        );
        assert!(kept.iter().all(|e| e.detail.chars().count() <= 200));
        assert_eq!(kept[0].at, "2026-11-22T12:00:00.000Z", "clamped to now");
    }
}
