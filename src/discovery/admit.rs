//! The verifier stage: the one writer of members into the table. Every candidate is asked
//! who it is; what it turns out to be (member, alias, foreign) is recorded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::announcements::Announcements;
use super::candidate::Candidate;
use crate::client::CallError;
use crate::membership::{Admission, Membership};
use crate::verify::{Verdict, Verifier};

/// What the verifier stage needs: who to ask, where to record, where alias follow-ups go.
#[derive(Clone)]
pub struct Admit {
    pub verifier: Verifier,
    pub membership: Membership,
    /// Alias follow-ups are claims from the network: they wait in the announce queue.
    pub announcements: Announcements,
}

/// Verifications in flight at once: each is one short HTTP call.
const VERIFY_CONCURRENCY: usize = 64;

/// Candidates for an address already being verified, kept to credit their sources too.
const MAX_WAITING: usize = 8;

/// Verifies candidates until the channel closes.
pub async fn run(admit: Admit, mut candidates: mpsc::Receiver<Candidate>) {
    // Address being verified → candidates for it that arrived meanwhile.
    let in_flight: Arc<Mutex<HashMap<SocketAddr, Vec<Candidate>>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(VERIFY_CONCURRENCY));
    while let Some(candidate) = candidates.recv().await {
        if candidate.addr == admit.verifier.me().addr() {
            continue;
        }
        // A live member at that address is already verified; the prober keeps it honest.
        if admit.membership.tag_source(
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
        let admit = admit.clone();
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            let addr = candidate.addr;
            admit.verify_and_apply(candidate).await;
            let waiting = in_flight
                .lock()
                .ok()
                .and_then(|mut map| map.remove(&addr))
                .unwrap_or_default();
            // Sources that found the same address while it was being verified.
            for other in waiting {
                admit
                    .membership
                    .tag_source(other.addr, other.method, other.expect.as_deref());
            }
            drop(permit);
        });
    }
}

impl Admit {
    /// Verifies one candidate and records what it is; whether it was a member.
    pub async fn verify_and_apply(&self, candidate: Candidate) -> bool {
        let verdict = self.verifier.verify(candidate.addr).await;
        if matches!(verdict, Verdict::Alias(_)) {
            self.sample_alias(candidate.addr).await;
        }
        let member = matches!(verdict, Verdict::Member(..));
        self.apply(candidate, verdict);
        member
    }

    fn apply(&self, candidate: Candidate, verdict: Verdict) {
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
                if self.membership.admit(identity, candidate.method, rtt_ms) == Admission::New {
                    self.say_hello(addr);
                }
            }
            Verdict::Alias(identity) => {
                let claimed = identity.addr;
                self.membership.alias(candidate.addr, identity.instance_id);
                // The replica behind the alias says where it lives: verify that directly, if it
                // is where replicas can live. It is credited as an announcement, not to the
                // source that found the alias (a load-balanced name does not list the replicas).
                if let Err(why) = self.announcements.submit(claimed) {
                    tracing::debug!(%claimed, reason = %why, "alias follow-up not verified");
                }
            }
            Verdict::Foreign(reason) => self.membership.foreign(candidate.addr, reason),
            Verdict::Myself => {}
            Verdict::Unreachable(why) => {
                tracing::debug!(addr = %candidate.addr, %why, "candidate unreachable");
            }
        }
    }

    /// Asks an alias again, recording every replica it answers as.
    async fn sample_alias(&self, addr: SocketAddr) {
        for _ in 1..ALIAS_SAMPLES {
            match self.verifier.ask(addr).await {
                Ok(reply) if reply.identity.service == self.verifier.me().service() => {
                    self.membership.alias(addr, reply.identity.instance_id);
                }
                _ => return,
            }
        }
    }

    /// Tells a newly admitted member about us, so it need not wait for its own discovery.
    /// A busy member (its announcement queue full, say under a flood of fake hellos) is asked
    /// again a few times, a little later each time.
    fn say_hello(&self, addr: SocketAddr) {
        let verifier = self.verifier.clone();
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(250);
            for _ in 0..HELLO_TRIES {
                match verifier
                    .client()
                    .tell(addr, "/api/hello", &verifier.me().identity())
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
}

/// Calls made to an alias in a row: a load balancer shows itself by answering as
/// different replicas on different calls.
const ALIAS_SAMPLES: usize = 3;

/// Hellos sent to a busy member before leaving it to its own discovery.
const HELLO_TRIES: usize = 5;
