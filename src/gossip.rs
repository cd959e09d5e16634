//! News of membership changes, spread on the answers replicas already give.
//!
//! SWIM's dissemination: every change this replica sees (a member joined, turned suspect,
//! dead, left, or alive again) rides on its next few identity answers, and a replica that
//! probes it learns the news. Each piece is sent a few times per doubling of the cluster,
//! so it reaches every member in O(log N) probe rounds while an answer carries at most
//! [`PER_ANSWER`] pieces. Room left over carries a few live members picked at random, so
//! replicas that only met through seeds still come to know everyone (anti-entropy).
//!
//! News is a hint, never a verdict: a replica that hears of a death checks the member
//! itself, and one that hears of a member it does not know verifies its address like a
//! hello (in scope, one at a time per address) before admitting it. A hostile neighbour's
//! news can at most make a replica look at a member a little sooner.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use rand::seq::IteratorRandom;
use tokio::sync::broadcast;

use crate::membership::{MemberEvent, Membership, Snapshot, State};
use crate::wire::{Heard, News};

/// Pieces of news carried by one answer.
pub const PER_ANSWER: usize = 6;
/// Pieces kept waiting to be sent: the newest win.
const KEPT: usize = 64;
/// Times a piece is sent per doubling of the cluster (SWIM's λ).
const RETRANSMIT: u32 = 3;

#[derive(Debug)]
struct Rumour {
    news: News,
    sent: u32,
}

/// The news this replica has to tell, bounded.
#[derive(Clone, Default)]
pub struct Rumours(Arc<Mutex<VecDeque<Rumour>>>);

impl Rumours {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Rumour>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds news, replacing older news about the same instance.
    pub fn tell(&self, news: News) {
        let mut rumours = self.lock();
        rumours.retain(|r| r.news.instance_id != news.instance_id);
        if rumours.len() >= KEPT {
            rumours.pop_front();
        }
        rumours.push_back(Rumour { news, sent: 0 });
    }

    /// The pieces for one answer: news first, then live members of `snapshot` at random.
    pub fn for_answer(&self, snapshot: &Snapshot) -> Vec<News> {
        let mut told = self.told(snapshot.members.len() + 1);
        let room = PER_ANSWER.saturating_sub(told.len());
        let sample = snapshot
            .members
            .iter()
            .filter(|m| m.state == State::Alive)
            .filter(|m| !told.iter().any(|n| n.instance_id == m.identity.instance_id))
            .choose_multiple(&mut rand::rng(), room);
        told.extend(sample.into_iter().map(|m| News {
            instance_id: m.identity.instance_id.clone(),
            addr: m.identity.addr,
            state: Heard::Alive,
        }));
        told
    }

