//! One replica: binds its listener, starts its background tasks, serves until told to stop.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::join_all;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::broadcast::Broadcaster;
use crate::client::PeerClient;
use crate::config::Settings;
use crate::discovery::announce::{Announcements, Scope};
use crate::discovery::registry::Registry;
use crate::discovery::{self, Candidate, Report, Reports};
use crate::drain::{self, Drain};
use crate::identity::{Me, process_env};
use crate::membership::{Membership, State, Timing};
use crate::prober;
use crate::relay::Relay;
use crate::wire::Method;

/// Everything a replica's tasks and handlers share.
pub struct Node {
    pub settings: Settings,
    pub me: Arc<Me>,
    pub membership: Membership,
    pub reports: Reports,
    pub client: PeerClient,
    pub candidates: mpsc::Sender<Candidate>,
    /// Hellos and alias follow-ups: claims from the network, in their own bounded queue.
    pub announcements: Announcements,
    pub registry: Option<Arc<Registry>>,
    pub broadcaster: Broadcaster,
    pub relay: Relay,
    pub metrics: crate::metrics::Metrics,
    /// Other members' timelines, as last collected (instance id → events).
    pub peer_timelines: Mutex<HashMap<String, Vec<crate::wire::TimelineEvent>>>,
    /// The last call through the public address, to compare with direct calls.
    pub via_load_balancer: Mutex<Option<crate::prober::LoadBalancerCall>>,
    /// Replicas connected to this one as their relay hub (instance id → connections).
    pub relay_subscribers: Mutex<HashMap<String, usize>>,
    /// Turns true when shutdown begins: long-lived streams end so draining can finish.
    pub shutdown: watch::Sender<bool>,
    /// Readiness, and when users last sent a request (for the drain on shutdown).
    pub drain: Drain,
}

impl Node {
    pub fn probe_interval(&self) -> Duration {
        Duration::from_millis(self.settings.probe_interval_ms)
    }

