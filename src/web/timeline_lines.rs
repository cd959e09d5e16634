//! The merged timeline as the page reads it: one line per happening. Every replica reports
//! what it saw, so a replica that dies is reported dead by each of the others, a few
//! seconds apart; those reports make one line that names everyone who saw it.

use std::time::{Duration, SystemTime};

use super::status::Tone;
use crate::wire::TimelineEvent;

/// Sightings of the same happening further apart than this are separate lines. Replicas
/// notice a death within about a probe interval of each other, and a join within a scan.
const SAME_HAPPENING: Duration = Duration::from_secs(10);

/// One happening: the first sighting, and every replica that saw it (instance ids).
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    pub first: TimelineEvent,
    /// When it was first seen, when the time reads as one.
    pub at: Option<SystemTime>,
    pub by: Vec<String>,
}

impl Line {
    /// How long ago it was first seen, in milliseconds.
    pub fn ms_ago(&self, now: SystemTime) -> Option<u64> {
        let at = self.at?;
        Some(now.duration_since(at).unwrap_or_default().as_millis() as u64)
    }

    pub fn tone(&self) -> Tone {
        kind_tone(&self.first.kind)
    }

    /// Whether `event`, seen at `at`, is another sighting of this happening.
    fn takes(&self, event: &TimelineEvent, at: Option<SystemTime>) -> bool {
        let close = match (self.at, at) {
            (Some(first), Some(at)) => {
                at.duration_since(first).unwrap_or_default() <= SAME_HAPPENING
            }
            _ => false,
        };
        // One replica's two sightings are two happenings (a member that flaps).
        let new_witness = event.by.as_ref().is_none_or(|by| !self.by.contains(by));
        close
            && new_witness
            && event.kind == self.first.kind
            && subject(event) == subject(&self.first)
    }
}

/// What an event is about: the member, else the address, else its words.
fn subject(e: &TimelineEvent) -> String {
    e.instance_id
        .clone()
        .or_else(|| e.addr.map(|a| a.to_string()))
        .or_else(|| e.name.clone())
        .unwrap_or_else(|| e.detail.clone())
}

/// Good news, trouble, a failure, or neither. Peers may send kinds this build does not
/// know: shown plainly.
pub fn kind_tone(kind: &str) -> Tone {
    match kind {
        "joined" | "alive" => Tone::Good,
        "suspect" | "conflict" | "registry" | "missed" => Tone::Warn,
        "dead" => Tone::Bad,
        _ => Tone::Neutral,
    }
}

