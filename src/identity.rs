//! Who this replica is: a random incarnation id, names, the address peers should call,
//! the platform it runs on, and system figures refreshed in the background.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sysinfo::{Networks, Pid, ProcessRefreshKind, ProcessesToUpdate, System};

use crate::config::{AutoOr, Settings};
use crate::wire::{Identity, SystemFigures};

/// The platforms rollcall recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformName {
    /// No platform marker: a laptop, a VM, a CI runner.
    Local,
    DigitalOcean,
    Kubernetes,
    Dokku,
    Heroku,
    Render,
    Fly,
    Azure,
    CloudRun,
    Ecs,
    /// ROLLCALL_PLATFORM names something else.
    Container,
}

impl PlatformName {
    pub fn as_str(self) -> &'static str {
        match self {
            PlatformName::Local => "local",
            PlatformName::DigitalOcean => "digitalocean",
            PlatformName::Kubernetes => "kubernetes",
            PlatformName::Dokku => "dokku",
            PlatformName::Heroku => "heroku",
            PlatformName::Render => "render",
            PlatformName::Fly => "fly",
            PlatformName::Azure => "azure",
            PlatformName::CloudRun => "cloudrun",
            PlatformName::Ecs => "ecs",
            PlatformName::Container => "container",
        }
    }
}

/// The platform, as told by the environment variables it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub name: PlatformName,
    /// The environment variable that gave it away, for the discovery report.
    pub marker: Option<&'static str>,
}

/// Variables whose presence means "a container platform runs us" (SPEC.md's list): the
/// `auto` scan needs one of them before it scans a private network.
pub const PLATFORM_MARKERS: &[&str] = &[
    "ROLLCALL_PLATFORM",
    "KUBERNETES_SERVICE_HOST",
    "DYNO",
    "RENDER_SERVICE_NAME",
    "FLY_APP_NAME",
    "ECS_CONTAINER_METADATA_URI_V4",
    "WEBSITE_INSTANCE_ID",
    "K_SERVICE",
];

/// Every platform variable rollcall reads, besides its own settings (for checking deploy
/// specs against the program).
pub const PLATFORM_VARIABLES: &[&str] = &[
    "ROLLCALL_PLATFORM",
    "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT",
    "POD_IP",
    "POD_NAMESPACE",
    "POD_NAME",
    "DYNO",
    "HEROKU_DYNO_ID",
    "HEROKU_APP_NAME",
    "HEROKU_APP_ID",
    "DOKKU_APP_TYPE",
    "DOKKU_PROXY_PORT",
    "DOKKU_APP_NAME",
    "RENDER_SERVICE_NAME",
    "RENDER_INSTANCE_ID",
    "RENDER_DISCOVERY_SERVICE",
    "FLY_APP_NAME",
    "FLY_MACHINE_ID",
    "FLY_PRIVATE_IP",
    "FLY_PROCESS_GROUP",
    "WEBSITE_INSTANCE_ID",
    "WEBSITE_SITE_NAME",
    "K_SERVICE",
    "K_REVISION",
    "ECS_CONTAINER_METADATA_URI_V4",
    "RUST_LOG",
];

/// Variables Dokku sets in an app's environment, and Heroku does not.
const DOKKU_VARS: &[&str] = &["DOKKU_APP_TYPE", "DOKKU_PROXY_PORT", "DOKKU_APP_NAME"];
/// Variables only Heroku sets (dyno metadata).
const HEROKU_VARS: &[&str] = &["HEROKU_DYNO_ID", "HEROKU_APP_NAME", "HEROKU_APP_ID"];

/// Reads one environment variable; tests pass their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn any_set(env: Env, vars: &[&str]) -> bool {
    vars.iter().any(|v| env(v).is_some())
}

