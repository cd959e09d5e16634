//! How one scan round spends its connects: the likeliest addresses first; a fast pass
//! with a short timeout over the whole plan (a pod network answers in well under a
//! millisecond, an absent host never does); then a patient pass with the full timeout
//! over the addresses that stayed silent, so a neighbour whose answer is slow is still
//! found. Each accepting address is handed on the moment it accepts.

use std::collections::HashSet;
use std::future::Future;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use ipnet::Ipv4Net;
use tokio::net::TcpStream;

/// Every address a scan of `nets` touches: the hosts of each net (a /32 is its one address).
pub fn targets(nets: &[Ipv4Net], ports: &[u16]) -> impl Iterator<Item = SocketAddr> {
    let nets = nets.to_vec();
    let ports = ports.to_vec();
    nets.into_iter().flat_map(move |n| {
        let ports = ports.clone();
        n.hosts().flat_map(move |ip| {
            ports
                .clone()
                .into_iter()
                .map(move |p| SocketAddr::from((ip, p)))
        })
    })
}

pub fn target_count(nets: &[Ipv4Net], ports: &[u16]) -> u64 {
    let hosts: u64 = nets
        .iter()
        .map(|n| match n.prefix_len() {
            32 => 1,
            31 => 2,
            p => (1u64 << (32 - p)) - 2,
        })
        .sum();
    hosts * ports.len() as u64
}

/// Addresses a round remembers as answered (so the patient pass skips them) at most; past
/// this the patient pass asks some of them again, which costs connects, not memory.
const MAX_SETTLED: usize = 65_536;

/// What one connect learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Something listens there.
    Accepted,
    /// The host said nothing listens there: asking again this round would not help.
    Refused,
    /// No answer within the timeout (or a local error): the patient pass asks again.
    Silent,
}

/// A real TCP connect, given up after `timeout`.
pub async fn tcp_connect(addr: SocketAddr, timeout: Duration) -> Answer {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(_stream)) => Answer::Accepted,
        Ok(Err(e))
            if matches!(
                e.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
            ) =>
        {
            Answer::Refused
        }
        _ => Answer::Silent,
    }
}

/// How one pass spends its connects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub timeout: Duration,
    pub in_flight: usize,
}

/// What one pass asked, found and cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassCost {
    pub pass: Pass,
    pub addresses: u64,
    pub accepted: usize,
    pub took: Duration,
}

impl PassCost {
    /// Rounds of `in_flight` connects the pass needed; each waits at most the timeout.
    pub fn waves(&self) -> u64 {
        self.addresses.div_ceil(self.pass.in_flight.max(1) as u64)
    }
}

/// What a whole round cost: the fast pass when there was one, then the patient pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepCost {
    pub fast: Option<PassCost>,
    pub patient: PassCost,
}

impl SweepCost {
    pub fn accepted(&self) -> usize {
        self.fast.map_or(0, |f| f.accepted) + self.patient.accepted
    }

    pub fn took(&self) -> Duration {
        self.fast.map_or(Duration::ZERO, |f| f.took) + self.patient.took
    }
}

/// The order a round asks the plan's addresses in: this replica's own /24 first (pods of
/// one node share it), then /24s where members were seen, then the rest of the plan. The
/// three parts partition the plan, so every address is asked once per pass.
#[derive(Debug, Clone)]
pub struct Order {
    pub nets: Vec<Ipv4Net>,
    pub ports: Vec<u16>,
    /// This replica's address: skipped, and its /24 goes first.
    pub me: SocketAddr,
    /// /24s (the address shifted right by 8) where members were seen.
    pub seen: HashSet<u32>,
}

impl Order {
    fn slash24(ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(v4) => Some(u32::from(v4) >> 8),
            IpAddr::V6(_) => None,
        }
    }

    /// Every address of the plan but this replica's own, likeliest first.
    pub fn targets(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let own = Self::slash24(self.me.ip());
        let rank = move |addr: &SocketAddr| {
            let here = Self::slash24(addr.ip());
            if here.is_some() && here == own {
                0
            } else if here.is_some_and(|h| self.seen.contains(&h)) {
                1
            } else {
                2
            }
        };
        let me = self.me;
        (0..3).flat_map(move |want| {
            targets(&self.nets, &self.ports).filter(move |a| *a != me && rank(a) == want)
        })
    }
}

/// New connects a pass starts before it lets the runtime deliver answers: issuing one costs
/// tens of microseconds of CPU, and an answer is only noticed once the runtime gets to look
/// at the sockets, so a peer that accepted early must not wait for thousands of connects.
const ISSUE_BATCH: usize = 256;

