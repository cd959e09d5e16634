//! One replica: builds its parts, wires them together, serves until told to stop. Only
//! wiring happens here; each part is a small handle owned by the module that does its job.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broadcast::Broadcaster;
use crate::client::PeerClient;
use crate::config::{Settings, Switch};
use crate::discovery::admit::{self, Admit};
use crate::discovery::announce::{self, Announce};
use crate::discovery::announcements::{Announcements, Scope};
use crate::discovery::candidate::{self, Candidate};
use crate::discovery::dns::{self, Dns};
use crate::discovery::platform::PlatformSource;
use crate::discovery::registry::Registry;
use crate::discovery::report::{Report, Reports};
use crate::discovery::scan::{self, InFlight, Scan};
use crate::discovery::seed::Seed;
use crate::discovery::source::{self, Context};
use crate::drain::{self, Drain};
use crate::gossip::{self, Rumours};
use crate::identity::{Me, process_env};
use crate::membership::{MemberEvent, Membership, State, Timing};
use crate::metrics::Metrics;
use crate::prober::{self, LocalHealth, Prober, ViaLoadBalancer};
use crate::relay::Relay;
use crate::store::Store;
use crate::timeline::Timeline;
use crate::verify::Verifier;
use crate::web::serve::Slots;
use crate::web::status::membership_mode;
use crate::web::{self, AppState, Limits, PageSettings, PeerGate, ViewGate};
use crate::wire::Method;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot build an HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] metrics_exporter_prometheus::BuildError),
}

/// A replica, built and bound, not yet running.
pub struct Application {
    listener: TcpListener,
    background: Background,
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
        let settings = Arc::new(settings);
        let me = Arc::new(Me::new(&settings, &process_env));
        let client = PeerClient::new(
            Some(me.addr().ip()),
            prober::probe_timeout(settings.probe_interval),
        )?;
        let secret = settings.proof_secret().cloned();
        let verifier = Verifier::new(client.clone(), me.clone(), secret.clone());
        let membership = Membership::new(Timing {
            dead_after: settings.dead_after,
            forget_after: settings.forget_after,
        });
        let member_events = [
            membership.events(),
            membership.events(),
            membership.events(),
        ];
        let (candidate_queue, candidates) = mpsc::channel(candidate::QUEUE);
        let scan_ranges =
            scan::plan(&settings.scan_cidrs, me.addr().ip(), &me.platform).unwrap_or_default();
        let (announcements, announced) =
            Announcements::new(Scope::new(&scan_ranges, me.addr().ip()));
        let reports = Reports::default();
        reports.set(
            Method::Announce,
            Report::detail(
                "replicas that find this one say hello (POST /api/hello); \
                 it calls the claimed address back before admitting them",
            ),
        );
        let relay = Relay::new(
            settings.public_url.clone(),
            settings.affinity_cookie.clone(),
            secret,
            (me.id().to_string(), me.service().to_string()),
            client,
        );
        let trusted = settings.trusted_proxies.clone().unwrap_or_default();
        let state = AppState {
            membership: membership.clone(),
            reports,
            announce: Announce {
                me: me.clone(),
                membership,
                announcements: announcements.clone(),
            },
            verifier,
            inbox: Broadcaster::new(me.id()),
            relay,
            timeline: Timeline::default(),
            via_load_balancer: ViaLoadBalancer::default(),
            drain: Drain::default(),
            shutdown: CancellationToken::new(),
            metrics: Metrics::new()?,
            page: PageSettings {
                expected_replicas: settings.expected_replicas,
                membership_mode: membership_mode(&settings),
            },
            peer_gate: Arc::new(PeerGate::default()),
            probe_gate: Arc::default(),
            rumours: Rumours::default(),
            view_gate: Arc::new(ViewGate::default()),
            streams: web::stream_slots(),
            relay_streams: web::relay_slots(),
            limits: Arc::new(Limits::new(settings.broadcast_rate, trusted)),
            me,
        };
        Ok(Application {
            listener,
            background: Background {
                store: Store::open(&settings.database_url),
                settings,
                state,
                candidates,
                candidate_queue,
                announced,
                announcements,
                hub_http: crate::client::public_http()?,
                member_events,
            },
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| self.background.state.me.addr())
    }

