//! Keeps member states fresh, SWIM-style. Every round (`PROBE_INTERVAL_MS`, stretched
//! while this replica is itself unwell) it asks `PROBE_FANOUT` members in turn for their
//! identity, which measures the round trip and refreshes their figures. A member that does
//! not answer is asked for through up to [`INDIRECT`] other members before it is suspected
//! (a one-way loss between two replicas is not a death), and news on the answers makes
//! this replica check a member out of turn. So each replica's probing costs the same at 3
//! members or 200, and a change still reaches everyone in a few rounds.

mod health;
mod load_balancer;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::seq::IndexedRandom;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

pub use health::LocalHealth;
pub use load_balancer::{LoadBalancerCall, ViaLoadBalancer, run_load_balancer};

use crate::discovery::announcements::Announcements;
use crate::discovery::candidate::{Candidate, CandidateQueue};
use crate::gossip::PER_ANSWER;
use crate::membership::{Member, Membership, Snapshot, State};
use crate::metrics::Metrics;
use crate::rotation::Rotation;
use crate::verify::Verifier;
use crate::wire::{Heard, IndirectProbe, News};

/// A member must have been alive this long before a new instance at its address is taken
/// at once as its restart.
const RESTART_AFTER: Duration = Duration::from_secs(10);
/// One dead or left member is probed every this many rounds: one that answers again (and
/// is not leaving) comes back, but a table full of them costs next to nothing.
const GONE_PROBE_EVERY: u64 = 4;
/// Members asked to reach one this replica could not (SWIM's ping-req `k`).
pub const INDIRECT: usize = 2;
/// Members waiting to be checked out of turn on news.
const HINTS: usize = 64;
/// Rounds stretch by at most this many intervals while the replica is unwell.
const MAX_ROUND_STRETCH: u32 = 2;
/// Every this many rounds on time, the local health score comes down a step.
const HEALTHY_ROUNDS: u64 = 4;
/// A member's mesh row (most of an answer's bytes) is asked for at most this often; the
/// probes in between carry only its identity and news.
const MESH_EVERY: Duration = Duration::from_secs(5);

/// What probing needs: who to ask, where to record, where a restarted member's address
/// goes to be verified again.
#[derive(Clone)]
pub struct Prober {
    pub verifier: Verifier,
    pub membership: Membership,
    pub candidates: CandidateQueue,
    pub metrics: Metrics,
    pub interval: Duration,
    pub fanout: u16,
    pub health: LocalHealth,
    /// Where members heard of but not known go to be verified, like hellos.
    pub announcements: Announcements,
}

/// A prober with the way to hand news on to its next round.
#[derive(Clone)]
struct Checker {
    prober: Prober,
    hints: mpsc::Sender<String>,
}

pub async fn run(prober: Prober) {
    let (hints, mut hinted) = mpsc::channel(HINTS);
    let checker = Checker {
        prober: prober.clone(),
        hints,
    };
    let checking: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut checks = JoinSet::new();
    let (mut rotation, mut gone_rotation) = (Rotation::default(), Rotation::default());
    let mut mesh_asked: HashMap<String, Instant> = HashMap::new();
    let fanout = usize::from(prober.fanout);
    let mut due = Instant::now();
    let mut round: u64 = 0;
    loop {
        // Rounds stretch less than suspicion does: an unwell replica still looks around.
        due += prober.interval * (prober.health.score().min(MAX_ROUND_STRETCH) + 1);
        tokio::time::sleep_until(due.into()).await;
        // A round that starts late means this replica is starved: doubt itself a little
        // more, and do not rush rounds to catch up. Rounds on time restore its confidence
        // slowly, even with nobody to answer.
        if due.elapsed() > prober.interval / 2 {
            prober.health.worse();
            due = Instant::now();
        } else if round.is_multiple_of(HEALTHY_ROUNDS) {
            prober.health.better();
        }
        prober.metrics.local_health(prober.health.score());
        while checks.try_join_next().is_some() {}
        round += 1;
        let snapshot = prober.membership.snapshot();
        let ids = |states: &[State]| -> Vec<String> {
            snapshot
                .members
                .iter()
                .filter(|m| states.contains(&m.state))
                .map(|m| m.identity.instance_id.clone())
                .collect()
        };
        let mut picks = rotation.next(&ids(&[State::Alive, State::Suspect]), fanout);
        // Suspects are looked at every round until they answer or die (the table bounds
        // them, and a check of one is never started twice).
        picks.extend(ids(&[State::Suspect]));
        let mut on_news = HashSet::new();
        while let Ok(id) = hinted.try_recv() {
            if on_news.len() < fanout * 2 && snapshot.member(&id).is_some() {
                on_news.insert(id.clone());
                picks.push(id);
            }
        }
        if round.is_multiple_of(GONE_PROBE_EVERY) {
            // A restarted member's address answers as its successor: nothing to learn.
            let gone: Vec<String> = snapshot
                .members
                .iter()
                .filter(|m| matches!(m.state, State::Dead | State::Left))
                .filter(|m| m.replaced_by.is_none())
                .map(|m| m.identity.instance_id.clone())
                .collect();
            picks.extend(gone_rotation.next(&gone, 1));
        }
        // One set per round: looking each id up in the snapshot would cost N² at size.
        let current: HashSet<&str> = snapshot
            .members
            .iter()
            .map(|m| m.identity.instance_id.as_str())
            .collect();
        mesh_asked.retain(|id, at| at.elapsed() < MESH_EVERY && current.contains(id.as_str()));
        for id in picks {
            let Some(member) = snapshot.member(&id).cloned() else {
                continue;
            };
            // One check per member at a time: a slow one does not pile up.
            let Some(in_flight) = InFlight::start(&checking, &id) else {
                continue;
            };
            if on_news.contains(&id) {
                prober.metrics.news_check();
            }
            let with_mesh = !mesh_asked.contains_key(&id);
            if with_mesh {
                mesh_asked.insert(id.clone(), Instant::now());
            }
            let checker = checker.clone();
            checks.spawn(async move {
                // Dropped when the check ends, panics or is aborted.
                let _in_flight = in_flight;
                checker.check(&member, with_mesh).await;
            });
        }
    }
}

