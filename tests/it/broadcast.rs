//! Messages that cross replicas: SSE clients on every replica, messages sent through random
//! replicas, each delivered exactly once everywhere, even when a replica dies mid-stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollcall::relay::SseReader;
use serde_json::{Value, json};

use crate::common::*;

/// An `/events` client that records the id of every message it receives, in order.
struct Listener {
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    async fn open(replica: &Replica) -> Listener {
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut response = http
            .get(replica.url("/events"))
            .send()
            .await
            .expect("open /events");
        assert_eq!(response.status(), 200);
        let record = seen.clone();
        let task = tokio::spawn(async move {
            let mut reader = SseReader::default();
            while let Ok(Some(bytes)) = response.chunk().await {
                for (event, data) in reader.feed(&bytes).unwrap_or_default() {
                    if event == "message"
                        && let Ok(m) = serde_json::from_str::<Value>(&data)
                    {
                        record
                            .lock()
                            .unwrap()
                            .push(m["id"].as_str().unwrap_or("").to_string());
                    }
                }
            }
        });
        Listener { seen, task }
    }

    fn counts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for id in self.seen.lock().unwrap().iter() {
            *counts.entry(id.clone()).or_insert(0) += 1;
        }
        counts
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn send(replica: &Replica, text: &str) -> Option<String> {
    let r = client()
        .post(replica.url("/api/broadcast"))
        .json(&json!({ "text": text }))
        .send()
        .await
        .ok()?;
    let body: Value = r.json().await.ok()?;
    body["id"].as_str().map(str::to_string)
}

/// Waits until every listener has every id, then checks none came twice.
async fn all_delivered_once(listeners: &[(&str, &Listener)], ids: &[String]) {
    for (name, listener) in listeners {
        eventually(
            &format!("{name} to receive all {} messages", ids.len()),
            || async {
                let counts = listener.counts();
                let missing = ids.iter().filter(|id| !counts.contains_key(*id)).count();
                if missing == 0 {
                    Ok(())
                } else {
                    Err(format!("{missing} missing"))
                }
            },
        )
        .await;
        let counts = listener.counts();
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "{name} got duplicates: {twice:?}");
    }
}

#[tokio::test]
async fn a_thousand_messages_reach_every_client_exactly_once() {
    // A throughput test runs alone: a stream starved of CPU by other tests falls more than
    // a channel's worth behind and, by design, skips messages rather than hold them.
    let _machine = heavy().await;
    let port = free_port();
    // A throughput test: the per-client broadcast limit raised out of the way.
    let replicas: Vec<Replica> = [2, 3, 4]
        .iter()
        .map(|&i| Replica::start(i, port, &[("BROADCAST_RATE", "1000")]))
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_until_all_see(&all).await;
    let mut listeners = Vec::new();
    for r in &replicas {
        listeners.push(Listener::open(r).await);
    }
    let started = Instant::now();
    let mut ids = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(3));
    for i in 0..1000 {
        ticker.tick().await;
        let via = &replicas[rand::random_range(0..replicas.len())];
        ids.push(send(via, &format!("message {i}")).await.expect("accepted"));
    }
    let sent = started.elapsed();
    let named: Vec<(&str, &Listener)> = ["r2", "r3", "r4"]
        .into_iter()
        .zip(listeners.iter())
        .collect();
    all_delivered_once(&named, &ids).await;
    println!(
        "1000 messages sent through random replicas in {sent:?}; all 3 clients had each exactly once after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_replica_killed_mid_stream_does_not_stop_the_others() {
    let _machine = shared().await;
    let port = free_port();
    let fast = [("BROADCAST_RATE", "1000")];
    let a = Replica::start(2, port, &fast);
    let b = Replica::start(3, port, &fast);
    let mut c = Some(Replica::start(4, port, &fast));
    wait_until_all_see(&[&a, &b, c.as_ref().unwrap()]).await;
    let (la, lb) = (Listener::open(&a).await, Listener::open(&b).await);
    let mut ids = Vec::new();
    for i in 0..300 {
        if i == 100 {
            drop(c.take()); // SIGKILL, mid-stream
        }
        let via = if i % 2 == 0 { &a } else { &b };
        ids.push(send(via, &format!("m{i}")).await.expect("accepted"));
    }
    all_delivered_once(&[("r2", &la), ("r3", &lb)], &ids).await;
}

#[tokio::test]
async fn bad_messages_get_a_reason() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(5, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let post = |body: String, kind: &'static str| {
        client()
            .post(r.url("/api/broadcast"))
            .header("content-type", kind)
            .body(body)
            .send()
    };
    assert_eq!(
        post("{\"text\": \"  \"}".into(), "application/json")
            .await
            .unwrap()
            .status(),
        400
    );
    assert_eq!(
        post("{\"nope\": 1}".into(), "application/json")
            .await
            .unwrap()
            .status(),
        400
    );
    let long = json!({ "text": "x".repeat(1025) }).to_string();
    assert_eq!(post(long, "application/json").await.unwrap().status(), 413);
    let form = post(
        "text=hello+form".into(),
        "application/x-www-form-urlencoded",
    )
    .await
    .unwrap();
    assert_eq!(form.status(), 200);
    // Only members may hand a message over directly.
    let forged =
        json!({ "id": "01FORGED", "text": "x", "origin": "01X", "via": ["01X"], "at": "now" });
    let resp = client()
        .post(r.url("/api/deliver"))
        .json(&forged)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // Anyone can reach the hub's publish endpoint through the load balancer: without a
    // signature (here, without a secret to sign with) nothing is taken, and the page keeps
    // working.
    let odd = json!({ "id": "01ODD", "text": "x", "origin": "é", "via": ["ééééééé"], "at": "now" });
    let resp = client()
        .post(r.url("/api/relay/publish"))
        .json(&odd)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let page = get_text(&r.url("/"), "text/html").await;
    assert!(page.contains("Messages"));
}

/// A reconnecting client (`Last-Event-ID`, as EventSource sends it) gets only the messages
/// it has not seen, and every stream says how soon to reconnect.
#[tokio::test]
async fn a_reconnect_replays_only_what_was_missed() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(6, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let first = send(&r, "before the drop").await.expect("accepted");
    let second = send(&r, "while away").await.expect("accepted");
    let mut stream = client()
        .get(r.url("/events"))
        .header("last-event-id", &first)
        .send()
        .await
        .expect("a stream");
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !text.contains(&second) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), stream.chunk()).await {
            Ok(Ok(Some(bytes))) => text.push_str(&String::from_utf8_lossy(&bytes)),
            _ => break,
        }
    }
    assert!(text.contains("retry: 2000"), "{text}");
    assert!(text.contains(&format!("id: {second}")), "{text}");
    assert!(
        !text.contains(&format!("id: {first}")),
        "replayed what it had seen: {text}"
    );
}
