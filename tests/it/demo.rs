//! `rollcall demo` as a user drives it: its replicas are child processes, listed with their
//! PIDs; one crashed (`kill -9`), brought back (`kill -USR1` to the demo), stopped
//! gracefully (`kill`), and what the survivors show through the front door meanwhile; the
//! replicas' logs tagged with their names; a replica that cannot start; the demo stopped,
//! and killed outright, leaving no replica behind. Loopback only.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::demo::{Demo, gone, signal, wait_gone};
use crate::common::*;

fn instance_of(status: &Value, name: &str) -> Vec<(String, String)> {
    status["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|m| m["name"] == name)
                .map(|m| {
                    (
                        m["instance_id"].as_str().unwrap_or_default().to_string(),
                        m["state"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn state_of(status: &Value, instance_id: &str) -> String {
    status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["instance_id"] == instance_id))
        .map_or("not listed".into(), |m| m["state"].to_string())
}

/// Polls `/api/status` through the front door until every replica named in `who` has
/// answered with a status that passes `check`; returns how long that took.
async fn through_front_door(
    front: &str,
    who: &[&str],
    what: &str,
    check: impl Fn(&Value) -> Result<(), String>,
) -> Duration {
    let started = Instant::now();
    let mut agreed = BTreeSet::new();
    let mut last = String::from("never asked");
    while started.elapsed() < DEADLINE {
        if let Some(status) = get_json(&format!("{front}/api/status")).await {
            let name = status["self"]["name"].as_str().unwrap_or("?").to_string();
            match check(&status) {
                Ok(()) => {
                    agreed.insert(name);
                }
                Err(seen) => last = format!("{name}: {seen}"),
            }
            if who.iter().all(|w| agreed.contains(*w)) {
                return started.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {who:?} to say {what}; agreed: {agreed:?}; last: {last}");
}

fn alive_count(status: &Value) -> usize {
    status["members"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count())
}

#[tokio::test]
async fn a_crash_a_restart_and_a_graceful_stop_show_through_the_front_door() {
    let _machine = shared().await;
    let (mut demo, listed) = Demo::start_ready(&[]).await;
    let names: Vec<&str> = listed.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["replica-1", "replica-2", "replica-3"]);
    let mut ids = Vec::new();
    for l in &listed {
        let id = eventually(&format!("{} to answer", l.name), || async {
            get_json(&format!("http://{}/api/identity", l.addr))
                .await
                .and_then(|i| i["instance_id"].as_str().map(str::to_string))
                .ok_or("no identity".to_string())
        })
        .await;
        ids.push(id);
    }
    let front = demo.front();
    let all = ["replica-1", "replica-2", "replica-3"];
    through_front_door(&front, &all, "3 alive", |s| match alive_count(s) {
        3 => Ok(()),
        n => Err(format!("{n} alive")),
    })
    .await;

    // Crash replica-2: the demo says so, does not restart it, and the survivors list it dead.
    let crashed = &listed[1];
    signal(crashed.pid, "KILL");
    let crash_seen = Instant::now();
    demo.said(&format!(
        "replica-2 (pid {}) was killed by signal 9",
        crashed.pid
    ))
    .await;
    wait_gone(crashed.pid, "the crashed replica").await;
    through_front_door(
        &front,
        &["replica-1", "replica-3"],
        "replica-2 dead",
        |s| match state_of(s, &ids[1]).as_str() {
            "\"dead\"" => Ok(()),
            other => Err(other.to_string()),
        },
    )
    .await;
    let dead_after = crash_seen.elapsed();
    assert!(
        !demo.out().iter().any(|l| l.contains("restarted")),
        "restarted by itself: {:?}",
        demo.out()
    );

    // Bring it back: a new process and a new instance under the same name and address.
    signal(demo.pid(), "USR1");
    let asked = Instant::now();
    let line = demo.said("replica-2 restarted as pid").await;
    let new_pid: u32 = line
        .split("restarted as pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no PID in {line:?}"));
    assert_ne!(new_pid, crashed.pid);
    assert!(line.contains(&crashed.addr.to_string()), "{line}");
    let new_id = eventually(
        "the restarted replica to answer as a new instance",
        || async {
            let id = get_json(&format!("http://{}/api/identity", crashed.addr))
                .await
                .and_then(|i| i["instance_id"].as_str().map(str::to_string))
                .ok_or("no identity")?;
            if id == ids[1] {
                Err(format!("still the old instance {id}"))
            } else {
                Ok(id)
            }
        },
    )
    .await;
    through_front_door(
        &front,
        &all,
        "the new replica-2 alive beside the others",
        |s| {
            let replica_2 = instance_of(s, "replica-2");
            if !replica_2.contains(&(new_id.clone(), "alive".into())) {
                return Err(format!("replica-2: {replica_2:?}"));
            }
            match alive_count(s) {
                3 => Ok(()),
                n => Err(format!("{n} alive")),
            }
        },
    )
    .await;
    let back_after = asked.elapsed();

    // Stop replica-3 gracefully: it says goodbye, and the others list it left.
    let stopped = &listed[2];
    signal(stopped.pid, "TERM");
    let asked = Instant::now();
    through_front_door(
        &front,
        &["replica-1", "replica-2"],
        "replica-3 left",
        |s| match state_of(s, &ids[2]).as_str() {
            "\"left\"" => Ok(()),
            other => Err(other.to_string()),
        },
    )
    .await;
    let left_after = asked.elapsed();
    demo.said(&format!("replica-3 (pid {}) exited 0", stopped.pid))
        .await;

    // Ctrl-C: the demo stops every replica it runs and exits 0; no replica is left.
    let (status, took) = demo.interrupt().await;
    assert!(status.success(), "{status:?}: {:?}", demo.out());
    for pid in [listed[0].pid, new_pid, crashed.pid, stopped.pid] {
        assert!(gone(pid), "pid {pid} still there after the demo exited");
    }
    assert!(
        demo.out().iter().any(|l| l.contains("stopped")),
        "{:?}",
        demo.out()
    );
    for l in &listed {
        assert!(
            std::net::TcpListener::bind(l.addr).is_ok(),
            "{} still bound",
            l.addr
        );
    }
    println!(
        "kill -9 to dead on both survivors: {dead_after:.1?}; kill -USR1 to the new instance \
         alive on all: {back_after:.1?}; kill to left on both: {left_after:.1?}; Ctrl-C to \
         the demo's exit: {took:.1?}"
    );
}

/// A replica that cannot act on SIGTERM (frozen with SIGSTOP) does not hold the demo up:
/// after its deadline the demo kills it, and still exits 0.
#[tokio::test]
async fn a_replica_that_does_not_stop_is_killed_at_the_deadline() {
    let _machine = shared().await;
    let (mut demo, listed) = Demo::start_ready(&[]).await;
    let frozen = &listed[0];
    signal(frozen.pid, "STOP");
    let (status, took) = demo.interrupt().await;
    assert!(status.success(), "{status:?}: {:?}", demo.out());
    demo.said("1 still running: killing them").await;
    demo.said(&format!(
        "replica-1 (pid {}) was killed by signal 9",
        frozen.pid
    ))
    .await;
    for l in &listed[1..] {
        demo.said(&format!("{} (pid {}) exited 0", l.name, l.pid))
            .await;
    }
    for l in &listed {
        assert!(gone(l.pid), "{} (pid {}) still there", l.name, l.pid);
    }
    println!("Ctrl-C to the demo's exit with one replica frozen: {took:.1?}");
}

#[tokio::test]
async fn replica_logs_reach_the_demo_tagged_with_their_names() {
    let _machine = shared().await;
    // Not a terminal: JSON, as a replica would write it, behind the replica's name.
    let (mut demo, _) = Demo::start_ready(&[("RUST_LOG", "info")]).await;
    for name in ["replica-1", "replica-2", "replica-3"] {
        eventually(
            &format!("{name}'s 'replica ready' line, tagged"),
            || async {
                demo.err()
                    .iter()
                    .filter_map(|l| l.strip_prefix(&format!("{name} │ ")))
                    .filter_map(|json| serde_json::from_str::<Value>(json).ok())
                    .find(|log| log["message"] == "replica ready")
                    .map(|log| assert_eq!(log["name"], name, "{log}"))
                    .ok_or_else(|| format!("{:?}", demo.err()))
            },
        )
        .await;
    }
    // Every line the demo passes on carries a tag; only the demo's own are not a replica's.
    assert!(
        demo.err().iter().all(|l| l.contains(" │ ")),
        "{:?}",
        demo.err()
    );
    let (status, _) = demo.interrupt().await;
    assert!(status.success(), "{status:?}");
    assert!(
        demo.out()
            .iter()
            .any(|l| l.starts_with("demo ") && l.contains("replica-1 (pid")),
        "{:?}",
        demo.out()
    );

    // LOG_FORMAT=text (what a terminal gets): the replicas write text too.
    let (mut demo, _) = Demo::start_ready(&[("RUST_LOG", "info"), ("LOG_FORMAT", "text")]).await;
    eventually("a tagged text 'replica ready' line", || async {
        demo.err()
            .iter()
            .find(|l| l.starts_with("replica-2 │ ") && l.contains("replica ready"))
            .map(|l| assert!(!l.contains(" │ {"), "{l}"))
            .ok_or_else(|| format!("{:?}", demo.err()))
    })
    .await;
    let (status, _) = demo.interrupt().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn a_replica_that_cannot_start_stops_the_demo_with_one_line() {
    let _machine = shared().await;
    let port = free_port();
    // Something else holds replica-2's address.
    let _squatter = std::net::TcpListener::bind((ip(3), port)).expect("hold 127.0.0.3");
    let mut demo = Demo::start(port, &[]);
    let status = exited(&mut demo.process.0, "demo").await;
    assert!(!status.success(), "{status:?}");
    demo.read_to_end().await;
    let own: Vec<String> = demo
        .err()
        .into_iter()
        .filter(|l| !l.contains(" │ "))
        .collect();
    assert_eq!(own.len(), 1, "{own:?}");
    let line = &own[0];
    for part in [
        "replica-2",
        &format!("127.0.0.3:{port}"),
        "did not start",
        "cannot listen",
    ] {
        assert!(line.contains(part), "{part:?} not in {line:?}");
    }
    // Before it, in its own words: the replica's line, tagged.
    let err = demo.err();
    assert_eq!(err.last(), Some(line), "{err:?}");
    assert!(
        err.iter()
            .any(|l| l.starts_with("replica-2 │ rollcall: cannot listen")),
        "{err:?}"
    );
    // The replicas that did start were stopped, not left behind.
    for last in [2, 4] {
        assert!(
            std::net::TcpListener::bind((ip(last), port)).is_ok(),
            "127.0.0.{last}:{port} still bound"
        );
    }
}

#[tokio::test]
async fn killing_the_demo_outright_takes_its_replicas_with_it() {
    let _machine = shared().await;
    let (mut demo, listed) = Demo::start_ready(&[]).await;
    signal(demo.pid(), "KILL");
    exited(&mut demo.process.0, "demo").await;
    for l in &listed {
        wait_gone(l.pid, &l.name).await;
    }
    for l in &listed {
        eventually(&format!("{} to be free", l.addr), || async {
            std::net::TcpListener::bind(l.addr)
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
    }
    // Killed, the demo could not delete its temporary directory.
    let prefix = format!("rollcall-demo-{}-", demo.pid());
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}
