//! Asking a platform's API: one bounded GET (time, size, no redirects), its failures in
//! words, and how long to wait after each.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;

use crate::discovery::expected::Listed;
use reqwest::header::HeaderMap;

/// The most of an answer that is read; a bigger one is refused, not parsed.
pub const MAX_BODY: usize = 4 << 20;
/// The most instances kept from one answer (the membership table's own bound).
pub const MAX_INSTANCES: usize = 512;
/// The longest wait after failures, and after a rate limit.
const MAX_BACKOFF: Duration = Duration::from_secs(600);
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(3600);

/// One platform's API: how to ask it, and how to read its answer.
pub trait Lister: Send + Sync + 'static {
    /// "App Platform", "Kubernetes", "Fly".
    fn platform(&self) -> &'static str;
    /// What is asked, without the query (shown in the report).
    fn url(&self) -> String;
    /// What to ask: the URL with its query, and the token to send.
    fn ask(&self) -> Result<Ask, ApiError>;
    /// The answer's instances of this replica's service; `me` is this replica's name.
    fn read(&self, body: &[u8], me: &str) -> Result<Listing, ApiError>;
}

/// What one answer listed.
#[derive(Debug)]
pub struct Listing {
    pub scope: String,
    pub instances: Vec<Listed>,
    pub truncated: bool,
}

/// A list of which only the first [`MAX_INSTANCES`] items are kept; the rest are read
/// past without being built (a 4 MiB answer of `{},` would otherwise be a million items).
#[derive(Debug)]
pub struct Capped<T> {
    pub items: Vec<T>,
    /// How many the answer held.
    pub total: usize,
}

impl<T> Capped<T> {
    pub fn truncated(&self) -> bool {
        self.total > self.items.len()
    }
}

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Capped<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Capped<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Capped<T>, A::Error> {
                let mut items = Vec::new();
                let mut total = 0;
                while total < MAX_INSTANCES {
                    match seq.next_element()? {
                        Some(item) => items.push(item),
                        None => return Ok(Capped { items, total }),
                    }
                    total += 1;
                }
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    total += 1;
                }
                Ok(Capped { items, total })
            }
        }
        deserializer.deserialize_seq(Visitor(std::marker::PhantomData))
    }
}

/// An answer that does not parse, in a few words (serde quotes the offending value
/// whole), and how the answer starts: `<html>` says a proxy or a login page answered.
pub fn malformed(e: &serde_json::Error, body: &[u8]) -> ApiError {
    let start: String = String::from_utf8_lossy(&body[..body.len().min(32)])
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let why: String = e
        .to_string()
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    ApiError::Malformed(format!("{why}; the answer starts \"{start}\""))
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("token refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("rate-limited (429): {message}")]
    RateLimited {
        message: String,
        /// What the API asked for (Retry-After, or DigitalOcean's ratelimit-reset).
        retry_after: Option<Duration>,
    },
    #[error("not found (404): {message}")]
    NotFound { message: String },
    #[error("answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("unreachable: {0}")]
    Unreachable(String),
    #[error("answer larger than {} MiB: not read", MAX_BODY >> 20)]
    TooLarge,
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("{0}")]
    Setup(String),
}

/// The client every platform's requests go through: no proxy, no redirects (a token must
/// not follow one), bounded connect and total time.
pub fn client(root: Option<reqwest::Certificate>) -> Result<reqwest::Client, reqwest::Error> {
    let builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("rollcall/", env!("CARGO_PKG_VERSION")));
    match root {
        Some(cert) => builder.add_root_certificate(cert),
        None => builder,
    }
    .build()
}

/// One request to a platform's API: a GET with the token as a bearer token.
pub struct Ask {
    pub url: String,
    pub token: secrecy::SecretString,
}

/// Sends `ask` and reads at most [`MAX_BODY`] of a successful answer.
pub async fn fetch(client: &reqwest::Client, ask: Ask) -> Result<Vec<u8>, ApiError> {
    use secrecy::ExposeSecret;
    let mut response = client
        .get(ask.url)
        .bearer_auth(ask.token.expose_secret())
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| ApiError::Unreachable(innermost(&e)))?;
    let status = response.status();
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY as u64)
    {
        return Err(if status.is_success() {
            ApiError::TooLarge
        } else {
            failure(status, response.headers(), b"")
        });
    }
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(ApiError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(ApiError::Unreachable(innermost(&e))),
        }
    }
    if status.is_success() {
        Ok(body)
    } else {
        Err(failure(status, response.headers(), &body))
    }
}

/// The innermost cause, which names what went wrong ("Connection refused", "operation
/// timed out"), where reqwest's own message names only the URL.
fn innermost(e: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let text = if e.is_timeout() {
        "no answer within 10 s".to_string()
    } else {
        cause.to_string()
    };
    text.chars().filter(|c| !c.is_control()).take(160).collect()
}

