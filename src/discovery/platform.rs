//! The platform method: ask the platform's own API who it runs. On App Platform that is
//! names only (who should be there, not where); on Kubernetes and Fly names and
//! addresses, so listed instances are candidates too. The listing becomes the expected
//! set the views match members against by name.
//!
//! It never blocks start-up (it is a source like any other), every request is bounded in
//! time and size, and refusals, rate limits and broken answers slow it down and are said.

pub mod api;
pub mod digitalocean;
pub mod fly;
pub mod kubernetes;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::api::{ApiError, Backoff, Lister, Listing};
use super::candidate::Candidate;
use super::expected::{Expected, KEEP_LISTING};
use super::report::Report;
use super::source::{Round, SETTLE, Source};
use crate::config::{HttpUrl, PlatformApi, Settings};
use crate::identity::{Env, Me, PlatformName};
use crate::membership::Snapshot;
use crate::wire::Method;

pub struct PlatformSource {
    lister: Box<dyn Lister>,
    client: reqwest::Client,
    me: Arc<Me>,
    port: u16,
    interval: Duration,
    backoff: Backoff,
    /// The last answer, kept through failures for [`KEEP_LISTING`].
    last: Option<Expected>,
    /// Decided when a round is judged: the interval, or longer after a failure.
    wait: Duration,
    failing: bool,
}

impl PlatformSource {
    /// The method as the settings and the platform's variables make it, or why it is off.
    pub fn new(settings: &Settings, me: &Arc<Me>, env: Env) -> Result<PlatformSource, String> {
        let (lister, root) = lister(settings, me, env)?;
        let client = api::client(root).map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(PlatformSource {
            lister,
            client,
            me: me.clone(),
            port: settings.port,
            interval: settings.platform_api_interval,
            backoff: Backoff::default(),
            last: None,
            wait: settings.platform_api_interval,
            failing: false,
        })
    }

    fn name(&self) -> String {
        self.me.identity().name
    }

    async fn ask(&self) -> Result<Listing, ApiError> {
        let body = api::fetch(&self.client, self.lister.ask()?).await?;
        self.lister.read(&body, &self.name())
    }

    fn answered(&mut self, listing: Listing) -> Report {
        if self.failing {
            tracing::info!("platform API answers again");
        }
        self.failing = false;
        self.wait = self.backoff.next(self.interval, Ok(()));
        // The counts and names are told when the page is built (they change with the
        // table); this says what only the answer knows.
        let mut notes = Vec::new();
        if listing.truncated {
            notes.push(format!(
                "only the first {} instances were read",
                listing.instances.len()
            ));
        }
        if listing.instances.iter().all(|i| i.addr.is_none()) && !listing.instances.is_empty() {
            notes.push(
                "The API gives names, not addresses: other methods must find the replicas"
                    .to_string(),
            );
        }
        let detail = notes.join(". ");
        // A name twice (a broken answer) is one instance.
        let mut names = std::collections::HashSet::new();
        let mut instances = listing.instances;
        instances.retain(|i| names.insert(i.name.clone()));
        self.last = Some(Expected {
            platform: self.lister.platform(),
            scope: listing.scope,
            instances,
            truncated: listing.truncated,
            listed_at: Instant::now(),
        });
        Report {
            detail,
            expected: self.last.clone(),
            ..Report::default()
        }
    }

    fn failed(&mut self, error: &ApiError) -> Report {
        if !self.failing {
            tracing::warn!(%error, url = %self.lister.url(), "platform API failed");
        }
        self.failing = true;
        self.wait = self.backoff.next(self.interval, Err(error));
        let kept = self
            .last
            .as_ref()
            .filter(|last| last.listed_at.elapsed() < KEEP_LISTING);
        let mut detail = format!(
            "{}: {error}; next try in {} s",
            self.lister.url(),
            self.wait.as_secs()
        );
        if matches!(error, ApiError::Refused { .. }) {
            detail.push_str(" (restart the replica after fixing the token to ask at once)");
        }
        if kept.is_some() {
            detail.push_str(&format!(
                "; its last answer stands for {} min",
                KEEP_LISTING.as_secs() / 60
            ));
        }
        Report {
            detail,
            failed: true,
            expected: kept.cloned(),
            ..Report::default()
        }
    }
}

impl Source for PlatformSource {
    type Found = Result<Listing, ApiError>;
    const METHOD: Method = Method::Platform;

    fn starting(&self) -> Option<String> {
        Some(format!("asking {}", self.lister.url()))
    }

    async fn gather(&mut self) -> Round<Self::Found> {
        let found = self.ask().await;
        let me = self.name();
        let candidates = match &found {
            Ok(listing) => listing
                .instances
                .iter()
                .filter(|i| i.running && i.name != me)
                .filter_map(|i| i.addr)
                .map(|ip| Candidate::new(SocketAddr::new(ip, self.port), Method::Platform))
                .collect(),
            Err(_) => Vec::new(),
        };
        Round { candidates, found }
    }

    /// Addresses get their verification; names alone are matched when a view is built.
    fn settle(&self, found: &Self::Found) -> Duration {
        match found {
            Ok(listing) if listing.instances.iter().any(|i| i.addr.is_some()) => SETTLE,
            _ => Duration::ZERO,
        }
    }

    fn judge(&mut self, found: Self::Found, _snapshot: &Snapshot) -> Report {
        match found {
            Ok(listing) => self.answered(listing),
            Err(error) => self.failed(&error),
        }
    }

    fn pause(&mut self, took: Duration) -> Duration {
        self.wait.saturating_sub(took)
    }
}