    /// The news for one answer, least-told first; each piece is dropped once it has been
    /// told often enough for a cluster of `members`.
    fn told(&self, members: usize) -> Vec<News> {
        // Bits of `members`: ⌈log2(N + 1)⌉.
        let budget = RETRANSMIT * (usize::BITS - members.leading_zeros()).max(1);
        let mut rumours = self.lock();
        rumours.make_contiguous().sort_by_key(|r| r.sent);
        let told: Vec<News> = rumours
            .iter_mut()
            .take(PER_ANSWER)
            .map(|r| {
                r.sent += 1;
                r.news.clone()
            })
            .collect();
        rumours.retain(|r| r.sent < budget);
        told
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a state change is as news; joins spread by discovery and announce, not here.
pub fn heard(state: State) -> Heard {
    match state {
        State::Alive => Heard::Alive,
        State::Suspect => Heard::Suspect,
        State::Dead => Heard::Dead,
        State::Left => Heard::Left,
    }
}

/// Turns this replica's own membership changes into news.
pub async fn follow(
    rumours: Rumours,
    membership: Membership,
    mut events: broadcast::Receiver<MemberEvent>,
) {
    loop {
        match events.recv().await {
            Ok(MemberEvent::Joined { who, .. }) => rumours.tell(News {
                instance_id: who.instance_id,
                addr: who.addr,
                state: Heard::Alive,
            }),
            Ok(MemberEvent::StateChanged { who, to, .. }) => rumours.tell(News {
                instance_id: who.instance_id,
                addr: who.addr,
                state: heard(to),
            }),
            Ok(MemberEvent::Restarted { who, .. }) => rumours.tell(News {
                instance_id: who.instance_id,
                addr: who.addr,
                state: Heard::Dead,
            }),
            Ok(_) => {}
            // Fell behind: whatever is not alive now is worth telling again.
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for m in membership.snapshot().members.iter() {
                    if m.state != State::Alive {
                        rumours.tell(News {
                            instance_id: m.identity.instance_id.clone(),
                            addr: m.identity.addr,
                            state: heard(m.state),
                        });
                    }
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn news(id: &str, state: Heard) -> News {
        News {
            instance_id: id.into(),
            addr: "127.0.0.2:80".parse().unwrap(),
            state,
        }
    }

    #[test]
    fn each_piece_is_told_a_few_times_per_doubling_then_dropped() {
        let rumours = Rumours::default();
        rumours.tell(news("a", Heard::Dead));
        // 3 members: log2 rounds up to 2 → told 6 times.
        let mut told = 0;
        while !rumours.told(3).is_empty() {
            told += 1;
            assert!(told < 100);
        }
        assert_eq!(told, 6);
        rumours.tell(news("a", Heard::Dead));
        let mut told = 0;
        while !rumours.told(200).is_empty() {
            told += 1;
        }
        assert_eq!(told, 24, "200 members: 8 doublings × 3");
    }

    #[test]
    fn answers_and_the_queue_are_bounded_and_newest_news_wins() {
        let rumours = Rumours::default();
        for i in 0..500 {
            rumours.tell(news(&format!("m{i}"), Heard::Suspect));
        }
        assert_eq!(rumours.len(), KEPT);
        assert_eq!(rumours.told(500).len(), PER_ANSWER);
        rumours.tell(news("m499", Heard::Alive));
        assert_eq!(rumours.len(), KEPT);
        let all: Vec<News> = (0..20).flat_map(|_| rumours.told(500)).collect();
        assert!(all.contains(&news("m499", Heard::Alive)));
        assert!(!all.contains(&news("m499", Heard::Suspect)));
    }

    #[test]
    fn room_left_carries_live_members_at_random() {
        use crate::membership::{Membership, Timing};
        use crate::wire::{Identity, Method};
        let table = Membership::new(Timing {
            dead_after: std::time::Duration::from_secs(1),
            forget_after: std::time::Duration::from_secs(600),
        });
        for i in 0..20 {
            let identity: Identity = serde_json::from_value(serde_json::json!({
                "instance_id": format!("m{i}"), "name": "x", "service": "s",
                "addr": format!("127.0.0.{}:80", i + 2),
            }))
            .unwrap();
            table.admit(identity, Method::Scan, 0.1);
        }
        table.probe_failed("m0", "refused".into());
        let rumours = Rumours::default();
        rumours.tell(news("gone", Heard::Dead));
        let answer = rumours.for_answer(&table.snapshot());
        assert_eq!(answer.len(), PER_ANSWER);
        assert_eq!(answer[0], news("gone", Heard::Dead));
        assert!(
            answer[1..]
                .iter()
                .all(|n| n.state == Heard::Alive && n.instance_id != "m0")
        );
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            for n in rumours.for_answer(&table.snapshot()) {
                seen.insert(n.instance_id);
            }
        }
        seen.remove("gone");
        assert_eq!(seen.len(), 19, "every live member, in time: {seen:?}");
        assert!(!seen.contains("m0"), "never a suspect as alive");
    }

    /// SWIM's claim, checked on this queue's budget: a piece told by one replica reaches
    /// all 200 when each replica probes one random other per round and retells what it
    /// heard, in a few rounds per doubling, before every teller's budget runs out.
    #[test]
    fn news_reaches_every_one_of_200_in_logarithmic_rounds() {
        use rand::{Rng, SeedableRng};
        const N: usize = 200;
        for seed in 0..20 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let nodes: Vec<Rumours> = (0..N).map(|_| Rumours::default()).collect();
            let mut heard = [false; N];
            nodes[0].tell(news("victim", Heard::Dead));
            heard[0] = true;
            let mut rounds = 0;
            while heard.iter().any(|h| !h) {
                rounds += 1;
                assert!(
                    rounds <= 30,
                    "seed {seed}: {} of {N} heard after 30 rounds",
                    heard.iter().filter(|h| **h).count()
                );
                for prober in 0..N {
                    let target = (prober + rng.random_range(1..N)) % N;
                    if nodes[target]
                        .told(N)
                        .iter()
                        .any(|n| n.instance_id == "victim")
                        && !heard[prober]
                    {
                        heard[prober] = true;
                        nodes[prober].tell(news("victim", Heard::Dead));
                    }
                }
            }
            // ⌈log2 200⌉ = 8: a handful of rounds per doubling.
            assert!(rounds <= 20, "seed {seed}: {rounds} rounds");
        }
    }

    #[test]
    fn the_least_told_go_first() {
        let rumours = Rumours::default();
        for i in 0..PER_ANSWER {
            rumours.tell(news(&format!("old{i}"), Heard::Dead));
        }
        rumours.told(50);
        rumours.tell(news("new", Heard::Dead));
        assert_eq!(rumours.told(50)[0], news("new", Heard::Dead));
    }
}
