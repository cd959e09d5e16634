//! The page in a real headless Chromium (chromedriver), against real replicas on loopback:
//! readable on a phone with pod names of Kubernetes' full 63 characters, and every message
//! shown exactly once while its event stream moves between replicas behind a front door
//! (HAProxy, as a platform's load balancer).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::common::browser::{Browser, local_chromedriver, local_curl};
use crate::common::{
    Guard, Replica, client, eventually, free_port, shared, status_of, wait_until_all_see,
};

/// A pod's name at the 63 characters Kubernetes allows: deployment, replica-set hash, and
/// the pod's own suffix, the only part that differs.
fn pod_name(suffix: &str) -> String {
    let name = format!("checkout-api-with-a-long-deployment-name-abcde-768976868d-{suffix}");
    assert_eq!(name.len(), 63, "{name}");
    name
}

/// A directory of this test's own under the system's temporary one, made empty.
fn scratch(what: &str, port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rollcall-{what}-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

/// Replicas on 127.0.0.`first`.. (one per name), finding each other by scanning just
/// their addresses.
fn replicas(first: u8, port: u16, names: &[String], extra: &[(&str, &str)]) -> Vec<Replica> {
    let addrs: Vec<String> = (0..names.len())
        .map(|i| format!("127.0.0.{}", first + i as u8))
        .collect();
    let scan = addrs.join(",");
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let mut env = vec![("SCAN_CIDRS", scan.as_str()), ("INSTANCE_NAME", name)];
            env.extend_from_slice(extra);
            Replica::start(first + i as u8, port, &env)
        })
        .collect()
}

fn count(browser: &Browser, selector: &str) -> u64 {
    let script = format!("return document.querySelectorAll({selector:?}).length");
    browser.eval(&script).as_u64().unwrap_or(0)
}

/// The page's width against the window's: what a reader would have to scroll sideways.
fn widths(browser: &Browser) -> (u64, u64) {
    let w = browser.eval("return [document.documentElement.scrollWidth, window.innerWidth]");
    (
        w[0].as_u64().unwrap_or(u64::MAX),
        w[1].as_u64().unwrap_or(0),
    )
}

/// Waits until the matrix holds `n` direct calls that answered.
async fn matrix_answers(browser: &Browser, n: u64) {
    eventually(&format!("{n} answered calls in the matrix"), || async {
        let cells = count(browser, "#mesh td.fast, #mesh td.ok, #mesh td.slow");
        if cells == n {
            Ok(())
        } else {
            Err(format!("{cells} cells"))
        }
    })
    .await;
}

/// Saves a screenshot of the whole page at `width` under target/ (docs/screens/ has copies).
fn screenshot_whole_page(browser: &Browser, width: u32, file: &str) {
    browser.resize(width, 900);
    let height = browser.eval("return document.documentElement.scrollHeight");
    let height = height.as_u64().unwrap_or(900).clamp(600, 6000) as u32;
    browser.resize(width, height);
    let path = crate::common::repo("target").join(file);
    // The build may have gone elsewhere (CARGO_TARGET_DIR): the directory may not exist.
    std::fs::create_dir_all(path.parent().expect("a directory")).expect("target/");
    browser.screenshot(&path);
    println!("screenshot: {}", path.display());
}