    /// What the web layer reads: for tests and the demo.
    pub fn state(&self) -> AppState {
        self.background.state.clone()
    }

    /// Serves until `shutdown` resolves, then drains: turns unready, serves on until users'
    /// requests stop (or `DRAIN_SECS`), tells peers it is leaving, lets in-flight requests
    /// finish within [`drain::CLOSE_DEADLINE`].
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Application {
            listener,
            background,
        } = self;
        let settings = background.settings.clone();
        let state = background.state.clone();
        let store = background.store.clone();
        let tasks = TaskTracker::new();
        let stop_tasks = CancellationToken::new();
        background.start(&tasks, &stop_tasks);
        state.drain.set_ready();
        let me = state.me.identity();
        tracing::info!(
            instance_id = %me.instance_id, name = %me.name, service = %me.service,
            addr = %me.addr, platform = %me.platform, "replica ready"
        );

        let (closing, closed) = tokio::sync::oneshot::channel::<()>();
        let draining = state.clone();
        let max = settings.drain;
        let graceful = async move {
            shutdown.await;
            // Long-lived streams end now, so their clients reconnect elsewhere.
            draining.shutdown.cancel();
            tracing::info!(
                max_secs = max.as_secs(),
                "draining: unready, serving until requests stop"
            );
            let waited = draining.drain.drain(drain::QUIET, max).await;
            tracing::info!(
                waited_ms = waited.as_millis() as u64,
                "drained: saying goodbye"
            );
            say_goodbye(&draining, store.as_ref()).await;
            tracing::info!("closing: finishing in-flight requests");
            let _ = closing.send(());
        };
        let app = web::router(state, settings.status_page == Switch::On);
        // Open connections, bounded in all and per client address.
        let connections = Slots::connections(&settings.trusted_proxies.clone().unwrap_or_default());
        let served = web::serve::serve(listener, app, connections, graceful);
        // Whatever a connection does, the process ends a fixed time after closing began.
        let deadline = async {
            match closed.await {
                Ok(()) => tokio::time::sleep(drain::CLOSE_DEADLINE).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = served => {}
            () = deadline => {
                tracing::warn!(
                    deadline_secs = drain::CLOSE_DEADLINE.as_secs(),
                    "requests still open at the close deadline: closing anyway"
                );
            }
        }
        stop_tasks.cancel();
        tasks.close();
        if tokio::time::timeout(TASKS_STOP_WITHIN, tasks.wait())
            .await
            .is_err()
        {
            tracing::debug!("background tasks still stopping; leaving them");
        }
    }
}

/// The parts a replica is built from, and what its background tasks start with.
struct Background {
    settings: Arc<Settings>,
    state: AppState,
    store: Option<Store>,
    candidates: mpsc::Receiver<Candidate>,
    candidate_queue: candidate::CandidateQueue,
    announced: mpsc::Receiver<SocketAddr>,
    announcements: Announcements,
    hub_http: reqwest::Client,
    /// Subscribed as the table is made, so no change goes unrecorded or unlogged.
    member_events: [broadcast::Receiver<MemberEvent>; 3],
}

