//! Messages across replicas: `/events` streams them (and membership changes) to browsers,
//! `/api/broadcast` takes one in, `/api/deliver` passes one directly between members, and
//! `/api/relay` + `/api/relay/publish` make this replica a hub for replicas that can only
//! reach it through the load balancer.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::Stream;
use futures_util::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::error::ApiError;
use super::limits::Limits;
use super::negotiate::wants_html;
use super::serve::{Full, Slot, Slots};
use crate::broadcast::{Broadcaster, MAX_TEXT, Message};
use crate::client::PeerClient;
use crate::config::Secret;
use crate::identity::Me;
use crate::membership::{MemberEvent, Membership, State as MemberState, Who};
use crate::relay::{Relay, Subscriber};
use crate::relay_auth::{AuthError, check_publish, check_subscription, sign_message};

/// What passing messages around needs: the inbox, the members to fan out to, the relay.
#[derive(Clone)]
pub struct Messaging {
    pub(super) me: Arc<Me>,
    pub(super) inbox: Broadcaster,
    pub(super) membership: Membership,
    pub(super) client: PeerClient,
    pub(super) relay: Relay,
}

/// What a stream watches.
#[derive(Clone)]
pub struct Watched {
    pub(super) inbox: Broadcaster,
    pub(super) membership: Membership,
    pub(super) shutdown: CancellationToken,
}

/// What one stream has yet to send, and what it watches.
struct Feed {
    messages: broadcast::Receiver<Message>,
    members: Option<broadcast::Receiver<MemberEvent>>,
    /// Where a stream that fell behind on member events reads every state again.
    membership: Membership,
    shutdown: CancellationToken,
    pending: VecDeque<Event>,
    /// A relay subscriber's stream: counted while it lives, every message signed.
    relay: Option<(Subscriber, Secret)>,
    /// The stream's place under the bounds on streams, and when it ends regardless.
    _slot: Slot,
    ends: tokio::time::Instant,
}

/// Event streams open at once, in all and per client: each holds a connection and a
/// little memory for as long as it lives.
pub const MAX_STREAMS: usize = 1024;
pub const MAX_STREAMS_PER_CLIENT: usize = 64;
/// A stream ends after this; browsers reconnect by themselves (with `Last-Event-ID`).
pub const STREAM_LIFETIME: Duration = Duration::from_secs(600);

/// Browsers' event streams.
#[derive(Clone)]
pub struct StreamSlots(pub Slots);

pub fn stream_slots() -> StreamSlots {
    StreamSlots(Slots::new(MAX_STREAMS, MAX_STREAMS_PER_CLIENT, 0))
}

/// Relay subscriptions are signed by replicas, all arriving through the load balancer's
/// address: a pool of their own, so browsers' streams never crowd them out.
#[derive(Clone)]
pub struct RelaySlots(pub Slots);

/// Relay subscriptions open at once (one per replica behind the balancer, plus reconnects).
pub const MAX_RELAY_STREAMS: usize = 256;

pub fn relay_slots() -> RelaySlots {
    RelaySlots(Slots::new(MAX_RELAY_STREAMS, MAX_RELAY_STREAMS, 0))
}

/// A place for one more stream from `client`, or a 429 / 503 that says which bound.
fn stream_slot(slots: &Slots, client: std::net::IpAddr) -> Result<Slot, ApiError> {
    slots.take(client).map_err(|full| match full {
        Full::ThisClient => ApiError::RateLimited {
            what: "event streams",
            retry_after: Duration::from_secs(5),
        },
        Full::Everyone => {
            ApiError::Unavailable(format!("{MAX_STREAMS} event streams are open; try later"))
        }
    })
}

fn message_event(m: &Message) -> Event {
    Event::default()
        .event("message")
        .id(m.id.clone())
        .data(serde_json::to_string(m).unwrap_or_default())
}

