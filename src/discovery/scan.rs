//! The subnet scan: TCP connects to every address of the planned ranges on the service
//! ports; whatever accepts becomes a candidate (how a round spends its connects is in
//! [`super::sweep`]).
//!
//! Scanning sends connects to whole ranges, so [`plan`] is strict: it names a range only
//! where the settings do, or where the `auto` rule says scanning is safe and useful.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use ipnet::Ipv4Net;

use super::candidate::{Candidate, CandidateQueue};
use super::report::Report;
use super::source::{Round, Source};
use super::sweep::{
    Order, Pass, PassCost, Settled, SweepCost, fast_pass, patient_pass, tcp_connect,
};
use crate::config::{ScanCidrs, Settings};
use crate::identity::{Me, Platform};
use crate::membership::{Membership, Snapshot};
use crate::metrics::Metrics;
use crate::wire::Method;

/// How many /24s of its /16 a platform replica scans: App Platform put three pods on
/// /24s 0, 6 and 33.
pub const AUTO_SUBNETS: u32 = 64;

/// Pauses before the 2nd, 3rd and 4th scans, in seconds; then SCAN_INTERVAL_SECS.
const EARLY_RESCANS: &[u64] = &[2, 3, 5];

/// The ranges to scan, or why there is no scan.
pub fn plan(
    setting: &ScanCidrs,
    advertise: IpAddr,
    platform: &Platform,
) -> Result<Vec<Ipv4Net>, String> {
    match setting {
        ScanCidrs::Off => Err("SCAN_CIDRS=off".into()),
        ScanCidrs::List(nets) => Ok(nets.clone()),
        ScanCidrs::Auto => auto_plan(advertise, platform),
    }
}

fn auto_plan(advertise: IpAddr, platform: &Platform) -> Result<Vec<Ipv4Net>, String> {
    let IpAddr::V4(ip) = advertise else {
        return Err(format!(
            "advertise address {advertise} is IPv6: auto scans IPv4 only (set SCAN_CIDRS)"
        ));
    };
    if ip.is_loopback() {
        return Ok(vec![net(ip, 24)]);
    }
    if !is_private(ip) {
        return Err(format!(
            "advertise address {ip} is not private: scanning it is not safe (set SCAN_CIDRS to scan anyway)"
        ));
    }
    if let Some(marker) = platform.marker {
        let first: Ipv4Net = net(ip, 16);
        let subnets = first
            .subnets(24)
            .map(|s| s.take(AUTO_SUBNETS as usize).collect())
            .unwrap_or_default();
        tracing::debug!(marker, "platform marker allows the auto scan");
        Ok(subnets)
    } else {
        Err(format!(
            "advertise address {ip} is private but no container-platform marker is set: \
             this may be an office or home network (set ROLLCALL_PLATFORM or SCAN_CIDRS)"
        ))
    }
}

fn net(ip: Ipv4Addr, prefix: u8) -> Ipv4Net {
    Ipv4Net::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| Ipv4Net::from(ip))
}

/// 10/8, 172.16/12, 192.168/16 and the carrier-grade NAT range 100.64/10 some platforms use.
pub fn is_private(ip: Ipv4Addr) -> bool {
    let cgnat = Ipv4Net::new(Ipv4Addr::new(100, 64, 0, 0), 10).is_ok_and(|n| n.contains(&ip));
    ip.is_private() || cgnat
}

pub use super::sweep::{target_count, targets};

/// Connect timeout of the fast pass: a pod network answers in well under a millisecond;
/// this leaves room for a busy scheduler on either side.
pub const FAST_TIMEOUT: Duration = Duration::from_millis(20);

/// Fast-pass connects in flight at most: one wave covers the 16,256 addresses `auto` plans.
/// (Connects start in small batches, so a large cap does not delay the first hit.)
pub const FAST_IN_FLIGHT: usize = 16_384;

/// File descriptors kept for everything but the scan (clients, peers, the registry).
const FD_RESERVE: u64 = 256;

