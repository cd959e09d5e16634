//! The registry source: replicas meet in a shared database (JDBC_PING done right).
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

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};
use tokio::sync::Notify;

use super::{Candidate, Evidence, Report, SETTLE};
use crate::app::Node;
use crate::config::{Database, DatabaseUrl};
use crate::membership::State;
use crate::wire::Identity;
use crate::wire::Method;

/// The LISTEN/NOTIFY channel; the payload is the service name.
const CHANNEL: &str = "rollcall_members";
/// Rows read per cycle at most: a registry full of junk must not grow memory.
const MAX_ROWS: i64 = 1000;
/// A row a replica could have written: anything longer is junk, never read into memory
/// (one 20 MB row would otherwise cost every replica that much each cycle), and deleted.
const SANE_ROW: &str = "length(instance_id) <= 64 AND length(name) <= 253 \
                        AND length(addr) <= 64 AND length(version) <= 64 AND length(started_at) <= 64";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RegistryError(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The database's clock in epoch milliseconds: replicas' clocks may disagree.
    fn now_ms(self) -> &'static str {
        match self {
            Backend::Sqlite => "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
            Backend::Postgres => "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)",
        }
    }

    fn reach(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite, local to this machine",
            Backend::Postgres => "PostgreSQL, shared",
        }
    }
}

/// A row as read, with its age by the database's clock.
#[derive(Debug, Clone)]
struct Claim {
    instance_id: String,
    name: String,
    addr: String,
    age_ms: i64,
}

pub struct Registry {
    pool: AnyPool,
    backend: Backend,
    url: DatabaseUrl,
    heartbeat: Duration,
    ttl: Duration,
    /// Rung by LISTEN/NOTIFY: read the rows now rather than at the next heartbeat.
    wake: Notify,
}

