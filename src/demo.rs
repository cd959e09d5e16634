//! `rollcall demo`: a whole cluster on one machine. Replicas on 127.0.0.2.. share one port,
//! like pods on a network, and a round-robin front door on 127.0.0.1 plays the platform's
//! load balancer.
//!
//! Each replica is its own process (`rollcall serve`), as on a platform, so a viewer can
//! crash one (`kill -9`), stop one (`kill`) and bring it back (`kill -USR1` to the demo)
//! and watch the others notice. Their logs reach the demo's output line by line, tagged
//! with their names.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

use crate::config::{DemoArgs, LogFormat};

mod lines;
mod replicas;

use replicas::{ReplicaError, Replicas, Slot};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("cannot find this program to start the replicas: {0}")]
    Exe(std::io::Error),
    #[error("cannot listen for signals: {0}")]
    Signals(std::io::Error),
    #[error("front door: {0}")]
    FrontDoor(std::io::Error),
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("front door client: {0}")]
    Client(#[from] reqwest::Error),
}

/// How long every replica gets to answer `/readyz` at start-up (a cold SQLite file and a
/// busy machine take a few seconds).
const START_WITHIN: Duration = Duration::from_secs(30);
/// How long the replicas get to drain and say goodbye when the demo stops, before SIGKILL.
const STOP_WITHIN: Duration = Duration::from_secs(5);
/// The replicas' DRAIN_SECS: a local demo has no load balancer to wait for.
const DRAIN_SECS: u64 = 1;
/// How long the front door gets to finish forwarding once the replicas are gone.
const FRONT_DOOR_CLOSE: Duration = Duration::from_secs(2);

/// Where the replicas live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub replicas: Vec<SocketAddr>,
    pub scan_cidr: String,
    pub scan_ports: String,
}

impl Layout {
    /// One loopback address per replica, all on `port`: the closest thing to pods.
    fn spread(n: u16, port: u16) -> Layout {
        Layout {
            replicas: (0..n)
                .map(|i| SocketAddr::from((Ipv4Addr::new(127, 0, 0, 2 + i as u8), port)))
                .collect(),
            scan_cidr: "127.0.0.0/24".into(),
            scan_ports: port.to_string(),
        }
    }

    /// Where only 127.0.0.1 exists (macOS): one port per replica, and the scan tries those.
    fn ports(n: u16, port: u16) -> Layout {
        let ports: Vec<u16> = (1..=n).map(|i| port.saturating_add(i)).collect();
        Layout {
            replicas: ports
                .iter()
                .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, *p)))
                .collect(),
            scan_cidr: "127.0.0.1/32".into(),
            scan_ports: ports
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
        }
    }

    pub fn choose(n: u16, port: u16) -> Layout {
        let probe = std::net::TcpListener::bind((Ipv4Addr::new(127, 0, 0, 2), 0));
        match probe {
            Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => Layout::ports(n, port),
            _ => Layout::spread(n, port),
        }
    }
}

/// A temporary directory that is deleted when dropped, even on an early error.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        // A name nobody can guess and a directory made only here: no other local user can
        // have made it first (and so read or swap the registry), nor a stale one be reused.
        let dir = std::env::temp_dir().join(format!(
            "rollcall-demo-{}-{}",
            std::process::id(),
            ulid::Ulid::new()
        ));
        std::fs::create_dir(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: DemoArgs, log: LogFormat) -> Result<(), DemoError> {
    // Before any replica starts: a signal must never find the demo without its handlers
    // (SIGUSR1's default would end it).
    let mut signals = Signals::new().map_err(DemoError::Signals)?;
    let layout = Layout::choose(args.replicas, args.port);
    let temp = TempDir::new().map_err(DemoError::TempDir)?;
    let registry = format!("sqlite://{}", temp.0.join("registry.db").display());
    let front: SocketAddr = (Ipv4Addr::LOCALHOST, args.port).into();
    let front_listener = tokio::net::TcpListener::bind(front)
        .await
        .map_err(DemoError::FrontDoor)?;
    let exe = std::env::current_exe().map_err(DemoError::Exe)?;
    let slots = slots(&layout, &registry, front, log, args.replicas);
    let door = FrontDoor::new(layout.replicas.clone())?;
    let mut replicas = Replicas::new(exe, slots)?;

    let (stop_front, front_stopped) = watch::channel(false);
    let front_task = tokio::spawn(serve_front_door(front_listener, door, front_stopped));
    match start(&mut replicas, &mut signals.stop).await {
        Ok(true) => {
            banner(&replicas, &registry, front);
            follow(&mut replicas, &mut signals).await;
        }
        Ok(false) => {}
        Err(e) => {
            // The replica's own words (its tagged lines) come before the demo's one line.
            replicas.finish().await;
            return Err(e.into());
        }
    }
    replicas.say(&format!(
        "stopping {} replicas: SIGTERM, and SIGKILL to any still running after {} s \
         (Ctrl-C again: at once)",
        replicas.running(),
        STOP_WITHIN.as_secs()
    ));
    replicas.stop(STOP_WITHIN, signals.stop.recv()).await;
    let _ = stop_front.send(true);
    let _ = tokio::time::timeout(FRONT_DOOR_CLOSE, front_task).await;
    replicas.finish().await;
    drop(temp);
    lines::tell("rollcall demo: stopped");
    Ok(())
}