/// Connects in flight per pass, sized from the (raised) file-descriptor limit: the patient
/// pass gets what SCAN_CONCURRENCY asks for if the limit allows; the fast pass, whose
/// connects live only milliseconds, up to three quarters of what the limit leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InFlight {
    pub fast: usize,
    pub patient: usize,
}

impl InFlight {
    pub fn from_limit(wanted: usize, fd_limit: u64) -> InFlight {
        let spare = fd_limit.saturating_sub(FD_RESERVE).max(16) as usize;
        InFlight {
            fast: FAST_IN_FLIGHT.min(spare / 4 * 3).max(16),
            patient: wanted.clamp(1, spare),
        }
    }
}

/// The scan method: its plan, and where it is in its early rescans.
pub struct Scan {
    nets: Vec<Ipv4Net>,
    ports: Vec<u16>,
    me: SocketAddr,
    in_flight: InFlight,
    timeout: Duration,
    interval: Duration,
    /// Replicas that start together may each scan before the others listen: look again
    /// soon after start-up, then settle into the interval.
    early: std::slice::Iter<'static, u64>,
    /// Hits go straight to the verifier as they accept, not at the end of the round.
    candidates: CandidateQueue,
    /// Where members were seen: their /24s are scanned early.
    membership: Membership,
    /// A fast pass ended the last round: the patient pass is the next one, at once.
    after_fast: Option<AfterFast>,
    metrics: Metrics,
}

/// What a fast pass leaves the patient pass that follows it.
struct AfterFast {
    order: Order,
    cost: PassCost,
    settled: Settled,
}

/// One round of the scan: a fast pass is a round of its own, so its hits are reported
/// without waiting seconds for the patient pass.
pub enum ScanRound {
    Fast(PassCost),
    Done(SweepCost),
}

impl Scan {
    /// The scan these settings plan, or why there is none.
    pub fn new(
        settings: &Settings,
        me: &Me,
        in_flight: InFlight,
        candidates: CandidateQueue,
        membership: Membership,
        metrics: Metrics,
    ) -> Result<Scan, String> {
        let nets = plan(&settings.scan_cidrs, me.addr().ip(), &me.platform)?;
        let ports = settings.scan_ports();
        let scan = Scan {
            nets,
            ports,
            me: me.addr(),
            in_flight,
            timeout: settings.scan_timeout,
            interval: settings.scan_interval,
            early: EARLY_RESCANS.iter(),
            candidates,
            membership,
            after_fast: None,
            metrics,
        };
        let (ranges, addresses) = (describe(&scan.nets), scan.total());
        match scan.ports.as_slice() {
            [port] => tracing::info!(%ranges, port, addresses, "subnet scan planned"),
            ports => {
                let ports = join(ports);
                tracing::info!(%ranges, %ports, addresses, "subnet scan planned");
            }
        }
        Ok(scan)
    }

    fn total(&self) -> u64 {
        target_count(&self.nets, &self.ports)
    }

    fn patient(&self) -> Pass {
        Pass {
            timeout: self.timeout,
            in_flight: self.in_flight.patient,
        }
    }

    /// A fast pass only pays where the patient pass needs more than one wave (in one wave
    /// every hit is handed on the moment it accepts anyway) and its timeout is shorter.
    fn fast(&self) -> Option<Pass> {
        (self.total() > self.in_flight.patient as u64 && self.timeout > FAST_TIMEOUT).then_some(
            Pass {
                timeout: FAST_TIMEOUT,
                in_flight: self.in_flight.fast,
            },
        )
    }

    fn order(&self) -> Order {
        Order {
            nets: self.nets.clone(),
            ports: self.ports.clone(),
            me: self.me,
            seen: self.seen_24s(),
        }
    }

