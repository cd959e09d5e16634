//! The router in this process: requests go straight to the axum `Router` with
//! `tower::ServiceExt::oneshot`, as axum's own testing example does, with
//! `MockConnectInfo` standing in for the connection's peer address. No socket is used, no
//! background task runs and no process starts: each test builds a fresh replica (its
//! listener bound to 127.0.0.1:0, never served) and takes about a tenth of a second,
//! most of it building the replica.
//!
//! The replica is built but never run, so it is what an unstarted replica is: not ready,
//! alone, with no discovery report yet.

use std::net::SocketAddr;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use axum::response::Response;
use clap::Parser;
use rollcall::app::Application;
use rollcall::config::Settings;
use serde_json::{Value, json};
use tower::ServiceExt;

const NAME: &str = "router-test";

/// The address requests come from, unless a test says otherwise.
fn caller() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40_000))
}

/// A replica built as `rollcall serve` would build it, on loopback, with nothing to scan,
/// no DNS names and no database, so nothing it holds reaches outside.
async fn replica() -> Application {
    let settings = Settings::try_parse_from([
        "rollcall",
        "--bind-addr",
        "127.0.0.1",
        "--advertise-addr",
        "127.0.0.1",
        "--port",
        "0",
        "--scan-cidrs",
        "off",
        "--dns-names",
        "off",
        "--database-url",
        "off",
        "--instance-name",
        NAME,
    ])
    .expect("settings parse");
    settings.validate().expect("valid settings");
    Application::build(settings).await.expect("a replica")
}

/// Every route, as a replica serves them, with requests coming from `from`.
fn router_from(app: &Application, from: SocketAddr) -> Router {
    rollcall::web::router(app.state(), true).layer(MockConnectInfo(from))
}

fn router(app: &Application) -> Router {
    router_from(app, caller())
}

async fn send(router: &Router, request: Request<Body>) -> Response {
    router.clone().oneshot(request).await.expect("infallible")
}

async fn get(router: &Router, path: &str) -> Response {
    send(router, Request::get(path).body(Body::empty()).unwrap()).await
}

async fn get_accepting(router: &Router, path: &str, accept: &str) -> Response {
    let request = Request::get(path)
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .unwrap();
    send(router, request).await
}

async fn post_json(router: &Router, path: &str, body: &Value) -> Response {
    let request = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    send(router, request).await
}

fn header_of(response: &Response, name: header::HeaderName) -> String {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string())
        .unwrap_or_default()
}

async fn text(response: Response) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    String::from_utf8(bytes.to_vec()).expect("UTF-8")
}

