//! Fly.io, opt-in with a token: the Machines API's `GET /v1/apps/{app}/machines` lists the
//! app's Machines with their private IPv6 addresses and states.

use std::net::IpAddr;

use serde::Deserialize;

use super::api::{ApiError, Ask, Capped, Lister, Listing, malformed};
use crate::config::{ApiToken, HttpUrl};
use crate::discovery::expected::{Listed, listed_name};

pub const DEFAULT_URL: &str = "https://api.machines.dev";

pub struct Fly {
    pub base: HttpUrl,
    pub app: String,
    pub token: ApiToken,
    /// FLY_PROCESS_GROUP: only Machines of this replica's process group.
    pub process_group: Option<String>,
}

#[derive(Deserialize)]
struct Machine {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    private_ip: Option<String>,
    #[serde(default)]
    config: serde_json::Value,
}

impl Machine {
    fn process_group(&self) -> Option<&str> {
        self.config
            .get("metadata")?
            .get("fly_process_group")?
            .as_str()
    }
}

impl Lister for Fly {
    fn platform(&self) -> &'static str {
        "Fly"
    }

    fn url(&self) -> String {
        self.base.join(&format!("/v1/apps/{}/machines", self.app))
    }

    fn ask(&self) -> Result<Ask, ApiError> {
        Ok(Ask {
            url: self.url(),
            token: self.token.expose().into(),
        })
    }

    fn read(&self, body: &[u8], _me: &str) -> Result<Listing, ApiError> {
        let machines: Capped<Machine> =
            serde_json::from_slice(body).map_err(|e| malformed(&e, body))?;
        let mine: Vec<&Machine> = machines
            .items
            .iter()
            .filter(|m| match (&self.process_group, m.process_group()) {
                (Some(want), Some(group)) => want == group,
                _ => true,
            })
            .collect();
        let scope = match &self.process_group {
            Some(group) => format!(
                "app {}, process group {}",
                self.app,
                crate::verify::clip(group)
            ),
            None => format!("app {}", self.app),
        };
        Ok(Listing {
            scope,
            truncated: machines.truncated(),
            instances: mine
                .into_iter()
                .map(|m| {
                    let state = m.state.as_deref().unwrap_or("unknown");
                    Listed {
                        name: listed_name(&m.id),
                        alias: m.name.as_deref().map(crate::verify::clip),
                        addr: m
                            .private_ip
                            .as_deref()
                            .and_then(|ip| ip.parse::<IpAddr>().ok()),
                        state: match &m.region {
                            Some(region) => format!(
                                "{}, {}",
                                crate::verify::clip(state),
                                crate::verify::clip(region)
                            ),
                            None => crate::verify::clip(state),
                        },
                        running: state == "started",
                    }
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../tests/fixtures/platform/fly-machines.json");

    fn fly(group: Option<&str>) -> Fly {
        Fly {
            base: DEFAULT_URL.parse().unwrap(),
            app: "rollcall".into(),
            token: "fo1_example".parse().unwrap(),
            process_group: group.map(str::to_string),
        }
    }

    #[test]
    fn machines_are_listed_with_private_addresses_and_states() {
        let listing = fly(Some("app")).read(EXAMPLE.as_bytes(), "me").unwrap();
        assert_eq!(listing.instances.len(), 3);
        assert_eq!(listing.instances.iter().filter(|i| i.running).count(), 2);
        assert!(
            listing
                .instances
                .iter()
                .all(|i| i.addr.is_some_and(|a| a.is_ipv6()))
        );
        assert_eq!(
            fly(None).url(),
            "https://api.machines.dev/v1/apps/rollcall/machines"
        );
        // Another process group's Machines are not this service's replicas.
        assert!(
            fly(Some("worker"))
                .read(EXAMPLE.as_bytes(), "me")
                .unwrap()
                .instances
                .is_empty()
        );
    }

    #[test]
    fn a_malformed_answer_is_an_error() {
        assert!(matches!(
            fly(None).read(b"{}", "me"),
            Err(ApiError::Malformed(_))
        ));
    }
}
