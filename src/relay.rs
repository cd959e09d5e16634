//! Relay through the load balancer, for platforms where replicas cannot reach each other
//! (Azure App Service, Heroku): every replica connects through `PUBLIC_URL` to one hub
//! replica, pinned there by the load balancer's affinity cookie. The first replica to land
//! somewhere records that cookie in the registry; the others read it and connect to the
//! same hub, which relays every message to all of them. When the hub goes away its cookie
//! stops working: the replica that notices first records the next hub's cookie in its
//! place, and everyone follows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::broadcast::{Broadcaster, Message};
use crate::client::PeerClient;
use crate::config::{HttpUrl, Secret};
use crate::discovery::report::Reports;
use crate::membership::{Membership, State};
use crate::relay_auth::{self, SignedMessage};
use crate::store::Store;

/// How messages travel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Sent to every member directly.
    #[default]
    Direct,
    /// Through a hub replica behind the load balancer.
    Relay,
}

/// Where messages go, for the page and `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayView {
    pub mode: RelayMode,
    /// The hub's instance id, in relay mode.
    pub hub: Option<String>,
    pub detail: String,
}

/// The relay's state and settings: where messages go, the cookie that reaches the hub
/// while connected, and the replicas connected to this one as their hub.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Shared>,
}

struct Shared {
    view: Mutex<RelayView>,
    cookie: Mutex<Option<String>>,
    /// Replicas connected to this one as their relay hub (instance id → connections).
    subscribers: Mutex<HashMap<String, usize>>,
    public: Option<HttpUrl>,
    /// The load balancer's affinity cookie name.
    cookie_name: String,
    secret: Option<Secret>,
    me: String,
    service: String,
    client: PeerClient,
}

impl Relay {
    pub fn new(
        public: Option<HttpUrl>,
        cookie_name: String,
        secret: Option<Secret>,
        (me, service): (String, String),
        client: PeerClient,
    ) -> Relay {
        Relay {
            inner: Arc::new(Shared {
                view: Mutex::default(),
                cookie: Mutex::default(),
                subscribers: Mutex::default(),
                public,
                cookie_name,
                secret,
                me,
                service,
                client,
            }),
        }
    }

    pub fn view(&self) -> RelayView {
        self.inner
            .view
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    fn set(&self, mode: RelayMode, hub: Option<String>, detail: String) {
        if let Ok(mut v) = self.inner.view.lock() {
            *v = RelayView { mode, hub, detail };
        }
    }

    pub fn cookie(&self) -> Option<String> {
        self.inner.cookie.lock().ok().and_then(|c| c.clone())
    }

    fn set_cookie(&self, cookie: Option<String>) {
        if let Ok(mut c) = self.inner.cookie.lock() {
            *c = cookie;
        }
    }

    /// The secret that signs what crosses the public address, if relaying can be on.
    pub fn secret(&self) -> Option<&Secret> {
        self.inner.secret.as_ref()
    }

    /// Counts a replica connected to this one as its hub, for as long as the guard lives.
    pub fn subscribe(&self, id: String) -> Subscriber {
        if let Ok(mut subs) = self.inner.subscribers.lock() {
            *subs.entry(id.clone()).or_insert(0) += 1;
        }
        Subscriber {
            relay: self.clone(),
            id,
        }
    }

    /// The replicas connected to this one as their hub.
    pub fn subscribers(&self) -> Vec<String> {
        self.inner
            .subscribers
            .lock()
            .map(|subs| subs.keys().cloned().collect())
            .unwrap_or_default()
    }
}

/// A replica connected to this one as its hub; uncounted when dropped.
pub struct Subscriber {
    relay: Relay,
    id: String,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        if let Ok(mut subs) = self.relay.inner.subscribers.lock()
            && let Some(n) = subs.get_mut(&self.id)
        {
            *n -= 1;
            if *n == 0 {
                subs.remove(&self.id);
            }
        }
    }
}

/// Relay is needed when some replica exists (the registry says so) that does not answer
/// directly.
fn unreachable_peers(reports: &Reports, membership: &Membership) -> usize {
    let snapshot = membership.snapshot();
    let claimed = reports
        .all()
        .values()
        .map(|r| r.claimed(&snapshot))
        .max()
        .unwrap_or(0);
    let alive = snapshot
        .members
        .iter()
        .filter(|m| m.state == State::Alive)
        .count();
    claimed.saturating_sub(alive)
}

