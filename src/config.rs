//! Settings: every one is a flag and an environment variable, and shows in `--help`.
//!
//! Doc comments on the fields are the help text. Values are parsed into their
//! final types here, so a bad value stops start-up before anything runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, Parser)]
#[command(
    name = "rollcall",
    version,
    about = "Can my replicas find each other and talk directly? Run one replica per container and see.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one replica (the default).
    Serve(Box<Settings>),
    /// Run a whole cluster on this machine: replicas on 127.0.0.2.. and a round-robin front door.
    Demo(DemoArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// How many replicas to start.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=200))]
    pub replicas: u16,
    /// Port of the front door (127.0.0.1) and of every replica.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

#[derive(Debug, Clone, Parser)]
pub struct Settings {
    /// Port to listen on (platforms set it).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,

    /// Address to listen on.
    #[arg(long, env = "BIND_ADDR", default_value = "0.0.0.0")]
    pub bind_addr: IpAddr,

    /// IP that peers should call: `auto` = platform variable (FLY_PRIVATE_IP, POD_IP), else the
    /// bind address when it is a specific one, else the first non-loopback interface address.
    #[arg(long, env = "ADVERTISE_ADDR", default_value = "auto", value_parser = advertise_addr)]
    pub advertise_addr: AutoOr<IpAddr>,

    /// Replicas of one service share it; a peer with another name is foreign. Default: the
    /// platform's name for the service, else `rollcall`.
    #[arg(long, env = "SERVICE_NAME", value_parser = display_name)]
    pub service_name: Option<String>,

    /// Display name of this replica. Default: the platform's instance id, else the hostname.
    #[arg(long, env = "INSTANCE_NAME", value_parser = display_name)]
    pub instance_name: Option<String>,

    /// How many replicas there should be; shown as found / expected.
    #[arg(long, env = "EXPECTED_REPLICAS", value_parser = clap::value_parser!(u32).range(1..))]
    pub expected_replicas: Option<u32>,

    /// When set, peers must prove they hold it (an HMAC challenge bound to the challenger,
    /// the prover and the address called) before they are admitted. A comma list: the
    /// current secret first, then previous ones still accepted during a rotation.
    #[arg(long, env = "CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<Secret>,

    /// Comma list of IPv4 CIDRs to scan, or `auto` (only where safe: see the README), or `off`.
    #[arg(long, env = "SCAN_CIDRS", default_value = "auto")]
    pub scan_cidrs: ScanCidrs,

    /// Comma list of ports to try on each scanned address. Default: PORT.
    #[arg(long, env = "SCAN_PORTS")]
    pub scan_ports: Option<PortList>,

    /// Pause between full scans, in seconds.
    #[arg(long = "scan-interval-secs", env = "SCAN_INTERVAL_SECS", default_value = "30", value_parser = seconds(1, u64::MAX))]
    pub scan_interval: Duration,

    /// Connect timeout per scanned address, in milliseconds.
    #[arg(long = "scan-timeout-ms", env = "SCAN_TIMEOUT_MS", default_value = "250", value_parser = millis(1, 60_000))]
    pub scan_timeout: Duration,

    /// How many scan connects may be in flight at once.
    #[arg(long, env = "SCAN_CONCURRENCY", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub scan_concurrency: u32,

    /// Comma list of DNS names whose A/AAAA records may list replicas, or `auto` (the
    /// platform's names plus SERVICE_NAME, on a container platform or with DNS_SERVER), or `off`.
    #[arg(long, env = "DNS_NAMES", default_value = "auto")]
    pub dns_names: DnsNames,

    /// `ip:port` of the DNS server to ask. Default: the system resolver.
    #[arg(long, env = "DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,

    /// Comma list of `host:port` to try as peers.
    #[arg(long, env = "SEED_PEERS")]
    pub seed_peers: Option<SeedPeers>,

    /// How often a probe round runs, in milliseconds: each round asks PROBE_FANOUT members
    /// in turn.
    #[arg(long = "probe-interval-ms", env = "PROBE_INTERVAL_MS", default_value = "250", value_parser = millis(50, 600_000))]
    pub probe_interval: Duration,

    /// Members asked per probe round: what each replica's probing costs, whatever the
    /// cluster's size.
    #[arg(long = "probe-fanout", env = "PROBE_FANOUT", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub probe_fanout: u16,

    /// A suspect (a member neither this replica nor the members it asked could reach)
    /// that stays unreachable this many seconds is dead.
    #[arg(long = "dead-after-secs", env = "DEAD_AFTER_SECS", default_value = "1", value_parser = seconds(1, u64::MAX))]
    pub dead_after: Duration,

    /// Dead or left members are dropped from the view after this many seconds.
    #[arg(long = "forget-after-secs", env = "FORGET_AFTER_SECS", default_value = "600", value_parser = seconds(1, u64::MAX))]
    pub forget_after: Duration,

    /// Registry database where replicas meet: `sqlite://FILE`, `postgres://…`, or `off`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://rollcall.db")]
    pub database_url: Database,

    /// How often a replica refreshes its registry row, in seconds.
    #[arg(long = "registry-heartbeat-secs", env = "REGISTRY_HEARTBEAT_SECS", default_value = "3", value_parser = seconds(1, 3600))]
    pub registry_heartbeat: Duration,

    /// Registry rows older than this many seconds are ignored and deleted by any replica.
    /// Must be more than REGISTRY_HEARTBEAT_SECS.
    #[arg(long = "registry-ttl-secs", env = "REGISTRY_TTL_SECS", default_value = "15", value_parser = seconds(2, 86_400))]
    pub registry_ttl: Duration,

    /// The app's public address (App Platform: `${APP_URL}`), used to relay messages through
    /// the load balancer where replicas cannot reach each other directly.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<HttpUrl>,

    /// Name of the load balancer's affinity cookie, used by the relay.
    #[arg(long, env = "AFFINITY_COOKIE", default_value = "ARRAffinity")]
    pub affinity_cookie: String,

    /// Ask the platform's API which instances run: `auto` (DigitalOcean when
    /// DIGITALOCEAN_TOKEN and APP_ID are set, Fly when FLY_API_TOKEN is), `digitalocean`,
    /// `kubernetes` (opt-in: the pod's service account must be allowed to list pods),
    /// `fly`, or `off`.
    #[arg(long, env = "PLATFORM_API", default_value = "auto")]
    pub platform_api: PlatformApi,

    /// Base URL of the platform's API. Default: https://api.digitalocean.com,
    /// https://api.machines.dev, or the cluster's API server from KUBERNETES_SERVICE_HOST.
    #[arg(long, env = "PLATFORM_API_URL")]
    pub platform_api_url: Option<HttpUrl>,

    /// How often the platform's API is asked, in seconds (longer after refusals and
    /// rate limits).
    #[arg(long = "platform-api-interval-secs", env = "PLATFORM_API_INTERVAL_SECS", default_value = "30", value_parser = seconds(1, 3600))]
    pub platform_api_interval: Duration,

    /// DigitalOcean API token (read scope on apps) for listing this app's instances.
    #[arg(long, env = "DIGITALOCEAN_TOKEN", hide_env_values = true)]
    pub digitalocean_token: Option<ApiToken>,

    /// The App Platform app's id (the app spec can bind `${APP_ID}`).
    #[arg(long, env = "APP_ID", value_parser = path_segment)]
    pub app_id: Option<String>,

    /// Fly.io API token for listing this app's Machines.
    #[arg(long, env = "FLY_API_TOKEN", hide_env_values = true)]
    pub fly_api_token: Option<ApiToken>,

    /// Kubernetes label selector of this service's pods. Default: `app=SERVICE_NAME`.
    #[arg(long, env = "PLATFORM_API_SELECTOR", value_parser = label_selector)]
    pub platform_api_selector: Option<String>,

    /// Kubernetes service-account token file, read again before every request (tokens
    /// rotate); `ca.crt` and `namespace` are read beside it.
    #[arg(
        long,
        env = "PLATFORM_API_TOKEN_FILE",
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    pub platform_api_token_file: std::path::PathBuf,

    /// `off` hides the page, /api/status and /peer (replica names and private addresses);
    /// what replicas need from each other stays on.
    #[arg(long, env = "STATUS_PAGE", default_value = "on")]
    pub status_page: Switch,

    /// After SIGTERM, `/readyz` answers 503 at once and the replica keeps serving until no
    /// request has arrived for about a second, or this many seconds at most; then it says
    /// goodbye and closes. Where the platform stops sending first, that takes about 1 s.
    #[arg(long = "drain-secs", env = "DRAIN_SECS", default_value = "10", value_parser = seconds(0, 300))]
    pub drain: Duration,

    /// Messages per second one client may broadcast through one replica (bursts of five
    /// times that); all clients together, ten times that. Each message reaches every
    /// viewer of every replica.
    #[arg(long, env = "BROADCAST_RATE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub broadcast_rate: u32,

    /// Comma list of addresses or CIDRs of proxies (the platform's load balancer) whose
    /// `X-Forwarded-For` names the real client, for rate limits. Unset: every request is
    /// keyed on the address that connected.
    #[arg(long, env = "TRUSTED_PROXIES")]
    pub trusted_proxies: Option<TrustedProxies>,

    /// Log format: `text` or `json`. Default: text on a terminal, else json.
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// A setting that is `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A setting whose value is either `auto` or given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoOr<T> {
    Auto,
    Given(T),
}

impl<T: FromStr> FromStr for AutoOr<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" | "" => Ok(AutoOr::Auto),
            other => other.parse().map(AutoOr::Given).map_err(|e| format!("{e}")),
        }
    }
}