fn failure(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> ApiError {
    let message = message(body).unwrap_or_else(|| {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string()
    });
    match status.as_u16() {
        code @ (401 | 403) => ApiError::Refused {
            status: code,
            message,
        },
        429 => ApiError::RateLimited {
            message,
            retry_after: retry_after(headers, SystemTime::now()),
        },
        404 => ApiError::NotFound { message },
        code => ApiError::Status {
            status: code,
            message,
        },
    }
}

/// The error's own words, where the answer has them: DigitalOcean's and Kubernetes'
/// `message`, Fly's `error`. Clipped, with no control characters: it reaches the page.
fn message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let text = ["message", "error"]
        .iter()
        .find_map(|k| value.get(k)?.as_str())?;
    let clipped: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
    (!clipped.trim().is_empty()).then_some(clipped)
}

/// How long the API asked to be left alone: `Retry-After` in seconds, or DigitalOcean's
/// `ratelimit-reset` (Unix time when the oldest request expires), whichever is later.
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
    let after = number("retry-after").map(Duration::from_secs);
    let reset = number("ratelimit-reset").and_then(|at| {
        let at = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(at))?;
        at.duration_since(now).ok()
    });
    after.max(reset)
}

/// When to ask again: the interval after an answer; after failures the interval doubled
/// for each one in a row (10 min at most), or longer where a rate limit says so (1 h at
/// most).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub fn next(&mut self, interval: Duration, outcome: Result<(), &ApiError>) -> Duration {
        let Err(error) = outcome else {
            self.failures = 0;
            return interval;
        };
        self.failures = self.failures.saturating_add(1);
        let doubled = interval
            .saturating_mul(1 << self.failures.min(16))
            .min(MAX_BACKOFF)
            .max(interval);
        match error {
            ApiError::RateLimited {
                retry_after: Some(asked),
                ..
            } => doubled.max((*asked).min(MAX_RATE_LIMIT_WAIT)),
            _ => doubled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_on_failures_and_resets_on_an_answer() {
        let mut backoff = Backoff::default();
        let second = Duration::from_secs(1);
        let refused = ApiError::Refused {
            status: 401,
            message: "Unable to authenticate you.".into(),
        };
        let waits: Vec<u64> = (0..4)
            .map(|_| backoff.next(second, Err(&refused)).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16]);
        assert_eq!(backoff.next(second, Ok(())), second);
        let long = Duration::from_secs(400);
        assert_eq!(backoff.next(long, Err(&refused)), MAX_BACKOFF);
        // A rate limit's own word wins when it is longer, up to an hour.
        let limited = |secs| ApiError::RateLimited {
            message: String::new(),
            retry_after: Some(Duration::from_secs(secs)),
        };
        let mut backoff = Backoff::default();
        assert_eq!(backoff.next(second, Err(&limited(90))).as_secs(), 90);
        assert_eq!(backoff.next(second, Err(&limited(1))).as_secs(), 4);
        assert_eq!(
            backoff.next(second, Err(&limited(86_400))),
            MAX_RATE_LIMIT_WAIT
        );
    }

    #[test]
    fn a_long_list_is_read_past_not_kept() {
        let body = format!("[{}0]", "1,".repeat(100_000));
        let capped: Capped<u32> = serde_json::from_str(&body).unwrap();
        assert_eq!(capped.items.len(), MAX_INSTANCES);
        assert_eq!(capped.total, 100_001);
        assert!(capped.truncated());
        let short: Capped<u32> = serde_json::from_str("[1, 2]").unwrap();
        assert_eq!((short.items, short.total), (vec![1, 2], 2));
        let huge = format!("{{\"instances\": \"{}\"}}", "x".repeat(1 << 20));
        let err = serde_json::from_str::<Capped<u32>>(&huge).unwrap_err();
        assert!(malformed(&err, huge.as_bytes()).to_string().len() < 300);
    }

    #[test]
    fn retry_after_reads_either_header() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_444_931_800);
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now), None);
        headers.insert("ratelimit-reset", "1444931833".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(33)));
        headers.insert("retry-after", "60".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(60)));
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(33)));
    }

    #[test]
    fn error_messages_are_the_apis_own_words_clipped() {
        assert_eq!(
            message(br#"{"id":"unauthorized","message":"Unable to authenticate you."}"#),
            Some("Unable to authenticate you.".into())
        );
        assert_eq!(
            message(br#"{"error":"unauthorized"}"#),
            Some("unauthorized".into())
        );
        let long = format!(r#"{{"message":"{}\u0007"}}"#, "x".repeat(5000));
        assert_eq!(message(long.as_bytes()).map(|m| m.len()), Some(200));
        assert_eq!(message(b"<html>"), None);
    }
}