impl Platform {
    pub fn detect(env: Env) -> Platform {
        let Some(marker) = PLATFORM_MARKERS.iter().copied().find(|v| env(v).is_some()) else {
            return Platform {
                name: PlatformName::Local,
                marker: None,
            };
        };
        let name = match marker {
            // Our own app specs name the platform.
            "ROLLCALL_PLATFORM" => {
                match env(marker)
                    .unwrap_or_default()
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "digitalocean" | "do" | "app-platform" => PlatformName::DigitalOcean,
                    "kubernetes" | "k8s" => PlatformName::Kubernetes,
                    "dokku" => PlatformName::Dokku,
                    "heroku" => PlatformName::Heroku,
                    "render" => PlatformName::Render,
                    "fly" => PlatformName::Fly,
                    "azure" => PlatformName::Azure,
                    "cloudrun" => PlatformName::CloudRun,
                    "ecs" => PlatformName::Ecs,
                    _ => PlatformName::Container,
                }
            }
            "KUBERNETES_SERVICE_HOST" => PlatformName::Kubernetes,
            // Dokku runs Heroku's buildpacks and sets DYNO the same way.
            "DYNO" if any_set(env, DOKKU_VARS) && !any_set(env, HEROKU_VARS) => PlatformName::Dokku,
            "DYNO" => PlatformName::Heroku,
            "RENDER_SERVICE_NAME" => PlatformName::Render,
            "FLY_APP_NAME" => PlatformName::Fly,
            "ECS_CONTAINER_METADATA_URI_V4" => PlatformName::Ecs,
            "WEBSITE_INSTANCE_ID" => PlatformName::Azure,
            _ => PlatformName::CloudRun,
        };
        Platform {
            name,
            marker: Some(marker),
        }
    }

    pub fn is_container(&self) -> bool {
        self.marker.is_some()
    }
}

/// The platform's own name for this replica, if it gives one. (Cloud Run's K_REVISION is
/// shared by every instance, so it is no name for one.)
fn platform_instance_name(env: Env) -> Option<String> {
    [
        "POD_NAME",
        "FLY_MACHINE_ID",
        "RENDER_INSTANCE_ID",
        "DYNO",
        "WEBSITE_INSTANCE_ID",
    ]
    .iter()
    .find_map(|v| env(v))
}

/// The platform's own name for this service, if it gives one.
fn platform_service_name(env: Env) -> Option<String> {
    [
        "FLY_APP_NAME",
        "RENDER_SERVICE_NAME",
        "HEROKU_APP_NAME",
        "DOKKU_APP_NAME",
        "WEBSITE_SITE_NAME",
        "K_SERVICE",
    ]
    .iter()
    .find_map(|v| env(v))
}

/// The platform's own word on this replica's private address.
fn platform_ip(env: Env) -> Option<IpAddr> {
    ["FLY_PRIVATE_IP", "POD_IP"]
        .iter()
        .find_map(|v| env(v).and_then(|ip| ip.trim().parse().ok()))
}

