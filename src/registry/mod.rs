//! The node registry: every PC the head has seen, the state of its boot, its agent session and
//! the commands waiting for it.
//!
//! This is the I/O shell around the pure parts: [`crate::lifecycle`] decides every state
//! change, [`tokens`] who may fetch a node's initrd, [`admission`] who may create a node. Here
//! events are fed in, effects applied, rows written (SQLite through [`Store`]) and changes
//! published to dashboards.
//!
//! Durable facts (name, state, address, approval, release, key epoch, events) live in SQLite;
//! fast-changing ones (sessions, sequence numbers, heartbeats, command queues, boot traces,
//! tokens) in memory, so 10,000 heartbeats are not 10,000 fsyncs. A head restart loses only
//! those: agents get 401 and register again by themselves.

mod admission;
mod agent;
mod boot;
mod keys;
mod lent;
mod live;
mod naming;
mod nonces;
mod quarantine;
mod tokens;
mod view;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enlist_api::{Mac, Order, Peer};
use tokio::sync::broadcast;

use crate::config::{valid_host_label, Config, Current, Enrollment};
use crate::lifecycle::{self, Event, Facts, Limits, NodeState};
use crate::metrics::{labels, Metrics};
use crate::store::{now, EventRow, NodeRow, Store, StoreError};

pub use admission::{AdmissionLimits, AdmissionRefused, MAX_ENROLLMENT_WINDOW};
pub use agent::{AgentError, Registered, Signed};
pub use boot::{BootDecision, OverlayError};
pub use keys::{token as random_token, Keys};
pub use live::BootStep;
pub use tokens::TokenRefused;
pub use view::{NodeView, SchedInfo, SchedTotals};