impl Background {
    /// Every background task, each ended by `stop`.
    fn start(self, tasks: &TaskTracker, stop: &CancellationToken) {
        let spawn = |task: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>| {
            let stop = stop.clone();
            tasks.spawn(async move {
                stop.run_until_cancelled(task).await;
            });
        };
        let s = &self.state;
        let settings = &*self.settings;
        spawn(Box::pin(s.me.clone().sample_system(Duration::from_secs(2))));
        spawn(Box::pin(s.metrics.clone().upkeep()));
        let [for_timeline, for_log, for_news] = self.member_events;
        spawn(Box::pin(crate::timeline::follow(
            s.timeline.clone(),
            for_timeline,
        )));
        spawn(Box::pin(crate::telemetry::log_member_events(for_log)));
        spawn(Box::pin(gossip::follow(
            s.rumours.clone(),
            s.membership.clone(),
            for_news,
        )));

        let admit = Admit {
            verifier: s.verifier.clone(),
            membership: s.membership.clone(),
            announcements: self.announcements.clone(),
        };
        spawn(Box::pin(admit::run(admit.clone(), self.candidates)));
        spawn(Box::pin(announce::run(
            admit,
            self.announcements.clone(),
            self.announced,
        )));

        let context = Context {
            candidates: self.candidate_queue.clone(),
            membership: s.membership.clone(),
            reports: s.reports.clone(),
            metrics: s.metrics.clone(),
            cancel: stop.clone(),
        };
        let in_flight = scan_in_flight(settings.scan_concurrency as usize);
        let scan = Scan::new(
            settings,
            &s.me,
            in_flight,
            self.candidate_queue.clone(),
            s.membership.clone(),
            s.metrics.clone(),
        );
        spawn(Box::pin(source::run(scan, context.clone())));
        let resolver = match dns::resolver(settings.dns_server) {
            Ok(resolver) => Some(Arc::new(resolver)),
            Err(e) => {
                tracing::warn!(error = %e, "no DNS resolver: DNS names and seed host names cannot be looked up");
                None
            }
        };
        let hostname = sysinfo::System::host_name().ok();
        let dns = Dns::new(
            settings,
            &s.me,
            hostname,
            resolver.clone(),
            s.metrics.clone(),
        );
        spawn(Box::pin(source::run(dns, context.clone())));
        let seed = Seed::new(settings.seed_peers.as_ref(), resolver, s.me.addr());
        spawn(Box::pin(source::run(seed, context.clone())));
        let platform = PlatformSource::new(settings, &s.me, &process_env);
        spawn(Box::pin(source::run(platform, context.clone())));
        let registry = Registry::new(
            self.store.clone(),
            s.me.clone(),
            settings.registry_heartbeat,
            settings.registry_ttl,
            s.timeline.clone(),
            s.metrics.clone(),
        );
        if let Ok(registry) = &registry {
            if let Some(listener) = registry.listener() {
                spawn(Box::pin(listener));
            }
            spawn(Box::pin(registry.on_deaths(s.membership.events())));
        }
        spawn(Box::pin(source::run(registry, context)));

        let health = LocalHealth::default();
        let prober = Prober {
            verifier: s.verifier.clone(),
            membership: s.membership.clone(),
            candidates: self.candidate_queue.clone(),
            metrics: s.metrics.clone(),
            interval: settings.probe_interval,
            fanout: settings.probe_fanout,
            health: health.clone(),
            announcements: self.announcements.clone(),
        };
        spawn(Box::pin(prober::run(prober)));
        spawn(Box::pin(prober::run_clock(
            s.membership.clone(),
            settings.probe_interval,
            health,
        )));
        spawn(Box::pin(prober::run_load_balancer(
            s.verifier.client().clone(),
            settings.public_url.clone(),
            s.via_load_balancer.clone(),
        )));
        spawn(Box::pin(crate::relay::run(
            s.relay.clone(),
            self.store.clone(),
            s.inbox.clone(),
            s.reports.clone(),
            s.membership.clone(),
            self.hub_http,
        )));
        spawn(Box::pin(crate::timeline::run(
            s.timeline.clone(),
            s.membership.clone(),
            s.verifier.client().clone(),
        )));
    }
}

/// How long background tasks get to stop after the server has closed.
const TASKS_STOP_WITHIN: Duration = Duration::from_secs(1);

/// Each scan connect holds a file descriptor: raise the limit, and never plan more connects
/// than it allows.
fn scan_in_flight(wanted: usize) -> InFlight {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    InFlight::from_limit(wanted, limit)
}

/// Tells every live member we are leaving, so they mark us `left` at once instead of
/// waiting for probes to fail, and deletes our registry row.
async fn say_goodbye(state: &AppState, store: Option<&Store>) {
    let me = state.me.identity();
    let snapshot = state.membership.snapshot();
    let client = state.verifier.client();
    let calls = snapshot
        .members
        .iter()
        .filter(|m| matches!(m.state, State::Alive | State::Suspect))
        .map(|m| client.tell(m.identity.addr, "/api/goodbye", &me));
    let deregister = async {
        if let Some(store) = store {
            store.deregister(&me).await;
        }
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        futures_util::future::join(join_all(calls), deregister),
    )
    .await;
}