    /// The /24s of the members this replica knows of, in any state: a pod seen there once
    /// says the platform places pods there.
    fn seen_24s(&self) -> HashSet<u32> {
        self.membership
            .snapshot()
            .members
            .iter()
            .filter_map(|m| match m.identity.addr.ip() {
                IpAddr::V4(ip) => Some(u32::from(ip) >> 8),
                IpAddr::V6(_) => None,
            })
            .collect()
    }
}

impl Source for Scan {
    type Found = ScanRound;
    const METHOD: Method = Method::Scan;

    async fn gather(&mut self) -> Round<ScanRound> {
        // A full queue or a closed one: the runner sends what is left, waiting for room.
        let mut left = Vec::new();
        let queue = self.candidates.clone();
        let on_hit = |addr| {
            if let Err(e) = queue.try_send(Candidate::new(addr, Method::Scan)) {
                left.push(e.into_inner());
            }
        };
        let found = match (self.after_fast.take(), self.fast()) {
            (Some(after), _) => {
                let patient = patient_pass(
                    &after.order,
                    self.patient(),
                    &after.settled,
                    &tcp_connect,
                    on_hit,
                )
                .await;
                ScanRound::Done(SweepCost {
                    fast: Some(after.cost),
                    patient,
                })
            }
            (None, Some(fast)) => {
                let order = self.order();
                let (cost, settled) = fast_pass(&order, fast, &tcp_connect, on_hit).await;
                self.after_fast = Some(AfterFast {
                    order,
                    cost,
                    settled,
                });
                ScanRound::Fast(cost)
            }
            (None, None) => {
                let order = self.order();
                let patient = patient_pass(
                    &order,
                    self.patient(),
                    &Settled::new(),
                    &tcp_connect,
                    on_hit,
                )
                .await;
                ScanRound::Done(SweepCost {
                    fast: None,
                    patient,
                })
            }
        };
        if let ScanRound::Done(cost) = &found {
            self.metrics.scan(cost.took(), self.total());
        }
        Round {
            found,
            candidates: left,
        }
    }

    /// A connect is the whole finding: nothing to wait for.
    fn settle(&self, _: &ScanRound) -> Duration {
        Duration::ZERO
    }

    fn judge(&mut self, round: ScanRound, _: &Snapshot) -> Report {
        let (passes, accepted) = match &round {
            ScanRound::Fast(fast) => (
                format!(
                    "{} The patient pass over the silent ones is under way.",
                    describe_pass("Fast pass", fast)
                ),
                fast.accepted,
            ),
            ScanRound::Done(cost) => (describe_cost(cost), cost.accepted()),
        };
        Report {
            detail: format!(
                "{} addresses in {} on port {}, this replica's /24 first. {passes} {accepted} accepted a connection.",
                self.total(),
                describe(&self.nets),
                join(&self.ports),
            ),
            ..Report::default()
        }
    }

    /// The patient pass follows a fast pass at once; early rescans, then the interval.
    fn pause(&mut self, _took: Duration) -> Duration {
        if self.after_fast.is_some() {
            return Duration::ZERO;
        }
        self.early.next().map_or(self.interval, |&s| {
            Duration::from_secs(s).min(self.interval)
        })
    }
}

/// One pass's addresses, waves, time and hits, for the discovery report.
fn describe_pass(name: &str, p: &PassCost) -> String {
    let plural = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    format!(
        "{name}: {} at {} ms, up to {} in flight ({}), {} ms, {} accepted.",
        plural(p.addresses, "address", "addresses"),
        p.pass.timeout.as_millis(),
        p.pass.in_flight,
        plural(p.waves(), "wave", "waves"),
        p.took.as_millis(),
        p.accepted,
    )
}

/// What both passes asked and cost, for the discovery report.
fn describe_cost(cost: &SweepCost) -> String {
    match &cost.fast {
        Some(fast) => format!(
            "{} {}",
            describe_pass("Fast pass", fast),
            describe_pass("Patient pass over the silent ones", &cost.patient)
        ),
        None => describe_pass("One pass", &cost.patient),
    }
}

