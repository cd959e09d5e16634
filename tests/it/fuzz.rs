//! Property-based fuzzing (proptest) of everything that parses input from outside: the
//! identity a peer sends and the judgement made of it, and every settings parser. Each
//! property runs a few hundred random cases per `cargo test`; failures proptest finds are
//! kept as regression cases in `proptest-regressions/`.

use std::net::SocketAddr;

use proptest::prelude::*;
use rollcall::client::{CallError, Reply, parse_identity};
use rollcall::config::{Database, DnsNames, PortList, ScanCidrs, SeedPeers};
use rollcall::verify::{Verdict, judge};

fn judge_bytes(bytes: &[u8]) -> Verdict {
    let answer = parse_identity(bytes).map(|identity| Reply {
        identity,
        status: 200,
        rtt_ms: 0.3,
    });
    let at: SocketAddr = "127.0.0.3:8080".parse().unwrap();
    judge(at, answer, "rollcall", "01ME", false)
}

/// Strings that look like identities, with hostile fields.
fn identity_json() -> impl Strategy<Value = String> {
    (
        ".{0,80}",
        ".{0,40}",
        "[0-9.:\\[\\]a-f]{0,30}",
        proptest::option::of(".{0,70}"),
    )
        .prop_map(|(id, service, addr, proof)| {
            serde_json::json!({
                "instance_id": id, "name": "n", "service": service, "addr": addr, "proof": proof
            })
            .to_string()
        })
}

proptest! {
    #[test]
    fn any_bytes_from_a_peer_are_judged_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let verdict = judge_bytes(&bytes);
        // Garbage is never a member.
        prop_assert!(!matches!(verdict, Verdict::Member(..)) || parse_identity(&bytes).is_ok());
    }

    #[test]
    fn identity_shaped_json_is_judged_without_panic(json in identity_json()) {
        match judge_bytes(json.as_bytes()) {
            Verdict::Member(identity, _) => {
                // Only a plausible identity at the very address asked is a member.
                prop_assert_eq!(identity.addr, "127.0.0.3:8080".parse::<SocketAddr>().unwrap());
                prop_assert_eq!(identity.service.as_str(), "rollcall");
                prop_assert!(identity.instance_id.len() <= 64);
                prop_assert!(identity.instance_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            }
            Verdict::Foreign(reason) => prop_assert!(reason.len() < 400, "{}", reason),
            _ => {}
        }
    }

    #[test]
    fn deep_nesting_is_refused(depth in 1usize..50_000) {
        let json = "[".repeat(depth);
        prop_assert!(matches!(parse_identity(json.as_bytes()), Err(CallError::NotIdentity(_))));
    }

    #[test]
    fn cidr_lists_parse_or_refuse(s in "[0-9./, a-z]{0,60}") {
        if let Ok(ScanCidrs::List(nets)) = s.parse::<ScanCidrs>() {
            prop_assert!(!nets.is_empty());
            // Never wider than a /16: a typo must not become a scan of millions.
            prop_assert!(nets.iter().all(|n| n.prefix_len() >= 16));
        }
    }

    #[test]
    fn cidrs_from_parts(a: u8, b: u8, c: u8, d: u8, prefix in 0u8..40) {
        let s = format!("{a}.{b}.{c}.{d}/{prefix}");
        match s.parse::<ScanCidrs>() {
            Ok(ScanCidrs::List(nets)) => {
                prop_assert!((16..=32).contains(&prefix));
                prop_assert_eq!(nets[0].prefix_len(), prefix);
            }
            Ok(other) => prop_assert!(false, "{:?}", other),
            Err(_) => prop_assert!(!(16..=32).contains(&prefix)),
        }
    }

    #[test]
    fn port_lists_parse_or_refuse(s in "[0-9, a-z-]{0,40}") {
        if let Ok(PortList(ports)) = s.parse::<PortList>() {
            prop_assert!(!ports.is_empty());
            prop_assert!(ports.iter().all(|p| *p != 0));
        }
    }

    #[test]
    fn seed_lists_parse_or_refuse(s in "[0-9a-z.:\\[\\], -]{0,60}") {
        if let Ok(SeedPeers(seeds)) = s.parse::<SeedPeers>() {
            prop_assert!(!seeds.is_empty());
            for seed in seeds {
                prop_assert!(seed.port != 0);
                prop_assert!(!seed.host.is_empty() && !seed.host.contains(' '));
            }
        }
    }

    #[test]
    fn other_settings_parse_or_refuse(s in ".{0,60}") {
        let _ = s.parse::<DnsNames>();
        if let Ok(Database::Postgres(url) | Database::Sqlite(url)) = s.parse::<Database>() {
            // Shown, the URL never carries a password.
            let shown = url.to_string();
            if let Some((_, rest)) = s.split_once("://")
                && let Some((userinfo, _)) = rest.split('/').next().unwrap_or("").rsplit_once('@')
                && let Some((_, pw)) = userinfo.split_once(':')
                && pw.len() > 3
            {
                prop_assert!(!shown.contains(pw), "{} shows {}", shown, pw);
            }
        }
    }
}
