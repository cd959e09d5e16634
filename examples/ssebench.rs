//! Broadcast benchmark, run by `scripts/bench`: SSE clients on every replica, messages posted
//! to a random replica, and the time from each POST to each client receiving it. Prints one
//! JSON line. A Rust client, so 300 streams are read without the client being the bottleneck.
//!
//!   ssebench REPLICAS CLIENTS MESSAGES RATE POSTERS
//!     REPLICAS  comma list of ip:port
//!     CLIENTS   event streams per replica; client i connects from 127.0.100.<i+1>, because a
//!               replica admits at most 64 streams per client address
//!     MESSAGES  messages to post
//!     RATE      messages per second to post at, or 0: as fast as POSTERS posters can
//!     POSTERS   POSTs in flight at once

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::Rng;
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Longest a client waits for the rest after the last POST: messages not in by then are
/// counted as lost.
const DRAIN: Duration = Duration::from_secs(5);
/// Largest event a client keeps buffering; a message is at most 1 KiB of text.
const MAX_EVENT: usize = 64 * 1024;

struct Args {
    replicas: Vec<String>,
    clients: usize,
    messages: usize,
    rate: f64,
    posters: usize,
}

fn args() -> Result<Args, Error> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [replicas, clients, messages, rate, posters] = a.as_slice() else {
        return Err("usage: ssebench REPLICAS CLIENTS MESSAGES RATE POSTERS".into());
    };
    Ok(Args {
        replicas: replicas.split(',').map(str::to_owned).collect(),
        clients: clients.parse()?,
        messages: messages.parse()?,
        rate: rate.parse()?,
        posters: posters.parse::<usize>()?.max(1),
    })
}

/// The sequence number of this run's message in an event's data, if it is one.
fn sequence(data: &str, run: &str) -> Option<usize> {
    let v: Value = serde_json::from_str(data).ok()?;
    let text = v.get("text")?.as_str()?;
    let (tag, seq) = text.split_once(' ')?;
    if tag != run {
        return None;
    }
    seq.parse().ok()
}

/// One event stream: when each of this run's messages arrived (None: never).
async fn client(
    url: String,
    from: IpAddr,
    run: String,
    messages: usize,
    connected: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Vec<Option<Instant>>, Error> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .build()?;
    let response = http
        .get(url)
        .header("Accept", "text/event-stream")
        .send()
        .await?
        .error_for_status()?;
    connected.fetch_add(1, Ordering::SeqCst);
    let mut arrived = vec![None; messages];
    let mut missing = messages;
    let mut body = response.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let mut stop = stop;
    while missing > 0 {
        let chunk = tokio::select! {
            chunk = body.next() => chunk,
            _ = stop.changed() => break,
        };
        let Some(chunk) = chunk else { break };
        let now = Instant::now();
        buf.extend_from_slice(&chunk?);
        // Events end with a blank line; only `message` events carry this run's texts.
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            let event = String::from_utf8_lossy(&event);
            let data = event.lines().find_map(|l| l.strip_prefix("data:"));
            if let Some(seq) = data.and_then(|d| sequence(d.trim_start(), &run))
                && let Some(slot) = arrived.get_mut(seq)
                && slot.is_none()
            {
                *slot = Some(now);
                missing -= 1;
            }
        }
        if buf.len() > MAX_EVENT {
            return Err("an event over 64 KiB".into());
        }
    }
    Ok(arrived)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let a = args()?;
    let run = format!("b{}", rand::rng().random::<u32>());
    let connected = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut clients = Vec::new();
    for replica in &a.replicas {
        for i in 0..a.clients {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 100, (i % 250 + 1) as u8));
            clients.push(tokio::spawn(client(
                format!("http://{replica}/events"),
                from,
                run.clone(),
                a.messages,
                connected.clone(),
                stop_rx.clone(),
            )));
        }
    }
    let streams = a.replicas.len() * a.clients;
    let deadline = Instant::now() + Duration::from_secs(30);
    while connected.load(Ordering::SeqCst) < streams {
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {streams} streams opened",
                connected.load(Ordering::SeqCst)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Posters take the next sequence number, wait for its slot when paced, and POST it to a
    // random replica, noting when it left.
    let poster_http = reqwest::Client::builder().no_proxy().build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut posters = Vec::new();
    for _ in 0..a.posters {
        let (http, next, replicas, run) = (
            poster_http.clone(),
            next.clone(),
            a.replicas.clone(),
            run.clone(),
        );
        let (messages, rate) = (a.messages, a.rate);
        posters.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut errors = 0usize;
            loop {
                let seq = next.fetch_add(1, Ordering::SeqCst);
                if seq >= messages {
                    return (sent, errors);
                }
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let replica = &replicas[rand::rng().random_range(0..replicas.len())];
                let at = Instant::now();
                let ok = http
                    .post(format!("http://{replica}/api/broadcast"))
                    .json(&json!({ "text": format!("{run} {seq}") }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    sent.push((seq, at));
                } else {
                    errors += 1;
                }
            }
        }));
    }
    let mut sent_at = vec![None; a.messages];
    let mut post_errors = 0;
    for p in posters {
        let (sent, errors) = p.await?;
        post_errors += errors;
        for (seq, at) in sent {
            sent_at[seq] = Some(at);
        }
    }
    let posted = started.elapsed();
    // Every client stops once it has every message; the rest get DRAIN more.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(DRAIN).await;
        let _ = stop_tx.send(true);
    });

    let mut latencies = Vec::new();
    let mut last_arrival = started;
    let mut client_errors = 0;
    for c in clients {
        match c.await? {
            Ok(arrived) => {
                for (sent, got) in sent_at.iter().zip(arrived) {
                    if let (Some(s), Some(g)) = (sent, got) {
                        latencies.push(g.duration_since(*s).as_secs_f64() * 1000.0);
                        last_arrival = last_arrival.max(g);
                    }
                }
            }
            Err(_) => client_errors += 1,
        }
    }
    stopper.abort();
    latencies.sort_by(f64::total_cmp);
    let accepted = sent_at.iter().flatten().count();
    let all_in = last_arrival.duration_since(started).as_secs_f64();
    println!(
        "{}",
        json!({
            "streams": streams,
            "messages": a.messages,
            "accepted": accepted,
            "post_errors": post_errors,
            "client_errors": client_errors,
            "post_seconds": posted.as_secs_f64(),
            "posted_per_s": accepted as f64 / posted.as_secs_f64(),
            "delivered_per_s": accepted as f64 / all_in.max(f64::EPSILON),
            "deliveries": latencies.len(),
            "expected_deliveries": accepted * streams,
            "p50_ms": percentile(&latencies, 0.50),
            "p99_ms": percentile(&latencies, 0.99),
            "max_ms": percentile(&latencies, 1.0),
        })
    );
    Ok(())
}
