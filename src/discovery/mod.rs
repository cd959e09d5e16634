//! Discovery: sources turn their evidence into candidate addresses; one verifier decides
//! what each candidate is and is the only writer of members into the table.
//!
//! Adding a method means adding a file here that sends [`Candidate`]s and fills in its
//! [`Report`].

pub mod announce;
pub mod dns;
pub mod registry;
pub mod scan;
pub mod seed;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use crate::app::Node;
use crate::client::CallError;
use crate::membership::{Admission, Snapshot, State};
use crate::verify::{Verdict, verify};
use crate::wire::Method;

/// An address some source thinks may be a replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub method: Method,
    /// The instance the source claims lives there (a registry row): anyone else answering
    /// makes the claim stale, and nobody is admitted on its strength.
    pub expect: Option<String>,
}

impl Candidate {
    pub fn new(addr: SocketAddr, method: Method) -> Candidate {
        Candidate {
            addr,
            method,
            expect: None,
        }
    }
}

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
    /// Other replicas this source says exist, verified or not (registry rows).
    pub claimed: usize,
}

/// One observation behind a method's status: a registry row, a DNS name, a seed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    pub subject: String,
    /// works, partial, fails or off, like the methods themselves.
    pub status: &'static str,
    pub detail: String,
}

/// How long sources that judge their own candidates wait for verification to finish
/// (each verification is one call bounded by the probe timeout).
pub const SETTLE: Duration = Duration::from_millis(1500);

/// What became of a set of addresses one name or seed stands for: all replicas (a peer
/// list), a load-balanced address (answers as several replicas), or nothing useful.
pub fn classify(
    answers: &[SocketAddr],
    snapshot: &Snapshot,
    me: SocketAddr,
) -> (&'static str, String) {
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
        (0, _) => ("fails", "no addresses".into()),
        (n, r) if r == n && r >= 2 => ("works", format!("{list}: lists {r} replicas")),
        (1, 1) if answers[0] == me => ("partial", format!("{list}: only this replica")),
        (1, 1) => ("works", format!("{list}: a replica")),
        _ if !balanced.is_empty() => (
            "partial",
            format!(
                "{list}: load-balanced address, answered as {} replica(s) so far; not a peer list",
                balanced.iter().max().copied().unwrap_or(0)
            ),
        ),
        (n, r) if r > 0 => (
            "partial",
            format!("{list}: {r} of {n} addresses are replicas"),
        ),
        _ if foreign > 0 => ("fails", format!("{list}: not this service (foreign)")),
        _ => ("fails", format!("{list}: no replica answered")),
    }
}

/// Every source's report, keyed by method.
#[derive(Debug, Default)]
pub struct Reports(Mutex<BTreeMap<Method, Report>>);

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

/// Candidates waiting for verification; sources block when it is full, hellos are refused.
pub const QUEUE: usize = 4096;
/// Verifications in flight at once: each is one short HTTP call.
const VERIFY_CONCURRENCY: usize = 64;

/// Candidates for an address already being verified, kept to credit their sources too.
const MAX_WAITING: usize = 8;

/// Verifies candidates until the channel closes.
pub async fn run_verifier(node: Arc<Node>, mut candidates: mpsc::Receiver<Candidate>) {
    // Address being verified → candidates for it that arrived meanwhile.
    let in_flight: Arc<Mutex<HashMap<SocketAddr, Vec<Candidate>>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(VERIFY_CONCURRENCY));
    while let Some(candidate) = candidates.recv().await {
        if candidate.addr == node.me.addr() {
            continue;
        }
        // A live member at that address is already verified; the prober keeps it honest.
        if node.membership.tag_source(
            candidate.addr,
            candidate.method,
            candidate.expect.as_deref(),
        ) {
            continue;
        }
        let first = match in_flight.lock() {
            Ok(mut map) => match map.get_mut(&candidate.addr) {
                Some(waiting) => {
                    if waiting.len() < MAX_WAITING {
                        waiting.push(candidate.clone());
                    }
                    false
                }
                None => {
                    map.insert(candidate.addr, Vec::new());
                    true
                }
            },
            Err(_) => false,
        };
        if !first {
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let node = node.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let addr = candidate.addr;
            verify_and_apply(&node, candidate).await;
            let waiting = in_flight
                .lock()
                .ok()
                .and_then(|mut map| map.remove(&addr))
                .unwrap_or_default();
            // Sources that found the same address while it was being verified.
            for other in waiting {
                node.membership
                    .tag_source(other.addr, other.method, other.expect.as_deref());
            }
            drop(permit);
        });
    }
}

