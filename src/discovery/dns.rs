//! The DNS source: names whose A/AAAA records may list replicas (Dokku's `<app>.web`,
//! Kubernetes headless services, Fly's `<app>.internal`, Render's discovery host), plus
//! per-replica probes (StatefulSet-style `<service>-0`, this replica's hostname) whose
//! answers, NXDOMAIN included, are themselves the finding.
//!
//! Every answer becomes a candidate; after verification each name is judged: a peer list,
//! a load-balanced service address (an alias), or nothing useful.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{Resolver, TokioResolver};

use super::candidate::Candidate;
use super::report::{Evidence, Report, classify};
use super::source::{Round, Source};
use crate::config::{DnsNames, Settings, is_dns_name};
use crate::identity::{Env, Me, PlatformName};
use crate::membership::Snapshot;
use crate::metrics::Metrics;
use crate::wire::{Method, MethodStatus};

/// How often names are resolved again.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// StatefulSet-style names probed at most, whatever EXPECTED_REPLICAS says.
const MAX_ORDINALS: u32 = 10;

/// A resolver that asks `server` only, or the system's resolver. It reads no hosts file:
/// the question is what DNS says.
pub fn resolver(server: Option<SocketAddr>) -> Result<TokioResolver, String> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        Some(addr) => {
            let mut udp = ConnectionConfig::udp();
            udp.port = addr.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = addr.port();
            let ns = NameServerConfig::new(addr.ip(), true, vec![udp, tcp]);
            Resolver::builder_with_config(
                ResolverConfig::from_parts(None, vec![], vec![ns]),
                provider,
            )
        }
        None => Resolver::builder(provider).map_err(|e| format!("no system resolver: {e}"))?,
    };
    let options: &mut ResolverOpts = builder.options_mut();
    options.use_hosts_file = ResolveHosts::Never;
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    // Fresh answers every round: replicas come and go faster than TTLs.
    options.positive_max_ttl = Some(Duration::from_secs(1));
    options.negative_max_ttl = Some(Duration::from_secs(1));
    builder.build().map_err(|e| format!("resolver: {e}"))
}

/// The names to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Names that may list every replica.
    pub lists: Vec<String>,
    /// Per-replica names, resolved as evidence.
    pub probes: Vec<String>,
}

/// Decides what to resolve, or why nothing. `auto` resolves only on a container platform
/// or against an explicit DNS_SERVER: elsewhere the system resolver belongs to someone else.
pub fn plan(
    settings: &Settings,
    me: &Me,
    hostname: Option<String>,
    env: Env,
) -> Result<Plan, String> {
    let service = me.service().to_ascii_lowercase();
    let lists = match &settings.dns_names {
        DnsNames::Off => return Err("DNS_NAMES=off".into()),
        DnsNames::List(names) => names.clone(),
        DnsNames::Auto if !me.platform.is_container() && settings.dns_server.is_none() => {
            return Err(
                "not on a container platform: set DNS_NAMES (and DNS_SERVER) to resolve names here"
                    .into(),
            );
        }
        DnsNames::Auto => {
            let mut names = Vec::new();
            names.extend(env("RENDER_DISCOVERY_SERVICE"));
            names.extend(env("FLY_APP_NAME").map(|app| format!("{app}.internal")));
            if me.platform.name == PlatformName::Dokku {
                // Dokku gives every container of APP's process type the alias APP.PROC_TYPE.
                let proc_type = env("DYNO")
                    .and_then(|d| d.split('.').next().map(str::to_string))
                    .unwrap_or_else(|| "web".into());
                names.push(format!("{service}.{proc_type}"));
            }
            names.push(service.clone());
            names
        }
    };
    let ordinals = settings.expected_replicas.unwrap_or(3).min(MAX_ORDINALS);
    let mut probes: Vec<String> = (0..ordinals).map(|i| format!("{service}-{i}")).collect();
    probes.extend(hostname.map(|h| h.to_ascii_lowercase()));
    let mut lists = dedup(lists);
    lists.retain(|n| is_dns_name(n));
    let mut probes = dedup(probes);
    probes.retain(|n| is_dns_name(n) && !lists.contains(n));
    Ok(Plan { lists, probes })
}

fn dedup(names: Vec<String>) -> Vec<String> {
    let mut seen = Vec::with_capacity(names.len());
    for n in names {
        if !seen.contains(&n) {
            seen.push(n);
        }
    }
    seen
}