/// A message for a replica behind the load balancer: signed, so only a hub holding the
/// secret can feed it.
fn signed_event(m: &Message, secret: &Secret) -> Event {
    let signed = sign_message(secret, serde_json::to_string(m).unwrap_or_default());
    Event::default()
        .event("signed")
        .id(m.id.clone())
        .data(serde_json::to_string(&signed).unwrap_or_default())
}

impl Feed {
    fn event_for(&self, m: &Message) -> Event {
        match &self.relay {
            Some((_, secret)) => signed_event(m, secret),
            None => message_event(m),
        }
    }
}

impl Feed {
    /// A member's state, as a `member` event for the page.
    fn member_event(&mut self, who: &Who, state: &str) {
        let data = json!({ "instance_id": who.instance_id, "name": who.name,
            "addr": who.addr, "state": state });
        self.pending
            .push_back(Event::default().event("member").data(data.to_string()));
    }

    /// Every member's state as it is now.
    fn every_member(&mut self) {
        for m in &self.membership.snapshot().members {
            let who = Who {
                instance_id: m.identity.instance_id.clone(),
                name: m.identity.name.clone(),
                addr: m.identity.addr,
            };
            self.member_event(&who, m.state.as_str());
        }
    }

    /// The page shows members' states: changes of state are its news.
    fn on_member_event(&mut self, event: &MemberEvent) {
        match event {
            MemberEvent::Joined { who, .. } => self.member_event(who, MemberState::Alive.as_str()),
            MemberEvent::StateChanged { who, to, .. } => self.member_event(who, to.as_str()),
            MemberEvent::Restarted { who, .. } => {
                self.member_event(who, MemberState::Dead.as_str());
            }
            MemberEvent::Forgotten { who } => self.member_event(who, "forgotten"),
            MemberEvent::Conflict { .. }
            | MemberEvent::Foreign { .. }
            | MemberEvent::Alias { .. } => {}
        }
    }
}

/// The next membership change; never, for a stream that does not watch members.
async fn member_changed(
    members: &mut Option<broadcast::Receiver<MemberEvent>>,
) -> Result<MemberEvent, broadcast::error::RecvError> {
    match members {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn stream(feed: Feed) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(feed, |mut feed| async move {
        loop {
            if let Some(event) = feed.pending.pop_front() {
                return Some((Ok(event), feed));
            }
            if feed.shutdown.is_cancelled() {
                return None;
            }
            tokio::select! {
                message = feed.messages.recv() => match message {
                    Ok(m) => {
                        let event = feed.event_for(&m);
                        feed.pending.push_back(event);
                    }
                    // A slow reader misses messages rather than holding memory for them.
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                change = member_changed(&mut feed.members) => match change {
                    Ok(event) => feed.on_member_event(&event),
                    // The page polls its regions too: a lagging stream only misses news.
                    // Fell behind: every member's state again, so none stays stale.
                    Err(broadcast::error::RecvError::Lagged(_)) => feed.every_member(),
                    Err(broadcast::error::RecvError::Closed) => feed.members = None,
                },
                () = feed.shutdown.cancelled() => return None,
                () = tokio::time::sleep_until(feed.ends) => return None,
            }
        }
    })
}

fn feed(
    watched: &Watched,
    members: bool,
    relay: Option<(Subscriber, Secret)>,
    slot: Slot,
    seen: Option<&str>,
) -> Feed {
    let messages = watched.inbox.subscribe();
    // Subscribed before the snapshot below is read: no change falls between them.
    let mut feed = Feed {
        messages,
        members: members.then(|| watched.membership.events()),
        membership: watched.membership.clone(),
        shutdown: watched.shutdown.clone(),
        pending: VecDeque::new(),
        relay,
        _slot: slot,
        ends: tokio::time::Instant::now() + STREAM_LIFETIME,
    };
    if members {
        // A reconnect (`Last-Event-ID`) gets only what it has not seen: ids are ULIDs, so
        // they sort by time. The hint says how soon to reconnect after a stream ends.
        feed.pending
            .push_back(Event::default().retry(RECONNECT_AFTER).comment("rollcall"));
        feed.pending.extend(
            watched
                .inbox
                .history()
                .iter()
                .filter(|m| seen.is_none_or(|last| m.id.as_str() > last))
                .map(message_event),
        );
        feed.every_member();
    }
    feed
}

/// How soon a browser should reconnect when its stream ends (a replica going away, the
/// stream's lifetime reached).
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// The id of the last message a reconnecting client saw, when it is one of ours.
fn last_event_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
        })
        .map(str::to_string)
}