/// Verifies one candidate and records what it is; whether it was a member.
pub async fn verify_and_apply(node: &Arc<Node>, candidate: Candidate) -> bool {
    let verdict = verify(node, candidate.addr).await;
    if matches!(verdict, Verdict::Alias(_)) {
        sample_alias(node, candidate.addr).await;
    }
    let member = matches!(verdict, Verdict::Member(..));
    apply(node, candidate, verdict);
    member
}

fn apply(node: &Arc<Node>, candidate: Candidate, verdict: Verdict) {
    match verdict {
        Verdict::Member(identity, _)
            if candidate
                .expect
                .as_ref()
                .is_some_and(|id| *id != identity.instance_id) =>
        {
            tracing::debug!(addr = %candidate.addr, answered_as = %identity.instance_id,
                claimed = candidate.expect.as_deref().unwrap_or(""), "stale claim: the address answers as another instance");
        }
        Verdict::Member(identity, rtt_ms) => {
            let addr = identity.addr;
            if node.membership.admit(identity, candidate.method, rtt_ms) == Admission::New {
                announce(node.clone(), addr);
            }
        }
        Verdict::Alias(identity) => {
            let claimed = identity.addr;
            node.membership.alias(candidate.addr, identity.instance_id);
            // The replica behind the alias says where it lives: verify that directly, if it
            // is where replicas can live. It is credited as an announcement, not to the
            // source that found the alias (a load-balanced name does not list the replicas).
            if let Err(why) = node.announcements.submit(claimed) {
                tracing::debug!(%claimed, reason = %why, "alias follow-up not verified");
            }
        }
        Verdict::Foreign(reason) => node.membership.foreign(candidate.addr, reason),
        Verdict::Myself => {}
        Verdict::Unreachable(why) => {
            tracing::debug!(addr = %candidate.addr, %why, "candidate unreachable");
        }
    }
}

/// Calls made to an alias in a row: a load balancer shows itself by answering as
/// different replicas on different calls.
const ALIAS_SAMPLES: usize = 3;

/// Asks an alias again, recording every replica it answers as.
async fn sample_alias(node: &Node, addr: SocketAddr) {
    for _ in 1..ALIAS_SAMPLES {
        match crate::verify::ask(node, addr).await {
            Ok(reply) if reply.identity.service == node.me.service() => {
                node.membership.alias(addr, reply.identity.instance_id);
            }
            _ => return,
        }
    }
}

/// Tells a newly admitted member about us, so it need not wait for its own discovery.
/// A busy member (its announcement queue full, say under a flood of fake hellos) is asked
/// again a few times, a little later each time.
fn announce(node: Arc<Node>, addr: SocketAddr) {
    tokio::spawn(async move {
        let mut pause = Duration::from_millis(250);
        for _ in 0..HELLO_TRIES {
            match node
                .client
                .tell(addr, "/api/hello", &node.me.identity())
                .await
            {
                Err(CallError::Status(429 | 503)) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "hello not accepted");
                    return;
                }
                Ok(_) => return,
            }
        }
    });
}

/// Hellos sent to a busy member before leaving it to its own discovery.
const HELLO_TRIES: usize = 5;