/// Asks every target once with at most `pass.in_flight` connects at a time; `on_answer`
/// hears each answer as it comes.
pub async fn run_pass<C, F>(
    targets: impl Iterator<Item = SocketAddr>,
    pass: Pass,
    connect: &C,
    mut on_answer: impl FnMut(SocketAddr, Answer),
) -> PassCost
where
    C: Fn(SocketAddr, Duration) -> F,
    F: Future<Output = Answer>,
{
    let started = Instant::now();
    let (mut addresses, mut accepted) = (0u64, 0usize);
    let mut record = |addr: SocketAddr, answer: Answer| {
        addresses += 1;
        if answer == Answer::Accepted {
            accepted += 1;
        }
        on_answer(addr, answer);
    };
    // The timeout starts when the connect is first polled, not when it is queued.
    let ask = |addr: SocketAddr| async move { (addr, connect(addr, pass.timeout).await) };
    let mut targets = targets.fuse();
    let mut pending = FuturesUnordered::new();
    loop {
        let mut new = 0;
        while pending.len() < pass.in_flight.max(1) && new < ISSUE_BATCH {
            let Some(addr) = targets.next() else { break };
            pending.push(ask(addr));
            new += 1;
        }
        if pending.is_empty() {
            break;
        }
        if new == ISSUE_BATCH {
            // Start this batch, take the answers already in, then let the runtime run.
            std::future::poll_fn(|cx| {
                while let Poll::Ready(Some((addr, answer))) = pending.poll_next_unpin(cx) {
                    record(addr, answer);
                }
                Poll::Ready(())
            })
            .await;
            tokio::task::yield_now().await;
        } else if let Some((addr, answer)) = pending.next().await {
            record(addr, answer);
        }
    }
    PassCost {
        pass,
        addresses,
        accepted,
        took: started.elapsed(),
    }
}

/// Addresses the fast pass heard from (they accepted or refused): the patient pass skips
/// them. At most [`MAX_SETTLED`]; past that, some are asked twice, and a hit handed on
/// twice is only verified twice.
pub type Settled = HashSet<SocketAddr>;

/// The fast pass over the whole order; `on_hit` hears of each accepting address at once.
pub async fn fast_pass<C, F>(
    order: &Order,
    pass: Pass,
    connect: &C,
    mut on_hit: impl FnMut(SocketAddr),
) -> (PassCost, Settled)
where
    C: Fn(SocketAddr, Duration) -> F,
    F: Future<Output = Answer>,
{
    let mut settled = Settled::new();
    let cost = run_pass(order.targets(), pass, connect, |addr, answer| {
        if answer == Answer::Accepted {
            on_hit(addr);
        }
        if answer != Answer::Silent && settled.len() < MAX_SETTLED {
            settled.insert(addr);
        }
    })
    .await;
    (cost, settled)
}

/// The patient pass over what the fast pass did not hear from (everything, without one).
pub async fn patient_pass<C, F>(
    order: &Order,
    pass: Pass,
    settled: &Settled,
    connect: &C,
    mut on_hit: impl FnMut(SocketAddr),
) -> PassCost
where
    C: Fn(SocketAddr, Duration) -> F,
    F: Future<Output = Answer>,
{
    let silent = order.targets().filter(|a| !settled.contains(a));
    run_pass(silent, pass, connect, |addr, answer| {
        if answer == Answer::Accepted {
            on_hit(addr);
        }
    })
    .await
}

