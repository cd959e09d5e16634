//! The announce queue: hellos and alias follow-ups are claims from the network, so they
//! wait in their own small queue, never in front of scan, registry, DNS or seed
//! candidates: a neighbour flooding hellos can only slow other hellos, and only its own.
//!
//! Every announced address must lie where replicas of this deployment can live (the scan
//! ranges, or this replica's own network), so nobody can make a replica call arbitrary
//! addresses and read the outcome off the page.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tokio::sync::mpsc;

/// Announcements waiting in all: room for a few hundred callers at [`PER_IP`] each.
const QUEUE: usize = 512;
/// Announcements waiting or in flight per caller IP: a replica needs one.
pub const PER_IP: usize = 2;
/// An address that failed verification is not tried again for this long.
pub const COOLDOWN: Duration = Duration::from_secs(10);
/// Failed addresses remembered (oldest dropped first).
const REMEMBERED_FAILURES: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Refused {
    #[error("{0} is outside the addresses replicas of this deployment can have")]
    OutOfScope(IpAddr),
    #[error("{0} already has an announcement waiting")]
    Busy(IpAddr),
    #[error("{0} failed verification moments ago; try later")]
    RecentlyFailed(SocketAddr),
    #[error("too many announcements waiting; try later")]
    Full,
}

/// Where replicas of this deployment can live.
#[derive(Debug, Clone)]
pub struct Scope(Vec<IpNet>);

impl Scope {
    /// The scan ranges, plus this replica's own network: its /16 (IPv4) or /48 (IPv6).
    pub fn new(scan: &[ipnet::Ipv4Net], advertise: IpAddr) -> Scope {
        let own = match advertise {
            IpAddr::V4(ip) => IpNet::new(IpAddr::V4(ip), 16),
            IpAddr::V6(ip) => IpNet::new(IpAddr::V6(ip), 48),
        };
        let mut nets: Vec<IpNet> = scan.iter().map(|n| IpNet::V4(*n)).collect();
        nets.extend(own.ok().map(|n| n.trunc()));
        Scope(nets)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Default)]
struct Pending {
    per_ip: HashMap<IpAddr, usize>,
    failed: HashMap<SocketAddr, Instant>,
}

/// The handle sources and handlers submit announcements to.
#[derive(Clone)]
pub struct Announcements {
    tx: mpsc::Sender<SocketAddr>,
    pending: Arc<Mutex<Pending>>,
    scope: Arc<Scope>,
}

impl Announcements {
    pub fn new(scope: Scope) -> (Announcements, mpsc::Receiver<SocketAddr>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let handle = Announcements {
            tx,
            pending: Arc::default(),
            scope: Arc::new(scope),
        };
        (handle, rx)
    }

    pub fn in_scope(&self, ip: IpAddr) -> bool {
        self.scope.contains(ip)
    }

    /// Queues `addr` for verification, or says why not.
    pub fn submit(&self, addr: SocketAddr) -> Result<(), Refused> {
        let ip = addr.ip().to_canonical();
        if !self.scope.contains(ip) {
            return Err(Refused::OutOfScope(ip));
        }
        let Ok(mut pending) = self.pending.lock() else {
            return Err(Refused::Full);
        };
        if pending
            .failed
            .get(&addr)
            .is_some_and(|at| at.elapsed() < COOLDOWN)
        {
            return Err(Refused::RecentlyFailed(addr));
        }
        let waiting = pending.per_ip.entry(ip).or_insert(0);
        if *waiting >= PER_IP {
            return Err(Refused::Busy(ip));
        }
        self.tx.try_send(addr).map_err(|_| Refused::Full)?;
        *waiting += 1;
        Ok(())
    }

    /// An announcement was verified; a failure starts its cool-down.
    pub(super) fn done(&self, addr: SocketAddr, failed: bool) {
        let Ok(mut pending) = self.pending.lock() else {
            return;
        };
        let ip = addr.ip().to_canonical();
        if let Some(n) = pending.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                pending.per_ip.remove(&ip);
            }
        }
        if failed {
            if pending.failed.len() >= REMEMBERED_FAILURES {
                pending.failed.retain(|_, at| at.elapsed() < COOLDOWN);
                if pending.failed.len() >= REMEMBERED_FAILURES
                    && let Some(oldest) = pending
                        .failed
                        .iter()
                        .min_by_key(|(_, at)| **at)
                        .map(|(a, _)| *a)
                {
                    pending.failed.remove(&oldest);
                }
            }
            pending.failed.insert(addr, Instant::now());
        }
    }
}

/// One announcement being verified; counted as done when dropped.
/// Releases a caller's place when its announcement is verified, even if verification
/// panics: a caller's count must never stick.
pub(super) struct InFlight {
    pub(super) announcements: Announcements,
    pub(super) addr: SocketAddr,
    pub(super) failed: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.announcements.done(self.addr, self.failed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle() -> (Announcements, mpsc::Receiver<SocketAddr>) {
        let scan = ["127.0.0.0/24".parse().unwrap()];
        Announcements::new(Scope::new(&scan, "10.1.2.3".parse().unwrap()))
    }

    #[test]
    fn scope_is_the_scan_ranges_and_the_own_network() {
        let (a, _rx) = handle();
        assert!(a.in_scope("127.0.0.9".parse().unwrap()));
        assert!(a.in_scope("10.1.200.7".parse().unwrap()));
        assert!(a.in_scope("::ffff:10.1.0.1".parse().unwrap()));
        assert!(!a.in_scope("10.2.0.1".parse().unwrap()));
        assert!(!a.in_scope("8.8.8.8".parse().unwrap()));
        assert_eq!(
            a.submit("192.168.1.1:80".parse().unwrap()),
            Err(Refused::OutOfScope("192.168.1.1".parse().unwrap()))
        );
    }

    #[test]
    fn one_caller_cannot_fill_the_queue_and_failures_cool_down() {
        let (a, _rx) = handle();
        for port in 0..PER_IP as u16 {
            assert_eq!(
                a.submit(SocketAddr::from(([127, 0, 0, 9], port + 1))),
                Ok(())
            );
        }
        let busy = a.submit("127.0.0.9:999".parse().unwrap());
        assert_eq!(busy, Err(Refused::Busy("127.0.0.9".parse().unwrap())));
        // Another caller is not held up.
        assert_eq!(a.submit("127.0.0.10:1".parse().unwrap()), Ok(()));
        a.done("127.0.0.9:1".parse().unwrap(), true);
        assert_eq!(
            a.submit("127.0.0.9:1".parse().unwrap()),
            Err(Refused::RecentlyFailed("127.0.0.9:1".parse().unwrap()))
        );
        assert_eq!(a.submit("127.0.0.9:3".parse().unwrap()), Ok(()));
    }
}