/// A whole number of seconds from `min` to `max`, as a `Duration`.
fn seconds(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| whole_number(s, min, max, "seconds").map(Duration::from_secs)
}

/// A whole number of milliseconds from `min` to `max`, as a `Duration`.
fn millis(min: u64, max: u64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| whole_number(s, min, max, "milliseconds").map(Duration::from_millis)
}

fn whole_number(s: &str, min: u64, max: u64, unit: &str) -> Result<u64, String> {
    let range = if max == u64::MAX {
        format!("at least {min}")
    } else {
        format!("{min} to {max}")
    };
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("must be a whole number of {unit}, {range}"))
}

/// A name peers will check and show: a replica with one they refuse could never join.
fn display_name(s: &str) -> Result<String, String> {
    if crate::wire::is_display_text(s) {
        Ok(s.to_string())
    } else {
        Err("must be at most 253 bytes with no control characters".into())
    }
}

/// An address peers can call: 0.0.0.0 or :: names no host, so a replica advertising it
/// could never be verified.
fn advertise_addr(s: &str) -> Result<AutoOr<IpAddr>, String> {
    match s.parse::<AutoOr<IpAddr>>()? {
        AutoOr::Given(ip) if ip.is_unspecified() => {
            Err("must be an address peers can call, not an unspecified one".into())
        }
        other => Ok(other),
    }
}

