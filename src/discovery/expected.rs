//! Who should be there: the instances a platform's API says run, matched by name against
//! the table whenever a view is built (so a death after the listing shows at once).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::membership::{Member, Snapshot, State};

/// How long the last listing stands for the platform's word while its API fails.
pub const KEEP_LISTING: Duration = Duration::from_secs(300);

/// A listed name as it is kept: whole (it must match the replica's own name, up to 253
/// bytes), without control characters.
pub fn listed_name(name: &str) -> String {
    name.chars().filter(|c| !c.is_control()).take(253).collect()
}

/// One instance as the platform lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    /// The platform's name for it, which is the replica's name there (App Platform's
    /// instance name is the container's hostname; a pod's name; a Machine's id).
    pub name: String,
    /// A second name the platform gives (App Platform's `main-service-0`, a Machine's name).
    pub alias: Option<String>,
    /// Where the platform says it listens (Kubernetes and Fly; App Platform gives none).
    pub addr: Option<IpAddr>,
    /// The platform's word on it: "running", "Running, not ready", "stopped".
    pub state: String,
    /// Whether it should be found: running, not on its way out.
    pub running: bool,
}

/// What a platform's API said, the last time it answered.
#[derive(Debug, Clone)]
pub struct Expected {
    /// "App Platform", "Kubernetes", "Fly".
    pub platform: &'static str,
    /// What was listed: "component main-service", "pods app=rollcall in default".
    pub scope: String,
    pub instances: Vec<Listed>,
    /// More instances than were read (a cap, or a list in pages).
    pub truncated: bool,
    pub listed_at: Instant,
}

/// What became of one listed instance.
#[derive(Debug, Clone, Copy)]
pub enum Match<'a> {
    ThisReplica,
    /// A member by that name: current if there is one, else the latest gone one.
    Member(&'a Member),
    NotFound,
}

impl Match<'_> {
    /// Found now: this replica, or a member alive or suspect.
    pub fn is_current(&self) -> bool {
        match self {
            Match::ThisReplica => true,
            Match::Member(m) => matches!(m.state, State::Alive | State::Suspect),
            Match::NotFound => false,
        }
    }
}

impl Expected {
    pub fn running(&self) -> impl Iterator<Item = &Listed> {
        self.instances.iter().filter(|i| i.running)
    }

    /// Whether the listing still speaks for the platform: answers are fresh each round,
    /// and a failing API's last answer stands for [`KEEP_LISTING`].
    pub fn is_current(&self, failed: bool) -> bool {
        !failed || self.listed_at.elapsed() < KEEP_LISTING
    }

    /// How `listed` stands in `snapshot`, `me` being this replica's name.
    pub fn find<'a>(listed: &Listed, snapshot: &'a Snapshot, me: &str) -> Match<'a> {
        if listed.name == me {
            return Match::ThisReplica;
        }
        let named = || {
            snapshot
                .members
                .iter()
                .filter(|m| m.identity.name == listed.name)
        };
        named()
            .find(|m| matches!(m.state, State::Alive | State::Suspect))
            .or_else(|| named().max_by_key(|m| m.state_since))
            .map_or(Match::NotFound, Match::Member)
    }

    /// Running instances no member by that name was ever found for, this replica
    /// aside. One that died or said goodbye has a card of its own, and counts as history
    /// (the listing lags a crash or a scale-down): it is not missing twice.
    pub fn missing<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        me: &'a str,
    ) -> impl Iterator<Item = &'a Listed> + 'a {
        self.running()
            .filter(move |i| matches!(Expected::find(i, snapshot, me), Match::NotFound))
    }

    /// Whether this replica is among the instances listed (else the listing is of
    /// something else: another component, or names that are not hostnames here).
    pub fn lists(&self, me: &str) -> bool {
        self.instances.iter().any(|i| i.name == me)
    }
}