/// Three pods whose 63-character names differ only in their last five: at 390 px nothing
/// makes the page wider than the phone, the matrix's headers are the five that differ
/// (the whole name on hover), and a pod killed keeps its row and column, marked ✗.
#[tokio::test]
async fn long_pod_names_fit_a_phone_and_a_dead_pod_keeps_its_row() {
    let _machine = shared().await;
    let port = free_port();
    let dir = scratch("page-names", port);
    let registry = format!("sqlite://{}", dir.join("registry.db").display());
    let suffixes = ["vprdj", "x7k2p", "gtxdh"];
    let names: Vec<String> = suffixes.iter().map(|s| pod_name(s)).collect();
    let service = "checkout-api-with-a-long-deployment-name-abcde";
    let mut pods = replicas(
        11,
        port,
        &names,
        &[("DATABASE_URL", &registry), ("SERVICE_NAME", service)],
    );
    wait_until_all_see(&pods.iter().collect::<Vec<_>>()).await;

    let browser = Browser::start(local_chromedriver, local_curl());
    browser.resize(390, 900);
    browser.goto(&pods[0].url("/"));
    matrix_answers(&browser, 6).await;
    // Long names everywhere: a message's path, the calls to every peer, the timeline's
    // joins, the registry's rows in the report.
    let sent = client()
        .post(pods[1].url("/api/broadcast"))
        .json(&json!({ "text": "a message that took a path through long names" }))
        .send()
        .await
        .expect("a broadcast");
    assert_eq!(sent.status(), 200);
    browser.eval("document.querySelector('#peer-form button').click(); return 1");
    eventually("long names in every part of the page", || async {
        let text = |id: &str| {
            let script = format!("return document.getElementById('{id}').textContent");
            browser.eval(&script).as_str().unwrap_or("").to_string()
        };
        let full = [
            "messages",
            "peer-results",
            "timeline",
            "discovery",
            "members",
        ]
        .map(|id| (id, text(id).contains(&names[1])));
        if full.iter().all(|(_, has)| *has) {
            Ok(())
        } else {
            Err(format!("{full:?}"))
        }
    })
    .await;
    let (page, window) = widths(&browser);
    assert!(window <= 400, "the window is a phone's: {window} px");
    assert!(page <= window, "{page} px of page in a {window} px window");

    let headers = browser.eval(
        "return [...document.querySelectorAll('#mesh tr:first-child th')].slice(1).map(th => [th.textContent, th.title])",
    );
    let labels: Vec<&str> = headers
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| h[0].as_str().unwrap_or(""))
        .collect();
    let titles: Vec<&str> = headers
        .as_array()
        .expect("headers")
        .iter()
        .map(|h| h[1].as_str().unwrap_or(""))
        .collect();
    for (name, suffix) in names.iter().zip(suffixes) {
        assert!(labels.contains(&suffix), "{suffix} in {headers}");
        assert!(
            titles.contains(&format!("{name} (alive)").as_str()),
            "{name} in {headers}"
        );
    }
    let distinct: std::collections::BTreeSet<&&str> = labels.iter().collect();
    assert_eq!(distinct.len(), 3, "distinct headers: {headers}");

    // A pod killed: its row and column stay, marked, and every replica reports it dead on
    // one line of the timeline.
    let gone = pods.remove(2);
    drop(gone);
    eventually("the dead pod's row marked ✗", || async {
        let row = browser.eval(
            "const th = [...document.querySelectorAll('#mesh tr th.state-dead')]; return th.map(t => t.textContent)",
        );
        if row == json!(["✗ gtxdh", "✗ gtxdh"]) {
            Ok(())
        } else {
            Err(row.to_string())
        }
    })
    .await;
    matrix_answers(&browser, 2).await;
    eventually("one timeline line for the death, seen by both others", || async {
        let lines = browser.eval(
            "return [...document.querySelectorAll('#timeline li.tone-bad')].map(li => li.textContent)",
        );
        // The dead pod, and both others in "seen by".
        let seen_by_both = lines.as_array().into_iter().flatten().any(|l| {
            let l = l.as_str().unwrap_or("");
            l.contains("seen by") && names.iter().all(|name| l.contains(name.as_str()))
        });
        if seen_by_both {
            Ok(())
        } else {
            Err(lines.to_string())
        }
    })
    .await;
    // The dead pod is history: the verdict, once every report has seen it dead, is good.
    eventually("the verdict box to turn good again", || async {
        let verdict = browser.eval(
            "const v = document.querySelector('#verdict-box'); return [v.className, v.textContent]",
        );
        if verdict[0] == "verdict tone-good" {
            Ok(())
        } else {
            Err(verdict.to_string())
        }
    })
    .await;
    let time = browser.eval(
        "const t = document.querySelector('#timeline time'); return [t.textContent, t.title]",
    );
    assert!(
        time[0].as_str().is_some_and(|t| t.ends_with(" ago")),
        "{time}"
    );
    assert!(time[1].as_str().is_some_and(|t| t.ends_with('Z')), "{time}");
    let (page, window) = widths(&browser);
    assert!(page <= window, "{page} px of page in a {window} px window");

    screenshot_whole_page(&browser, 390, "page-390.png");
    screenshot_whole_page(&browser, 1200, "page-desktop.png");
    let _ = std::fs::remove_dir_all(&dir);
}

