//! `/metrics`: Prometheus text, written by hand from counters and the member snapshot.
//! Names follow Prometheus conventions: `rollcall_` prefix, units in names, `_total` for
//! counters.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::membership::{Snapshot, State};

/// Upper bounds of the probe RTT histogram, in seconds.
const RTT_BUCKETS: [f64; 10] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Default)]
pub struct Metrics {
    pub probes: AtomicU64,
    pub probe_failures: AtomicU64,
    pub registry_errors: AtomicU64,
    pub dns_lookups: AtomicU64,
    pub peer_calls: AtomicU64,
    rtt_buckets: [AtomicU64; RTT_BUCKETS.len()],
    rtt_count: AtomicU64,
    rtt_sum_micros: AtomicU64,
    /// (seconds, addresses) of the last scan.
    last_scan: Mutex<Option<(f64, u64)>>,
    http: Mutex<BTreeMap<(String, u16), u64>>,
}

impl Metrics {
    pub fn probe(&self, rtt: Option<Duration>) {
        self.probes.fetch_add(1, Ordering::Relaxed);
        match rtt {
            Some(rtt) => {
                let secs = rtt.as_secs_f64();
                for (i, bound) in RTT_BUCKETS.iter().enumerate() {
                    if secs <= *bound {
                        self.rtt_buckets[i].fetch_add(1, Ordering::Relaxed);
                    }
                }
                self.rtt_count.fetch_add(1, Ordering::Relaxed);
                self.rtt_sum_micros
                    .fetch_add(rtt.as_micros() as u64, Ordering::Relaxed);
            }
            None => {
                self.probe_failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn scan(&self, took: Duration, addresses: u64) {
        if let Ok(mut last) = self.last_scan.lock() {
            *last = Some((took.as_secs_f64(), addresses));
        }
    }

    /// Counts a request by route (the matched pattern, never the raw path) and status.
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut http) = self.http.lock() {
            *http.entry((route.to_string(), status)).or_insert(0) += 1;
        }
    }

    pub fn render(&self, snapshot: &Snapshot) -> String {
        let mut out = String::new();
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut by_state =
            BTreeMap::from([("alive", 1u64), ("suspect", 0), ("dead", 0), ("left", 0)]);
        for m in &snapshot.members {
            let key = match m.state {
                State::Alive => "alive",
                State::Suspect => "suspect",
                State::Dead => "dead",
                State::Left => "left",
            };
            *by_state.entry(key).or_insert(0) += 1;
        }
        let _ = writeln!(
            out,
            "# HELP rollcall_members Members by state, this replica included."
        );
        let _ = writeln!(out, "# TYPE rollcall_members gauge");
        for (state, n) in by_state {
            let _ = writeln!(out, "rollcall_members{{state=\"{state}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP rollcall_foreign_addresses Addresses that answered but are not replicas of this service."
        );
        let _ = writeln!(out, "# TYPE rollcall_foreign_addresses gauge");
        let _ = writeln!(out, "rollcall_foreign_addresses {}", snapshot.foreign.len());
        if let Some((secs, addresses)) = self.last_scan.lock().ok().and_then(|l| *l) {
            let _ = writeln!(
                out,
                "# HELP rollcall_scan_duration_seconds Duration of the last full scan."
            );
            let _ = writeln!(out, "# TYPE rollcall_scan_duration_seconds gauge");
            let _ = writeln!(out, "rollcall_scan_duration_seconds {secs:.3}");
            let _ = writeln!(
                out,
                "# HELP rollcall_scan_addresses_per_second Addresses tried per second in the last scan."
            );
            let _ = writeln!(out, "# TYPE rollcall_scan_addresses_per_second gauge");
            let _ = writeln!(
                out,
                "rollcall_scan_addresses_per_second {:.0}",
                addresses as f64 / secs.max(1e-9)
            );
        }
        let counters = [
            (
                "rollcall_probes_total",
                "Direct probes sent to members.",
                get(&self.probes),
            ),
            (
                "rollcall_probe_failures_total",
                "Direct probes that got no valid answer.",
                get(&self.probe_failures),
            ),
            (
                "rollcall_registry_heartbeat_errors_total",
                "Times the registry became unreachable.",
                get(&self.registry_errors),
            ),
            (
                "rollcall_dns_lookups_total",
                "DNS lookups made by the dns and seed sources.",
                get(&self.dns_lookups),
            ),
            (
                "rollcall_peer_calls_total",
                "Direct calls made for /peer.",
                get(&self.peer_calls),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP rollcall_probe_rtt_seconds Round-trip time of successful direct probes."
        );
        let _ = writeln!(out, "# TYPE rollcall_probe_rtt_seconds histogram");
        for (bound, count) in RTT_BUCKETS.iter().zip(&self.rtt_buckets) {
            let _ = writeln!(
                out,
                "rollcall_probe_rtt_seconds_bucket{{le=\"{bound}\"}} {}",
                get(count)
            );
        }
        let count = get(&self.rtt_count);
        let _ = writeln!(
            out,
            "rollcall_probe_rtt_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "rollcall_probe_rtt_seconds_sum {:.6}",
            get(&self.rtt_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "rollcall_probe_rtt_seconds_count {count}");
        let _ = writeln!(
            out,
            "# HELP rollcall_http_requests_total HTTP requests by route and status."
        );
        let _ = writeln!(out, "# TYPE rollcall_http_requests_total counter");
        if let Ok(http) = self.http.lock() {
            for ((route, status), n) in http.iter() {
                let _ = writeln!(
                    out,
                    "rollcall_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out
    }
}
