//! The platform method against a local HTTP server that answers as each platform's API is
//! documented (the fixtures in tests/fixtures/platform, see its README): every request
//! the replica makes is recorded and checked against the documented method, path, query
//! and auth header. No real cloud API is called: every URL here is on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::common::*;

/// What the fake API answers next.
#[derive(Clone)]
enum Answer {
    Json(StatusCode, Vec<(&'static str, String)>, Value),
    /// A body of this many bytes, sent in chunks with no length.
    Endless(usize),
    Raw(&'static str),
}

/// One request as the fake API saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    method: String,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
}

#[derive(Clone)]
struct Api {
    answer: Arc<Mutex<Answer>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    addr: SocketAddr,
}

impl Api {
    async fn start(answer: Answer) -> Api {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API");
        let api = Api {
            answer: Arc::new(Mutex::new(answer)),
            seen: Arc::default(),
            addr: listener.local_addr().expect("its address"),
        };
        let app = axum::Router::new()
            .fallback(answer_request)
            .with_state(api.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        api
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until the API has been asked `n` times in all.
    async fn asked(&self, n: usize) -> Vec<Seen> {
        eventually(&format!("{n} requests to the API"), || async {
            let seen = self.seen();
            if seen.len() >= n {
                Ok(seen)
            } else {
                Err(format!("{} so far", seen.len()))
            }
        })
        .await
    }
}

async fn answer_request(State(api): State<Api>, headers: HeaderMap, request: Request) -> Response {
    api.seen.lock().unwrap().push(Seen {
        at: Instant::now(),
        method: request.method().to_string(),
        path: request.uri().path().to_string(),
        query: request.uri().query().map(str::to_string),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    });
    let answer = api.answer.lock().unwrap().clone();
    match answer {
        Answer::Json(status, headers, body) => {
            let mut response = (status, axum::Json(body)).into_response();
            for (name, value) in headers {
                response
                    .headers_mut()
                    .insert(name, value.parse().expect("a header value"));
            }
            response
        }
        Answer::Endless(bytes) => {
            let chunk = axum::body::Bytes::from(vec![b' '; 64 << 10]);
            let chunks = bytes / chunk.len() + 1;
            let stream = futures_util::stream::iter(
                std::iter::once(Ok::<_, std::convert::Infallible>(
                    axum::body::Bytes::from_static(b"{\"instances\": ["),
                ))
                .chain(std::iter::repeat_n(Ok(chunk), chunks)),
            );
            Response::new(Body::from_stream(stream))
        }
        Answer::Raw(text) => (StatusCode::OK, text).into_response(),
    }
}

fn fixture(name: &str) -> Value {
    let text =
        std::fs::read_to_string(repo(&format!("tests/fixtures/platform/{name}"))).expect("fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

fn ok(body: Value) -> Answer {
    Answer::Json(StatusCode::OK, vec![], body)
}

const TOKEN: &str = "dop_v1_0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const APP_ID: &str = "4f6c71e2-1e90-4762-9fee-6cc4a0a9f2cf";

/// The documented example's shape, with this test's component and instance names.
fn app_platform_instances(names: &[&str]) -> Value {
    let mut body = fixture("digitalocean-instances.json");
    let instances = body["instances"].as_array_mut().expect("instances");
    let other = instances
        .iter()
        .find(|i| i["component_name"] != instances[0]["component_name"])
        .cloned()
        .expect("a second component in the example");
    let template = instances[0].clone();
    *instances = names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut instance = template.clone();
            instance["component_name"] = json!("main-service");
            instance["instance_name"] = json!(name);
            instance["instance_alias"] = json!(format!("main-service-{i}"));
            instance
        })
        .collect();
    // Another component of the same app: not this service's replicas.
    instances.push(other);
    body
}

fn app_platform_env<'a>(url: &'a str, name: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("SERVICE_NAME", "main-service"),
        ("INSTANCE_NAME", name),
        ("DIGITALOCEAN_TOKEN", TOKEN),
        ("APP_ID", APP_ID),
        ("PLATFORM_API_URL", url),
        ("PLATFORM_API_INTERVAL_SECS", "1"),
    ]
}

async fn platform_report(replica: &Replica) -> Result<Value, String> {
    discovery(replica, "platform").await
}

/// Waits until the platform's report says `want` (a piece of its detail).
async fn wait_for_detail(replica: &Replica, want: &str) -> Value {
    eventually(&format!("the platform report to say {want:?}"), || async {
        let report = platform_report(replica).await?;
        if report["detail"].as_str().is_some_and(|d| d.contains(want)) {
            Ok(report)
        } else {
            Err(report.to_string())
        }
    })
    .await
}

/// Every request is the documented one: GET /v2/apps/{app_id}/instances, no query, the
/// token as a bearer token.
fn assert_app_platform_requests(seen: &[Seen]) {
    for request in seen {
        assert_eq!(request.method, "GET", "{request:?}");
        assert_eq!(request.path, format!("/v2/apps/{APP_ID}/instances"));
        assert_eq!(request.query, None);
        assert_eq!(
            request.authorization.as_deref(),
            Some(format!("Bearer {TOKEN}").as_str())
        );
    }
}

#[tokio::test]
async fn app_platform_names_the_instance_nobody_found_until_it_is_found() {
    let _machine = shared().await;
    let names = [
        "main-service-768976868d-gtxdh",
        "main-service-768976868d-rq7kk",
        "main-service-768976868d-vprdj",
    ];
    let api = Api::start(ok(app_platform_instances(&names))).await;
    let url = api.url();
    let port = free_port();
    let log = std::env::temp_dir().join(format!("rollcall-platform-{port}.log"));
    let a = Replica::start_logging(51, port, &app_platform_env(&url, names[0]), Some(&log));
    let b = Replica::start(52, port, &app_platform_env(&url, names[1]));
    wait_until_lists(&a, &[&a, &b]).await;
    let report = wait_for_detail(
        &a,
        "App Platform runs 3 instances of component main-service: found 2; \
         not found: main-service-768976868d-vprdj.",
    )
    .await;
    assert_eq!(report["status"], "works", "{report}");
    // Names only: the method itself found nobody; the others found 2 of its 3 names.
    assert_eq!(report["found"], 0);
    assert!(
        report["detail"]
            .as_str()
            .is_some_and(|d| d.contains("The API gives names, not addresses")),
        "{report}"
    );
    let evidence: Vec<(String, String)> = report["evidence"]
        .as_array()
        .expect("evidence")
        .iter()
        .map(|e| (e["subject"].to_string(), e["detail"].to_string()))
        .collect();
    assert_eq!(
        evidence.len(),
        3,
        "the other component is not listed: {evidence:?}"
    );
    assert!(evidence[2].1.contains("not found yet"), "{evidence:?}");
    let status = status_of(&a).await.expect("status");
    assert_eq!(status["expected_replicas"], 3);
    assert_eq!(status["expected_from"], "platform");
    assert_eq!(status["not_found"][0]["name"], names[2]);
    assert_eq!(status["not_found"][0]["alias"], "main-service-2");
    assert!(
        status["verdict"]
            .as_str()
            .is_some_and(|v| v.contains("1 instance the platform runs has not been found")),
        "{}",
        status["verdict"]
    );
    let page = get_text(&a.url("/"), "text/html").await;
    assert!(
        page.contains(&format!(
            "<li class=\"member not-found\" data-name=\"{}\">",
            names[2]
        )),
        "the page shows the missing instance greyed, by name"
    );
    // The third comes up: all found, and nobody is missing any more.
    let c = Replica::start(53, port, &app_platform_env(&url, names[2]));
    wait_until_lists(&a, &[&a, &b, &c]).await;
    wait_for_detail(&a, "found 3.").await;
    let status = status_of(&a).await.expect("status");
    assert_eq!(status["not_found"], json!([]));
    assert!(
        !status["verdict"]
            .as_str()
            .unwrap_or_default()
            .contains("not been found"),
        "{}",
        status["verdict"]
    );
    assert_app_platform_requests(&api.seen());
    // The token is sent only to the API: never on the page, in the JSON or in the log.
    let page = get_text(&a.url("/"), "text/html").await;
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    for (what, text) in [
        ("page", &page),
        ("status", &status.to_string()),
        ("log", &log),
    ] {
        assert!(!text.contains(&TOKEN[8..]), "the token is in the {what}");
    }
}

#[tokio::test]
async fn a_refused_token_is_said_and_asked_less_often() {
    let _machine = shared().await;
    let api = Api::start(Answer::Json(
        StatusCode::UNAUTHORIZED,
        vec![],
        json!({"id": "unauthorized", "message": "Unable to authenticate you."}),
    ))
    .await;
    let url = api.url();
    let r = Replica::start(54, free_port(), &app_platform_env(&url, "me"));
    let report = wait_for_detail(&r, "token refused (401): Unable to authenticate you.").await;
    assert_eq!(report["status"], "fails", "{report}");
    assert!(
        report["detail"]
            .as_str()
            .is_some_and(|d| d.contains("next try in 2 s")),
        "{report}"
    );
    // Asked every second when answered; after refusals, 2 s, then 4 s apart.
    let seen = api.asked(3).await;
    let gaps: Vec<f64> = seen
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_secs_f64())
        .collect();
    assert!(gaps[0] >= 1.8 && gaps[1] >= 3.8, "gaps {gaps:?}");
    assert_app_platform_requests(&seen);
    // Without a platform listing, nothing is expected but what the settings say.
    let status = status_of(&r).await.expect("status");
    assert_eq!(status["expected_replicas"], Value::Null);
    assert_eq!(status["not_found"], json!([]));
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_as_the_api_asks() {
    let _machine = shared().await;
    let reset = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs()
        + 5;
    let api = Api::start(Answer::Json(
        StatusCode::TOO_MANY_REQUESTS,
        vec![
            ("ratelimit-limit", "5000".into()),
            ("ratelimit-remaining", "0".into()),
            ("ratelimit-reset", reset.to_string()),
        ],
        json!({"id": "too_many_requests", "message": "API rate limit exceeded."}),
    ))
    .await;
    let url = api.url();
    let r = Replica::start(
        55,
        free_port(),
        &app_platform_env(&url, "main-service-768976868d-gtxdh"),
    );
    let report = wait_for_detail(&r, "rate-limited (429): API rate limit exceeded.").await;
    assert_eq!(report["status"], "fails");
    let first = api.asked(1).await[0].at;
    api.set(ok(app_platform_instances(&[
        "main-service-768976868d-gtxdh",
    ])));
    // The next request waits for the reset (about 4 s from the first), not the 1 s interval.
    let seen = api.asked(2).await;
    let waited = seen[1].at.duration_since(first);
    assert!(
        waited >= Duration::from_secs(3),
        "asked again after {waited:?}"
    );
    let report = wait_for_detail(&r, "found 1.").await;
    assert_eq!(report["status"], "works", "{report}");
    assert_app_platform_requests(&api.seen());
}

#[tokio::test]
async fn a_huge_or_malformed_answer_is_reported_not_read_whole() {
    let _machine = shared().await;
    let api = Api::start(Answer::Endless(64 << 20)).await;
    let url = api.url();
    let r = Replica::start(56, free_port(), &app_platform_env(&url, "me"));
    let report = wait_for_detail(&r, "answer larger than 4 MiB: not read").await;
    assert_eq!(report["status"], "fails");
    api.set(Answer::Raw("{\"instances\": 3}"));
    wait_for_detail(&r, "malformed answer: invalid type").await;
    api.set(Answer::Raw("<html>"));
    wait_for_detail(
        &r,
        "malformed answer: expected value at line 1 column 1; the answer starts \"<html>\"",
    )
    .await;
    // The replica serves on, and did not keep 64 MiB.
    assert!(get_json(&r.url("/api/identity")).await.is_some());
    let rss = rss_kib(r.child.id());
    assert!(rss < 48 * 1024, "RSS {rss} KiB after a 64 MiB answer");
}

#[tokio::test]
async fn kubernetes_pods_are_candidates_and_evidence() {
    let _machine = shared().await;
    let pods = fixture("kubernetes-pods.json");
    let names: Vec<String> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            p["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let ips: Vec<String> = pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| {
            p["status"]["podIP"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    let api = Api::start(ok(pods.clone())).await;
    let url = api.url();
    let dir = std::env::temp_dir().join(format!("rollcall-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a token dir");
    let token_file = dir.join("token");
    std::fs::write(&token_file, "eyJhbGciOiJSUzI1NiJ9.k8s-test-token\n").expect("token");
    let token_path = token_file.display().to_string();
    let port = free_port();
    // The three pods that run, each on the address the API lists for it (127.0.0.2-4),
    // found by nothing but the API: no scan, no DNS, no seeds.
    let env = |name: &str| -> Vec<(String, String)> {
        vec![
            ("SERVICE_NAME".into(), "rollcall".into()),
            ("INSTANCE_NAME".into(), name.to_string()),
            ("SCAN_CIDRS".into(), "off".into()),
            ("DNS_NAMES".into(), "off".into()),
            ("PLATFORM_API".into(), "kubernetes".into()),
            ("PLATFORM_API_URL".into(), url.clone()),
            ("PLATFORM_API_INTERVAL_SECS".into(), "1".into()),
            ("PLATFORM_API_TOKEN_FILE".into(), token_path.clone()),
            ("POD_NAMESPACE".into(), "default".into()),
        ]
    };
    let running: Vec<(String, u8)> = names
        .iter()
        .zip(&ips)
        .filter(|(_, ip)| ["127.0.0.2", "127.0.0.3", "127.0.0.4"].contains(&ip.as_str()))
        .map(|(n, ip)| {
            (
                n.clone(),
                ip.rsplit('.')
                    .next()
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        running.len(),
        3,
        "the fixture's pods on 127.0.0.2-4: {names:?} {ips:?}"
    );
    let replicas: Vec<Replica> = running
        .iter()
        .map(|(name, last)| {
            let env = env(name);
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            Replica::start(*last, port, &env)
        })
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_until_lists(&replicas[0], &all).await;
    let other = instance_id(&replicas[1]).await;
    wait_for_source(&replicas[0], &other, "platform").await;
    let report = wait_for_detail(
        &replicas[0],
        "Kubernetes runs 3 instances of pods app=rollcall in namespace default: found 3.",
    )
    .await;
    assert_eq!(report["status"], "works", "{report}");
    let evidence = report["evidence"].to_string();
    assert!(evidence.contains("Running, not ready"), "{evidence}");
    assert!(evidence.contains("not running, not expected"), "{evidence}");
    for request in api.seen() {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/api/v1/namespaces/default/pods");
        assert_eq!(
            request.query.as_deref(),
            Some("labelSelector=app%3Drollcall&limit=500")
        );
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer eyJhbGciOiJSUzI1NiJ9.k8s-test-token")
        );
    }
    // A pod is killed for real: the API still lists it running (as it would until the
    // kubelet notices). It is dead here, told once: history, not also "not found".
    let mut replicas = replicas;
    let killed = replicas.pop().expect("a third pod");
    drop(killed);
    let report = wait_for_detail(
        &replicas[0],
        "found 2; 1 stopped answering here and is still listed.",
    )
    .await;
    assert!(
        report["evidence"]
            .to_string()
            .contains("still listed, dead here"),
        "{report}"
    );
    let status = status_of(&replicas[0]).await.expect("status");
    assert_eq!(status["not_found"], json!([]), "{}", status["not_found"]);
    let verdict = status["verdict"].as_str().unwrap_or_default();
    assert!(
        verdict.contains("recently 1 stopped answering"),
        "{verdict}"
    );
    assert!(!verdict.contains("not been found"), "{verdict}");
}

#[tokio::test]
async fn fly_machines_are_listed_with_their_states() {
    let _machine = shared().await;
    // The documented answer, with each Machine's private address moved to loopback: the
    // listed addresses become candidates, and nothing here may call fdaa::/16.
    let mut machines = fixture("fly-machines.json");
    let list = machines.as_array_mut().expect("an array of Machines");
    for (i, machine) in list.iter_mut().enumerate() {
        machine["private_ip"] = json!(format!("127.0.0.{}", 61 + i));
    }
    let started: Vec<(String, u8)> = list
        .iter()
        .enumerate()
        .filter(|(_, m)| m["state"] == "started")
        .map(|(i, m)| {
            (
                m["id"].as_str().unwrap_or_default().to_string(),
                61 + i as u8,
            )
        })
        .collect();
    assert_eq!(started.len(), 2, "two started Machines in the fixture");
    let api = Api::start(ok(machines.clone())).await;
    let url = api.url();
    let port = free_port();
    let replicas: Vec<Replica> = started
        .iter()
        .map(|(id, last)| {
            Replica::start(
                *last,
                port,
                &[
                    ("INSTANCE_NAME", id.as_str()),
                    ("SCAN_CIDRS", "off"),
                    ("FLY_API_TOKEN", "fo1_test-token"),
                    // The app's name comes from the service's (FLY_APP_NAME on Fly, a
                    // platform marker that no test sets outside a namespace of its own).
                    ("SERVICE_NAME", "rollcall"),
                    ("DNS_NAMES", "off"),
                    ("PLATFORM_API_URL", url.as_str()),
                    ("PLATFORM_API_INTERVAL_SECS", "1"),
                ],
            )
        })
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    wait_until_lists(&replicas[0], &all).await;
    let report = wait_for_detail(
        &replicas[0],
        "Fly runs 2 instances of app rollcall: found 2.",
    )
    .await;
    assert_eq!(report["status"], "works", "{report}");
    assert!(
        report["evidence"].to_string().contains("stopped"),
        "{report}"
    );
    for request in api.seen() {
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/v1/apps/rollcall/machines");
        assert_eq!(request.query, None);
        assert_eq!(
            request.authorization.as_deref(),
            Some("Bearer fo1_test-token")
        );
    }
}

#[tokio::test]
async fn without_a_token_the_method_is_off_and_says_how_to_turn_it_on() {
    let _machine = shared().await;
    let r = Replica::start(57, free_port(), &[("SCAN_CIDRS", "off")]);
    let report = eventually("the platform report", || platform_report(&r)).await;
    assert_eq!(report["status"], "off");
    assert!(
        report["detail"]
            .as_str()
            .is_some_and(|d| d.contains("DIGITALOCEAN_TOKEN and APP_ID")),
        "{report}"
    );
    // Half a setting stops start-up with one line naming what is missing.
    let (code, stderr) = start_with_setting("PLATFORM_API", "digitalocean").await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("PLATFORM_API=digitalocean needs DIGITALOCEAN_TOKEN and APP_ID"),
        "{stderr}"
    );
    // A rejected token is never echoed, whatever it holds.
    for bad in ["dop v1 with spaces", "dop_v1\twith\"quotes\\"] {
        let (code, stderr) = start_with_setting("DIGITALOCEAN_TOKEN", bad).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("DIGITALOCEAN_TOKEN"), "{stderr}");
        assert!(!stderr.contains("with"), "the token is echoed: {stderr}");
    }
    // The token never travels in clear off this machine.
    let (code, stderr) = start_with_setting("PLATFORM_API_URL", "http://api.example.com").await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("must be https://"), "{stderr}");
}