/// `SCAN_CIDRS`: what to scan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanCidrs {
    Auto,
    Off,
    List(Vec<Ipv4Net>),
}

impl FromStr for ScanCidrs {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => return Ok(ScanCidrs::Auto),
            "off" | "" => return Ok(ScanCidrs::Off),
            _ => {}
        }
        comma_list(s, |item| {
            // A bare address means that one host.
            let net = if item.contains('/') {
                item.parse::<Ipv4Net>()
                    .map_err(|_| format!("'{item}' is not an IPv4 CIDR"))?
            } else {
                let ip: Ipv4Addr = item
                    .parse()
                    .map_err(|_| format!("'{item}' is not an IPv4 CIDR"))?;
                Ipv4Net::from(ip)
            };
            // Anything wider than a /16 is almost surely a typo (65k+ addresses per port).
            if net.prefix_len() < 16 {
                return Err(format!("'{item}' is wider than a /16"));
            }
            Ok(net.trunc())
        })
        .map(ScanCidrs::List)
    }
}

/// `TRUSTED_PROXIES`: addresses (or CIDRs) allowed to say who the client is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl FromStr for TrustedProxies {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_list(s, |item| {
            item.parse::<ipnet::IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("'{item}' is not an address or CIDR"))
        })
        .map(TrustedProxies)
    }
}

