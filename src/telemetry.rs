//! Logs: structured with tracing; JSON when not on a terminal, so platforms' log
//! collectors can parse them. `RUST_LOG` filters (default `info`).

use std::io::IsTerminal;

use tokio::sync::broadcast;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::membership::MemberEvent;

pub fn init(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests, the demo) keeps the first subscriber.
    let _ = match format_or_default(format) {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// The format asked for, else text for a person at a terminal and JSON for a collector.
pub fn format_or_default(format: Option<LogFormat>) -> LogFormat {
    format.unwrap_or(if std::io::stderr().is_terminal() {
        LogFormat::Text
    } else {
        LogFormat::Json
    })
}

/// Resolves on Ctrl-C or SIGTERM (what platforms send before stopping a container).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

/// Logs every membership change, one line each, with fields a log query can match.
pub async fn log_member_events(mut events: broadcast::Receiver<MemberEvent>) {
    loop {
        match events.recv().await {
            Ok(event) => log(&event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "membership changes not logged");
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn log(event: &MemberEvent) {
    match event {
        MemberEvent::Joined { who, sources } => tracing::info!(
            instance_id = %who.instance_id, name = %who.name, addr = %who.addr,
            source = sources.first().map_or("", |s| s.as_str()),
            "member joined"
        ),
        MemberEvent::StateChanged {
            who,
            from,
            to,
            error,
        } => tracing::info!(
            instance_id = %who.instance_id, name = %who.name, addr = %who.addr,
            from = from.as_str(), to = to.as_str(), error = error.as_deref().unwrap_or(""),
            "member state changed"
        ),
        MemberEvent::Restarted { who, from, by } => tracing::info!(
            instance_id = %who.instance_id, name = %who.name, addr = %who.addr,
            from = from.as_str(), to = "dead", replaced_by = %by,
            "member state changed"
        ),
        MemberEvent::Conflict { who, with } => tracing::warn!(
            instance_id = %who.instance_id, name = %who.name, addr = %who.addr, with = %with,
            "two instances claim one address"
        ),
        MemberEvent::Forgotten { who } => tracing::info!(
            instance_id = %who.instance_id, name = %who.name, addr = %who.addr,
            "member forgotten"
        ),
        MemberEvent::Foreign { addr, reason } => {
            tracing::info!(%addr, %reason, "foreign service on the port");
        }
        MemberEvent::Alias { addr } => tracing::info!(%addr, "load-balanced address"),
    }
}
