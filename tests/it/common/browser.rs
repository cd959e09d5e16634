//! A real headless Chromium driven through chromedriver (Debian's chromium-driver), by
//! plain WebDriver calls made with curl: the same client works on loopback and inside the
//! simulator's network namespaces (`scripts/sim exec curl …`).

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Runs curl somewhere: here, or inside a namespace.
pub type Curl = Box<dyn Fn(&[String]) -> Output>;

pub fn local_curl() -> Curl {
    Box::new(|args| Command::new("curl").args(args).output().expect("run curl"))
}

pub struct Browser {
    driver: String,
    session: String,
    curl: Curl,
    chromedriver: Child,
    /// Chromium's profile directory, removed when the browser is dropped.
    profile: String,
}

fn call(curl: &Curl, method: &str, url: &str, body: Option<&Value>) -> Option<Value> {
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "60".into(),
        "-X".into(),
        method.into(),
        url.into(),
    ];
    if let Some(body) = body {
        args.extend([
            "-H".into(),
            "content-type: application/json".into(),
            "-d".into(),
            body.to_string(),
        ]);
    }
    let out = curl(&args);
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .map(|v| v["value"].clone())
}

impl Browser {
    /// Starts chromedriver with `start` (given its port) and opens a session.
    pub fn start(start: impl FnOnce(u16) -> Child, curl: Curl) -> Browser {
        let port = super::free_port();
        let chromedriver = start(port);
        let driver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while call(&curl, "GET", &format!("{driver}/status"), None)
            .is_none_or(|v| v["ready"] != true)
        {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = format!("/tmp/rollcall-chromium-{port}");
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome",
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                "--window-size=1200,1900", format!("--user-data-dir={profile}")]}}}});
        let session = call(&curl, "POST", &format!("{driver}/session"), Some(&caps))
            .and_then(|v| v["sessionId"].as_str().map(str::to_string))
            .expect("a WebDriver session (is chromium installed?)");
        Browser {
            driver,
            session,
            curl,
            chromedriver,
            profile,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.driver, self.session)
    }

    pub fn goto(&self, url: &str) {
        call(
            &self.curl,
            "POST",
            &self.url("/url"),
            Some(&json!({ "url": url })),
        );
    }

    /// Sets the window's size; headless, that is the page's viewport.
    pub fn resize(&self, width: u32, height: u32) {
        call(
            &self.curl,
            "POST",
            &self.url("/window/rect"),
            Some(&json!({ "width": width, "height": height })),
        );
    }

    /// Runs a script in the page and returns its value.
    pub fn eval(&self, script: &str) -> Value {
        call(
            &self.curl,
            "POST",
            &self.url("/execute/sync"),
            Some(&json!({ "script": script, "args": [] })),
        )
        .unwrap_or(Value::Null)
    }

    /// Saves a PNG of the window.
    pub fn screenshot(&self, path: &std::path::Path) {
        let png = call(&self.curl, "GET", &self.url("/screenshot"), None)
            .and_then(|v| v.as_str().map(str::to_string))
            .expect("a screenshot");
        let encoded = path.with_extension("b64");
        std::fs::write(&encoded, png).expect("write base64");
        let out = Command::new("base64")
            .arg("-d")
            .arg(&encoded)
            .output()
            .expect("base64 -d");
        let _ = std::fs::remove_file(&encoded);
        std::fs::write(path, out.stdout).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        call(
            &self.curl,
            "DELETE",
            &format!("{}/session/{}", self.driver, self.session),
            None,
        );
        let _ = self.chromedriver.kill();
        let _ = self.chromedriver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Chromedriver on loopback, as a child of the test.
pub fn local_chromedriver(port: u16) -> Child {
    Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is needed (scripts/test installs chromium-driver)")
}
