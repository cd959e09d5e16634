//! The member table: the single source of truth about who is in the cluster.
//!
//! Keyed by instance id, never by address: a restarted replica is a new member even on
//! the same address. Only verification and the prober write here; everyone else reads
//! snapshots, which are cheap to clone and never wait on discovery.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::wire::{Identity, MeshCell, Method};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Alive,
    Suspect,
    Dead,
    Left,
}

impl State {
    /// The word used in JSON, logs and the page.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Alive => "alive",
            State::Suspect => "suspect",
            State::Dead => "dead",
            State::Left => "left",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    /// Shared, not copied: every change publishes a snapshot of the whole table, and a
    /// member's identity (its mesh row above all) is most of its bytes.
    pub identity: Arc<Identity>,
    pub sources: BTreeSet<Method>,
    pub state: State,
    pub rtt_ms: Option<f64>,
    pub last_ok: Instant,
    pub state_since: Instant,
    /// When the table first admitted this instance (a flap to suspect and back keeps it).
    pub joined: Instant,
    pub last_error: Option<String>,
    /// Set when this instance's address began answering as another instance: a restart.
    pub replaced_by: Option<String>,
    /// Another live instance that claims the same address (NAT, a misconfigured advertise
    /// address): both are shown, with the conflict.
    pub conflict_with: Option<String>,
}

impl Member {
    /// The error to show: a conflict outlasts any successful probe.
    fn conflict_note(&self) -> Option<String> {
        self.conflict_with
            .as_ref()
            .map(|other| format!("address conflict: instance {other} claims the same address"))
    }
}

#[derive(Debug, Clone)]
pub struct Foreign {
    pub reason: String,
    pub seen: Instant,
}

#[derive(Debug, Clone)]
pub struct Alias {
    /// Instance ids this address answered as, most recent last.
    pub answered_as: Vec<String>,
    pub seen: Instant,
}

/// How long states last.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub dead_after: Duration,
    pub forget_after: Duration,
}

/// Addresses that are not members are remembered, but only so many: a scan of a busy
/// network must not grow memory without bound.
const MAX_NOT_MEMBERS: usize = 256;
const MAX_ANSWERED_AS: usize = 16;

/// A consistent copy of the table at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Sorted by address, then instance id.
    pub members: Vec<Member>,
    pub foreign: Vec<(SocketAddr, Foreign)>,
    pub aliases: Vec<(SocketAddr, Alias)>,
}

impl Snapshot {
    pub fn member(&self, instance_id: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.identity.instance_id == instance_id)
    }
}

/// What admitting an identity changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// First time seen: worth announcing ourselves to it.
    New,
    Known,
    /// Not admitted: the table is full, or too many members share its IP.
    Full,
    /// Not admitted: this instance is alive at another address.
    Elsewhere,
}

/// Members in all: far above any real cluster this page can show, far below what a
/// neighbour inventing members could grow the table (and every snapshot) to.
pub const MAX_MEMBERS: usize = 512;
/// Members sharing one IP (several ports of one host, or replicas behind one NAT).
pub const MAX_MEMBERS_PER_IP: usize = 64;

#[derive(Debug, Default)]
struct Table {
    members: HashMap<String, Member>,
    foreign: HashMap<SocketAddr, Foreign>,
    aliases: HashMap<SocketAddr, Alias>,
}

impl Table {
    fn member_at(&mut self, addr: SocketAddr) -> impl Iterator<Item = &mut Member> {
        self.members
            .values_mut()
            .filter(move |m| m.identity.addr == addr)
    }

    fn set_state(member: &mut Member, state: State, now: Instant) {
        if member.state != state {
            member.state = state;
            member.state_since = now;
        }
    }