impl Registry {
    /// No I/O happens here: connections are made lazily, so a database that is down at
    /// start-up does not stop the replica from serving.
    pub fn new(database: &Database, heartbeat: Duration, ttl: Duration) -> Option<Arc<Registry>> {
        let (backend, url) = match database {
            Database::Off => return None,
            Database::Sqlite(url) => (Backend::Sqlite, url.clone()),
            Database::Postgres(url) => (Backend::Postgres, url.clone()),
        };
        sqlx::any::install_default_drivers();
        let options = AnyPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .acquire_timeout(Duration::from_secs(2))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    if conn.backend_name() == "SQLite" {
                        // Several replicas on one host write the same file.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 2000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            });
        let connect_url = match backend {
            Backend::Sqlite if !url.secret().contains("mode=") => {
                let sep = if url.secret().contains('?') { '&' } else { '?' };
                format!("{}{sep}mode=rwc", url.secret())
            }
            _ => url.secret().to_string(),
        };
        let pool = match options.connect_lazy(&connect_url) {
            Ok(pool) => pool,
            Err(e) => {
                tracing::error!(error = %url.scrub(&e.to_string()), "registry disabled");
                return None;
            }
        };
        Some(Arc::new(Registry {
            pool,
            backend,
            url,
            heartbeat,
            ttl,
            wake: Notify::new(),
        }))
    }

    /// Where the registry is, for the report (password masked).
    fn place(&self) -> String {
        format!("{} ({})", self.url, self.backend.reach())
    }

    fn error(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError(self.url.scrub(&e.to_string()))
    }

    /// Heartbeats, reads and cleans until the process ends.
    pub async fn run(self: Arc<Self>, node: Arc<Node>) {
        if self.backend == Backend::Postgres {
            tokio::spawn(self.clone().listen(node.me.service().to_string()));
        }
        node.reports.set(
            Method::Registry,
            Report {
                detail: format!("{}: connecting", self.place()),
                ..Report::default()
            },
        );
        let mut migrated = false;
        let mut failing = false;
        let mut last_heartbeat: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let outcome = async {
                if !migrated {
                    MIGRATOR.run(&self.pool).await.map_err(|e| self.error(e))?;
                    migrated = true;
                }
                self.cycle(&node.me.identity()).await
            }
            .await;
            let report = match outcome {
                Ok((claims, removed)) => {
                    if failing {
                        node.membership.note("registry", "reachable again".into());
                    }
                    failing = false;
                    last_heartbeat = Some(Instant::now());
                    self.offer(&node, &claims).await;
                    // Judge the claims once verification had its chance.
                    tokio::time::sleep(SETTLE.min(self.heartbeat / 2)).await;
                    self.report(&node, &claims, removed, started)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "registry unavailable");
                    if !failing {
                        node.membership.note("registry", e.to_string());
                        node.metrics
                            .registry_errors
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    failing = true;
                    Report {
                        last_run: Some(Instant::now()),
                        duration: Some(started.elapsed()),
                        detail: format!(
                            "{}: {e}{}",
                            self.place(),
                            last_heartbeat.map_or(String::new(), |t| format!(
                                "; last good heartbeat {} s ago",
                                t.elapsed().as_secs()
                            ))
                        ),
                        failed: true,
                        ..Report::default()
                    }
                }
            };
            node.reports.set(Method::Registry, report);
            tokio::select! {
                _ = tokio::time::sleep(self.heartbeat.saturating_sub(started.elapsed())) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    /// One heartbeat: refresh our row, read everyone's, delete the stale ones.
    async fn cycle(&self, me: &Identity) -> Result<(Vec<Claim>, u64), RegistryError> {
        let now = self.backend.now_ms();
        // Both statements take our row's fields as $1..$6, in table order.
        let with_row = |sql: String| {
            sqlx::query(AssertSqlSafe(sql))
                .bind(&me.service)
                .bind(&me.instance_id)
                .bind(&me.name)
                .bind(me.addr.to_string())
                .bind(&me.version)
                .bind(&me.started_at)
        };
        let refreshed = with_row(format!(
            "UPDATE rollcall_members SET name = $3, addr = $4, version = $5, started_at = $6, \
             last_seen = {now} WHERE service = $1 AND instance_id = $2"
        ))
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        if refreshed.rows_affected() == 0 {
            // New here (or our row was deleted while we could not reach the database).
            with_row(format!(
                "INSERT INTO rollcall_members \
                 (service, instance_id, name, addr, version, started_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, {now}) \
                 ON CONFLICT (service, instance_id) DO UPDATE SET last_seen = excluded.last_seen"
            ))
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
            self.notify(&me.service).await;
        }

        let rows: Vec<AnyRow> = sqlx::query(AssertSqlSafe(format!(
            "SELECT instance_id, name, addr, {now} - last_seen AS age_ms FROM rollcall_members \
             WHERE service = $1 AND last_seen <= {now} AND {SANE_ROW} \
             ORDER BY last_seen DESC LIMIT {MAX_ROWS}"
        )))
        .bind(&me.service)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error(e))?;
        let claims = rows
            .iter()
            .filter_map(|row| {
                Some(Claim {
                    instance_id: row.try_get("instance_id").ok()?,
                    name: row.try_get("name").ok()?,
                    addr: row.try_get("addr").ok()?,
                    age_ms: row.try_get("age_ms").ok()?,
                })
            })
            .collect();

        let removed = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM rollcall_members WHERE service = $1 \
             AND (last_seen < {now} - $2 OR last_seen > {now} + $2 OR NOT ({SANE_ROW}))"
        )))
        .bind(&me.service)
        .bind(self.ttl_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| self.error(e))?
        .rows_affected();
        Ok((claims, removed))
    }

    fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }

    fn is_fresh(&self, claim: &Claim) -> bool {
        claim.age_ms <= self.ttl_ms()
    }

    /// Fresh rows of other replicas become candidates, each naming the instance it claims.
    async fn offer(&self, node: &Node, claims: &[Claim]) {
        for claim in claims {
            if claim.instance_id == node.me.id() || !self.is_fresh(claim) {
                continue;
            }
            let Ok(addr) = claim.addr.parse::<SocketAddr>() else {
                continue;
            };
            let candidate = Candidate {
                addr,
                method: Method::Registry,
                expect: Some(claim.instance_id.clone()),
            };
            if node.candidates.send(candidate).await.is_err() {
                return;
            }
        }
    }

    fn report(&self, node: &Node, claims: &[Claim], removed: u64, started: Instant) -> Report {
        let snapshot = node.membership.snapshot();
        let stale = claims.iter().filter(|c| !self.is_fresh(c)).count();
        let others = claims
            .iter()
            .filter(|c| self.is_fresh(c) && c.instance_id != node.me.id())
            .count();
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
                    (false, _) => ("fails", format!("stale ({age} old): ignored and deleted")),
                    _ if c.instance_id == node.me.id() => {
                        ("works", format!("this replica; heartbeat {age} ago"))
                    }
                    (true, true) => ("works", format!("heartbeat {age} ago; answers directly")),
                    (true, false) => (
                        "partial",
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
            last_run: Some(Instant::now()),
            duration: Some(started.elapsed()),
            detail: format!(
                "{}: {} rows ({stale} stale, {removed} deleted); heartbeat every {} s, TTL {} s{}",
                self.place(),
                claims.len(),
                self.heartbeat.as_secs(),
                self.ttl.as_secs(),
                if self.backend == Backend::Postgres {
                    "; LISTEN/NOTIFY on"
                } else {
                    ""
                },
            ),
            evidence,
            claimed: others,
            ..Report::default()
        }
    }

    async fn notify(&self, service: &str) {
        if self.backend != Backend::Postgres {
            return;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(service)
            .execute(&self.pool)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %self.error(e), "NOTIFY failed; peers will see us at their next heartbeat");
        }
    }

    /// Wakes the heartbeat loop whenever another replica of this service arrives or leaves.
    /// Notifications sent while disconnected are lost, so every reconnect also wakes it.
    async fn listen(self: Arc<Self>, service: String) {
        loop {
            match sqlx::postgres::PgListener::connect(self.url.secret()).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(CHANNEL).await {
                        tracing::debug!(error = %self.error(e), "LISTEN failed");
                    } else {
                        self.wake.notify_one();
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) if n.payload() == service => self.wake.notify_one(),
                                Ok(Some(_)) => {}
                                Ok(None) => self.wake.notify_one(),
                                Err(e) => {
                                    tracing::debug!(error = %self.error(e), "LISTEN connection lost");
                                    break;
                                }
                            }
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %self.error(e), "LISTEN connect failed"),
            }
            tokio::time::sleep(self.heartbeat).await;
        }
    }

    /// The relay hub every replica of `service` should connect to: (cookie, hub instance).
    pub async fn hub(&self, service: &str) -> Result<Option<(String, String)>, RegistryError> {
        let row: Option<AnyRow> =
            sqlx::query("SELECT cookie, hub FROM rollcall_hub WHERE service = $1")
                .bind(service)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.error(e))?;
        Ok(row.and_then(|r| Some((r.try_get("cookie").ok()?, r.try_get("hub").ok()?))))
    }

    /// Records `cookie` as the hub's unless another replica recorded one first (or, with
    /// `replacing`, unless the stored cookie is no longer that one); returns the hub to use.
    pub async fn claim_hub(
        &self,
        service: &str,
        cookie: &str,
        hub: &str,
        replacing: Option<&str>,
    ) -> Result<Option<(String, String)>, RegistryError> {
        let now = self.backend.now_ms();
        let sql = match replacing {
            Some(_) => format!(
                "UPDATE rollcall_hub SET cookie = $2, hub = $3, updated = {now} WHERE service = $1 AND cookie = $4"
            ),
            None => format!(
                "INSERT INTO rollcall_hub (service, cookie, hub, updated) VALUES ($1, $2, $3, {now}) \
                 ON CONFLICT (service) DO NOTHING"
            ),
        };
        sqlx::query(AssertSqlSafe(sql))
            .bind(service)
            .bind(cookie)
            .bind(hub)
            .bind(replacing.unwrap_or_default())
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        self.hub(service).await
    }

    /// Forgets a hub whose cookie stopped working, so the next one can be agreed on.
    pub async fn release_hub(&self, service: &str, cookie: &str) -> Result<(), RegistryError> {
        sqlx::query("DELETE FROM rollcall_hub WHERE service = $1 AND cookie = $2")
            .bind(service)
            .bind(cookie)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }

    /// Deletes our row on graceful shutdown, so peers need not wait for the TTL.
    pub async fn deregister(&self, me: &Identity) {
        let deleted =
            sqlx::query("DELETE FROM rollcall_members WHERE service = $1 AND instance_id = $2")
                .bind(&me.service)
                .bind(&me.instance_id)
                .execute(&self.pool)
                .await;
        match deleted {
            Ok(_) => self.notify(&me.service).await,
            Err(e) => tracing::warn!(error = %self.error(e), "could not delete our registry row"),
        }
    }
}