/// `DATABASE_URL`: off, or a URL whose password never reaches a log or a page.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    Off,
    Sqlite(DatabaseUrl),
    Postgres(DatabaseUrl),
}

/// A database URL that shows itself with the password masked.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL with its password: only for connecting.
    pub fn secret(&self) -> &str {
        &self.0
    }

    fn password(&self) -> Option<&str> {
        let rest = self.0.split_once("://")?.1;
        let userinfo = rest.split('/').next()?.rsplit_once('@')?.0;
        userinfo
            .split_once(':')
            .map(|(_, pw)| pw)
            .filter(|pw| !pw.is_empty())
    }

    /// Masks the password wherever it appears in `text` (error messages may quote the URL).
    pub fn scrub(&self, text: &str) -> String {
        match self.password() {
            Some(pw) => text.replace(pw, "***"),
            None => text.to_string(),
        }
    }
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.scrub(&self.0))
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl({self})")
    }
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Database::Off => f.write_str("off"),
            Database::Sqlite(url) | Database::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl FromStr for Database {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if s == "off" {
            return Ok(Database::Off);
        }
        let url = DatabaseUrl(s.to_string());
        let scheme = s.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "sqlite" => {
                sqlx::sqlite::SqliteConnectOptions::from_str(s)
                    .map_err(|e| url.scrub(&format!("not a usable SQLite URL: {e}")))?;
                Ok(Database::Sqlite(url))
            }
            "postgres" | "postgresql" => {
                sqlx::postgres::PgConnectOptions::from_str(s)
                    .map_err(|e| url.scrub(&format!("not a usable PostgreSQL URL: {e}")))?;
                Ok(Database::Postgres(url))
            }
            _ => Err("expected sqlite://FILE, postgres://…, or off".into()),
        }
    }
}

/// `CLUSTER_SECRET`: the current secret, then any previous ones still accepted during a
/// rotation (a comma list). Never shown by Debug, logs or pages; zeroed when dropped.
#[derive(Clone)]
pub struct Secret(Vec<SecretString>);

/// The value the deploy specs ship for `CLUSTER_SECRET`, for the user to replace. Anyone
/// can read it, so it proves nothing.
pub const PLACEHOLDER_SECRET: &str = "replace-me-with-a-long-random-string";

/// Current plus a few previous: a rotation needs two, a botched one three.
const MAX_SECRETS: usize = 4;

impl Secret {
    /// The secret this replica proves with.
    pub fn current(&self) -> &[u8] {
        self.0.first().map_or(&[], |s| s.expose_secret().as_bytes())
    }

    /// Every secret a peer's proof may use.
    pub fn accepted(&self) -> impl Iterator<Item = &[u8]> {
        // The placeholder is public: a proof made with it proves nothing, in any position.
        self.0
            .iter()
            .map(|s| s.expose_secret())
            .filter(|s| *s != PLACEHOLDER_SECRET)
            .map(str::as_bytes)
    }

    pub fn is_placeholder(&self) -> bool {
        self.0
            .first()
            .is_some_and(|s| s.expose_secret() == PLACEHOLDER_SECRET)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let secrets: Vec<String> = s.split(',').map(|p| p.trim().to_string()).collect();
        if secrets.len() > MAX_SECRETS {
            return Err(format!(
                "at most {MAX_SECRETS} secrets (the current one, then previous ones)"
            ));
        }
        // Short secrets are guessable from one captured proof.
        if secrets.iter().any(|s| s.len() < 16) {
            return Err("each secret must be at least 16 characters".into());
        }
        Ok(Secret(
            secrets.into_iter().map(SecretString::from).collect(),
        ))
    }
}

