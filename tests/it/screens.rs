//! Screenshots of the page through churn, for docs/screens/: not a test, a camera
//! (`#[ignore]`, run by hand). The same scenes can be shot with an older build, to show
//! what changed:
//!
//! ```text
//! ROLLCALL_SCREENS_BIN=/path/to/old/rollcall ROLLCALL_SCREENS_TAG=before \
//!     cargo test --test it -- --ignored screens::
//! cargo test --test it -- --ignored screens::      # after: this build
//! ```

use std::path::PathBuf;
use std::process::Command;

use std::time::Duration;

use crate::common::browser::{Browser, local_chromedriver, local_curl};
use crate::common::*;

/// Pod-style names: one deployment, a replica-set hash, a pod hash.
const NAMES: [&str; 3] = [
    "checkout-api-768976868d-vprdj",
    "checkout-api-768976868d-x7k2q",
    "checkout-api-768976868d-9fzlt",
];

struct Camera {
    browser: Browser,
    dir: PathBuf,
    tag: String,
}

impl Camera {
    fn new() -> Camera {
        let dir = std::env::var_os("ROLLCALL_SCREENS_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo("docs/screens"));
        std::fs::create_dir_all(&dir).expect("screens dir");
        Camera {
            browser: Browser::start(local_chromedriver, local_curl()),
            dir,
            tag: std::env::var("ROLLCALL_SCREENS_TAG").unwrap_or("after".into()),
        }
    }

    fn shoot(&self, scene: &str) {
        let path = self.dir.join(format!("{scene}-{}.png", self.tag));
        self.browser.screenshot(&path);
        println!("screenshot: {}", path.display());
    }

    /// Waits until the page's verdict contains `text` (the page has caught up), or 10 s:
    /// an older build may never say it, and is shot anyway.
    async fn until_verdict(&self, text: &str) {
        self.until("#verdict", text).await;
    }

    async fn until(&self, selector: &str, text: &str) {
        let script =
            format!("return (document.querySelector('{selector}') || {{}}).textContent || ''");
        let what = format!("{selector} to say '{text}'");
        let said = eventually(&what, || async {
            let verdict = self.browser.eval(&script);
            match verdict.as_str() {
                Some(v) if v.contains(text) => Ok(()),
                _ => Err(verdict.to_string()),
            }
        });
        if tokio::time::timeout(Duration::from_secs(10), said)
            .await
            .is_err()
        {
            println!("the page never said '{text}'");
        }
    }
}

fn replica(bin: &str, last: u8, port: u16, name: &str, extra: &[(&str, &str)]) -> Replica {
    let mut env = vec![("INSTANCE_NAME", name), ("EXPECTED_REPLICAS", "3")];
    env.extend_from_slice(extra);
    Replica::spawn(Command::new(bin), last, port, &env, None)
}

fn pid_signal(replica: &Replica, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &replica.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn state_on(replica: &Replica, name: &str) -> Option<String> {
    let status = status_of(replica).await.ok()?;
    status["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)
        .and_then(|m| m["state"].as_str().map(str::to_string))
}

async fn until_state(replica: &Replica, name: &str, want: &str) {
    eventually(&format!("{name} to be {want}"), || async {
        match state_on(replica, name).await {
            Some(s) if s == want => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test]
#[ignore = "a camera for docs/screens, run by hand"]
async fn churn() {
    let _machine = heavy().await;
    let bin = std::env::var("ROLLCALL_SCREENS_BIN").unwrap_or(BIN.to_string());
    let port = free_port();
    let camera = Camera::new();
    let a = replica(&bin, 80, port, NAMES[0], &[]);
    let mut b = replica(&bin, 81, port, NAMES[1], &[]);
    let mut c = replica(&bin, 82, port, NAMES[2], &[]);
    wait_until_all_see(&[&a, &b, &c]).await;
    camera.browser.goto(&a.url("/"));
    camera.until_verdict("(2 reachable)").await;
    camera.shoot("steady");
    // The same page on a phone: pod names must not push it sideways.
    camera.browser.resize(390, 1400);
    camera
        .browser
        .eval("window.scrollTo(0, document.getElementById('mesh').offsetTop - 200); return 1");
    camera.shoot("phone");
    println!(
        "phone: the page is {} px wide in a 390 px window",
        camera
            .browser
            .eval("return document.documentElement.scrollWidth")
    );
    camera.browser.resize(1200, 1900);
    camera.browser.eval("window.scrollTo(0, 0); return 1");

    // One crashed, one stopped: the survivor's page.
    pid_signal(&c, "-KILL");
    let _ = c.child.wait();
    pid_signal(&b, "-TERM");
    let _ = b.child.wait();
    until_state(&a, NAMES[1], "left").await;
    until_state(&a, NAMES[2], "dead").await;
    camera.until_verdict("stopped answering").await;
    camera.shoot("crashed-and-left");

    // Both back, as new instances on their old addresses.
    b = replica(&bin, 81, port, NAMES[1], &[]);
    c = replica(&bin, 82, port, NAMES[2], &[]);
    wait_until_all_see(&[&a, &b, &c]).await;
    camera.until_verdict("(2 reachable)").await;
    camera.shoot("restarted");

    // Every replica gone: the page that stays open.
    drop(b);
    drop(c);
    drop(a);
    camera.until("#stale", "No replica answers").await;
    camera.shoot("nobody-answers");

    // Another secret on two of three.
    let port = free_port();
    let a = replica(
        &bin,
        83,
        port,
        NAMES[0],
        &[("CLUSTER_SECRET", "one-secret-0123456789abc")],
    );
    let others = [(84, NAMES[1]), (85, NAMES[2])].map(|(last, name)| {
        replica(
            &bin,
            last,
            port,
            name,
            &[("CLUSTER_SECRET", "another-secret-0123456789")],
        )
    });
    camera.browser.goto(&a.url("/"));
    eventually("both others refused", || async {
        let status = status_of(&a).await?;
        match status["foreign"].as_array().map(Vec::len) {
            Some(2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    camera.browser.goto(&a.url("/"));
    camera.shoot("secrets-differ");
    drop(others);
}
