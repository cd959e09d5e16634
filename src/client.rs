//! Direct calls to other replicas: one HTTP client, bounded in time and in what it reads.
//!
//! Whatever answers on a peer's port may be hostile, so every call has a deadline, never
//! follows redirects or proxies, and reads at most a small body.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::wire::Identity;

/// An identity is a few hundred bytes; anything much larger is not one.
pub const MAX_IDENTITY_BYTES: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    #[error("not a rollcall identity ({0})")]
    NotIdentity(String),
    #[error("no valid proof of CLUSTER_SECRET")]
    BadProof,
    /// Another service answered (and proved nothing): not a proof failure of ours.
    #[error("service '{0}' is another service")]
    OtherService(String),
    #[error("broken answer: {0}")]
    Other(String),
}

impl CallError {
    /// Nothing was listening: not a finding about a neighbour, just absence.
    pub fn is_connect(&self) -> bool {
        matches!(self, CallError::Connect(_))
    }

    fn from_reqwest(e: reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout
        } else if e.is_connect() {
            CallError::Connect(root_cause(&e))
        } else {
            CallError::Other(root_cause(&e))
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[derive(Debug, Clone)]
pub struct PeerClient {
    /// Calls leave from the advertise address, so peers see who is calling.
    bound: Option<(IpAddr, reqwest::Client)>,
    /// For peers of the other address family (an IPv4 source cannot reach an IPv6 peer).
    any: reqwest::Client,
    timeout: Duration,
}

fn http(local_ip: Option<IpAddr>, timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .local_address(local_ip)
        .pool_max_idle_per_host(2)
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("rollcall/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The client for calls through the public address (the relay): no overall timeout, since
/// a relay stream lives as long as the hub does, but a bounded connect.
pub fn public_http() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .user_agent(concat!("rollcall/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A successful identity call and its round-trip time.
#[derive(Debug, Clone)]
pub struct Reply {
    pub identity: Identity,
    pub status: u16,
    pub rtt_ms: f64,
}

impl PeerClient {
    /// `local_ip`: where calls leave from (ignored when the address is not on this machine).
    /// A client that cannot be built (no TLS roots, say) is a start-up error: there is no
    /// safe fallback without the timeouts.
    pub fn new(local_ip: Option<IpAddr>, timeout: Duration) -> Result<PeerClient, reqwest::Error> {
        let local_ip = local_ip
            .filter(|ip| !ip.is_unspecified() && std::net::TcpListener::bind((*ip, 0)).is_ok());
        Ok(PeerClient {
            bound: match local_ip {
                Some(ip) => Some((ip, http(Some(ip), timeout)?)),
                None => None,
            },
            any: http(None, timeout)?,
            timeout,
        })
    }

    fn for_peer(&self, addr: SocketAddr) -> &reqwest::Client {
        match &self.bound {
            Some((ip, client)) if ip.is_ipv4() == addr.is_ipv4() => client,
            _ => &self.any,
        }
    }

    /// `GET /api/identity` at `addr`, with a challenge (nonce, challenger's instance id)
    /// when one is given.
    pub async fn identity(
        &self,
        addr: SocketAddr,
        nonce: Option<&str>,
        from: &str,
        mesh: bool,
    ) -> Result<Reply, CallError> {
        let started = Instant::now();
        // `from` (an instance id: nothing to escape) says who asks: a member gets the news.
        let mut url = match nonce {
            Some(nonce) => format!("http://{addr}/api/identity?nonce={nonce}&from={from}"),
            None => format!("http://{addr}/api/identity?from={from}"),
        };
        if !mesh {
            url.push_str("&mesh=false");
        }
        let response = self
            .for_peer(addr)
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(CallError::from_reqwest)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(CallError::Status(status));
        }
        let body = read_bounded(response, MAX_IDENTITY_BYTES).await?;
        let identity = parse_identity(&body)?;
        Ok(Reply {
            identity,
            status,
            rtt_ms: elapsed_ms(started),
        })
    }

    /// `GET` a path on a peer; the body, bounded.
    pub async fn get(&self, addr: SocketAddr, path: &str) -> Result<Vec<u8>, CallError> {
        self.get_up_to(addr, path, MAX_IDENTITY_BYTES).await
    }

    /// `GET` a path on a peer whose answer may be longer than an identity, up to `limit`
    /// bytes.
    pub async fn get_up_to(
        &self,
        addr: SocketAddr,
        path: &str,
        limit: usize,
    ) -> Result<Vec<u8>, CallError> {
        send_bounded(self.get_from(addr, path), limit).await
    }

    /// `GET` a path on a peer that answers after calls of its own (a `/peer` fan-out, made
    /// in parallel with this client's timeout): it gets twice the timeout, and its answer
    /// may be longer than an identity, up to `limit` bytes.
    pub async fn get_fan_out(
        &self,
        addr: SocketAddr,
        path: &str,
        limit: usize,
    ) -> Result<Vec<u8>, CallError> {
        let request = self.get_from(addr, path).timeout(self.timeout * 2);
        send_bounded(request, limit).await
    }

    fn get_from(&self, addr: SocketAddr, path: &str) -> reqwest::RequestBuilder {
        self.for_peer(addr)
            .get(format!("http://{addr}{path}"))
            .header("accept", "application/json")
    }

    /// `GET` a URL (the public address, through the load balancer): the body and the time.
    pub async fn get_url(&self, url: &str) -> Result<(Vec<u8>, f64), CallError> {
        let started = Instant::now();
        let request = self.any.get(url).header("accept", "application/json");
        let body = send_bounded(request, MAX_IDENTITY_BYTES).await?;
        Ok((body, elapsed_ms(started)))
    }

    /// Posts JSON to a peer (`/api/hello`, `/api/goodbye`, `/api/deliver`); the answer's body.
    pub async fn tell<T: serde::Serialize + ?Sized>(
        &self,
        addr: SocketAddr,
        path: &str,
        body: &T,
    ) -> Result<Vec<u8>, CallError> {
        let request = self
            .for_peer(addr)
            .post(format!("http://{addr}{path}"))
            .json(body);
        send_bounded(request, MAX_IDENTITY_BYTES).await
    }

    /// `POST`s a JSON body to a URL (the public address), with a cookie and headers; the
    /// answer's body, bounded.
    pub async fn post_json(
        &self,
        url: &str,
        cookie: Option<&str>,
        json: String,
        headers: &[(&'static str, String)],
    ) -> Result<Vec<u8>, CallError> {
        let mut request = self
            .any
            .post(url)
            .header("content-type", "application/json")
            .body(json);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        send_bounded(request, MAX_IDENTITY_BYTES).await
    }
}

/// Milliseconds since `started`, to a hundredth: finer is noise on any network.
fn elapsed_ms(started: Instant) -> f64 {
    (started.elapsed().as_secs_f64() * 100_000.0).round() / 100.0
}

async fn send_bounded(
    request: reqwest::RequestBuilder,
    limit: usize,
) -> Result<Vec<u8>, CallError> {
    let response = request.send().await.map_err(CallError::from_reqwest)?;
    match response.status().as_u16() {
        200..=299 => read_bounded(response, limit).await,
        status => Err(CallError::Status(status)),
    }
}

/// Reads an identity from what a peer sent. serde_json stops at 128 levels of nesting,
/// and the body is at most [`MAX_IDENTITY_BYTES`], so hostile input costs little.
pub fn parse_identity(body: &[u8]) -> Result<Identity, CallError> {
    serde_json::from_slice::<Identity>(body).map_err(|e| {
        // serde quotes the peer's own text: cut on characters (a byte cut could land inside
        // one and panic), and drop control characters (they would forge log lines).
        let why = e
            .to_string()
            .chars()
            .filter(|c| !c.is_control())
            .take(120)
            .collect();
        CallError::NotIdentity(why)
    })
}

async fn read_bounded(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, CallError> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(CallError::TooLarge(limit));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(CallError::from_reqwest)? {
        if body.len() + chunk.len() > limit {
            return Err(CallError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_error_text_is_cut_on_characters() {
        for pad in 0..4 {
            // Somewhere around byte 120 of serde's message an é is cut in two.
            let body = format!(
                r#"{{"instance_id":"x","name":"x","service":"x","addr":"1.2.3.4:5","system":{{"cpus":"{}a{}"}}}}"#,
                "b".repeat(pad),
                "é".repeat(100)
            );
            match parse_identity(body.as_bytes()) {
                Err(CallError::NotIdentity(why)) => assert!(why.chars().count() <= 120),
                other => panic!("{other:?}"),
            }
        }
    }
}