    fn admit(
        &mut self,
        identity: Identity,
        method: Method,
        rtt_ms: f64,
        now: Instant,
    ) -> Admission {
        let addr = identity.addr;
        self.foreign.remove(&addr);
        self.aliases.remove(&addr);
        let new_id = identity.instance_id.clone();
        // An instance displaced from this address that answers again was never gone: two
        // live instances claim one address.
        let displaced_by = self
            .members
            .get(&new_id)
            .and_then(|m| m.replaced_by.clone());
        let mut conflict = None;
        let mut came_back = Vec::new();
        for old in self.member_at(addr) {
            if old.identity.instance_id == new_id {
                continue;
            }
            if !matches!(old.state, State::Alive | State::Suspect) {
                if old.replaced_by.is_none() && old.identity.name == identity.name {
                    came_back.push(old.identity.instance_id.clone());
                }
                continue;
            }
            if displaced_by.as_deref() == Some(old.identity.instance_id.as_str())
                || old.conflict_with.as_deref() == Some(new_id.as_str())
            {
                old.conflict_with = Some(new_id.clone());
                old.last_error = old.conflict_note();
                conflict = Some(old.identity.instance_id.clone());
            } else {
                // Otherwise only one process can hold an address: it restarted.
                old.replaced_by = Some(new_id.clone());
                old.last_error = Some(format!("address now answers as instance {new_id}"));
                Self::set_state(old, State::Dead, now);
            }
        }
        if let Some(member) = self.members.get_mut(&new_id)
            && member.identity.addr != addr
            && matches!(member.state, State::Alive | State::Suspect)
        {
            // One instance, two addresses: the known one stays until it stops answering.
            member.last_error = Some(format!(
                "also claimed at {addr}; ignored while it answers at {}",
                member.identity.addr
            ));
            return Admission::Elsewhere;
        }
        if !self.members.contains_key(&new_id) && !self.make_room(addr) {
            return Admission::Full;
        }
        // Gone before it answered again, under its name on its address, as a new
        // instance: a restart all the same (counted once, as the new instance), not a
        // crash and a join.
        for id in came_back {
            if let Some(old) = self.members.get_mut(&id) {
                old.replaced_by = Some(new_id.clone());
                old.last_error = Some(format!("back as instance {new_id}"));
            }
        }
        match self.members.get_mut(&new_id) {
            Some(member) => {
                member.sources.insert(method);
                member.identity = Arc::new(identity);
                if member.state != State::Left {
                    if conflict.is_some() {
                        member.conflict_with = conflict;
                        member.replaced_by = None;
                    }
                    member.rtt_ms = Some(rtt_ms);
                    member.last_ok = now;
                    member.last_error = member.conflict_note();
                    Self::set_state(member, State::Alive, now);
                }
                Admission::Known
            }
            None => {
                self.members.insert(
                    identity.instance_id.clone(),
                    Member {
                        identity: Arc::new(identity),
                        sources: BTreeSet::from([method]),
                        state: State::Alive,
                        rtt_ms: Some(rtt_ms),
                        last_ok: now,
                        state_since: now,
                        joined: now,
                        last_error: None,
                        replaced_by: None,
                        conflict_with: None,
                    },
                );
                Admission::New
            }
        }
    }

    /// Whether a new member from `addr` fits: within the caps, after forgetting the
    /// longest-gone dead or left member if the table is full.
    fn make_room(&mut self, addr: SocketAddr) -> bool {
        let same_ip = self
            .members
            .values()
            .filter(|m| m.identity.addr.ip() == addr.ip())
            .count();
        if same_ip >= MAX_MEMBERS_PER_IP {
            return false;
        }
        if self.members.len() < MAX_MEMBERS {
            return true;
        }
        let gone = self
            .members
            .values()
            .filter(|m| matches!(m.state, State::Dead | State::Left))
            .min_by_key(|m| m.state_since)
            .map(|m| m.identity.instance_id.clone());
        gone.is_some_and(|id| self.members.remove(&id).is_some())
    }

    fn probe_ok(&mut self, identity: Identity, rtt_ms: f64, now: Instant) {
        let Some(member) = self.members.get_mut(&identity.instance_id) else {
            return;
        };
        if member.state == State::Left && identity.leaving {
            return;
        }
        // A `left` member that answers at its own address and is not shutting down never
        // left: the goodbye was not its own, or it changed its mind.
        let mut identity = identity;
        // An answer without its mesh row (asked for only now and then) keeps the last one.
        if identity.mesh.is_none() {
            identity.mesh.clone_from(&member.identity.mesh);
        }
        member.identity = Arc::new(identity);
        member.rtt_ms = Some(rtt_ms);
        member.last_ok = now;
        member.last_error = member.conflict_note();
        Self::set_state(member, State::Alive, now);
    }

    fn probe_failed(&mut self, instance_id: &str, error: String, now: Instant) {
        let Some(member) = self.members.get_mut(instance_id) else {
            return;
        };
        if member.state == State::Left {
            return;
        }
        member.last_error = Some(error);
        Self::set_state(member, state_after_failure(member.state), now);
    }

    /// No direct answer, but another member reached it: alive, with a note of the path.
    fn reached_through(&mut self, instance_id: &str, via: &str, error: String, now: Instant) {
        let Some(member) = self.members.get_mut(instance_id) else {
            return;
        };
        if !matches!(member.state, State::Alive | State::Suspect) {
            return;
        }
        member.last_ok = now;
        member.last_error = member
            .conflict_note()
            .or(Some(format!("{error}; reached through {via}")));
        Self::set_state(member, State::Alive, now);
    }

    fn replaced(&mut self, instance_id: &str, by: &str, now: Instant) {
        if let Some(member) = self.members.get_mut(instance_id)
            && member.conflict_with.as_deref() != Some(by)
        {
            member.replaced_by = Some(by.to_string());
            // A member that left stays `left`: its successor is news, its state is not.
            if member.state != State::Left {
                member.last_error = Some(format!("address now answers as instance {by}"));
                Self::set_state(member, State::Dead, now);
            }
        }
    }

