//! The one place that decides what a candidate address is.
//!
//! A scan hit, a registry row or a DNS answer is only a claim. The address is asked for
//! its identity: a replica of this service answering as itself is a member; one answering
//! as somebody else is an alias (a load balancer or service IP); anything else is foreign.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::client::{CallError, PeerClient, Reply};
use crate::config::Secret;
use crate::identity::Me;
use crate::membership::MAX_MEMBERS;
use crate::proof;
use crate::wire::{Identity, is_display_text};

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// With the round trip of the verifying call: the member's first RTT.
    Member(Identity, f64),
    /// The address answered with the identity of a replica that lives elsewhere.
    Alias(Identity),
    Foreign(String),
    /// Our own address.
    Myself,
    /// Nothing answered: no finding at all.
    Unreachable(String),
}

/// Asks addresses who they are, with proofs when CLUSTER_SECRET is set: the one way any
/// stage (discovery, the prober, `/peer`) calls another replica's identity.
#[derive(Clone)]
pub struct Verifier {
    client: PeerClient,
    me: Arc<Me>,
    secret: Option<Secret>,
}

impl Verifier {
    /// `secret` is the usable secret (never the placeholder), if any.
    pub fn new(client: PeerClient, me: Arc<Me>, secret: Option<Secret>) -> Verifier {
        Verifier { client, me, secret }
    }

    pub fn client(&self) -> &PeerClient {
        &self.client
    }

    pub fn me(&self) -> &Arc<Me> {
        &self.me
    }

    /// The secret proofs are made with, when membership is proven.
    pub fn secret(&self) -> Option<&Secret> {
        self.secret.as_ref()
    }

    pub async fn verify(&self, candidate: SocketAddr) -> Verdict {
        judge(
            candidate,
            self.ask(candidate).await,
            self.me.service(),
            self.me.id(),
            self.secret.is_some(),
        )
    }

    /// Asks `addr` who it is. With CLUSTER_SECRET set, the answer must carry a valid proof
    /// for a fresh nonce, bound to us as challenger and to the address the identity names:
    /// a copied, replayed or relayed identity is refused (or, relayed unchanged, is an
    /// alias).
    pub async fn ask(&self, addr: SocketAddr) -> Result<Reply, CallError> {
        self.ask_with(addr, true).await
    }

    /// [`Verifier::ask`], with the member's mesh row only when `mesh` (it is most of an
    /// answer's bytes, and the prober needs it only now and then).
    pub async fn ask_with(&self, addr: SocketAddr, mesh: bool) -> Result<Reply, CallError> {
        let Some(secret) = &self.secret else {
            return self.client.identity(addr, None, self.me.id(), mesh).await;
        };
        let nonce = proof::nonce();
        let me = self.me.id();
        let reply = self.client.identity(addr, Some(&nonce), me, mesh).await?;
        if proof::check(secret, &nonce, me, &reply.identity) {
            Ok(reply)
        } else if reply.identity.service != self.me.service() {
            Err(CallError::OtherService(clip(&reply.identity.service)))
        } else {
            Err(CallError::BadProof)
        }
    }
}

/// How a foreign finding begins when the address answers as this service but the two
/// sides do not share a CLUSTER_SECRET.
const PROOF_FAILED: &str = "no valid proof of CLUSTER_SECRET";
const PROOF_REQUIRED: &str = "requires a CLUSTER_SECRET proof";

/// Whether a foreign finding is this service behind a different (or missing) secret.
pub fn fails_proof(reason: &str) -> bool {
    reason.starts_with(PROOF_FAILED) || reason.starts_with(PROOF_REQUIRED)
}