/// A lookup's outcome: addresses, or why there are none.
pub async fn lookup(resolver: &TokioResolver, name: &str) -> Result<Vec<IpAddr>, String> {
    match resolver.lookup_ip(name).await {
        Ok(found) => {
            let mut ips: Vec<IpAddr> = found.iter().collect();
            ips.sort();
            ips.dedup();
            Ok(ips)
        }
        Err(e) if e.is_nx_domain() => Err("NXDOMAIN".into()),
        Err(e) if e.is_no_records_found() => Err("no A/AAAA records".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// The DNS method: its names, the resolver that asks, the port replicas listen on.
pub struct Dns {
    plan: Plan,
    resolver: Arc<TokioResolver>,
    /// Where the answers come from, for the report.
    server: String,
    port: u16,
    me: SocketAddr,
    metrics: Metrics,
}

/// One round's names and answers.
pub struct Answers {
    names: Vec<(String, bool)>,
    answers: Vec<Result<Vec<IpAddr>, String>>,
}

impl Dns {
    pub fn new(
        settings: &Settings,
        me: &Me,
        hostname: Option<String>,
        resolver: Option<Arc<TokioResolver>>,
        metrics: Metrics,
    ) -> Result<Dns, String> {
        let plan = plan(settings, me, hostname, &crate::identity::process_env)?;
        let resolver = resolver.ok_or("no DNS resolver available")?;
        Ok(Dns {
            plan,
            resolver,
            server: settings
                .dns_server
                .map_or("the system resolver".to_string(), |s| s.to_string()),
            port: settings.port,
            me: me.addr(),
            metrics,
        })
    }
}

impl Source for Dns {
    type Found = Answers;
    const METHOD: Method = Method::Dns;

    fn starting(&self) -> Option<String> {
        Some(format!("first lookups via {} under way", self.server))
    }

    async fn gather(&mut self) -> Round<Answers> {
        // Lists first, then per-replica probes (`false`: shown as such in the report).
        let names: Vec<(String, bool)> = self
            .plan
            .lists
            .iter()
            .map(|n| (n.clone(), true))
            .chain(self.plan.probes.iter().map(|n| (n.clone(), false)))
            .collect();
        let answers = join_all(names.iter().map(|(name, _)| lookup(&self.resolver, name))).await;
        self.metrics.dns_lookups(names.len() as u64);
        let candidates = answers
            .iter()
            .flatten()
            .flatten()
            .map(|ip| Candidate::new(SocketAddr::new(*ip, self.port), Method::Dns))
            .collect();
        Round {
            candidates,
            found: Answers { names, answers },
        }
    }

    fn judge(&mut self, found: Answers, snapshot: &Snapshot) -> Report {
        let evidence: Vec<Evidence> = found
            .names
            .iter()
            .zip(&found.answers)
            .map(|((name, is_list), answer)| {
                let subject = if *is_list {
                    name.clone()
                } else {
                    format!("{name} (per-replica name)")
                };
                let (status, detail) = match answer {
                    Ok(ips) => {
                        let addrs: Vec<SocketAddr> = ips
                            .iter()
                            .map(|ip| SocketAddr::new(*ip, self.port))
                            .collect();
                        classify(&addrs, snapshot, self.me)
                    }
                    Err(why) => (MethodStatus::Fails, why.clone()),
                };
                Evidence {
                    subject,
                    status,
                    detail,
                }
            })
            .collect();
        let listing = evidence
            .iter()
            .filter(|e| e.status == MethodStatus::Works && !e.subject.ends_with(')'))
            .count();
        Report {
            detail: format!(
                "{} name(s) and {} per-replica probe(s) via {} every {} s; {}",
                self.plan.lists.len(),
                self.plan.probes.len(),
                self.server,
                INTERVAL.as_secs(),
                match listing {
                    0 => "no name lists the replicas".to_string(),
                    n => format!("{n} name(s) list the replicas"),
                }
            ),
            evidence,
            ..Report::default()
        }
    }

    fn pause(&mut self, took: Duration) -> Duration {
        INTERVAL.saturating_sub(took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::tests::env_of;
    use clap::Parser;

    fn plan_for(args: &[&str], vars: &[(&str, &str)]) -> Result<Plan, String> {
        let mut argv = vec!["rollcall", "--bind-addr", "127.0.0.2"];
        argv.extend_from_slice(args);
        let settings = Settings::try_parse_from(argv).unwrap();
        let env = env_of(vars);
        let me = Me::new(&settings, &env);
        plan(&settings, &me, Some("host-1".into()), &env)
    }

    #[test]
    fn auto_names_come_from_the_platform() {
        let fly = plan_for(&[], &[("FLY_APP_NAME", "chat")]).unwrap();
        assert_eq!(fly.lists, ["chat.internal", "chat"]);
        assert_eq!(fly.probes, ["chat-0", "chat-1", "chat-2", "host-1"]);

        let render = plan_for(
            &["--expected-replicas", "2"],
            &[
                ("RENDER_SERVICE_NAME", "chat"),
                ("RENDER_DISCOVERY_SERVICE", "chat-discovery"),
            ],
        )
        .unwrap();
        assert_eq!(render.lists, ["chat-discovery", "chat"]);
        assert_eq!(render.probes, ["chat-0", "chat-1", "host-1"]);

        let dokku = plan_for(
            &["--service-name", "rollcall"],
            &[("ROLLCALL_PLATFORM", "dokku"), ("DYNO", "web.2")],
        )
        .unwrap();
        assert_eq!(dokku.lists, ["rollcall.web", "rollcall"]);

        let k8s = plan_for(&[], &[("KUBERNETES_SERVICE_HOST", "10.245.0.1")]).unwrap();
        assert_eq!(k8s.lists, ["rollcall"]);
    }

    #[test]
    fn auto_stays_off_the_system_resolver_outside_a_platform() {
        let why = plan_for(&[], &[]).unwrap_err();
        assert!(why.contains("not on a container platform"), "{why}");
        // An explicit server (a test's, say) is fine.
        let plan = plan_for(&["--dns-server", "127.0.0.1:5353"], &[]).unwrap();
        assert_eq!(plan.lists, ["rollcall"]);
        // Explicit names are used as given.
        let plan = plan_for(&["--dns-names", "peers.test"], &[]).unwrap();
        assert_eq!(plan.lists, ["peers.test"]);
        assert_eq!(
            plan_for(&["--dns-names", "off"], &[]).unwrap_err(),
            "DNS_NAMES=off"
        );
    }
}
