//! What each method says about its own work, and how a set of addresses is judged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::expected::Expected;
use crate::membership::{Snapshot, State};
use crate::verify::fails_proof;
use crate::wire::{Method, MethodStatus};

/// What a source says about its own work, for the discovery report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// `Some(reason)` when the method is switched off.
    pub off: Option<String>,
    pub last_run: Option<Instant>,
    pub duration: Option<Duration>,
    pub detail: String,
    /// The source ran but could not do its job (an error, not an empty result).
    pub failed: bool,
    /// What the source saw, one line each (registry rows, DNS answers, seeds).
    pub evidence: Vec<Evidence>,
    /// Other replicas this source says exist, verified or not (fresh registry rows).
    pub claims: Vec<Claimed>,
    /// Who the platform says should be there (the platform method).
    pub expected: Option<Expected>,
}

/// A replica a registry row says exists.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub instance_id: String,
    pub addr: String,
    /// When the replica last wrote its row.
    pub written: Instant,
}

impl Claimed {
    /// Whether the table knows the replica behind the row is gone: it left, it restarted
    /// as another instance, or it stopped answering and has not written its row since.
    /// (One that still heartbeats but cannot be reached is cut off, not gone.)
    fn is_gone(&self, snapshot: &Snapshot) -> bool {
        snapshot
            .member(&self.instance_id)
            .is_some_and(|m| match m.state {
                State::Left => true,
                State::Dead => m.replaced_by.is_some() || self.written <= m.state_since,
                State::Alive | State::Suspect => false,
            })
    }
}

impl Report {
    /// A method switched off here, and why.
    pub fn off(why: impl Into<String>) -> Report {
        Report {
            off: Some(why.into()),
            ..Report::default()
        }
    }

    /// The replicas the rows say exist, judged on `snapshot` when asked (not when the rows
    /// were read, which may be a round before a death the table already knows of): not
    /// one known gone, nor one that answers and fails the CLUSTER_SECRET proof (counted
    /// as refused).
    pub fn claimed(&self, snapshot: &Snapshot) -> usize {
        self.claims
            .iter()
            .filter(|c| !c.is_gone(snapshot))
            .filter(|c| {
                !snapshot
                    .foreign
                    .iter()
                    .any(|(addr, f)| addr.to_string() == c.addr && fails_proof(&f.reason))
            })
            .count()
    }

    /// The platform's listing, while it still speaks for the platform (see
    /// [`Expected::is_current`]).
    pub fn listing(&self) -> Option<&Expected> {
        self.expected.as_ref().filter(|e| e.is_current(self.failed))
    }

    /// A method that has not finished a round yet.
    pub fn detail(detail: impl Into<String>) -> Report {
        Report {
            detail: detail.into(),
            ..Report::default()
        }
    }
}

/// One observation behind a method's status: a registry row, a DNS name, a seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub subject: String,
    /// works, partial, fails or off, like the methods themselves.
    pub status: MethodStatus,
    pub detail: String,
}

/// What became of a set of addresses one name or seed stands for: all replicas (a peer
/// list), a load-balanced address (answers as several replicas), or nothing useful.
pub fn classify(
    answers: &[SocketAddr],
    snapshot: &Snapshot,
    me: SocketAddr,
) -> (MethodStatus, String) {
    let is_replica = |a: &SocketAddr| {
        *a == me
            || snapshot
                .members
                .iter()
                .any(|m| m.identity.addr == *a && matches!(m.state, State::Alive | State::Suspect))
    };
    let replicas = answers.iter().filter(|a| is_replica(a)).count();
    let balanced: Vec<usize> = answers
        .iter()
        .filter_map(|a| snapshot.aliases.iter().find(|(addr, _)| addr == a))
        .map(|(_, alias)| alias.answered_as.len())
        .collect();
    let foreign = answers
        .iter()
        .filter(|a| snapshot.foreign.iter().any(|(addr, _)| addr == *a))
        .count();
    let list = answers
        .iter()
        .map(|a| a.ip().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    match (answers.len(), replicas) {
        (0, _) => (MethodStatus::Fails, "no addresses".into()),
        (n, r) if r == n && r >= 2 => (MethodStatus::Works, format!("{list}: lists {r} replicas")),
        (1, 1) if answers[0] == me => (MethodStatus::Partial, format!("{list}: only this replica")),
        (1, 1) => (MethodStatus::Works, format!("{list}: a replica")),
        _ if !balanced.is_empty() => (
            MethodStatus::Partial,
            format!(
                "{list}: load-balanced address, answered as {} replica(s) so far; not a peer list",
                balanced.iter().max().copied().unwrap_or(0)
            ),
        ),
        (n, r) if r > 0 => (
            MethodStatus::Partial,
            format!("{list}: {r} of {n} addresses are replicas"),
        ),
        _ if foreign > 0 => (
            MethodStatus::Fails,
            format!("{list}: not this service (foreign)"),
        ),
        _ => (MethodStatus::Fails, format!("{list}: no replica answered")),
    }
}

/// Every source's report, keyed by method.
#[derive(Debug, Clone, Default)]
pub struct Reports(Arc<Mutex<BTreeMap<Method, Report>>>);

impl Reports {
    pub fn set(&self, method: Method, report: Report) {
        if let Ok(mut map) = self.0.lock() {
            map.insert(method, report);
        }
    }

    pub fn all(&self) -> BTreeMap<Method, Report> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}
