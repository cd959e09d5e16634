//! The seed source: `SEED_PEERS`, addresses the operator already knows. Host names are
//! resolved again every round, so a seed that moves is followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use hickory_resolver::TokioResolver;

use super::candidate::Candidate;
use super::dns;
use super::report::{Evidence, Report, classify};
use super::source::{Round, Source};
use crate::config::{SeedPeer, SeedPeers};
use crate::membership::Snapshot;
use crate::wire::{Method, MethodStatus};

async fn resolve(
    seed: &SeedPeer,
    resolver: Option<&TokioResolver>,
) -> Result<Vec<SocketAddr>, String> {
    if let Ok(ip) = seed.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, seed.port)]);
    }
    let resolver = resolver.ok_or("no DNS resolver to look the name up")?;
    let ips = dns::lookup(resolver, &seed.host).await?;
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, seed.port))
        .collect())
}

/// The seed method: the operator's list, and a resolver for its host names.
pub struct Seed {
    seeds: Vec<SeedPeer>,
    resolver: Option<Arc<TokioResolver>>,
    me: SocketAddr,
}

impl Seed {
    pub fn new(
        seeds: Option<&SeedPeers>,
        resolver: Option<Arc<TokioResolver>>,
        me: SocketAddr,
    ) -> Result<Seed, String> {
        let seeds = seeds.ok_or("SEED_PEERS is not set")?.0.clone();
        Ok(Seed {
            seeds,
            resolver,
            me,
        })
    }
}

impl Source for Seed {
    /// Each seed's addresses, or why it has none.
    type Found = Vec<Result<Vec<SocketAddr>, String>>;
    const METHOD: Method = Method::Seed;

    async fn gather(&mut self) -> Round<Self::Found> {
        let resolver = self.resolver.as_deref();
        let resolved = join_all(self.seeds.iter().map(|s| resolve(s, resolver))).await;
        let candidates = resolved
            .iter()
            .flatten()
            .flatten()
            .map(|addr| Candidate::new(*addr, Method::Seed))
            .collect();
        Round {
            candidates,
            found: resolved,
        }
    }

    fn judge(&mut self, resolved: Self::Found, snapshot: &Snapshot) -> Report {
        let evidence = self
            .seeds
            .iter()
            .zip(&resolved)
            .map(|(seed, addrs)| {
                let (status, detail) = match addrs {
                    Ok(addrs) => classify(addrs, snapshot, self.me),
                    Err(why) => (MethodStatus::Fails, why.clone()),
                };
                Evidence {
                    subject: seed.to_string(),
                    status,
                    detail,
                }
            })
            .collect();
        Report {
            detail: format!(
                "{} seed(s) from SEED_PEERS, tried every {} s",
                self.seeds.len(),
                dns::INTERVAL.as_secs()
            ),
            evidence,
            ..Report::default()
        }
    }

    fn pause(&mut self, took: Duration) -> Duration {
        dns::INTERVAL.saturating_sub(took)
    }
}
