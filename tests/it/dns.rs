//! DNS discovery and seeds against a real DNS server (dnsmasq) that each test starts on
//! loopback; replicas ask it through DNS_SERVER and nothing else.

use std::process::{Command, Stdio};

use serde_json::Value;

use crate::common::dnsmasq::Dnsmasq;
use crate::common::*;

/// The evidence line for `subject` in the replica's report for `method`.
async fn evidence(replica: &Replica, method: &str, subject: &str) -> Result<Value, String> {
    let report = discovery(replica, method).await?;
    report["evidence"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["subject"] == subject).cloned())
        .ok_or_else(|| format!("no evidence for {subject}: {report}"))
}

async fn wait_for_evidence(
    replica: &Replica,
    method: &str,
    subject: &str,
    status: &str,
    detail: &str,
) -> Value {
    eventually(
        &format!("{subject} {status} ({detail}) on {}", replica.addr),
        || async {
            let e = evidence(replica, method, subject).await?;
            if e["status"] == status && e["detail"].as_str().unwrap_or("").contains(detail) {
                Ok(e)
            } else {
                Err(e.to_string())
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_name_listing_every_replica_is_enough_to_find_them() {
    let _machine = shared().await;
    let dns = Dnsmasq::start(&[
        ("peers.test", "127.0.0.2"),
        ("peers.test", "127.0.0.3"),
        ("peers.test", "127.0.0.4"),
    ]);
    let port = free_port();
    let server = dns.addr.to_string();
    let env = [
        ("SCAN_CIDRS", "off"),
        ("DATABASE_URL", "off"),
        ("DNS_SERVER", server.as_str()),
        ("DNS_NAMES", "peers.test,nobody.test"),
    ];
    let replicas: Vec<Replica> = [2, 3, 4]
        .iter()
        .map(|&i| Replica::start(i, port, &env))
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_until_all_see(&all).await;
    for r in &replicas {
        let peers = wait_for_evidence(r, "dns", "peers.test", "works", "lists 3 replicas").await;
        assert!(
            peers["detail"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.2, 127.0.0.3, 127.0.0.4"),
            "{peers}"
        );
        wait_for_evidence(r, "dns", "nobody.test", "fails", "NXDOMAIN").await;
        let report = discovery(r, "dns").await.unwrap();
        assert_eq!(report["status"], "works", "{report}");
        assert_eq!(report["found"], 2, "{report}");
        // The per-replica names do not resolve here, and the report says so.
        let probe = evidence(r, "dns", "rollcall-0 (per-replica name)")
            .await
            .unwrap();
        assert_eq!(probe["status"], "fails", "{probe}");
        assert_eq!(probe["detail"], "NXDOMAIN", "{probe}");
    }
    for r in &replicas {
        let status = status_of(r).await.unwrap();
        let verdict = status["verdict"].as_str().unwrap();
        assert!(
            verdict.starts_with("Replicas can call each other directly (2 reachable)"),
            "{verdict}"
        );
        assert!(verdict.contains("a DNS name lists them"), "{verdict}");
        for m in status["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["self"] == false)
        {
            assert!(
                m["sources"].as_array().unwrap().iter().any(|s| s == "dns"),
                "{m}"
            );
        }
    }
}

#[tokio::test]
async fn a_service_name_that_points_at_the_load_balancer_is_an_alias_not_a_peer_list() {
    let _machine = shared().await;
    let port = free_port();
    // The demo's front door on 127.0.0.1 round-robins over the replicas, like a
    // platform's service IP; the service name resolves to it alone.
    let dns = Dnsmasq::start(&[("rollcall.test", "127.0.0.1")]);
    let mut demo = Guard(
        Command::new(BIN)
            .env_clear()
            .env("RUST_LOG", "warn")
            .env("DNS_SERVER", dns.addr.to_string())
            .env("DNS_NAMES", "rollcall.test")
            .args(["demo", "--replicas", "3", "--port", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo"),
    );
    let replica = Replica::attach(2, port);
    let e = wait_for_evidence(
        &replica,
        "dns",
        "rollcall.test",
        "partial",
        "load-balanced address",
    )
    .await;
    assert!(
        e["detail"].as_str().unwrap().contains("not a peer list"),
        "{e}"
    );
    // Asked again and again, the one address answers as different replicas.
    eventually("the alias to answer as 2 or more replicas", || async {
        let status = status_of(&replica).await?;
        let alias = status["aliases"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|a| a["addr"] == format!("127.0.0.1:{port}"))
                    .cloned()
            })
            .ok_or_else(|| status["aliases"].to_string())?;
        if alias["answered_as"].as_array().map_or(0, Vec::len) >= 2 {
            Ok(())
        } else {
            Err(alias.to_string())
        }
    })
    .await;
    let report = discovery(&replica, "dns").await.unwrap();
    assert!(
        report["detail"]
            .as_str()
            .unwrap()
            .contains("no name lists the replicas"),
        "{report}"
    );
    let _ = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status();
    assert!(exited(&mut demo.0, "demo").await.success());
}

#[tokio::test]
async fn ipv6_replicas_are_found_through_aaaa_records() {
    let _machine = shared().await;
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: this machine has no ::1");
        return;
    }
    let port = free_port();
    let dns = Dnsmasq::start(&[("both.test", "::1"), ("both.test", "127.0.0.2")]);
    let server = dns.addr.to_string();
    let env = [
        ("SCAN_CIDRS", "off"),
        ("DATABASE_URL", "off"),
        ("DNS_SERVER", server.as_str()),
        ("DNS_NAMES", "both.test"),
    ];
    let v4 = Replica::start(2, port, &env);
    let v6 = Replica::start_on("::1".parse().unwrap(), port, &env);
    let want = vec![format!("127.0.0.2:{port}"), format!("[::1]:{port}")];
    for r in [&v4, &v6] {
        eventually(&format!("{} to list both", r.addr), || async {
            let mut alive = alive_addrs(r).await?;
            alive.sort();
            if alive == want {
                Ok(())
            } else {
                Err(format!("{alive:?}"))
            }
        })
        .await;
    }
    let peer = get_json(&v4.url("/peer")).await.unwrap();
    assert_eq!(peer["results"][0]["to"]["addr"], format!("[::1]:{port}"));
    assert_eq!(peer["results"][0]["ok"], true, "{peer}");
}

#[tokio::test]
async fn seed_peers_by_address_and_by_name() {
    let _machine = shared().await;
    let port = free_port();
    let dns = Dnsmasq::start(&[("seed.test", "127.0.0.4")]);
    let server = dns.addr.to_string();
    let seeds = format!("127.0.0.3:{port},seed.test:{port},gone.test:{port}");
    let quiet = [("SCAN_CIDRS", "off"), ("DATABASE_URL", "off")];
    let mut seeded = quiet.to_vec();
    seeded.extend([
        ("DNS_SERVER", server.as_str()),
        ("DNS_NAMES", "off"),
        ("SEED_PEERS", seeds.as_str()),
    ]);
    let a = Replica::start(2, port, &seeded);
    let b = Replica::start(3, port, &quiet);
    let c = Replica::start(4, port, &quiet);
    // a knows b and c from its seeds; they learn of a when a says hello, and of each other
    // from the news on a's answers (verified like a hello, so the source is announce).
    wait_for_evidence(
        &a,
        "seed",
        &format!("seed.test:{port}"),
        "works",
        "a replica",
    )
    .await;
    wait_until_lists(&a, &[&a, &b, &c]).await;
    wait_until_lists(&b, &[&a, &b, &c]).await;
    wait_until_lists(&c, &[&a, &b, &c]).await;
    wait_for_source(&a, &instance_id(&b).await, "seed").await;
    wait_for_source(&a, &instance_id(&c).await, "seed").await;
    wait_for_source(&b, &instance_id(&a).await, "announce").await;
    wait_for_source(&b, &instance_id(&c).await, "announce").await;
    wait_for_evidence(
        &a,
        "seed",
        &format!("gone.test:{port}"),
        "fails",
        "NXDOMAIN",
    )
    .await;
    let report = discovery(&b, "seed").await.unwrap();
    assert_eq!(report["status"], "off", "{report}");
}