/// The API to ask and the certificate authority to trust for it, or why none is asked.
fn lister(
    settings: &Settings,
    me: &Me,
    env: Env,
) -> Result<(Box<dyn Lister>, Option<reqwest::Certificate>), String> {
    let base = |default: &str| -> Result<HttpUrl, String> {
        match &settings.platform_api_url {
            Some(url) => Ok(url.clone()),
            None => default
                .parse()
                .map_err(|e| format!("bad default API URL {default}: {e}")),
        }
    };
    let choice = match settings.platform_api {
        PlatformApi::Off => return Err("PLATFORM_API=off".into()),
        PlatformApi::Auto => match (
            &settings.digitalocean_token,
            &settings.app_id,
            &settings.fly_api_token,
        ) {
            (Some(_), Some(_), _) => PlatformApi::Digitalocean,
            (_, _, Some(_)) => PlatformApi::Fly,
            (Some(_), None, _) => {
                return Err(
                    "DIGITALOCEAN_TOKEN is set but APP_ID is not (`${APP_ID}` in the \
                            app spec)"
                        .into(),
                );
            }
            _ => return Err(why_off(me.platform.name)),
        },
        given => given,
    };
    match choice {
        PlatformApi::Digitalocean => {
            let (Some(token), Some(app_id)) = (&settings.digitalocean_token, &settings.app_id)
            else {
                return Err("PLATFORM_API=digitalocean needs DIGITALOCEAN_TOKEN and APP_ID".into());
            };
            Ok((
                Box::new(digitalocean::AppPlatform {
                    base: base(digitalocean::DEFAULT_URL)?,
                    app_id: app_id.clone(),
                    token: token.clone(),
                    service: me.service().to_string(),
                }),
                None,
            ))
        }
        PlatformApi::Fly => {
            let token = settings
                .fly_api_token
                .clone()
                .ok_or("PLATFORM_API=fly needs FLY_API_TOKEN")?;
            // Fly sets FLY_APP_NAME, which is also the service's name by default.
            let app = env("FLY_APP_NAME").unwrap_or_else(|| me.service().to_string());
            let app = crate::config::path_segment(&app).map_err(|e| format!("the Fly app {e}"))?;
            Ok((
                Box::new(fly::Fly {
                    base: base(fly::DEFAULT_URL)?,
                    app,
                    token,
                    process_group: env("FLY_PROCESS_GROUP").filter(|g| !g.is_empty()),
                }),
                None,
            ))
        }
        PlatformApi::Kubernetes => kubernetes(settings, me, env, base),
        PlatformApi::Auto | PlatformApi::Off => Err("PLATFORM_API=off".into()),
    }
}

fn kubernetes(
    settings: &Settings,
    me: &Me,
    env: Env,
    base: impl Fn(&str) -> Result<HttpUrl, String>,
) -> Result<(Box<dyn Lister>, Option<reqwest::Certificate>), String> {
    let dir = settings
        .platform_api_token_file
        .parent()
        .unwrap_or(Path::new("."));
    let default = match (
        env("KUBERNETES_SERVICE_HOST"),
        env("KUBERNETES_SERVICE_PORT"),
    ) {
        (Some(host), port) => {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("https://{host}:{}", port.as_deref().unwrap_or("443"))
        }
        (None, _) if settings.platform_api_url.is_some() => String::new(),
        (None, _) => {
            return Err(
                "PLATFORM_API=kubernetes, but KUBERNETES_SERVICE_HOST is not set and \
                 PLATFORM_API_URL is not given"
                    .into(),
            );
        }
    };
    let base = base(&default)?;
    let namespace = env("POD_NAMESPACE")
        .or_else(|| std::fs::read_to_string(dir.join("namespace")).ok())
        .ok_or(
            "PLATFORM_API=kubernetes needs the pod's namespace: set POD_NAMESPACE \
             (fieldRef metadata.namespace) or mount the service-account token",
        )?;
    let namespace =
        crate::config::path_segment(&namespace).map_err(|e| format!("the namespace {e}"))?;
    let root = match std::fs::read(dir.join("ca.crt")) {
        Ok(pem) => Some(
            reqwest::Certificate::from_pem(&pem)
                .map_err(|e| format!("{}: {e}", dir.join("ca.crt").display()))?,
        ),
        Err(_) => None,
    };
    Ok((
        Box::new(kubernetes::Kubernetes {
            base,
            namespace,
            selector: settings
                .platform_api_selector
                .clone()
                .unwrap_or_else(|| format!("app={}", me.service())),
            token_file: settings.platform_api_token_file.clone(),
        }),
        root,
    ))
}

/// Why no API is asked, in the terms of the platform this replica runs on.
fn why_off(platform: PlatformName) -> String {
    match platform {
        PlatformName::DigitalOcean => "no token: set DIGITALOCEAN_TOKEN (a read-only token, as a \
             secret) and APP_ID (${APP_ID}) to ask App Platform which instances run"
            .into(),
        PlatformName::Kubernetes => "opt-in: set PLATFORM_API=kubernetes with a service \
             account allowed to list pods (deploy/kubernetes-api.yaml)"
            .into(),
        PlatformName::Fly => "no token: set FLY_API_TOKEN (fly secrets set) to ask the \
             Machines API which Machines run"
            .into(),
        _ => "no platform API token configured (App Platform: DIGITALOCEAN_TOKEN and APP_ID; \
              Fly: FLY_API_TOKEN; Kubernetes: PLATFORM_API=kubernetes)"
            .into(),
    }
}