/// Waits between attempts to reach the hub: short at first (a hub appears within a second
/// or so of being needed), doubling while attempts fail, so a public address that keeps
/// failing is not hammered.
struct Backoff(Duration);

const FIRST_TRY: Duration = Duration::from_millis(300);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A relay stream that lasted this long was a real connection.
const STREAM_LIVED: Duration = Duration::from_secs(5);

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff(FIRST_TRY)
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
        wait
    }

    fn reset(&mut self) {
        self.0 = FIRST_TRY;
    }
}

/// Reads Server-Sent Events from a byte stream, bounded in memory.
#[derive(Default)]
pub struct SseReader {
    buf: String,
}

/// Longest event accepted; a hub never sends more than one message plus its path.
const MAX_EVENT: usize = 16 * 1024;

impl SseReader {
    /// Feeds bytes; returns complete (event, data) pairs. Errs when an event grows too big.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<(String, String)>, String> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut events = Vec::new();
        while let Some(end) = self.buf.find("\n\n") {
            let block: String = self.buf.drain(..end + 2).collect();
            let (mut event, mut data) = ("message".to_string(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = v.trim().to_string();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                events.push((event, data));
            }
        }
        if self.buf.len() > MAX_EVENT {
            return Err("event too large".into());
        }
        Ok(events)
    }
}

/// Keeps this replica connected to the agreed hub while some replica answers only through
/// the load balancer; every signed message from the hub goes to `inbox`.
pub async fn run(
    relay: Relay,
    store: Option<Store>,
    inbox: Broadcaster,
    reports: Reports,
    membership: Membership,
    http: reqwest::Client,
) {
    let Some(public) = relay.inner.public.clone() else {
        relay.set(
            RelayMode::Direct,
            None,
            "PUBLIC_URL is not set: messages go directly to members".into(),
        );
        return;
    };
    let Some(registry) = store else {
        relay.set(
            RelayMode::Direct,
            None,
            "relay needs the registry (DATABASE_URL) to agree on a hub".into(),
        );
        return;
    };
    let Some(secret) = relay.secret().cloned() else {
        relay.set(
            RelayMode::Direct,
            None,
            "relay needs CLUSTER_SECRET: what crosses the public address must be signed".into(),
        );
        return;
    };
    let name = relay.inner.cookie_name.clone();
    let me = relay.inner.me.clone();
    let service = relay.inner.service.clone();
    let mut retry = Backoff::default();
    loop {
        tokio::time::sleep(retry.next()).await;
        if unreachable_peers(&reports, &membership) == 0 {
            retry.reset();
            relay.set(
                RelayMode::Direct,
                None,
                "every known replica answers directly".into(),
            );
            continue;
        }
        let stored = match registry.hub(&service).await {
            Ok(stored) => stored,
            Err(e) => {
                relay.set(
                    RelayMode::Relay,
                    None,
                    format!("cannot read the hub from the registry: {e}"),
                );
                continue;
            }
        };
        let query = relay_auth::subscription_query(&secret, &me);
        let mut request = http.get(public.join(&format!("/api/relay?{query}")));
        if let Some((cookie, _)) = &stored {
            request = request.header("cookie", format!("{name}={cookie}"));
        }
        let response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                relay.set(
                    RelayMode::Relay,
                    None,
                    format!("{} answered HTTP {}", public.join("/api/relay"), r.status()),
                );
                continue;
            }
            Err(e) => {
                relay.set(
                    RelayMode::Relay,
                    None,
                    format!("cannot reach {}: {e}", public.join("")),
                );
                continue;
            }
        };
        // The load balancer sets its cookie when it chose the replica itself: no cookie was
        // sent, or the one sent points at a replica that is gone.
        let assigned = response
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                v.split(';')
                    .next()?
                    .trim()
                    .strip_prefix(&format!("{name}="))
                    .map(str::to_string)
            });
        let Some(hub) = response
            .headers()
            .get("x-rollcall-hub")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            relay.set(
                RelayMode::Relay,
                None,
                "the public URL did not answer as a rollcall replica".into(),
            );
            continue;
        };
        let agreed = match (&stored, &assigned) {
            (None, Some(cookie)) => registry.claim_hub(&service, cookie, &hub, None).await,
            (Some((old, _)), Some(cookie)) => {
                registry.claim_hub(&service, cookie, &hub, Some(old)).await
            }
            (Some(_), None) => Ok(stored.clone()),
            (None, None) => {
                relay.set(
                    RelayMode::Relay,
                    None,
                    format!(
                        "the load balancer sets no {name} cookie: set AFFINITY_COOKIE to its name"
                    ),
                );
                continue;
            }
        };
        let cookie = match agreed {
            Ok(Some((cookie, agreed_hub))) if agreed_hub == hub => cookie,
            // Someone else recorded another hub first: connect to that one instead.
            Ok(_) => continue,
            Err(e) => {
                relay.set(
                    RelayMode::Relay,
                    None,
                    format!("cannot record the hub: {e}"),
                );
                continue;
            }
        };
        relay.set_cookie(Some(cookie.clone()));
        relay.set(
            RelayMode::Relay,
            Some(hub.clone()),
            format!("through {} to hub {hub}", public.join("")),
        );
        tracing::info!(%hub, "relay connected");
        let connected = std::time::Instant::now();
        let mut response = response;
        let mut reader = SseReader::default();
        while let Ok(Some(bytes)) = response.chunk().await {
            let Ok(events) = reader.feed(&bytes) else {
                break;
            };
            for (event, data) in events {
                // Only what the hub signed: the stream crossed the load balancer.
                if event == "signed"
                    && let Ok(signed) = serde_json::from_str::<SignedMessage>(&data)
                    && relay_auth::check_message(&secret, &signed).is_ok()
                    && let Ok(message) = serde_json::from_str::<Message>(&signed.message)
                    && message.plausible()
                {
                    inbox.deliver(message);
                }
            }
        }
        // A stream that ends at once (a hub draining, say) is a failed attempt, not a
        // connection: only one that lived starts the next attempt from the shortest wait.
        if connected.elapsed() >= STREAM_LIVED {
            retry.reset();
        }
        tracing::warn!(%hub, "relay connection lost; agreeing on the next hub");
        relay.set_cookie(None);
        relay.set(
            RelayMode::Relay,
            None,
            format!("hub {hub} went away; reconnecting"),
        );
        let _ = registry.release_hub(&service, &cookie).await;
    }
}

