//! End to end on simulated platforms (`scripts/sim`): replicas in network namespaces this
//! test builds and removes, HAProxy in front, a real DNS server, a real browser. Needs
//! root; without it these tests say so and skip, except under CI=true, where a missing
//! capability is a failure. Each takes the machine to itself ([`heavy`]): besides its
//! load (a scan of 64 /24s, wrk, a browser), the topologies share namespace names and
//! `scripts/sim`'s state directory, so they also run one at a time.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::browser::Browser;
use crate::common::{BIN, eventually, heavy, is_root, repo};

const FRONT: &str = "http://127.0.100.1";

fn script() -> PathBuf {
    repo("scripts/sim")
}

fn can_simulate() -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("the platform simulation needs root (network namespaces), and CI runs as root");
    }
    println!(
        "skipped: the platform simulation needs root (network namespaces); run scripts/test as root"
    );
    false
}

/// A running topology, torn down when dropped.
struct Sim;

fn sim_cmd(args: &[&str]) -> Output {
    Command::new(script())
        .args(args)
        .env("ROLLCALL_BIN", BIN)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/sim")
}

fn sim_ok(args: &[&str]) -> String {
    let out = sim_cmd(args);
    assert!(
        out.status.success(),
        "scripts/sim {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Sim {
    fn up(topology: &str) -> Sim {
        sim_ok(&["up", topology]);
        Sim
    }

    /// GET from inside the simulated network.
    fn get(&self, url: &str) -> Option<Value> {
        let out = sim_cmd(&["exec", "curl", "-fsS", "--max-time", "3", url]);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn replica_url(&self, replica: &str, path: &str) -> String {
        let ip = sim_ok(&["ip", replica]);
        format!("http://{}:8080{path}", ip.trim())
    }

    fn status_of(&self, replica: &str) -> Result<Value, String> {
        self.get(&self.replica_url(replica, "/api/status"))
            .ok_or_else(|| format!("replica {replica} not answering"))
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = sim_cmd(&["down"]);
    }
}

fn others(status: &Value) -> Vec<Value> {
    status["members"]
        .as_array()
        .map(|m| m.iter().filter(|m| m["self"] == false).cloned().collect())
        .unwrap_or_default()
}

fn report<'a>(status: &'a Value, method: &str) -> &'a Value {
    status["discovery"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["method"] == method))
        .unwrap_or(&Value::Null)
}

fn has_source(member: &Value, source: &str) -> bool {
    member["sources"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x == source))
}

/// Waits until `replica` lists two others alive, each found by `source`.
async fn wait_for_peers(sim: &Sim, replica: &str, source: &str) -> Value {
    eventually(
        &format!("replica {replica} to list 2 others alive by {source}"),
        || async {
            let status = sim.status_of(replica)?;
            let alive = others(&status)
                .iter()
                .filter(|m| m["state"] == "alive" && (source.is_empty() || has_source(m, source)))
                .count();
            if alive == 2 {
                Ok(status)
            } else {
                Err(status["members"].to_string())
            }
        },
    )
    .await
}

/// An `/events` stream read by curl inside the simulated network.
struct StreamTap {
    child: std::process::Child,
    text: std::sync::Arc<std::sync::Mutex<String>>,
}

impl StreamTap {
    fn open(url: &str) -> StreamTap {
        let mut child = Command::new(script())
            .args(["exec", "curl", "-sN", url])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl for /events");
        let text: std::sync::Arc<std::sync::Mutex<String>> = Default::default();
        let sink = text.clone();
        let mut out = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut t) = sink.lock() {
                    t.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        StreamTap { child, text }
    }

    fn text(&self) -> String {
        self.text.lock().map(|t| t.clone()).unwrap_or_default()
    }

    fn contains(&self, id: &str) -> bool {
        self.text().contains(id)
    }
}

