//! `/peer?from=`: the replica that got the request hands the calls to the member named,
//! which runs them; the answer says who ran them and who handed them on.

use serde_json::Value;

use crate::common::*;

async fn peer(replica: &Replica, query: &str) -> (u16, Value) {
    let response = client()
        .get(replica.url(&format!("/peer{query}")))
        .header("accept", "application/json")
        .send()
        .await
        .expect("an answer from /peer");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn peer_from_runs_the_calls_on_the_member_named() {
    let _machine = shared().await;
    let port = free_port();
    let a = Replica::start(40, port, &[]);
    let b = Replica::start(41, port, &[]);
    let c = Replica::start(42, port, &[]);
    wait_until_all_see(&[&a, &b, &c]).await;
    let (a_id, b_id, c_id) = (
        instance_id(&a).await,
        instance_id(&b).await,
        instance_id(&c).await,
    );

    // Asked of a, run by b: b called a and c, and a handed it on.
    let (status, calls) = peer(&a, &format!("?from={b_id}")).await;
    assert_eq!(status, 200, "{calls}");
    assert_eq!(calls["from"]["instance_id"], b_id.as_str(), "{calls}");
    assert_eq!(
        calls["forwarded_by"]["instance_id"],
        a_id.as_str(),
        "{calls}"
    );
    let mut called: Vec<&str> = calls["results"]
        .as_array()
        .expect("results")
        .iter()
        .filter(|r| r["ok"] == true)
        .filter_map(|r| r["to"]["instance_id"].as_str())
        .collect();
    called.sort_unstable();
    let mut others = vec![a_id.as_str(), c_id.as_str()];
    others.sort_unstable();
    assert_eq!(called, others, "{calls}");
    // Identities without the matrix rows they publish: an answer grows with the cluster,
    // not with its square.
    assert!(calls["from"]["mesh"].is_null(), "{calls}");
    assert!(calls["results"][0]["reply"]["mesh"].is_null(), "{calls}");

    // With `to` as well: b calls c only.
    let (status, calls) = peer(&a, &format!("?from={b_id}&to={c_id}")).await;
    assert_eq!(status, 200, "{calls}");
    assert_eq!(calls["from"]["instance_id"], b_id.as_str(), "{calls}");
    assert_eq!(
        calls["results"].as_array().map(Vec::len),
        Some(1),
        "{calls}"
    );
    assert_eq!(calls["results"][0]["to"]["instance_id"], c_id.as_str());

    // Naming itself, the replica runs the calls: nothing was handed on.
    let (status, calls) = peer(&a, &format!("?from={a_id}")).await;
    assert_eq!(status, 200, "{calls}");
    assert_eq!(calls["from"]["instance_id"], a_id.as_str(), "{calls}");
    assert!(calls.get("forwarded_by").is_none(), "{calls}");

    // A name that is not a member reaches nobody.
    let (status, answer) = peer(&a, "?from=01NOTAMEMBER").await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a current member")),
        "{answer}"
    );
}

#[tokio::test]
async fn peer_from_a_member_that_cannot_run_it_is_a_bad_gateway_with_the_reason() {
    let _machine = shared().await;
    let port = free_port();
    let a = Replica::start(43, port, &[]);
    let mut b = Replica::start(44, port, &[]);
    wait_until_all_see(&[&a, &b]).await;
    let b_id = instance_id(&b).await;
    // Killed, b is still a member of a's table (suspect, then dead) for a while: the call
    // handed to it fails, and says so, instead of running somewhere else.
    b.child.kill().expect("kill b");
    let _ = b.child.wait();
    let (status, answer) = peer(&a, &format!("?from={b_id}")).await;
    assert_eq!(status, 502, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(error.contains("could not run the calls"), "{answer}");
    assert!(error.contains(&b.addr.to_string()), "{answer}");
}
