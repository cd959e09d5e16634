//! The load balancer's side of the comparison: every few seconds, where `PUBLIC_URL` is
//! set, a call through the public address, to set beside direct calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::client::PeerClient;
use crate::config::HttpUrl;

/// A call through the public address (the load balancer), to set beside direct calls.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadBalancerCall {
    pub url: String,
    pub ok: bool,
    pub rtt_ms: Option<f64>,
    /// The replica that answered.
    pub answered_by: Option<String>,
    pub error: Option<String>,
}

/// The last call through the public address, to compare with direct calls.
#[derive(Clone, Default)]
pub struct ViaLoadBalancer(Arc<Mutex<Option<LoadBalancerCall>>>);

impl ViaLoadBalancer {
    pub fn latest(&self) -> Option<LoadBalancerCall> {
        self.0.lock().ok().and_then(|c| c.clone())
    }

    fn set(&self, call: LoadBalancerCall) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(call);
        }
    }
}

/// Every few seconds, where `PUBLIC_URL` is set, asks the public address who answers and
/// how long it takes.
pub async fn run_load_balancer(
    client: PeerClient,
    public: Option<HttpUrl>,
    latest: ViaLoadBalancer,
) {
    let Some(public) = public else {
        return;
    };
    let url = public.join("/api/identity");
    loop {
        let answer = match client.get_url(&url).await {
            Ok((body, rtt)) => crate::client::parse_identity(&body).map(|id| (id, rtt)),
            Err(e) => Err(e),
        };
        let call = match answer {
            Ok((identity, rtt)) => LoadBalancerCall {
                url: url.clone(),
                ok: true,
                rtt_ms: Some(rtt),
                answered_by: Some(identity.instance_id),
                error: None,
            },
            Err(e) => LoadBalancerCall {
                url: url.clone(),
                ok: false,
                rtt_ms: None,
                answered_by: None,
                error: Some(e.to_string()),
            },
        };
        latest.set(call);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}