/// Starts every replica and waits until all are ready: true then, false when told to stop
/// first. If one cannot start, stops the others and says which and why.
async fn start(replicas: &mut Replicas, stop: &mut StopSignal) -> Result<bool, ReplicaError> {
    // All start at once. Each scans again 2, 3 and 5 s after its start, so one that scanned
    // before the others listened still finds them within seconds.
    let started = match replicas.start_all() {
        Ok(()) => tokio::select! {
            ready = replicas.wait_ready(START_WITHIN) => ready.map(|()| true),
            () = stop.recv() => Ok(false),
        },
        Err(e) => Err(e),
    };
    if started.is_err() {
        replicas.stop(STOP_WITHIN, stop.recv()).await;
    }
    started
}

/// Until the demo is told to stop: says when a replica ends, and restarts the missing ones
/// on SIGUSR1. Never restarts one by itself: watching the page show a crash is the point.
async fn follow(replicas: &mut Replicas, signals: &mut Signals) {
    loop {
        tokio::select! {
            () = signals.stop.recv() => return,
            () = signals.restart.recv() => replicas.restart_missing(),
            () = replicas.next_exit() => {}
        }
    }
}

/// Where each replica runs and the flags of its `rollcall serve`.
fn slots(
    layout: &Layout,
    registry: &str,
    front: SocketAddr,
    log: LogFormat,
    expected: u16,
) -> Vec<Slot> {
    let log = match log {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    };
    layout
        .replicas
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let name = format!("replica-{}", i + 1);
            let args = vec![
                format!("--bind-addr={}", addr.ip()),
                format!("--port={}", addr.port()),
                format!("--advertise-addr={}", addr.ip()),
                format!("--instance-name={name}"),
                format!("--expected-replicas={expected}"),
                format!("--scan-cidrs={}", layout.scan_cidr),
                format!("--scan-ports={}", layout.scan_ports),
                format!("--database-url={registry}"),
                format!("--public-url=http://{front}"),
                format!("--drain-secs={DRAIN_SECS}"),
                format!("--log-format={log}"),
            ];
            Slot {
                name,
                addr: *addr,
                args,
            }
        })
        .collect()
}

/// Every replica with its PID, and how to crash, stop and bring one back.
fn banner(replicas: &Replicas, registry: &str, front: SocketAddr) {
    let demo = std::process::id();
    let members: Vec<(&Slot, String)> = replicas
        .members()
        .map(|(slot, pid)| (slot, pid.map_or("-".into(), |p| p.to_string())))
        .collect();
    let name_width = members.iter().map(|(s, _)| s.name.len()).max().unwrap_or(0);
    let pid_width = members.iter().map(|(_, p)| p.len()).max().unwrap_or(0);
    let mut text = format!(
        "rollcall demo: {} replicas behind a round-robin front door (demo pid {demo})\n",
        members.len()
    );
    for (slot, pid) in &members {
        text += &format!(
            "  {:<name_width$}  pid {pid:<pid_width$}  http://{}/\n",
            slot.name, slot.addr
        );
    }
    let victim = members
        .get(1)
        .or(members.first())
        .map_or("PID", |(_, pid)| pid.as_str());
    text += &format!(
        "  {:<name_width$}  {registry}\n\
         open http://{front}/ and reload to watch the load balancer rotate; then\n\
         \x20 crash one:   kill -9 {victim}\n\
         \x20 stop one:    kill {victim}  (SIGTERM: it drains and says goodbye)\n\
         \x20 bring back:  kill -USR1 {demo}  (restarts every replica that is not running)\n\
         \x20 stop all:    Ctrl-C, or kill {demo}",
        "registry"
    );
    lines::tell(&text);
}

