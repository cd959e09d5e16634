//! Real replicas (the built binary) on 127.0.0.2, 127.0.0.3 … sharing one port, like pods.
//! Everything here talks to loopback only. Nothing sleeps and hopes: every wait polls with
//! a deadline and reports what it last saw.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::*;

/// A neighbour on the port that is not a replica: answers every connection with `reply`.
async fn fake_service(addr: SocketAddr, reply: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(addr).await.expect("bind fake service");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 2048];
                let _ = conn.read(&mut buf).await;
                let _ = conn.write_all(reply.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    })
}

const OTHER_SERVICE: &str = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n\
{\"instance_id\":\"01OTHER\",\"name\":\"api-1\",\"service\":\"api\",\"addr\":\"127.0.0.9:1\"}";
const GARBAGE: &str = "SSH-2.0-OpenSSH_9.2\r\nProtocol mismatch.\r\n";

#[tokio::test]
async fn three_replicas_find_each_other_foreign_services_are_not_admitted() {
    let _machine = shared().await;
    let port = free_port();
    let _other = fake_service((ip(9), port).into(), OTHER_SERVICE).await;
    let _garbage = fake_service((ip(10), port).into(), GARBAGE).await;
    let started = Instant::now();
    let replicas: Vec<Replica> = [2, 3, 4]
        .iter()
        .map(|&i| Replica::start(i, port, &[]))
        .collect();
    let all: Vec<&Replica> = replicas.iter().collect();
    let took = wait_until_all_see(&all).await;
    println!(
        "all 3 replicas listed each other alive {:?} after start ({:?} of waiting)",
        started.elapsed(),
        took
    );

    for r in &replicas {
        let foreign = eventually("both neighbours reported foreign", || async {
            let s = status_of(r).await?;
            let foreign: Vec<(String, String)> = s["foreign"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|f| {
                    (
                        f["addr"].as_str().unwrap_or("").into(),
                        f["reason"].as_str().unwrap_or("").into(),
                    )
                })
                .collect();
            if foreign.len() == 2 {
                Ok(foreign)
            } else {
                Err(format!("{foreign:?}"))
            }
        })
        .await;
        assert_eq!(foreign[0].0, format!("127.0.0.9:{port}"));
        assert_eq!(foreign[0].1, "service 'api' != 'rollcall'");
        assert_eq!(foreign[1].0, format!("127.0.0.10:{port}"));
        assert!(
            foreign[1].1.starts_with("broken answer"),
            "{}",
            foreign[1].1
        );
        let members = alive_addrs(r).await.unwrap();
        assert_eq!(members.len(), 3, "{members:?}");
    }

    // Direct calls from each replica reach the other two.
    for r in &replicas {
        let me = identity_of(r).await;
        let peer = get_json(&r.url("/peer")).await.expect("/peer answers");
        assert_eq!(peer["from"]["instance_id"], me["instance_id"]);
        let results = peer["results"].as_array().expect("results");
        assert_eq!(results.len(), 2, "{peer}");
        for res in results {
            assert_eq!(res["ok"], true, "{res}");
            assert_eq!(res["status"], 200);
            assert_eq!(res["reply"]["instance_id"], res["to"]["instance_id"]);
            assert_ne!(res["to"]["addr"], me["addr"]);
            assert!(res["rtt_ms"].as_f64().is_some_and(|rtt| rtt >= 0.0));
        }
        // One named member only.
        let target = results[0]["to"]["instance_id"]
            .as_str()
            .unwrap()
            .to_string();
        let one = get_json(&r.url(&format!("/peer?to={target}")))
            .await
            .expect("/peer?to");
        assert_eq!(one["results"].as_array().map(Vec::len), Some(1));
    }

    // An unknown `to` is a 404 with a reason; a query that doesn't parse is a 400.
    let r = &replicas[0];
    let resp = client()
        .get(r.url("/peer?to=10.0.0.1:22"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(resp.text().await.unwrap().contains("not a current member"));
    let resp = client().get(r.url("/peer?bogus=1")).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client()
        .get(r.url("/api/identity?nonce=zz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn curl_gets_json_and_browsers_get_html() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(
        2,
        port,
        &[("SCAN_CIDRS", "off"), ("INSTANCE_NAME", "page-test")],
    );
    identity_of(&r).await;

    let json = client()
        .get(r.url("/"))
        .header("accept", "*/*")
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 200);
    assert!(
        json.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    // Pretty, ending in a newline, led by what a person reads first.
    let text = json.text().await.unwrap();
    assert!(
        text.starts_with(&format!(
            "{{\n  \"served_by\": \"page-test (127.0.0.2:{port})\",\n  \"alive\": \"1\",\n  \"verdict\": "
        )),
        "{text}"
    );
    assert!(text.ends_with("}\n"), "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["self"]["name"], "page-test");
    assert_eq!(body["members"][0]["self"], true);
    // Scripts keep the compact JSON at /api/status.
    let compact = get_text(&r.url("/api/status"), "application/json").await;
    assert!(compact.starts_with("{\"verdict\":"), "{compact}");
    // A few lines for a terminal.
    let plain = get_text(&r.url("/"), "text/plain").await;
    let lines: Vec<&str> = plain.lines().collect();
    assert!(
        lines[0].starts_with(&format!("Served by: page-test 127.0.0.2:{port} (instance ")),
        "{plain}"
    );
    assert!(
        lines[1].starts_with("Verdict: No other replica found yet"),
        "{plain}"
    );
    assert_eq!(lines[2], "Alive: 1", "{plain}");
    let scan = body["discovery"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["method"] == "scan")
        .cloned()
        .unwrap();
    assert_eq!(scan["status"], "off");
    assert_eq!(scan["detail"], "SCAN_CIDRS=off");

    let html = client()
        .get(r.url("/"))
        .header(
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        )
        .send()
        .await
        .unwrap();
    assert!(
        html.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let page = html.text().await.unwrap();
    assert!(
        page.contains("<h1 id=\"served-name\">page-test</h1>"),
        "{page}"
    );
    assert!(page.contains("Discovery report"));
    assert!(
        !page.contains("http://") || !page.contains("src=\"http"),
        "no external assets"
    );

    for (path, status, kind) in [
        ("/healthz", 200, "text/plain"),
        ("/readyz", 200, "text/plain"),
        ("/static/style.css", 200, "text/css"),
        ("/static/app.js", 200, "text/javascript"),
        ("/static/../Cargo.toml", 404, ""),
        ("/nope", 404, "application/json"),
    ] {
        let resp = client().get(r.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), status, "{path}");
        let ct = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(ct.starts_with(kind), "{path}: {ct}");
    }
}

/// `/page/regions`: the page's live regions as HTML, whatever the client accepts, never
/// cached, each region under the id the page gives it and with the page's own markup.
/// Without JavaScript the page's two forms still come back to a page: a message posted
/// with the form returns to the page (which shows it), and "Call every peer" shows its
/// results as a page, not as raw JSON.
#[tokio::test]
async fn forms_without_javascript_come_back_to_a_page() {
    let _machine = shared().await;
    let port = free_port();
    let scan = ("SCAN_CIDRS", "127.0.0.2,127.0.0.3");
    let a = Replica::start(2, port, &[scan, ("INSTANCE_NAME", "forms-a")]);
    let b = Replica::start(3, port, &[scan, ("INSTANCE_NAME", "forms-b")]);
    wait_until_all_see(&[&a, &b]).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let html = "text/html,application/xhtml+xml,*/*;q=0.8";

    let posted = browser
        .post(a.url("/api/broadcast"))
        .header("accept", html)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("text=posted+without+javascript")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 303);
    assert_eq!(posted.headers()["location"], "/");
    let page = get_text(&a.url("/"), html).await;
    assert!(
        page.contains("posted without javascript"),
        "not on the page"
    );

    let peers = browser
        .get(a.url("/peer"))
        .header("accept", html)
        .send()
        .await
        .unwrap();
    assert_eq!(peers.status(), 200);
    assert!(
        peers.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let peers = peers.text().await.unwrap();
    assert!(peers.contains("from forms-a"), "{peers}");
    assert!(peers.contains("forms-b"), "{peers}");
    assert!(peers.contains("href=\"/\""), "{peers}");
    // Scripts still get JSON from both.
    let json = get_json(&a.url("/peer")).await.expect("peer JSON");
    assert_eq!(json["from"]["name"], "forms-a");

    // The page's form names its replica; sent to another one (as a load balancer may),
    // the calls still run on the page's replica, and the answer says who handed them on.
    let a_id = instance_id(&a).await;
    assert!(
        page.contains(&format!(
            "<input type=\"hidden\" name=\"from\" value=\"{a_id}\">"
        )),
        "the form does not name the page's replica"
    );
    let handed = browser
        .get(b.url(&format!("/peer?from={a_id}")))
        .header("accept", html)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(handed.contains("from forms-a"), "{handed}");
    assert!(handed.contains("handed on by forms-b"), "{handed}");
}

/// Behind a load balancer a page's polls are answered by other replicas: "this replica"
/// in the regions stays the replica that served the page (`?page=`).
#[tokio::test]
async fn this_replica_stays_the_page_s_whoever_renders_the_regions() {
    let _machine = shared().await;
    let port = free_port();
    let scan = [("SCAN_CIDRS", "127.0.0.2,127.0.0.3")];
    let a = Replica::start(2, port, &scan);
    let b = Replica::start(3, port, &scan);
    wait_until_all_see(&[&a, &b]).await;
    let a_id = instance_id(&a).await;
    let b_id = instance_id(&b).await;
    // The opening tag of a member's entry in the members region.
    let entry = |html: &str, id: &str| -> String {
        let at = html
            .find(&format!("data-id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id} not in {html}"));
        let start = html[..at].rfind("<li").expect("an li");
        html[start..at].to_string()
    };
    // Served by b, polled from a.
    let regions = get_text(&a.url(&format!("/page/regions?page={b_id}")), "text/html").await;
    assert!(
        entry(&regions, &b_id).contains(" me\""),
        "{}",
        entry(&regions, &b_id)
    );
    assert!(
        !entry(&regions, &a_id).contains(" me\""),
        "{}",
        entry(&regions, &a_id)
    );
    // Without `page` (or with an id that is no member), a marks itself.
    for query in ["", "?page=nobody"] {
        let regions = get_text(&a.url(&format!("/page/regions{query}")), "text/html").await;
        assert!(entry(&regions, &a_id).contains(" me\""), "{query}");
    }
    // The view is the page's replica's, handed on by whoever answered; the hero says
    // who that was.
    let hero = |html: &str| attribute(html, "id=\"hero\"", "data-instance");
    let view = |html: &str| attribute(html, "id=\"verdict-box\"", "data-view");
    assert_eq!(hero(&regions_of(&a, &b_id).await), a_id);
    assert_eq!(view(&regions_of(&a, &b_id).await), b_id);
    // The page's replica gone, the answering one shows its own view (and says so).
    let mut b = b;
    b.child.kill().expect("kill b");
    let _ = b.child.wait();
    eventually("a's own view once b does not answer", || async {
        let regions = regions_of(&a, &b_id).await;
        if view(&regions) == a_id && hero(&regions) == a_id {
            Ok(())
        } else {
            Err(regions.chars().take(300).collect())
        }
    })
    .await;
}

async fn regions_of(replica: &Replica, page: &str) -> String {
    get_text(
        &replica.url(&format!("/page/regions?page={page}")),
        "text/html",
    )
    .await
}

/// The value of `name` in the first tag that contains `marker`.
fn attribute(html: &str, marker: &str, name: &str) -> String {
    let Some(at) = html.find(marker) else {
        return String::new();
    };
    let start = html[..at].rfind('<').unwrap_or(0);
    let tag = &html[start..html[at..].find('>').map_or(html.len(), |end| at + end)];
    tag.split(&format!("{name}=\""))
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn the_page_regions_are_the_page_s_html() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(
        2,
        port,
        &[("SCAN_CIDRS", "off"), ("INSTANCE_NAME", "regions-test")],
    );
    identity_of(&r).await;

    let page = get_text(&r.url("/"), "text/html").await;
    for accept in ["text/html", "application/json", "*/*"] {
        let resp = client()
            .get(r.url("/page/regions"))
            .header("accept", accept)
            .send()
            .await
            .expect("an answer");
        assert_eq!(resp.status(), 200, "{accept}");
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        assert!(header("content-type").starts_with("text/html"), "{accept}");
        assert_eq!(header("cache-control"), "no-store", "{accept}");
        let regions = resp.text().await.expect("a body");
        for id in rollcall::web::REGION_IDS {
            let attr = format!(" id=\"{id}\"");
            assert!(regions.contains(&attr), "{id} missing from:\n{regions}");
            assert!(page.contains(&attr), "{id} missing from the page");
        }
        // Who answered, for the strip.
        assert!(
            regions.contains("data-name=\"regions-test\"") && regions.contains("data-hue=\""),
            "{regions}"
        );
        assert!(!regions.contains("<html") && !regions.contains("<script"));
        // The same markup as the page, where nothing changed in between.
        let verdict = |html: &str| {
            let start = html.find("<p id=\"verdict\">").expect("a verdict");
            let end = start + html[start..].find("</p>").expect("its end");
            html[start..end].to_string()
        };
        assert_eq!(verdict(&regions), verdict(&page));
        assert!(
            regions.contains("<strong>regions-test</strong>"),
            "{regions}"
        );
    }
}

#[tokio::test]
async fn answers_are_uniform_uncached_and_compressed() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(6, port, &[("SCAN_CIDRS", "off")]);
    identity_of(&r).await;
    let is_json_error = |resp: &reqwest::Response| {
        resp.headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"))
    };
    // An oversized body, an unknown method, an unknown path: one JSON shape with a reason.
    let big = client()
        .post(r.url("/api/hello"))
        .header("content-type", "application/json")
        .body(vec![b' '; 20 * 1024])
        .send()
        .await
        .expect("an answer");
    assert_eq!(big.status(), 413);
    assert!(is_json_error(&big), "{:?}", big.headers());
    let body: Value = big.json().await.expect("JSON");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("bytes"),
        "{body}"
    );
    for (method, path, want) in [
        (reqwest::Method::DELETE, "/api/status", 405),
        (reqwest::Method::GET, "/nope", 404),
    ] {
        let resp = client()
            .request(method, r.url(path))
            .send()
            .await
            .expect("an answer");
        assert_eq!(resp.status(), want, "{path}");
        assert!(is_json_error(&resp), "{path}: {:?}", resp.headers());
        let body: Value = resp.json().await.expect("JSON");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
    }
    // Live answers are never cached; static files are, with a validator.
    for path in ["/api/status", "/api/identity", "/metrics", "/"] {
        let resp = client().get(r.url(path)).send().await.expect("an answer");
        assert_eq!(
            resp.headers().get("cache-control").map(|v| v.as_bytes()),
            Some(&b"no-store"[..]),
            "{path}"
        );
    }
    let css = client()
        .get(r.url("/static/style.css"))
        .send()
        .await
        .expect("css");
    let etag = css.headers().get("etag").expect("an ETag").clone();
    let again = client()
        .get(r.url("/static/style.css"))
        .header("if-none-match", etag)
        .send()
        .await
        .expect("css again");
    assert_eq!(again.status(), 304);
    // Compressed for clients that ask; the event stream never is (it must flush as it goes).
    for (path, accept) in [
        ("/", "text/html"),
        ("/api/status", "application/json"),
        ("/static/app.js", "*/*"),
    ] {
        let resp = client()
            .get(r.url(path))
            .header("accept", accept)
            .header("accept-encoding", "gzip")
            .send()
            .await
            .expect("an answer");
        assert_eq!(
            resp.headers().get("content-encoding").map(|v| v.as_bytes()),
            Some(&b"gzip"[..]),
            "{path}"
        );
    }
    let events = client()
        .get(r.url("/events"))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .expect("the event stream");
    assert_eq!(events.status(), 200);
    assert!(events.headers().get("content-encoding").is_none());
}

#[tokio::test]
async fn hello_must_come_from_the_claimed_address() {
    let _machine = shared().await;
    let port = free_port();
    let r = Replica::start(5, port, &[("SCAN_CIDRS", "off")]);
    let me = identity_of(&r).await;
    let post = |body: String| {
        client()
            .post(r.url("/api/hello"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // We call from 127.0.0.1 but claim 127.0.0.66: refused, and nothing is called.
    let mut claim = me.clone();
    claim["instance_id"] = "01SPOOF".into();
    claim["addr"] = format!("127.0.0.66:{port}").into();
    let resp = post(claim.to_string()).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("not the caller"));
    // Another service: refused.
    claim["service"] = "api".into();
    assert_eq!(post(claim.to_string()).await.unwrap().status(), 403);
    // Not an identity: 400 with a reason.
    let resp = post("{\"hello\":".into()).await.unwrap();
    assert_eq!(resp.status(), 400);
    // Too large: refused before it is read.
    let resp = post(format!("{{\"x\":\"{}\"}}", "a".repeat(100_000)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn a_killed_replica_dies_and_its_restart_is_a_new_member() {
    let _machine = shared().await;
    let port = free_port();
    let a = Replica::start(2, port, &[]);
    let b = Replica::start(3, port, &[]);
    let c = Replica::start(4, port, &[]);
    wait_until_all_see(&[&a, &b, &c]).await;
    let old_id = identity_of(&c).await["instance_id"]
        .as_str()
        .unwrap()
        .to_string();

    drop(c); // SIGKILL: no goodbye.
    let killed = Instant::now();
    for r in [&a, &b] {
        wait_for_state(r, &old_id, "dead").await;
    }
    println!(
        "SIGKILLed replica dead on both others after {:?}",
        killed.elapsed()
    );

    let c2 = Replica::start(4, port, &[]);
    let new_id = identity_of(&c2).await["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(new_id, old_id);
    for r in [&a, &b] {
        eventually("restarted replica to join as a new member", || async {
            let s = states(r).await?;
            let new_alive = s.iter().any(|(id, _, st)| *id == new_id && st == "alive");
            let old_dead = s.iter().any(|(id, _, st)| *id == old_id && st == "dead");
            if new_alive && old_dead {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    }
    // Probes keep reaching the address for several rounds; the old instance stays dead.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(2500) {
        let s = states(&a).await.unwrap();
        assert!(
            s.iter().any(|(id, _, st)| *id == old_id && st == "dead"),
            "{s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_graceful_stop_says_goodbye() {
    let _machine = shared().await;
    let port = free_port();
    let log = std::env::temp_dir().join(format!("rollcall-goodbye-{}.log", std::process::id()));
    let a = Replica::start_logging(2, port, &[], Some(&log));
    let mut b = Replica::start(3, port, &[]);
    wait_until_all_see(&[&a, &b]).await;
    let b_id = identity_of(&b).await["instance_id"]
        .as_str()
        .unwrap()
        .to_string();
    let stopped = Instant::now();
    b.terminate();
    wait_for_state(&a, &b_id, "left").await;
    let status = exited(&mut b.child, "stopped replica").await;
    assert!(status.success(), "{status:?}");
    // Its peer's probes and health checks are not traffic: with nobody else calling, the
    // drain ends one quiet second after SIGTERM, far inside the default 10 s maximum.
    let took = stopped.elapsed();
    println!("a replica with no incoming traffic exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Log fields are words and numbers a log query can match, not Rust's debug output.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let line = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no '{message}' in {text}"))
            .clone()
    };
    assert_eq!(line("subnet scan planned")["port"], u64::from(port));
    let joined = line("member joined");
    assert!(
        ["scan", "announce"].contains(&joined["source"].as_str().unwrap_or_default()),
        "{joined}"
    );
    let left = line("member state changed");
    assert_eq!(
        (&left["from"], &left["to"]),
        (&"alive".into(), &"left".into())
    );
}

#[tokio::test]
async fn a_draining_replica_serves_until_requests_stop() {
    let _machine = shared().await;
    let port = free_port();
    let log = std::env::temp_dir().join(format!("rollcall-drain-{}.log", std::process::id()));
    let mut r = Replica::start_logging(5, port, &[], Some(&log));
    identity_of(&r).await;
    // Steady traffic, as through a load balancer that has not yet noticed.
    let url = r.url("/api/status");
    let traffic = tokio::spawn(async move {
        loop {
            let _ = client().get(&url).send().await;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.terminate();
    let status = eventually("/api/status to say draining", || async {
        let s = status_of(&r).await?;
        if s["draining"] == true {
            Ok(s)
        } else {
            Err(s["draining"].to_string())
        }
    })
    .await;
    assert_eq!(status["draining"], true);
    let ready = client().get(r.url("/readyz")).send().await.expect("readyz");
    assert_eq!(ready.status(), 503);
    // While requests keep coming it keeps serving, well past the quiet period.
    let draining_since = Instant::now();
    while draining_since.elapsed() < Duration::from_millis(2500) {
        assert!(
            matches!(r.child.try_wait(), Ok(None)),
            "exited while requests were still arriving"
        );
        let page = client()
            .get(r.url("/"))
            .header("accept", "text/html")
            .send()
            .await;
        let page = page
            .expect("served while draining")
            .text()
            .await
            .expect("a page");
        assert!(
            page.contains("shutting down"),
            "the page says it is draining"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    traffic.abort();
    let quiet = Instant::now();
    let status = exited(&mut r.child, "drained replica").await;
    assert!(status.success(), "{status:?}");
    let took = quiet.elapsed();
    println!("exited {took:?} after requests stopped");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The planned 503s of /readyz are not errors in the log.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(text.contains("drained"), "{text}");
    assert!(
        !text.contains("\"level\":\"ERROR\"") && !text.contains("request failed"),
        "{text}"
    );
}

#[tokio::test]
async fn a_bad_setting_stops_start_up_with_one_line() {
    let _machine = shared().await;
    for (var, value) in [
        ("SCAN_CIDRS", "10.0.0.0/8"),
        ("PORT", "eighty"),
        ("SCAN_PORTS", "80,0"),
        ("PROBE_INTERVAL_MS", "0"),
        ("BIND_ADDR", "localhost:80"),
        ("DATABASE_URL", "mysql://db.internal/app"),
        ("REGISTRY_TTL_SECS", "2"),
    ] {
        let (code, err) = start_with_setting(var, value).await;
        assert_eq!(code, Some(2), "{var}={value} (None: it started)");
        assert_eq!(err.trim_end().lines().count(), 1, "{var}={value}: {err}");
        assert!(
            err.contains(var) && err.contains(value),
            "{var}={value}: {err}"
        );
    }
}

#[tokio::test]
async fn the_demo_rotates_through_its_front_door_and_stops_cleanly() {
    let _machine = shared().await;
    let port = free_port();
    let mut demo = Guard(
        Command::new(BIN)
            .env_clear()
            .env("RUST_LOG", "warn")
            .args(["demo", "--replicas", "3", "--port", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start demo"),
    );
    let front = format!("http://127.0.0.1:{port}");

    // Every replica answers through the front door, in turn, and each sees all three.
    let names = eventually(
        "front door to rotate over 3 replicas that see each other",
        || async {
            let mut names = std::collections::BTreeSet::new();
            for _ in 0..6 {
                let s = get_json(&format!("{front}/api/status"))
                    .await
                    .ok_or("no answer")?;
                let alive = s["members"]
                    .as_array()
                    .map_or(0, |m| m.iter().filter(|m| m["state"] == "alive").count());
                if alive != 3 {
                    return Err(format!("{} sees {alive} alive", s["self"]["name"]));
                }
                names.insert(s["self"]["name"].as_str().unwrap_or("").to_string());
            }
            if names.len() == 3 {
                Ok(names)
            } else {
                Err(format!("{names:?}"))
            }
        },
    )
    .await;
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["replica-1", "replica-2", "replica-3"]
    );

    // Scan and registry both found the others, even when both reported an address at once.
    let first = Replica::attach(2, port);
    for other in [3, 4] {
        let id = instance_id(&Replica::attach(other, port)).await;
        wait_for_source(&first, &id, "scan").await;
        wait_for_source(&first, &id, "registry").await;
    }

    // Each replica compares its direct calls with a call through the front door.
    eventually("a call through the load balancer measured", || async {
        let s = get_json(&format!("http://127.0.0.2:{port}/api/status"))
            .await
            .ok_or("no answer")?;
        let lb = &s["via_load_balancer"];
        if lb["ok"] == true && lb["rtt_ms"].as_f64().is_some() {
            Ok(())
        } else {
            Err(lb.to_string())
        }
    })
    .await;

    // The front door is found by the scan too, and is recognised as a load-balanced alias.
    eventually("front door listed as an alias", || async {
        let s = get_json(&format!("http://127.0.0.2:{port}/api/status"))
            .await
            .ok_or("no answer")?;
        let aliases = s["aliases"].to_string();
        if aliases.contains(&format!("127.0.0.1:{port}")) {
            Ok(())
        } else {
            Err(aliases)
        }
    })
    .await;

    let _ = Command::new("kill")
        .args(["-INT", &demo.0.id().to_string()])
        .status();
    let status = exited(&mut demo.0, "demo").await;
    assert!(status.success(), "{status:?}");
    let mut out = String::new();
    use std::io::Read;
    demo.0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains(&format!("http://127.0.0.1:{port}/")), "{out}");
    assert!(out.contains("stopped"), "{out}");
    // Every port is free again.
    for last in [1, 2, 3, 4] {
        assert!(
            std::net::TcpListener::bind((ip(last), port)).is_ok(),
            "127.0.0.{last}:{port} still bound"
        );
    }
}

/// The page in a real headless Chromium: its script polls `/page/regions`, swaps the
/// server-rendered regions in (a replica that starts later appears without a reload),
/// records each answer in the strip, and shows messages that cross replicas as they arrive.
#[tokio::test]
async fn the_page_goes_live_in_a_real_browser() {
    use crate::common::browser::{Browser, local_chromedriver, local_curl};
    let _machine = shared().await;
    let port = free_port();
    let scan = [("SCAN_CIDRS", "127.0.0.6,127.0.0.7")];
    let a = Replica::start(6, port, &scan);
    identity_of(&a).await;

    let browser = Browser::start(local_chromedriver, local_curl());
    browser.goto(&a.url("/"));
    let members = || {
        browser.eval(
            "return [...document.querySelectorAll('#members strong')].map(e => e.textContent)",
        )
    };
    assert_eq!(members(), serde_json::json!(["r6"]), "served with the page");
    // Marks this load of the page: a reload would lose it.
    browser.eval("window.rollcallLoad = 'first'; return 1");

    // A replica that starts after the page loaded appears in it, drawn by the server.
    let b = Replica::start(7, port, &scan);
    wait_until_all_see(&[&a, &b]).await;
    eventually("r7 to appear on the page without a reload", || async {
        let seen = members();
        if seen == serde_json::json!(["r6", "r7"]) {
            Ok(())
        } else {
            Err(seen.to_string())
        }
    })
    .await;
    assert_eq!(browser.eval("return window.rollcallLoad"), "first");
    // The server's markup (the script builds none): members keep their data attributes.
    let ids =
        browser.eval("return document.querySelectorAll('#members li[data-id][data-name]').length");
    assert_eq!(ids, 2);
    eventually("the script to poll and record answers", || async {
        let polls = browser.eval("return document.querySelectorAll('#strip li.poll').length");
        if polls.as_u64().unwrap_or(0) >= 2 {
            Ok(())
        } else {
            Err(polls.to_string())
        }
    })
    .await;
    let reloads = browser.eval("return document.querySelectorAll('#strip li.reload').length");
    assert_eq!(reloads, 1);
    let strip = browser.eval(
        "return [...document.querySelectorAll('#strip li')].map(li => li.textContent + ' ' + li.style.getPropertyValue('--hue').trim())",
    );
    let hero_hue = browser.eval("return document.querySelector('#hero').dataset.hue");
    for entry in strip.as_array().expect("strip entries") {
        assert_eq!(
            entry.as_str().unwrap_or(""),
            format!("r6 {}", hero_hue.as_str().unwrap_or("?")),
            "{strip}"
        );
    }
    // The regions keep updating: direct RTTs, and the 2×2 mesh of direct calls.
    eventually("RTTs and the full mesh on the page", || async {
        let cells = browser.eval("return document.querySelector('#members').textContent");
        let mesh = browser.eval(
            "return document.querySelectorAll('#mesh td.fast, #mesh td.ok, #mesh td.slow').length",
        );
        if cells.as_str().unwrap_or("").contains(" ms") && mesh == 2 {
            Ok(())
        } else {
            Err(format!("{mesh} mesh cells; members: {cells}"))
        }
    })
    .await;
    let found = browser.eval("return document.querySelector('#found').textContent");
    assert_eq!(found, "2");
    let curl = browser.eval("return document.querySelector('#curl').textContent");
    assert_eq!(curl, format!("curl http://127.0.0.6:{port}/").as_str());

    // A message typed here arrives here with its path; one sent to the other replica
    // crosses over.
    browser.eval("document.querySelector('#say input').value = 'typed in the page'; document.querySelector('#say button').click(); return 1");
    let response = client()
        .post(b.url("/api/broadcast"))
        .json(&serde_json::json!({ "text": "sent to r7" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually("both messages on the page", || async {
        let text = browser.eval("return document.querySelector('#messages').textContent");
        let text = text.as_str().unwrap_or("").to_string();
        if text.contains("typed in the page")
            && text.contains("sent to r7")
            && text.contains("entered by r7 · r7 → r6")
        {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;

    // The replica behind the page goes away: the page says nobody answers, and keeps the
    // hero of the replica that served it.
    drop(a);
    eventually("the strip to record a poll nobody answered", || async {
        let none = browser.eval("return document.querySelectorAll('#strip li.none').length");
        if none.as_u64().unwrap_or(0) >= 1 {
            Ok(())
        } else {
            Err(none.to_string())
        }
    })
    .await;
    let hero = browser.eval("return document.querySelector('#served-name').textContent");
    assert_eq!(hero, "r6");
    // No stale green: after a few seconds without answers the page says since when and
    // greys what it shows ...
    eventually("the page to say that no replica answers", || async {
        let stale = browser.eval(
            "const s = document.querySelector('#stale'); return [!s.hidden, s.textContent, document.body.classList.contains('stale')]",
        );
        if stale[0] == true && stale[2] == true {
            Ok(stale[1].as_str().unwrap_or("").to_string())
        } else {
            Err(stale.to_string())
        }
    })
    .await
    .starts_with("No replica answers since")
    .then_some(())
    .expect("the banner says since when");
    // ... and recovers by itself when a replica answers again.
    let _back = Replica::start(6, port, &scan);
    eventually("the page to recover when a replica answers again", || async {
        let stale = browser.eval(
            "return [document.querySelector('#stale').hidden, document.body.classList.contains('stale')]",
        );
        if stale == serde_json::json!([true, false]) {
            Ok(())
        } else {
            Err(stale.to_string())
        }
    })
    .await;
}

/// Every replica publishes its row of direct probes and a hash of its view: any replica
/// shows the whole N×N matrix, says when views agree, keeps a timeline, and exports metrics.
#[tokio::test]
async fn mesh_views_timeline_and_metrics() {
    let _machine = shared().await;
    let port = free_port();
    let a = Replica::start(2, port, &[]);
    let b = Replica::start(3, port, &[]);
    let mut c = Some(Replica::start(4, port, &[]));
    wait_until_all_see(&[&a, &b, c.as_ref().unwrap()]).await;
    let status = eventually(
        "a full 3×3 mesh, all direct calls ok, views agreeing",
        || async {
            let s = status_of(&a).await?;
            let rows = s["mesh"].as_object().cloned().unwrap_or_default();
            let ok_cells = rows
                .values()
                .flat_map(|row| row.as_object().cloned().unwrap_or_default().into_values())
                .filter(|cell| cell["ok"] == true && cell["rtt_ms"].as_f64().is_some())
                .count();
            if rows.len() == 3 && ok_cells == 6 && s["converged"] == true {
                Ok(s)
            } else {
                Err(s["mesh"].to_string())
            }
        },
    )
    .await;
    let hash = status["view_hash"].as_str().unwrap().to_string();
    for r in [&b, c.as_ref().unwrap()] {
        let s = status_of(r).await.unwrap();
        assert_eq!(
            s["view_hash"],
            hash.as_str(),
            "all replicas see the same members"
        );
    }
    let metrics = get_text(&a.url("/metrics"), "text/plain").await;
    for line in [
        "rollcall_members{state=\"alive\"} 3",
        "rollcall_http_requests_total{route=\"/api/status\",status=\"200\"}",
        "rollcall_probe_rtt_seconds_count",
        "# TYPE rollcall_probes_total counter",
    ] {
        assert!(metrics.contains(line), "{line} missing from:\n{metrics}");
    }

    // One dies: the timeline says so, and the views of the two survivors agree again.
    let c_id = instance_id(c.as_ref().unwrap()).await;
    drop(c.take());
    eventually(
        "the death on the timeline and views converged on 2",
        || async {
            let s = status_of(&a).await?;
            let died = s["timeline"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|e| e["kind"] == "dead" && e["instance_id"] == c_id.as_str())
            });
            let views = s["views"].as_object().map_or(0, |v| v.len());
            // The timeline is merged: b's sighting of the death is there too.
            let observers: std::collections::BTreeSet<String> = s["timeline"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter(|e| e["kind"] == "dead")
                        .filter_map(|e| e["by"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if died
                && observers.len() == 2
                && s["converged"] == true
                && views == 2
                && s["view_hash"] != hash.as_str()
            {
                Ok(())
            } else {
                Err(format!("{} {}", s["timeline"], s["views"]))
            }
        },
    )
    .await;
}