/// Names the ranges briefly: 64 /24s of one /16 read better as one /18.
fn describe(nets: &[Ipv4Net]) -> String {
    let merged = Ipv4Net::aggregate(&nets.to_vec());
    merged
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::PlatformName;

    fn platform(marker: Option<&'static str>) -> Platform {
        Platform {
            name: if marker.is_some() {
                PlatformName::Kubernetes
            } else {
                PlatformName::Local
            },
            marker,
        }
    }

    fn auto(ip: &str, marker: Option<&'static str>) -> Result<Vec<Ipv4Net>, String> {
        plan(&ScanCidrs::Auto, ip.parse().unwrap(), &platform(marker))
    }

    #[test]
    fn auto_scans_the_loopback_24() {
        assert_eq!(
            auto("127.0.0.2", None),
            Ok(vec!["127.0.0.0/24".parse().unwrap()])
        );
        let nets = auto("127.0.0.2", None).unwrap();
        assert_eq!(target_count(&nets, &[8080]), 254);
    }

    #[test]
    fn auto_scans_64_24s_of_a_private_16_only_on_a_platform() {
        let nets = auto("10.244.33.7", Some("KUBERNETES_SERVICE_HOST")).unwrap();
        assert_eq!(nets.len(), 64);
        assert_eq!(nets[0], "10.244.0.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(nets[63], "10.244.63.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(target_count(&nets, &[8080]), 16_256);
        assert_eq!(targets(&nets, &[8080]).count(), 16_256);
        assert_eq!(describe(&nets), "10.244.0.0/18");
        for ip in ["172.17.0.5", "192.168.1.9", "100.72.0.3"] {
            assert_eq!(auto(ip, Some("DYNO")).unwrap().len(), 64, "{ip}");
        }
    }

    #[test]
    fn auto_does_not_scan_a_private_address_without_a_marker() {
        let why = auto("192.168.1.20", None).unwrap_err();
        assert!(why.contains("no container-platform marker"), "{why}");
    }

    #[test]
    fn auto_never_scans_public_or_ipv6() {
        assert!(
            auto("203.0.113.7", Some("DYNO"))
                .unwrap_err()
                .contains("not private")
        );
        assert!(auto("8.8.8.8", None).is_err());
        assert!(
            auto("fd00::5", Some("FLY_APP_NAME"))
                .unwrap_err()
                .contains("IPv6")
        );
    }

    #[test]
    fn explicit_lists_and_off() {
        let list = ScanCidrs::List(vec!["127.0.0.9/32".parse().unwrap()]);
        let nets = plan(&list, "203.0.113.7".parse().unwrap(), &platform(None)).unwrap();
        assert_eq!(
            targets(&nets, &[80, 81]).collect::<Vec<_>>(),
            vec![
                "127.0.0.9:80".parse::<SocketAddr>().unwrap(),
                "127.0.0.9:81".parse().unwrap()
            ]
        );
        assert!(
            plan(
                &ScanCidrs::Off,
                "127.0.0.1".parse().unwrap(),
                &platform(None)
            )
            .is_err()
        );
    }

    #[test]
    fn in_flight_follows_the_descriptor_limit() {
        let roomy = InFlight::from_limit(2048, 1 << 20);
        assert_eq!(
            roomy,
            InFlight {
                fast: FAST_IN_FLIGHT,
                patient: 2048
            }
        );
        // A tight limit: the fast pass leaves a quarter for everything else.
        assert_eq!(
            InFlight::from_limit(2048, 20_000),
            InFlight {
                fast: 14_808,
                patient: 2048
            }
        );
        let tight = InFlight::from_limit(2048, 1024);
        assert_eq!(
            tight,
            InFlight {
                fast: 576,
                patient: 768
            }
        );
        assert_eq!(
            InFlight::from_limit(0, 0),
            InFlight {
                fast: 16,
                patient: 1
            }
        );
    }
}
