//! The shared database: where replicas meet (the registry's rows) and agree on a relay
//! hub. SQLite or PostgreSQL through one pool; connections are made lazily and again after
//! every failure, so a database that is down never stops a replica from serving.

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Connection, Row};
use tokio::sync::Notify;

use crate::config::{Database, DatabaseUrl};
use crate::wire::Identity;

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
pub struct StoreError(String);

/// How long a failing connection gets to say why it fails.
const DIAGNOSE_WITHIN: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
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
pub struct Claim {
    pub instance_id: String,
    pub name: String,
    pub addr: String,
    pub age_ms: i64,
}

/// A handle on the database, cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    pool: AnyPool,
    backend: Backend,
    url: DatabaseUrl,
    /// What the pool connects with (SQLite: creating the file if need be).
    connect_url: String,
}

impl Store {
    /// No I/O happens here: connections are made lazily, so a database that is down at
    /// start-up does not stop the replica from serving.
    pub fn open(database: &Database) -> Option<Store> {
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
                tracing::error!(error = %url.scrub(&e.to_string()), "database disabled");
                return None;
            }
        };
        Some(Store {
            inner: Arc::new(Inner {
                pool,
                backend,
                url,
                connect_url,
            }),
        })
    }

    pub fn backend(&self) -> Backend {
        self.inner.backend
    }

    /// Where the database is, for reports (password masked).
    pub fn place(&self) -> String {
        format!("{} ({})", self.inner.url, self.inner.backend.reach())
    }

    fn error(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError(self.inner.url.scrub(&e.to_string()))
    }

    /// The error as a person can act on it. A pool that timed out keeps the reason it
    /// could not connect to itself ("pool timed out" says nothing): ask once directly.
    async fn explain(&self, e: sqlx::Error) -> StoreError {
        if !matches!(e, sqlx::Error::PoolTimedOut) {
            return self.error(e);
        }
        let direct = tokio::time::timeout(
            DIAGNOSE_WITHIN,
            sqlx::AnyConnection::connect(&self.inner.connect_url),
        )
        .await;
        match direct {
            Ok(Err(cause)) => self.error(format!("cannot connect: {cause}")),
            Err(_) => self.error(format!(
                "cannot connect: no answer within {} s",
                DIAGNOSE_WITHIN.as_secs()
            )),
            // It answers now: the pool was only busy.
            Ok(Ok(_)) => self.error(e),
        }
    }

    /// Creates or updates the tables.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match MIGRATOR.run(&self.inner.pool).await {
            Ok(()) => Ok(()),
            // A database that is down at start-up fails here first: say why, as below.
            Err(sqlx::migrate::MigrateError::Execute(e)) => Err(self.explain(e).await),
            Err(e) => Err(self.error(e)),
        }
    }

    /// One heartbeat: refresh our row, read everyone's, delete those older than `ttl` (or
    /// from the future, or too long to be a replica's); the rows read, and how many went.
    pub async fn heartbeat(
        &self,
        me: &Identity,
        ttl: Duration,
    ) -> Result<(Vec<Claim>, u64), StoreError> {
        match self.beat(me, ttl).await {
            Ok(found) => Ok(found),
            Err(e) => Err(self.explain(e).await),
        }
    }

    async fn beat(&self, me: &Identity, ttl: Duration) -> Result<(Vec<Claim>, u64), sqlx::Error> {
        let now = self.inner.backend.now_ms();
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
        .execute(&self.inner.pool)
        .await?;
        if refreshed.rows_affected() == 0 {
            // New here (or our row was deleted while we could not reach the database).
            with_row(format!(
                "INSERT INTO rollcall_members \
                 (service, instance_id, name, addr, version, started_at, last_seen) \
                 VALUES ($1, $2, $3, $4, $5, $6, {now}) \
                 ON CONFLICT (service, instance_id) DO UPDATE SET last_seen = excluded.last_seen"
            ))
            .execute(&self.inner.pool)
            .await?;
            self.notify(&me.service).await;
        }

        let rows: Vec<AnyRow> = sqlx::query(AssertSqlSafe(format!(
            "SELECT instance_id, name, addr, {now} - last_seen AS age_ms FROM rollcall_members \
             WHERE service = $1 AND last_seen <= {now} AND {SANE_ROW} \
             ORDER BY last_seen DESC LIMIT {MAX_ROWS}"
        )))
        .bind(&me.service)
        .fetch_all(&self.inner.pool)
        .await?;
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
        .bind(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
        .execute(&self.inner.pool)
        .await?
        .rows_affected();
        Ok((claims, removed))
    }

    /// Tells every listening replica that this service's rows changed.
    async fn notify(&self, service: &str) {
        if self.inner.backend != Backend::Postgres {
            return;
        }
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(service)
            .execute(&self.inner.pool)
            .await;
        if let Err(e) = sent {
            tracing::debug!(error = %self.error(e), "NOTIFY failed; peers will see us at their next heartbeat");
        }
    }

    /// Rings `wake` whenever another replica of this service arrives or leaves (PostgreSQL
    /// only). Notifications sent while disconnected are lost, so every reconnect also rings
    /// it; a lost connection is retried every `retry`.
    pub async fn listen(self, service: String, wake: Arc<Notify>, retry: Duration) {
        loop {
            match sqlx::postgres::PgListener::connect(self.inner.url.secret()).await {
                Ok(mut listener) => {
                    if let Err(e) = listener.listen(CHANNEL).await {
                        tracing::debug!(error = %self.error(e), "LISTEN failed");
                    } else {
                        wake.notify_one();
                        loop {
                            match listener.try_recv().await {
                                Ok(Some(n)) if n.payload() == service => wake.notify_one(),
                                Ok(Some(_)) => {}
                                Ok(None) => wake.notify_one(),
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
            tokio::time::sleep(retry).await;
        }
    }

    /// The relay hub every replica of `service` should connect to: (cookie, hub instance).
    pub async fn hub(&self, service: &str) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<AnyRow> =
            sqlx::query("SELECT cookie, hub FROM rollcall_hub WHERE service = $1")
                .bind(service)
                .fetch_optional(&self.inner.pool)
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
    ) -> Result<Option<(String, String)>, StoreError> {
        let now = self.inner.backend.now_ms();
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
            .execute(&self.inner.pool)
            .await
            .map_err(|e| self.error(e))?;
        self.hub(service).await
    }

    /// Forgets a hub whose cookie stopped working, so the next one can be agreed on.
    pub async fn release_hub(&self, service: &str, cookie: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM rollcall_hub WHERE service = $1 AND cookie = $2")
            .bind(service)
            .bind(cookie)
            .execute(&self.inner.pool)
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
                .execute(&self.inner.pool)
                .await;
        match deleted {
            Ok(_) => self.notify(&me.service).await,
            Err(e) => tracing::warn!(error = %self.error(e), "could not delete our registry row"),
        }
    }
}
