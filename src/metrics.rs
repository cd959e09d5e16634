//! `/metrics`: Prometheus text from the `metrics` crate and its Prometheus exporter.
//!
//! Each replica keeps its own recorder instead of installing a global one: the demo runs
//! several replicas in one process, and each must count only its own work. Names follow
//! Prometheus conventions: `rollcall_` prefix, units in names, `_total` for counters.

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram, with_local_recorder,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::membership::{Snapshot, State};
use crate::wire::Method;

/// Upper bounds of the probe RTT histogram, in seconds.
const RTT_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Upper bounds of the request duration histogram, in seconds.
const REQUEST_BUCKETS: [f64; 10] = [0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0];

/// How often recorded samples are folded into histograms.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

const PROBE_RTT: &str = "rollcall_probe_rtt_seconds";
const REQUEST_DURATION: &str = "rollcall_http_request_duration_seconds";
const ROUND_DURATION: &str = "rollcall_discovery_round_seconds";
/// Upper bounds of the discovery round histogram, in seconds (a scan of a /16 takes a few).
const ROUND_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0];

/// One replica's metrics: cheap to clone, shared by every stage that counts something.
#[derive(Clone)]
pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    probes: Counter,
    probe_failures: Counter,
    probe_rtt: Histogram,
    registry_errors: Counter,
    dns_lookups: Counter,
    peer_calls: Counter,
    members: [Gauge; 4],
    foreign: Gauge,
    /// Indirect probes after a failed direct one: `[reached, not reached]`.
    indirect: [Counter; 2],
    news_checks: Counter,
    local_health: Gauge,
}

impl Metrics {
    pub fn new() -> Result<Metrics, BuildError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(PROBE_RTT.into()), &RTT_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), &REQUEST_BUCKETS)?
            .set_buckets_for_metric(Matcher::Full(ROUND_DURATION.into()), &ROUND_BUCKETS)?
            .build_recorder();
        let recorder = Arc::new(recorder);
        let metrics = with_local_recorder(recorder.as_ref(), || {
            describe();
            gauge!("rollcall_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            Metrics {
                recorder: recorder.clone(),
                probes: counter!("rollcall_probes_total"),
                probe_failures: counter!("rollcall_probe_failures_total"),
                probe_rtt: histogram!(PROBE_RTT),
                registry_errors: counter!("rollcall_registry_heartbeat_errors_total"),
                dns_lookups: counter!("rollcall_dns_lookups_total"),
                peer_calls: counter!("rollcall_peer_calls_total"),
                members: [State::Alive, State::Suspect, State::Dead, State::Left]
                    .map(|state| gauge!("rollcall_members", "state" => state.as_str())),
                foreign: gauge!("rollcall_foreign_addresses"),
                indirect: ["reached", "not_reached"].map(
                    |outcome| counter!("rollcall_indirect_probes_total", "outcome" => outcome),
                ),
                news_checks: counter!("rollcall_news_checks_total"),
                local_health: gauge!("rollcall_local_health"),
            }
        });
        Ok(metrics)
    }

    /// A direct probe: its round trip, or `None` when it got no valid answer.
    pub fn probe(&self, rtt: Option<Duration>) {
        self.probes.increment(1);
        match rtt {
            Some(rtt) => self.probe_rtt.record(rtt.as_secs_f64()),
            None => self.probe_failures.increment(1),
        }
    }

    /// Other members asked to probe a member this replica could not reach: whether any of
    /// them reached it.
    pub fn indirect(&self, reached: bool) {
        self.indirect[usize::from(!reached)].increment(1);
    }

    /// A member checked out of turn because another replica's news said it changed.
    pub fn news_check(&self) {
        self.news_checks.increment(1);
    }

    /// This replica's own health score (0 is healthy): how much it stretches its timings.
    pub fn local_health(&self, score: u32) {
        self.local_health.set(f64::from(score));
    }

    /// A full scan; its gauges appear with the first one.
    pub fn scan(&self, took: Duration, addresses: u64) {
        let secs = took.as_secs_f64();
        with_local_recorder(self.recorder.as_ref(), || {
            gauge!("rollcall_scan_duration_seconds").set(secs);
            gauge!("rollcall_scan_addresses_per_second").set(addresses as f64 / secs.max(1e-9));
        });
    }

    /// One round of a discovery method: how long gathering took, and whether it failed.
    pub fn round(&self, method: Method, took: Duration, failed: bool) {
        let outcome = if failed { "failed" } else { "ok" };
        with_local_recorder(self.recorder.as_ref(), || {
            counter!("rollcall_discovery_rounds_total", "method" => method.as_str(), "outcome" => outcome)
                .increment(1);
            histogram!(ROUND_DURATION, "method" => method.as_str()).record(took.as_secs_f64());
        });
    }

    pub fn registry_error(&self) {
        self.registry_errors.increment(1);
    }

    pub fn dns_lookups(&self, n: u64) {
        self.dns_lookups.increment(n);
    }

    pub fn peer_calls(&self, n: u64) {
        self.peer_calls.increment(n);
    }

    /// A request by route (the matched pattern, never the raw path: bounded labels) and
    /// status, with how long it took.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        let route = route.to_string();
        with_local_recorder(self.recorder.as_ref(), || {
            counter!("rollcall_http_requests_total", "route" => route.clone(), "status" => status.to_string())
                .increment(1);
            histogram!(REQUEST_DURATION, "route" => route).record(took.as_secs_f64());
        });
    }

    /// Folds recorded histogram samples into their buckets, every few seconds: samples
    /// wait in memory until then, so without it a replica nobody scrapes would grow.
    pub async fn upkeep(self) {
        let handle = self.recorder.handle();
        let mut ticker = tokio::time::interval(UPKEEP_EVERY);
        loop {
            ticker.tick().await;
            handle.run_upkeep();
        }
    }

    /// The Prometheus text, with the member gauges as of `snapshot`.
    pub fn render(&self, snapshot: &Snapshot) -> String {
        // This replica counts as alive.
        let mut by_state = [1.0, 0.0, 0.0, 0.0];
        for m in &snapshot.members {
            let i = match m.state {
                State::Alive => 0,
                State::Suspect => 1,
                State::Dead => 2,
                State::Left => 3,
            };
            by_state[i] += 1.0;
        }
        for (gauge, n) in self.members.iter().zip(by_state) {
            gauge.set(n);
        }
        self.foreign.set(snapshot.foreign.len() as f64);
        self.recorder.handle().render()
    }
}