/// Both passes back to back (the fast one only when given).
pub async fn sweep<C, F>(
    order: &Order,
    fast: Option<Pass>,
    patient: Pass,
    connect: C,
    mut on_hit: impl FnMut(SocketAddr),
) -> SweepCost
where
    C: Fn(SocketAddr, Duration) -> F,
    F: Future<Output = Answer>,
{
    let (fast, settled) = match fast {
        Some(pass) => {
            let (cost, settled) = fast_pass(order, pass, &connect, &mut on_hit).await;
            (Some(cost), settled)
        }
        None => (None, Settled::new()),
    };
    let patient = patient_pass(order, patient, &settled, &connect, on_hit).await;
    SweepCost { fast, patient }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn order(nets: &[&str], me: &str, seen: &[&str]) -> Order {
        Order {
            nets: nets.iter().map(|n| n.parse().unwrap()).collect(),
            ports: vec![8080],
            me: me.parse().unwrap(),
            seen: seen
                .iter()
                .map(|ip| u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap()) >> 8)
                .collect(),
        }
    }

    #[test]
    fn own_24_first_then_seen_24s_then_the_rest_each_once() {
        // The plan `auto` makes: 64 /24s.
        let mut o = order(&[], "10.244.33.7:8080", &["10.244.6.12"]);
        let first: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        o.nets = first.subnets(24).unwrap().take(64).collect();
        let all: Vec<SocketAddr> = o.targets().collect();
        assert_eq!(all.len(), 16_256 - 1, "every address but mine");
        let unique: HashSet<_> = all.iter().collect();
        assert_eq!(unique.len(), all.len(), "no address twice");
        assert!(!all.contains(&o.me));
        assert!(
            all[..253]
                .iter()
                .all(|a| a.to_string().starts_with("10.244.33."))
        );
        assert_eq!(all[0].to_string(), "10.244.33.1:8080");
        assert!(
            all[253..507]
                .iter()
                .all(|a| a.to_string().starts_with("10.244.6."))
        );
        assert_eq!(all[507].to_string(), "10.244.0.1:8080");
    }

    #[test]
    fn the_order_stays_inside_the_plan() {
        // My /24 is outside the plan (an explicit SCAN_CIDRS): nothing of it is asked.
        let o = order(&["127.0.5.0/30"], "127.0.9.9:80", &["127.0.7.1"]);
        let all: Vec<String> = o.targets().map(|a| a.to_string()).collect();
        assert_eq!(all, ["127.0.5.1:8080", "127.0.5.2:8080"]);
    }

    type Connecting = std::pin::Pin<Box<dyn Future<Output = Answer> + Send>>;

    /// A network where `slow` answers after `delay`, `fast_one` at once, everything else
    /// never; it records every connect.
    fn network(
        fast_one: SocketAddr,
        slow: SocketAddr,
        delay: Duration,
    ) -> (
        impl Fn(SocketAddr, Duration) -> Connecting,
        Arc<Mutex<Vec<SocketAddr>>>,
    ) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        let connect = move |addr: SocketAddr, timeout: Duration| {
            log.lock().unwrap().push(addr);
            Box::pin(async move {
                let answers_after = if addr == fast_one {
                    Duration::ZERO
                } else if addr == slow {
                    delay
                } else {
                    return match tokio::time::timeout(timeout, std::future::pending::<()>()).await {
                        Ok(()) => Answer::Accepted,
                        Err(_) => Answer::Silent,
                    };
                };
                match tokio::time::timeout(timeout, tokio::time::sleep(answers_after)).await {
                    Ok(()) => Answer::Accepted,
                    Err(_) => Answer::Silent,
                }
            }) as Connecting
        };
        (connect, asked)
    }

    #[tokio::test]
    async fn a_slow_neighbour_missed_by_the_fast_pass_is_found_by_the_patient_pass() {
        let o = order(&["127.0.0.0/28"], "127.0.0.1:8080", &[]);
        let quick: SocketAddr = "127.0.0.2:8080".parse().unwrap();
        let slow: SocketAddr = "127.0.0.9:8080".parse().unwrap();
        let (connect, asked) = network(quick, slow, Duration::from_millis(60));
        let mut hits = Vec::new();
        let fast = Pass {
            timeout: Duration::from_millis(10),
            in_flight: 64,
        };
        let patient = Pass {
            timeout: Duration::from_millis(400),
            in_flight: 4,
        };
        let cost = sweep(&o, Some(fast), patient, connect, |a| hits.push(a)).await;
        assert_eq!(hits, vec![quick, slow], "the quick one first, each once");
        let fast_cost = cost.fast.expect("a fast pass ran");
        assert_eq!((fast_cost.addresses, fast_cost.accepted), (13, 1));
        // The patient pass asks only the silent 12 (the quick one answered), in 3 waves of 4.
        assert_eq!((cost.patient.addresses, cost.patient.accepted), (12, 1));
        assert_eq!(cost.patient.waves(), 3);
        assert_eq!(cost.accepted(), 2);
        let asked = asked.lock().unwrap();
        assert_eq!(asked.iter().filter(|a| **a == quick).count(), 1);
        assert_eq!(asked.iter().filter(|a| **a == slow).count(), 2);
    }

    #[tokio::test]
    async fn without_a_fast_pass_the_patient_pass_asks_everything_once() {
        let o = order(&["127.0.0.0/29"], "127.0.0.1:8080", &[]);
        let quick: SocketAddr = "127.0.0.3:8080".parse().unwrap();
        let (connect, asked) = network(quick, quick, Duration::ZERO);
        let mut hits = Vec::new();
        let patient = Pass {
            timeout: Duration::from_millis(20),
            in_flight: 8,
        };
        let cost = sweep(&o, None, patient, connect, |a| hits.push(a)).await;
        assert_eq!(hits, vec![quick]);
        assert_eq!(cost.fast, None);
        assert_eq!((cost.patient.addresses, cost.patient.waves()), (5, 1));
        assert_eq!(asked.lock().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn refused_addresses_are_not_asked_again() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // A port on the same host with nothing behind it refuses at once.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let o = Order {
            nets: vec!["127.0.0.1/32".parse().unwrap()],
            ports: vec![port, closed],
            me: "127.0.0.2:1".parse().unwrap(),
            seen: HashSet::new(),
        };
        let pass = |ms| Pass {
            timeout: Duration::from_millis(ms),
            in_flight: 4,
        };
        let mut hits = Vec::new();
        let cost = sweep(&o, Some(pass(1000)), pass(1000), tcp_connect, |a| {
            hits.push(a)
        })
        .await;
        assert_eq!(hits, vec![SocketAddr::from(([127, 0, 0, 1], port))]);
        assert_eq!(cost.fast.map(|f| f.addresses), Some(2));
        assert_eq!(cost.patient.addresses, 0, "both answered the fast pass");
    }
}
