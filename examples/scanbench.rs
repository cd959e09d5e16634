//! Scan benchmark, run by `scripts/bench` inside the simulator's `do` namespace (absent
//! hosts time out as on a real pod network). Prints one JSON line.
//!
//!   scanbench rollcall PORT [N] 64 /24s of 127.0.0.0/16, rollcall's scan, default settings
//!                               (or N connects in flight)
//!   scanbench naive PORT        the method other demos use: 100 threads, blocking connects
//!                               with a 100 ms timeout, 50 /24s

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rollcall::discovery::scan::{AUTO_SUBNETS, scan_once, targets};

fn subnets(count: u32) -> Vec<Ipv4Net> {
    let all = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 16).expect("a /16");
    all.subnets(24)
        .expect("/24s")
        .take(count as usize)
        .collect()
}

fn naive(port: u16) -> (usize, Vec<SocketAddr>) {
    let work: Vec<SocketAddr> = targets(&subnets(50), &[port]).collect();
    let total = work.len();
    let queue = Arc::new(Mutex::new(work));
    let found = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let queue = queue.clone();
            let found = found.clone();
            std::thread::spawn(move || {
                loop {
                    let Some(addr) = queue.lock().ok().and_then(|mut q| q.pop()) else {
                        return;
                    };
                    if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok()
                        && let Ok(mut f) = found.lock()
                    {
                        f.push(addr);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let found = found.lock().map(|f| f.clone()).unwrap_or_default();
    (total, found)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("rollcall");
    let port: u16 = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(8080);
    let in_flight: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(2048);
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let started = Instant::now();
    let (addresses, found) = match mode {
        "naive" => naive(port),
        _ => {
            let nets = subnets(AUTO_SUBNETS);
            let total = targets(&nets, &[port]).count();
            // The defaults: 2,048 connects in flight, 250 ms timeout.
            let found = scan_once(
                targets(&nets, &[port]),
                in_flight,
                Duration::from_millis(250),
            )
            .await;
            (total, found)
        }
    };
    let secs = started.elapsed().as_secs_f64();
    let found: Vec<String> = found.iter().map(|a| a.to_string()).collect();
    println!(
        "{}",
        serde_json::json!({ "mode": mode, "in_flight": in_flight, "addresses": addresses, "seconds": secs,
            "per_second": addresses as f64 / secs, "found": found })
    );
}