async fn json_of(response: Response) -> Value {
    let body = text(response).await;
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Asserts the one error shape every answer of the web layer has: JSON `{"error": reason}`
/// with a reason and nothing else; returns the reason.
async fn error_reason(response: Response) -> String {
    assert!(
        header_of(&response, header::CONTENT_TYPE).starts_with("application/json"),
        "{:?}",
        response.headers()
    );
    let body = json_of(response).await;
    let reason = body["error"].as_str().unwrap_or_default().to_string();
    assert!(!reason.is_empty(), "no reason: {body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(1), "{body}");
    reason
}

#[tokio::test]
async fn unknown_paths_and_methods_get_the_json_error_shape() {
    let app = replica().await;
    let router = router(&app);

    let response = get(&router, "/no/such/endpoint").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-store");
    assert_eq!(error_reason(response).await, "no such endpoint");

    // axum's own 405 is plain text; the uniform layer rewrites it to the same shape.
    let request = Request::builder()
        .method(Method::DELETE)
        .uri("/api/status")
        .body(Body::empty())
        .unwrap();
    let response = send(&router, request).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    error_reason(response).await;

    // A path outside the static files' directory is no file.
    let response = get(&router, "/static/..%2FCargo.toml").await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    error_reason(response).await;
}

#[tokio::test]
async fn identity_answers_and_refuses_a_nonce_that_is_not_hex() {
    let app = replica().await;
    let router = router(&app);

    let response = get(&router, "/api/identity").await;
    assert_eq!(response.status(), StatusCode::OK);
    let identity = json_of(response).await;
    assert_eq!(identity["instance_id"], app.state().me.id());
    assert_eq!(identity["name"], NAME);
    assert_eq!(identity["addr"], app.local_addr().to_string());

    // A hex nonce is fine (with no secret there is nothing to prove).
    let response = get(&router, "/api/identity?nonce=00ff").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(json_of(response).await["proof"].is_null());

    for query in ["nonce=zz", "nonce=", "from=not%20an%20id", "bogus=1"] {
        let response = get(&router, &format!("/api/identity?{query}")).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let reason = error_reason(response).await;
        if query.starts_with("nonce") {
            assert!(reason.contains("hex"), "{query}: {reason}");
        }
    }
}

#[tokio::test]
async fn hello_from_an_address_other_than_the_claimed_one_is_forbidden() {
    let app = replica().await;
    let claimed = SocketAddr::from(([127, 0, 0, 66], app.local_addr().port()));
    let mut claim = serde_json::to_value(app.state().me.identity()).expect("identity");
    claim["instance_id"] = "01ROUTERHELLO".into();
    claim["addr"] = claimed.to_string().into();

    // From 127.0.0.1, claiming 127.0.0.66: refused, and nothing is queued to be called.
    let response = post_json(&router(&app), "/api/hello", &claim).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let reason = error_reason(response).await;
    assert!(reason.contains("not the caller"), "{reason}");

    // Another service, from the claimed address: refused too.
    let from_claimed = router_from(&app, SocketAddr::new(claimed.ip(), 50_000));
    let mut other_service = claim.clone();
    other_service["service"] = "api".into();
    let response = post_json(&from_claimed, "/api/hello", &other_service).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // The same claim from the claimed address is taken: queued for verification.
    let response = post_json(&from_claimed, "/api/hello", &claim).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(json_of(response).await["queued"], claimed.to_string());
}

#[tokio::test]
async fn a_body_over_16_kib_is_refused_with_413() {
    let app = replica().await;
    let router = router(&app);
    let limit = 16 * 1024;
    let padded = |size: usize| {
        // Valid JSON of exactly `size` bytes: a short text, then spaces.
        let mut body = json!({ "text": "hi" }).to_string().into_bytes();
        body.resize(size, b' ');
        body
    };

    // Announced by Content-Length: refused before it is read.
    let announced = Request::post("/api/broadcast")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, limit + 1)
        .body(Body::from(padded(limit + 1)))
        .unwrap();
    // Streamed without a length: refused when it passes the limit.
    let chunks = futures_util::stream::iter(
        padded(limit + 1)
            .chunks(1024)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let streamed = Request::post("/api/broadcast")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(chunks))
        .unwrap();
    for (how, request) in [("announced", announced), ("streamed", streamed)] {
        let response = send(&router, request).await;
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE, "{how}");
        let reason = error_reason(response).await;
        assert!(reason.contains(&limit.to_string()), "{how}: {reason}");
    }

    // At the limit it is read, and the message is taken.
    let at_limit = Request::post("/api/broadcast")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(padded(limit)))
        .unwrap();
    let response = send(&router, at_limit).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(json_of(response).await["id"].is_string());
}