/// The timeline's events (any order) as lines, newest first.
pub fn lines(events: &[TimelineEvent]) -> Vec<Line> {
    let mut timed: Vec<(Option<SystemTime>, &TimelineEvent)> = events
        .iter()
        .map(|e| (humantime::parse_rfc3339_weak(&e.at).ok(), e))
        .collect();
    timed.sort_by_key(|(at, _)| *at);
    let mut lines: Vec<Line> = Vec::new();
    for (at, event) in timed {
        let by = event.by.iter().cloned();
        match lines.iter_mut().rev().find(|l| l.takes(event, at)) {
            Some(line) => line.by.extend(by),
            None => lines.push(Line {
                first: event.clone(),
                at,
                by: by.collect(),
            }),
        }
    }
    lines.reverse();
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(at: &str, kind: &str, id: &str, by: &str) -> TimelineEvent {
        TimelineEvent {
            at: at.into(),
            kind: kind.into(),
            instance_id: Some(id.into()),
            name: Some(format!("name-{id}")),
            addr: None,
            detail: format!("as {by} saw it"),
            by: Some(by.into()),
        }
    }

    fn summary(lines: &[Line]) -> Vec<(String, String, Vec<String>)> {
        lines
            .iter()
            .map(|l| {
                (
                    l.first.kind.clone(),
                    l.first.instance_id.clone().unwrap_or_default(),
                    l.by.clone(),
                )
            })
            .collect()
    }

    fn line(kind: &str, id: &str, by: &[&str]) -> (String, String, Vec<String>) {
        (
            kind.into(),
            id.into(),
            by.iter().map(|b| b.to_string()).collect(),
        )
    }

    #[test]
    fn a_death_seen_by_three_replicas_is_one_line() {
        let events = [
            seen("2026-11-22T10:00:05.100Z", "dead", "C", "B"),
            seen("2026-11-22T10:00:04.000Z", "dead", "C", "A"),
            seen("2026-11-22T10:00:00.000Z", "joined", "D", "A"),
            seen("2026-11-22T10:00:06.900Z", "dead", "C", "D"),
        ];
        let got = lines(&events);
        assert_eq!(
            summary(&got),
            [
                line("dead", "C", &["A", "B", "D"]),
                line("joined", "D", &["A"])
            ]
        );
        // The first sighting stands for the line: its time and its words.
        assert_eq!(got[0].first.at, "2026-11-22T10:00:04.000Z");
        assert_eq!(got[0].first.detail, "as A saw it");
    }

    #[test]
    fn other_kinds_other_members_and_later_times_are_other_lines() {
        let events = [
            seen("2026-11-22T10:00:00Z", "suspect", "C", "A"),
            seen("2026-11-22T10:00:01Z", "dead", "C", "B"),
            seen("2026-11-22T10:00:02Z", "dead", "E", "A"),
            seen("2026-11-22T10:00:30Z", "dead", "C", "A"),
        ];
        assert_eq!(
            summary(&lines(&events)),
            [
                line("dead", "C", &["A"]),
                line("dead", "E", &["A"]),
                line("dead", "C", &["B"]),
                line("suspect", "C", &["A"]),
            ]
        );
    }

    #[test]
    fn one_replica_seeing_it_twice_is_two_happenings() {
        let events = [
            seen("2026-11-22T10:00:00Z", "suspect", "C", "A"),
            seen("2026-11-22T10:00:02Z", "suspect", "C", "A"),
        ];
        assert_eq!(lines(&events).len(), 2);
    }

    #[test]
    fn events_about_an_address_or_nothing_in_particular() {
        let mut foreign = seen("2026-11-22T10:00:00Z", "foreign", "X", "A");
        foreign.instance_id = None;
        foreign.addr = Some("127.0.0.9:80".parse().unwrap());
        let mut also = foreign.clone();
        also.by = Some("B".into());
        let mut outage = seen("2026-11-22T10:00:01Z", "registry", "X", "A");
        outage.instance_id = None;
        outage.name = None;
        outage.detail = "database unreachable".into();
        let got = lines(&[foreign, also, outage]);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].by, ["A", "B"]);
        assert_eq!(got[0].first.kind, "registry");
    }

    #[test]
    fn a_time_that_does_not_read_stays_its_own_line() {
        let events = [
            seen("yesterday", "dead", "C", "A"),
            seen("yesterday", "dead", "C", "B"),
        ];
        let got = lines(&events);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].ms_ago(SystemTime::now()), None);
    }

    #[test]
    fn relative_to_now() {
        let got = lines(&[seen("2026-11-22T10:00:00Z", "dead", "C", "A")]);
        let now = humantime::parse_rfc3339("2026-11-22T10:00:12Z").unwrap();
        assert_eq!(got[0].ms_ago(now), Some(12_000));
        // A clock behind the event's: just now, not a negative age.
        let before = humantime::parse_rfc3339("2026-11-22T09:59:00Z").unwrap();
        assert_eq!(got[0].ms_ago(before), Some(0));
    }

    #[test]
    fn tones() {
        assert_eq!(kind_tone("dead"), Tone::Bad);
        assert_eq!(kind_tone("left"), Tone::Neutral);
        assert_eq!(kind_tone("joined"), Tone::Good);
        assert_eq!(kind_tone("suspect"), Tone::Warn);
        assert_eq!(kind_tone("something new"), Tone::Neutral);
    }
}