    fn left(&mut self, instance_id: &str, now: Instant) -> bool {
        match self.members.get_mut(instance_id) {
            Some(member) => {
                member.last_error = Some("left (graceful shutdown)".into());
                Self::set_state(member, State::Left, now);
                true
            }
            None => false,
        }
    }

    /// Time-driven transitions: suspects that stay unreachable die, long-dead ones are
    /// forgotten. `stretch` lengthens suspicion by whole `dead_after`s while this replica
    /// is itself unwell (Lifeguard's local health): a starved prober is slow to believe.
    /// Returns whether anything changed.
    fn tick(&mut self, now: Instant, timing: Timing, stretch: u32) -> bool {
        let before = (self.members.len(), self.foreign.len(), self.aliases.len());
        let suspicion = timing.dead_after.saturating_mul(stretch.saturating_add(1));
        let mut changed = false;
        for member in self.members.values_mut() {
            if member.state == State::Suspect && now.duration_since(member.state_since) >= suspicion
            {
                Self::set_state(member, State::Dead, now);
                changed = true;
            }
        }
        self.members.retain(|_, m| {
            !(matches!(m.state, State::Dead | State::Left)
                && now.duration_since(m.state_since) >= timing.forget_after)
        });
        let forget = now.checked_sub(timing.forget_after);
        if let Some(cutoff) = forget {
            self.foreign.retain(|_, f| f.seen >= cutoff);
            self.aliases.retain(|_, a| a.seen >= cutoff);
        }
        changed || before != (self.members.len(), self.foreign.len(), self.aliases.len())
    }

    fn foreign(&mut self, addr: SocketAddr, reason: String, now: Instant) {
        self.aliases.remove(&addr);
        insert_bounded(
            &mut self.foreign,
            addr,
            Foreign { reason, seen: now },
            |f| f.seen,
        );
    }

    fn alias(&mut self, addr: SocketAddr, answered_as: String, now: Instant) {
        self.foreign.remove(&addr);
        let mut entry = self.aliases.remove(&addr).unwrap_or(Alias {
            answered_as: Vec::new(),
            seen: now,
        });
        entry.answered_as.retain(|id| *id != answered_as);
        entry.answered_as.push(answered_as);
        if entry.answered_as.len() > MAX_ANSWERED_AS {
            entry.answered_as.remove(0);
        }
        entry.seen = now;
        insert_bounded(&mut self.aliases, addr, entry, |a| a.seen);
    }

    fn snapshot(&self) -> Snapshot {
        let mut members: Vec<Member> = self.members.values().cloned().collect();
        members.sort_by(|a, b| {
            (a.identity.addr, &a.identity.instance_id)
                .cmp(&(b.identity.addr, &b.identity.instance_id))
        });
        Snapshot {
            members,
            foreign: sorted_by_addr(&self.foreign),
            aliases: sorted_by_addr(&self.aliases),
        }
    }
}

fn sorted_by_addr<T: Clone>(map: &HashMap<SocketAddr, T>) -> Vec<(SocketAddr, T)> {
    let mut v: Vec<(SocketAddr, T)> = map.iter().map(|(a, x)| (*a, x.clone())).collect();
    v.sort_by_key(|(a, _)| *a);
    v
}

/// Inserts, evicting the entry seen longest ago when the map is full.
fn insert_bounded<T>(
    map: &mut HashMap<SocketAddr, T>,
    addr: SocketAddr,
    value: T,
    seen: impl Fn(&T) -> Instant,
) {
    if !map.contains_key(&addr)
        && map.len() >= MAX_NOT_MEMBERS
        && let Some(oldest) = map.iter().min_by_key(|(_, v)| seen(v)).map(|(a, _)| *a)
    {
        map.remove(&oldest);
    }
    map.insert(addr, value);
}

/// The table keeps who a member is; the news it carried is the prober's to act on, and
/// stale by the next answer.
fn without_news(mut identity: Identity) -> Identity {
    identity.news = Vec::new();
    identity
}

/// The state a member moves to when neither this replica nor the members it asked could
/// reach it: suspect, until the clock says dead (`Table::tick`).
pub fn state_after_failure(current: State) -> State {
    match current {
        State::Left | State::Dead => current,
        State::Alive | State::Suspect => State::Suspect,
    }
}

/// The table behind one lock, publishing a fresh snapshot after every change.
#[derive(Clone)]
pub struct Membership {
    inner: Arc<Inner>,
}

struct Inner {
    table: Mutex<Table>,
    timing: Timing,
    published: watch::Sender<Arc<Snapshot>>,
    events: broadcast::Sender<MemberEvent>,
    /// Held from publishing a snapshot until its events are sent, so events go out in the
    /// order the changes happened, while the table's own lock is already released.
    emitting: Mutex<()>,
}

/// Events a subscriber may fall behind by before it misses some.
const EVENT_BACKLOG: usize = 1024;