/// An http(s) URL with a host, nothing after the path and no credentials (`PUBLIC_URL`,
/// `PLATFORM_API_URL`): both are shown on the page and in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(url::Url);

impl HttpUrl {
    /// Whether what is sent to it is safe from the network: https, or a loopback host.
    pub fn is_private_to_this_machine(&self) -> bool {
        self.0.scheme() == "https"
            || match self.0.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            }
    }

    /// The URL of `path` on the public address.
    pub fn join(&self, path: &str) -> String {
        format!("{}{path}", self.0.as_str().trim_end_matches('/'))
    }
}

impl FromStr for HttpUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let url = url::Url::parse(s.trim())
            .map_err(|e| format!("must be a URL like https://app.example.com ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must start with http:// or https://".into());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host, like https://app.example.com".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("must have no ?query or #fragment".into());
        }
        if !url.username().is_empty() || url.password().is_some() {
            // It is shown on the page and in logs.
            return Err("must carry no user name or password".into());
        }
        Ok(HttpUrl(url))
    }
}

/// `PLATFORM_API`: which platform's API to ask, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PlatformApi {
    Auto,
    Off,
    Digitalocean,
    Kubernetes,
    Fly,
}

/// An API token: sent in one header, never shown by Debug, logs or pages.
#[derive(Clone)]
pub struct ApiToken(SecretString);

impl ApiToken {
    /// The token itself: only for the Authorization header.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(***)")
    }
}

impl FromStr for ApiToken {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        // It goes into a header: anything else would be refused there, or forge one.
        if s.is_empty() || s.len() > 4096 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be a token of visible ASCII characters, at most 4096".into());
        }
        Ok(ApiToken(SecretString::from(s.to_string())))
    }
}

/// An id that becomes one segment of an API path (an app id, a namespace).
pub fn path_segment(s: &str) -> Result<String, String> {
    let s = s.trim();
    if !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s != "."
        && s != ".."
    {
        Ok(s.to_string())
    } else {
        Err("must be letters, digits, '-', '_' or '.', at most 128".into())
    }
}

/// A Kubernetes equality-based label selector, `key=value[,key=value]`.
fn label_selector(s: &str) -> Result<String, String> {
    let ok = |part: &str| {
        part.split_once('=').is_some_and(|(k, v)| {
            let k = k.trim_end_matches('=');
            let good = |t: &str| {
                t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            };
            !k.is_empty() && k.len() <= 316 && v.len() <= 63 && good(k) && good(v)
        })
    };
    let s = s.trim();
    if !s.is_empty() && s.split(',').all(ok) {
        Ok(s.to_string())
    } else {
        Err("must be key=value pairs separated by commas, like app=rollcall".into())
    }
}

/// `DNS_NAMES`: which names to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsNames {
    Auto,
    Off,
    List(Vec<String>),
}

impl FromStr for DnsNames {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "auto" => Ok(DnsNames::Auto),
            "off" | "" => Ok(DnsNames::Off),
            _ => comma_list(s, |name| {
                if is_dns_name(name) {
                    Ok(name.to_ascii_lowercase())
                } else {
                    Err(format!("'{name}' is not a DNS name"))
                }
            })
            .map(DnsNames::List),
        }
    }
}

/// Letters, digits, hyphens and underscores in dot-separated labels of 1-63 bytes.
pub fn is_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// One `SEED_PEERS` entry: a host (name or address) and a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPeer {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for SeedPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedPeers(pub Vec<SeedPeer>);

