//! What handlers can read: one small handle per component, each taken by the handlers
//! that need it (`State<Membership>`, `State<Drain>`, …), so a handler's signature says
//! what it touches. Nothing here does work; `app.rs` builds it from the running parts.

use std::sync::Arc;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;

use super::events::{Messaging, RelaySlots, StreamSlots, Watched};
use super::limits::Limits;
use super::page::{PageViews, ViewGate};
use super::peer::{PeerGate, Peers};
use super::probe::{ProbeGate, Probing};
use super::status::{PageSettings, StatusSources};
use crate::broadcast::Broadcaster;
use crate::discovery::announce::Announce;
use crate::discovery::report::Reports;
use crate::drain::Drain;
use crate::gossip::Rumours;
use crate::identity::Me;
use crate::membership::Membership;
use crate::metrics::Metrics;
use crate::prober::ViaLoadBalancer;
use crate::relay::Relay;
use crate::timeline::Timeline;
use crate::verify::Verifier;

/// The running parts the web layer reads, as handles.
#[derive(Clone, FromRef)]
pub struct AppState {
    pub me: Arc<Me>,
    pub membership: Membership,
    pub reports: Reports,
    pub announce: Announce,
    pub verifier: Verifier,
    pub inbox: Broadcaster,
    pub relay: Relay,
    pub timeline: Timeline,
    pub via_load_balancer: ViaLoadBalancer,
    pub drain: Drain,
    /// Cancelled when shutdown begins: long-lived streams end so draining can finish.
    pub shutdown: CancellationToken,
    pub metrics: Metrics,
    pub page: PageSettings,
    /// The web layer's own bounds.
    pub peer_gate: Arc<PeerGate>,
    pub probe_gate: Arc<ProbeGate>,
    /// News of membership changes, told on identity answers.
    pub rumours: Rumours,
    pub view_gate: Arc<ViewGate>,
    pub streams: StreamSlots,
    pub relay_streams: RelaySlots,
    pub limits: Arc<Limits>,
}

impl FromRef<AppState> for Messaging {
    fn from_ref(state: &AppState) -> Messaging {
        Messaging {
            me: state.me.clone(),
            inbox: state.inbox.clone(),
            membership: state.membership.clone(),
            client: state.verifier.client().clone(),
            relay: state.relay.clone(),
        }
    }
}

impl FromRef<AppState> for Watched {
    fn from_ref(state: &AppState) -> Watched {
        Watched {
            inbox: state.inbox.clone(),
            membership: state.membership.clone(),
            shutdown: state.shutdown.clone(),
        }
    }
}

impl FromRef<AppState> for Probing {
    fn from_ref(state: &AppState) -> Probing {
        Probing {
            membership: state.membership.clone(),
            verifier: state.verifier.clone(),
            gate: state.probe_gate.clone(),
        }
    }
}

impl FromRef<AppState> for Peers {
    fn from_ref(state: &AppState) -> Peers {
        Peers {
            membership: state.membership.clone(),
            verifier: state.verifier.clone(),
            metrics: state.metrics.clone(),
            gate: state.peer_gate.clone(),
        }
    }
}

impl FromRef<AppState> for PageViews {
    fn from_ref(state: &AppState) -> PageViews {
        PageViews {
            sources: StatusSources::from_ref(state),
            client: state.verifier.client().clone(),
            gate: state.view_gate.clone(),
        }
    }
}

impl FromRef<AppState> for StatusSources {
    fn from_ref(state: &AppState) -> StatusSources {
        StatusSources {
            me: state.me.clone(),
            membership: state.membership.clone(),
            reports: state.reports.clone(),
            relay: state.relay.clone(),
            timeline: state.timeline.clone(),
            via_load_balancer: state.via_load_balancer.clone(),
            drain: state.drain.clone(),
            page: state.page,
        }
    }
}