impl Drop for StreamTap {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a message through one replica; its id.
fn say(sim: &Sim, replica: &str, text: &str) -> String {
    let body = serde_json::json!({ "text": text }).to_string();
    let url = sim.replica_url(replica, "/api/broadcast");
    let out = sim_cmd(&[
        "exec",
        "curl",
        "-fsS",
        "-H",
        "content-type: application/json",
        "-d",
        &body,
        &url,
    ]);
    let reply: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    reply["id"].as_str().unwrap_or("no id").to_string()
}

#[tokio::test]
async fn app_platform_topology() {
    if !can_simulate() {
        return;
    }
    let _machine = heavy().await;
    let sim = Sim::up("do");

    // Through HAProxy, the answers rotate over all three replicas.
    let mut names = BTreeSet::new();
    for _ in 0..12 {
        let s = sim
            .get(&format!("{FRONT}/api/status"))
            .expect("status through HAProxy");
        names.insert(s["self"]["name"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(names.len(), 3, "{names:?}");

    for r in ["a", "b", "c"] {
        wait_for_peers(&sim, r, "scan").await;
        // The scan hands each hit on as it accepts, so peers can be listed before its first
        // round (the fast pass over 16,256 addresses) has ended and reported.
        let status = eventually(
            "the foreign service, the service address, scan's report",
            || async {
                let s = sim.status_of(r)?;
                let foreign = s["foreign"].to_string();
                let aliases = s["aliases"].to_string();
                let scan = report(&s, "scan")["status"].clone();
                if foreign.contains("127.0.12.9:8080")
                    && aliases.contains("127.0.200.10:8080")
                    && !scan.is_null()
                {
                    Ok(s)
                } else {
                    Err(format!("foreign {foreign}, aliases {aliases}, scan {scan}"))
                }
            },
        )
        .await;
        assert!(
            !status["members"].to_string().contains("127.0.12.9"),
            "foreign admitted"
        );
        assert_eq!(report(&status, "scan")["status"], "works", "{status}");
        let dns = report(&status, "dns");
        assert!(
            dns["detail"]
                .as_str()
                .unwrap_or("")
                .contains("no name lists the replicas"),
            "{dns}"
        );
        let verdict = status["verdict"].as_str().unwrap_or("");
        assert!(verdict.contains("no DNS name lists them"), "{verdict}");
    }

    // /peer through the load balancer: the replica that got it calls the other two itself.
    let peer = sim
        .get(&format!("{FRONT}/peer"))
        .expect("/peer through HAProxy");
    let ok = peer["results"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["ok"] == true).count());
    assert_eq!(ok, 2, "{peer}");

    // A pod killed for real, then started again: dead, and a new instance.
    let old_a = sim.status_of("a").unwrap()["self"]["instance_id"].clone();
    sim_ok(&["kill", "a"]);
    for r in ["b", "c"] {
        eventually(&format!("a dead on {r}"), || async {
            let s = sim.status_of(r)?;
            let state = others(&s)
                .into_iter()
                .find(|m| m["instance_id"] == old_a)
                .map(|m| m["state"].clone());
            if state == Some(Value::from("dead")) {
                Ok(())
            } else {
                Err(format!("{state:?}"))
            }
        })
        .await;
    }
    sim_ok(&["start", "a"]);
    let new_a = sim.status_of("a").unwrap()["self"]["instance_id"].clone();
    assert_ne!(new_a, old_a);
    for r in ["b", "c"] {
        eventually(&format!("the new a alive on {r}"), || async {
            let s = sim.status_of(r)?;
            let alive = others(&s)
                .iter()
                .any(|m| m["instance_id"] == new_a && m["state"] == "alive");
            if alive {
                Ok(())
            } else {
                Err(s["members"].to_string())
            }
        })
        .await;
    }

    // A rolling restart under steady load through a strict HAProxy (no retries), with the
    // replicas' default drain: not one request fails.
    let load = Command::new(script())
        .args([
            "exec",
            "wrk",
            "-t2",
            "-c8",
            "-d20s",
            &format!("{FRONT}/api/status"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wrk");
    let started = Instant::now();
    for r in ["a", "b", "c"] {
        sim_ok(&["restart", r]);
    }
    println!("rolling restart of 3 replicas took {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(19),
        "the restarts must fall inside the load run"
    );
    let out = load.wait_with_output().expect("wrk finished");
    let report_text = String::from_utf8_lossy(&out.stdout);
    println!("{report_text}");
    assert!(out.status.success(), "{report_text}");
    assert!(report_text.contains("requests in"), "{report_text}");
    assert!(
        !report_text.contains("Non-2xx"),
        "failed requests during the rolling restart:\n{report_text}"
    );
    assert!(
        !report_text.contains("Socket errors"),
        "socket errors during the rolling restart:\n{report_text}"
    );

    // The page in a real browser, loaded through HAProxy from inside the network.
    for r in ["a", "b", "c"] {
        // Restarted replicas find each other by scan or by their hellos, whichever is first.
        wait_for_peers(&sim, r, "").await;
    }
    let browser = Browser::start(
        |port| {
            Command::new(script())
                .args(["exec", "chromedriver", &format!("--port={port}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver in the simulated network")
        },
        Box::new(|args: &[String]| {
            let mut all = vec!["exec".to_string(), "curl".to_string()];
            all.extend_from_slice(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            sim_cmd(&all)
        }),
    );
    browser.goto(&format!("{FRONT}/"));
    let answered = eventually("the strip to show rotation over 3 alive members", || async {
        let found = browser.eval("return document.querySelector('#found').textContent");
        let names = browser.eval("return [...new Set([...document.querySelectorAll('#strip li')].map(li => li.textContent))]");
        let distinct = names.as_array().map_or(0, Vec::len);
        if found == "3 / 3" && distinct >= 2 { Ok(names) } else { Err(format!("{found} {names}")) }
    })
    .await;
    println!("the strip shows {answered}");
    let shot = repo("target/sim-do.png");
    // The build may have gone elsewhere (CARGO_TARGET_DIR): the directory may not exist.
    std::fs::create_dir_all(shot.parent().expect("a directory")).expect("target/");
    browser.screenshot(&shot);
    assert!(
        shot.metadata().is_ok_and(|m| m.len() > 10_000),
        "screenshot"
    );
    println!("screenshot: {}", shot.display());
}

#[tokio::test]
async fn dokku_topology_finds_replicas_by_dns_alone() {
    if !can_simulate() {
        return;
    }
    let _machine = heavy().await;
    let sim = Sim::up("dokku");
    for r in ["a", "b", "c"] {
        wait_for_peers(&sim, r, "dns").await;
        let status = eventually(&format!("replica {r}'s DNS report"), || async {
            let s = sim.status_of(r)?;
            let dns = report(&s, "dns");
            if dns["status"] == "works" && dns["evidence"].to_string().contains("lists 3 replicas")
            {
                Ok(s)
            } else {
                Err(dns.to_string())
            }
        })
        .await;
        assert_eq!(report(&status, "scan")["status"], "off");
        assert_eq!(report(&status, "registry")["status"], "off");
    }
}

#[tokio::test]
async fn isolated_topology_relays_through_the_load_balancer() {
    if !can_simulate() {
        return;
    }
    let _machine = heavy().await;
    let sim = Sim::up("isolated");
    let status = eventually("the verdict through the load balancer", || async {
        let s = sim.get(&format!("{FRONT}/api/status")).ok_or("no status")?;
        let verdict = s["verdict"].as_str().unwrap_or("").to_string();
        if verdict.starts_with(
            "Replicas know of each other (2 other(s)) but cannot call each other directly",
        ) {
            Ok(s)
        } else {
            Err(verdict)
        }
    })
    .await;
    assert!(
        others(&status).is_empty(),
        "nobody was admitted: {}",
        status["members"]
    );
    assert_eq!(report(&status, "registry")["claimed"], 2, "{status}");
    // Every replica's page says it too, as a page, not an error.
    for r in ["a", "b", "c"] {
        eventually(
            &format!("replica {r}'s page to give the verdict"),
            || async {
                let url = sim.replica_url(r, "/");
                let html = sim_cmd(&["exec", "curl", "-fsS", "-H", "accept: text/html", &url]);
                let page = String::from_utf8_lossy(&html.stdout).into_owned();
                if page.contains("cannot call each other directly") {
                    Ok(())
                } else {
                    Err(page)
                }
            },
        )
        .await;
    }
    // Messages still cross: every replica relays through one hub behind the load balancer.
    let ids: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|r| {
            sim.status_of(r).unwrap()["self"]["instance_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let hub = eventually("all three to agree on one hub", || async {
        let hubs: BTreeSet<String> = ["a", "b", "c"]
            .iter()
            .filter_map(|r| sim.status_of(r).ok())
            .filter_map(|s| s["relay"]["hub"].as_str().map(str::to_string))
            .collect();
        let count = ["a", "b", "c"]
            .iter()
            .filter_map(|r| sim.status_of(r).ok())
            .filter(|s| s["relay"]["hub"].is_string())
            .count();
        if hubs.len() == 1 && count == 3 {
            Ok(hubs.into_iter().next().unwrap())
        } else {
            Err(format!("{hubs:?}"))
        }
    })
    .await;
    let listeners: Vec<StreamTap> = ["a", "b", "c"]
        .iter()
        .map(|r| StreamTap::open(&sim.replica_url(r, "/events")))
        .collect();
    let hub_at = ids
        .iter()
        .position(|id| *id == hub)
        .expect("the hub is one of the replicas");
    let sender = ["a", "b", "c"][(hub_at + 1) % 3];
    let first = say(&sim, sender, "hello through the hub");
    for tap in &listeners {
        eventually("the message on every replica's stream", || async {
            if tap.contains(&first) {
                Ok(())
            } else {
                Err(tap.text())
            }
        })
        .await;
    }
    // The hub dies: the others agree on the next one and messages flow again.
    let hub_name = ["a", "b", "c"][hub_at];
    sim_ok(&["kill", hub_name]);
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != hub_at).collect();
    let (from, to) = (["a", "b", "c"][survivors[0]], &listeners[survivors[1]]);
    let mut attempt = 0;
    eventually("a message to cross again after the hub died", || {
        attempt += 1;
        let id = say(&sim, from, &format!("after failover {attempt}"));
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if to.contains(&id) {
                Ok(())
            } else {
                Err(format!("attempt {attempt}"))
            }
        }
    })
    .await;
    println!(
        "relay failover: messages crossed again {:?} after the hub was killed",
        killed.elapsed()
    );

    // The load balancer pins a client with its affinity cookie.
    let headers = sim_cmd(&[
        "exec",
        "curl",
        "-fsS",
        "-D",
        "-",
        "-o",
        "/dev/null",
        &format!("{FRONT}/api/identity"),
    ]);
    assert!(String::from_utf8_lossy(&headers.stdout).contains("ARRAffinity="));
}