use live::Inner;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no node with name or MAC {0:?}")]
    UnknownNode(String),
    #[error("name {0:?} is taken by another node")]
    NameTaken(String),
    #[error("invalid name {0:?}: use 1-63 letters, digits and '-'")]
    BadName(String),
    /// An import list refused whole (`enlist node import`).
    #[error("import refused: {0}")]
    BadImport(String),
    #[error("{0}")]
    Refused(#[from] AdmissionRefused),
    /// Something else the request names does not exist (an image, a file).
    #[error("{0}")]
    NotFound(String),
    /// A command for a node whose agent has no session now: nothing is queued.
    #[error("node {0} is not online (its agent has no session): nothing sent")]
    NotOnline(String),
    /// The node is up: what was asked needs it released or off.
    #[error("node {0} is up: release it first")]
    Up(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A change pushed to dashboards (server-sent events).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Update {
    Node(Box<NodeView>),
    Event(EventRow),
}

/// The PCI patterns of one image version's network drivers.
pub(crate) type DriverTable = Arc<Vec<crate::image::manifest::DriverAlias>>;

pub struct Registry {
    cfg: Arc<Current>,
    store: Store,
    metrics: Arc<Metrics>,
    keys: Keys,
    inner: Mutex<Inner>,
    /// Registration nonces (their own lock: anyone may ask for one).
    nonces: Mutex<nonces::Nonces>,
    updates: broadcast::Sender<Update>,
    /// When this head started: silence is counted from here for nodes not heard from since.
    started: Instant,
    /// Held while a node key is issued, so two downloads of one token agree on it.
    overlay_lock: Mutex<()>,
    /// The driver table of each image version read so far (versions never change in place),
    /// so a PC's DHCP does not read and parse a manifest each time.
    driver_tables: Mutex<HashMap<(String, String), DriverTable>>,
}

impl Registry {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Registry>, StoreError> {
        let keys = Keys::load(&store)?;
        let (updates, _) = broadcast::channel(1024);
        let mut inner = Inner::new(&cfg);
        let cfg = Arc::new(Current::new(cfg));
        for row in store.nodes()? {
            inner.remember(&row);
        }
        inner.names = store.names()?.into_iter().map(|n| (n.mac, n)).collect();
        let reg = Arc::new(Registry {
            cfg,
            store,
            metrics,
            keys,
            inner: Mutex::new(inner),
            nonces: Mutex::new(nonces::Nonces::new(
                agent::NONCE_TTL_SECS,
                agent::MAX_NONCES,
            )),
            updates,
            started: Instant::now(),
            overlay_lock: Mutex::new(()),
            driver_tables: Mutex::new(HashMap::new()),
        });
        reg.refresh_gauges();
        Ok(reg)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The config now (reservations and enrollment follow a reload).
    pub fn config(&self) -> Arc<Config> {
        self.cfg.get()
    }

    /// The config the registry and the DHCP server share: swapped by a reload.
    pub fn current(&self) -> Arc<Current> {
        self.cfg.clone()
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    /// Dashboards watching live (for the stream cap).
    pub fn watchers(&self) -> usize {
        self.updates.receiver_count()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn limits(&self) -> Limits {
        let n = &self.config().nodes;
        Limits {
            lost_after: n.lost_after,
            gone_after: n.heartbeat * 2,
            stuck_after: n.stuck_after,
        }
    }

    /// Find a node by MAC (any notation) or name; approval candidates too (not in the database).
    pub fn find(&self, name_or_mac: &str) -> Result<NodeRow, RegistryError> {
        if let Some(mac) = Mac::parse(name_or_mac) {
            if let Some(n) = self.store.node(mac)? {
                return Ok(n);
            }
            if let Some(c) = self.inner().candidates.get(&mac) {
                return Ok(c.row.clone());
            }
        }
        self.store
            .nodes()?
            .into_iter()
            .find(|n| n.name == name_or_mac)
            .ok_or_else(|| RegistryError::UnknownNode(name_or_mac.into()))
    }

    pub fn node(&self, mac: Mac) -> Result<NodeRow, RegistryError> {
        self.store
            .node(mac)?
            .ok_or_else(|| RegistryError::UnknownNode(mac.to_string()))
    }

    pub fn views(&self) -> Result<Vec<NodeView>, RegistryError> {
        let rows = self.store.nodes()?;
        let inner = self.inner();
        let mut v: Vec<NodeView> = rows.iter().map(|r| inner.view(r)).collect();
        v.extend(inner.candidates.values().map(|c| inner.view(&c.row)));
        Ok(v)
    }

    pub fn view(&self, row: &NodeRow) -> NodeView {
        self.inner().view(row)
    }

    /// Persist a node change with the event that explains it, and publish both.
    fn save(&self, row: &NodeRow, event: Option<(&str, &str)>) -> Result<(), StoreError> {
        let ev = self.store.save_node(row, event, now())?;
        self.inner().remember(row);
        if let Some(ev) = ev {
            tracing::info!(node = %row.name, mac = %row.mac, state = %row.state, "{}: {}", ev.kind, ev.detail);
            let _ = self.updates.send(Update::Event(ev));
        }
        self.publish(row);
        self.refresh_gauges();
        Ok(())
    }

    /// Tell dashboards about a node (no database write).
    fn publish(&self, row: &NodeRow) {
        if self.updates.receiver_count() > 0 {
            let _ = self.updates.send(Update::Node(Box::new(self.view(row))));
        }
    }

    /// Feed `event` to the node's state machine and apply the step: its effects, then the new
    /// state (written with an event `why`). Rows are written only when something changed.
    fn apply(&self, row: &mut NodeRow, event: Event, why: &str) -> Result<(), StoreError> {
        let facts = Facts {
            released: row.released,
            os_fetched: self.inner().os_fetched(row.mac),
        };
        let step = lifecycle::next(row.state, facts, event, &self.limits());
        let mut changed = false;
        {
            let mut inner = self.inner();
            if step.effects.end_session {
                inner.end_session(row.mac);
            }
            if step.effects.new_boot {
                inner.new_boot(row.mac);
                row.first_dhcp = Some(now());
                row.boot_seconds = None;
                changed = true;
            }
            if step.effects.boot_done {
                inner.tokens.end(row.mac);
            }
        }
        if step.effects.boot_done {
            let started = self.inner().live.get(&row.mac).and_then(|l| l.boot_started);
            if let Some(first) = started.or(row.first_dhcp) {
                let secs = (now() - first).max(0) as f64;
                row.boot_seconds = Some(secs);
                self.metrics.boot_duration.observe(secs);
                changed = true;
            }
        }
        if step.effects.revoke_key {
            row.key_epoch += 1;
            changed = true;
        }
        match step.to {
            Some(to) if to != row.state => {
                let old = std::mem::replace(&mut row.state, to);
                let text = if why.is_empty() {
                    format!("{old} → {to}")
                } else {
                    format!("{old} → {to}: {why}")
                };
                self.save(row, Some(("state", &text)))
            }
            _ if changed => self.save(row, None),
            _ => {
                self.publish(row);
                Ok(())
            }
        }
    }

    fn refresh_gauges(&self) {
        let inner = self.inner();
        for s in NodeState::ALL {
            let n = inner.counts.get(&s).copied().unwrap_or(0);
            self.metrics
                .nodes
                .get_or_create(&labels(&[("state", s.as_str())]))
                .set(n);
        }
    }

    /// Nodes per state (the dashboard's counters, shown to anyone).
    pub fn counts(&self) -> HashMap<NodeState, i64> {
        self.inner().counts.clone()
    }

    /// A fresh row for `mac` (not yet saved).
    fn new_row(
        &self,
        mac: Mac,
        approved: bool,
        from: Option<IpAddr>,
    ) -> Result<NodeRow, StoreError> {
        let ts = now();
        Ok(NodeRow {
            mac,
            name: self.new_name(mac)?,
            group: self.new_group(mac, from),
            state: lifecycle::first_state(false),
            ip: None,
            info: None,
            heartbeat: None,
            last_seen: Some(ts),
            first_dhcp: Some(ts),
            boot_seconds: None,
            key_epoch: 0,
            released: false,
            approved,
            created: ts,
            quarantine: None,
            wakes_tried: 0,
            wakes_woke: 0,
            enlisted_secs: 0,
            job_secs: 0,
            kernel_args: String::new(),
        })
    }

    /// The node with this MAC; a new one (state `seen`) if `source` may create it under the
    /// enrollment policy and the admission limits. `Ok(None)`: not enlisted here.
    fn node_or_new(&self, mac: Mac, source: IpAddr) -> Result<Option<NodeRow>, RegistryError> {
        if let Some(n) = self.store.node(mac)? {
            return Ok(Some(n));
        }
        let reserved = self.vouched(mac);
        if !reserved && !self.enrolls_new() {
            return Ok(None);
        }
        let nodes = self.inner().live.len();
        let admitted = self.inner().admission.admit(source, nodes, Instant::now());
        if let Err(e) = admitted {
            tracing::debug!(%mac, %source, "registry: new node refused: {e}");
            self.metrics
                .refused(&self.metrics.registry_refused, e.reason());
            return Err(e.into());
        }
        let row = self.new_row(mac, true, Some(source))?;
        let how = if reserved {
            "reserved or named by the admin"
        } else if self.config().nodes.enrollment == Enrollment::Open {
            "enrollment open"
        } else {
            "in the enrollment window"
        };
        self.save(
            &row,
            Some(("new", &format!("first seen (from {source}; {how})"))),
        )?;
        Ok(Some(row))
    }

    /// Whether a new PC becomes a node by booting now: enrollment `open`, or a window open.
    fn enrolls_new(&self) -> bool {
        self.config().nodes.enrollment == Enrollment::Open || self.enrollment_left().is_some()
    }

    /// Open the enrollment window for `length` from now (zero closes it): new PCs that boot
    /// meanwhile become nodes with no approval, whatever the policy.
    pub fn open_enrollment(&self, length: std::time::Duration) {
        self.inner().enrollment.open(Instant::now(), length);
        match self.enrollment_left() {
            Some(left) => tracing::info!(
                "enrollment window open for {} s: new PCs that boot now become nodes",
                left.as_secs()
            ),
            None => tracing::info!("enrollment window closed"),
        }
    }

    /// How long the enrollment window stays open; None when closed.
    pub fn enrollment_left(&self) -> Option<std::time::Duration> {
        self.inner().enrollment.left(Instant::now())
    }

    /// Queue a command for a node's agent, in its current session. Returns its id.
    pub fn command(&self, mac: Mac, order: Order) -> Result<u64, RegistryError> {
        let mut row = self.node(mac)?;
        let release = order == Order::Release;
        let kind = order.kind();
        let id = self
            .inner()
            .queue_command(mac, order)
            .ok_or_else(|| RegistryError::NotOnline(row.name.clone()))?;
        self.save(&row, Some(("command", &format!("#{id} {kind} sent"))))?;
        if release {
            row.released = true;
            self.save(
                &row,
                Some(("released", "PXE will answer with local disk boot")),
            )?;
        }
        Ok(id)
    }

    /// Queue a command of a run (exec, copy) for a node's agent (signed for it when delivered); its id, or
    /// None when the agent has no session. In memory only: the caller records it in the
    /// node's history ([`Registry::note`]).
    pub fn queue_work(&self, mac: Mac, order: Order) -> Option<u64> {
        self.inner().queue_command(mac, order)
    }

    /// Hand a PC back to its own disk: mark it released and tell its agent to reboot.
    pub fn release(&self, mac: Mac) -> Result<(), RegistryError> {
        let mut row = self.node(mac)?;
        let online = self.inner().online(mac);
        if online && row.state.is_alive() {
            self.command(mac, Order::Release)?;
        } else {
            row.released = true;
            self.apply(&mut row, Event::ReleasedOffline, "released while offline")?;
        }
        Ok(())
    }

    /// Enlist a released node again: its next network boot boots the node OS.
    pub fn enlist(&self, mac: Mac) -> Result<(), RegistryError> {
        let mut row = self.node(mac)?;
        row.released = false;
        self.save(
            &row,
            Some(("enlisted", "next network boot starts the node OS")),
        )?;
        Ok(())
    }

    /// Approve a node: an approval candidate becomes a node (it boots at its next try).
    pub fn approve(&self, mac: Mac) -> Result<(), RegistryError> {
        let candidate = self.inner().candidates.remove(&mac);
        let mut row = match (self.store.node(mac)?, candidate) {
            (Some(r), _) => r,
            (None, Some(c)) => {
                let mut row = self.new_row(mac, true, c.row.ip.map(IpAddr::V4))?;
                row.group = c.row.group;
                row
            }
            (None, None) => return Err(RegistryError::UnknownNode(mac.to_string())),
        };
        row.approved = true;
        let why = match row.quarantine.take() {
            Some(q) => {
                // The admin vouches for this PC as it is now: its next registration is the
                // inventory later ones are compared with.
                row.info = None;
                format!("by admin (it was held back: {q})")
            }
            None => "by admin".to_string(),
        };
        self.save(&row, Some(("approved", &why)))?;
        self.apply(&mut row, Event::Approved, "approved")?;
        Ok(())
    }

    pub fn rename(&self, mac: Mac, name: &str) -> Result<(), RegistryError> {
        if !valid_host_label(name) {
            return Err(RegistryError::BadName(name.into()));
        }
        let mut row = self.node(mac)?;
        if !self.name_free(name, mac)? {
            return Err(RegistryError::NameTaken(name.into()));
        }
        let old = std::mem::replace(&mut row.name, name.to_string());
        self.save(&row, Some(("renamed", &format!("{old} → {name}"))))?;
        Ok(())
    }

    /// Forget a node that is not up (`enlist node forget`): its row is deleted and what is
    /// kept of it in memory dropped; `said` (what the workload manager did) is its last
    /// history event, kept with the rest of its MAC's history. Its next boot is a new PC's
    /// (the enrollment policy decides); a name imported for its MAC stays. The row it had.
    pub fn forget(&self, mac: Mac, said: &str) -> Result<NodeRow, RegistryError> {
        let row = self.node(mac)?;
        Self::forgettable(&row)?;
        let detail = format!("{} forgotten: {said}", row.name);
        let Some(ev) = self.store.delete_node(mac, &detail, now())? else {
            return Err(RegistryError::UnknownNode(mac.to_string()));
        };
        self.inner().forget(mac);
        tracing::info!(node = %row.name, mac = %mac, "{detail}");
        let _ = self.updates.send(Update::Event(ev));
        self.refresh_gauges();
        Ok(row)
    }

    /// A node may be forgotten unless it is up (a released one is on its way out).
    pub fn forgettable(row: &NodeRow) -> Result<(), RegistryError> {
        if row.state.is_alive() && !row.released {
            return Err(RegistryError::Up(row.name.clone()));
        }
        Ok(())
    }

    /// Put a node in another group (the dashboard's or `enlist node group`).
    pub fn set_group(&self, mac: Mac, group: &str) -> Result<(), RegistryError> {
        if !valid_host_label(group) {
            return Err(RegistryError::BadName(group.into()));
        }
        let mut row = self.node(mac)?;
        let old = std::mem::replace(&mut row.group, group.to_string());
        self.save(&row, Some(("group", &format!("{old} → {group}"))))?;
        Ok(())
    }

    /// The nodes that are up (registered, healthy, draining) with their MAC and address, and
    /// a version that changes with them: whom the cluster's services let in.
    pub fn members(&self) -> (u64, Vec<(Mac, std::net::Ipv4Addr)>) {
        let inner = self.inner();
        let members = inner
            .peers
            .iter()
            .filter_map(|(mac, p)| Some((*mac, p.ip.parse().ok()?)))
            .collect();
        (inner.peers_version, members)
    }

    /// Enlisted nodes with an address, for /etc/hosts on every node.
    pub fn peers(&self) -> (u64, Vec<Peer>) {
        let inner = self.inner();
        (inner.peers_version, inner.peers.values().cloned().collect())
    }

    /// Let the clock act on every node: lost, gone, stuck (see [`lifecycle`]). Run every second
    /// with the current time (tests pass their own).
    pub fn sweep(&self, now: Instant) -> Result<(), StoreError> {
        if now.saturating_duration_since(self.started) < self.config().nodes.lost_after {
            return Ok(());
        }
        let due = self.inner().due(now, self.started, &self.limits());
        for (mac, silent) in due {
            let Some(mut row) = self.store.node(mac)? else {
                continue;
            };
            let mut why = format!("silent for {}s", silent.as_secs());
            if row.state == NodeState::Booting {
                // It may become stuck: say what was last seen of its boot.
                let inner = self.inner();
                let trace = inner.live.get(&mac).map(|l| l.trace.as_slice());
                if let Some(seen) = trace.and_then(|t| view::last_seen(t, live::now_ms())) {
                    why = format!("{why}; last seen: {seen}");
                }
            }
            self.apply(&mut row, Event::Tick { silent }, &why)?;
        }
        self.count_lent(now, false)?;
        self.inner().prune(now);
        self.nonces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expire(crate::store::now());
        Ok(())
    }

    /// How long ago the PC's own OS last asked DHCP for an address, and the address it
    /// asked for (see [`live::Inner::note_own_os`]).
    pub fn own_os_seen(
        &self,
        mac: Mac,
    ) -> Option<(std::time::Duration, Option<std::net::Ipv4Addr>)> {
        let (at, ip) = self.inner().live.get(&mac)?.own_os?;
        Some((at.elapsed(), ip))
    }

    /// Count what the nodes were lent since the last sweep (metrics now, rows once a minute,
    /// or now if `force`: at shutdown).
    pub fn count_lent(&self, now: Instant, force: bool) -> Result<(), StoreError> {
        let (by_group, due) = self.inner().sample_lent(now, force);
        for (group, l) in by_group {
            for (what, ms) in [("enlisted", l.enlisted_ms), ("jobs", l.jobs_ms)] {
                if ms > 0 {
                    self.metrics
                        .lent_seconds
                        .get_or_create(&crate::metrics::labels(&[
                            ("group", &group),
                            ("what", what),
                        ]))
                        .inc_by(ms as f64 / 1000.0);
                }
            }
        }
        if due.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.add_lent(&due) {
            self.inner().lent.restore(&due);
            return Err(e);
        }
        Ok(())
    }

    /// The scheduler's view of every node, from the jobs' poll: kept, and the nodes whose
    /// view changed are published to dashboards.
    pub fn set_sched(&self, sched: HashMap<String, SchedInfo>) {
        let changed: Vec<String> = {
            let mut inner = self.inner();
            let changed = sched
                .iter()
                .filter(|(n, v)| inner.sched.get(*n) != Some(v))
                .map(|(n, _)| n.clone())
                .chain(
                    inner
                        .sched
                        .keys()
                        .filter(|n| !sched.contains_key(*n))
                        .cloned(),
                )
                .collect();
            inner.sched = sched;
            changed
        };
        if changed.is_empty() || self.updates.receiver_count() == 0 {
            return;
        }
        let Ok(rows) = self.store.nodes() else { return };
        for row in rows.iter().filter(|r| changed.contains(&r.name)) {
            self.publish(row);
        }
    }

    /// The scheduler's view of the node called `name`.
    pub fn sched_of(&self, name: &str) -> Option<SchedInfo> {
        self.inner().sched.get(name).cloned()
    }

    /// CPUs and memory (MB) the scheduler has, in all and free, over the nodes it can use.
    pub fn sched_totals(&self) -> SchedTotals {
        let inner = self.inner();
        let mut t = SchedTotals::default();
        for s in inner.sched.values() {
            if !matches!(s.state.as_str(), "idle" | "mixed" | "allocated") {
                continue;
            }
            t.nodes += 1;
            t.cpus += s.cpus;
            t.cpus_free += s.cpus.saturating_sub(s.cpus_alloc);
            t.mem_mb += s.mem_mb;
            t.mem_free_mb += s.mem_mb.saturating_sub(s.mem_alloc_mb);
            t.jobs += s.jobs;
        }
        t
    }

    /// A release waits for the node's jobs: it is draining.
    pub fn drain_started(
        &self,
        mac: Mac,
        deadline: std::time::Duration,
    ) -> Result<(), RegistryError> {
        let mut row = self.node(mac)?;
        let why = format!(
            "released; the scheduler gives it no more jobs, and it leaves when its jobs end (or in {} s, requeueing them)",
            deadline.as_secs()
        );
        self.apply(&mut row, Event::DrainStarted, &why)?;
        Ok(())
    }

    /// Set the groups a schedule has released now (see [`crate::timetable`]).
    pub fn set_released_groups(&self, groups: std::collections::HashSet<String>) {
        self.inner().released_groups = groups;
    }

    /// Send a node's PC the Wake-on-LAN packet; its history says where it went.
    pub fn wake(&self, mac: Mac) -> Result<String, RegistryError> {
        let ip = self.node(mac)?.ip;
        let said = self.magic_packet(mac, ip);
        self.note(mac, "wake", &said)?;
        Ok(said)
    }

    /// Send the PC last seen at `ip` its magic packet; where it went, for its history.
    fn magic_packet(&self, mac: Mac, ip: Option<std::net::Ipv4Addr>) -> String {
        match crate::wol::wake(&self.config(), mac, ip) {
            Ok(sent) => format!("magic packet sent ({})", sent.join(", ")),
            Err(e) => format!("magic packet not sent: {e}"),
        }
    }

    /// Wake a PC for work (Slurm, a schedule): the magic packet as [`Registry::wake`], counted,
    /// and watched: it woke if it registers, else [`Registry::overdue_wakes`] finds it.
    pub fn wake_counted(&self, mac: Mac, why: &str) -> Result<String, RegistryError> {
        let mut row = self.node(mac)?;
        row.wakes_tried += 1;
        let said = format!("{why}: {}", self.magic_packet(mac, row.ip));
        self.save(&row, Some(("wake", &said)))?;
        self.inner().waking.insert(mac, Instant::now());
        self.count_wake(&row.group, "sent");
        Ok(said)
    }

    /// Count a wake for work of a node of `group` (see [`Metrics::wakes`]).
    pub fn count_wake(&self, group: &str, outcome: &str) {
        self.metrics
            .wakes
            .get_or_create(&labels(&[("group", group), ("outcome", outcome)]))
            .inc();
    }

    /// The PCs woken more than `timeout` ago that have not registered (no longer watched),
    /// each with its count of wakes and of those that worked, for its history and the reason
    /// the workload manager shows.
    pub fn overdue_wakes(
        &self,
        timeout: Duration,
    ) -> Result<Vec<(NodeRow, String)>, RegistryError> {
        let overdue: Vec<Mac> = {
            let mut inner = self.inner();
            let late: Vec<Mac> = inner
                .waking
                .iter()
                .filter(|(_, at)| at.elapsed() > timeout)
                .map(|(m, _)| *m)
                .collect();
            for m in &late {
                inner.waking.remove(m);
            }
            late
        };
        let mut out = vec![];
        for mac in overdue {
            let row = self.node(mac)?;
            let said = format!(
                "did not wake within {}s of its magic packet (woke {} of {} tries); not tried again before its group's next window",
                timeout.as_secs(),
                row.wakes_woke,
                row.wakes_tried
            );
            self.save(&row, Some(("wake", &said)))?;
            self.count_wake(&row.group, "did-not-wake");
            out.push((row, said));
        }
        Ok(out)
    }

    /// An event in the node's history (from the head's own services: jobs, schedules).
    pub fn note(&self, mac: Mac, kind: &str, detail: &str) -> Result<(), RegistryError> {
        let row = self.node(mac)?;
        self.save(&row, Some((kind, detail)))?;
        Ok(())
    }

    /// What the agent says of its part in the jobs; a change is an event.
    pub fn jobs_status(
        &self,
        mac: Mac,
        status: &enlist_api::NodeStatus,
    ) -> Result<(), RegistryError> {
        let text = if status.detail.is_empty() {
            status.jobs.clone()
        } else {
            format!("{}: {}", status.jobs, status.detail)
        };
        let text: String = text.chars().filter(|c| !c.is_control()).take(300).collect();
        let old = self
            .inner()
            .live
            .entry(mac)
            .or_default()
            .jobs
            .replace(text.clone());
        let row = self.node(mac)?;
        // A change is history, within the agent's budget (a node flapping between two
        // statuses must not fill the database).
        if old.as_deref() != Some(text.as_str()) && self.agent_may_write(mac) {
            self.save(&row, Some(("jobs", &text)))?;
        }
        Ok(())
    }

    /// Whether command `id` of `mac` is still to be fetched or answered (not dropped).
    pub fn command_pending(&self, mac: Mac, id: u64) -> bool {
        let inner = self.inner();
        inner
            .live
            .get(&mac)
            .is_some_and(|l| l.commands.iter().any(|(c, _)| *c == id) || l.awaiting.contains(&id))
    }

    /// Whether command `id` of `mac` ended with its session before its agent fetched it (so
    /// it never ran, and never will).
    pub fn command_dropped(&self, mac: Mac, id: u64) -> bool {
        self.inner().dropped(mac, id)
    }

    fn touch(&self, mac: Mac) {
        self.inner().touch(mac, Instant::now());
    }
}

#[cfg(test)]
pub(crate) mod tests;
