//! Relay through the load balancer, for platforms where replicas cannot reach each other
//! (Azure App Service, Heroku): every replica connects through `PUBLIC_URL` to one hub
//! replica, pinned there by the load balancer's affinity cookie. The first replica to land
//! somewhere records that cookie in the registry; the others read it and connect to the
//! same hub, which relays every message to all of them. When the hub goes away its cookie
//! stops working: the replica that notices first records the next hub's cookie in its
//! place, and everyone follows.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::app::Node;
use crate::broadcast::Message;
use crate::membership::State;
use crate::relay_auth::{self, SignedMessage};

/// Where messages go, for the page and `/api/status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayView {
    /// `direct` or `relay`.
    pub mode: &'static str,
    /// The hub's instance id, in relay mode.
    pub hub: Option<String>,
    pub detail: String,
}

#[derive(Default)]
pub struct Relay {
    view: Mutex<RelayView>,
    /// The cookie that reaches the hub, while connected.
    cookie: Mutex<Option<String>>,
}

impl Relay {
    pub fn view(&self) -> RelayView {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }

    fn set(&self, mode: &'static str, hub: Option<String>, detail: String) {
        if let Ok(mut v) = self.view.lock() {
            *v = RelayView { mode, hub, detail };
        }
    }

    pub fn cookie(&self) -> Option<String> {
        self.cookie.lock().ok().and_then(|c| c.clone())
    }

    fn set_cookie(&self, cookie: Option<String>) {
        if let Ok(mut c) = self.cookie.lock() {
            *c = cookie;
        }
    }
}

/// Relay is needed when some replica exists (the registry says so) that does not answer
/// directly.
fn unreachable_peers(node: &Node) -> usize {
    let claimed = node
        .reports
        .all()
        .values()
        .map(|r| r.claimed)
        .max()
        .unwrap_or(0);
    let alive = node
        .membership
        .snapshot()
        .members
        .iter()
        .filter(|m| m.state == State::Alive)
        .count();
    claimed.saturating_sub(alive)
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

pub async fn run(node: Arc<Node>) {
    let Some(public) = node.settings.public_url.clone() else {
        node.relay.set(
            "direct",
            None,
            "PUBLIC_URL is not set: messages go directly to members".into(),
        );
        return;
    };
    let Some(registry) = node.registry.clone() else {
        node.relay.set(
            "direct",
            None,
            "relay needs the registry (DATABASE_URL) to agree on a hub".into(),
        );
        return;
    };
    let Some(secret) = node.settings.proof_secret().cloned() else {
        node.relay.set(
            "direct",
            None,
            "relay needs CLUSTER_SECRET: what crosses the public address must be signed".into(),
        );
        return;
    };
    let http = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap_or_default();
    let name = node.settings.affinity_cookie.clone();
    let service = node.me.service().to_string();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if unreachable_peers(&node) == 0 {
            node.relay.set(
                "direct",
                None,
                "every known replica answers directly".into(),
            );
            continue;
        }
        let stored = match registry.hub(&service).await {
            Ok(stored) => stored,
            Err(e) => {
                node.relay.set(
                    "relay",
                    None,
                    format!("cannot read the hub from the registry: {e}"),
                );
                continue;
            }
        };
        let query = relay_auth::subscription_query(&secret, node.me.id());
        let mut request = http.get(public.join(&format!("/api/relay?{query}")));
        if let Some((cookie, _)) = &stored {
            request = request.header("cookie", format!("{name}={cookie}"));
        }
        let response = match request.send().await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => {
                node.relay.set(
                    "relay",
                    None,
                    format!("{} answered HTTP {}", public.join("/api/relay"), r.status()),
                );
                continue;
            }
            Err(e) => {
                node.relay.set(
                    "relay",
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
            node.relay.set(
                "relay",
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
                node.relay.set(
                    "relay",
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
                node.relay
                    .set("relay", None, format!("cannot record the hub: {e}"));
                continue;
            }
        };
        node.relay.set_cookie(Some(cookie.clone()));
        node.relay.set(
            "relay",
            Some(hub.clone()),
            format!("through {} to hub {hub}", public.join("")),
        );
        tracing::info!(%hub, "relay connected");
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
                    node.broadcaster.deliver(message);
                }
            }
        }
        tracing::warn!(%hub, "relay connection lost; agreeing on the next hub");
        node.relay.set_cookie(None);
        node.relay
            .set("relay", None, format!("hub {hub} went away; reconnecting"));
        let _ = registry.release_hub(&service, &cookie).await;
    }
}

/// Sends a message through the hub; the instance ids it reached.
pub async fn publish(node: &Node, message: &Message) -> Vec<String> {
    let (Some(public), Some(cookie), Some(secret)) = (
        &node.settings.public_url,
        node.relay.cookie(),
        node.settings.proof_secret(),
    ) else {
        return Vec::new();
    };
    let Ok(json) = serde_json::to_string(message) else {
        return Vec::new();
    };
    let headers = relay_auth::publish_headers(secret, node.me.id(), &json);
    let sent = node
        .client
        .post_json(
            &public.join("/api/relay/publish"),
            Some(&format!("{}={cookie}", node.settings.affinity_cookie)),
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
}
