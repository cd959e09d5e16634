//! The demo (`rollcall demo`) as a test drives it: started with a clean environment, its
//! output collected line by line as it comes, the replicas its banner lists (name, PID,
//! address), and signals sent with `kill`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{BIN, DEADLINE, Guard, eventually, exited, free_port};

/// How many replicas every test's demo runs.
pub const REPLICAS: usize = 3;

/// A demo started by the test; killed when dropped.
pub struct Demo {
    pub process: Guard,
    pub port: u16,
    out: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<Vec<String>>>,
    readers: Vec<JoinHandle<()>>,
}

/// One replica as the banner lists it: `  replica-1  pid 1234  http://127.0.0.2:8080/`.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub pid: u32,
    pub addr: SocketAddr,
}

impl Demo {
    /// A demo of [`REPLICAS`] replicas on `port`, with `RUST_LOG=warn` unless `env` says.
    pub fn start(port: u16, env: &[(&str, &str)]) -> Demo {
        let mut cmd = Command::new(BIN);
        // A clean environment: no platform marker or proxy from the machine leaks in.
        cmd.env_clear()
            .env("RUST_LOG", "warn")
            .args(["demo", "--replicas", &REPLICAS.to_string()])
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = Guard(cmd.spawn().expect("start demo"));
        let (out, out_reader) = collect(process.0.stdout.take().expect("stdout"));
        let (err, err_reader) = collect(process.0.stderr.take().expect("stderr"));
        Demo {
            process,
            port,
            out,
            err,
            readers: vec![out_reader, err_reader],
        }
    }

    /// A demo whose replicas are all up, and what its banner lists. Another process on
    /// this machine (another checkout's tests) may hold the port on one of 127.0.0.2..,
    /// which [`free_port`] cannot see: then the demo says so and stops, and this tries
    /// another port.
    pub async fn start_ready(env: &[(&str, &str)]) -> (Demo, Vec<Listed>) {
        let mut last = String::new();
        for _ in 0..5 {
            let mut demo = Demo::start(free_port(), env);
            match demo.ready().await {
                Ok(listed) => return (demo, listed),
                Err(e) if e.contains("Address already in use") => last = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("5 ports in a row were taken: {last}");
    }

    /// Waits for the banner (the demo prints it once every replica is ready), or for the
    /// demo to exit first: then the error is what it wrote.
    pub async fn ready(&mut self) -> Result<Vec<Listed>, String> {
        let started = Instant::now();
        while started.elapsed() < DEADLINE {
            let listed: Vec<Listed> = self.out().iter().filter_map(|l| listed(l)).collect();
            if listed.len() == REPLICAS {
                return Ok(listed);
            }
            if let Ok(Some(status)) = self.process.0.try_wait() {
                self.read_to_end().await;
                return Err(format!(
                    "the demo exited ({status}) before its banner; stderr: {:?}",
                    self.err()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!(
            "no banner within {DEADLINE:?}; stdout: {:?}",
            self.out()
        ))
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// The front door's URL.
    pub fn front(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Lines on stdout so far: the banner and the demo's own story.
    pub fn out(&self) -> Vec<String> {
        self.out.lock().expect("lines").clone()
    }

    /// Lines on stderr so far: the replicas' logs, and the demo's errors.
    pub fn err(&self) -> Vec<String> {
        self.err.lock().expect("lines").clone()
    }

    /// Waits until both pipes have ended (the demo has exited) and every line is read.
    pub async fn read_to_end(&self) {
        eventually("the demo's output to end", || async {
            if self.readers.iter().all(JoinHandle::is_finished) {
                Ok(())
            } else {
                Err("still open".to_string())
            }
        })
        .await
    }

    /// The first line on stdout that contains `text`, once there is one.
    pub async fn said(&self, text: &str) -> String {
        eventually(&format!("the demo to say {text:?}"), || async {
            self.out()
                .into_iter()
                .find(|l| l.contains(text))
                .ok_or_else(|| format!("stdout: {:?}", self.out()))
        })
        .await
    }

    /// Ctrl-C, then waits for the demo to exit by itself: its status and how long it took.
    pub async fn interrupt(&mut self) -> (ExitStatus, Duration) {
        let started = Instant::now();
        signal(self.pid(), "INT");
        let status = exited(&mut self.process.0, "demo").await;
        (status, started.elapsed())
    }
}

/// Reads `pipe` line by line on a thread of its own, so the demo never blocks on it.
fn collect(pipe: impl std::io::Read + Send + 'static) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            sink.lock().expect("lines").push(line);
        }
    });
    (lines, reader)
}

fn listed(line: &str) -> Option<Listed> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [name, "pid", pid, url] => Some(Listed {
            name: name.to_string(),
            pid: pid.parse().ok()?,
            addr: url
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .parse()
                .ok()?,
        }),
        _ => None,
    }
}

/// `kill -NAME pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// Whether process `pid` has ended: no such process, or a zombie nobody reaped yet (an
/// orphan's new parent may be slow to, or never, reap it).
pub fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

pub async fn wait_gone(pid: u32, what: &str) {
    eventually(&format!("{what} (pid {pid}) to be gone"), || async {
        if gone(pid) {
            Ok(())
        } else {
            Err(std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default())
        }
    })
    .await
}
