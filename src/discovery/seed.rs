//! The seed source: `SEED_PEERS`, addresses the operator already knows. Host names are
//! resolved again every round, so a seed that moves is followed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use hickory_resolver::TokioResolver;

use super::{Candidate, Evidence, Report, SETTLE, classify, dns};
use crate::app::Node;
use crate::config::SeedPeer;
use crate::wire::Method;

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

pub async fn run(node: Arc<Node>, resolver: Option<Arc<TokioResolver>>) {
    let Some(seeds) = node.settings.seed_peers.clone() else {
        node.reports.set(
            Method::Seed,
            Report {
                off: Some("SEED_PEERS is not set".into()),
                ..Report::default()
            },
        );
        return;
    };
    let seeds = seeds.0;
    loop {
        let started = Instant::now();
        let resolved = join_all(seeds.iter().map(|s| resolve(s, resolver.as_deref()))).await;
        for addrs in resolved.iter().flatten() {
            for addr in addrs {
                if node
                    .candidates
                    .send(Candidate::new(*addr, Method::Seed))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        let duration = started.elapsed();
        tokio::time::sleep(SETTLE).await;
        let snapshot = node.membership.snapshot();
        let evidence = seeds
            .iter()
            .zip(&resolved)
            .map(|(seed, addrs)| {
                let (status, detail) = match addrs {
                    Ok(addrs) => classify(addrs, &snapshot, node.me.addr()),
                    Err(why) => ("fails", why.clone()),
                };
                Evidence {
                    subject: seed.to_string(),
                    status,
                    detail,
                }
            })
            .collect();
        node.reports.set(
            Method::Seed,
            Report {
                last_run: Some(Instant::now()),
                duration: Some(duration),
                detail: format!(
                    "{} seed(s) from SEED_PEERS, tried every {} s",
                    seeds.len(),
                    dns::INTERVAL.as_secs()
                ),
                evidence,
                ..Report::default()
            },
        );
        tokio::time::sleep(dns::INTERVAL.saturating_sub(started.elapsed())).await;
    }
}