/// HAProxy on 127.0.0.1 in front of replicas, as a platform's load balancer: each request
/// to the next replica, a refused connection tried on another, health checks on /readyz.
/// Its log (one line per request as soon as it is answered: method, path, status, the
/// replica, and the request's Last-Event-ID) goes to a file; its runtime API takes
/// replicas out of rotation and back.
struct FrontDoor {
    _haproxy: Guard,
    port: u16,
    dir: PathBuf,
    servers: Vec<String>,
}

impl FrontDoor {
    fn start(backends: &[&Replica], dir: PathBuf) -> FrontDoor {
        let port = free_port();
        let servers: Vec<String> = (0..backends.len()).map(|i| format!("r{i}")).collect();
        let lines: Vec<String> = servers
            .iter()
            .zip(backends)
            .map(|(name, r)| format!("    server {name} {}", r.addr))
            .collect();
        let config = format!(
            "global
    log stdout format raw local0
    stats socket {dir}/admin.sock mode 600 level admin
    maxconn 256
defaults
    mode http
    log global
    option logasap
    option redispatch 1
    retries 3
    timeout connect 500ms
    timeout client 1h
    timeout server 1h
    timeout http-request 10s
frontend door
    bind 127.0.0.1:{port}
    capture request header Last-Event-ID len 64
    log-format \"%HM %HU %ST %s %hr\"
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /readyz
    default-server check inter 300ms fall 1 rise 1
{servers}
",
            dir = dir.display(),
            servers = lines.join("\n"),
        );
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config).expect("write haproxy.cfg");
        let log = std::fs::File::create(dir.join("haproxy.log")).expect("haproxy.log");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy is needed (scripts/test installs it)");
        FrontDoor {
            _haproxy: Guard(child),
            port,
            dir,
            servers,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The log's lines about the event stream: (status, replica, Last-Event-ID).
    fn streams(&self) -> Vec<(String, String, String)> {
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        log.lines()
            .filter_map(|line| {
                let mut words = line.split(' ');
                let (_, path) = (words.next()?, words.next()?);
                if path != "/events" {
                    return None;
                }
                let (status, server, id) = (words.next()?, words.next()?, words.next()?);
                let id = id.trim_start_matches('{').trim_end_matches('}');
                Some((status.into(), server.into(), id.into()))
            })
            .collect()
    }

    /// One command to HAProxy's runtime API.
    fn admin(&self, command: &str) {
        let mut socket =
            UnixStream::connect(self.dir.join("admin.sock")).expect("haproxy's admin socket");
        socket
            .write_all(format!("{command}\n").as_bytes())
            .expect("an admin command");
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        assert!(answer.trim().is_empty(), "{command}: {answer}");
    }

    /// Every replica out of rotation, and their open streams cut: the door answers 503.
    fn close(&self) {
        for server in &self.servers {
            self.admin(&format!("set server replicas/{server} state maint"));
            self.admin(&format!("shutdown sessions server replicas/{server}"));
        }
    }

    fn open(&self) {
        for server in &self.servers {
            self.admin(&format!("set server replicas/{server} state ready"));
        }
    }
}

/// The page's messages: (text, id) of each shown, and the repeats it dropped.
fn shown(browser: &Browser) -> (Vec<(String, String)>, u64) {
    let v = browser.eval(
        "const list = document.querySelector('#messages'); return [[...list.querySelectorAll('li')].map(li => [li.querySelector('.text').textContent, li.dataset.id]), Number(list.dataset.repeats || 0)]",
    );
    let messages = v[0]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let text = |i: usize| m[i].as_str().unwrap_or("").to_string();
            (text(0), text(1))
        })
        .collect();
    (messages, v[1].as_u64().unwrap_or(0))
}

