//! Readiness and the drain on shutdown.
//!
//! A load balancer keeps sending to a replica until its health check sees `/readyz` fail,
//! which takes it a few checks; some platforms instead stop sending before they signal.
//! So after SIGTERM a replica turns unready at once and keeps serving until the traffic
//! meant for users has been quiet for [`QUIET`], or `DRAIN_SECS` at most. Where the platform
//! drained first that costs about one second; behind a health-checking balancer it lasts
//! exactly as long as requests still arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

// Tokio's clock, so the tests can run it paused.
use tokio::time::Instant;

/// How long no request must arrive before a draining replica closes.
pub const QUIET: Duration = Duration::from_millis(1000);
/// After the drain and the goodbye, in-flight requests get this long to finish; then the
/// process ends anyway, so a stuck or hostile connection can never hold it open.
pub const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

/// Shared readiness and the time of the last request from outside the cluster.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

struct Inner {
    started: Instant,
    ready: AtomicBool,
    draining: AtomicBool,
    /// Milliseconds after `started` of the last request that counts as traffic.
    last_traffic_ms: AtomicU64,
}

impl Default for Drain {
    fn default() -> Self {
        Drain {
            inner: Arc::new(Inner {
                started: Instant::now(),
                ready: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                last_traffic_ms: AtomicU64::new(0),
            }),
        }
    }
}

impl Drain {
    /// Serving: `/readyz` answers 200.
    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// A request a user (through the load balancer) made. Health checks and replicas'
    /// calls to each other do not count: they never stop while the process runs.
    pub fn saw_traffic(&self) {
        let now = self.inner.started.elapsed().as_millis() as u64;
        self.inner.last_traffic_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn since_traffic(&self) -> Duration {
        let last = Duration::from_millis(self.inner.last_traffic_ms.load(Ordering::Relaxed));
        self.inner.started.elapsed().saturating_sub(last)
    }

    /// Turns unready and waits until traffic has been quiet for `quiet`, or `max` at most.
    /// Returns how long it waited.
    pub async fn drain(&self, quiet: Duration, max: Duration) -> Duration {
        self.inner.ready.store(false, Ordering::Relaxed);
        self.inner.draining.store(true, Ordering::Relaxed);
        let began = Instant::now();
        // The signal itself starts the quiet period: a request just before it counts.
        self.saw_traffic();
        loop {
            let waited = began.elapsed();
            if waited >= max {
                return waited;
            }
            let quiet_for = self.since_traffic();
            if quiet_for >= quiet {
                return waited;
            }
            let next = (quiet - quiet_for).min(max - waited);
            tokio::time::sleep(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_traffic_ends_the_drain_after_the_quiet_period() {
        let drain = Drain::default();
        drain.set_ready();
        let waited = drain
            .drain(Duration::from_secs(1), Duration::from_secs(10))
            .await;
        assert!(!drain.is_ready() && drain.is_draining());
        assert_eq!(waited, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_it_serving_up_to_the_maximum() {
        let drain = Drain::default();
        let busy = drain.clone();
        let load = tokio::spawn(async move {
            loop {
                busy.saw_traffic();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let waited = drain
            .drain(Duration::from_secs(1), Duration::from_secs(4))
            .await;
        load.abort();
        assert_eq!(waited, Duration::from_secs(4));
    }

    #[tokio::test(start_paused = true)]
    async fn traffic_that_stops_ends_the_drain_one_quiet_period_later() {
        let drain = Drain::default();
        let busy = drain.clone();
        tokio::spawn(async move {
            for _ in 0..10 {
                busy.saw_traffic();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let waited = drain
            .drain(Duration::from_secs(1), Duration::from_secs(10))
            .await;
        // The last request comes at 1.8 s (after the tenth pause begins, none arrive).
        assert!(
            waited >= Duration::from_millis(2800) && waited <= Duration::from_millis(3000),
            "{waited:?}"
        );
    }
}
