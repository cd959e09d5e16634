//! This replica's own health (Lifeguard's local health multiplier): a replica starved of
//! CPU answers late and probes late, and would suspect healthy members for its own
//! slowness. Each sign of trouble raises the score, each clean round lowers it; probe
//! rounds and suspicion stretch by one interval per point.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// The most a replica doubts itself: suspicion lasts at most this many times longer.
pub const MAX_SCORE: u32 = 8;

#[derive(Clone, Default)]
pub struct LocalHealth(Arc<AtomicU32>);

impl LocalHealth {
    pub fn score(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }

    /// A probe round that started late, or a member others reached and this replica
    /// could not.
    pub fn worse(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some((s + 1).min(MAX_SCORE))
            });
    }

    /// A round on time with every probe answered.
    pub fn better(&self) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                Some(s.saturating_sub(1))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_score_is_bounded_both_ways() {
        let health = LocalHealth::default();
        health.better();
        assert_eq!(health.score(), 0);
        for _ in 0..20 {
            health.worse();
        }
        assert_eq!(health.score(), MAX_SCORE);
        health.better();
        assert_eq!(health.score(), MAX_SCORE - 1);
    }
}
