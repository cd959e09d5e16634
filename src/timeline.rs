//! The cluster's timeline: each replica keeps the last events it saw; this task collects
//! the other members' (every few seconds, in the background) so any replica can show one
//! merged timeline without a request ever waiting on a peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

use crate::app::Node;
use crate::membership::{State, TimelineEvent};

const EVERY: Duration = Duration::from_secs(3);
/// Events shown in the merged timeline.
const MERGED: usize = 100;

pub async fn run(node: Arc<Node>) {
    loop {
        tokio::time::sleep(EVERY).await;
        let snapshot = node.membership.snapshot();
        let calls = snapshot
            .members
            .iter()
            .filter(|m| m.state == State::Alive)
            .map(|m| {
                let node = node.clone();
                async move {
                    let body = node
                        .client
                        .get(m.identity.addr, "/api/timeline")
                        .await
                        .ok()?;
                    let events: Vec<TimelineEvent> = serde_json::from_slice(&body).ok()?;
                    Some((m.identity.instance_id.clone(), events))
                }
            });
        let gathered: HashMap<String, Vec<TimelineEvent>> = join_all(calls)
            .await
            .into_iter()
            .flatten()
            .map(|(id, mut events)| {
                events.truncate(MERGED);
                (id, events)
            })
            .collect();
        if let Ok(mut peers) = node.peer_timelines.lock() {
            *peers = gathered;
        }
    }
}

/// This replica's events and the members' it last collected, newest last.
pub fn merged(node: &Node) -> Vec<TimelineEvent> {
    let mut all: Vec<TimelineEvent> = node
        .membership
        .timeline()
        .into_iter()
        .map(|mut e| {
            e.by = Some(node.me.id().to_string());
            e
        })
        .collect();
    if let Ok(peers) = node.peer_timelines.lock() {
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
