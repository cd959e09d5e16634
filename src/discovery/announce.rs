//! The announce method: replicas that found this one say hello (`POST /api/hello`), and
//! leave with a goodbye (`POST /api/goodbye`). A hello is only a claim: it must come from
//! the address it names, and that address is called back before anyone is admitted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc};

use super::admit::Admit;
use super::announcements::{Announcements, InFlight, Refused};
use super::candidate::Candidate;
use crate::identity::Me;
use crate::membership::Membership;
use crate::verify::clip;
use crate::wire::{Identity, Method};

/// Verifications of announcements in flight at once (each one short call).
const CONCURRENCY: usize = 8;

/// Why a hello or goodbye was turned down.
#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    /// The claim is not the caller's to make.
    #[error("{0}")]
    Forbidden(String),
    /// The queue has no room for this caller now.
    #[error("{0}")]
    Busy(Refused),
    #[error("{instance_id} is not a member at {addr}")]
    NotMember {
        instance_id: String,
        addr: SocketAddr,
    },
}

/// What hellos and goodbyes need: who we are, the table, the queue.
#[derive(Clone)]
pub struct Announce {
    pub me: Arc<Me>,
    pub membership: Membership,
    pub announcements: Announcements,
}

impl Announce {
    /// Queues a hello's claimed address for a call back.
    pub fn hello(&self, claim: &Identity, caller: SocketAddr) -> Result<(), AnnounceError> {
        self.claimed_by_caller(claim, caller)?;
        // A load balancer's address answers as some replica: a hello from it is no replica's.
        let snapshot = self.membership.snapshot();
        if snapshot
            .aliases
            .iter()
            .any(|(a, _)| a.ip().to_canonical() == caller.ip().to_canonical())
        {
            return Err(AnnounceError::Forbidden(format!(
                "{} is a load-balanced address, not a replica",
                caller.ip()
            )));
        }
        self.announcements
            .submit(claim.addr)
            .map_err(|refused| match refused {
                Refused::OutOfScope(_) => AnnounceError::Forbidden(refused.to_string()),
                _ => AnnounceError::Busy(refused),
            })
    }

    /// A member shutting down gracefully turns `left` at once.
    pub fn goodbye(&self, claim: &Identity, caller: SocketAddr) -> Result<(), AnnounceError> {
        self.claimed_by_caller(claim, caller)?;
        let known = self
            .membership
            .snapshot()
            .member(&claim.instance_id)
            .is_some_and(|m| m.identity.addr == claim.addr);
        if !known || !self.membership.left(&claim.instance_id) {
            return Err(AnnounceError::NotMember {
                instance_id: claim.instance_id.clone(),
                addr: claim.addr,
            });
        }
        Ok(())
    }

    /// Checks that a replica's announcement comes from the address it claims, so nobody
    /// can make this replica call arbitrary addresses.
    fn claimed_by_caller(&self, claim: &Identity, caller: SocketAddr) -> Result<(), AnnounceError> {
        if claim.service != self.me.service() {
            return Err(AnnounceError::Forbidden(format!(
                "service '{}' is not '{}'",
                clip(&claim.service),
                self.me.service()
            )));
        }
        let canonical = |ip: IpAddr| ip.to_canonical();
        if canonical(claim.addr.ip()) != canonical(caller.ip()) {
            return Err(AnnounceError::Forbidden(format!(
                "claimed address {} is not the caller's address {}",
                claim.addr.ip(),
                caller.ip()
            )));
        }
        Ok(())
    }
}

/// Verifies announcements until the channel closes.
pub async fn run(
    admit: Admit,
    announcements: Announcements,
    mut announced: mpsc::Receiver<SocketAddr>,
) {
    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(addr) = announced.recv().await {
        if addr == admit.verifier.me().addr()
            || admit.membership.tag_source(addr, Method::Announce, None)
        {
            announcements.done(addr, false);
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let admit = admit.clone();
        let announcements = announcements.clone();
        tokio::spawn(async move {
            // Released even if verification panics: a caller's count must never stick.
            let mut in_flight = InFlight {
                announcements,
                addr,
                failed: true,
            };
            in_flight.failed = !admit
                .verify_and_apply(Candidate::new(addr, Method::Announce))
                .await;
            drop(in_flight);
            drop(permit);
        });
    }
}
