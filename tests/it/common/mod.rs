//! Helpers shared by the integration tests: real replicas (the built binary) on
//! 127.0.0.x, waits that poll with a deadline instead of sleeping and hoping, the real
//! servers some tests start (PostgreSQL, dnsmasq, Chromium), and the locks that say which
//! tests may run beside which.

pub mod browser;
pub mod demo;
pub mod dnsmasq;
pub mod postgres;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub const BIN: &str = env!("CARGO_BIN_EXE_rollcall");
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The machine, as the tests of this binary share it. libtest runs them in parallel
/// threads (one per CPU unless `--test-threads` says otherwise), so what may run beside
/// what is said here, not by which file a test is in:
///
/// - a test that starts replicas or servers and then waits on clocks takes [`shared`]:
///   such tests run beside each other, as the tests of each file always did;
/// - a test that loads the whole machine (a flood of hellos, 20,000 idle connections, 200
///   slowloris connections, a platform simulation with its namespaces, HAProxy, wrk and a
///   browser) takes [`heavy`]: it waits for every shared test to finish, and none starts
///   until it is done, so its load does not skew another test's timing, nor another's
///   load its own;
/// - a test that stays in this process and takes well under a second (router, fuzz, the
///   deploy files) takes neither.
///
/// A tokio lock: a test that fails holding it does not poison it, and it is fair, so a
/// heavy test that waits is not overtaken by shared tests that come after it.
static MACHINE: RwLock<()> = RwLock::const_new(());

/// Held for the whole of a test that starts processes or servers (see [`MACHINE`]).
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

