//! SWIM-style probing with real processes: an indirect probe keeps a member alive across a
//! one-way loss (in a network namespace of this test's own, where iptables drops one
//! replica's packets to another), and news of a death reaches every member when each
//! replica probes only one member per round.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    BIN, Replica, eventually, free_port, heavy, instance_id, is_root, shared, wait_for_state,
    wait_until_all_see,
};

/// A network namespace with its own loopback, removed when dropped.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("rollcall-{tag}-{}", std::process::id());
        let _ = run("ip", &["netns", "del", &name]);
        assert!(run("ip", &["netns", "add", &name]), "ip netns add {name}");
        assert!(run("ip", &["-n", &name, "link", "set", "lo", "up"]));
        Netns(name)
    }

    fn exec(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("/usr/sbin/ip");
        cmd.args(["netns", "exec", &self.0, program]).args(args);
        cmd
    }

    /// A replica inside the namespace, on 127.0.0.`last`.
    fn replica(&self, last: u8, port: u16, extra: &[(&str, &str)]) -> Replica {
        let mut cmd = Command::new("/usr/sbin/ip");
        cmd.args(["netns", "exec", &self.0, BIN, "serve"]);
        Replica::spawn(cmd, last, port, extra, None)
    }

    /// `GET` inside the namespace, as JSON.
    fn get(&self, url: &str) -> Result<Value, String> {
        let out = self
            .exec("curl", &["-fsS", "--noproxy", "*", "--max-time", "2", url])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    fn text(&self, url: &str) -> String {
        self.exec("curl", &["-fsS", "--noproxy", "*", "--max-time", "2", url])
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0]);
    }
}

fn run(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn can_use_namespaces() -> bool {
    if is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "network namespaces need root, and CI runs as root"
    );
    println!("skipped: network namespaces need root; run scripts/test as root");
    false
}

/// The state and note of member `id` on the replica at `url`.
fn member(ns: &Netns, url: &str, id: &str) -> Result<(String, String), String> {
    let status = ns.get(url)?;
    let members = status["members"].as_array().cloned().unwrap_or_default();
    let m = members
        .iter()
        .find(|m| m["instance_id"] == id)
        .ok_or(format!("{id} not listed: {members:?}"))?;
    Ok((
        m["state"].as_str().unwrap_or_default().to_string(),
        m["error"].as_str().unwrap_or_default().to_string(),
    ))
}

