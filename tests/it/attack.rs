//! Attacks on a replica, reproduced with real processes on loopback: each test mounts one
//! attack against the built binary and asserts that it fails (the defence holds), printing
//! the figure it measured.
//!
//! Addresses: replicas listen on 127.0.0.100..=119 (attackers' servers on 103, 117 and
//! 120..=169), attackers' clients use 127.0.0.1, 103, 106, 115, 120..=199. All traffic goes
//! to 127.0.0.0/8; every request loop is bounded in count and time. The load tests (hello
//! flood, idle connections, slowloris) take the machine to themselves ([`heavy`]), so one's
//! load does not skew another test's timing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::common::*;

const SECRET: &str = "a-long-enough-test-secret";

/// Serves `router` on `addr` in the background (an attacker's or a fake member's server).
async fn serve(addr: SocketAddr, router: axum::Router) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind attacker server");
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    })
}

/// A replica on 127.0.0.`last` that answers. Right after the heavy tests the machine is
/// busy and ports churn: one that exits at start (its port taken meanwhile) or does not
/// answer within 10 s is started again on a fresh port, and the test says so.
async fn ready_replica(last: u8, extra: &[(&str, &str)]) -> (Replica, u16) {
    for attempt in 1..=3 {
        let port = free_port();
        let mut r = Replica::start(last, port, extra);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = r.child.try_wait() {
                println!(
                    "attempt {attempt}: the replica on {} exited at start ({status})",
                    r.addr
                );
                break;
            }
            if get_json(&r.url("/api/identity")).await.is_some() {
                return (r, port);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!(
            "attempt {attempt}: the replica on {} did not answer; again",
            r.addr
        );
    }
    panic!("no replica on 127.0.0.{last} answered after 3 starts");
}

/// The status a POST of `body` as JSON got (0 when nothing answered).
async fn post_status(http: &reqwest::Client, url: String, body: &Value) -> u16 {
    http.post(url)
        .json(body)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// A member's (addr, state) as `replica` lists it, if it does.
async fn member_state(replica: &Replica, instance_id: &str) -> Option<(String, String)> {
    states(replica)
        .await
        .ok()?
        .into_iter()
        .find(|(id, _, _)| id == instance_id)
        .map(|(_, addr, state)| (addr, state))
}

/// Reads a streaming body until `window` has passed (or the stream ends).
async fn read_for(response: &mut reqwest::Response, window: Duration) -> String {
    let until = tokio::time::Instant::now() + window;
    let mut text = String::new();
    while let Ok(Ok(Some(bytes))) = tokio::time::timeout_at(until, response.chunk()).await {
        text.push_str(&String::from_utf8_lossy(&bytes));
        if text.len() > 1 << 20 {
            break;
        }
    }
    text
}

/// An identity of service `rollcall` that no replica has.
fn fake_identity(instance_id: &str, name: &str, addr: SocketAddr) -> Value {
    json!({
        "instance_id": instance_id,
        "name": name,
        "service": "rollcall",
        "addr": addr.to_string(),
        "version": "0.1.0",
        "started_at": "2026-01-01T00:00:00Z",
        "platform": "local",
        "system": { "cpus": 0, "cpu_pct": 0.0, "mem_total_bytes": 0, "mem_used_bytes": 0,
                    "rss_bytes": 0, "uptime_secs": 0 }
    })
}

/// The attacker of `relayed_proof_is_refused`: no secret, but it answers every identity
/// challenge by passing it to the victim replica and returning the victim's answer (proof
/// included) with the address rewritten to its own.
struct Relayer {
    victim: SocketAddr,
    me: SocketAddr,
    http: reqwest::Client,
    relayed: AtomicUsize,
}

async fn relay_identity(State(r): State<Arc<Relayer>>, RawQuery(query): RawQuery) -> Response {
    let url = match query {
        Some(q) => format!("http://{}/api/identity?{q}", r.victim),
        None => format!("http://{}/api/identity", r.victim),
    };
    let Ok(answer) = r.http.get(url).send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let Ok(mut identity) = answer.json::<Value>().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    identity["addr"] = r.me.to_string().into();
    r.relayed.fetch_add(1, Ordering::SeqCst);
    Json(identity).into_response()
}

/// Attack: a replica without the secret relays the challenge it is sent to a real member
/// and hands back that member's proof as its own, with its own address, so that the
/// challenger admits the member at the attacker's address (and the attacker can then say
/// goodbye in the member's name).
#[tokio::test]
async fn relayed_proof_is_refused() {
    let _machine = shared().await;
    let port = free_port();
    let env = [("CLUSTER_SECRET", SECRET), ("DATABASE_URL", "off")];
    let r1 = Replica::start(101, port, &env);
    let r2 = Replica::start(102, port, &env);
    wait_until_all_see(&[&r1, &r2]).await;
    let r2_id = instance_id(&r2).await;
    let r2_addr = r2.addr.to_string();

    let attacker = SocketAddr::from((ip(103), port));
    let relayer = Arc::new(Relayer {
        victim: r2.addr,
        me: attacker,
        http: client_from(ip(103), Duration::from_secs(2)),
        relayed: AtomicUsize::new(0),
    });
    let router = axum::Router::new()
        .route("/api/identity", get(relay_identity))
        .with_state(relayer.clone());
    let server = serve(attacker, router).await;

    let http = client_from(ip(103), Duration::from_secs(3));
    let mut claim = identity_of(&r2).await;
    claim["addr"] = attacker.to_string().into();
    let hello = post_status(&http, r1.url("/api/hello"), &claim).await;

    // For 3 s: nobody at the attacker's address, and r2 alive where it really lives.
    let mut impostor = None;
    let mut displaced = None;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        if let Ok(members) = states(&r1).await {
            if let Some(m) = members
                .iter()
                .find(|(_, a, _)| a.starts_with("127.0.0.103:"))
            {
                impostor.get_or_insert(m.clone());
            }
            match members.iter().find(|(id, _, _)| *id == r2_id) {
                Some((_, a, s)) if *a == r2_addr && s == "alive" => {}
                other => {
                    displaced.get_or_insert(format!("{other:?}"));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Goodbye in r2's name, from the attacker's address: with the attacker's address as
    // r2's, and with r2's real one.
    let mut real = claim.clone();
    real["addr"] = r2_addr.clone().into();
    let mut goodbyes = Vec::new();
    for body in [&claim, &real] {
        let status = post_status(&http, r1.url("/api/goodbye"), body).await;
        goodbyes.push(status);
    }
    // r2 stays alive at its address for the next second.
    let mut after = Vec::new();
    for _ in 0..5 {
        after.push(member_state(&r1, &r2_id).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.abort();
    println!(
        "relayed proof: {} challenges relayed, hello answered {hello}, member at the attacker's \
         address: {impostor:?}, r2 displaced: {displaced:?}, goodbyes answered {goodbyes:?}, \
         r2 afterwards: {:?}",
        relayer.relayed.load(Ordering::SeqCst),
        after.last()
    );
    assert!(
        impostor.is_none(),
        "r1 listed a member at the attacker's address: {impostor:?}"
    );
    assert!(
        displaced.is_none(),
        "r2 was not alive at {r2_addr} on r1: {displaced:?}"
    );
    for status in &goodbyes {
        assert!(
            (400..500).contains(status),
            "a forged goodbye was answered {status}"
        );
    }
    let want = Some((r2_addr.clone(), "alive".to_string()));
    assert!(
        after.iter().all(|s| *s == want),
        "r2 on r1 after the goodbyes: {after:?}"
    );
}

/// Attack: a goodbye in another member's name, from an address that is not the member's,
/// to make the cluster drop a healthy replica.
#[tokio::test]
async fn forged_goodbye_is_refused() {
    let _machine = shared().await;
    let port = free_port();
    let a = Replica::start(104, port, &[]);
    let b = Replica::start(105, port, &[]);
    wait_until_all_see(&[&a, &b]).await;
    let b_id = instance_id(&b).await;
    let http = client_from(ip(106), Duration::from_secs(3));

    // b's identity as it is, sent from 127.0.0.106.
    let real = identity_of(&b).await;
    let resp = http
        .post(a.url("/api/goodbye"))
        .json(&real)
        .send()
        .await
        .expect("an answer");
    let status_real = resp.status().as_u16();
    let body_real = resp.text().await.unwrap_or_default();
    // b's identity claiming the sender's address.
    let mut moved = real.clone();
    moved["addr"] = SocketAddr::from((ip(106), port)).to_string().into();
    let status_moved = post_status(&http, a.url("/api/goodbye"), &moved).await;
    let state = member_state(&a, &b_id).await;
    println!(
        "forged goodbye: with b's address answered {status_real} ({}), with the sender's \
         address answered {status_moved}; b on a: {state:?}",
        body_real.trim()
    );
    assert_eq!(status_real, 403, "{body_real}");
    assert!(
        (400..500).contains(&status_moved),
        "goodbye claiming the sender's address answered {status_moved}"
    );
    assert_eq!(state, Some((b.addr.to_string(), "alive".to_string())));
}

/// Attack: anyone posts a made-up message to the relay hub's publish endpoint (it reaches
/// every page, in a member's name) or subscribes to the hub's stream, without proving
/// anything; and on a replica with no secret, where the relay should not exist at all.
#[tokio::test]
async fn forged_relay_messages_are_refused() {
    let _machine = shared().await;
    let port = free_port();
    let with_secret = Replica::start(
        107,
        port,
        &[("CLUSTER_SECRET", SECRET), ("SCAN_CIDRS", "off")],
    );
    let without = Replica::start(108, port, &[("SCAN_CIDRS", "off")]);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for (what, r) in [
        ("with a secret", &with_secret),
        ("without a secret", &without),
    ] {
        let id = instance_id(r).await;
        let mut events = http.get(r.url("/events")).send().await.expect("/events");
        assert_eq!(events.status(), 200, "{what}: /events");
        let forged = json!({ "id": "forged1", "text": "hi forged1", "origin": id,
                             "via": ["x"], "at": "2026-01-01T00:00:00Z" });
        let publish = http
            .post(r.url("/api/relay/publish"))
            .json(&forged)
            .send()
            .await
            .expect("publish answers");
        let publish_status = publish.status().as_u16();
        let publish_body: Value = publish.json().await.unwrap_or(Value::Null);
        let subscribe = tokio::time::timeout(
            Duration::from_secs(3),
            http.get(r.url("/api/relay?from=anything")).send(),
        )
        .await;
        let subscribe_status = match subscribe {
            Ok(Ok(resp)) => resp.status().as_u16(),
            Ok(Err(_)) | Err(_) => 0,
        };
        let seen = read_for(&mut events, Duration::from_secs(1)).await;
        let leaked = seen.contains("forged1");
        println!(
            "{what}: publish answered {publish_status} {publish_body}, subscribe answered \
             {subscribe_status}, forged message on /events: {leaked}"
        );
        if publish_status != 403 || !publish_body["error"].is_string() {
            failures.push(format!(
                "{what}: publish answered {publish_status} {publish_body}"
            ));
        }
        if subscribe_status != 403 {
            failures.push(format!("{what}: subscribe answered {subscribe_status}"));
        }
        if leaked {
            failures.push(format!("{what}: the forged message reached /events"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Fake replicas at `addr`: every call to `/api/identity` answers as a fresh instance of
/// service `rollcall` (like a replica that restarted since the last call).
/// Bound to the kernel's pick of a free port on `ip` (bound at once: a port looked up
/// first and bound later can be taken in between).
async fn shifting_replica(ip: IpAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("a free port");
    let addr = listener.local_addr().expect("its address");
    let router = axum::Router::new().route(
        "/api/identity",
        get(move || async move {
            let id = format!("01FAKE{:020}", rand::random::<u64>());
            Json(fake_identity(&id, "fake", addr))
        }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, server)
}

/// Attack: a flood of hellos from 50 addresses, each claiming a new replica, to fill the
/// member table, the verification queue and memory, and to crowd out a real newcomer.
/// Half the claims name a port nobody listens on; the other half name one of the
/// attacker's own servers (20 per address), which answer as a new instance on every call,
/// so each can become a member (and the last one at that address dies, staying listed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_hellos_are_bounded() {
    let _machine = heavy().await;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let (r, port) = ready_replica(110, &[("SCAN_CIDRS", "off")]).await;
    let mut servers = Vec::new();
    let mut ports: Vec<Vec<u16>> = Vec::new();
    for last in 120..=169u8 {
        let mut mine = Vec::new();
        for _ in 0..20 {
            let (addr, server) = shifting_replica(ip(last).into()).await;
            servers.push(server);
            mine.push(addr.port());
        }
        ports.push(mine);
    }
    let clients: Vec<reqwest::Client> = (120..=169u8)
        .map(|last| client_from(ip(last), Duration::from_secs(5)))
        .collect();
    let hello_url = r.url("/api/hello");
    let flood_started = Instant::now();
    let flood = tokio::spawn(async move {
        let jobs = (0..10_000usize).map(move |i| {
            let k = i % 50;
            let last = 120 + k as u8;
            let http = clients[k].clone();
            let url = hello_url.clone();
            let claim_port = if i % 2 == 0 {
                ports[k][(i / 100) % 20]
            } else {
                20_000 + rand::random::<u16>() % 40_000
            };
            async move {
                if flood_started.elapsed() > Duration::from_secs(30) {
                    return "not sent (30 s passed)".to_string();
                }
                let id = format!("01FAKEHELLO{:015}", rand::random::<u64>() % 10u64.pow(15));
                let claim = fake_identity(&id, "fake", SocketAddr::from((ip(last), claim_port)));
                http.post(url)
                    .json(&claim)
                    .send()
                    .await
                    .map_or("no answer in 5 s".to_string(), |r| r.status().to_string())
            }
        });
        let statuses: Vec<String> = futures_util::stream::iter(jobs)
            .buffer_unordered(64)
            .collect()
            .await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for s in statuses {
            *counts.entry(s).or_default() += 1;
        }
        (counts, flood_started.elapsed())
    });

    // A real newcomer during the flood: it finds R by scanning and says hello.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let newcomer_started = Instant::now();
    let n = Replica::start(111, port, &[("SCAN_CIDRS", "127.0.0.0/24")]);
    let mut found = None;
    while newcomer_started.elapsed() < Duration::from_secs(10) {
        if let Ok(alive) = alive_addrs(&r).await
            && alive.contains(&n.addr.to_string())
        {
            found = Some(newcomer_started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (counts, flood_took) = flood.await.expect("the flood ran");
    let rss = rss_kib(r.child.id());
    let status = status_of(&r).await.expect("status after the flood");
    // Other members: the table the flood tries to fill (R itself is listed too).
    let members: Vec<Value> = status["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m["self"] != true)
        .collect();
    let mut by_state: HashMap<String, usize> = HashMap::new();
    for m in &members {
        *by_state
            .entry(m["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    let newcomer_entry = members
        .iter()
        .find(|m| m["addr"] == n.addr.to_string())
        .cloned();
    let newcomer = newcomer_entry.as_ref().map(|m| m["state"].clone());
    let newcomer_error = newcomer_entry.as_ref().map(|m| m["error"].clone());
    let mut per_ip: HashMap<String, usize> = HashMap::new();
    for m in &members {
        let addr = m["addr"].as_str().unwrap_or_default();
        let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
        *per_ip.entry(host.to_string()).or_default() += 1;
    }
    let most = per_ip.values().copied().max().unwrap_or(0);
    let healthz = client()
        .get(r.url("/healthz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    println!(
        "10,000 fake hellos in {flood_took:?}: answers {counts:?}; real newcomer listed \
         alive after {found:?} (after the flood: {newcomer:?}, error {newcomer_error:?}); \
         RSS {rss} KiB; {} other members listed {by_state:?}, at most {most} at one IP; \
         healthz {healthz}",
        members.len()
    );
    for server in servers {
        server.abort();
    }
    let took = found.expect("R never listed the real newcomer alive within 10 s");
    assert!(
        took < Duration::from_secs(5),
        "newcomer listed after {took:?}"
    );
    // Under the flood, on two cores, a probe of the real newcomer may time out; what must
    // never happen is losing it: it is alive again soon after.
    // (Dead members are probed every fifth round, and both replicas are still digesting
    // a thousand fakes, so allow it well over the usual wait.)
    if newcomer != Some(Value::from("alive")) {
        let again = Instant::now();
        let mut back = false;
        while again.elapsed() < Duration::from_secs(45) && !back {
            back = alive_addrs(&r)
                .await
                .is_ok_and(|alive| alive.contains(&n.addr.to_string()));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(back, "the real newcomer never came back after the flood");
        println!(
            "the real newcomer was alive again {:?} after the flood",
            again.elapsed()
        );
    }
    assert!(rss > 0 && rss < 96 * 1024, "RSS {rss} KiB, bound 96 MiB");
    assert!(most <= 64, "{most} members at one IP: {per_ip:?}");
    assert!(members.len() <= 512, "{} other members", members.len());
    assert_eq!(healthz, 200);
}

const HOLDER_TARGET: &str = "ATTACK_HOLDER_TARGET";
const HOLDER_SOURCES: &str = "ATTACK_HOLDER_SOURCES";
/// Connections each source address opens.
const HOLDER_PER_IP: usize = 1000;
/// How long a holder keeps trying to open connections.
const HOLDER_OPEN_FOR: Duration = Duration::from_secs(20);

/// Not a test by itself: the child process that `many_connections_leave_healthz_answering`
/// starts (twice) to hold its idle connections, since one process may not have file
/// descriptors for all 20,000. Without its environment variables it does nothing.
#[test]
#[ignore = "a helper process of many_connections_leave_healthz_answering"]
fn connection_holder() {
    let (Ok(target), Ok(sources)) = (std::env::var(HOLDER_TARGET), std::env::var(HOLDER_SOURCES))
    else {
        return;
    };
    let target: SocketAddr = target.parse().expect("target address");
    let (first, last) = sources.split_once('-').expect("sources as A-B");
    let sources: Vec<u8> = (first.parse::<u8>().unwrap()..=last.parse::<u8>().unwrap()).collect();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(hold_connections(target, sources));
}

async fn hold_connections(target: SocketAddr, sources: Vec<u8>) {
    let started = Instant::now();
    let jobs = sources
        .into_iter()
        .flat_map(|last| std::iter::repeat_n(last, HOLDER_PER_IP));
    let results: Vec<Result<TcpStream, &'static str>> = futures_util::stream::iter(jobs)
        .map(|last| async move {
            if started.elapsed() > HOLDER_OPEN_FOR {
                return Err("skipped");
            }
            let socket = TcpSocket::new_v4().map_err(|_| "socket")?;
            socket
                .bind(SocketAddr::from((ip(last), 0)))
                .map_err(|_| "bind")?;
            match tokio::time::timeout(Duration::from_secs(5), socket.connect(target)).await {
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(_)) => Err("refused"),
                Err(_) => Err("timeout"),
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut failed: HashMap<&str, usize> = HashMap::new();
    let mut streams = Vec::new();
    for r in results {
        match r {
            Ok(s) => streams.push(s),
            Err(why) => *failed.entry(why).or_default() += 1,
        }
    }
    println!(
        "HOLDER opened {} failed {failed:?} in {:?}",
        streams.len(),
        started.elapsed()
    );
    // Hold until the parent asks for the count (or gives up).
    let (asked, ask) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        let _ = asked.send(());
    });
    let _ = tokio::time::timeout(Duration::from_secs(90), ask).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut open, mut closed) = (0usize, 0usize);
    let mut buf = [0u8; 512];
    for s in &streams {
        match s.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => open += 1,
            _ => closed += 1,
        }
    }
    println!("HOLDER kept {open} closed {closed}");
}

/// This module's path as libtest names tests (`attack`: without the binary's name).
fn module_path_in_binary() -> &'static str {
    module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, path)| path)
}

/// A child running [`connection_holder`], and its stdout lines.
struct Holder {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Holder {
    fn start(target: SocketAddr, sources: &str) -> Holder {
        // This same test binary, running only the holder: by its full name (its module's
        // path and its own), since every module's tests are in this binary.
        let name = format!("{}::connection_holder", module_path_in_binary());
        let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                name.as_str(),
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_TARGET, target.to_string())
            .env(HOLDER_SOURCES, sources)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start a connection holder");
        let stdout = child.stdout.take().unwrap();
        Holder {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
        }
    }

    /// The holder's next line that starts with `HOLDER <word>`.
    async fn line(&mut self, word: &str, within: Duration) -> Option<String> {
        let prefix = format!("HOLDER {word}");
        tokio::time::timeout(within, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                // libtest may print `test attack::connection_holder ... ` on the same line.
                if let Some(at) = line.find(&prefix) {
                    return Some(line[at..].to_string());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }
}

/// Attack: 20,000 idle TCP connections from 20 addresses, never sending a byte, to use up
/// the replica's file descriptors so that health checks can no longer connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_leave_healthz_answering() {
    let _machine = heavy().await;
    let port = free_port();
    let r = Replica::start(112, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let mut holders = [
        Holder::start(r.addr, "180-189"),
        Holder::start(r.addr, "190-199"),
    ];
    let mut opened = Vec::new();
    for h in holders.iter_mut() {
        opened.push(h.line("opened", Duration::from_secs(60)).await);
    }
    // The server accepts what the kernel queued at its own pace: wait until its count of
    // open files stops growing (or 5 s), so the probe below meets the settled state.
    let fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", r.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let settling = Instant::now();
    let mut server_fds = fds();
    while settling.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fds();
        if now == server_fds {
            break;
        }
        server_fds = now;
    }
    let http = client_from(ip(1), Duration::from_secs(2));
    let started = Instant::now();
    let healthz = http.get(r.url("/healthz")).send().await;
    let latency = started.elapsed();
    let healthz = healthz.map(|r| r.status().as_u16());
    let mut kept = Vec::new();
    for h in holders.iter_mut() {
        if let Some(stdin) = h.child.stdin.as_mut() {
            let _ = stdin.write_all(b"report\n").await;
            let _ = stdin.flush().await;
        }
        kept.push(h.line("kept", Duration::from_secs(20)).await);
    }
    for h in holders.iter_mut() {
        let _ = h.child.kill().await;
    }
    println!(
        "20,000 idle connections: {opened:?}; the server then had {server_fds} files open; \
         /healthz answered {healthz:?} in {latency:?}; the server {kept:?}"
    );
    assert!(
        opened.iter().all(Option::is_some),
        "a holder never reported: {opened:?}"
    );
    assert_eq!(healthz.ok(), Some(200), "healthz after {latency:?}");
    assert!(latency < Duration::from_secs(2), "healthz took {latency:?}");
}

/// Attack: 200 connections that send a request head one byte every 2 s and never finish
/// it, to hold a terminating replica open forever.
#[tokio::test]
async fn slowloris_cannot_hold_shutdown() {
    let _machine = heavy().await;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let port = free_port();
    let mut r = Replica::start(113, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let closed = Arc::new(AtomicUsize::new(0));
    let mut dribblers = Vec::new();
    let mut connected = 0;
    for _ in 0..200 {
        let Ok(mut conn) = TcpStream::connect(r.addr).await else {
            continue;
        };
        connected += 1;
        let closed = closed.clone();
        dribblers.push(tokio::spawn(async move {
            let started = Instant::now();
            if conn
                .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
                .await
                .is_err()
            {
                closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let header = b"X-Slow-Header-Never-Ends: ";
            let mut i = 0;
            while started.elapsed() < Duration::from_secs(40) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let byte = header.get(i).copied().unwrap_or(b'a');
                i += 1;
                if conn.write_all(&[byte]).await.is_err() {
                    closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            }
        }));
    }
    // Let the first bytes trickle in, then ask the replica to stop.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    r.terminate();
    let mut exit = None;
    while started.elapsed() < Duration::from_secs(15) {
        if let Ok(Some(status)) = r.child.try_wait() {
            exit = Some((started.elapsed(), status));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for d in &dribblers {
        d.abort();
    }
    println!(
        "slowloris: {connected} connections dribbling; after SIGTERM the replica exited: \
         {exit:?}; {} connections closed by the server by then",
        closed.load(Ordering::SeqCst)
    );
    let (took, _) = exit.expect("the replica did not exit within 15 s of SIGTERM");
    assert!(took < Duration::from_secs(12), "exit took {took:?}");
}

/// Attack: one client sends 500 broadcasts as fast as it can, flooding every page of
/// every replica with messages.
#[tokio::test]
async fn broadcast_flood_is_rate_limited() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(114, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let http = client_from(ip(1), Duration::from_secs(5));
    let url = r.url("/api/broadcast");
    let answers: Vec<(u16, bool)> = futures_util::stream::iter(0..500)
        .map(|i| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                match http
                    .post(url)
                    .json(&json!({ "text": format!("flood {i}") }))
                    .send()
                    .await
                {
                    Ok(r) => (r.status().as_u16(), r.headers().contains_key("retry-after")),
                    Err(_) => (0, false),
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let accepted = answers
        .iter()
        .filter(|(s, _)| (200..300).contains(s))
        .count();
    let rejected = answers.iter().filter(|(s, _)| *s == 429).count();
    let without_retry_after = answers.iter().filter(|(s, r)| *s == 429 && !r).count();
    let other: Vec<u16> = answers
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| !(200..300).contains(s) && *s != 429)
        .collect();

    // Another client, another address: its own bucket.
    let other_client = client_from(ip(115), Duration::from_secs(3));
    let started = Instant::now();
    let mut other_answer = 0;
    while started.elapsed() < Duration::from_secs(5) {
        other_answer = other_client
            .post(r.url("/api/broadcast"))
            .json(&json!({ "text": "from another address" }))
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if other_answer != 429 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "500 broadcasts from one client: {accepted} accepted, {rejected} rejected with 429 \
         ({without_retry_after} without Retry-After), other answers {other:?}; another \
         address then got {other_answer}"
    );
    assert!(rejected > 0, "no 429 among 500 broadcasts");
    assert_eq!(without_retry_after, 0, "429s without Retry-After");
    assert!(accepted <= 100, "{accepted} of 500 accepted");
    assert!(
        (200..300).contains(&other_answer),
        "another address got {other_answer}"
    );
}

/// Attack: a member of the cluster (no secret in use) publishes a timeline of 500 events
/// dated in the year 9999, so they sort last and push every real event off the merged
/// timeline for good.
#[tokio::test]
async fn future_dated_timeline_events_are_clamped() {
    let _machine = shared().await;
    const FAKE_ID: &str = "01FAKEMEMBER0000000000000A";
    let port = free_port();
    let fake_addr = SocketAddr::from((ip(117), port));
    let identity = fake_identity(FAKE_ID, "evil", fake_addr);
    // Lean events, so that all 500 fit in the 64 KiB a replica reads from a peer: the
    // attack must get past the size cap to show what the merge does with the dates.
    let event = json!({ "at": "9999-12-31T23:59:59Z", "kind": "dead", "instance_id": FAKE_ID,
                        "name": "evil", "addr": null, "detail": "" });
    let timeline = Value::Array(vec![event; 500]);
    let size = timeline.to_string().len();
    assert!(size < 64 * 1024, "the fake timeline is {size} bytes");
    let router = axum::Router::new()
        .route("/api/identity", get(move || async move { Json(identity) }))
        .route("/api/timeline", get(move || async move { Json(timeline) }));
    let server = serve(fake_addr, router).await;
    let r = Replica::start(116, port, &[("SCAN_INTERVAL_SECS", "2")]);
    eventually("the fake member alive on R", || async {
        match member_state(&r, FAKE_ID).await {
            Some((_, s)) if s == "alive" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Collection runs every 3 s: wait for the fake's events to be merged, or 10 s.
    let started = Instant::now();
    let mut events = Vec::new();
    while started.elapsed() < Duration::from_secs(10) {
        if let Ok(status) = status_of(&r).await {
            events = status["timeline"].as_array().cloned().unwrap_or_default();
            if events.iter().any(|e| e["by"] == FAKE_ID) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.abort();
    let limit =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(60))
            .to_string();
    let future: Vec<&Value> = events
        .iter()
        .filter(|e| {
            let at = e["at"].as_str().unwrap_or_default();
            at.get(..19).unwrap_or(at) > limit.get(..19).unwrap_or(&limit)
        })
        .collect();
    let from_fake = events.iter().filter(|e| e["by"] == FAKE_ID).count();
    println!(
        "merged timeline: {} events, {} dated after {limit}, {from_fake} from the fake member",
        events.len(),
        future.len()
    );
    assert!(
        future.is_empty(),
        "future-dated events: {:?}",
        future.first()
    );
    assert!(from_fake <= 20, "{from_fake} events from one member");
}

/// Attack: a page on another site posts to the replica from a visitor's browser (CSRF:
/// a text/plain "simple" request carrying JSON, or a form), or frames the page.
#[tokio::test]
async fn csrf_and_framing() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(118, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let http = client();
    let url = r.url("/api/broadcast");
    let plain = http
        .post(&url)
        .header("content-type", "text/plain")
        .body(r#"{"text":"csrf as text/plain"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let evil = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body("text=hi")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let own_origin = format!("http://{}", r.addr);
    let own = http
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &own_origin)
        .body("text=hi")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let page = http
        .get(r.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    let header = |name: &str| {
        page.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (frame, csp, nosniff) = (
        header("x-frame-options"),
        header("content-security-policy"),
        header("x-content-type-options"),
    );
    println!(
        "text/plain JSON: {plain}; form from evil.example: {evil}; form from {own_origin}: \
         {own}; page headers: X-Frame-Options {frame:?}, CSP {csp:?}, X-Content-Type-Options \
         {nosniff:?}"
    );
    assert_eq!(plain, 415, "JSON sent as text/plain");
    assert_eq!(evil, 403, "form from another origin");
    assert!(
        (200..300).contains(&own),
        "form from the replica's own origin: {own}"
    );
    assert!(
        frame.eq_ignore_ascii_case("deny"),
        "X-Frame-Options {frame:?}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "CSP {csp:?}");
    assert!(csp.contains("script-src 'self'"), "CSP {csp:?}");
    assert!(
        nosniff.eq_ignore_ascii_case("nosniff"),
        "X-Content-Type-Options {nosniff:?}"
    );
}

/// Attack (on the operator): settings that cannot work, or that let a value forge lines
/// of the page or the logs, are taken as given and the replica starts anyway.
#[tokio::test]
async fn impossible_settings_stop_start_up() {
    let _machine = shared().await;
    let long = "a".repeat(300);
    let mut failures = Vec::new();
    for (name, value) in [
        ("INSTANCE_NAME", long.as_str()),
        ("ADVERTISE_ADDR", "0.0.0.0"),
        ("SERVICE_NAME", "svc\nfake"),
    ] {
        let (code, stderr) = start_with_setting(name, value).await;
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        println!("{name}={value:?}: exit {code:?}, stderr {lines:?}");
        if code != Some(2) {
            failures.push(format!("{name}: exit {code:?} (None: it started)"));
        }
        if lines.len() != 1 || !lines[0].contains(name) {
            failures.push(format!("{name}: stderr {lines:?}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Attack: one address opens 200 `/events` streams and keeps them, each holding a
/// connection, a task and a subscription on the replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_streams_are_capped() {
    let _machine = shared().await;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let port = free_port();
    let r = Replica::start(119, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let http = reqwest::Client::builder()
        .no_proxy()
        .local_address(IpAddr::from(ip(170)))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let url = r.url("/events");
    let opens = (0..200).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            tokio::time::timeout(Duration::from_secs(5), http.get(url).send())
                .await
                .ok()
                .and_then(Result::ok)
        }
    });
    let responses = futures_util::future::join_all(opens).await;
    let mut open_streams = Vec::new();
    let (mut refused, mut refused_without_json, mut other) = (0, 0, Vec::new());
    for resp in responses {
        match resp {
            Some(resp) if resp.status() == 200 => open_streams.push(resp),
            Some(resp) if matches!(resp.status().as_u16(), 429 | 503) => {
                refused += 1;
                let body = tokio::time::timeout(Duration::from_secs(2), resp.text())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                if serde_json::from_str::<Value>(&body).map_or(true, |v| !v.is_object()) {
                    refused_without_json += 1;
                }
            }
            Some(resp) => other.push(resp.status().as_u16()),
            None => other.push(0),
        }
    }
    let from_elsewhere = client_from(ip(171), Duration::from_secs(5))
        .get(&url)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0);
    let accepted = open_streams.len();
    drop(open_streams);
    println!(
        "200 /events from one address: {accepted} streams opened, {refused} refused \
         ({refused_without_json} without a JSON body), other {other:?}; another address \
         then got {from_elsewhere}"
    );
    assert!(accepted <= 64, "{accepted} streams from one address");
    assert_eq!(refused, 200 - accepted, "other answers: {other:?}");
    assert_eq!(refused_without_json, 0);
    assert_eq!(from_elsewhere, 200, "a stream from another address");
}
