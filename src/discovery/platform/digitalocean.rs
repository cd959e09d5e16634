//! DigitalOcean App Platform: `GET /v2/apps/{app_id}/instances` (digitalocean/openapi,
//! `apps_get_instances`) lists every running instance of every component of the app by
//! name and alias. It gives no addresses: it says who should be there, not where.

use serde::Deserialize;

use super::api::{ApiError, Ask, Capped, Lister, Listing, malformed};
use crate::config::{ApiToken, HttpUrl};
use crate::discovery::expected::{Listed, listed_name};

pub const DEFAULT_URL: &str = "https://api.digitalocean.com";

pub struct AppPlatform {
    pub base: HttpUrl,
    pub app_id: String,
    pub token: ApiToken,
    /// This replica's component, when its own instance is not in the list (SERVICE_NAME).
    pub service: String,
}

#[derive(Deserialize)]
struct Answer {
    instances: Capped<Instance>,
}

#[derive(Deserialize)]
struct Instance {
    #[serde(default)]
    component_name: String,
    #[serde(default)]
    instance_name: String,
    #[serde(default)]
    instance_alias: Option<String>,
}

impl Lister for AppPlatform {
    fn platform(&self) -> &'static str {
        "App Platform"
    }

    fn url(&self) -> String {
        self.base
            .join(&format!("/v2/apps/{}/instances", self.app_id))
    }

    fn ask(&self) -> Result<Ask, ApiError> {
        Ok(Ask {
            url: self.url(),
            token: self.token.expose().into(),
        })
    }

    /// The instances of this replica's component: the one its own instance belongs to,
    /// else the one named like its service.
    fn read(&self, body: &[u8], me: &str) -> Result<Listing, ApiError> {
        let answer: Answer = serde_json::from_slice(body).map_err(|e| malformed(&e, body))?;
        let component = answer
            .instances
            .items
            .iter()
            .find(|i| i.instance_name == me)
            .map_or(self.service.as_str(), |i| i.component_name.as_str());
        let mine: Vec<&Instance> = answer
            .instances
            .items
            .iter()
            .filter(|i| i.component_name == component && !i.instance_name.is_empty())
            .collect();
        Ok(Listing {
            scope: format!("component {}", crate::verify::clip(component)),
            truncated: answer.instances.truncated(),
            instances: mine
                .into_iter()
                .map(|i| Listed {
                    name: listed_name(&i.instance_name),
                    alias: i.instance_alias.as_deref().map(crate::verify::clip),
                    addr: None,
                    state: "running".into(),
                    running: true,
                })
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in digitalocean/openapi (`responses/examples.yml#/app_instances`).
    const EXAMPLE: &str =
        include_str!("../../../tests/fixtures/platform/digitalocean-instances.json");

    fn app(service: &str) -> AppPlatform {
        AppPlatform {
            base: DEFAULT_URL.parse().unwrap(),
            app_id: "4f6c71e2-1e90-4762-9fee-6cc4a0a9f2cf".into(),
            token: "dop_v1_example".parse().unwrap(),
            service: service.into(),
        }
    }

    #[test]
    fn lists_the_component_of_this_replicas_own_instance() {
        let listing = app("whatever")
            .read(EXAMPLE.as_bytes(), "sample-php-767c6b49c4-z8dll")
            .unwrap();
        assert_eq!(listing.scope, "component sample-php");
        let names: Vec<(&str, Option<&str>)> = listing
            .instances
            .iter()
            .map(|i| (i.name.as_str(), i.alias.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("sample-php-767c6b49c4-dkgpt", Some("sample-php-0")),
                ("sample-php-767c6b49c4-z8dll", Some("sample-php-1")),
            ]
        );
        assert!(
            listing
                .instances
                .iter()
                .all(|i| i.addr.is_none() && i.running)
        );
        assert_eq!(
            app("x").url(),
            "https://api.digitalocean.com/v2/apps/4f6c71e2-1e90-4762-9fee-6cc4a0a9f2cf/instances"
        );
    }

    #[test]
    fn falls_back_to_the_service_name_when_this_instance_is_not_listed() {
        let listing = app("sample-golang")
            .read(EXAMPLE.as_bytes(), "elsewhere")
            .unwrap();
        assert_eq!(listing.scope, "component sample-golang");
        assert_eq!(listing.instances.len(), 2);
    }

    #[test]
    fn a_malformed_answer_is_an_error_not_a_panic() {
        for body in [&b"{"[..], b"[]", b"{}", b"{\"instances\": 3}", b"\xff\xfe"] {
            assert!(matches!(
                app("x").read(body, "me"),
                Err(ApiError::Malformed(_))
            ));
        }
        // No instances is an answer: the list is empty.
        let empty = app("x").read(br#"{"instances": []}"#, "me").unwrap();
        assert!(empty.instances.is_empty());
    }
}
