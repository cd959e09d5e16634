//! The registry method: replicas meet in a shared database (JDBC_PING done right).
//!
//! Each replica upserts its row every `REGISTRY_HEARTBEAT_SECS`, stamped by the
//! database's clock; rows older than `REGISTRY_TTL_SECS` are ignored and deleted by any
//! replica, so a crashed member's row cannot outlive it. A row is only a claim: its
//! address goes to verification like any other candidate. On PostgreSQL, LISTEN/NOTIFY
//! tells every replica at once when a replica arrives or leaves; polling stays as the
//! fallback. When the database is away, the replica keeps serving and the report says
//! why; the pool reconnects by itself when the database returns.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Notify, broadcast};

use super::candidate::Candidate;
use super::report::{Claimed, Evidence, Report};
use super::source::{Round, SETTLE, Source};
use crate::identity::Me;
use crate::membership::{MemberEvent, Snapshot, State};
use crate::metrics::Metrics;
use crate::store::{Backend, Claim, Store, StoreError};
use crate::timeline::{EventKind, Timeline};
use crate::wire::{Method, MethodStatus};

/// The registry method: heartbeats into the store and reads everyone's rows.
pub struct Registry {
    store: Store,
    me: Arc<Me>,
    heartbeat: Duration,
    ttl: Duration,
    /// Rung by LISTEN/NOTIFY: read the rows now rather than at the next heartbeat.
    wake: Arc<Notify>,
    migrated: bool,
    failing: bool,
    last_heartbeat: Option<Instant>,
    /// Where "unreachable" and "reachable again" go.
    timeline: Timeline,
    metrics: Metrics,
}

/// How long a replica that lost a migration race waits before looking again.
const MIGRATION_RETRY: Duration = Duration::from_millis(200);

/// One heartbeat's rows and how many stale ones it deleted, or why it failed.
pub type Heartbeat = Result<(Vec<Claim>, u64), StoreError>;

impl Registry {
    /// `None` store: the method is off.
    pub fn new(
        store: Option<Store>,
        me: Arc<Me>,
        heartbeat: Duration,
        ttl: Duration,
        timeline: Timeline,
        metrics: Metrics,
    ) -> Result<Registry, String> {
        let store = store.ok_or("DATABASE_URL=off")?;
        Ok(Registry {
            store,
            me,
            heartbeat,
            ttl,
            wake: Arc::new(Notify::new()),
            migrated: false,
            failing: false,
            last_heartbeat: None,
            timeline,
            metrics,
        })
    }