#[tokio::test]
async fn the_index_is_html_for_browsers_and_json_otherwise() {
    let app = replica().await;
    let router = router(&app);

    let response = get_accepting(
        &router,
        "/",
        "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(header_of(&response, header::CONTENT_TYPE).starts_with("text/html"));
    assert_eq!(header_of(&response, header::VARY), "Accept");
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-store");
    let page = text(response).await;
    assert!(
        page.contains(&format!("<h1 id=\"served-name\">{NAME}</h1>")),
        "{page}"
    );

    for accept in [None, Some("*/*"), Some("application/json")] {
        let response = match accept {
            Some(accept) => get_accepting(&router, "/", accept).await,
            None => get(&router, "/").await,
        };
        assert_eq!(response.status(), StatusCode::OK, "{accept:?}");
        assert!(
            header_of(&response, header::CONTENT_TYPE).starts_with("application/json"),
            "{accept:?}"
        );
        assert_eq!(header_of(&response, header::VARY), "Accept", "{accept:?}");
        let status = json_of(response).await;
        assert_eq!(status["self"]["name"], NAME, "{accept:?}");
        assert_eq!(status["members"][0]["self"], true, "{accept:?}");
    }
}

#[tokio::test]
async fn peer_is_rate_limited_per_client_after_a_burst() {
    let app = replica().await;
    let router = router(&app);

    // The per-client quota is 3 a second with a burst of 10: the first 10 pass whatever
    // the time, and over the whole run no more than the burst plus what refilled.
    let started = Instant::now();
    let mut statuses = Vec::new();
    while statuses.len() < 40 && !statuses.contains(&StatusCode::TOO_MANY_REQUESTS) {
        statuses.push(get(&router, "/peer").await.status());
    }
    let refilled = (started.elapsed().as_secs_f64() * 3.0).ceil() as usize;
    let passed = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert!(
        statuses[..10].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(passed <= 10 + refilled, "{passed} passed: {statuses:?}");

    let response = get(&router, "/peer").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = header_of(&response, header::RETRY_AFTER)
        .parse()
        .expect("a Retry-After in seconds");
    assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
    error_reason(response).await;

    // X-Forwarded-For from a client that is no trusted proxy changes nothing.
    let request = Request::get("/peer")
        .header("x-forwarded-for", "10.1.2.3")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        send(&router, request).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // Another client has its own bucket.
    let other = router_from(&app, SocketAddr::from(([127, 0, 0, 2], 40_000)));
    let response = get(&other, "/peer").await;
    assert_eq!(response.status(), StatusCode::OK);
    let calls = json_of(response).await;
    assert_eq!(calls["from"]["instance_id"], app.state().me.id());
    assert_eq!(calls["results"], json!([]), "no members, no calls");
}

#[tokio::test]
async fn readyz_is_503_until_the_replica_runs() {
    let app = replica().await;
    let router = router(&app);

    // Built, not running: alive, but a load balancer must not send it traffic yet.
    let response = get(&router, "/healthz").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "ok\n");
    let response = get(&router, "/readyz").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(error_reason(response).await, "starting");

    // What `run` does once it serves.
    app.state().drain.set_ready();
    let response = get(&router, "/readyz").await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_build_info_and_bounded_labels() {
    let app = replica().await;
    let router = router(&app);
    get(&router, "/healthz").await;
    get(&router, "/no/such/path/4242").await;

    let response = get(&router, "/metrics").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        header_of(&response, header::CONTENT_TYPE).starts_with("text/plain; version=0.0.4"),
        "{:?}",
        response.headers()
    );
    assert_eq!(header_of(&response, header::CACHE_CONTROL), "no-store");
    let metrics = text(response).await;
    for line in [
        format!(
            "rollcall_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        ),
        "# TYPE rollcall_build_info gauge".to_string(),
        "rollcall_members{state=\"alive\"} 1".to_string(),
        "rollcall_http_requests_total{route=\"/healthz\",status=\"200\"} 1".to_string(),
        "rollcall_http_requests_total{route=\"unmatched\",status=\"404\"} 1".to_string(),
    ] {
        assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    }
    // Labels are route patterns, never raw paths.
    assert!(!metrics.contains("4242"), "{metrics}");
}

#[tokio::test]
async fn page_regions_are_html_whatever_is_accepted_and_never_cached() {
    let app = replica().await;
    let router = router(&app);
    for accept in ["text/html", "application/json", "*/*"] {
        let response = get_accepting(&router, "/page/regions", accept).await;
        assert_eq!(response.status(), StatusCode::OK, "{accept}");
        assert!(
            header_of(&response, header::CONTENT_TYPE).starts_with("text/html"),
            "{accept}"
        );
        assert_eq!(
            header_of(&response, header::CACHE_CONTROL),
            "no-store",
            "{accept}"
        );
        let regions = text(response).await;
        for id in ["hero", "verdict", "members", "discovery"] {
            assert!(
                regions.contains(&format!(" id=\"{id}\"")),
                "{id} missing: {regions}"
            );
        }
        assert!(
            regions.contains(&format!("data-name=\"{NAME}\"")),
            "{regions}"
        );
        assert!(
            !regions.contains("<html") && !regions.contains("<script"),
            "a fragment, not a page: {regions}"
        );
    }
}

#[tokio::test]
async fn without_the_status_page_only_what_replicas_and_platforms_need_is_served() {
    let app = replica().await;
    let router = rollcall::web::router(app.state(), false).layer(MockConnectInfo(caller()));
    for (path, want) in [
        ("/api/identity", StatusCode::OK),
        ("/healthz", StatusCode::OK),
        ("/metrics", StatusCode::OK),
        ("/", StatusCode::NOT_FOUND),
        ("/api/status", StatusCode::NOT_FOUND),
        ("/peer", StatusCode::NOT_FOUND),
        ("/page/regions", StatusCode::NOT_FOUND),
        ("/static/app.js", StatusCode::NOT_FOUND),
    ] {
        assert_eq!(get(&router, path).await.status(), want, "{path}");
    }
}
