//! What travels between replicas and to clients: the shared vocabulary every stage speaks.
//!
//! This module is the bottom of the graph: it imports nothing of ours, so any stage can use
//! it without depending on any other.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A replica's identity as it travels between replicas and to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub instance_id: String,
    pub name: String,
    pub service: String,
    pub addr: SocketAddr,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub started_at: String,
    #[serde(default)]
    pub platform: String,
    #[serde(default)]
    pub system: SystemFigures,
    /// The answer to a challenge (`/api/identity?nonce=…`) when CLUSTER_SECRET is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// This replica's row of the mesh: its own direct probes of every member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<BTreeMap<String, MeshCell>>,
    /// A short hash of the member set this replica sees (views agree when hashes match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_hash: Option<String>,
    /// This replica admits only peers that prove CLUSTER_SECRET, so a peer without the
    /// secret knows it is being refused rather than ignored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requires_proof: bool,
    /// Shutting down: a `left` member whose probes say otherwise was never gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// Changes this replica saw lately, carried on its answers so they spread without
    /// messages of their own (SWIM's piggybacking). A hint to check, never a verdict.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub news: Vec<News>,
}

/// One change a replica saw: `instance_id` at `addr` turned `state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct News {
    pub instance_id: String,
    pub addr: SocketAddr,
    pub state: Heard,
}

/// The state a piece of news reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Heard {
    Alive,
    Suspect,
    Dead,
    Left,
    /// A state a later version tells of: ignored, so a mixed-version rollout still parses.
    #[serde(other)]
    Other,
}

/// `GET /api/probe?id=…`: whether the asked replica reached that member just now, for a
/// replica that could not (SWIM's indirect probe).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndirectProbe {
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An instance id as replicas make them: short, ASCII letters, digits, `-` and `_`.
pub fn is_instance_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A name or service as a person would read it: no control characters (a newline in a
/// log line or a page is someone forging a line), at most 253 bytes (a DNS name).
pub fn is_display_text(s: &str) -> bool {
    s.len() <= 253 && !s.chars().any(char::is_control)
}

/// One replica's latest direct probe of another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshCell {
    pub ok: bool,
    #[serde(default)]
    pub rtt_ms: Option<f64>,
    #[serde(default)]
    pub last_ok_ms_ago: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SystemFigures {
    pub cpus: usize,
    /// This process's CPU use, as a share of the whole machine (0-100).
    pub cpu_pct: f32,
    pub mem_total_bytes: u64,
    pub mem_used_bytes: u64,
    pub rss_bytes: u64,
    pub uptime_secs: u64,
}

/// A way of finding replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Scan,
    Registry,
    Dns,
    Seed,
    /// The platform's own API: who it says runs (names; on Kubernetes and Fly, addresses).
    Platform,
    Announce,
}

impl Method {
    /// Whether the method lists replicas by itself (so finding fewer than expected is a
    /// partial result); announce only hears from replicas that found us first.
    pub fn enumerates(self) -> bool {
        self != Method::Announce
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Scan => "scan",
            Method::Registry => "registry",
            Method::Dns => "dns",
            Method::Seed => "seed",
            Method::Platform => "platform",
            Method::Announce => "announce",
        }
    }
}

/// How well a method (or one piece of its evidence) worked here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodStatus {
    /// Found every replica it could be expected to.
    Works,
    /// Found some.
    Partial,
    /// Ran, and found none (or failed).
    Fails,
    /// Switched off here.
    Off,
}

impl MethodStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MethodStatus::Works => "works",
            MethodStatus::Partial => "partial",
            MethodStatus::Fails => "fails",
            MethodStatus::Off => "off",
        }
    }
}

impl std::fmt::Display for MethodStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something that happened to the cluster, as one replica saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub at: String,
    /// joined, alive, suspect, dead, left, restarted, conflict, forgotten, foreign, alias,
    /// or a source's error (registry, dns).
    pub kind: String,
    pub instance_id: Option<String>,
    pub name: Option<String>,
    pub addr: Option<SocketAddr>,
    pub detail: String,
    /// The replica that saw it (set when timelines of several replicas are merged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}
