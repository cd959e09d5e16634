//! Hostile neighbours and abuse of public endpoints, on loopback with listeners the tests
//! start themselves: nothing hostile is admitted, nothing stalls, memory stays bounded,
//! and `/peer` cannot be used to amplify traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

const SECRET: &str = "a-test-secret-of-some-length";

#[derive(Clone)]
enum Hostile {
    /// Accepts and never answers.
    Silent,
    /// Answers one byte a second.
    Drip,
    /// Announces a 100 MB body.
    HugeBody,
    /// Streams an endless chunked JSON array.
    HugeChunked,
    Redirect,
    /// JSON nested far deeper than any parser should follow.
    Nested,
    /// Answers with this fixed body (a copied identity, a wrong proof).
    Body(String),
}

async fn read_request(conn: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await;
}

async fn behave(mut conn: TcpStream, how: Hostile) {
    read_request(&mut conn).await;
    match how {
        Hostile::Silent => tokio::time::sleep(Duration::from_secs(60)).await,
        Hostile::Drip => {
            for b in b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{}" {
                if conn.write_all(&[*b]).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        Hostile::HugeBody => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let chunk = vec![b' '; 1 << 20];
            for _ in 0..100 {
                if conn.write_all(&chunk).await.is_err() {
                    return;
                }
            }
        }
        Hostile::HugeChunked => {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n";
            if conn.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let piece = format!("{:x}\r\n{}\r\n", 65536, "1,".repeat(32768));
            for _ in 0..1600 {
                if conn.write_all(piece.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
        Hostile::Redirect => {
            let _ = conn
                .write_all(b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/api/identity\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
        Hostile::Nested => {
            let body = "[".repeat(60_000);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        }
        Hostile::Body(body) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(body.as_bytes()).await;
        }
    }
}

async fn hostile(addr: SocketAddr, how: Hostile) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind hostile listener");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(behave(conn, how.clone()));
        }
    })
}

#[tokio::test]
async fn hostile_neighbours_end_up_foreign_in_bounded_time_and_memory() {
    let _machine = shared().await;
    let port = free_port();
    let env = [("CLUSTER_SECRET", SECRET), ("SCAN_INTERVAL_SECS", "5")];
    let b = Replica::start(3, port, &env);
    let b_identity = identity_of(&b).await;

    let at = |last: u8| SocketAddr::from((ip(last), port));
    let mut wrong_proof = b_identity.clone();
    wrong_proof["instance_id"] = "01HOSTILEWRONGPROOF".into();
    wrong_proof["addr"] = at(17).to_string().into();
    wrong_proof["proof"] = "00".repeat(32).into();
    let cases: Vec<(u8, Hostile, &str)> = vec![
        (10, Hostile::Silent, "timed out"),
        (11, Hostile::Drip, "timed out"),
        (12, Hostile::HugeBody, "body larger than"),
        (13, Hostile::HugeChunked, "body larger than"),
        (14, Hostile::Redirect, "answered HTTP 302"),
        (15, Hostile::Nested, "not a rollcall identity"),
        // Another member's identity, copied: it cannot answer a fresh challenge.
        (
            16,
            Hostile::Body(b_identity.to_string()),
            "no valid proof of CLUSTER_SECRET",
        ),
        (
            17,
            Hostile::Body(wrong_proof.to_string()),
            "no valid proof of CLUSTER_SECRET",
        ),
    ];
    let mut listeners = Vec::new();
    for (last, how, _) in &cases {
        listeners.push(hostile(at(*last), how.clone()).await);
    }
    // Everything is in place before the replica under test starts scanning.
    let a = Replica::start(2, port, &env);
    // An impostor: a real rollcall replica of this service that does not hold the secret.
    let impostor = Replica::start(19, port, &[]);
    identity_of(&impostor).await;
    let started = Instant::now();
    let foreign = eventually("every hostile neighbour reported foreign", || async {
        let status = status_of(&a).await?;
        let foreign = status["foreign"].as_array().cloned().unwrap_or_default();
        let missing: Vec<String> = cases
            .iter()
            .map(|(last, _, _)| at(*last).to_string())
            .chain([impostor.addr.to_string()])
            .filter(|addr| !foreign.iter().any(|f| f["addr"] == addr.as_str()))
            .collect();
        if missing.is_empty() {
            Ok(foreign)
        } else {
            Err(format!("missing {missing:?} in {foreign:?}"))
        }
    })
    .await;
    println!(
        "all {} hostile neighbours reported foreign {:?} after start",
        cases.len() + 1,
        started.elapsed()
    );
    for (last, _, reason) in &cases {
        let entry = foreign
            .iter()
            .find(|f| f["addr"] == at(*last).to_string())
            .unwrap();
        assert!(
            entry["reason"].as_str().unwrap().contains(reason),
            "{entry} should say {reason}"
        );
    }
    let impostor_entry = foreign
        .iter()
        .find(|f| f["addr"] == impostor.addr.to_string())
        .unwrap();
    assert!(
        impostor_entry["reason"]
            .as_str()
            .unwrap()
            .contains("no valid proof"),
        "{impostor_entry}"
    );

    // Only the real, proven replicas are members, and the page says membership is proven.
    wait_until_lists(&a, &[&a, &b]).await;
    let status = status_of(&a).await.unwrap();
    assert!(
        status["membership"].as_str().unwrap().starts_with("proven"),
        "{status}"
    );
    let text = status.to_string();
    assert!(!text.contains(SECRET), "the secret leaked into /api/status");

    // Memory under all of them at once (the listeners keep going while we measure).
    let rss = rss_kib(a.child.id());
    println!(
        "replica RSS under {} hostile neighbours: {} KiB",
        cases.len() + 1,
        rss
    );
    assert!(rss > 0 && rss < 64 * 1024, "RSS {rss} KiB, bound 64 MiB");
    for l in listeners {
        l.abort();
    }
}