/// `GET /events`: recent messages, then live ones and membership changes.
pub async fn events(
    State(watched): State<Watched>,
    State(StreamSlots(slots)): State<StreamSlots>,
    State(limits): State<Arc<Limits>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    let slot = stream_slot(&slots, limits.client(client, &headers))?;
    let seen = last_event_id(&headers);
    Ok(
        Sse::new(stream(feed(&watched, true, None, slot, seen.as_deref())))
            .keep_alive(KeepAlive::default()),
    )
}

#[derive(Debug, Deserialize)]
pub struct TextBody {
    text: String,
}

/// Whether a form post comes from a page of this same site. Browsers send `Origin` with
/// every POST (and `Sec-Fetch-Site`); a form on another site must not post here.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if header("sec-fetch-site").is_some_and(|site| site != "same-origin" && site != "none") {
        return false;
    }
    match (header("origin"), header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin
            .split_once("://")
            .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host)),
        (Some(_), None) => false,
    }
}

/// `POST /api/broadcast`: `{"text": …}` as JSON, or a form field `text` from this site's
/// own page. JSON cannot be posted across sites without a CORS preflight, which nothing
/// here answers; forms can, so they must come from the same origin.
pub async fn broadcast(
    State(messaging): State<Messaging>,
    State(limits): State<Arc<Limits>>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let form = content_type.starts_with("application/x-www-form-urlencoded");
    if !form && !content_type.starts_with("application/json") {
        return Err(ApiError::UnsupportedType(
            "send JSON {\"text\": …} (application/json) or a form field text".into(),
        ));
    }
    if form && !same_origin(&headers) {
        return Err(ApiError::Forbidden(
            "a form post from another site is refused".into(),
        ));
    }
    limits
        .broadcast
        .admit(&limits.client(client, &headers), "broadcast")?;
    let parsed: TextBody = if form {
        serde_urlencoded::from_bytes(&body)
            .map_err(|e| ApiError::BadRequest(format!("form: {e}")))?
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::BadRequest(format!("expected {{\"text\": \"…\"}}: {e}")))?
    };
    let text = parsed.text.trim().to_string();
    if text.is_empty() {
        return Err(ApiError::BadRequest("text is empty".into()));
    }
    if text.len() > MAX_TEXT {
        return Err(ApiError::TooLarge(format!("text is over {MAX_TEXT} bytes")));
    }
    let message = Message::new(text, messaging.me.id());
    messaging.inbox.deliver(message.clone());
    let mut delivered = vec![messaging.me.id().to_string()];
    delivered.extend(messaging.fan_out(&message).await);
    delivered.extend(crate::relay::publish(&messaging.relay, &message).await);
    dedup(&mut delivered);
    if form && wants_html(&headers) {
        // A browser without JavaScript posted the page's form: back to the page, which
        // shows the message in its history.
        return Ok(Redirect::to("/").into_response());
    }
    Ok(Json(json!({ "id": message.id, "delivered_to": delivered })).into_response())
}

fn dedup(ids: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
}