/// The signals the demo answers: stop (Ctrl-C, SIGTERM, and SIGHUP: its terminal closed)
/// and restart (SIGUSR1).
struct Signals {
    stop: StopSignal,
    restart: RestartSignal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            stop: StopSignal::new()?,
            restart: RestartSignal::new()?,
        })
    }
}

#[cfg(unix)]
struct StopSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignal {
    fn new() -> std::io::Result<StopSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignal {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            Some(()) = self.interrupt.recv() => {}
            Some(()) = self.terminate.recv() => {}
            Some(()) = self.hangup.recv() => {}
            else => std::future::pending::<()>().await,
        }
    }
}

#[cfg(unix)]
struct RestartSignal(tokio::signal::unix::Signal);

#[cfg(unix)]
impl RestartSignal {
    fn new() -> std::io::Result<RestartSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::user_defined1()).map(RestartSignal)
    }

    async fn recv(&mut self) {
        if self.0.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(not(unix))]
struct StopSignal;

#[cfg(not(unix))]
impl StopSignal {
    fn new() -> std::io::Result<StopSignal> {
        Ok(StopSignal)
    }

    async fn recv(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Without SIGUSR1 there is no way to ask for a restart.
#[cfg(not(unix))]
struct RestartSignal;

#[cfg(not(unix))]
impl RestartSignal {
    fn new() -> std::io::Result<RestartSignal> {
        Ok(RestartSignal)
    }

    async fn recv(&mut self) {
        std::future::pending::<()>().await;
    }
}

async fn serve_front_door(
    listener: tokio::net::TcpListener,
    door: FrontDoor,
    mut stop: watch::Receiver<bool>,
) {
    let _ = axum::serve(
        listener,
        FrontDoor::router(Arc::new(door)).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|s| *s).await;
    })
    .await;
}

/// A minimal round-robin reverse proxy that skips replicas that refuse connections, as a
/// platform's load balancer does after its health check.
struct FrontDoor {
    backends: Vec<SocketAddr>,
    next: AtomicUsize,
    client: reqwest::Client,
}

/// Headers that belong to one hop, not to the request being forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "host",
];

impl FrontDoor {
    fn new(backends: Vec<SocketAddr>) -> Result<FrontDoor, reqwest::Error> {
        Ok(FrontDoor {
            backends,
            next: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(1))
                .build()?,
        })
    }

    fn router(door: Arc<FrontDoor>) -> Router {
        Router::new().fallback(forward).with_state(door)
    }
}

async fn forward(
    State(door): State<Arc<FrontDoor>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 * 1024).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large\n").into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let start = door.next.fetch_add(1, Ordering::Relaxed);
    let n = door.backends.len();
    for attempt in 0..n {
        let backend = door.backends[(start + attempt) % n];
        let mut outgoing = door
            .client
            .request(parts.method.clone(), format!("http://{backend}{path}"))
            .header("x-forwarded-for", client_ip(client))
            .body(body.clone());
        for (name, value) in &parts.headers {
            if !HOP_BY_HOP.contains(&name.as_str()) {
                outgoing = outgoing.header(name, value);
            }
        }
        match outgoing.send().await {
            Ok(reply) => return relay(reply),
            Err(e) if e.is_connect() => continue,
            Err(e) => {
                return (StatusCode::BAD_GATEWAY, format!("replica {backend}: {e}\n"))
                    .into_response();
            }
        }
    }
    (StatusCode::SERVICE_UNAVAILABLE, "no replica is up\n").into_response()
}

fn client_ip(addr: SocketAddr) -> String {
    let ip: IpAddr = addr.ip().to_canonical();
    ip.to_string()
}

fn relay(reply: reqwest::Response) -> Response {
    let status = reply.status();
    let headers: Vec<(HeaderName, header::HeaderValue)> = reply
        .headers()
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut response = Response::new(Body::from_stream(reply.bytes_stream()));
    *response.status_mut() = status;
    response.headers_mut().extend(headers);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() {
        let l = Layout::spread(3, 8080);
        assert_eq!(l.replicas[0], "127.0.0.2:8080".parse().unwrap());
        assert_eq!(l.replicas[2], "127.0.0.4:8080".parse().unwrap());
        let l = Layout::ports(3, 8080);
        assert_eq!(l.replicas[2], "127.0.0.1:8083".parse().unwrap());
        assert_eq!(l.scan_ports, "8081,8082,8083");
    }
}