    /// On PostgreSQL, the task that wakes this method whenever another replica arrives
    /// or leaves (LISTEN/NOTIFY), for the caller to run beside it.
    pub fn listener(&self) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
        (self.store.backend() == Backend::Postgres).then(|| {
            self.store.clone().listen(
                self.me.service().to_string(),
                self.wake.clone(),
                self.heartbeat,
            )
        })
    }

    /// The task that wakes this method when a member stops answering, for the caller to
    /// run beside it: the rows read before its death cannot say whether it is gone or cut
    /// off but still heartbeating; rows read now can.
    pub fn on_deaths(
        &self,
        mut events: broadcast::Receiver<MemberEvent>,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let wake = self.wake.clone();
        async move {
            loop {
                match events.recv().await {
                    Ok(MemberEvent::StateChanged {
                        to: State::Dead, ..
                    })
                    | Err(broadcast::error::RecvError::Lagged(_)) => wake.notify_one(),
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        }
    }

    fn is_fresh(&self, claim: &Claim) -> bool {
        i64::try_from(self.ttl.as_millis()).is_ok_and(|ttl| claim.age_ms <= ttl)
    }

    async fn beat(&mut self) -> Heartbeat {
        if !self.migrated {
            if let Err(raced) = self.store.migrate().await {
                // Replicas that start together migrate one database at the same moment
                // (SQLite has no migration lock): whoever lost finds it done on a second
                // look; a real failure fails again.
                tracing::debug!(error = %raced, "migration failed once; looking again");
                tokio::time::sleep(MIGRATION_RETRY).await;
                self.store.migrate().await?;
            }
            self.migrated = true;
        }
        self.store.heartbeat(&self.me.identity(), self.ttl).await
    }

    /// Fresh rows of other replicas become candidates, each naming the instance it claims.
    fn offer(&self, claims: &[Claim]) -> Vec<Candidate> {
        claims
            .iter()
            .filter(|claim| claim.instance_id != self.me.id() && self.is_fresh(claim))
            .filter_map(|claim| {
                Some(Candidate {
                    addr: claim.addr.parse::<SocketAddr>().ok()?,
                    method: Method::Registry,
                    expect: Some(claim.instance_id.clone()),
                })
            })
            .collect()
    }

    fn report(&self, claims: &[Claim], removed: u64, snapshot: &Snapshot) -> Report {
        let stale = claims.iter().filter(|c| !self.is_fresh(c)).count();
        let read = Instant::now();
        let others = claims
            .iter()
            .filter(|c| self.is_fresh(c) && c.instance_id != self.me.id())
            .map(|c| Claimed {
                instance_id: c.instance_id.clone(),
                addr: c.addr.clone(),
                written: read
                    .checked_sub(Duration::from_millis(c.age_ms.max(0).unsigned_abs()))
                    .unwrap_or(read),
            })
            .collect();
        let evidence = claims
            .iter()
            .map(|c| {
                let age = format!("{:.1} s", c.age_ms as f64 / 1000.0);
                let subject = format!(
                    "{} {}",
                    crate::verify::clip(&c.name),
                    crate::verify::clip(&c.addr)
                );
                let verified = snapshot
                    .member(&c.instance_id)
                    .is_some_and(|m| m.state == State::Alive);
                let (status, detail) = match (self.is_fresh(c), verified) {
                    (false, _) => (
                        MethodStatus::Fails,
                        format!("stale ({age} old): ignored and deleted"),
                    ),
                    _ if c.instance_id == self.me.id() => (
                        MethodStatus::Works,
                        format!("this replica; heartbeat {age} ago"),
                    ),
                    (true, true) => (
                        MethodStatus::Works,
                        format!("heartbeat {age} ago; answers directly"),
                    ),
                    (true, false) => (
                        MethodStatus::Partial,
                        format!("heartbeat {age} ago; does not answer directly from here"),
                    ),
                };
                Evidence {
                    subject,
                    status,
                    detail,
                }
            })
            .collect();
        Report {
            detail: format!(
                "{}: {} rows ({stale} stale, {removed} deleted); heartbeat every {} s, TTL {} s{}",
                self.store.place(),
                claims.len(),
                self.heartbeat.as_secs(),
                self.ttl.as_secs(),
                if self.store.backend() == Backend::Postgres {
                    "; LISTEN/NOTIFY on"
                } else {
                    ""
                },
            ),
            evidence,
            claims: others,
            ..Report::default()
        }
    }

    fn unavailable(&mut self, e: &StoreError) -> Report {
        // An outage is news when it begins (and when it ends), not every round.
        if !self.failing {
            tracing::warn!(error = %e, "registry unavailable");
            self.timeline.note(EventKind::Registry, e.to_string());
            self.metrics.registry_error();
        }
        self.failing = true;
        Report {
            detail: format!(
                "{}: {e}{}",
                self.store.place(),
                self.last_heartbeat.map_or(String::new(), |t| format!(
                    "; last good heartbeat {} s ago",
                    t.elapsed().as_secs()
                ))
            ),
            failed: true,
            ..Report::default()
        }
    }
}

impl Source for Registry {
    type Found = Heartbeat;
    const METHOD: Method = Method::Registry;

    fn starting(&self) -> Option<String> {
        Some(format!("{}: connecting", self.store.place()))
    }

    async fn gather(&mut self) -> Round<Heartbeat> {
        let found = self.beat().await;
        let candidates = match &found {
            Ok((claims, _)) => self.offer(claims),
            Err(_) => Vec::new(),
        };
        Round { candidates, found }
    }

    /// Claims are judged once verification had its chance; a failure at once.
    fn settle(&self, found: &Heartbeat) -> Duration {
        match found {
            Ok(_) => SETTLE.min(self.heartbeat / 2),
            Err(_) => Duration::ZERO,
        }
    }

    fn judge(&mut self, found: Heartbeat, snapshot: &Snapshot) -> Report {
        match found {
            Ok((claims, removed)) => {
                if self.failing {
                    tracing::info!("registry reachable again");
                    self.timeline
                        .note(EventKind::Registry, "reachable again".into());
                }
                self.failing = false;
                self.last_heartbeat = Some(Instant::now());
                self.report(&claims, removed, snapshot)
            }
            Err(e) => self.unavailable(&e),
        }
    }

    fn pause(&mut self, took: Duration) -> Duration {
        self.heartbeat.saturating_sub(took)
    }

    fn wake(&self) -> impl std::future::Future<Output = ()> + Send {
        let wake = self.wake.clone();
        async move { wake.notified().await }
    }
}