/// An identity server that counts the calls it gets: a member of the cluster as far as the
/// replica can tell.
async fn counting_member(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.expect("bind member");
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let body = format!(
        r#"{{"instance_id":"01COUNTINGMEMBER","name":"counter","service":"rollcall","addr":"{addr}"}}"#
    );
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counter = counter.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                // Keep-alive: answer every request on the connection.
                loop {
                    let Ok(n) = conn.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    if String::from_utf8_lossy(&buf[..n]).contains("/api/identity") {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if conn.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    calls
}

#[tokio::test]
async fn peer_cannot_be_used_to_amplify_or_to_reach_non_members() {
    let _machine = shared().await;
    let port = free_port();
    let member = SocketAddr::from((ip(21), port));
    let calls = counting_member(member).await;
    let seed = member.to_string();
    let a = Replica::start(22, port, &[("SCAN_CIDRS", "off"), ("SEED_PEERS", &seed)]);
    eventually("the counting member alive", || async {
        let alive = alive_addrs(&a).await?;
        if alive.contains(&seed) {
            Ok(())
        } else {
            Err(format!("{alive:?}"))
        }
    })
    .await;

    // `to` that is not a member: 404, and not one connection is made to it.
    let bystander = TcpListener::bind(SocketAddr::from((ip(23), port)))
        .await
        .unwrap();
    for to in [
        format!("127.0.0.23:{port}"),
        "01NOTAMEMBER".to_string(),
        "../etc".to_string(),
    ] {
        let url = format!(
            "{}?to={}",
            a.url("/peer"),
            to.replace(':', "%3A").replace('/', "%2F")
        );
        let resp = client().get(url).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{to}");
    }
    let accepted = tokio::time::timeout(Duration::from_millis(300), bystander.accept()).await;
    assert!(accepted.is_err(), "the bystander saw a connection");

    // 1,000 concurrent /peer calls.
    let before = calls.load(Ordering::SeqCst);
    let started = Instant::now();
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap();
    let burst = (0..1000).map(|_| {
        let http = http.clone();
        let url = a.url("/peer");
        async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    let statuses = futures_util::future::join_all(burst).await;
    let took = started.elapsed();
    let outbound = calls.load(Ordering::SeqCst) - before;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    // 1,000 connections at once from one address: past the per-address connection cap
    // they are closed at accept (status 0 here), before any work is done.
    let refused = statuses.iter().filter(|s| **s == 0).count();
    println!(
        "1000 concurrent /peer in {took:?}: {ok} answered, {limited} rate-limited, {refused} refused at accept, {outbound} calls reached the member (probes included)"
    );
    assert_eq!(ok + limited + refused, 1000, "{statuses:?}");
    assert!(ok + limited >= 200, "{statuses:?}");
    // At most one fan-out per second of burst, plus the prober's own calls (one a second).
    let bound = 2 * (took.as_secs() as usize + 2);
    assert!(
        outbound <= bound,
        "{outbound} outbound calls, bound {bound}"
    );
}