/// Waits until the page shows exactly `texts` (newest first), each once.
async fn shows_exactly(browser: &Browser, texts: &[&str]) -> (Vec<(String, String)>, u64) {
    eventually(
        &format!("the page to show {texts:?}, each once"),
        || async {
            let (messages, repeats) = shown(browser);
            let seen: Vec<&str> = messages.iter().map(|(t, _)| t.as_str()).collect();
            if seen == texts {
                Ok((messages, repeats))
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await
}

async fn broadcast(to: &Replica, text: &str) -> Value {
    let response = client()
        .post(to.url("/api/broadcast"))
        .json(&json!({ "text": text }))
        .send()
        .await
        .expect("a broadcast");
    assert_eq!(response.status(), 200);
    response.json().await.expect("its answer")
}

/// The page behind a front door, its event stream moved twice: once by killing the
/// replica it was on (the browser resumes with Last-Event-ID, on another replica, and
/// gets nothing twice: the server's filter), once by the door answering 503 for a moment
/// (the browser gives the stream up; the page opens a new one, which replays the history,
/// and drops every repeat: the page's own filter). Each message is shown exactly once.
#[tokio::test]
async fn messages_are_shown_once_while_the_stream_moves_between_replicas() {
    let _machine = shared().await;
    let port = free_port();
    let names: Vec<String> = ["r21", "r22", "r23"].map(String::from).to_vec();
    let mut pods = replicas(21, port, &names, &[]);
    wait_until_all_see(&pods.iter().collect::<Vec<_>>()).await;
    let door = FrontDoor::start(&pods.iter().collect::<Vec<_>>(), scratch("page-door", port));
    eventually("the front door to answer", || async {
        match client().get(door.url("/readyz")).send().await {
            Ok(r) if r.status() == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    let browser = Browser::start(local_chromedriver, local_curl());
    browser.goto(&door.url("/"));
    let stream = eventually("the page's event stream through the door", || async {
        match door.streams().as_slice() {
            [(status, server, id)] if status == "200" && id.is_empty() => Ok(server.clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;

    // "Call every peer" runs on the page's replica, whichever replica the door hands the
    // click to (round robin: two clicks in a row reach two replicas).
    let hero = browser.eval("return document.querySelector('#hero').dataset.name");
    let hero = hero.as_str().expect("the hero's name").to_string();
    let mut handed_on = false;
    for click in 0..6 {
        browser.eval(
            "document.getElementById('peer-results').innerHTML = ''; document.querySelector('#peer-form button').click(); return 1",
        );
        let first = eventually("the calls' answer on the page", || async {
            let line = browser.eval(
                "const li = document.querySelector('#peer-results li'); return li ? li.textContent : ''",
            );
            match line.as_str() {
                Some(l) if !l.is_empty() => Ok(l.to_string()),
                _ => Err(line.to_string()),
            }
        })
        .await;
        assert!(
            first.starts_with(&format!("called from {hero} (")),
            "click {click}: {first}"
        );
        if first.contains("handed on by") {
            handed_on = true;
            break;
        }
    }
    assert!(handed_on, "the door never sent a click to another replica");

    // Typed in the page, it goes through the door to some replica and back.
    browser.eval(
        "document.querySelector('#say input').value = 'first'; document.querySelector('#say button').click(); return 1",
    );
    let (messages, repeats_before) = shows_exactly(&browser, &["first"]).await;
    let first_id = messages[0].1.clone();
    assert!(!first_id.is_empty(), "messages carry their ids");

    // The replica under the stream dies: the browser resumes elsewhere, and says what it
    // saw last.
    let on: usize = stream[1..].parse().expect("a server rN");
    drop(pods.remove(on));
    let resumed = eventually("the stream to resume on another replica", || async {
        let streams = door.streams();
        match streams.get(1..).unwrap_or_default() {
            [(status, server, id), ..] if status == "200" => Ok((server.clone(), id.clone())),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_ne!(resumed.0, stream, "another replica");
    assert_eq!(
        resumed.1, first_id,
        "the browser resumes with Last-Event-ID"
    );
    broadcast(&pods[0], "second").await;
    let (_, repeats) = shows_exactly(&browser, &["second", "first"]).await;
    assert_eq!(
        repeats, repeats_before,
        "a resumed stream sends only what is new (the server honours Last-Event-ID)"
    );

    // The door answers 503 for a moment: the browser gives the stream up, for good.
    door.close();
    eventually("the door to refuse the stream", || async {
        let refused = door.streams().iter().any(|(status, _, _)| status == "503");
        if refused {
            Ok(())
        } else {
            Err(format!("{:?}", door.streams()))
        }
    })
    .await;
    door.open();
    // The page opens a new stream (no Last-Event-ID), which replays the recent history.
    eventually("a new stream, from the start", || async {
        let streams = door.streams();
        let refused = streams.iter().position(|(status, _, _)| status == "503");
        let fresh = streams
            .iter()
            .skip(refused.unwrap_or(usize::MAX))
            .any(|(status, _, id)| status == "200" && id.is_empty());
        if fresh {
            Ok(())
        } else {
            Err(format!("{streams:?}"))
        }
    })
    .await;
    eventually(
        "the replayed history dropped as repeats, not shown again",
        || async {
            let (messages, repeats) = shown(&browser);
            let texts: Vec<&str> = messages.iter().map(|(t, _)| t.as_str()).collect();
            if repeats >= repeats_before + 2 && texts == ["second", "first"] {
                Ok(())
            } else {
                Err(format!("{texts:?}, {repeats} repeats dropped"))
            }
        },
    )
    .await;
    broadcast(&pods[1], "third").await;
    shows_exactly(&browser, &["third", "second", "first"]).await;
}

/// Past 12 members the page counts and summarises: a card for this replica (and any
/// suspect or gone), one heat square per member, the worst rows; nothing wider than a
/// phone. `/api/status` keeps this replica's own mesh row and one summary per row.
#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_past_twelve_is_summarised_and_fits_a_phone() {
    let _machine = shared().await;
    let port = free_port();
    let names: Vec<String> = (0..14).map(|i| pod_name(&format!("p{i:04}"))).collect();
    let pods = replicas(150, port, &names, &[]);
    wait_until_all_see(&pods.iter().collect::<Vec<_>>()).await;

    let status = eventually("a mesh summary of 14 rows, each reaching 13", || async {
        let s = status_of(&pods[0]).await?;
        let rows = s["mesh_summary"]["rows"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let all_reach = rows.len() == 14 && rows.iter().all(|r| r["reaches"] == 13);
        if all_reach {
            Ok(s)
        } else {
            Err(s["mesh_summary"].to_string())
        }
    })
    .await;
    let own: Vec<&String> = status["mesh"].as_object().expect("mesh").keys().collect();
    assert_eq!(
        own,
        [status["self"]["instance_id"].as_str().expect("an id")]
    );
    assert_eq!(status["mesh_summary"]["rows_left_out"], 13);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(14));

    let browser = Browser::start(local_chromedriver, local_curl());
    browser.resize(390, 900);
    browser.goto(&pods[0].url("/"));
    // Green or amber (a loaded machine is slow), never red or grey.
    eventually("14 answering squares in the heat strip", || async {
        let answering = count(
            &browser,
            "#mesh .heat span.fast, #mesh .heat span.ok, #mesh .heat span.slow",
        );
        if answering == 14 {
            Ok(())
        } else {
            let mesh = browser.eval("return document.getElementById('mesh')?.outerHTML");
            Err(format!("{answering} answering in {mesh}"))
        }
    })
    .await;
    assert_eq!(
        count(&browser, "#members li.member"),
        1,
        "this replica's card only"
    );
    let note = browser.eval("return document.querySelector('#members').textContent");
    assert!(
        note.as_str().unwrap_or("").contains("Not drawn: 13 alive."),
        "{note}"
    );
    assert_eq!(
        count(&browser, "#mesh table.worst tr"),
        9,
        "a header and 8 rows"
    );

    // A pod killed: a card of its own, a line among the gone, no square.
    let mut pods = pods;
    drop(pods.remove(13));
    eventually("the killed pod in the gone line and a card", || async {
        let gone = browser.eval(
            "return [document.querySelector('#mesh .gone-line')?.textContent, document.querySelectorAll('#members li.member.state-dead').length, document.querySelectorAll('#mesh .heat span').length]",
        );
        let line = gone[0].as_str().unwrap_or("");
        if line.contains("1 stopped answering") && line.contains(&names[13]) && gone[1] == 1 && gone[2] == 13 {
            Ok(())
        } else {
            Err(gone.to_string())
        }
    })
    .await;
    let (page, window) = widths(&browser);
    assert!(window <= 400, "the window is a phone's: {window} px");
    assert!(page <= window, "{page} px of page in a {window} px window");
    screenshot_whole_page(&browser, 390, "page-large-390.png");
}
