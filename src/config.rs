//! Settings: every one is a flag and an environment variable, and shows in `--help`.
//!
//! Doc comments on the fields are the help text. Values are parsed into their
//! final types here, so a bad value stops start-up before anything runs.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use ipnet::Ipv4Net;

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
    Serve(Settings),
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
    #[arg(long, env = "ADVERTISE_ADDR", default_value = "auto")]
    pub advertise_addr: AutoOr<IpAddr>,

    /// Replicas of one service share it; a peer with another name is foreign. Default: the
    /// platform's name for the service, else `rollcall`.
    #[arg(long, env = "SERVICE_NAME")]
    pub service_name: Option<String>,

    /// Display name of this replica. Default: the platform's instance id, else the hostname.
    #[arg(long, env = "INSTANCE_NAME")]
    pub instance_name: Option<String>,

    /// How many replicas there should be; shown as found / expected.
    #[arg(long, env = "EXPECTED_REPLICAS", value_parser = clap::value_parser!(u32).range(1..))]
    pub expected_replicas: Option<u32>,

    /// Comma list of IPv4 CIDRs to scan, or `auto` (only where safe: see the README), or `off`.
    #[arg(long, env = "SCAN_CIDRS", default_value = "auto")]
    pub scan_cidrs: ScanCidrs,

    /// Comma list of ports to try on each scanned address. Default: PORT.
    #[arg(long, env = "SCAN_PORTS")]
    pub scan_ports: Option<PortList>,

    /// Pause between full scans, in seconds.
    #[arg(long, env = "SCAN_INTERVAL_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub scan_interval_secs: u64,

    /// Connect timeout per scanned address, in milliseconds.
    #[arg(long, env = "SCAN_TIMEOUT_MS", default_value_t = 250, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub scan_timeout_ms: u64,

    /// How many scan connects may be in flight at once.
    #[arg(long, env = "SCAN_CONCURRENCY", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub scan_concurrency: u32,

    /// How often each member is probed directly, in milliseconds.
    #[arg(long, env = "PROBE_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..=600_000))]
    pub probe_interval_ms: u64,

    /// A member that has not answered for this many seconds is dead.
    #[arg(long, env = "DEAD_AFTER_SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub dead_after_secs: u64,

    /// Dead or left members are dropped from the view after this many seconds.
    #[arg(long, env = "FORGET_AFTER_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub forget_after_secs: u64,

    /// Log format: `text` or `json`. Default: text on a terminal, else json.
    #[arg(long, env = "LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
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
    let rendered = err.render().to_string();
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