/// A member's check in flight; its end (however it ends) frees the member for the next.
struct InFlight {
    checking: Arc<Mutex<HashSet<String>>>,
    id: String,
}

impl InFlight {
    fn start(checking: &Arc<Mutex<HashSet<String>>>, id: &str) -> Option<InFlight> {
        let fresh = checking
            .lock()
            .map(|mut c| c.insert(id.to_string()))
            .unwrap_or(false);
        fresh.then(|| InFlight {
            checking: checking.clone(),
            id: id.to_string(),
        })
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut c) = self.checking.lock() {
            c.remove(&self.id);
        }
    }
}

/// Silence is measured by the clock, not by probe rounds: a suspect turns dead
/// `DEAD_AFTER_SECS` after it was suspected (longer while this replica is unwell), give
/// or take one tick.
pub async fn run_clock(membership: Membership, probe_interval: Duration, health: LocalHealth) {
    // A tenth of the round, but never under 50 ms: each tick walks the whole table, and
    // 200 replicas on one machine each waking 40 times a second cost more than they tell.
    let period = (probe_interval / 10).clamp(Duration::from_millis(50), Duration::from_millis(100));
    let mut ticker = tokio::time::interval(period);
    loop {
        ticker.tick().await;
        membership.tick(health.score());
    }
}

impl Checker {
    /// Asks a member directly; if it does not answer, asks others to.
    async fn check(&self, member: &Member, with_mesh: bool) {
        let p = &self.prober;
        let id = &member.identity.instance_id;
        let answer = p.verifier.ask_with(member.identity.addr, with_mesh).await;
        let rtt = match &answer {
            Ok(reply) if reply.identity.instance_id == *id => {
                Some(Duration::from_secs_f64(reply.rtt_ms / 1000.0))
            }
            _ => None,
        };
        p.metrics.probe(rtt);
        match answer {
            // Displaced from its address, yet it answers there: two instances share it, which
            // admission records as a conflict.
            Ok(reply) if reply.identity.instance_id == *id && member.replaced_by.is_some() => {
                if let Some(method) = member.sources.iter().next().copied() {
                    p.membership.admit(reply.identity, method, reply.rtt_ms);
                }
            }
            Ok(mut reply) if reply.identity.instance_id == *id => {
                let news = std::mem::take(&mut reply.identity.news);
                p.membership.probe_ok(reply.identity, reply.rtt_ms);
                p.health.better();
                self.hear(member.identity.addr, &news);
            }
            // The other claimant of a shared address answered this time: no news about either.
            Ok(reply)
                if member.conflict_with.as_deref() == Some(reply.identity.instance_id.as_str()) => {
            }
            Ok(reply)
                if reply.identity.service == member.identity.service
                    && reply.identity.addr == member.identity.addr =>
            {
                // The replica restarted in place: a new member, and the old one is gone. An
                // address whose instance changes again within moments is not restarting, it
                // is minting identities: the new one waits for discovery to find it again.
                p.membership.replaced(id, &reply.identity.instance_id);
                let method = member.sources.iter().next().copied();
                // Once per member: a dead one keeps being probed, and its address keeps
                // answering as whoever holds it now.
                let settled = member.replaced_by.is_none()
                    && (matches!(member.state, State::Dead | State::Left)
                        || member.state_since.elapsed() >= RESTART_AFTER);
                if let Some(method) = method.filter(|_| settled) {
                    let _ = p
                        .candidates
                        .try_send(Candidate::new(member.identity.addr, method));
                }
            }
            Ok(reply) => p.membership.probe_failed(
                id,
                format!(
                    "address now answers as {} of '{}'",
                    reply.identity.instance_id, reply.identity.service
                ),
            ),
            // Gone members are only looked at; a live one gets a second opinion first.
            Err(e) if matches!(member.state, State::Dead | State::Left) => {
                p.membership.probe_failed(id, e.to_string())
            }
            Err(e) => self.ask_others(member, e.to_string()).await,
        }
    }

