//! Signatures for everything that crosses the load balancer on the relay's behalf.
//!
//! The relay's endpoints sit on the public address, where anyone can call them. With
//! `CLUSTER_SECRET` every subscription, every published message and every message a hub
//! streams carries a MAC over what it says and when; anything else is refused. Without a
//! secret there is nothing to sign with, so the relay stays off.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::HeaderMap;

use crate::config::Secret;
use crate::proof;
use crate::wire::is_instance_id;

const SUBSCRIBE: &str = "rollcall/relay-subscribe/v1";
const PUBLISH: &str = "rollcall/relay-publish/v1";
const MESSAGE: &str = "rollcall/relay-message/v1";

/// How far a signed request's time may be from ours: one platform's clocks agree to well
/// within this, and a captured request is useless after it.
pub const MAX_SKEW: Duration = Duration::from_secs(30);

pub const FROM_HEADER: &str = "x-rollcall-from";
pub const TIME_HEADER: &str = "x-rollcall-time";
pub const MAC_HEADER: &str = "x-rollcall-mac";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("the relay is off: it needs CLUSTER_SECRET to sign what crosses the load balancer")]
    NoSecret,
    #[error("missing or malformed relay signature")]
    Malformed,
    #[error("signed at a time more than {} s from this replica's clock", MAX_SKEW.as_secs())]
    Stale,
    #[error("relay signature does not verify")]
    BadMac,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn fresh(time: &str) -> Result<(), AuthError> {
    let at: u64 = time.parse().map_err(|_| AuthError::Malformed)?;
    if now_ms().abs_diff(at) > MAX_SKEW.as_millis() as u64 {
        return Err(AuthError::Stale);
    }
    Ok(())
}

fn verified(secret: &Secret, purpose: &str, fields: &[&str], mac: &str) -> Result<(), AuthError> {
    if proof::verify(secret, purpose, fields, mac) {
        Ok(())
    } else {
        Err(AuthError::BadMac)
    }
}

/// The query string a replica subscribes to a hub with.
pub fn subscription_query(secret: &Secret, from: &str) -> String {
    let time = now_ms().to_string();
    let mac = proof::sign(secret, SUBSCRIBE, &[from, &time]);
    format!("from={from}&time={time}&mac={mac}")
}

/// Checks a subscription's signature; the subscriber's instance id is then trusted.
pub fn check_subscription(
    secret: Option<&Secret>,
    from: &str,
    time: &str,
    mac: &str,
) -> Result<(), AuthError> {
    let secret = secret.ok_or(AuthError::NoSecret)?;
    if !is_instance_id(from) {
        return Err(AuthError::Malformed);
    }
    fresh(time)?;
    verified(secret, SUBSCRIBE, &[from, time], mac)
}

/// Headers that sign a published body as coming from `from`, now.
pub fn publish_headers(secret: &Secret, from: &str, body: &str) -> [(&'static str, String); 3] {
    let time = now_ms().to_string();
    let mac = proof::sign(secret, PUBLISH, &[from, &time, body]);
    [
        (FROM_HEADER, from.to_string()),
        (TIME_HEADER, time),
        (MAC_HEADER, mac),
    ]
}

/// Checks a published body's signature; the publisher's instance id.
pub fn check_publish(
    secret: Option<&Secret>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, AuthError> {
    let secret = secret.ok_or(AuthError::NoSecret)?;
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Malformed)
    };
    let (from, time, mac) = (
        header(FROM_HEADER)?,
        header(TIME_HEADER)?,
        header(MAC_HEADER)?,
    );
    let body = std::str::from_utf8(body).map_err(|_| AuthError::Malformed)?;
    if !is_instance_id(from) {
        return Err(AuthError::Malformed);
    }
    fresh(time)?;
    verified(secret, PUBLISH, &[from, time, body], mac)?;
    Ok(from.to_string())
}

/// A message as a hub streams it: the message's JSON and a MAC over it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SignedMessage {
    pub message: String,
    pub mac: String,
}

pub fn sign_message(secret: &Secret, json: String) -> SignedMessage {
    let mac = proof::sign(secret, MESSAGE, &[&json]);
    SignedMessage { message: json, mac }
}

/// The message's JSON, when the hub that sent it holds the secret.
pub fn check_message(secret: &Secret, signed: &SignedMessage) -> Result<(), AuthError> {
    verified(secret, MESSAGE, &[&signed.message], &signed.mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        "a-long-enough-secret".parse().unwrap()
    }

    #[test]
    fn subscriptions_are_signed_fresh_and_for_their_subscriber() {
        let query = subscription_query(&secret(), "01A");
        let parts: std::collections::HashMap<&str, &str> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let (time, mac) = (parts["time"], parts["mac"]);
        assert_eq!(
            check_subscription(Some(&secret()), "01A", time, mac),
            Ok(())
        );
        assert_eq!(
            check_subscription(Some(&secret()), "01B", time, mac),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            check_subscription(None, "01A", time, mac),
            Err(AuthError::NoSecret)
        );
        let old = (now_ms() - 60_000).to_string();
        let mac = proof::sign(&secret(), SUBSCRIBE, &["01A", &old]);
        assert_eq!(
            check_subscription(Some(&secret()), "01A", &old, &mac),
            Err(AuthError::Stale)
        );
    }

    #[test]
    fn published_bodies_and_streamed_messages_verify_only_as_signed() {
        let body = r#"{"id":"1"}"#;
        let mut headers = HeaderMap::new();
        for (name, value) in publish_headers(&secret(), "01A", body) {
            headers.insert(name, value.parse().unwrap());
        }
        assert_eq!(
            check_publish(Some(&secret()), &headers, body.as_bytes()),
            Ok("01A".into())
        );
        assert_eq!(
            check_publish(Some(&secret()), &headers, br#"{"id":"2"}"#),
            Err(AuthError::BadMac)
        );
        assert_eq!(
            check_publish(Some(&secret()), &HeaderMap::new(), body.as_bytes()),
            Err(AuthError::Malformed)
        );
        let signed = sign_message(&secret(), body.into());
        assert_eq!(check_message(&secret(), &signed), Ok(()));
        let forged = SignedMessage {
            message: r#"{"id":"3"}"#.into(),
            mac: signed.mac,
        };
        assert_eq!(check_message(&secret(), &forged), Err(AuthError::BadMac));
    }
}