impl FromStr for SeedPeers {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_list(s, |item| {
            let bad = || format!("'{item}' is not host:port");
            if let Ok(addr) = item.parse::<SocketAddr>() {
                return match addr.port() {
                    0 => Err(bad()),
                    port => Ok(SeedPeer {
                        host: addr.ip().to_string(),
                        port,
                    }),
                };
            }
            let (host, port) = item.rsplit_once(':').ok_or_else(bad)?;
            let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(bad)?;
            if !is_dns_name(host) {
                return Err(bad());
            }
            Ok(SeedPeer {
                host: host.to_ascii_lowercase(),
                port,
            })
        })
        .map(SeedPeers)
    }
}

/// A comma list of TCP ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortList(pub Vec<u16>);

impl FromStr for PortList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        comma_list(s, |item| match item.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("'{item}' is not a port (1-65535)")),
            Ok(port) => Ok(port),
        })
        .map(|mut ports| {
            ports.dedup();
            PortList(ports)
        })
    }
}

/// Parses a non-empty comma list, item by item, ignoring spaces around items.
fn comma_list<T>(s: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let items: Vec<&str> = s
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect();
    if items.is_empty() {
        return Err("empty list".into());
    }
    items.into_iter().map(parse).collect()
}

impl Settings {
    /// Checks that hold between settings; the error is the one line to print.
    pub fn validate(&self) -> Result<(), String> {
        if self.registry_ttl <= self.registry_heartbeat {
            return Err(format!(
                "REGISTRY_TTL_SECS ({}) must be more than REGISTRY_HEARTBEAT_SECS ({}), \
                 or every row would look stale between heartbeats",
                self.registry_ttl.as_secs(),
                self.registry_heartbeat.as_secs()
            ));
        }
        if let Some(url) = &self.platform_api_url
            && !url.is_private_to_this_machine()
        {
            return Err(format!(
                "PLATFORM_API_URL ({}) must be https:// (the API token would travel in clear), \
                 except on loopback",
                url.0
            ));
        }
        match self.platform_api {
            PlatformApi::Digitalocean
                if self.digitalocean_token.is_none() || self.app_id.is_none() =>
            {
                return Err("PLATFORM_API=digitalocean needs DIGITALOCEAN_TOKEN and APP_ID".into());
            }
            PlatformApi::Fly if self.fly_api_token.is_none() => {
                return Err("PLATFORM_API=fly needs FLY_API_TOKEN".into());
            }
            _ => {}
        }
        Ok(())
    }

    /// The secret peers must prove they hold: none when unset or still the placeholder.
    pub fn proof_secret(&self) -> Option<&Secret> {
        self.cluster_secret.as_ref().filter(|s| !s.is_placeholder())
    }

    pub fn scan_ports(&self) -> Vec<u16> {
        match &self.scan_ports {
            Some(PortList(ports)) => ports.clone(),
            None => vec![self.port],
        }
    }
}

