//! Rate limits on what a stranger can make a replica do: broadcast to every viewer, call
//! every peer, deliver into the message stream. Each has a bucket per client and one for
//! everyone, so neither one client nor many can take a replica over.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;
use crate::config::TrustedProxies;

/// Clients remembered per bucket; past that, idle ones are forgotten first.
const MAX_CLIENTS: usize = 4096;

fn quota(per_second: u32, burst: u32) -> Quota {
    let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

/// One kind of request's limits: per client key, and in all.
pub struct Bucket<K: std::hash::Hash + Eq + Clone> {
    per_client: DefaultKeyedRateLimiter<K>,
    all: DefaultDirectRateLimiter,
    started: std::time::Instant,
    /// Seconds after `started` of the last sweep of idle clients.
    last_sweep: AtomicU64,
}

impl<K: std::hash::Hash + Eq + Clone> Bucket<K> {
    fn new(per_client: Quota, all: Quota) -> Self {
        Bucket {
            per_client: RateLimiter::keyed(per_client),
            all: RateLimiter::direct(all),
            started: std::time::Instant::now(),
            last_sweep: AtomicU64::new(u64::MAX),
        }
    }

    /// Counts a request for `what`; over a limit, a 429 that says when to retry.
    pub fn admit(&self, client: &K, what: &'static str) -> Result<(), ApiError> {
        self.check(client)
            .map_err(|retry_after| ApiError::RateLimited { what, retry_after })
    }

    /// Counts a request in everyone's bucket only (a caller limited elsewhere).
    pub fn admit_in_all(&self, what: &'static str) -> Result<(), ApiError> {
        let now = DefaultClock::default().now();
        self.all.check().map_err(|not_yet| ApiError::RateLimited {
            what,
            retry_after: not_yet.wait_time_from(now),
        })
    }

    /// Counts a request; when it is over a limit, how long until one would pass.
    pub fn check(&self, client: &K) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        // Everyone's bucket first: a flood past it never adds clients to remember.
        self.all
            .check()
            .map_err(|not_yet| not_yet.wait_time_from(now))?;
        if self.per_client.len() >= MAX_CLIENTS && self.may_sweep() {
            self.per_client.retain_recent();
            self.per_client.shrink_to_fit();
        }
        self.per_client
            .check_key(client)
            .map_err(|not_yet| not_yet.wait_time_from(now))
    }

    /// At most one sweep of the clients a second: with thousands of recent ones, sweeping
    /// on every request would cost more than the limit saves.
    fn may_sweep(&self) -> bool {
        let now = self.started.elapsed().as_secs();
        self.last_sweep.swap(now, Ordering::Relaxed) != now
    }
}

/// An `X-Forwarded-For` entry: an address, with or without a port (`1.2.3.4:5678`,
/// `[2001:db8::1]:5678`), as proxies write them.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

/// One client, as limits count them: an IPv4 address, or an IPv6 /64 (one host can hold a
/// whole /64, and would otherwise be countless clients).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

pub struct Limits {
    /// `POST /api/broadcast`: each message goes to every viewer of every replica.
    pub broadcast: Bucket<IpAddr>,
    /// `GET /peer`: each call fans out to every member.
    pub peer: Bucket<IpAddr>,
    /// `POST /api/deliver`, keyed by the member that sends it.
    pub deliver: Bucket<IpAddr>,
    trusted: TrustedProxies,
}

impl Limits {
    /// `broadcast_rate`: messages per second per client (`BROADCAST_RATE`).
    pub fn new(broadcast_rate: u32, trusted: TrustedProxies) -> Limits {
        let all = broadcast_rate.saturating_mul(10);
        Limits {
            broadcast: Bucket::new(
                quota(broadcast_rate, broadcast_rate.saturating_mul(5)),
                quota(all, all.saturating_mul(2)),
            ),
            peer: Bucket::new(quota(3, 10), quota(20, 40)),
            // A member forwards what its own clients broadcast, which its broadcast limit
            // for everyone bounds: never limit it below that.
            deliver: Bucket::new(
                quota(all.max(50), all.saturating_mul(2).max(200)),
                quota(
                    all.saturating_mul(10).max(500),
                    all.saturating_mul(20).max(1000),
                ),
            ),
            trusted,
        }
    }

    /// The client a request came from: the connecting address, unless that is a trusted
    /// proxy, whose `X-Forwarded-For` then names it (the nearest address that is not
    /// itself a trusted proxy).
    pub fn client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        client_key(self.forwarded_client(peer, headers))
    }

    fn forwarded_client(&self, peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.ip().to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>();
        // From the right: each trusted proxy appended the address it saw. The first entry
        // that is not a trusted proxy is the client; one that does not parse ends the walk
        // (anything left of it was written by the client and proves nothing).
        let mut client = peer;
        for entry in forwarded.iter().rev() {
            let Some(ip) = parse_forwarded(entry) else {
                break;
            };
            client = ip;
            if !self.is_trusted(ip) {
                break;
            }
        }
        client
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.0.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_connecting_address_unless_a_trusted_proxy_names_one() {
        let trusted: TrustedProxies = "10.0.0.0/8".parse().unwrap();
        let limits = Limits::new(2, trusted);
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "1.2.3.4, 10.0.0.7".parse().unwrap());
        let from_proxy: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(
            limits.client(from_proxy, &headers),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let direct: SocketAddr = "5.6.7.8:5000".parse().unwrap();
        assert_eq!(
            limits.client(direct, &headers),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        let mut ported = HeaderMap::new();
        ported.insert("x-forwarded-for", "6.6.6.6, 1.2.3.4:5678".parse().unwrap());
        assert_eq!(
            limits.client(from_proxy, &ported),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        let mut garbled = HeaderMap::new();
        garbled.insert("x-forwarded-for", "6.6.6.6, garbage".parse().unwrap());
        assert_eq!(
            limits.client(from_proxy, &garbled),
            from_proxy.ip(),
            "nothing left of an unparseable entry is believed"
        );
        let untrusting = Limits::new(2, TrustedProxies::default());
        assert_eq!(untrusting.client(from_proxy, &headers), from_proxy.ip());
        let v6: SocketAddr = "[2001:db8:1:2:aaaa::1]:5000".parse().unwrap();
        let same_host: SocketAddr = "[2001:db8:1:2:bbbb::9]:5000".parse().unwrap();
        assert_eq!(
            untrusting.client(v6, &headers),
            untrusting.client(same_host, &headers),
            "one /64 is one client"
        );
    }

    #[test]
    fn a_burst_passes_then_the_bucket_says_how_long_to_wait() {
        let bucket: Bucket<IpAddr> = Bucket::new(quota(1, 3), quota(100, 100));
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(bucket.check(&a).is_ok());
        }
        let wait = bucket.check(&a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(bucket.check(&b).is_ok(), "per client");
    }
}
