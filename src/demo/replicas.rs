//! The demo's replicas, each its own child process (`rollcall serve`), so that one can be
//! crashed (`kill -9`), stopped (`kill`) and brought back while the others watch.
//!
//! Each child is owned by one task that waits for it and passes it the signals the demo
//! sends: only that task can reap it, so a signal never reaches a process that reused the
//! child's PID. Children never restart by themselves: watching the page show a crash is
//! the point.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::lines::{self, Stream};

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("cannot start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },
    #[error("{name} ({addr}) did not start: {reason}")]
    DidNotStart {
        name: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("readiness client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot start the thread that prints the replicas' output: {0}")]
    Printer(std::io::Error),
}

/// One place in the cluster: a name and an address that outlive the processes run there.
#[derive(Debug, Clone)]
pub struct Slot {
    pub name: String,
    pub addr: SocketAddr,
    /// Flags for `rollcall serve` at this place.
    pub args: Vec<String>,
}

/// What the demo asks of a running child.
#[derive(Debug, Clone, Copy)]
enum Order {
    /// SIGTERM: drain, say goodbye, exit.
    Stop,
    /// SIGKILL.
    Kill,
}

struct Running {
    pid: u32,
    orders: mpsc::UnboundedSender<Order>,
}

/// A child that ended, and the last line it wrote (its reason, when it stopped at once).
struct Exit {
    slot: usize,
    pid: u32,
    status: std::io::Result<ExitStatus>,
    last_line: Option<String>,
}

impl Exit {
    /// "was killed by signal 9 (SIGKILL)", "exited 0", "exited 1: cannot listen on …".
    fn how(&self) -> String {
        let status = match &self.status {
            Ok(status) => status,
            Err(e) => return format!("could not be waited for: {e}"),
        };
        if let Some(code) = status.code() {
            return match (code, self.reason()) {
                (0, _) | (_, None) => format!("exited {code}"),
                (_, Some(reason)) => format!("exited {code}: {reason}"),
            };
        }
        match signal_of(status) {
            Some(signal) => format!("was killed by signal {signal}{}", signal_name(signal)),
            None => format!("ended: {status}"),
        }
    }

    /// What the child said last, without the program's name in front.
    fn reason(&self) -> Option<&str> {
        self.last_line
            .as_deref()
            .map(|l| l.strip_prefix("rollcall: ").unwrap_or(l))
            .filter(|l| !l.trim().is_empty())
    }
}

/// The demo's replicas: their places, and the process running at each, if any.
pub struct Replicas {
    exe: PathBuf,
    slots: Vec<Slot>,
    running: Vec<Option<Running>>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits: mpsc::UnboundedReceiver<Exit>,
    /// Names are padded to this, so the tags of the lines line up.
    width: usize,
    http: reqwest::Client,
    stdout: mpsc::Sender<Vec<u8>>,
    stderr: mpsc::Sender<Vec<u8>>,
    printers: [std::thread::JoinHandle<()>; 2],
}

/// How often start-up checks each replica's `/readyz`.
const READY_POLL: Duration = Duration::from_millis(100);
/// A child whose output has not ended this long after it exited holds it open elsewhere.
const LAST_WORDS_WITHIN: Duration = Duration::from_secs(1);