/// Held for the whole of a test that loads the machine: it runs alone (see [`MACHINE`]).
pub async fn heavy() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// A file of this repository, by its path from the repository's root.
pub fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Whether the tests run as root (the simulator and PostgreSQL's `runuser` need to know).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A port no other test uses: the kernel's pick on 127.0.0.1, reused on 127.0.0.x.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

pub struct Replica {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Replica {
    pub fn start(last: u8, port: u16, extra: &[(&str, &str)]) -> Replica {
        Replica::start_logging(last, port, extra, None)
    }

    /// With `log`, the replica's log lines (info and up) go to that file.
    pub fn start_logging(
        last: u8,
        port: u16,
        extra: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Replica {
        Replica::spawn(Command::new(BIN), last, port, extra, log)
    }

    /// Runs `cmd` (rollcall under some other path or with arguments, as a platform would
    /// start it) as a replica on 127.0.0.`last`.
    pub fn spawn(
        mut cmd: Command,
        last: u8,
        port: u16,
        extra: &[(&str, &str)],
        log: Option<&std::path::Path>,
    ) -> Replica {
        let addr = SocketAddr::from((ip(last), port));
        // A clean environment: no platform marker or proxy from the machine leaks in.
        cmd.env_clear()
            .env("BIND_ADDR", addr.ip().to_string())
            .env("PORT", port.to_string())
            .env("SCAN_CIDRS", "127.0.0.0/24")
            .env("DATABASE_URL", "off")
            .env("INSTANCE_NAME", format!("r{last}"))
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                std::env::var("ROLLCALL_TEST_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("ROLLCALL_TEST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            });
        if let Some(path) = log {
            let file = std::fs::File::create(path).expect("log file");
            cmd.env("RUST_LOG", "info").stderr(file);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn rollcall");
        Replica { child, addr }
    }

    /// A replica bound to any address (IPv6 included).
    pub fn start_on(ip: std::net::IpAddr, port: u16, extra: &[(&str, &str)]) -> Replica {
        let bind = ip.to_string();
        let mut env = vec![("BIND_ADDR", bind.as_str()), ("INSTANCE_NAME", "r-v6")];
        env.extend_from_slice(extra);
        let mut replica = Replica::start(2, port, &env);
        replica.addr = SocketAddr::new(ip, port);
        replica
    }

    /// A handle on a replica some other process started (the demo's); never killed by us.
    pub fn attach(last: u8, port: u16) -> std::mem::ManuallyDrop<Replica> {
        let child = Command::new("true").spawn().expect("a placeholder process");
        std::mem::ManuallyDrop::new(Replica {
            child,
            addr: SocketAddr::from((ip(last), port)),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP client per test thread (building one loads TLS roots, which is slow; sharing
/// one across tests would share connections between their runtimes).
pub fn client() -> reqwest::Client {
    thread_local! {
        static CLIENT: reqwest::Client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .expect("client");
    }
    CLIENT.with(|c| c.clone())
}

/// A client whose connections leave from `local` (an attacker's or another client's own
/// address), giving up after `timeout`.
pub fn client_from(local: impl Into<IpAddr>, timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(local.into())
        .connect_timeout(Duration::from_secs(2))
        .timeout(timeout)
        .build()
        .expect("client")
}

/// The body of a GET that asks for `accept`; panics when there is none.
pub async fn get_text(url: &str, accept: &str) -> String {
    let response = client().get(url).header("accept", accept).send().await;
    response.expect("an answer").text().await.expect("a body")
}

pub async fn get_json(url: &str) -> Option<Value> {
    let r = client().get(url).send().await.ok()?;
    if !r.status().is_success() {
        return None;
    }
    r.json().await.ok()
}

/// `/api/status` of `replica`, or why there is none.
pub async fn status_of(replica: &Replica) -> Result<Value, String> {
    get_json(&replica.url("/api/status"))
        .await
        .ok_or_else(|| format!("{} not answering /api/status", replica.addr))
}

/// Runs the binary with one setting, `var=value`, over settings that would start it on
/// loopback with nothing to scan and no database: its exit status (None: still running
/// after 5 s, so it started, and was killed) and what it wrote to stderr. For settings
/// that must stop start-up.
pub async fn start_with_setting(var: &str, value: &str) -> (Option<i32>, String) {
    let port = free_port().to_string();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("SCAN_CIDRS", "off")
        // Should it start anyway: no database file, loopback only.
        .env("DATABASE_URL", "off")
        .env("BIND_ADDR", "127.0.0.100")
        .env("PORT", &port)
        .env(var, value)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rollcall");
    let started = Instant::now();
    let mut code = None;
    while started.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(status)) = child.try_wait() {
            code = Some(status.code().unwrap_or(-1));
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still running: stop it (a no-op for a process that has exited).
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (code, stderr)
}

/// Polls `check` every 100 ms until it returns `Some`, or fails with what it last saw.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    let mut last = String::from("never checked");
    while start.elapsed() < DEADLINE {
        match check().await {
            Ok(v) => return v,
            Err(seen) => last = seen,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {DEADLINE:?} waiting for {what}; last saw: {last}");
}

/// Waits for a process to exit by itself.
pub async fn exited(child: &mut Child, what: &str) -> std::process::ExitStatus {
    eventually(&format!("{what} to exit"), || {
        let status = child.try_wait();
        async move {
            match status {
                Ok(Some(status)) => Ok(status),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await
}

/// The state of one member as `replica` sees it, once it is `want`.
pub async fn wait_for_state(replica: &Replica, instance_id: &str, want: &str) {
    eventually(
        &format!("{instance_id} to be {want} on {}", replica.addr),
        || async {
            let s = states(replica).await?;
            match s.iter().find(|(id, _, _)| id == instance_id) {
                Some((_, _, state)) if state == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

/// (instance_id, addr, state) of every member, as `replica` sees them.
pub async fn states(replica: &Replica) -> Result<Vec<(String, String, String)>, String> {
    let status = status_of(replica).await?;
    Ok(status["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["instance_id"].as_str().unwrap_or_default().to_string(),
                m["addr"].as_str().unwrap_or_default().to_string(),
                m["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

pub async fn alive_addrs(replica: &Replica) -> Result<Vec<String>, String> {
    let mut alive: Vec<String> = states(replica)
        .await?
        .into_iter()
        .filter(|(_, _, s)| s == "alive")
        .map(|(_, a, _)| a)
        .collect();
    alive.sort();
    Ok(alive)
}

pub async fn wait_until_all_see(replicas: &[&Replica]) -> Duration {
    let start = Instant::now();
    for r in replicas {
        wait_until_lists(r, replicas).await;
    }
    start.elapsed()
}

/// Waits until `replica` lists exactly `alive` as its alive members (itself included).
pub async fn wait_until_lists(replica: &Replica, alive: &[&Replica]) {
    let mut want: Vec<String> = alive.iter().map(|r| r.addr.to_string()).collect();
    want.sort();
    eventually(
        &format!("{} to list {want:?} alive", replica.addr),
        || async {
            let seen = alive_addrs(replica).await?;
            if seen == want {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await
}

pub async fn identity_of(replica: &Replica) -> Value {
    eventually("identity", || async {
        get_json(&replica.url("/api/identity"))
            .await
            .ok_or("no answer".to_string())
    })
    .await
}
/// One method's entry in the discovery report of `replica`.
pub async fn discovery(replica: &Replica, method: &str) -> Result<Value, String> {
    let status = status_of(replica).await?;
    status["discovery"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["method"] == method).cloned())
        .ok_or_else(|| format!("no {method} in the report: {status}"))
}

/// Waits until `replica` lists `instance_id` alive with `source` among its sources.
pub async fn wait_for_source(replica: &Replica, instance_id: &str, source: &str) {
    eventually(
        &format!("{instance_id} alive via {source} on {}", replica.addr),
        || async {
            let status = status_of(replica).await?;
            let member = status["members"]
                .as_array()
                .and_then(|m| m.iter().find(|m| m["instance_id"] == instance_id).cloned())
                .ok_or_else(|| format!("not listed: {}", status["members"]))?;
            let has_source = member["sources"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s == source));
            if member["state"] == "alive" && has_source {
                Ok(())
            } else {
                Err(member.to_string())
            }
        },
    )
    .await
}

pub async fn instance_id(replica: &Replica) -> String {
    identity_of(replica).await["instance_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
/// A child process that is killed when the test ends, even when it fails.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
/// A process's resident memory in KiB, from /proc (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}
