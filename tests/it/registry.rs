//! The registry source against real databases: SQLite files shared by replicas on this
//! machine, and a real PostgreSQL server started for each test. Scanning is off, so the
//! registry is the only way replicas can find each other (announce follows from it).

use std::time::{Duration, Instant};

use sqlx::sqlite::SqlitePool;

use crate::common::demo::Demo;
use crate::common::postgres::Postgres;
use crate::common::*;

const SQLITE_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

fn registry_env(url: &str, heartbeat: &str, ttl: &str) -> Vec<(&'static str, String)> {
    vec![
        ("SCAN_CIDRS", "off".into()),
        ("DATABASE_URL", url.into()),
        ("REGISTRY_HEARTBEAT_SECS", heartbeat.into()),
        ("REGISTRY_TTL_SECS", ttl.into()),
    ]
}

fn start(last: u8, port: u16, env: &[(&'static str, String)]) -> Replica {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Replica::start(last, port, &env)
}

async fn rows_for(db: &SqlitePool, instance_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM rollcall_members WHERE instance_id = $1")
        .bind(instance_id)
        .fetch_one(db)
        .await
        .unwrap_or(-1)
}

/// The demo starts its replicas at the same moment, and they migrate one fresh SQLite
/// file at the same moment: none of them may report the registry failing for it.
#[tokio::test]
async fn demo_replicas_starting_together_never_report_a_migration_race() {
    // Twenty demo starts in a row, each three replicas at once: alone, so a slow start is
    // the race's doing and not another test's.
    let _machine = heavy().await;
    const STARTS: usize = 20;
    for round in 0..STARTS {
        // Its banner comes once every replica answers /readyz.
        let (mut demo, _) = Demo::start_ready(&[]).await;
        let port = demo.port;
        let replicas: Vec<_> = (2..=4).map(|last| Replica::attach(last, port)).collect();
        for r in &replicas {
            registry_ran(r).await;
        }
        for r in &replicas {
            let errors = registry_errors(r).await;
            assert_eq!(
                errors, "rollcall_registry_heartbeat_errors_total 0",
                "start {round}"
            );
        }
        // Stopped as a user would, so its temporary directory goes too.
        let (status, _) = demo.interrupt().await;
        assert!(status.success(), "start {round}: {status:?}");
    }
    println!("{STARTS} demo starts (3 replicas, one fresh SQLite file each): no registry error");
}

/// Three replicas migrating one fresh PostgreSQL database at the same moment, twenty
/// times: none of them may count a registry error for it.
#[tokio::test]
async fn postgres_replicas_starting_together_never_report_a_migration_race() {
    let _machine = shared().await;
    let pg = Postgres::start();
    let admin = sqlx::PgPool::connect(&pg.url(None))
        .await
        .expect("connect to the test server");
    const STARTS: usize = 20;
    for round in 0..STARTS {
        let database = format!("race_{round}");
        // A name made here from a number: nothing to inject.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .expect("a fresh database");
        let url = pg.url(None).replace("/postgres", &format!("/{database}"));
        let port = free_port();
        let env = registry_env(&url, "1", "5");
        // Addresses no other test uses: another test's replica calling out from 127.0.0.3
        // may hold the very port (an ephemeral one) this start would listen on.
        let replicas: Vec<Replica> = (93..=95).map(|last| start(last, port, &env)).collect();
        for r in &replicas {
            // A round that failed says why instead of how many rows it read. (Its status may
            // still be `fails` in the first round: no other replica had written a row yet.)
            let report = registry_ran(r).await;
            let detail = report["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(" rows ("), "start {round}: {report}");
            let errors = registry_errors(r).await;
            assert_eq!(
                errors, "rollcall_registry_heartbeat_errors_total 0",
                "start {round}"
            );
        }
    }
    println!("{STARTS} starts (3 replicas, one fresh PostgreSQL database each): no registry error");
}

/// The replica's registry report, once it has run a round.
async fn registry_ran(replica: &Replica) -> serde_json::Value {
    eventually("the registry to run", || async {
        let report = discovery(replica, "registry").await?;
        if report["last_run_ms_ago"].is_u64() {
            Ok(report)
        } else {
            Err(report.to_string())
        }
    })
    .await
}

/// The replica's registry error counter line, from `/metrics`.
async fn registry_errors(replica: &Replica) -> String {
    let metrics = client()
        .get(replica.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .unwrap_or_default();
    metrics
        .lines()
        .find(|l| l.starts_with("rollcall_registry_heartbeat_errors_total"))
        .unwrap_or("no registry error counter")
        .to_string()
}

#[tokio::test]
async fn sqlite_registry_alone_finds_replicas_and_cleans_up_after_them() {
    let _machine = shared().await;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("rollcall-registry-test-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("registry.db").display());
    let env = registry_env(&url, "1", "3");
    let a = start(2, port, &env);
    let b = start(3, port, &env);
    let mut c = start(4, port, &env);
    let started = Instant::now();
    wait_until_all_see(&[&a, &b, &c]).await;
    println!(
        "sqlite: 3 replicas listed each other after {:?}",
        started.elapsed()
    );
    let (a_id, b_id, c_id) = (
        instance_id(&a).await,
        instance_id(&b).await,
        instance_id(&c).await,
    );
    for (r, other) in [(&a, &b_id), (&b, &c_id), (&c, &a_id), (&a, &c_id)] {
        wait_for_source(r, other, "registry").await;
    }
    // `a` has both others through the registry: found every current member, it works.
    let report = discovery(&a, "registry").await.unwrap();
    assert_eq!(report["status"], "works", "{report}");
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .contains("local to this machine"),
        "{report}"
    );

    // Rows are claims: one naming a live replica's address under another id, one naming
    // an address where nothing listens. Neither is ever admitted.
    let db = SqlitePool::connect(&url).await.unwrap();
    for (id, addr) in [
        ("01FAKEELSEWHERE", b.addr.to_string()),
        ("01FAKENOBODY", format!("127.0.0.99:{port}")),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO rollcall_members VALUES ('rollcall', $1, 'fake', $2, 'x', 'x', {SQLITE_NOW})"
        )))
        .bind(id)
        .bind(addr)
        .execute(&db)
        .await
        .unwrap();
    }
    eventually("the fake rows to be read", || async {
        let report = discovery(&a, "registry").await?;
        let evidence = report["evidence"].to_string();
        if evidence.matches("fake").count() == 2 {
            Ok(())
        } else {
            Err(evidence)
        }
    })
    .await;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(2) {
        for r in [&a, &b, &c] {
            let members = states(r).await.unwrap();
            assert!(
                !members.iter().any(|(id, _, _)| id.starts_with("01FAKE")),
                "{members:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Nobody heartbeats them: any replica deletes them after the TTL.
    eventually("fake rows deleted", || async {
        let left = rows_for(&db, "01FAKEELSEWHERE").await + rows_for(&db, "01FAKENOBODY").await;
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} fake rows"))
        }
    })
    .await;

    // A graceful stop deletes the row at once.
    c.terminate();
    let status = exited(&mut c.child, "stopped replica").await;
    assert!(status.success());
    assert_eq!(
        rows_for(&db, &c_id).await,
        0,
        "row deleted on graceful shutdown"
    );
    wait_for_state(&a, &c_id, "left").await;

    // SIGKILL: no goodbye; the row goes within TTL + one heartbeat and the member dies.
    drop(b);
    let killed = Instant::now();
    wait_for_state(&a, &b_id, "dead").await;
    let dead_after = killed.elapsed();
    eventually("killed replica's row deleted", || async {
        match rows_for(&db, &b_id).await {
            0 => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await;
    let row_gone = killed.elapsed();
    println!(
        "sqlite: SIGKILLed replica dead after {dead_after:?}, its row deleted after {row_gone:?} (TTL 3 s, heartbeat 1 s)"
    );
    // The contract: gone within TTL + one heartbeat (plus a second for this machine).
    assert!(row_gone < Duration::from_secs(3 + 1 + 1), "{row_gone:?}");
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_notify_brings_a_new_replica_well_before_a_heartbeat() {
    let _machine = shared().await;
    let pg = Postgres::start();
    let port = free_port();
    // A long heartbeat: only LISTEN/NOTIFY can explain a fast registry sighting.
    let env = registry_env(&pg.url(None), "30", "90");
    let a = start(2, port, &env);
    let b = start(3, port, &env);
    wait_until_all_see(&[&a, &b]).await;
    let report = eventually("a registry report", || async {
        let report = discovery(&a, "registry").await?;
        if report["last_run_ms_ago"].is_null() {
            Err(report.to_string())
        } else {
            Ok(report)
        }
    })
    .await;
    assert!(
        report["detail"].as_str().unwrap().contains("LISTEN/NOTIFY"),
        "{report}"
    );
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .contains("PostgreSQL, shared"),
        "{report}"
    );

    let c = start(4, port, &env);
    let c_id = instance_id(&c).await;
    let started = Instant::now();
    wait_for_source(&a, &c_id, "registry").await;
    wait_for_source(&b, &c_id, "registry").await;
    let took = started.elapsed();
    println!(
        "postgres: new replica seen through the registry on both others after {took:?} (heartbeat 30 s)"
    );
    assert!(
        took < Duration::from_secs(10),
        "{took:?}: NOTIFY did not wake the others"
    );
}

#[tokio::test]
async fn postgres_outage_keeps_replicas_serving_and_the_registry_recovers() {
    let _machine = shared().await;
    let pg = Postgres::start();
    let port = free_port();
    let env = registry_env(&pg.url(None), "1", "5");
    let a = start(2, port, &env);
    let b = start(3, port, &env);
    wait_until_all_see(&[&a, &b]).await;
    let b_id = instance_id(&b).await;
    wait_for_source(&a, &b_id, "registry").await;

    pg.stop();
    let down = Instant::now();
    let report = eventually("registry to report the outage", || async {
        let report = discovery(&a, "registry").await?;
        if report["status"] == "fails" {
            Ok(report)
        } else {
            Err(report.to_string())
        }
    })
    .await;
    println!(
        "postgres: outage reported after {:?}: {}",
        down.elapsed(),
        report["detail"]
    );
    // The reason a person can act on, not the pool's "timed out".
    let detail = report["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("cannot connect"), "{detail}");
    assert!(!detail.contains("pool timed out"), "{detail}");
    // Serving and direct probing go on: the members stay alive.
    for r in [&a, &b] {
        assert_eq!(alive_addrs(r).await.unwrap().len(), 2);
        let health = client().get(r.url("/healthz")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }

    pg.start_again();
    let up = Instant::now();
    eventually("registry to work again", || async {
        let report = discovery(&a, "registry").await?;
        if report["status"] == "works"
            && report["last_run_ms_ago"]
                .as_u64()
                .is_some_and(|ms| ms < 1500)
        {
            Ok(())
        } else {
            Err(report.to_string())
        }
    })
    .await;
    println!(
        "postgres: registry working again {:?} after the database returned",
        up.elapsed()
    );
    // And it still finds newcomers.
    let c = start(4, port, &env);
    let c_id = instance_id(&c).await;
    wait_for_source(&a, &c_id, "registry").await;
}

#[tokio::test]
async fn a_database_password_never_reaches_a_log_or_a_page() {
    let _machine = shared().await;
    const SECRET: &str = "Sup3rS3cretPw";
    let pg = Postgres::start();
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("rollcall-secret-test-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    // One replica that reaches the database, one whose database is unreachable.
    let good = registry_env(&pg.url(Some(SECRET)), "1", "3");
    let bad = registry_env(
        &format!("postgres://rollcall:{SECRET}@127.0.0.1:1/postgres"),
        "1",
        "3",
    );
    let with = |env: &[(&'static str, String)]| -> Vec<(&'static str, String)> { env.to_vec() };
    let logs = [dir.join("good.log"), dir.join("bad.log")];
    let envs = [with(&good), with(&bad)];
    let replicas: Vec<Replica> = envs
        .iter()
        .zip(&logs)
        .zip([5u8, 6])
        .map(|((env, log), last)| {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Replica::start_logging(last, port, &env, Some(log))
        })
        .collect();
    let failing = eventually("unreachable database reported", || async {
        let report = discovery(&replicas[1], "registry").await?;
        if report["status"] == "fails" {
            Ok(report)
        } else {
            Err(report.to_string())
        }
    })
    .await;
    assert!(
        failing["detail"].as_str().unwrap().contains("***"),
        "{failing}"
    );
    // Alone, it finds nobody else, but its heartbeat and read went through.
    eventually("reachable database read", || async {
        let report = discovery(&replicas[0], "registry").await?;
        let detail = report["detail"].as_str().unwrap_or_default();
        if detail.contains("1 rows") && detail.contains("***") {
            Ok(())
        } else {
            Err(report.to_string())
        }
    })
    .await;
    for r in &replicas {
        for (path, accept) in [("/api/status", "application/json"), ("/", "text/html")] {
            let body = get_text(&r.url(path), accept).await;
            assert!(!body.contains(SECRET), "{path} shows the password");
        }
    }
    drop(replicas);
    for log in &logs {
        let text = std::fs::read_to_string(log).unwrap();
        assert!(!text.is_empty(), "{log:?} has log lines");
        assert!(
            !text.contains(SECRET),
            "{log:?} shows the password:\n{text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
