//! Proof that a peer holds `CLUSTER_SECRET`: HMAC-SHA256(secret, nonce ‖ instance_id ‖
//! service) over a fresh random nonce, so a copied or replayed identity proves nothing.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::identity::Identity;

type HmacSha256 = Hmac<Sha256>;

/// A fresh challenge: 16 random bytes, hex.
pub fn nonce() -> String {
    hex(&rand::random::<[u8; 16]>())
}

fn mac(secret: &[u8], nonce: &str, instance_id: &str, service: &str) -> HmacSha256 {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(nonce.as_bytes());
    mac.update(instance_id.as_bytes());
    mac.update(service.as_bytes());
    mac
}

/// Our answer to a challenge.
pub fn prove(secret: &[u8], nonce: &str, instance_id: &str, service: &str) -> String {
    hex(&mac(secret, nonce, instance_id, service)
        .finalize()
        .into_bytes())
}

/// Whether `identity` carries a valid answer to `nonce`, compared in constant time.
pub fn check(secret: &[u8], nonce: &str, identity: &Identity) -> bool {
    let Some(proof) = identity.proof.as_deref().and_then(unhex) else {
        return false;
    };
    mac(secret, nonce, &identity.instance_id, &identity.service)
        .verify_slice(&proof)
        .is_ok()
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
        }
    }

    #[test]
    fn proofs_check_only_for_the_same_secret_nonce_and_identity() {
        let secret = b"a-long-enough-secret";
        let n = nonce();
        assert_eq!(n.len(), 32);
        assert_ne!(n, nonce(), "fresh every time");
        let good = identity(Some(prove(secret, &n, "01JABC", "svc")));
        assert!(check(secret, &n, &good));
        assert!(!check(b"another-long-secret!", &n, &good), "other secret");
        assert!(
            !check(secret, &nonce(), &good),
            "replayed for another nonce"
        );
        let mut other = good.clone();
        other.instance_id = "01JXYZ".into();
        assert!(!check(secret, &n, &other), "copied onto another identity");
        assert!(!check(secret, &n, &identity(None)), "no proof");
        assert!(!check(secret, &n, &identity(Some("zz".into()))), "not hex");
        assert!(
            !check(secret, &n, &identity(Some("ab".repeat(200)))),
            "too long"
        );
    }
}
