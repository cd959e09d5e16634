//! The HTTP server loop, with bounds a public port needs: connections in all and per
//! client address (checked at accept, before a byte is read), a deadline for reading a
//! request's headers, HTTP/1.1 only (no h2c: its streams would multiply one connection's
//! cost), and a graceful close once `shutdown` resolves.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt;

use crate::config::TrustedProxies;

/// Open connections in all.
pub const MAX_CONNECTIONS: usize = 4096;
/// Open connections from one address (a load balancer pools far fewer).
pub const MAX_CONNECTIONS_PER_IP: usize = 256;
/// The last connections are kept for addresses that hold only a few (a health checker, a
/// peer's probes, a person's browser), so busy addresses cannot starve them.
pub const RESERVE: usize = 256;
/// Holding fewer than this many, an address may use the reserve.
pub const FEW: usize = 4;
/// A request's headers must arrive within this, counted from when the connection starts
/// waiting for them: a client that drips them is cut off, and so is a kept-alive
/// connection idle this long. Longer than load balancers keep idle connections to a
/// backend (60 s on AWS's ALB, for one), so none of them ever sends a request down a
/// connection this side has just closed; dripping clients meanwhile are bounded by the
/// per-address connection cap.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(75);

/// Who holds how many of something bounded (connections, event streams): at most `max`
/// in all and `per_ip` per client address, the last `reserve` kept for addresses that
/// hold fewer than [`FEW`].
#[derive(Clone)]
pub struct Slots {
    count: Arc<Mutex<Count>>,
    max: usize,
    per_ip: usize,
    reserve: usize,
    /// The load balancer (`TRUSTED_PROXIES`): every user arrives from it, so it is held
    /// to the bound in all only.
    exempt: Arc<Vec<ipnet::IpNet>>,
}

#[derive(Default)]
struct Count {
    all: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One slot held; freed when dropped.
pub struct Slot {
    slots: Slots,
    ip: IpAddr,
}

/// What went over a bound, for the answer to say.
#[derive(Debug, PartialEq)]
pub enum Full {
    ThisClient,
    Everyone,
}

impl Slots {
    pub fn new(max: usize, per_ip: usize, reserve: usize) -> Slots {
        Slots {
            count: Arc::default(),
            max,
            per_ip,
            reserve,
            exempt: Arc::default(),
        }
    }

    /// The connection bounds; `trusted` proxies are bound only in all.
    pub fn connections(trusted: &TrustedProxies) -> Slots {
        Slots {
            exempt: Arc::new(trusted.0.clone()),
            ..Slots::new(MAX_CONNECTIONS, MAX_CONNECTIONS_PER_IP, RESERVE)
        }
    }

    /// A slot for `ip`, or which bound it hit.
    pub fn take(&self, ip: IpAddr) -> Result<Slot, Full> {
        let ip = super::limits::client_key(ip);
        let mut count = self.count.lock().map_err(|_| Full::Everyone)?;
        let mine = count.per_ip.get(&ip).copied().unwrap_or(0);
        let exempt = self.exempt.iter().any(|n| n.contains(&ip));
        if mine >= self.per_ip && !exempt {
            return Err(Full::ThisClient);
        }
        let room = if mine < FEW || exempt {
            self.max
        } else {
            self.max - self.reserve
        };
        if count.all >= room {
            return Err(Full::Everyone);
        }
        count.all += 1;
        *count.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Slot {
            slots: self.clone(),
            ip,
        })
    }

    pub fn held(&self) -> usize {
        self.count.lock().map_or(0, |c| c.all)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut count) = self.slots.count.lock() {
            count.all = count.all.saturating_sub(1);
            if let Some(n) = count.per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    count.per_ip.remove(&self.ip);
                }
            }
        }
    }
}

/// Serves `app` until `shutdown` resolves, then stops accepting and waits for the open
/// connections to finish (the caller bounds that wait).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    connections: Slots,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: keep serving.
                    tracing::debug!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = connections.take(peer.ip()) else {
            // Closed at once: the client sees a reset, not a stall.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = tower::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            app.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_connection() {
        let c = Slots::connections(&TrustedProxies::default());
        let busy: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<Slot> = (0..MAX_CONNECTIONS_PER_IP)
            .map(|_| c.take(busy).expect("room"))
            .collect();
        assert_eq!(c.take(busy).err(), Some(Full::ThisClient));
        let others: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map_while(|i| {
                c.take(IpAddr::from([10, 1, (i / 250) as u8, (i % 250) as u8]))
                    .ok()
            })
            .collect();
        assert_eq!(slots.len() + others.len(), MAX_CONNECTIONS);
        assert_eq!(
            c.take("10.9.9.9".parse().unwrap()).err(),
            Some(Full::Everyone)
        );
        drop(slots);
        assert_eq!(c.held(), MAX_CONNECTIONS - MAX_CONNECTIONS_PER_IP);
        assert!(c.take(busy).is_ok(), "slots come back");
    }

    #[test]
    fn the_reserve_is_for_addresses_holding_only_a_few() {
        let c = Slots::connections(&TrustedProxies::default());
        let mut held = Vec::new();
        let mut i = 0u32;
        // Fill up to the reserve with busy addresses.
        while c.held() < MAX_CONNECTIONS - RESERVE {
            let ip = IpAddr::from(i.to_be_bytes());
            for _ in 0..2 * FEW {
                held.extend(c.take(ip).ok());
            }
            i += 1;
        }
        let last = IpAddr::from((i - 1).to_be_bytes());
        assert!(
            c.take(last).is_err(),
            "a busy address gets no reserved slot"
        );
        let checker: IpAddr = "192.0.2.1".parse().unwrap();
        let kept: Vec<Slot> = (0..FEW).map_while(|_| c.take(checker).ok()).collect();
        assert_eq!(kept.len(), FEW, "one holding a few does");
    }

    #[test]
    fn the_trusted_load_balancer_is_bound_only_in_all() {
        let c = Slots::connections(&"10.0.0.1".parse().unwrap());
        let lb: IpAddr = "10.0.0.1".parse().unwrap();
        let held: Vec<Slot> = (0..MAX_CONNECTIONS)
            .map_while(|_| c.take(lb).ok())
            .collect();
        assert_eq!(held.len(), MAX_CONNECTIONS);
    }
}