impl Messaging {
    /// Sends a message directly to every alive member; the ones that took it.
    async fn fan_out(&self, message: &Message) -> Vec<String> {
        let snapshot = self.membership.snapshot();
        let calls = snapshot
            .members
            .iter()
            .filter(|m| m.state == MemberState::Alive)
            .map(|m| async move {
                self.client
                    .tell(m.identity.addr, "/api/deliver", message)
                    .await
                    .ok()
                    .map(|_| m.identity.instance_id.clone())
            });
        join_all(calls).await.into_iter().flatten().collect()
    }
}

/// `POST /api/deliver`: a message from a member, for this replica's clients.
pub async fn deliver(
    State(messaging): State<Messaging>,
    State(limits): State<Arc<Limits>>,
    ConnectInfo(caller): ConnectInfo<SocketAddr>,
    body: Result<Json<Message>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(message) = body?;
    let caller = caller.ip().to_canonical();
    let from_member =
        messaging.membership.snapshot().members.iter().any(|m| {
            m.state == MemberState::Alive && m.identity.addr.ip().to_canonical() == caller
        });
    if !from_member {
        return Err(ApiError::Forbidden(format!("{caller} is not a member")));
    }
    if !message.plausible() {
        return Err(ApiError::BadRequest("not a plausible message".into()));
    }
    limits.deliver.admit(&caller, "deliver")?;
    let fresh = messaging.inbox.deliver(message);
    Ok(Json(
        json!({ "delivered_by": messaging.me.id(), "duplicate": !fresh }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayQuery {
    from: String,
    time: String,
    mac: String,
}

/// `GET /api/relay?from=ID&time=MS&mac=HEX`: a replica that reached this one through the
/// load balancer takes it as its hub and receives every message here, signed. The
/// subscription itself must be signed with CLUSTER_SECRET: anyone can reach this address.
/// The `x-rollcall-hub` header says which replica it landed on.
pub async fn relay(
    State(messaging): State<Messaging>,
    State(watched): State<Watched>,
    State(RelaySlots(slots)): State<RelaySlots>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    query: Result<Query<RelayQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let secret = messaging.relay.secret().cloned();
    let Query(query) = query.map_err(|_| {
        ApiError::Forbidden(
            "a relay subscription needs from, time and mac signed with CLUSTER_SECRET".into(),
        )
    })?;
    check_subscription(secret.as_ref(), &query.from, &query.time, &query.mac)
        .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    let Some(secret) = secret else {
        return Err(ApiError::Forbidden(AuthError::NoSecret.to_string()));
    };
    let slot = stream_slot(&slots, client.ip())?;
    let subscriber = messaging.relay.subscribe(query.from);
    let sse = Sse::new(stream(feed(
        &watched,
        false,
        Some((subscriber, secret)),
        slot,
        None,
    )))
    .keep_alive(KeepAlive::default());
    let mut response = sse.into_response();
    if let Ok(hub) = HeaderValue::from_str(messaging.me.id()) {
        response.headers_mut().insert("x-rollcall-hub", hub);
    }
    Ok(response)
}

/// `POST /api/relay/publish`: a message for every replica connected to this hub, signed by
/// the replica it entered by. Its origin and path are that replica's, never what a client
/// says.
pub async fn relay_publish(
    State(messaging): State<Messaging>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let from = check_publish(messaging.relay.secret(), &headers, &body)
        .map_err(|e| ApiError::Forbidden(e.to_string()))?;
    let message: Message = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("not a message: {e}")))?;
    if !message.plausible() {
        return Err(ApiError::BadRequest("not a plausible message".into()));
    }
    if message.origin != from || message.via != [from.clone()] {
        return Err(ApiError::Forbidden(format!(
            "a message published by {from} must have entered by {from}"
        )));
    }
    messaging.inbox.deliver(message.clone());
    let mut delivered = vec![messaging.me.id().to_string()];
    delivered.extend(messaging.relay.subscribers());
    delivered.extend(messaging.fan_out(&message).await);
    dedup(&mut delivered);
    Ok(Json(json!({ "id": message.id, "delivered_to": delivered })))
}
