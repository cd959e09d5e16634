//! Proof that a peer holds `CLUSTER_SECRET`.
//!
//! The proof is HMAC-SHA256 over a domain-separated, length-prefixed tuple: purpose,
//! the challenger's fresh nonce, the challenger's instance id, the prover's instance id,
//! service and the prover's own address. A proof fetched from a real replica and relayed
//! by a neighbour therefore proves that replica at *its* address: the neighbour answering
//! at another address is an alias, never that member.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Secret;
use crate::wire::Identity;

type HmacSha256 = Hmac<Sha256>;

/// What a proof is for; a MAC made for one purpose never verifies for another.
const PURPOSE_IDENTITY: &str = "rollcall/identity/v2";

/// A fresh challenge: 16 random bytes, hex.
pub fn nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

/// Who is challenged, by whom, and where: everything a proof binds.
#[derive(Debug, Clone, Copy)]
pub struct Challenge<'a> {
    pub nonce: &'a str,
    pub challenger: &'a str,
    pub prover: &'a str,
    pub service: &'a str,
    pub addr: std::net::SocketAddr,
}

fn mac(key: &[u8], purpose: &str, fields: &[&str]) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for field in std::iter::once(&purpose).chain(fields) {
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field.as_bytes());
    }
    mac
}

/// A MAC with the current secret over `purpose` and `fields`, hex.
pub fn sign(secret: &Secret, purpose: &str, fields: &[&str]) -> String {
    hex(&mac(secret.current(), purpose, fields)
        .finalize()
        .into_bytes())
}

/// Whether `mac_hex` signs `purpose` and `fields` under any accepted secret, compared in
/// constant time.
pub fn verify(secret: &Secret, purpose: &str, fields: &[&str], mac_hex: &str) -> bool {
    let Some(tag) = unhex(mac_hex) else {
        return false;
    };
    secret
        .accepted()
        .any(|key| mac(key, purpose, fields).verify_slice(&tag).is_ok())
}

impl Challenge<'_> {
    fn fields(&self) -> [String; 5] {
        [
            self.nonce.to_string(),
            self.challenger.to_string(),
            self.prover.to_string(),
            self.service.to_string(),
            self.addr.to_string(),
        ]
    }
}

/// Our answer to a challenge, with the current secret.
pub fn prove(secret: &Secret, challenge: &Challenge<'_>) -> String {
    let fields = challenge.fields();
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    sign(secret, PURPOSE_IDENTITY, &fields)
}

/// Whether `identity` carries a valid answer to `nonce` from `challenger`, for the
/// identity's own instance id, service and address, under any accepted secret (current or
/// previous, during a rotation).
pub fn check(secret: &Secret, nonce: &str, challenger: &str, identity: &Identity) -> bool {
    let Some(proof) = identity.proof.as_deref() else {
        return false;
    };
    let challenge = Challenge {
        nonce,
        challenger,
        prover: &identity.instance_id,
        service: &identity.service,
        addr: identity.addr,
    };
    let fields = challenge.fields();
    let fields: Vec<&str> = fields.iter().map(String::as_str).collect();
    verify(secret, PURPOSE_IDENTITY, &fields, proof)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(proof: Option<String>) -> Identity {
        Identity {
            instance_id: "01JABC".into(),
            name: "n".into(),
            service: "svc".into(),
            addr: "127.0.0.2:80".parse().unwrap(),
            version: String::new(),
            started_at: String::new(),
            platform: String::new(),
            system: Default::default(),
            proof,
            mesh: None,
            view_hash: None,
            requires_proof: false,
            leaving: false,
            news: Vec::new(),
        }
    }

    fn secret(s: &str) -> Secret {
        s.parse().unwrap()
    }

    fn answer(secret: &Secret, nonce: &str, challenger: &str, id: &Identity) -> Identity {
        let challenge = Challenge {
            nonce,
            challenger,
            prover: &id.instance_id,
            service: &id.service,
            addr: id.addr,
        };
        identity(Some(prove(secret, &challenge)))
    }

    #[test]
    fn proofs_bind_secret_nonce_challenger_prover_service_and_address() {
        let key = secret("a-long-enough-secret");
        let n = nonce();
        assert_eq!(n.len(), 32);
        assert_ne!(n, nonce(), "fresh every time");
        let good = answer(&key, &n, "ME", &identity(None));
        assert!(check(&key, &n, "ME", &good));
        assert!(
            !check(&secret("another-long-secret!"), &n, "ME", &good),
            "other secret"
        );
        assert!(
            !check(&key, &nonce(), "ME", &good),
            "replayed for another nonce"
        );
        assert!(
            !check(&key, &n, "YOU", &good),
            "answered for another challenger"
        );
        let mut moved = good.clone();
        moved.addr = "127.0.0.9:80".parse().unwrap();
        assert!(
            !check(&key, &n, "ME", &moved),
            "relayed from another address"
        );
        let mut other = good.clone();
        other.instance_id = "01JXYZ".into();
        assert!(
            !check(&key, &n, "ME", &other),
            "copied onto another identity"
        );
        let mut service = good.clone();
        service.service = "svc2".into();
        assert!(!check(&key, &n, "ME", &service), "another service");
        assert!(!check(&key, &n, "ME", &identity(None)), "no proof");
        assert!(
            !check(&key, &n, "ME", &identity(Some("zz".into()))),
            "not hex"
        );
        assert!(
            !check(&key, &n, "ME", &identity(Some("ab".repeat(200)))),
            "too long"
        );
    }

    #[test]
    fn a_rotation_accepts_the_previous_secret() {
        let old = secret("the-previous-secret-1");
        let both = secret("the-current-secret-22,the-previous-secret-1");
        let n = nonce();
        let from_old = answer(&old, &n, "ME", &identity(None));
        assert!(
            check(&both, &n, "ME", &from_old),
            "old replicas still admitted"
        );
        let from_new = answer(&both, &n, "ME", &identity(None));
        assert!(
            !check(&old, &n, "ME", &from_new),
            "new proofs use the current secret"
        );
        assert!(check(&both, &n, "ME", &from_new));
    }
}