/// Renders a clap error as the one line the contract asks for, naming the environment
/// variable alongside the flag: platforms set settings through the environment.
pub fn one_line_error(err: &clap::Error) -> String {
    use clap::CommandFactory;
    use clap::error::ContextKind;
    let mut rendered = err.render().to_string();
    // A rejected DATABASE_URL is echoed by clap: mask anything that looks like a password.
    if let Some(value) = err.get(ContextKind::InvalidValue).map(|v| v.to_string()) {
        let secret = err.get(ContextKind::InvalidArg).is_some_and(|a| {
            let a = a.to_string();
            [
                "--cluster-secret",
                "--digitalocean-token",
                "--fly-api-token",
            ]
            .iter()
            .any(|secret| a.starts_with(secret))
        });
        if secret && !value.is_empty() {
            // Masked before anything else rewrites it, so no escaped form slips through.
            rendered = rendered.replace(&value, "***");
        } else {
            // A value with a newline would break the one line (and could forge a log line).
            rendered = rendered.replace(&value, &value.escape_debug().to_string());
            rendered = DatabaseUrl(value.clone()).scrub(&rendered);
        }
    }
    let first = rendered
        .lines()
        .next()
        .unwrap_or("invalid settings")
        .trim_start_matches("error: ");
    let Some(arg) = err.get(ContextKind::InvalidArg).map(|a| a.to_string()) else {
        return first.to_string();
    };
    let long = arg
        .trim_start_matches("--")
        .split([' ', '='])
        .next()
        .unwrap_or_default()
        .to_string();
    let env = Cli::command()
        .get_arguments()
        .find(|a| a.get_long() == Some(long.as_str()))
        .and_then(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()));
    match env {
        Some(env) => format!("{first} (setting {env})"),
        None => first.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_cidrs_parse() {
        assert_eq!("auto".parse::<ScanCidrs>(), Ok(ScanCidrs::Auto));
        assert_eq!("off".parse::<ScanCidrs>(), Ok(ScanCidrs::Off));
        assert_eq!(
            "10.244.0.0/18, 127.0.0.9".parse::<ScanCidrs>(),
            Ok(ScanCidrs::List(vec![
                "10.244.0.0/18".parse().unwrap(),
                "127.0.0.9/32".parse().unwrap()
            ]))
        );
        // Host bits are dropped, not rejected: 10.1.2.3/24 means its /24.
        assert_eq!(
            "10.1.2.3/24".parse::<ScanCidrs>(),
            Ok(ScanCidrs::List(vec!["10.1.2.0/24".parse().unwrap()]))
        );
        assert!("10.0.0.0/8".parse::<ScanCidrs>().is_err());
        assert!("10.0.0.0/33".parse::<ScanCidrs>().is_err());
        assert!("fd00::/64".parse::<ScanCidrs>().is_err());
        assert!("banana".parse::<ScanCidrs>().is_err());
        assert!(",".parse::<ScanCidrs>().is_err());
    }

    #[test]
    fn database_urls_parse_and_hide_their_password() {
        assert_eq!("off".parse::<Database>(), Ok(Database::Off));
        assert!(matches!(
            "sqlite://rollcall.db".parse::<Database>(),
            Ok(Database::Sqlite(_))
        ));
        let pg = "postgres://app:hunter2@db.internal:25060/defaultdb?sslmode=require";
        let Ok(Database::Postgres(url)) = pg.parse::<Database>() else {
            panic!("postgres URL rejected");
        };
        assert_eq!(url.secret(), pg);
        assert_eq!(
            url.to_string(),
            "postgres://app:***@db.internal:25060/defaultdb?sslmode=require"
        );
        assert!(!format!("{:?}", Database::Postgres(url.clone())).contains("hunter2"));
        assert_eq!(url.scrub("failed: hunter2 wrong"), "failed: *** wrong");
        assert!("mysql://x".parse::<Database>().is_err());
        assert!("rollcall.db".parse::<Database>().is_err());

        let err = Cli::try_parse_from(["rollcall", "--database-url", "mysql://u:topsecret@h/db"])
            .unwrap_err();
        let line = one_line_error(&err);
        assert!(
            line.contains("DATABASE_URL") && !line.contains("topsecret"),
            "{line}"
        );
    }

    #[test]
    fn secrets_stay_secret() {
        let cli =
            Cli::try_parse_from(["rollcall", "--cluster-secret", "correct-horse-battery"]).unwrap();
        assert!(!format!("{:?}", cli.settings).contains("correct-horse"));
        let err = Cli::try_parse_from(["rollcall", "--cluster-secret", "hunter2"]).unwrap_err();
        let line = one_line_error(&err);
        assert!(
            line.contains("CLUSTER_SECRET") && !line.contains("hunter2"),
            "{line}"
        );
    }

    #[test]
    fn ttl_must_outlast_the_heartbeat() {
        let cli = Cli::try_parse_from([
            "rollcall",
            "--registry-heartbeat-secs",
            "5",
            "--registry-ttl-secs",
            "5",
        ])
        .unwrap();
        let err = cli.settings.validate().unwrap_err();
        assert!(err.contains("REGISTRY_TTL_SECS (5)"), "{err}");
    }

    #[test]
    fn dns_names_and_seeds_parse() {
        assert_eq!("auto".parse::<DnsNames>(), Ok(DnsNames::Auto));
        assert_eq!("off".parse::<DnsNames>(), Ok(DnsNames::Off));
        assert_eq!(
            "rollcall.web, Peers.Internal".parse::<DnsNames>(),
            Ok(DnsNames::List(vec![
                "rollcall.web".into(),
                "peers.internal".into()
            ]))
        );
        assert!("bad name".parse::<DnsNames>().is_err());
        assert!("-x.example".parse::<DnsNames>().is_err());
        assert!("a..b".parse::<DnsNames>().is_err());

        let seeds: SeedPeers = "10.0.0.5:8080, [fd00::7]:9000, peer.internal:80"
            .parse()
            .unwrap();
        assert_eq!(
            seeds.0.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            ["10.0.0.5:8080", "[fd00::7]:9000", "peer.internal:80"]
        );
        for bad in ["10.0.0.5", "peer:0", "peer:http", "bad host:80", ":80", ""] {
            assert!(bad.parse::<SeedPeers>().is_err(), "{bad}");
        }
    }

    #[test]
    fn public_urls_parse_and_join() {
        let url: HttpUrl = "https://app.example.com/".parse().unwrap();
        assert_eq!(url.join("/api/relay"), "https://app.example.com/api/relay");
        let under: HttpUrl = "http://10.0.0.1:8080/rollcall".parse().unwrap();
        assert_eq!(under.join("/api/x"), "http://10.0.0.1:8080/rollcall/api/x");
        for bad in [
            "app.example.com",
            "ftp://app.example.com",
            "https://app.example.com/?a=1",
            "https://user:pw@app.example.com",
            "https://",
        ] {
            assert!(bad.parse::<HttpUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_are_whole_numbers_in_range() {
        let cli = Cli::try_parse_from(["rollcall", "--probe-interval-ms", "250"]).unwrap();
        assert_eq!(cli.settings.probe_interval, Duration::from_millis(250));
        for bad in ["10", "-1", "1.5", "x"] {
            let arg = format!("--probe-interval-ms={bad}");
            let err = Cli::try_parse_from(["rollcall", arg.as_str()]).unwrap_err();
            let line = one_line_error(&err);
            assert!(line.contains("PROBE_INTERVAL_MS"), "{line}");
            assert!(line.contains("50 to 600000"), "{line}");
        }
    }

    #[test]
    fn port_lists_parse() {
        assert_eq!("8080".parse::<PortList>(), Ok(PortList(vec![8080])));
        assert_eq!(
            "80, 8080,8080".parse::<PortList>(),
            Ok(PortList(vec![80, 8080]))
        );
        assert!("0".parse::<PortList>().is_err());
        assert!("65536".parse::<PortList>().is_err());
        assert!("80,x".parse::<PortList>().is_err());
        assert!("".parse::<PortList>().is_err());
    }

    #[test]
    fn bad_values_name_the_setting_in_one_line() {
        let err = Cli::try_parse_from(["rollcall", "--scan-cidrs", "10.0.0.0/8"]).unwrap_err();
        let line = one_line_error(&err);
        assert!(line.contains("SCAN_CIDRS"), "{line}");
        assert!(line.contains("10.0.0.0/8"), "{line}");
        assert!(!line.contains('\n'), "{line}");
        let err = Cli::try_parse_from(["rollcall", "--port", "http"]).unwrap_err();
        assert!(one_line_error(&err).contains("PORT"));
    }

    #[test]
    fn serve_is_the_default_and_takes_the_same_flags() {
        let cli = Cli::try_parse_from(["rollcall", "--port", "9000"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.settings.port, 9000);
        let cli = Cli::try_parse_from(["rollcall", "serve", "--port", "9001"]).unwrap();
        match cli.command {
            Some(Command::Serve(s)) => assert_eq!(s.port, 9001),
            other => panic!("{other:?}"),
        }
    }
}