fn counter(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn an_indirect_probe_keeps_a_member_alive_across_a_one_way_loss() {
    if !can_use_namespaces() {
        return;
    }
    let _guard = heavy().await;
    let ns = Netns::new("oneway");
    let port = 8080;
    let scan = [("SCAN_CIDRS", "127.0.0.0/29")];
    let (a, b, c) = (
        ns.replica(2, port, &scan),
        ns.replica(3, port, &scan),
        ns.replica(4, port, &scan),
    );
    let status = |r: &Replica| r.url("/api/status");
    let identity = |r: &Replica| -> Result<String, String> {
        ns.get(&r.url("/api/identity"))?["instance_id"]
            .as_str()
            .map(str::to_string)
            .ok_or("no id".into())
    };
    let c_id = eventually("c to answer", || async { identity(&c) }).await;
    eventually("a to list c alive", || async {
        match member(&ns, &status(&a), &c_id)? {
            (state, _) if state == "alive" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    eventually("b to list c alive", || async {
        match member(&ns, &status(&b), &c_id)? {
            (state, _) if state == "alive" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // Everything a sends to c is lost; b still reaches c, and c reaches a.
    assert!(
        ns.exec(
            "iptables",
            &[
                "-A",
                "OUTPUT",
                "-s",
                "127.0.0.2",
                "-d",
                "127.0.0.4",
                "-p",
                "tcp",
                "-j",
                "DROP"
            ]
        )
        .status()
        .is_ok_and(|s| s.success()),
        "iptables in the test's namespace"
    );
    // Several seconds of rounds (DEAD_AFTER_SECS is 1): c must never be suspected by a,
    // and a must say how it reaches c.
    let watch = Instant::now();
    let mut noted = false;
    while watch.elapsed() < Duration::from_secs(5) {
        let (state, note) = member(&ns, &status(&a), &c_id).expect("a's status");
        assert_eq!(
            state, "alive",
            "a suspected c across a one-way loss: {note}"
        );
        noted |= note.contains("reached through r3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(noted, "a never said it reached c through b");
    let metrics = ns.text(&a.url("/metrics"));
    assert!(
        counter(
            &metrics,
            "rollcall_indirect_probes_total{outcome=\"reached\"}"
        ) >= 3.0,
        "{metrics}"
    );

    // Without b, nobody can vouch for c: a suspects it, then finds it dead.
    drop(b);
    eventually("a to find c dead once b is gone", || async {
        match member(&ns, &status(&a), &c_id)? {
            (state, _) if state == "dead" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    drop((a, c));
}

#[tokio::test]
async fn news_of_a_death_reaches_every_member_when_each_probes_one_per_round() {
    let _guard = shared().await;
    let port = free_port();
    // Ten replicas, each asking one member per round: a replica's own turn comes to the
    // victim once in nine rounds, so most learn of its death from news first.
    let settings = [("PROBE_FANOUT", "1"), ("SCAN_CIDRS", "127.0.0.0/27")];
    let replicas: Vec<Replica> = (2..12)
        .map(|last| Replica::start(last, port, &settings))
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_until_all_see(&all).await;
    let (victim, survivors) = replicas.split_last().expect("ten");
    let victim_id = instance_id(victim).await;
    let before: f64 = news_checks(survivors).await;
    let _ = Command::new("kill")
        .args(["-KILL", &victim.child.id().to_string()])
        .status();
    for survivor in survivors {
        wait_for_state(survivor, &victim_id, "dead").await;
    }
    let checks = news_checks(survivors).await - before;
    assert!(
        checks >= 1.0,
        "no survivor checked the victim on another's news ({checks})"
    );
}

async fn news_checks(replicas: &[Replica]) -> f64 {
    let mut sum = 0.0;
    for r in replicas {
        let text = crate::common::get_text(&r.url("/metrics"), "text/plain").await;
        sum += counter(&text, "rollcall_news_checks_total");
    }
    sum
}

#[tokio::test]
async fn the_indirect_probe_answers_only_for_members_of_its_own_table() {
    let _guard = shared().await;
    let port = free_port();
    let (a, b) = (Replica::start(2, port, &[]), Replica::start(3, port, &[]));
    wait_until_all_see(&[&a, &b]).await;
    let b_id = instance_id(&b).await;
    // Asked from b's address, as a member asks; then from an address that is no member's.
    let member = crate::common::client_from(b.addr.ip(), Duration::from_secs(3));
    let stranger = crate::common::client_from(crate::common::ip(1), Duration::from_secs(3));
    let ask = |client: &reqwest::Client, path: String| {
        let client = client.clone();
        let url = a.url(&path);
        async move {
            let r = client.get(url).send().await.expect("a answers");
            let code = r.status().as_u16();
            (code, r.text().await.unwrap_or_default())
        }
    };
    let status = |path: String| ask(&member, path);
    let (code, body) = status(format!("/api/probe?id={b_id}")).await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["ok"], true, "{body}");
    assert_eq!(answer["id"], b_id.as_str());
    for (path, want) in [
        ("/api/probe", 400),
        ("/api/probe?id=not%20an%20id", 400),
        ("/api/probe?id=01NOBODY", 404),
        ("/api/probe?id=x&addr=127.0.0.1:22", 400),
    ] {
        let (code, body) = status(path.to_string()).await;
        assert_eq!(code, want, "{path}: {body}");
        assert!(!body.is_empty(), "{path}: a reason");
    }
    let (code, body) = ask(&stranger, format!("/api/probe?id={b_id}")).await;
    assert_eq!(code, 403, "a stranger may not make a replica probe: {body}");
    // News rides only on answers to members asking from their own address.
    let a_id = instance_id(&a).await;
    let news_for = |client: &reqwest::Client, from: String| {
        let (client, url) = (client.clone(), a.url(&format!("/api/identity?from={from}")));
        async move {
            let body: Value = client
                .get(url)
                .send()
                .await
                .expect("a answers")
                .json()
                .await
                .expect("json");
            body["news"].as_array().map_or(0, Vec::len)
        }
    };
    assert!(
        news_for(&member, b_id.clone()).await > 0,
        "b, a member, gets news"
    );
    assert_eq!(
        news_for(&stranger, b_id.clone()).await,
        0,
        "b's id from elsewhere"
    );
    assert_eq!(
        news_for(&member, a_id).await,
        0,
        "not a member of a's own table"
    );
}