    /// This replica's identity with its mesh row and view hash, as peers and pages see it.
    pub fn published_identity(&self) -> crate::wire::Identity {
        let snapshot = self.membership.snapshot();
        let mut identity = self.me.identity();
        identity.mesh = Some(snapshot.mesh_row(std::time::Instant::now()));
        identity.view_hash = Some(snapshot.view_hash(self.me.id()));
        identity.leaving = self.drain.is_draining();
        identity
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

pub struct Application {
    node: Arc<Node>,
    listener: TcpListener,
    candidates: mpsc::Receiver<Candidate>,
    announced: mpsc::Receiver<SocketAddr>,
}

impl Application {
    /// Binds the listener first, so a port of 0 becomes the real port in the identity.
    pub async fn build(mut settings: Settings) -> Result<Application, AppError> {
        let addr = SocketAddr::new(settings.bind_addr, settings.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AppError::Bind { addr, source })?;
        if let Ok(bound) = listener.local_addr() {
            settings.port = bound.port();
        }
        if settings
            .cluster_secret
            .as_ref()
            .is_some_and(|s| s.is_placeholder())
        {
            tracing::warn!(
                "CLUSTER_SECRET is the deploy spec's placeholder: membership is unproven until \
                 it is set to a random secret"
            );
        }
        let me = Arc::new(Me::new(&settings, &process_env));
        let client = PeerClient::new(
            Some(me.addr().ip()),
            prober::probe_timeout(Duration::from_millis(settings.probe_interval_ms)),
        );
        let (tx, rx) = mpsc::channel(discovery::QUEUE);
        let scan = discovery::scan::plan(&settings.scan_cidrs, me.addr().ip(), &me.platform)
            .unwrap_or_default();
        let (announcements, announced) = Announcements::new(Scope::new(&scan, me.addr().ip()));
        let timing = Timing {
            dead_after: Duration::from_secs(settings.dead_after_secs),
            forget_after: Duration::from_secs(settings.forget_after_secs),
        };
        let reports = Reports::default();
        reports.set(
            Method::Announce,
            Report {
                detail: "replicas that find this one say hello (POST /api/hello); \
                         it calls the claimed address back before admitting them"
                    .into(),
                ..Report::default()
            },
        );
        let registry = Registry::new(
            &settings.database_url,
            Duration::from_secs(settings.registry_heartbeat_secs),
            Duration::from_secs(settings.registry_ttl_secs),
        );
        if registry.is_none() {
            reports.set(
                Method::Registry,
                Report {
                    off: Some("DATABASE_URL=off".into()),
                    ..Report::default()
                },
            );
        }
        let me_id = me.id().to_string();
        let node = Arc::new(Node {
            settings,
            me,
            membership: Membership::new(timing),
            reports,
            client,
            candidates: tx,
            announcements,
            registry,
            broadcaster: Broadcaster::new(me_id.as_str()),
            relay: Relay::default(),
            metrics: crate::metrics::Metrics::default(),
            peer_timelines: Mutex::default(),
            via_load_balancer: Mutex::default(),
            relay_subscribers: Mutex::default(),
            shutdown: watch::channel(false).0,
            drain: Drain::default(),
        });
        Ok(Application {
            node,
            listener,
            candidates: rx,
            announced,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.node.me.addr())
    }

    pub fn node(&self) -> Arc<Node> {
        self.node.clone()
    }

    /// Serves until `shutdown` resolves, then drains: turns unready, serves on until users'
    /// requests stop (or `DRAIN_SECS`), tells peers it is leaving, lets in-flight requests
    /// finish within [`drain::CLOSE_DEADLINE`].
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let Application {
            node,
            listener,
            candidates,
            announced,
        } = self;
        let mut tasks = start_tasks(&node, candidates);
        tasks.push(tokio::spawn(discovery::announce::run(
            node.clone(),
            announced,
        )));
        node.drain.set_ready();
        let me = node.me.identity();
        tracing::info!(
            instance_id = %me.instance_id, name = %me.name, service = %me.service,
            addr = %me.addr, platform = %me.platform, "replica ready"
        );

        let (closing, closed) = tokio::sync::oneshot::channel::<()>();
        let draining = node.clone();
        let graceful = async move {
            shutdown.await;
            // Long-lived streams end now, so their clients reconnect elsewhere.
            draining.shutdown.send_replace(true);
            let max = Duration::from_secs(draining.settings.drain_secs);
            tracing::info!(
                max_secs = max.as_secs(),
                "draining: unready, serving until requests stop"
            );
            let waited = draining.drain.drain(drain::QUIET, max).await;
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                "drained: saying goodbye"
            );
            say_goodbye(&draining).await;
            tracing::info!("closing: finishing in-flight requests");
            let _ = closing.send(());
        };
        let app = crate::web::router(node.clone());
        // Open connections, bounded in all and per client address.
        let connections = crate::web::serve::Slots::connections(
            &node.settings.trusted_proxies.clone().unwrap_or_default(),
        );
        let served = crate::web::serve::serve(listener, app, connections, graceful);
        // Whatever a connection does, the process ends a fixed time after closing began.
        let deadline = async {
            match closed.await {
                Ok(()) => tokio::time::sleep(drain::CLOSE_DEADLINE).await,
                Err(_) => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            () = served => Ok(()),
            () = deadline => {
                tracing::warn!(
                    deadline_secs = drain::CLOSE_DEADLINE.as_secs(),
                    "requests still open at the close deadline: closing anyway"
                );
                Ok(())
            }
        };
        for task in tasks {
            task.abort();
        }
        result
    }
}

fn start_tasks(node: &Arc<Node>, candidates: mpsc::Receiver<Candidate>) -> Vec<JoinHandle<()>> {
    let concurrency = scan_concurrency(node.settings.scan_concurrency as usize);
    let mut tasks = vec![
        tokio::spawn(node.me.clone().sample_system(Duration::from_secs(2))),
        tokio::spawn(discovery::run_verifier(node.clone(), candidates)),
        tokio::spawn(discovery::scan::run(node.clone(), concurrency)),
        tokio::spawn(prober::run(node.clone())),
        tokio::spawn(prober::run_clock(node.clone())),
    ];
    if let Some(registry) = &node.registry {
        tasks.push(tokio::spawn(registry.clone().run(node.clone())));
    }
    let resolver = match discovery::dns::resolver(node.settings.dns_server) {
        Ok(resolver) => Some(Arc::new(resolver)),
        Err(e) => {
            tracing::warn!(error = %e, "no DNS resolver: DNS names and seed host names cannot be looked up");
            None
        }
    };
    let hostname = sysinfo::System::host_name().ok();
    tasks.push(tokio::spawn(discovery::dns::run(
        node.clone(),
        resolver.clone(),
        hostname,
    )));
    tasks.push(tokio::spawn(discovery::seed::run(node.clone(), resolver)));
    tasks.push(tokio::spawn(crate::relay::run(node.clone())));
    tasks.push(tokio::spawn(crate::timeline::run(node.clone())));
    tasks.push(tokio::spawn(prober::run_load_balancer(node.clone())));
    tasks
}

/// Each scan connect holds a file descriptor: raise the limit, and never plan more connects
/// than it allows.
fn scan_concurrency(wanted: usize) -> usize {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let spare = (limit as usize).saturating_sub(256).max(16);
    wanted.min(spare)
}

/// Tells every live member we are leaving, so they mark us `left` at once instead of
/// waiting for probes to fail, and deletes our registry row.
async fn say_goodbye(node: &Node) {
    let me = node.me.identity();
    let snapshot = node.membership.snapshot();
    let calls = snapshot
        .members
        .iter()
        .filter(|m| matches!(m.state, State::Alive | State::Suspect))
        .map(|m| node.client.tell(m.identity.addr, "/api/goodbye", &me));
    let deregister = async {
        if let Some(registry) = &node.registry {
            registry.deregister(&me).await;
        }
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::future::join(join_all(calls), deregister),
    )
    .await;
}
