//! `rollcall demo`: a whole cluster on one machine. Replicas on 127.0.0.2.. share one port,
//! like pods on a network, and a round-robin front door on 127.0.0.1 plays the platform's
//! load balancer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clap::Parser;
use tokio::sync::watch;

use crate::app::{AppError, Application};
use crate::config::{DemoArgs, Settings};
use crate::telemetry::shutdown_signal;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    App(#[from] AppError),
    #[error("demo settings: {0}")]
    Settings(String),
    #[error("front door: {0}")]
    FrontDoor(std::io::Error),
    #[error("temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error("front door client: {0}")]
    Client(#[from] reqwest::Error),
}

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
        let dir = std::env::temp_dir().join(format!("rollcall-demo-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let layout = Layout::choose(args.replicas, args.port);
    let temp = TempDir::new().map_err(DemoError::TempDir)?;
    let registry = format!("sqlite://{}", temp.0.join("registry.db").display());
    let front: SocketAddr = (Ipv4Addr::LOCALHOST, args.port).into();
    let front_listener = tokio::net::TcpListener::bind(front)
        .await
        .map_err(DemoError::FrontDoor)?;

    // Bind every replica before any starts, so the first scans already find the others.
    let mut apps = Vec::new();
    for (i, addr) in layout.replicas.iter().enumerate() {
        let settings = Settings::try_parse_from([
            "rollcall".to_string(),
            format!("--bind-addr={}", addr.ip()),
            format!("--port={}", addr.port()),
            format!("--advertise-addr={}", addr.ip()),
            format!("--instance-name=replica-{}", i + 1),
            format!("--expected-replicas={}", args.replicas),
            format!("--scan-cidrs={}", layout.scan_cidr),
            format!("--scan-ports={}", layout.scan_ports),
            format!("--database-url={registry}"),
            format!("--public-url=http://{front}"),
        ])
        .map_err(|e| DemoError::Settings(e.to_string()))?;
        apps.push(Application::build(settings).await?);
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut running = Vec::new();
    for app in apps {
        let mut stop = stop_rx.clone();
        running.push(tokio::spawn(app.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        })));
    }

    let door = Arc::new(FrontDoor::new(layout.replicas.clone())?);
    let mut stop = stop_rx.clone();
    let front_task = tokio::spawn(async move {
        axum::serve(
            front_listener,
            FrontDoor::router(door).into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
    });

    println!(
        "rollcall demo: {} replicas behind a round-robin front door",
        layout.replicas.len()
    );
    for (i, addr) in layout.replicas.iter().enumerate() {
        println!("  replica-{}  http://{addr}/", i + 1);
    }
    println!("  registry   {registry}");
    println!("open http://{front}/ and reload to watch the load balancer rotate; Ctrl-C stops all");

    shutdown_signal().await;
    let _ = stop_tx.send(true);
    for task in running {
        let _ = task.await;
    }
    let _ = front_task.await;
    drop(temp);
    println!("rollcall demo: stopped");
    Ok(())
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