/// The decision itself, apart from the network call.
pub fn judge(
    candidate: SocketAddr,
    answer: Result<Reply, CallError>,
    service: &str,
    my_id: &str,
    have_secret: bool,
) -> Verdict {
    let Reply {
        identity, rtt_ms, ..
    } = match answer {
        Ok(reply) => reply,
        Err(e) if e.is_connect() => return Verdict::Unreachable(e.to_string()),
        Err(CallError::BadProof) => {
            return Verdict::Foreign(format!(
                "{PROOF_FAILED}: its secret differs, or it has none"
            ));
        }
        Err(CallError::OtherService(other)) => {
            return Verdict::Foreign(format!("service '{other}' != '{service}'"));
        }
        Err(e) => return Verdict::Foreign(e.to_string()),
    };
    if let Err(why) = plausible(&identity) {
        return Verdict::Foreign(why);
    }
    if identity.service != service {
        return Verdict::Foreign(format!(
            "service '{}' != '{}'",
            clip(&identity.service),
            service
        ));
    }
    if identity.requires_proof && !have_secret {
        // It would refuse our (missing) proof: say so, rather than count it reachable.
        return Verdict::Foreign(format!(
            "{PROOF_REQUIRED}, and this replica has no secret: \
             it does not admit this replica"
        ));
    }
    match (identity.addr == candidate, identity.instance_id == my_id) {
        (true, true) => Verdict::Myself,
        (true, false) => Verdict::Member(identity, rtt_ms),
        (false, _) => Verdict::Alias(identity),
    }
}

/// Rejects identities no replica would send, so nothing odd reaches the page or the table.
fn plausible(identity: &Identity) -> Result<(), String> {
    if !crate::wire::is_instance_id(&identity.instance_id) {
        return Err("malformed instance_id".into());
    }
    if !is_display_text(&identity.name) || !is_display_text(&identity.service) {
        return Err("name or service longer than 253 bytes or with control characters".into());
    }
    if identity
        .mesh
        .as_ref()
        .is_some_and(|row| row.len() > MAX_MEMBERS)
    {
        return Err(format!("mesh row of more than {MAX_MEMBERS} members"));
    }
    if identity.addr.ip().is_unspecified() || identity.addr.port() == 0 {
        return Err(format!("claims unusable address {}", identity.addr));
    }
    Ok(())
}

/// Keeps a hostile peer's or client's string from filling the page or a log.
pub fn clip(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: &str, service: &str, addr: &str) -> Identity {
        Identity {
            instance_id: id.into(),
            name: "n".into(),
            service: service.into(),
            addr: addr.parse().unwrap(),
            version: String::new(),
            started_at: String::new(),
            platform: String::new(),
            system: Default::default(),
            proof: None,
            mesh: None,
            view_hash: None,
            requires_proof: false,
            leaving: false,
            news: Vec::new(),
        }
    }

    const AT: &str = "127.0.0.3:8080";

    fn judge_at(answer: Result<Identity, CallError>) -> Verdict {
        let reply = answer.map(|identity| Reply {
            identity,
            status: 200,
            rtt_ms: 0.5,
        });
        judge(AT.parse().unwrap(), reply, "svc", "ME", false)
    }

    #[test]
    fn member_alias_foreign_myself() {
        let peer = identity("P1", "svc", AT);
        assert_eq!(judge_at(Ok(peer.clone())), Verdict::Member(peer, 0.5));

        let elsewhere = identity("P2", "svc", "127.0.0.4:8080");
        assert_eq!(judge_at(Ok(elsewhere.clone())), Verdict::Alias(elsewhere));

        assert_eq!(
            judge_at(Ok(identity("X", "api", AT))),
            Verdict::Foreign("service 'api' != 'svc'".into())
        );
        assert_eq!(judge_at(Ok(identity("ME", "svc", AT))), Verdict::Myself);
        // Something routing to us from another address (a load balancer) is an alias.
        assert!(matches!(
            judge_at(Ok(identity("ME", "svc", "127.0.0.9:8080"))),
            Verdict::Alias(_)
        ));
    }

    #[test]
    fn errors_and_implausible_identities() {
        assert!(matches!(
            judge_at(Err(CallError::Connect("refused".into()))),
            Verdict::Unreachable(_)
        ));
        assert!(matches!(
            judge_at(Err(CallError::Timeout)),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge_at(Err(CallError::NotIdentity("x".into()))),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge_at(Ok(identity("<script>", "svc", AT))),
            Verdict::Foreign(_)
        ));
        assert!(matches!(
            judge_at(Ok(identity("P", "svc", "0.0.0.0:8080"))),
            Verdict::Foreign(_)
        ));
    }
}
