//! One chitchat node (quickwit-oss/chitchat: scuttlebutt gossip over UDP, phi-accrual failure
//! detection), run by `scripts/bench` beside rollcall to compare the two membership layers on
//! the same machine. Bench-only: chitchat is a dev-dependency, the product never links it.
//!
//!   chitchat_node LISTEN SEEDS GOSSIP_MS
//!     LISTEN     ip:port to bind (UDP); each node has its own 127.0.0.x, so bytes on the wire
//!                can be counted per source address
//!     SEEDS      comma list of ip:port (the same list for every node)
//!     GOSSIP_MS  gossip interval; failure detection uses chitchat's defaults (phi 8)
//!
//! Prints a JSON line on stdout each time its view changes, so the harness reads when it
//! converged and when it marked a killed node dead without polling it:
//!   {"t_ms": <unix ms>, "live": <live nodes, itself included>, "dead": ["ip:port", ...]}

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chitchat::transport::UdpTransport;
use chitchat::{
    ChitchatConfig, ChitchatId, FailureDetectorConfig, ProtocolVersion, spawn_chitchat,
};

type Error = Box<dyn std::error::Error + Send + Sync>;

fn usage() -> Error {
    "usage: chitchat_node LISTEN SEEDS GOSSIP_MS".into()
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().ok_or_else(usage)?.parse()?;
    let seeds: Vec<String> = args
        .next()
        .ok_or_else(usage)?
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let gossip_ms: u64 = args.next().ok_or_else(usage)?.parse()?;

    // A generation id that changes on every start, as a restarted node's would.
    let generation = unix_ms() as u64;
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new(listen.to_string(), generation, listen),
        cluster_id: "rollcall-bench".to_owned(),
        gossip_interval: Duration::from_millis(gossip_ms),
        listen_addr: listen,
        seed_nodes: seeds,
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
        // Every node runs this build, so the newer format (compressed digests) is safe.
        protocol_version: ProtocolVersion::V1,
    };
    let handle = spawn_chitchat(config, Vec::new(), &UdpTransport).await?;
    let chitchat = handle.chitchat();
    let mut watcher = chitchat.lock().await.live_nodes_watcher();

    // The live set is recomputed after every gossip round; it changes when a node joins or
    // the failure detector gives up on one, which is all the harness needs to see.
    let mut last: Option<(usize, BTreeSet<String>)> = None;
    loop {
        let view = {
            let guard = chitchat.lock().await;
            let live = guard.live_nodes().count();
            let dead: BTreeSet<String> = guard
                .dead_nodes()
                .map(|id| id.gossip_advertise_addr.to_string())
                .collect();
            (live, dead)
        };
        if last.as_ref() != Some(&view) {
            let dead: Vec<String> = view.1.iter().map(|a| format!("\"{a}\"")).collect();
            println!(
                "{{\"t_ms\": {}, \"live\": {}, \"dead\": [{}]}}",
                unix_ms(),
                view.0,
                dead.join(",")
            );
            last = Some(view);
        }
        if watcher.changed().await.is_err() {
            return Ok(());
        }
    }
}
