//! Which members a round asks (the prober's probes, the timeline's collection): SWIM's
//! round-robin over a shuffled list, so each member is asked once per pass, in an order no
//! neighbour can predict, and a round costs the same at 3 members or 500.

use std::collections::HashSet;

use rand::seq::SliceRandom;

#[derive(Debug, Default)]
pub struct Rotation {
    /// The rest of this pass, next last.
    queue: Vec<String>,
    /// Every id this pass has held: newcomers are slipped in at random places.
    pass: HashSet<String>,
}

impl Rotation {
    /// Up to `n` of `ids` (the members worth probing now), none twice in one round.
    pub fn next(&mut self, ids: &[String], n: usize) -> Vec<String> {
        let current: HashSet<&String> = ids.iter().collect();
        self.queue.retain(|id| current.contains(id));
        let mut rng = rand::rng();
        for id in ids {
            if !self.pass.contains(id) {
                let at = rand::Rng::random_range(&mut rng, 0..=self.queue.len());
                self.queue.insert(at, id.clone());
                self.pass.insert(id.clone());
            }
        }
        let mut picked: Vec<String> = Vec::with_capacity(n);
        while picked.len() < n.min(ids.len()) {
            if self.queue.is_empty() {
                // A new pass, in a new order; those already picked this round come last
                // (the queue is taken from its end).
                let mut fresh: Vec<String> = ids
                    .iter()
                    .filter(|id| !picked.contains(id))
                    .cloned()
                    .collect();
                fresh.shuffle(&mut rng);
                self.queue = picked.clone();
                self.queue.extend(fresh);
                self.pass = ids.iter().cloned().collect();
                if self.queue.len() == picked.len() {
                    break;
                }
            }
            if let Some(id) = self.queue.pop() {
                picked.push(id);
            }
        }
        picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("m{i}")).collect()
    }

    #[test]
    fn each_member_once_per_pass_and_never_twice_in_a_round() {
        let all = ids(10);
        let mut rotation = Rotation::default();
        let mut seen = Vec::new();
        for _ in 0..5 {
            let round = rotation.next(&all, 2);
            assert_eq!(round.len(), 2);
            assert_ne!(round[0], round[1]);
            seen.extend(round);
        }
        seen.sort();
        assert_eq!(seen, all, "one pass of 5 rounds probes each of 10 once");
    }

    #[test]
    fn every_member_once_per_pass_across_pass_boundaries() {
        let all = ids(5);
        let mut rotation = Rotation::default();
        // Rounds of 2 over 5: passes end mid-round. Over 10 passes each member is probed
        // about 10 times, never twice within one round.
        let mut counts = std::collections::HashMap::new();
        for _ in 0..25 {
            let round = rotation.next(&all, 2);
            assert_eq!(round.len(), 2);
            assert_ne!(round[0], round[1]);
            for id in round {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        for id in &all {
            let n = counts.get(id).copied().unwrap_or(0);
            assert!((9..=11).contains(&n), "{id} probed {n} times in 10 passes");
        }
    }

    #[test]
    fn a_round_costs_the_same_whatever_the_size() {
        let mut rotation = Rotation::default();
        for n in [1, 3, 50, 200, 512] {
            assert_eq!(rotation.next(&ids(n), 2).len(), n.min(2));
        }
        assert!(rotation.next(&[], 2).is_empty());
    }

    #[test]
    fn gone_members_leave_the_pass_and_newcomers_join_it() {
        let mut rotation = Rotation::default();
        let mut all = ids(6);
        rotation.next(&all, 1);
        all.truncate(3);
        all.push("new".into());
        let mut seen: Vec<String> = (0..4).flat_map(|_| rotation.next(&all, 1)).collect();
        seen.sort();
        let mut want = all.clone();
        want.sort();
        // Within the pass (or the next), every current member and only those.
        assert!(seen.iter().all(|id| all.contains(id)), "{seen:?}");
        let more: Vec<String> = (0..4).flat_map(|_| rotation.next(&all, 1)).collect();
        for id in &all {
            assert!(seen.contains(id) || more.contains(id), "{id} never probed");
        }
    }
}