/// Who an event is about.
#[derive(Debug, Clone, PartialEq)]
pub struct Who {
    pub instance_id: String,
    pub name: String,
    pub addr: SocketAddr,
}

impl Who {
    fn of(m: &Member) -> Who {
        Who {
            instance_id: m.identity.instance_id.clone(),
            name: m.identity.name.clone(),
            addr: m.identity.addr,
        }
    }
}

/// What changed in the table. Subscribers (the timeline, the page's event streams, the
/// logs) get these instead of each comparing snapshots in its own way.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberEvent {
    Joined {
        who: Who,
        sources: Vec<Method>,
    },
    StateChanged {
        who: Who,
        from: State,
        to: State,
        error: Option<String>,
    },
    /// Its address answers as another instance now: it restarted (and is dead).
    Restarted {
        who: Who,
        from: State,
        by: String,
    },
    /// Two live instances claim one address.
    Conflict {
        who: Who,
        with: String,
    },
    Forgotten {
        who: Who,
    },
    Foreign {
        addr: SocketAddr,
        reason: String,
    },
    Alias {
        addr: SocketAddr,
    },
}

/// What changed between two snapshots, in table order.
fn changes(old: &Snapshot, new: &Snapshot) -> Vec<MemberEvent> {
    let mut events = Vec::new();
    for m in &new.members {
        let who = || Who::of(m);
        match old.member(&m.identity.instance_id) {
            None => events.push(MemberEvent::Joined {
                who: who(),
                sources: m.sources.iter().copied().collect(),
            }),
            Some(b) if b.state != m.state => events.push(match (m.state, &m.replaced_by) {
                (State::Dead, Some(by)) => MemberEvent::Restarted {
                    who: who(),
                    from: b.state,
                    by: by.clone(),
                },
                _ => MemberEvent::StateChanged {
                    who: who(),
                    from: b.state,
                    to: m.state,
                    error: m.last_error.clone(),
                },
            }),
            // Already dead or gone when its address answered as a new instance.
            Some(b) if b.replaced_by.is_none() && m.replaced_by.is_some() => {
                events.push(MemberEvent::Restarted {
                    who: who(),
                    from: b.state,
                    by: m.replaced_by.clone().unwrap_or_default(),
                });
            }
            Some(b) if b.conflict_with.is_none() && m.conflict_with.is_some() => {
                events.push(MemberEvent::Conflict {
                    who: who(),
                    with: m.conflict_with.clone().unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
    for m in &old.members {
        if new.member(&m.identity.instance_id).is_none() {
            events.push(MemberEvent::Forgotten { who: Who::of(m) });
        }
    }
    for (addr, f) in &new.foreign {
        if !old.foreign.iter().any(|(a, _)| a == addr) {
            events.push(MemberEvent::Foreign {
                addr: *addr,
                reason: f.reason.clone(),
            });
        }
    }
    for (addr, _) in &new.aliases {
        if !old.aliases.iter().any(|(a, _)| a == addr) {
            events.push(MemberEvent::Alias { addr: *addr });
        }
    }
    events
}

/// Cells of a published mesh row: a matrix this wide is shown as its worst rows anyway.
pub const MESH_ROW_MAX: usize = 32;

/// At most `max` cells of `row`: those not ok first, then the slowest.
fn worst_cells(row: BTreeMap<String, MeshCell>, max: usize) -> BTreeMap<String, MeshCell> {
    if row.len() <= max {
        return row;
    }
    let mut cells: Vec<(String, MeshCell)> = row.into_iter().collect();
    cells.sort_by(|(_, a), (_, b)| {
        a.ok.cmp(&b.ok).then(
            b.rtt_ms
                .unwrap_or(f64::INFINITY)
                .total_cmp(&a.rtt_ms.unwrap_or(f64::INFINITY)),
        )
    });
    cells.truncate(max);
    cells.into_iter().collect()
}

impl Snapshot {
    /// This replica's row of the mesh: its latest direct probe of every member.
    pub fn mesh_row(&self, now: Instant) -> BTreeMap<String, MeshCell> {
        self.members
            .iter()
            .filter(|m| m.state != State::Left)
            .map(|m| {
                let cell = MeshCell {
                    ok: m.state == State::Alive,
                    rtt_ms: m.rtt_ms,
                    last_ok_ms_ago: Some(
                        now.saturating_duration_since(m.last_ok).as_millis() as u64
                    ),
                    error: m.last_error.as_ref().map(|e| e.chars().take(120).collect()),
                };
                (m.identity.instance_id.clone(), cell)
            })
            .collect()
    }

    /// This replica's identity with its mesh row and view hash, as peers and pages see it.
    /// Above [`MESH_ROW_MAX`] members the row keeps the cells worth seeing (failures first,
    /// then the slowest), so an answer, and each probe, costs the same at any size.
    pub fn published(&self, mut identity: Identity, leaving: bool) -> Identity {
        identity.mesh = Some(worst_cells(self.mesh_row(Instant::now()), MESH_ROW_MAX));
        identity.view_hash = Some(self.view_hash(&identity.instance_id));
        identity.leaving = leaving;
        identity
    }

    /// A short hash of the alive member set, this replica included.
    pub fn view_hash(&self, me: &str) -> String {
        let mut ids: Vec<&str> = self
            .members
            .iter()
            .filter(|m| m.state == State::Alive)
            .map(|m| m.identity.instance_id.as_str())
            .chain([me])
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let hash = ids
            .iter()
            .flat_map(|id| id.bytes().chain([b',']))
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!("{hash:016x}")[..12].to_string()
    }
}

impl Membership {
    pub fn new(timing: Timing) -> Membership {
        let table = Table::default();
        let (published, _) = watch::channel(Arc::new(table.snapshot()));
        Membership {
            inner: Arc::new(Inner {
                table: Mutex::new(table),
                timing,
                published,
                events: broadcast::channel(EVENT_BACKLOG).0,
                emitting: Mutex::default(),
            }),
        }
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.published.borrow().clone()
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panic while holding the lock leaves the table usable: every change is whole.
        self.inner.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to what changes from now on. Subscribe before reading the snapshot a
    /// subscriber starts from, so no change falls between the two.
    pub fn events(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    fn change<R>(&self, f: impl FnOnce(&mut Table, Instant) -> R) -> R {
        let now = Instant::now();
        let mut table = self.lock();
        let result = f(&mut table, now);
        self.publish(table);
        result
    }

    /// Publishes the table's snapshot, then, with the table unlocked, sends what changed.
    fn publish(&self, table: MutexGuard<'_, Table>) {
        let new = Arc::new(table.snapshot());
        let emitting = self
            .inner
            .emitting
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let old = self.inner.published.send_replace(new.clone());
        drop(table);
        for event in changes(&old, &new) {
            // No subscriber is fine: nobody is watching yet.
            let _ = self.inner.events.send(event);
        }
        drop(emitting);
    }

    pub fn admit(&self, identity: Identity, method: Method, rtt_ms: f64) -> Admission {
        let identity = without_news(identity);
        self.change(|t, now| t.admit(identity, method, rtt_ms, now))
    }

    /// Tags a live member at `addr` (the `expect`ed one, if named) with another source; false
    /// when none is there, and the address needs verifying.
    pub fn tag_source(&self, addr: SocketAddr, method: Method, expect: Option<&str>) -> bool {
        self.change(|t, _| {
            let mut found = false;
            for m in t.member_at(addr) {
                if matches!(m.state, State::Alive | State::Suspect)
                    && expect.is_none_or(|id| id == m.identity.instance_id)
                {
                    m.sources.insert(method);
                    found = true;
                }
            }
            found
        })
    }

    pub fn probe_ok(&self, identity: Identity, rtt_ms: f64) {
        let identity = without_news(identity);
        self.change(|t, now| t.probe_ok(identity, rtt_ms, now));
    }

    pub fn probe_failed(&self, instance_id: &str, error: String) {
        self.change(|t, now| t.probe_failed(instance_id, error, now));
    }

    /// This replica's probe failed with `error`, but member `via` reached it.
    pub fn reached_through(&self, instance_id: &str, via: &str, error: String) {
        self.change(|t, now| t.reached_through(instance_id, via, error, now));
    }

    /// The member's address answered as another instance of this service: it restarted.
    pub fn replaced(&self, instance_id: &str, by: &str) {
        self.change(|t, now| t.replaced(instance_id, by, now));
    }

    pub fn left(&self, instance_id: &str) -> bool {
        self.change(|t, now| t.left(instance_id, now))
    }

    pub fn foreign(&self, addr: SocketAddr, reason: String) {
        self.change(|t, now| t.foreign(addr, reason, now));
    }

    pub fn alias(&self, addr: SocketAddr, answered_as: String) {
        self.change(|t, now| t.alias(addr, answered_as, now));
    }

    /// Applies time-driven transitions; cheap when nothing is due, so it can run often.
    /// `stretch` is this replica's local health score (0 when healthy).
    pub fn tick(&self, stretch: u32) {
        let now = Instant::now();
        let mut table = self.lock();
        if table.tick(now, self.inner.timing, stretch) {
            self.publish(table);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        dead_after: Duration::from_secs(3),
        forget_after: Duration::from_secs(600),
    };

    fn identity(id: &str, addr: &str) -> Identity {
        Identity {
            instance_id: id.into(),
            name: format!("replica-{id}"),
            service: "svc".into(),
            addr: addr.parse().unwrap(),
            version: String::new(),
            started_at: String::new(),
            platform: "local".into(),
            system: Default::default(),
            proof: None,
            mesh: None,
            view_hash: None,
            requires_proof: false,
            leaving: false,
            news: Vec::new(),
        }
    }

    fn state(t: &Table, id: &str) -> State {
        t.members[id].state
    }

    #[test]
    fn alive_suspect_dead_alive() {
        let t0 = Instant::now();
        let mut t = Table::default();
        assert_eq!(
            t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0),
            Admission::New
        );
        assert_eq!(state(&t, "a"), State::Alive);

        t.probe_failed("a", "timeout".into(), t0 + Duration::from_secs(1));
        assert_eq!(state(&t, "a"), State::Suspect);
        t.probe_failed("a", "timeout".into(), t0 + Duration::from_secs(2));
        assert_eq!(state(&t, "a"), State::Suspect);
        // Dead by the clock: DEAD_AFTER after it turned suspect.
        t.tick(t0 + Duration::from_millis(3_900), TIMING, 0);
        assert_eq!(state(&t, "a"), State::Suspect);
        t.tick(t0 + Duration::from_secs(4), TIMING, 0);
        assert_eq!(state(&t, "a"), State::Dead);

        // A partition that heals brings it back.
        t.probe_ok(
            identity("a", "127.0.0.2:80"),
            0.5,
            t0 + Duration::from_secs(4),
        );
        assert_eq!(state(&t, "a"), State::Alive);
        assert_eq!(t.members["a"].rtt_ms, Some(0.5));
    }

    #[test]
    fn suspects_die_by_the_clock_even_without_probe_answers() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        t.probe_failed("a", "timeout".into(), t0 + Duration::from_millis(500));
        t.tick(t0 + Duration::from_secs(2), TIMING, 0);
        assert_eq!(state(&t, "a"), State::Suspect);
        t.tick(t0 + Duration::from_millis(3_500), TIMING, 0);
        assert_eq!(state(&t, "a"), State::Dead);
    }

    #[test]
    fn an_unwell_replica_is_slower_to_believe_a_death() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        t.probe_failed("a", "timeout".into(), t0);
        // Local health 2: three DEAD_AFTERs of suspicion.
        t.tick(t0 + Duration::from_secs(8), TIMING, 2);
        assert_eq!(state(&t, "a"), State::Suspect);
        t.tick(t0 + Duration::from_secs(9), TIMING, 2);
        assert_eq!(state(&t, "a"), State::Dead);
    }

    #[test]
    fn a_member_reached_through_another_stays_alive_with_the_path_noted() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        t.probe_failed("a", "refused".into(), t0);
        t.reached_through("a", "b", "refused".into(), t0 + Duration::from_millis(10));
        assert_eq!(state(&t, "a"), State::Alive);
        let note = t.members["a"].last_error.clone().unwrap_or_default();
        assert_eq!(note, "refused; reached through b");
        // Never raises the dead.
        t.tick(t0 + Duration::from_secs(60), TIMING, 0);
        t.probe_failed("a", "refused".into(), t0 + Duration::from_secs(61));
        t.tick(t0 + Duration::from_secs(65), TIMING, 0);
        t.reached_through("a", "b", "x".into(), t0 + Duration::from_secs(66));
        assert_eq!(state(&t, "a"), State::Dead);
    }

    #[test]
    fn a_published_mesh_row_keeps_the_worst_cells_above_the_cap() {
        let cell = |ok: bool, rtt: f64| MeshCell {
            ok,
            rtt_ms: Some(rtt),
            last_ok_ms_ago: None,
            error: None,
        };
        let row: BTreeMap<String, MeshCell> = (0..200)
            .map(|i| (format!("m{i:03}"), cell(i % 50 != 7, f64::from(i))))
            .collect();
        let kept = worst_cells(row.clone(), MESH_ROW_MAX);
        assert_eq!(kept.len(), MESH_ROW_MAX);
        for i in [7, 57, 107, 157] {
            assert!(!kept[&format!("m{i:03}")].ok, "failures first");
        }
        assert!(
            kept.contains_key("m199") && !kept.contains_key("m100"),
            "then the slowest"
        );
        let small: BTreeMap<String, MeshCell> = row.into_iter().take(20).collect();
        assert_eq!(worst_cells(small.clone(), MESH_ROW_MAX), small);
    }

    #[test]
    fn an_answer_without_its_mesh_row_keeps_the_last_one() {
        let t0 = Instant::now();
        let mut t = Table::default();
        let mut with_mesh = identity("a", "127.0.0.2:80");
        with_mesh.mesh = Some(BTreeMap::from([(
            "b".to_string(),
            MeshCell {
                ok: true,
                rtt_ms: Some(0.3),
                last_ok_ms_ago: Some(10),
                error: None,
            },
        )]));
        t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        t.probe_ok(with_mesh.clone(), 0.4, t0);
        t.probe_ok(identity("a", "127.0.0.2:80"), 0.5, t0);
        assert_eq!(t.members["a"].identity.mesh, with_mesh.mesh);
        assert_eq!(t.members["a"].rtt_ms, Some(0.5));
    }

    #[test]
    fn dead_and_left_are_forgotten() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        t.admit(identity("b", "127.0.0.3:80"), Method::Scan, 1.0, t0);
        assert!(t.left("b", t0));
        t.probe_failed("a", "refused".into(), t0);
        t.tick(t0 + Duration::from_secs(3), TIMING, 0);
        t.tick(t0 + Duration::from_secs(600), TIMING, 0);
        assert!(t.members.contains_key("a"), "dead for 597 s only");
        assert!(!t.members.contains_key("b"));
        t.tick(t0 + Duration::from_secs(603), TIMING, 0);
        assert!(t.members.is_empty());
    }

    #[test]
    fn left_stays_left_while_it_is_leaving_and_comes_back_when_it_is_not() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        t.left("a", t0);
        // A draining replica still answers for a moment, saying it is leaving.
        let mut leaving = identity("a", "127.0.0.2:80");
        leaving.leaving = true;
        t.probe_ok(leaving, 0.3, t0);
        assert_eq!(
            t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0),
            Admission::Known
        );
        assert_eq!(state(&t, "a"), State::Left);
        // A goodbye it never sent: at its own address it answers, not leaving.
        t.probe_ok(identity("a", "127.0.0.2:80"), 0.3, t0);
        assert_eq!(state(&t, "a"), State::Alive);
    }

    #[test]
    fn a_live_member_never_moves_to_another_address() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("a", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        assert_eq!(
            t.admit(identity("a", "127.0.0.9:80"), Method::Announce, 1.0, t0),
            Admission::Elsewhere
        );
        assert_eq!(
            t.members["a"].identity.addr,
            "127.0.0.2:80".parse().unwrap()
        );
        // Once the known address has gone silent for good, the new one may take over.
        t.probe_failed("a", "refused".into(), t0);
        let silent = t0 + TIMING.dead_after + Duration::from_secs(1);
        t.tick(silent, TIMING, 0);
        assert_eq!(state(&t, "a"), State::Dead);
        let later = t0 + TIMING.dead_after + Duration::from_secs(2);
        t.admit(identity("a", "127.0.0.9:80"), Method::Announce, 1.0, later);
        assert_eq!(
            t.members["a"].identity.addr,
            "127.0.0.9:80".parse().unwrap()
        );
    }

    #[test]
    fn the_table_is_capped_in_all_and_per_ip() {
        let t0 = Instant::now();
        let mut t = Table::default();
        for port in 0..MAX_MEMBERS_PER_IP as u16 {
            let addr = format!("127.0.0.2:{}", 1000 + port);
            assert_eq!(
                t.admit(
                    identity(&format!("p{port}"), &addr),
                    Method::Announce,
                    1.0,
                    t0
                ),
                Admission::New
            );
        }
        assert_eq!(
            t.admit(
                identity("one-more", "127.0.0.2:9999"),
                Method::Announce,
                1.0,
                t0
            ),
            Admission::Full
        );
        let mut t = Table::default();
        for i in 0..MAX_MEMBERS {
            let addr = format!("127.0.{}.{}:80", i / 200, i % 200 + 1);
            t.admit(identity(&format!("m{i}"), &addr), Method::Scan, 1.0, t0);
        }
        assert_eq!(t.members.len(), MAX_MEMBERS);
        assert_eq!(
            t.admit(identity("extra", "127.0.9.9:80"), Method::Scan, 1.0, t0),
            Admission::Full
        );
        // A gone member makes room.
        t.left("m0", t0);
        assert_eq!(
            t.admit(identity("extra", "127.0.9.9:80"), Method::Scan, 1.0, t0),
            Admission::New
        );
        assert!(!t.members.contains_key("m0"));
    }

    #[test]
    fn a_restart_on_the_same_address_is_a_new_member_and_the_old_one_dies() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("old", "127.0.0.2:80"), Method::Scan, 1.0, t0);
        assert_eq!(
            t.admit(identity("new", "127.0.0.2:80"), Method::Scan, 1.0, t0),
            Admission::New
        );
        assert_eq!(state(&t, "old"), State::Dead);
        assert_eq!(state(&t, "new"), State::Alive);
        // Probing the old instance's address keeps answering as the new one: no resurrection.
        t.probe_ok(identity("new", "127.0.0.2:80"), 0.2, t0);
        assert_eq!(state(&t, "old"), State::Dead);
    }

    #[test]
    fn a_replica_gone_before_its_successor_answers_restarted_all_the_same() {
        let t0 = Instant::now();
        for gone in [State::Dead, State::Left] {
            let mut t = Table::default();
            t.admit(identity("old", "127.0.0.2:80"), Method::Scan, 1.0, t0);
            match gone {
                State::Left => assert!(t.left("old", t0)),
                _ => Table::set_state(t.members.get_mut("old").unwrap(), State::Dead, t0),
            }
            // Another replica on the address (another name): not a restart.
            t.admit(identity("other", "127.0.0.2:80"), Method::Scan, 1.0, t0);
            assert_eq!(t.members["old"].replaced_by, None);
            // The same replica back, under its name, as a new instance.
            let before = t.snapshot();
            let mut back = identity("new", "127.0.0.2:80");
            back.name = t.members["old"].identity.name.clone();
            t.admit(back, Method::Scan, 1.0, t0);
            assert_eq!(state(&t, "old"), gone);
            assert_eq!(t.members["old"].replaced_by.as_deref(), Some("new"));
            let events = changes(&before, &t.snapshot());
            assert!(
                events.iter().any(|e| matches!(e,
                    MemberEvent::Restarted { who, from, by }
                        if who.instance_id == "old" && *from == gone && by == "new")),
                "{events:?}"
            );
        }
    }

    #[test]
    fn two_live_instances_on_one_address_are_both_shown_with_the_conflict() {
        let t0 = Instant::now();
        let mut t = Table::default();
        t.admit(identity("x", "10.0.0.1:80"), Method::Scan, 1.0, t0);
        // The address answers as y: at first that looks like a restart.
        t.admit(identity("y", "10.0.0.1:80"), Method::Scan, 1.0, t0);
        assert_eq!(state(&t, "x"), State::Dead);
        // But x answers again on the same address: both are alive, and both say why.
        t.admit(identity("x", "10.0.0.1:80"), Method::Scan, 1.0, t0);
        assert_eq!(
            (state(&t, "x"), state(&t, "y")),
            (State::Alive, State::Alive)
        );
        for (me, other) in [("x", "y"), ("y", "x")] {
            assert_eq!(t.members[me].conflict_with.as_deref(), Some(other));
            assert!(
                t.members[me]
                    .last_error
                    .as_deref()
                    .unwrap()
                    .contains("conflict")
            );
        }
        // Probes answered by the other claimant no longer count as a restart.
        t.replaced("x", "y", t0);
        t.probe_ok(identity("y", "10.0.0.1:80"), 0.4, t0);
        assert_eq!(
            (state(&t, "x"), state(&t, "y")),
            (State::Alive, State::Alive)
        );
    }

    #[test]
    fn foreign_and_aliases_stay_bounded() {
        let t0 = Instant::now();
        let mut t = Table::default();
        for i in 0..1000u32 {
            let addr = SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 80));
            t.foreign(addr, "garbage".into(), t0 + Duration::from_millis(i as u64));
            t.alias(addr, format!("id{i}"), t0);
        }
        assert!(t.foreign.len() <= MAX_NOT_MEMBERS);
        assert!(t.aliases.len() <= MAX_NOT_MEMBERS);
        let lb: SocketAddr = "10.245.0.10:80".parse().unwrap();
        for i in 0..100 {
            t.alias(lb, format!("id{i}"), t0);
        }
        assert_eq!(t.aliases[&lb].answered_as.len(), MAX_ANSWERED_AS);
    }

    #[test]
    fn failure_transitions() {
        assert_eq!(state_after_failure(State::Alive), State::Suspect);
        assert_eq!(state_after_failure(State::Suspect), State::Suspect);
        assert_eq!(state_after_failure(State::Left), State::Left);
        assert_eq!(state_after_failure(State::Dead), State::Dead);
    }

    #[test]
    fn changes_arrive_as_typed_events_in_order() {
        let membership = Membership::new(TIMING);
        let mut events = membership.events();
        membership.admit(identity("A", "127.0.0.2:80"), Method::Scan, 0.4);
        membership.probe_failed("A", "refused".into());
        membership.replaced("A", "B");
        membership.foreign("127.0.0.9:80".parse().unwrap(), "service 'x'".into());
        membership.alias("127.0.0.8:80".parse().unwrap(), "B".into());
        let who = Who {
            instance_id: "A".into(),
            name: "replica-A".into(),
            addr: "127.0.0.2:80".parse().unwrap(),
        };
        let mut got = Vec::new();
        while let Ok(event) = events.try_recv() {
            got.push(event);
        }
        assert_eq!(
            got,
            [
                MemberEvent::Joined {
                    who: who.clone(),
                    sources: vec![Method::Scan],
                },
                MemberEvent::StateChanged {
                    who: who.clone(),
                    from: State::Alive,
                    to: State::Suspect,
                    error: Some("refused".into()),
                },
                MemberEvent::Restarted {
                    who,
                    from: State::Suspect,
                    by: "B".into(),
                },
                MemberEvent::Foreign {
                    addr: "127.0.0.9:80".parse().unwrap(),
                    reason: "service 'x'".into(),
                },
                MemberEvent::Alias {
                    addr: "127.0.0.8:80".parse().unwrap(),
                },
            ]
        );
        // Nothing changed, nothing sent.
        membership.tick(0);
        assert!(events.try_recv().is_err());
    }
}