impl Replicas {
    pub fn new(exe: PathBuf, slots: Vec<Slot>) -> Result<Replicas, ReplicaError> {
        let (exits_tx, exits) = mpsc::unbounded_channel();
        let width = slots
            .iter()
            .map(|s| s.name.len())
            .chain(["demo".len()])
            .max()
            .unwrap_or(0);
        let (stdout, out_printer) =
            lines::printer(Stream::Stdout).map_err(ReplicaError::Printer)?;
        let (stderr, err_printer) =
            lines::printer(Stream::Stderr).map_err(ReplicaError::Printer)?;
        Ok(Replicas {
            exe,
            running: slots.iter().map(|_| None).collect(),
            slots,
            exits_tx,
            exits,
            width,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(1))
                .build()?,
            stdout,
            stderr,
            printers: [out_printer, err_printer],
        })
    }

    /// Every place, with the PID running there.
    pub fn members(&self) -> impl Iterator<Item = (&Slot, Option<u32>)> {
        self.slots
            .iter()
            .zip(&self.running)
            .map(|(slot, run)| (slot, run.as_ref().map(|r| r.pid)))
    }

    pub fn running(&self) -> usize {
        self.running.iter().flatten().count()
    }

    /// One line of the demo's own story (exits, restarts), tagged like the replicas' lines.
    /// Queued for the printer like the replicas' lines: a paused terminal (`| less`, Ctrl-S)
    /// must not stop the demo from answering Ctrl-C; a line that finds the queue full is
    /// dropped.
    pub fn say(&self, line: &str) {
        let line = format!("{:<width$} │ {line}\n", "demo", width = self.width);
        let _ = self.stdout.try_send(line.into_bytes());
    }

    pub fn start_all(&mut self) -> Result<(), ReplicaError> {
        (0..self.slots.len()).try_for_each(|slot| self.start(slot).map(|_| ()))
    }

    /// Starts a new process at `slot`: a new instance under the same name and address.
    fn start(&mut self, slot: usize) -> Result<u32, ReplicaError> {
        let place = &self.slots[slot];
        let spawn_error = |source| ReplicaError::Spawn {
            name: place.name.clone(),
            source,
        };
        let mut child = command(&self.exe, &place.args)
            .spawn()
            .map_err(spawn_error)?;
        let pid = child
            .id()
            .ok_or_else(|| spawn_error(std::io::Error::other("exited before it had a PID")))?;
        let tag = format!("{:<width$}", place.name, width = self.width);
        // Stderr first: its last line is the reason a replica gives when it cannot start.
        let stderr = child
            .stderr
            .take()
            .map(|err| tokio::spawn(lines::pass_on(err, tag.clone(), self.stderr.clone())));
        let stdout = child
            .stdout
            .take()
            .map(|out| tokio::spawn(lines::pass_on(out, tag, self.stdout.clone())));
        let (orders_tx, orders) = mpsc::unbounded_channel();
        tokio::spawn(watch(
            (slot, pid),
            child,
            orders,
            stderr.into_iter().chain(stdout).collect(),
            self.exits_tx.clone(),
        ));
        self.running[slot] = Some(Running {
            pid,
            orders: orders_tx,
        });
        Ok(pid)
    }

    /// Waits until every replica answers `/readyz`; a replica that exits first, or is not
    /// ready within `within`, is the error (the caller stops the rest).
    pub async fn wait_ready(&mut self, within: Duration) -> Result<(), ReplicaError> {
        let deadline = Instant::now() + within;
        let mut waiting: Vec<usize> = (0..self.slots.len()).collect();
        loop {
            if let Ok(exit) = self.exits.try_recv() {
                return Err(self.did_not_start(exit));
            }
            let mut still = Vec::new();
            for slot in waiting {
                if !self.is_ready(slot).await {
                    still.push(slot);
                }
            }
            waiting = still;
            let Some(&late) = waiting.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let place = &self.slots[late];
                return Err(ReplicaError::DidNotStart {
                    name: place.name.clone(),
                    addr: place.addr,
                    reason: format!("not ready within {} s", within.as_secs()),
                });
            }
            tokio::select! {
                Some(exit) = self.exits.recv() => return Err(self.did_not_start(exit)),
                () = tokio::time::sleep(READY_POLL) => {}
            }
        }
    }

    async fn is_ready(&self, slot: usize) -> bool {
        let url = format!("http://{}/readyz", self.slots[slot].addr);
        self.http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    fn did_not_start(&mut self, exit: Exit) -> ReplicaError {
        self.running[exit.slot] = None;
        let place = &self.slots[exit.slot];
        ReplicaError::DidNotStart {
            name: place.name.clone(),
            addr: place.addr,
            reason: exit
                .reason()
                .map_or_else(|| exit.how(), ToString::to_string),
        }
    }

    /// Waits for the next child to end, and says so.
    pub async fn next_exit(&mut self) {
        if let Some(exit) = self.exits.recv().await {
            self.ended(exit);
        }
    }

    fn ended(&mut self, exit: Exit) {
        if self.running[exit.slot]
            .as_ref()
            .is_some_and(|r| r.pid == exit.pid)
        {
            self.running[exit.slot] = None;
        }
        let name = &self.slots[exit.slot].name;
        self.say(&format!("{name} (pid {}) {}", exit.pid, exit.how()));
    }

    /// Starts a new process at every place where none runs, and says which.
    pub fn restart_missing(&mut self) {
        // A child that ended just before the signal came may not have been told yet.
        while let Ok(exit) = self.exits.try_recv() {
            self.ended(exit);
        }
        // One killed a moment ago may still be waiting to be reaped (`kill -9 P; kill
        // -USR1 DEMO`): dead all the same, and its late exit will not clear the new one.
        let missing: Vec<usize> = (0..self.slots.len())
            .filter(|slot| {
                self.running[*slot]
                    .as_ref()
                    .is_none_or(|r| has_ended(r.pid))
            })
            .collect();
        if missing.is_empty() {
            self.say("every replica is running: nothing to restart");
        }
        for slot in missing {
            let place = &self.slots[slot];
            let (name, addr) = (place.name.clone(), place.addr);
            match self.start(slot) {
                Ok(pid) => self.say(&format!(
                    "{name} restarted as pid {pid} at http://{addr}/ (a new instance)"
                )),
                Err(e) => self.say(&e.to_string()),
            }
        }
    }

    /// SIGTERM to every child, then SIGKILL to those still running after `within`, or at
    /// once when `hurry` resolves (a second Ctrl-C).
    pub async fn stop(&mut self, within: Duration, hurry: impl Future<Output = ()>) {
        self.order_all(Order::Stop);
        let deadline = Instant::now() + within;
        tokio::pin!(hurry);
        while self.running() > 0 {
            tokio::select! {
                Some(exit) = self.exits.recv() => self.ended(exit),
                () = tokio::time::sleep_until(deadline) => break,
                () = &mut hurry => break,
            }
        }
        if self.running() == 0 {
            return;
        }
        self.say(&format!(
            "{} still running: killing them (SIGKILL)",
            self.running()
        ));
        self.order_all(Order::Kill);
        let deadline = Instant::now() + LAST_WORDS_WITHIN * 2;
        while self.running() > 0 {
            tokio::select! {
                Some(exit) = self.exits.recv() => self.ended(exit),
                () = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Waits (a little) until the replicas' last lines are printed: the demo's own last
    /// line comes after them, and nothing is lost when it exits.
    pub async fn finish(self) {
        let Replicas {
            stdout,
            stderr,
            printers,
            ..
        } = self;
        drop((stdout, stderr));
        let deadline = Instant::now() + LAST_WORDS_WITHIN;
        while !printers.iter().all(std::thread::JoinHandle::is_finished)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn order_all(&self, order: Order) {
        for run in self.running.iter().flatten() {
            let _ = run.orders.send(order);
        }
    }
}

/// `rollcall serve` with `args`: its output piped to the demo, and tied to the demo's life.
fn command(exe: &PathBuf, args: &[String]) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    tie_to_demo(&mut cmd);
    cmd
}

/// A copy of one of a child's pipes: it ends with the child, with its last line.
type Copying = tokio::task::JoinHandle<Option<String>>;

/// Owns one child: passes it the demo's orders, reaps it, and reports its end with the
/// last line it wrote.
async fn watch(
    (slot, pid): (usize, u32),
    mut child: Child,
    mut orders: mpsc::UnboundedReceiver<Order>,
    output: Vec<Copying>,
    exits: mpsc::UnboundedSender<Exit>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(order) = orders.recv() => obey(&mut child, order),
        }
    };
    let mut last_line = None;
    for pipe in output {
        if let Ok(Ok(last)) = tokio::time::timeout(LAST_WORDS_WITHIN, pipe).await {
            last_line = last_line.or(last);
        }
    }
    let _ = exits.send(Exit {
        slot,
        pid,
        status,
        last_line,
    });
}

/// Whether a child has ended but is not reaped yet (a zombie), or is gone.
#[cfg(target_os = "linux")]
fn has_ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold any.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

#[cfg(not(target_os = "linux"))]
fn has_ended(_: u32) -> bool {
    false
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        1 => " (SIGHUP)",
        2 => " (SIGINT)",
        6 => " (SIGABRT)",
        9 => " (SIGKILL)",
        11 => " (SIGSEGV)",
        15 => " (SIGTERM)",
        _ => "",
    }
}

