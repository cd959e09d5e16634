//! Scan benchmark, run by `scripts/bench` inside the simulator's `do` namespace (absent
//! hosts time out as on a real pod network). Prints one JSON line.
//!
//!   scanbench rollcall PORT [N] [ME]  64 /24s of 127.0.0.0/16, rollcall's round with the
//!                               default settings (or N patient connects in flight), as the
//!                               replica at ME (default 127.0.33.7:PORT) sees it: its /24
//!                               first, a fast pass, then the patient pass over silent ones
//!   scanbench single PORT [N]   the scan before the fast pass: one pass, 250 ms timeout
//!   scanbench naive PORT        the method other demos use: 100 threads, blocking connects
//!                               with a 100 ms timeout, 50 /24s

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rollcall::discovery::scan::{AUTO_SUBNETS, FAST_TIMEOUT, InFlight, targets};
use rollcall::discovery::sweep::{Order, Pass, sweep, tcp_connect};

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

/// Both passes' cost, and when each hit came (seconds from the start).
async fn rollcall(port: u16, patient: usize, me: SocketAddr, fast: bool) -> serde_json::Value {
    let nets = subnets(AUTO_SUBNETS);
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(1024);
    let in_flight = InFlight::from_limit(patient, limit);
    let order = Order {
        nets,
        ports: vec![port],
        me,
        seen: Default::default(),
    };
    let started = Instant::now();
    let mut hits = Vec::new();
    let fast_in_flight = std::env::var("SCANBENCH_FAST")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(in_flight.fast);
    let fast = fast.then_some(Pass {
        timeout: FAST_TIMEOUT,
        in_flight: fast_in_flight,
    });
    let patient = Pass {
        timeout: Duration::from_millis(250),
        in_flight: in_flight.patient,
    };
    let cost = sweep(&order, fast, patient, tcp_connect, |addr| {
        hits.push((addr.to_string(), started.elapsed().as_secs_f64()))
    })
    .await;
    let pass = |p: &rollcall::discovery::sweep::PassCost| {
        serde_json::json!({ "addresses": p.addresses, "in_flight": p.pass.in_flight,
            "timeout_ms": p.pass.timeout.as_millis() as u64, "waves": p.waves(),
            "seconds": p.took.as_secs_f64(), "accepted": p.accepted })
    };
    serde_json::json!({
        "addresses": targets(&order.nets, &order.ports).count(),
        "fast": cost.fast.as_ref().map(pass),
        "patient": pass(&cost.patient),
        "found": hits.iter().map(|(a, _)| a.clone()).collect::<Vec<_>>(),
        "found_at": hits.iter().map(|(_, t)| *t).collect::<Vec<_>>(),
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map(String::as_str).unwrap_or("rollcall");
    let port: u16 = args.get(2).and_then(|p| p.parse().ok()).unwrap_or(8080);
    let in_flight: usize = args.get(3).and_then(|n| n.parse().ok()).unwrap_or(2048);
    let me: SocketAddr = args
        .get(4)
        .and_then(|a| a.parse().ok())
        .unwrap_or(SocketAddr::from(([127, 0, 33, 7], port)));
    let started = Instant::now();
    let mut out = match mode {
        "naive" => {
            let (addresses, found) = naive(port);
            let found: Vec<String> = found.iter().map(|a| a.to_string()).collect();
            serde_json::json!({ "addresses": addresses, "found": found })
        }
        "single" => rollcall(port, in_flight, me, false).await,
        _ => rollcall(port, in_flight, me, true).await,
    };
    let secs = started.elapsed().as_secs_f64();
    out["mode"] = mode.into();
    out["in_flight"] = in_flight.into();
    out["seconds"] = secs.into();
    println!("{out}");
}