    /// SWIM's ping-req: up to [`INDIRECT`] other live members try to reach `member`. Any
    /// that does keeps it alive (and says this replica's own path, or this replica, is the
    /// trouble); if none does, it is suspected.
    async fn ask_others(&self, member: &Member, error: String) {
        let p = &self.prober;
        let id = &member.identity.instance_id;
        let snapshot = p.membership.snapshot();
        let helpers = helpers(&snapshot, id);
        if helpers.is_empty() {
            p.membership.probe_failed(id, error);
            return;
        }
        // Each helper's opinion: reached it, could not, or no answer at all.
        let asks = helpers.iter().map(|helper| async move {
            let path = format!("/api/probe?id={id}");
            let body = p
                .verifier
                .client()
                .get_fan_out(helper.identity.addr, &path, 4096)
                .await
                .ok()?;
            let answer: IndirectProbe = serde_json::from_slice(&body).ok()?;
            (answer.id == *id).then_some((answer.ok, helper.identity.name.clone()))
        });
        let opinions = futures_util::future::join_all(asks).await;
        let reached = opinions.iter().flatten().find(|(ok, _)| *ok);
        p.metrics.indirect(reached.is_some());
        if let Some((_, via)) = reached {
            // Others reach what this replica cannot: its own path, or itself, is unwell.
            p.health.worse();
            p.membership.reached_through(id, via, error);
            return;
        }
        // A helper that did not answer at all says more about this replica than about
        // the member (Lifeguard's missed nack): doubt itself, so suspicion lasts longer.
        let silent = opinions.iter().filter(|o| o.is_none()).count();
        for _ in 0..silent {
            p.health.worse();
        }
        let tried = opinions.len() - silent;
        p.membership.probe_failed(
            id,
            format!(
                "{error} (nor could {tried} of {} other member(s) asked)",
                opinions.len()
            ),
        );
    }

    /// News from a member's answer: a member it says changed, that this replica sees
    /// otherwise, is checked out of turn; one this replica does not know is verified like
    /// a hello. Never taken on the word alone.
    fn hear(&self, teller: SocketAddr, news: &[News]) {
        let snapshot = self.prober.membership.snapshot();
        let me = self.prober.verifier.me().addr();
        for piece in news.iter().take(PER_ANSWER) {
            let Some(member) = snapshot.member(&piece.instance_id) else {
                // Only on the ports replicas use: news is no way to make a replica call
                // any port of its network.
                let port = piece.addr.port();
                if piece.state == Heard::Alive
                    && piece.addr != me
                    && (port == me.port() || port == teller.port())
                {
                    // Out of scope, busy or failed moments ago: the next mention will do.
                    let _ = self.prober.announcements.submit(piece.addr);
                }
                continue;
            };
            let differs = matches!(
                (member.state, piece.state),
                (State::Alive, Heard::Suspect | Heard::Dead | Heard::Left)
                    | (State::Suspect | State::Dead | State::Left, Heard::Alive)
            );
            if differs {
                let _ = self.hints.try_send(piece.instance_id.clone());
            }
        }
    }
}

/// Up to [`INDIRECT`] live members, other than `target`, chosen at random.
fn helpers<'a>(snapshot: &'a Snapshot, target: &str) -> Vec<&'a Member> {
    let alive: Vec<&Member> = snapshot
        .members
        .iter()
        .filter(|m| m.state == State::Alive && m.identity.instance_id != target)
        .collect();
    alive
        .choose_multiple(&mut rand::rng(), INDIRECT)
        .copied()
        .collect()
}

/// A call to a peer (a probe among them) waits at most this long for an answer: four
/// rounds, at least half a second (a replica busy serving still answers within that), at
/// most a second.
pub fn probe_timeout(interval: Duration) -> Duration {
    (interval * 4).clamp(Duration::from_millis(500), Duration::from_secs(1))
}
