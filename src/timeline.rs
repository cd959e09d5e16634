//! The cluster's timeline: each replica keeps the last events it saw; this task collects
//! the other members' (every few seconds, in the background) so any replica can show one
//! merged timeline without a request ever waiting on a peer.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::join_all;
use tokio::sync::broadcast;

use crate::client::PeerClient;
use crate::membership::{MemberEvent, Membership, State, Who};
use crate::rotation::Rotation;
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

/// What a timeline entry is about (peers' entries may carry other words: they are shown,
/// not interpreted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Joined,
    Alive,
    Suspect,
    Dead,
    Left,
    Restarted,
    Conflict,
    Forgotten,
    Foreign,
    Alias,
    /// The registry became unreachable, or reachable again.
    Registry,
    /// This timeline fell behind and skipped changes.
    Missed,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Joined => "joined",
            EventKind::Alive => "alive",
            EventKind::Suspect => "suspect",
            EventKind::Dead => "dead",
            EventKind::Left => "left",
            EventKind::Restarted => "restarted",
            EventKind::Conflict => "conflict",
            EventKind::Forgotten => "forgotten",
            EventKind::Foreign => "foreign",
            EventKind::Alias => "alias",
            EventKind::Registry => "registry",
            EventKind::Missed => "missed",
        }
    }
}

impl From<State> for EventKind {
    fn from(state: State) -> EventKind {
        match state {
            State::Alive => EventKind::Alive,
            State::Suspect => EventKind::Suspect,
            State::Dead => EventKind::Dead,
            State::Left => EventKind::Left,
        }
    }
}

/// The timeline: this replica's own last events, and the other members' as last
/// collected (instance id → events).
#[derive(Clone, Default)]
pub struct Timeline {
    own: Arc<Mutex<VecDeque<TimelineEvent>>>,
    peers: Arc<Mutex<HashMap<String, Vec<TimelineEvent>>>>,
}

/// Events this replica keeps of its own.
const OWN: usize = 100;

impl Timeline {
    fn record(&self, event: TimelineEvent) {
        if let Ok(mut own) = self.own.lock() {
            own.push_back(event);
            while own.len() > OWN {
                own.pop_front();
            }
        }
    }

    /// Something a source ran into (a registry error, say).
    pub fn note(&self, kind: EventKind, detail: String) {
        self.record(entry(kind, None, None, detail));
    }

    /// This replica's own events, oldest first.
    pub fn own(&self) -> Vec<TimelineEvent> {
        self.own
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// This replica's events (seen by `me`) and the members' it last collected, newest
    /// last.
    pub fn merged(&self, me: &str) -> Vec<TimelineEvent> {
        let mut all: Vec<TimelineEvent> = self
            .own()
            .into_iter()
            .map(|mut e| {
                e.by = Some(me.to_string());
                e
            })
            .collect();
        if let Ok(peers) = self.peers.lock() {
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
}

fn entry(
    kind: EventKind,
    who: Option<&Who>,
    addr: Option<SocketAddr>,
    detail: String,
) -> TimelineEvent {
    TimelineEvent {
        at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        kind: kind.as_str().to_string(),
        instance_id: who.map(|w| w.instance_id.clone()),
        name: who.map(|w| w.name.clone()),
        addr: who.map(|w| w.addr).or(addr),
        detail,
        by: None,
    }
}

/// A membership change as the timeline shows it.
pub fn of_event(event: &MemberEvent) -> TimelineEvent {
    match event {
        MemberEvent::Joined { who, sources } => entry(
            EventKind::Joined,
            Some(who),
            None,
            sources
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        MemberEvent::StateChanged { who, to, error, .. } => entry(
            EventKind::from(*to),
            Some(who),
            None,
            error.clone().unwrap_or_default(),
        ),
        MemberEvent::Restarted { who, by, .. } => entry(
            EventKind::Restarted,
            Some(who),
            None,
            format!("address now answers as instance {by}"),
        ),
        MemberEvent::Conflict { who, with } => entry(
            EventKind::Conflict,
            Some(who),
            None,
            format!("address conflict: instance {with} claims the same address"),
        ),
        MemberEvent::Forgotten { who } => {
            entry(EventKind::Forgotten, Some(who), None, String::new())
        }
        MemberEvent::Foreign { addr, reason } => {
            entry(EventKind::Foreign, None, Some(*addr), reason.clone())
        }
        MemberEvent::Alias { addr } => entry(
            EventKind::Alias,
            None,
            Some(*addr),
            "load-balanced address".into(),
        ),
    }
}

/// Records every membership change on the timeline.
pub async fn follow(timeline: Timeline, mut events: broadcast::Receiver<MemberEvent>) {
    loop {
        match events.recv().await {
            Ok(event) => timeline.record(of_event(&event)),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                timeline.note(
                    EventKind::Missed,
                    format!("{missed} membership changes not recorded"),
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Members whose timelines are collected per round: what collecting costs each replica,
/// whatever the cluster's size (each member's is read once per pass).
const COLLECTED_PER_ROUND: usize = 4;

/// Collects alive members' timelines every few seconds, a few at a time in turn.
pub async fn run(timeline: Timeline, membership: Membership, client: PeerClient) {
    let mut rotation = Rotation::default();
    loop {
        tokio::time::sleep(EVERY).await;
        let snapshot = membership.snapshot();
        let alive: Vec<String> = snapshot
            .members
            .iter()
            .filter(|m| m.state == State::Alive)
            .map(|m| m.identity.instance_id.clone())
            .collect();
        let turn = rotation.next(&alive, COLLECTED_PER_ROUND);
        let calls = snapshot
            .members
            .iter()
            .filter(|m| turn.contains(&m.identity.instance_id))
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
        if let Ok(mut kept) = timeline.peers.lock() {
            // The others' last collected stay until their turn comes again, while alive.
            kept.retain(|id, _| alive.contains(id));
            kept.extend(gathered);
        }
    }
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