/// Sends a message through the hub; the instance ids it reached.
pub async fn publish(relay: &Relay, message: &Message) -> Vec<String> {
    let shared = &relay.inner;
    let (Some(public), Some(cookie), Some(secret)) =
        (&shared.public, relay.cookie(), &shared.secret)
    else {
        return Vec::new();
    };
    let Ok(json) = serde_json::to_string(message) else {
        return Vec::new();
    };
    let headers = relay_auth::publish_headers(secret, &shared.me, &json);
    let sent = shared
        .client
        .post_json(
            &public.join("/api/relay/publish"),
            Some(&format!("{}={cookie}", shared.cookie_name)),
            json,
            &headers,
        )
        .await;
    match sent {
        Ok(body) => serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["delivered_to"].as_array().map(|ids| {
                    ids.iter()
                        .filter_map(|id| id.as_str().map(str::to_string))
                        .take(1000)
                        .collect()
                })
            })
            .unwrap_or_default(),
        Err(e) => {
            tracing::debug!(error = %e, "relay publish failed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_reader_splits_events_across_chunks() {
        let mut r = SseReader::default();
        assert!(r.feed(b"event: hub\ndata: {\"a\"").unwrap().is_empty());
        let events = r.feed(b":1}\n\n: keep-alive\n\ndata: x\n\n").unwrap();
        assert_eq!(
            events,
            [
                ("hub".to_string(), "{\"a\":1}".to_string()),
                ("message".into(), "x".into())
            ]
        );
        assert!(r.feed(&vec![b'a'; MAX_EVENT + 1]).is_err());
    }

    #[test]
    fn retries_back_off_to_a_cap_and_start_over() {
        let mut b = Backoff::default();
        let waits: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert_eq!(waits[0], FIRST_TRY);
        assert_eq!(waits[1], FIRST_TRY * 2);
        assert_eq!(waits[7], MAX_BACKOFF);
        b.reset();
        assert_eq!(b.next(), FIRST_TRY);
    }
}
