//! The subnet scan: TCP connects to every address of the planned ranges on the service
//! ports; whatever accepts becomes a candidate.
//!
//! Scanning sends connects to whole ranges, so [`plan`] is strict: it names a range only
//! where the settings do, or where the `auto` rule says scanning is safe and useful.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipnet::Ipv4Net;
use tokio::net::TcpStream;

use super::candidate::Candidate;
use super::report::Report;
use super::source::{Round, Source};
use crate::config::{ScanCidrs, Settings};
use crate::identity::{Me, Platform};
use crate::membership::Snapshot;
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

/// Every address a scan of `nets` touches: the hosts of each net (a /32 is its one address).
pub fn targets(nets: &[Ipv4Net], ports: &[u16]) -> impl Iterator<Item = SocketAddr> {
    let nets = nets.to_vec();
    let ports = ports.to_vec();
    nets.into_iter().flat_map(move |n| {
        let ports = ports.clone();
        n.hosts().flat_map(move |ip| {
            ports
                .clone()
                .into_iter()
                .map(move |p| SocketAddr::from((ip, p)))
        })
    })
}

pub fn target_count(nets: &[Ipv4Net], ports: &[u16]) -> u64 {
    let hosts: u64 = nets
        .iter()
        .map(|n| match n.prefix_len() {
            32 => 1,
            31 => 2,
            p => (1u64 << (32 - p)) - 2,
        })
        .sum();
    hosts * ports.len() as u64
}

/// One pass: connects to every target with bounded concurrency, returns those that accepted.
pub async fn scan_once(
    targets: impl Iterator<Item = SocketAddr>,
    concurrency: usize,
    timeout: Duration,
) -> Vec<SocketAddr> {
    futures_util::stream::iter(targets)
        .map(|addr| async move {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(_stream)) => Some(addr),
                _ => None,
            }
        })
        .buffer_unordered(concurrency.max(1))
        .filter_map(|hit| async move { hit })
        .collect()
        .await
}

/// The scan method: its plan, and where it is in its early rescans.
pub struct Scan {
    nets: Vec<Ipv4Net>,
    ports: Vec<u16>,
    me: SocketAddr,
    concurrency: usize,
    timeout: Duration,
    interval: Duration,
    /// Replicas that start together may each scan before the others listen: look again
    /// soon after start-up, then settle into the interval.
    early: std::slice::Iter<'static, u64>,
    metrics: Metrics,
}

impl Scan {
    /// The scan these settings plan, or why there is none.
    pub fn new(
        settings: &Settings,
        me: &Me,
        concurrency: usize,
        metrics: Metrics,
    ) -> Result<Scan, String> {
        let nets = plan(&settings.scan_cidrs, me.addr().ip(), &me.platform)?;
        let ports = settings.scan_ports();
        let scan = Scan {
            nets,
            ports,
            me: me.addr(),
            concurrency,
            timeout: settings.scan_timeout,
            interval: settings.scan_interval,
            early: EARLY_RESCANS.iter(),
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
}

impl Source for Scan {
    /// The addresses that accepted a connection.
    type Found = usize;
    const METHOD: Method = Method::Scan;

    async fn gather(&mut self) -> Round<usize> {
        let me = self.me;
        let started = Instant::now();
        let hits = scan_once(
            targets(&self.nets, &self.ports).filter(|a| *a != me),
            self.concurrency,
            self.timeout,
        )
        .await;
        self.metrics.scan(started.elapsed(), self.total());
        Round {
            found: hits.len(),
            candidates: hits
                .into_iter()
                .map(|addr| Candidate::new(addr, Method::Scan))
                .collect(),
        }
    }

    /// A connect is the whole finding: nothing to wait for.
    fn settle(&self, _: &usize) -> Duration {
        Duration::ZERO
    }

    fn judge(&mut self, hits: usize, _: &Snapshot) -> Report {
        let total = self.total();
        Report {
            detail: format!(
                "{total} addresses in {} on port {}: {hits} accepted a connection",
                describe(&self.nets),
                join(&self.ports),
            ),
            ..Report::default()
        }
    }

    fn pause(&mut self, _took: Duration) -> Duration {
        self.early.next().map_or(self.interval, |&s| {
            Duration::from_secs(s).min(self.interval)
        })
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

    #[tokio::test]
    async fn scan_finds_a_listener_on_loopback() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let nets = vec![
            "127.0.0.1/32".parse().unwrap(),
            "127.0.0.0/30".parse().unwrap(),
        ];
        let hits = scan_once(targets(&nets, &[port]), 8, Duration::from_millis(250)).await;
        assert_eq!(hits, vec![SocketAddr::from(([127, 0, 0, 1], port)); 2]);
    }
}
