//! Kubernetes, opt-in: `GET /api/v1/namespaces/{ns}/pods?labelSelector=…` with the pod's
//! service-account token lists this service's pods by name *and* address (the way JGroups
//! KUBE_PING and libcluster's Kubernetes strategy work), so it is a source of candidates
//! too. It needs a Role that may list pods (deploy/kubernetes-api.yaml).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::api::{ApiError, Ask, Capped, Lister, Listing, malformed};
use crate::config::HttpUrl;
use crate::discovery::expected::{Listed, listed_name};

/// Pods asked for in one request; more are reported as not read.
const PAGE: usize = 500;
/// A token file is a few KiB; anything bigger is not one.
const MAX_TOKEN: u64 = 64 << 10;

pub struct Kubernetes {
    pub base: HttpUrl,
    pub namespace: String,
    pub selector: String,
    pub token_file: PathBuf,
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    metadata: ListMeta,
    items: Capped<Pod>,
}

#[derive(Deserialize, Default)]
struct ListMeta {
    #[serde(rename = "continue", default)]
    more: Option<String>,
}

#[derive(Deserialize)]
struct Pod {
    metadata: PodMeta,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize)]
struct PodMeta {
    name: String,
    #[serde(rename = "deletionTimestamp", default)]
    deletion: Option<String>,
}

#[derive(Deserialize, Default)]
struct PodStatus {
    #[serde(default)]
    phase: Option<String>,
    #[serde(rename = "podIP", default)]
    pod_ip: Option<String>,
    #[serde(default)]
    conditions: Vec<Condition>,
}

#[derive(Deserialize)]
struct Condition {
    #[serde(rename = "type")]
    kind: String,
    status: String,
}

impl Kubernetes {
    /// The token, read again each time: projected tokens are rotated by the kubelet.
    fn token(&self) -> Result<String, ApiError> {
        use std::io::Read;
        let cannot = |e: std::io::Error| {
            ApiError::Setup(format!(
                "cannot read the service-account token {}: {e}",
                self.token_file.display()
            ))
        };
        let mut token = String::new();
        std::fs::File::open(&self.token_file)
            .map_err(cannot)?
            .take(MAX_TOKEN)
            .read_to_string(&mut token)
            .map_err(cannot)?;
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ApiError::Setup(format!(
                "{} holds no token",
                self.token_file.display()
            )));
        }
        Ok(token.to_string())
    }
}

impl Lister for Kubernetes {
    fn platform(&self) -> &'static str {
        "Kubernetes"
    }

    fn url(&self) -> String {
        self.base
            .join(&format!("/api/v1/namespaces/{}/pods", self.namespace))
    }

    fn ask(&self) -> Result<Ask, ApiError> {
        let limit = PAGE.to_string();
        let url = url::Url::parse_with_params(
            &self.url(),
            [
                ("labelSelector", self.selector.as_str()),
                ("limit", limit.as_str()),
            ],
        )
        .map_err(|e| ApiError::Setup(format!("bad API URL: {e}")))?;
        Ok(Ask {
            url: url.into(),
            token: self.token()?.into(),
        })
    }

    fn read(&self, body: &[u8], _me: &str) -> Result<Listing, ApiError> {
        let list: PodList = serde_json::from_slice(body).map_err(|e| malformed(&e, body))?;
        let more = list.metadata.more.is_some_and(|c| !c.is_empty());
        Ok(Listing {
            scope: format!(
                "pods {} in namespace {}",
                crate::verify::clip(&self.selector),
                self.namespace
            ),
            truncated: more || list.items.truncated(),
            instances: list.items.items.iter().map(listed).collect(),
        })
    }
}

fn listed(pod: &Pod) -> Listed {
    let phase = pod.status.phase.as_deref().unwrap_or("Unknown");
    let ready = pod
        .status
        .conditions
        .iter()
        .any(|c| c.kind == "Ready" && c.status == "True");
    let terminating = pod.metadata.deletion.is_some();
    let state = match (phase, terminating, ready) {
        (_, true, _) => "terminating".to_string(),
        ("Running", false, true) => "Running, ready".to_string(),
        ("Running", false, false) => "Running, not ready".to_string(),
        (other, false, _) => crate::verify::clip(other),
    };
    Listed {
        name: listed_name(&pod.metadata.name),
        alias: None,
        addr: pod
            .status
            .pod_ip
            .as_deref()
            .and_then(|ip| ip.parse::<IpAddr>().ok()),
        state,
        running: phase == "Running" && !terminating,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../tests/fixtures/platform/kubernetes-pods.json");

    fn cluster() -> Kubernetes {
        Kubernetes {
            base: "https://10.96.0.1:443".parse().unwrap(),
            namespace: "default".into(),
            selector: "app=rollcall".into(),
            token_file: "/nonexistent/token".into(),
        }
    }

    #[test]
    fn pods_are_listed_with_addresses_and_readiness() {
        let listing = cluster().read(EXAMPLE.as_bytes(), "me").unwrap();
        assert_eq!(listing.scope, "pods app=rollcall in namespace default");
        assert!(!listing.truncated);
        let running: Vec<&str> = listing
            .instances
            .iter()
            .filter(|i| i.running)
            .map(|i| i.state.as_str())
            .collect();
        assert_eq!(running.len(), 3, "{:?}", listing.instances);
        assert!(running.contains(&"Running, not ready"));
        assert!(listing.instances.iter().any(|i| !i.running));
        assert!(listing.instances.iter().all(|i| i.addr.is_some()));
        assert_eq!(
            cluster().url(),
            "https://10.96.0.1/api/v1/namespaces/default/pods"
        );
    }

    #[test]
    fn a_missing_token_is_said_plainly() {
        let err = cluster().ask().err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("cannot read the service-account token")),
            "{err:?}"
        );
    }

    #[test]
    fn a_continued_list_is_reported_as_truncated() {
        let body =
            br#"{"kind":"PodList","apiVersion":"v1","metadata":{"continue":"abc"},"items":[]}"#;
        assert!(cluster().read(body, "me").unwrap().truncated);
        assert!(matches!(
            cluster().read(br#"{"items": [{"metadata": {}}]}"#, "me"),
            Err(ApiError::Malformed(_))
        ));
    }
}
