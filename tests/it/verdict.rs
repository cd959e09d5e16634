//! The verdict's table (docs/how-it-works.md#the-verdict), row by row, with real processes:
//! replicas crashed with SIGKILL, stopped with SIGTERM, paused with SIGSTOP, restarted on
//! their old address, started with another secret or unable to reach each other. Each row
//! is judged on the replica that watched it happen, through `/api/status`, at the moment
//! the churn is visible there (a registry row of a crashed replica outlives its death by
//! the TTL: that is when the old verdict said "cannot call each other directly").

use std::path::PathBuf;

use serde_json::Value;

use crate::common::*;

/// A registry every replica of one test shares: a SQLite file, like the demo's.
struct Registry(PathBuf);

impl Registry {
    fn new(test: &str) -> Registry {
        let dir = std::env::temp_dir().join(format!(
            "rollcall-verdict-{test}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("registry dir");
        Registry(dir)
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.join("registry.db").display())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn verdict_of(status: &Value) -> &str {
    status["verdict"].as_str().unwrap_or_default()
}

/// Each discovery method's status word, by method.
fn methods(status: &Value) -> Vec<(String, String)> {
    status["discovery"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["method"].as_str().unwrap_or_default().to_string(),
                m["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn method_status(status: &Value, method: &str) -> String {
    methods(status)
        .into_iter()
        .find(|(m, _)| m == method)
        .map(|(_, s)| s)
        .unwrap_or_default()
}

fn state_of(status: &Value, instance_id: &str) -> Option<String> {
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["instance_id"] == instance_id)
        .and_then(|m| m["state"].as_str())
        .map(str::to_string)
}

/// `replica`'s status once `ready` says it shows what the test waits for.
async fn status_when(replica: &Replica, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(what, || async {
        let status = status_of(replica).await?;
        if ready(&status) {
            Ok(status)
        } else {
            Err(format!("{}: {}", verdict_of(&status), status["members"]))
        }
    })
    .await
}

/// A replica of three on one port, finding the others by scan and by a shared registry.
fn replica(last: u8, port: u16, registry: &Registry) -> Replica {
    let url = registry.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("EXPECTED_REPLICAS", "3"),
        ("REGISTRY_HEARTBEAT_SECS", "1"),
    ];
    Replica::start(last, port, &env)
}

fn three(first: u8, port: u16, registry: &Registry) -> [Replica; 3] {
    [first, first + 1, first + 2].map(|last| replica(last, port, registry))
}

/// The verdict begins and ends as the table says (what is between, which methods found
/// the replicas, may vary with timing).
fn assert_verdict(status: &Value, begins: &str, ends: &str) {
    let verdict = verdict_of(status);
    assert!(verdict.starts_with(begins), "{verdict}");
    assert!(verdict.ends_with(ends), "{verdict}");
}

/// Both methods that could see every current member found them: a dead or departed
/// replica never turns one `partial`.
fn assert_methods_work(status: &Value) {
    for method in ["scan", "registry"] {
        assert_eq!(
            method_status(status, method),
            "works",
            "{method}: {:?}",
            methods(status)
        );
    }
}

async fn all_listed_by_both(replicas: &[&Replica]) {
    wait_until_all_see(replicas).await;
    for replica in replicas {
        status_when(replica, "scan and registry to find every replica", |s| {
            let found = |m: &str| {
                s["discovery"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|d| d["method"] == m)
                    .and_then(|d| d["found"].as_u64())
            };
            found("scan") == Some(2) && found("registry") == Some(2)
        })
        .await;
    }
}

#[tokio::test]
async fn steady_every_other_replica_answers() {
    let _machine = shared().await;
    let (port, registry) = (free_port(), Registry::new("steady"));
    let [a, b, c] = three(50, port, &registry);
    all_listed_by_both(&[&a, &b, &c]).await;
    let status = status_of(&a).await.expect("a's status");
    let verdict = verdict_of(&status);
    assert!(
        verdict.starts_with("Replicas can call each other directly (2 reachable); found by "),
        "{verdict}"
    );
    assert!(
        verdict.contains("scan") && verdict.contains("registry"),
        "{verdict}"
    );
    assert!(!verdict.contains("recently"), "{verdict}");
    assert_methods_work(&status);
}

#[tokio::test]
async fn one_crashed_is_history_not_a_missing_network() {
    let _machine = shared().await;
    let (port, registry) = (free_port(), Registry::new("crashed"));
    let [a, b, mut c] = three(53, port, &registry);
    all_listed_by_both(&[&a, &b, &c]).await;
    let c_id = instance_id(&c).await;
    c.child.kill().expect("SIGKILL c");
    let _ = c.child.wait();
    // Its registry row lives on for the TTL (15 s): the moment it is dead is the moment a
    // verdict built on registry rows would call the network broken.
    let status = status_when(&a, "the crashed replica dead", |s| {
        state_of(s, &c_id).as_deref() == Some("dead")
    })
    .await;
    assert_verdict(
        &status,
        "Replicas can call each other directly (1 reachable)",
        "recently 1 stopped answering.",
    );
    assert_methods_work(&status);
    // Dead, it keeps its place in the list until forgotten.
    assert_eq!(state_of(&status, &c_id).as_deref(), Some("dead"));
    drop(b);
}

#[tokio::test]
async fn one_stopped_gracefully_left() {
    let _machine = shared().await;
    let (port, registry) = (free_port(), Registry::new("left"));
    let [a, b, mut c] = three(56, port, &registry);
    all_listed_by_both(&[&a, &b, &c]).await;
    let c_id = instance_id(&c).await;
    c.terminate();
    let status = status_when(&a, "the stopped replica left", |s| {
        state_of(s, &c_id).as_deref() == Some("left")
    })
    .await;
    assert_verdict(
        &status,
        "Replicas can call each other directly (1 reachable)",
        "recently 1 left.",
    );
    assert_methods_work(&status);
    assert!(exited(&mut c.child, "stopped replica").await.success());
    drop(b);
}

#[tokio::test]
async fn scaled_down_to_one() {
    let _machine = shared().await;
    let (port, registry) = (free_port(), Registry::new("scaled"));
    let [a, mut b, mut c] = three(59, port, &registry);
    all_listed_by_both(&[&a, &b, &c]).await;
    b.terminate();
    c.terminate();
    let status = status_when(&a, "both others left", |s| {
        verdict_of(s).starts_with("No other replica now")
    })
    .await;
    assert_eq!(
        verdict_of(&status),
        "No other replica now; recently 2 left."
    );
    exited(&mut b.child, "b").await;
    exited(&mut c.child, "c").await;
}

#[tokio::test]
async fn one_restarted_in_place_counts_once() {
    let _machine = shared().await;
    let (port, registry) = (free_port(), Registry::new("restarted"));
    let [a, b, mut c] = three(62, port, &registry);
    all_listed_by_both(&[&a, &b, &c]).await;
    let old_id = instance_id(&c).await;
    c.child.kill().expect("SIGKILL c");
    let _ = c.child.wait();
    let c = replica(64, port, &registry);
    let new_id = instance_id(&c).await;
    assert_ne!(old_id, new_id);
    let status = status_when(&a, "the new instance alive in the old one's place", |s| {
        state_of(s, &new_id).as_deref() == Some("alive")
            && verdict_of(s).contains("restarted as a new instance")
    })
    .await;
    assert_verdict(
        &status,
        "Replicas can call each other directly (2 reachable)",
        "recently 1 restarted as a new instance.",
    );
    assert_methods_work(&status);
    drop(b);
}

/// Seen dead first, then back on its address as a new instance: one restart, not a crash
/// and a newcomer.
#[tokio::test]
async fn one_restarted_after_it_was_seen_dead_counts_once() {
    let _machine = shared().await;
    let (port, registry) = (free_port(), Registry::new("back"));
    let [a, b, mut c] = three(75, port, &registry);
    all_listed_by_both(&[&a, &b, &c]).await;
    let old_id = instance_id(&c).await;
    c.child.kill().expect("SIGKILL c");
    let _ = c.child.wait();
    status_when(&a, "the crashed replica dead", |s| {
        state_of(s, &old_id).as_deref() == Some("dead")
    })
    .await;
    let c = replica(77, port, &registry);
    let new_id = instance_id(&c).await;
    let status = status_when(&a, "the new instance alive", |s| {
        state_of(s, &new_id).as_deref() == Some("alive")
    })
    .await;
    assert_verdict(
        &status,
        "Replicas can call each other directly (2 reachable)",
        "recently 1 restarted as a new instance.",
    );
    drop(b);
}

#[tokio::test]
async fn secrets_differ_names_the_proof() {
    let _machine = shared().await;
    let port = free_port();
    let a = Replica::start(
        65,
        port,
        &[("CLUSTER_SECRET", "the-first-secret-0123456789")],
    );
    let others = [66, 67].map(|last| {
        Replica::start(
            last,
            port,
            &[("CLUSTER_SECRET", "another-secret-9876543210")],
        )
    });
    // Refused one by one: the verdict counts them as they come.
    let status = status_when(&a, "both others refused", |s| {
        s["foreign"].as_array().map(Vec::len) == Some(2)
    })
    .await;
    assert_eq!(
        verdict_of(&status),
        "No replica admitted: 2 answer as this service but fail the CLUSTER_SECRET proof."
    );
    drop(others);
}

#[tokio::test]
async fn no_peers() {
    let _machine = shared().await;
    let a = Replica::start(68, free_port(), &[]);
    let status = status_when(&a, "a scan round done", |s| {
        s["discovery"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|d| d["method"] == "scan" && !d["last_run_ms_ago"].is_null())
    })
    .await;
    assert_eq!(verdict_of(&status), "No other replica found yet.");
}

/// No private network: every replica registers an address nothing answers on (where it
/// advertises itself is not where it listens), so the registry is the only one that knows
/// of the others.
#[tokio::test]
async fn registry_lists_replicas_that_do_not_answer_directly() {
    let _machine = shared().await;
    let (port, registry) = (free_port(), Registry::new("unreachable"));
    let url = registry.url();
    let replicas = [69u8, 70, 71].map(|last| {
        let advertise = ip(last + 100).to_string();
        Replica::start(
            last,
            port,
            &[
                ("DATABASE_URL", url.as_str()),
                ("ADVERTISE_ADDR", advertise.as_str()),
                ("SCAN_CIDRS", "off"),
                ("REGISTRY_HEARTBEAT_SECS", "1"),
            ],
        )
    });
    // The registry lists them one by one: the verdict counts them as they come.
    let status = status_when(&replicas[0], "the registry to list both others", |s| {
        verdict_of(s).starts_with("Replicas know of each other (2 other(s))")
    })
    .await;
    assert_eq!(
        verdict_of(&status),
        "Replicas know of each other (2 other(s)) but cannot call each other directly."
    );
}

#[tokio::test]
async fn a_member_that_missed_its_last_probes_is_not_reachable() {
    let _machine = shared().await;
    let port = free_port();
    let slow = [("DEAD_AFTER_SECS", "20")];
    let a = Replica::start(72, port, &slow);
    let b = Replica::start(73, port, &slow);
    let c = Replica::start(74, port, &slow);
    wait_until_all_see(&[&a, &b, &c]).await;
    let c_id = instance_id(&c).await;
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .args([sig, &c.child.id().to_string()])
            .status()
            .expect("kill")
    };
    // Paused, c stops answering probes without going away.
    assert!(signal("-STOP").success());
    let status = status_when(&a, "the paused replica suspect", |s| {
        state_of(s, &c_id).as_deref() == Some("suspect")
    })
    .await;
    let verdict = verdict_of(&status);
    assert!(
        verdict.starts_with("Replicas can call each other directly (1 of 2 reachable)"),
        "{verdict}"
    );
    assert!(signal("-CONT").success());
    let status = status_when(&a, "the resumed replica alive again", |s| {
        state_of(s, &c_id).as_deref() == Some("alive")
    })
    .await;
    assert!(
        verdict_of(&status).starts_with("Replicas can call each other directly (2 reachable)"),
        "{}",
        verdict_of(&status)
    );
    drop(b);
}