/// The first non-loopback interface address, IPv4 first, in interface-name order so the
/// choice is stable across restarts.
fn first_interface_ip() -> Option<IpAddr> {
    let networks = Networks::new_with_refreshed_list().ok()?;
    let mut ips: Vec<(bool, String, IpAddr)> = networks
        .iter()
        .flat_map(|(ifname, data)| {
            let ifname = ifname.to_string_lossy().into_owned();
            data.ip_networks()
                .iter()
                .map(move |net| (net.addr.is_ipv6(), ifname.clone(), net.addr))
        })
        .filter(|(_, _, ip)| !ip.is_loopback() && !ip.is_unspecified() && !is_link_local(ip))
        .collect();
    ips.sort();
    ips.first().map(|(_, _, ip)| *ip)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Decides the address peers should call.
pub fn advertise_ip(settings: &Settings, env: Env) -> IpAddr {
    if let AutoOr::Given(ip) = settings.advertise_addr {
        return ip;
    }
    if let Some(ip) = platform_ip(env) {
        return ip;
    }
    // A replica bound to one address can only be reached there.
    if !settings.bind_addr.is_unspecified() {
        return settings.bind_addr;
    }
    first_interface_ip().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

fn hostname() -> Option<String> {
    System::host_name().ok().filter(|h| !h.is_empty())
}

/// This replica: its fixed identity plus system figures that a sampler refreshes.
#[derive(Debug)]
pub struct Me {
    fixed: Identity,
    pub platform: Platform,
    figures: RwLock<SystemFigures>,
    started: Instant,
}

impl Me {
    pub fn new(settings: &Settings, env: Env) -> Me {
        let platform = Platform::detect(env);
        let name = settings
            .instance_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| platform_instance_name(env))
            .or_else(hostname)
            .unwrap_or_else(|| "rollcall".into());
        let service = settings
            .service_name
            .clone()
            .filter(|n| !n.trim().is_empty())
            .or_else(|| platform_service_name(env))
            .unwrap_or_else(|| "rollcall".into());
        let addr = SocketAddr::new(advertise_ip(settings, env), settings.port);
        Me {
            fixed: Identity {
                instance_id: ulid::Ulid::new().to_string(),
                name,
                service,
                addr,
                version: env!("CARGO_PKG_VERSION").into(),
                started_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                platform: platform.name.as_str().into(),
                system: SystemFigures::default(),
                proof: None,
                mesh: None,
                view_hash: None,
                requires_proof: settings.proof_secret().is_some(),
                leaving: false,
                news: Vec::new(),
            },
            platform,
            figures: RwLock::new(SystemFigures::default()),
            started: Instant::now(),
        }
    }

    pub fn id(&self) -> &str {
        &self.fixed.instance_id
    }
    pub fn addr(&self) -> SocketAddr {
        self.fixed.addr
    }
    pub fn service(&self) -> &str {
        &self.fixed.service
    }

    /// The identity with the latest system figures.
    pub fn identity(&self) -> Identity {
        let mut id = self.fixed.clone();
        id.system = self.figures();
        id
    }

    pub fn figures(&self) -> SystemFigures {
        let mut figures = self.figures.read().map(|f| f.clone()).unwrap_or_default();
        figures.uptime_secs = self.started.elapsed().as_secs();
        figures
    }

    /// Refreshes system figures until the process ends. CPU use needs two samples apart
    /// in time, so the first figures appear after one period.
    pub async fn sample_system(self: Arc<Self>, period: Duration) {
        let pid = Pid::from_u32(std::process::id());
        let Ok(mut system) = System::new() else {
            tracing::warn!("system figures unavailable on this platform");
            return;
        };
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            system.refresh_memory();
            system.refresh_processes_specifics(
                ProcessesToUpdate::Some(&[pid]),
                true,
                ProcessRefreshKind::nothing().with_cpu().with_memory(),
            );
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            // Inside a container the cgroup limit is the memory that matters.
            let (total, used) = match system.cgroup_limits() {
                Some(cg) => (cg.total_memory, cg.total_memory - cg.free_memory),
                None => (system.total_memory(), system.used_memory()),
            };
            let process = system.process(pid);
            let figures = SystemFigures {
                cpus,
                cpu_pct: process
                    .map_or(0.0, |p| (p.cpu_usage() / cpus as f32 * 10.0).round() / 10.0),
                mem_total_bytes: total,
                mem_used_bytes: used,
                rss_bytes: process.map_or(0, |p| p.memory()),
                uptime_secs: 0,
            };
            if let Ok(mut slot) = self.figures.write() {
                *slot = figures;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Environment variables for one case.
    type Vars<'a> = &'a [(&'a str, &'a str)];

    /// An environment made of these variables only.
    pub(crate) fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn platform_detection() {
        let cases: &[(Vars, &str, Option<&str>)] = &[
            (&[], "local", None),
            (
                &[("ROLLCALL_PLATFORM", "digitalocean")],
                "digitalocean",
                Some("ROLLCALL_PLATFORM"),
            ),
            (
                &[("ROLLCALL_PLATFORM", "dokku"), ("DYNO", "web.1")],
                "dokku",
                Some("ROLLCALL_PLATFORM"),
            ),
            (
                &[("ROLLCALL_PLATFORM", "something-new")],
                "container",
                Some("ROLLCALL_PLATFORM"),
            ),
            (
                &[
                    ("KUBERNETES_SERVICE_HOST", "10.245.0.1"),
                    ("POD_IP", "10.244.6.12"),
                    ("POD_NAME", "web-7d-x"),
                ],
                "kubernetes",
                Some("KUBERNETES_SERVICE_HOST"),
            ),
            (&[("DYNO", "web.1")], "heroku", Some("DYNO")),
            (
                &[("DYNO", "web.1"), ("HEROKU_DYNO_ID", "1vac4117")],
                "heroku",
                Some("DYNO"),
            ),
            (
                &[("DYNO", "web.2"), ("DOKKU_APP_TYPE", "herokuish")],
                "dokku",
                Some("DYNO"),
            ),
            (
                &[
                    ("RENDER_SERVICE_NAME", "chat"),
                    ("RENDER_INSTANCE_ID", "srv-abc-5d"),
                ],
                "render",
                Some("RENDER_SERVICE_NAME"),
            ),
            (
                &[
                    ("FLY_APP_NAME", "chat"),
                    ("FLY_MACHINE_ID", "e82d"),
                    ("FLY_PRIVATE_IP", "fdaa::3"),
                ],
                "fly",
                Some("FLY_APP_NAME"),
            ),
            (
                &[
                    ("WEBSITE_INSTANCE_ID", "a1b2"),
                    ("WEBSITE_SITE_NAME", "chat"),
                ],
                "azure",
                Some("WEBSITE_INSTANCE_ID"),
            ),
            (
                &[("K_SERVICE", "chat"), ("K_REVISION", "chat-00001")],
                "cloudrun",
                Some("K_SERVICE"),
            ),
            (
                &[("ECS_CONTAINER_METADATA_URI_V4", "http://169.254.170.2/v4/x")],
                "ecs",
                Some("ECS_CONTAINER_METADATA_URI_V4"),
            ),
        ];
        for (vars, name, marker) in cases {
            let p = Platform::detect(&env_of(vars));
            assert_eq!((p.name.as_str(), p.marker), (*name, *marker), "{vars:?}");
        }
    }

    #[test]
    fn names_come_from_each_platform() {
        use clap::Parser;
        let settings = Settings::try_parse_from(["x", "--bind-addr", "0.0.0.0"]).unwrap();
        let cases: &[(Vars, &str, &str)] = &[
            (
                &[
                    ("KUBERNETES_SERVICE_HOST", "h"),
                    ("POD_NAME", "web-7d-x"),
                    ("POD_IP", "10.244.6.12"),
                ],
                "web-7d-x",
                "rollcall",
            ),
            (
                &[("DYNO", "web.3"), ("HEROKU_APP_NAME", "chat")],
                "web.3",
                "chat",
            ),
            (
                &[
                    ("RENDER_SERVICE_NAME", "chat"),
                    ("RENDER_INSTANCE_ID", "srv-1"),
                ],
                "srv-1",
                "chat",
            ),
            (
                &[
                    ("WEBSITE_INSTANCE_ID", "a1b2"),
                    ("WEBSITE_SITE_NAME", "chat"),
                ],
                "a1b2",
                "chat",
            ),
        ];
        for (vars, name, service) in cases {
            let me = Me::new(&settings, &env_of(vars));
            assert_eq!(
                (me.identity().name.as_str(), me.service()),
                (*name, *service),
                "{vars:?}"
            );
        }
        let k8s = Me::new(&settings, &env_of(cases[0].0));
        assert_eq!(k8s.addr(), "10.244.6.12:8080".parse().unwrap());
    }

    #[test]
    fn identity_names_come_from_the_platform() {
        use clap::Parser;
        let settings = Settings::try_parse_from(["x", "--bind-addr", "127.0.0.7"]).unwrap();
        let env = env_of(&[
            ("FLY_APP_NAME", "chat"),
            ("FLY_MACHINE_ID", "e82d"),
            ("FLY_PRIVATE_IP", "fdaa::3"),
        ]);
        let me = Me::new(&settings, &env);
        let id = me.identity();
        assert_eq!(id.service, "chat");
        assert_eq!(id.name, "e82d");
        assert_eq!(id.addr, "[fdaa::3]:8080".parse().unwrap());
        assert_eq!(id.platform, "fly");

        // Without platform variables a specific bind address is the advertise address.
        let me = Me::new(&settings, &env_of(&[]));
        assert_eq!(me.addr(), "127.0.0.7:8080".parse().unwrap());
        assert_eq!(me.service(), "rollcall");
    }
}