fn describe() {
    describe_gauge!("rollcall_build_info", "The running version; always 1.");
    describe_gauge!(
        "rollcall_members",
        "Members by state, this replica included."
    );
    describe_gauge!(
        "rollcall_foreign_addresses",
        "Addresses that answered but are not replicas of this service."
    );
    describe_gauge!(
        "rollcall_scan_duration_seconds",
        "Duration of the last full scan."
    );
    describe_gauge!(
        "rollcall_scan_addresses_per_second",
        "Addresses tried per second in the last scan."
    );
    describe_counter!("rollcall_probes_total", "Direct probes sent to members.");
    describe_counter!(
        "rollcall_probe_failures_total",
        "Direct probes that got no valid answer."
    );
    describe_counter!(
        "rollcall_registry_heartbeat_errors_total",
        "Times the registry became unreachable."
    );
    describe_counter!(
        "rollcall_dns_lookups_total",
        "DNS lookups made by the dns and seed sources."
    );
    describe_counter!("rollcall_peer_calls_total", "Direct calls made for /peer.");
    describe_counter!(
        "rollcall_indirect_probes_total",
        "Members this replica could not reach, by whether others it asked reached them."
    );
    describe_counter!(
        "rollcall_news_checks_total",
        "Members probed out of turn on another replica's news."
    );
    describe_gauge!(
        "rollcall_local_health",
        "0 when healthy; each step stretches probe rounds and suspicion by one more interval."
    );
    describe_histogram!(PROBE_RTT, "Round-trip time of successful direct probes.");
    describe_counter!(
        "rollcall_http_requests_total",
        "HTTP requests by route and status."
    );
    describe_histogram!(REQUEST_DURATION, "HTTP request duration by route.");
    describe_counter!(
        "rollcall_discovery_rounds_total",
        "Rounds of each discovery method, by outcome."
    );
    describe_histogram!(
        ROUND_DURATION,
        "How long each discovery method took to gather a round."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{Membership, Timing};

    #[test]
    fn renders_every_name_with_its_type() {
        let metrics = Metrics::new().expect("recorder");
        metrics.probe(Some(Duration::from_micros(700)));
        metrics.probe(None);
        metrics.request("/api/status", 200, Duration::from_millis(2));
        metrics.scan(Duration::from_millis(500), 1000);
        metrics.round(Method::Dns, Duration::from_millis(20), false);
        metrics.indirect(true);
        metrics.local_health(2);
        let snapshot = Membership::new(Timing {
            dead_after: Duration::from_secs(3),
            forget_after: Duration::from_secs(600),
        })
        .snapshot();
        let text = metrics.render(&snapshot);
        for line in [
            "# TYPE rollcall_probes_total counter",
            "rollcall_probes_total 2",
            "rollcall_probe_failures_total 1",
            "rollcall_members{state=\"alive\"} 1",
            "rollcall_members{state=\"dead\"} 0",
            "rollcall_probe_rtt_seconds_bucket{le=\"0.001\"} 1",
            "rollcall_probe_rtt_seconds_count 1",
            "rollcall_http_requests_total{route=\"/api/status\",status=\"200\"} 1",
            "# TYPE rollcall_http_request_duration_seconds histogram",
            "rollcall_scan_addresses_per_second 2000",
            "rollcall_build_info{version=\"",
            "rollcall_discovery_rounds_total{method=\"dns\",outcome=\"ok\"} 1",
            "rollcall_discovery_round_seconds_bucket{method=\"dns\",le=\"0.05\"} 1",
            "rollcall_indirect_probes_total{outcome=\"reached\"} 1",
            "rollcall_news_checks_total 0",
            "rollcall_local_health 2",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn replicas_in_one_process_count_apart() {
        let (a, b) = (Metrics::new().expect("a"), Metrics::new().expect("b"));
        a.peer_calls(3);
        let empty = Membership::new(Timing {
            dead_after: Duration::from_secs(3),
            forget_after: Duration::from_secs(600),
        })
        .snapshot();
        assert!(a.render(&empty).contains("rollcall_peer_calls_total 3"));
        assert!(b.render(&empty).contains("rollcall_peer_calls_total 0"));
    }
}