#[cfg(unix)]
fn signal_of(status: &ExitStatus) -> Option<i32> {
    std::os::unix::process::ExitStatusExt::signal(status)
}

#[cfg(not(unix))]
fn signal_of(_: &ExitStatus) -> Option<i32> {
    None
}

/// Its own process group, so a Ctrl-C on the terminal reaches the demo alone and the demo
/// stops the children in order; on Linux, the kernel kills the child when the demo dies,
/// even by SIGKILL, so no replica is left behind.
#[cfg(unix)]
fn tie_to_demo(cmd: &mut Command) {
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let demo = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec, and calls only
        // prctl and getppid, which are async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || die_with(demo));
        }
    }
}

#[cfg(not(unix))]
fn tie_to_demo(_: &mut Command) {}

#[cfg(target_os = "linux")]
fn die_with(demo: u32) -> std::io::Result<()> {
    // SAFETY: plain integer arguments; no memory is shared.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The demo may have died between fork and prctl: then nothing would kill us.
    // SAFETY: no arguments.
    let parent = unsafe { libc::getppid() };
    if u32::try_from(parent).ok() != Some(demo) {
        // No allocation between fork and exec: a plain OS error.
        return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
    }
    Ok(())
}

#[cfg(unix)]
fn obey(child: &mut Child, order: Order) {
    match order {
        Order::Kill => {
            let _ = child.start_kill();
        }
        Order::Stop => {
            // `id` is None once the child is reaped: its PID may then be another's.
            if let Some(pid) = child.id().and_then(|p| libc::pid_t::try_from(p).ok()) {
                // SAFETY: plain integer arguments; the PID is our unreaped child's.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
}

/// Without signals there is no graceful stop: both orders end the child.
#[cfg(not(unix))]
fn obey(child: &mut Child, _: Order) {
    let _ = child.start_kill();
}
