//! What the registry keeps in memory: per node (session, sequence window, last heartbeat,
//! commands, the boot trace) and across nodes (nonces, sessions, tokens, peers, counts).
//! Everything here is rebuilt from the database at start or from the agents' next requests.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enlist_api::{Heartbeat, Mac, NodeInfo, Order, Peer};
use tokio::sync::Notify;

use crate::bootpath::Proto;
use crate::config::Config;
use crate::lifecycle::{self, Event, Facts, Limits, NodeState};
use crate::store::NodeRow;

use super::admission::{Admission, AdmissionLimits, EnrollmentWindow};
use super::tokens::BootTokens;
use enlist_api::admin::SchedInfo;

/// Steps kept per boot trace (a boot has about ten).
const TRACE_STEPS: usize = 40;
/// Addresses of PXE clients remembered, to follow the fetches of their boots.
const BOOT_IPS: usize = 8192;
/// Live boot tokens at most.
const TOKENS: usize = 8192;
/// PCs waiting for approval at most (enrollment `approve`); the oldest is forgotten first.
const CANDIDATES: usize = 1024;
/// An approval candidate not heard from for this long is forgotten (it retries while waiting).
const CANDIDATE_TTL: Duration = Duration::from_secs(600);

pub use enlist_api::admin::BootStep;

/// The in-memory part of a node.
#[derive(Default)]
pub(super) struct Live {
    pub session: Option<String>,
    /// Highest request sequence number seen in this session, and a bitmap of the 64 below it
    /// (an anti-replay window, as IPsec's: the agent's threads may overtake each other).
    pub seq: u64,
    pub seq_window: u64,
    pub heartbeat: Option<Heartbeat>,
    pub info: Option<NodeInfo>,
    pub last_seen: Option<Instant>,
    /// Commands not yet fetched by the agent (signed when delivered), for its current
    /// session only: they end with it.
    pub commands: VecDeque<(u64, Order)>,
    /// Commands that ended with a session before their agent fetched them: never run (exec
    /// runs report them so). The last [`AWAITED`].
    pub dropped: VecDeque<u64>,
    /// From the database on every save, so requests authenticate without it.
    pub epoch: i64,
    pub state: Option<NodeState>,
    /// Its name and group, from the database on every save (the sweep's accounting reads
    /// them without it).
    pub name: String,
    pub group: String,
    pub notify: Arc<Notify>,
    /// This boot's steps, oldest first.
    pub trace: Vec<BootStep>,
    /// Kernel or initrd fetched in this boot.
    pub os_fetched: bool,
    /// The image whose initrd (with the node's key) it was sent in this boot.
    pub image: Option<String>,
    /// When this boot began (unix seconds): its first PXE DHCP, or its first file.
    pub boot_started: Option<i64>,
    /// What the agent last said of its part in the jobs.
    pub jobs: Option<String>,
    /// When a released PC was last recorded as sent to its own disk (once per
    /// [`LOCAL_DISK_EVENT_EVERY`]: its boot script is unauthenticated, so it must not write
    /// the history on every request).
    pub local_disk_noted: Option<Instant>,
    /// When its card's missing driver was last recorded (as `local_disk_noted`).
    pub nic_noted: Option<Instant>,
    /// Commands delivered whose result (reboot, release, ...) may still come: a result for
    /// any other id is refused, so one node key cannot write history rows at will.
    pub awaiting: VecDeque<u64>,
    /// A boot of its MAC refused while its node was up: when, and from where. A heartbeat
    /// well after it shows two PCs with one MAC (see `quarantine::clone_check`).
    pub conflict: Option<(Instant, IpAddr)>,
    /// When its own OS (not ours: the node was gone, lost or released) last asked DHCP for
    /// an address, and which: the PC is up for its owner, and must not be woken for work.
    pub own_os: Option<(Instant, Option<std::net::Ipv4Addr>)>,
    /// History rows its agent may still write now (jobs status changes): a token bucket of
    /// [`HISTORY_BURST`], refilled one per [`HISTORY_REFILL`].
    pub history_budget: Option<(f64, Instant)>,
}

/// Results awaited per node at most (an admin's commands to one node come a few at a time).
pub(super) const AWAITED: usize = 64;
/// History rows a node's agent may write at once, then one per [`HISTORY_REFILL`].
pub(super) const HISTORY_BURST: f64 = 20.0;
pub(super) const HISTORY_REFILL: Duration = Duration::from_secs(6);

impl Live {
    /// Forget the queued commands (their session ended) and the results awaited.
    fn drop_commands(&mut self) {
        for (id, _) in self.commands.drain(..) {
            if self.dropped.len() >= AWAITED {
                self.dropped.pop_front();
            }
            self.dropped.push_back(id);
        }
        self.awaiting.clear();
    }

    /// May its agent write one more history row now? Takes a token if so.
    pub fn may_write_history(&mut self, now: Instant) -> bool {
        let (tokens, at) = self.history_budget.unwrap_or((HISTORY_BURST, now));
        let refill = now.saturating_duration_since(at).as_secs_f64() / HISTORY_REFILL.as_secs_f64();
        let tokens = (tokens + refill).min(HISTORY_BURST);
        let ok = tokens >= 1.0;
        self.history_budget = Some((if ok { tokens - 1.0 } else { tokens }, now));
        ok
    }
}

/// How often a released PC's local disk answer goes into its history at most.
pub(super) const LOCAL_DISK_EVENT_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// A PC waiting for an admin's approval: shown, never stored.
pub(super) struct Candidate {
    pub row: NodeRow,
    pub seen: Instant,
}

pub(super) struct Inner {
    pub live: HashMap<Mac, Live>,
    /// Agent session → MAC.
    pub sessions: HashMap<String, Mac>,
    pub tokens: BootTokens,
    pub admission: Admission,
    /// While open, new PCs become nodes whatever the enrollment policy.
    pub enrollment: EnrollmentWindow,
    pub candidates: HashMap<Mac, Candidate>,
    /// PXE clients' addresses (from DHCP), to follow the fetches of a boot (TFTP carries no MAC).
    pub boot_ips: HashMap<IpAddr, (Mac, Instant)>,
    pub next_command: u64,
    /// Enlisted nodes with an address (MAC → peer), kept in step with every save.
    pub peers: BTreeMap<Mac, Peer>,
    /// Changes exactly when `peers` does.
    pub peers_version: u64,
    /// Nodes per state, kept in step with every save.
    pub counts: HashMap<NodeState, i64>,
    /// The first sweep after start looks at every node.
    pub swept_once: bool,
    /// The scheduler's view of the nodes, by node name (jobs on).
    pub sched: HashMap<String, SchedInfo>,
    /// Groups whose schedule has them released now: their PCs boot their own disks. Every
    /// scheduled group until the schedules say otherwise (before the head's first look).
    pub released_groups: std::collections::HashSet<String>,
    /// PCs sent a magic packet and not registered since, with when: each either registers
    /// (it woke) or is found overdue (it did not wake).
    pub waking: HashMap<Mac, Instant>,
    /// Time lent, counted and not yet written to the rows.
    pub lent: super::lent::Ledger,
    /// Names the admin imported, by MAC (the `names` table, read at start).
    pub names: HashMap<Mac, enlist_api::admin::NamedPc>,
}

impl Inner {
    pub fn new(cfg: &Config) -> Inner {
        let n = &cfg.nodes;
        Inner {
            live: HashMap::new(),
            sessions: HashMap::new(),
            tokens: BootTokens::new(n.boot_token_ttl, TOKENS),
            admission: Admission::new(AdmissionLimits {
                per_minute: n.new_per_minute,
                burst: n.new_burst,
                max_nodes: n.max_nodes,
            }),
            enrollment: EnrollmentWindow::default(),
            candidates: HashMap::new(),
            boot_ips: HashMap::new(),
            next_command: 1,
            peers: BTreeMap::new(),
            peers_version: 1,
            counts: HashMap::new(),
            swept_once: false,
            sched: HashMap::new(),
            released_groups: cfg.schedules.iter().map(|s| s.group.clone()).collect(),
            waking: HashMap::new(),
            lent: super::lent::Ledger::default(),
            names: HashMap::new(),
        }
    }

    /// Take in a node row about to be saved: the per-node cache, state counts and peers.
    pub fn remember(&mut self, row: &NodeRow) {
        let live = self.live.entry(row.mac).or_default();
        live.epoch = row.key_epoch;
        live.name.clone_from(&row.name);
        live.group.clone_from(&row.group);
        if live.info.is_none() {
            live.info = row
                .info
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok());
        }
        let old = live.state.replace(row.state);
        if old != Some(row.state) {
            if let Some(old) = old {
                *self.counts.entry(old).or_default() -= 1;
            }
            *self.counts.entry(row.state).or_default() += 1;
        }
        let peer = match row.ip {
            Some(ip) if row.state.is_peer() => Some(Peer {
                name: row.name.clone(),
                ip: ip.to_string(),
            }),
            _ => None,
        };
        let changed = match peer {
            Some(p) => self.peers.insert(row.mac, p.clone()) != Some(p),
            None => self.peers.remove(&row.mac).is_some(),
        };
        if changed {
            self.peers_version += 1;
        }
    }

    pub fn online(&self, mac: Mac) -> bool {
        self.live.get(&mac).is_some_and(|l| l.session.is_some())
    }

    pub fn os_fetched(&self, mac: Mac) -> bool {
        self.live.get(&mac).is_some_and(|l| l.os_fetched)
    }

    /// Whether its last boot (as traced) fetched the node OS and never registered.
    pub fn fetched_and_never_registered(&self, mac: Mac) -> bool {
        self.live
            .get(&mac)
            .is_some_and(|l| l.os_fetched && !l.trace.iter().any(|s| s.step == "registered"))
    }

    /// A new agent session for `mac`, replacing its old one (and whatever was queued for it).
    pub fn open_session(&mut self, mac: Mac, session: String, info: NodeInfo) {
        let live = self.live.entry(mac).or_default();
        live.drop_commands();
        let old = live.session.replace(session.clone());
        live.seq = 0;
        live.seq_window = 0;
        live.last_seen = Some(Instant::now());
        live.info = Some(info);
        if let Some(old) = old {
            self.sessions.remove(&old);
        }
        self.sessions.insert(session, mac);
    }

    /// The session ends, and with it every command queued and not yet fetched.
    pub fn end_session(&mut self, mac: Mac) {
        let Some(live) = self.live.get_mut(&mac) else {
            return;
        };
        live.drop_commands();
        // Its node is down now: a boot of its MAC is no longer a second PC.
        live.conflict = None;
        if let Some(s) = live.session.take() {
            self.sessions.remove(&s);
        }
    }

    /// Drop everything kept in memory of a node that is forgotten (its row deleted): its
    /// session, counts, peer entry, tokens, a wake awaited, its boot addresses.
    pub fn forget(&mut self, mac: Mac) {
        self.end_session(mac);
        if let Some(state) = self.live.remove(&mac).and_then(|l| l.state) {
            *self.counts.entry(state).or_default() -= 1;
        }
        if self.peers.remove(&mac).is_some() {
            self.peers_version += 1;
        }
        self.tokens.end(mac);
        self.waking.remove(&mac);
        self.candidates.remove(&mac);
        self.boot_ips.retain(|_, (m, _)| *m != mac);
    }

    pub fn new_boot(&mut self, mac: Mac) {
        let live = self.live.entry(mac).or_default();
        live.trace.clear();
        live.os_fetched = false;
        live.boot_started = Some(crate::store::now());
    }

    pub fn touch(&mut self, mac: Mac, at: Instant) {
        self.live.entry(mac).or_default().last_seen = Some(at);
    }

    /// Add a step to the node's boot trace (bounded).
    pub fn trace(&mut self, mac: Mac, step: &str, via: Proto, detail: String) {
        let live = self.live.entry(mac).or_default();
        if matches!(step, "kernel" | "initrd") {
            live.os_fetched = true;
        }
        if live.trace.len() >= TRACE_STEPS {
            live.trace.remove(0);
        }
        live.trace.push(BootStep {
            at_ms: now_ms(),
            step: step.to_string(),
            via,
            detail,
        });
    }

    pub fn remember_boot_ip(&mut self, ip: IpAddr, mac: Mac, at: Instant) {
        if !self.boot_ips.contains_key(&ip) && self.boot_ips.len() >= BOOT_IPS {
            if let Some(oldest) = self
                .boot_ips
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| *i)
            {
                self.boot_ips.remove(&oldest);
            }
        }
        self.boot_ips.insert(ip, (mac, at));
    }

    /// Which node is booting at `ip`: the one its boot token was issued to, else its DHCP.
    pub fn mac_at(&self, ip: IpAddr) -> Option<Mac> {
        self.tokens
            .mac_at(ip)
            .or_else(|| self.boot_ips.get(&ip).map(|(m, _)| *m))
    }

    pub fn add_candidate(&mut self, row: NodeRow, at: Instant) {
        if !self.candidates.contains_key(&row.mac) && self.candidates.len() >= CANDIDATES {
            if let Some(oldest) = self
                .candidates
                .iter()
                .min_by_key(|(_, c)| c.seen)
                .map(|(m, _)| *m)
            {
                self.candidates.remove(&oldest);
            }
        }
        let mac = row.mac;
        self.candidates
            .entry(mac)
            .and_modify(|c| c.seen = at)
            .or_insert(Candidate { row, seen: at });
    }

    /// Queue a command for `mac`'s current session; None when it has none (a command is
    /// never kept for a later session: it would run days later, or for whoever registers
    /// with that MAC next).
    pub fn queue_command(&mut self, mac: Mac, order: Order) -> Option<u64> {
        let live = self.live.get_mut(&mac).filter(|l| l.session.is_some())?;
        let id = self.next_command;
        self.next_command += 1;
        live.commands.push_back((id, order));
        live.notify.notify_waiters();
        Some(id)
    }

    /// Whether command `id` of `mac` ended with its session before its agent fetched it.
    pub fn dropped(&self, mac: Mac, id: u64) -> bool {
        self.live.get(&mac).is_some_and(|l| l.dropped.contains(&id))
    }

    /// Nodes the clock has something to say about now, with how long each has been silent.
    pub fn due(&mut self, now: Instant, started: Instant, limits: &Limits) -> Vec<(Mac, Duration)> {
        let first = !std::mem::replace(&mut self.swept_once, true);
        self.live
            .iter()
            .filter_map(|(mac, l)| {
                let state = l.state?;
                let silent = now.saturating_duration_since(l.last_seen.unwrap_or(started));
                let facts = Facts {
                    released: false,
                    os_fetched: l.os_fetched,
                };
                let step = lifecycle::next(state, facts, Event::Tick { silent }, limits);
                (first || step.to.is_some_and(|to| to != state)).then_some((*mac, silent))
            })
            .collect()
    }

    /// Count the time since the last sweep for each enlisted node (and its jobs); returns
    /// what was added by group, and the rows' totals to write if a flush is due.
    pub fn sample_lent(
        &mut self,
        now: Instant,
        force: bool,
    ) -> (super::lent::ByGroup, Vec<super::lent::Due>) {
        let nodes = self.live.iter().map(|(mac, l)| super::lent::Sample {
            mac: *mac,
            group: &l.group,
            enlisted: l.state.is_some_and(NodeState::is_peer),
            busy: self
                .sched
                .get(&l.name)
                .is_some_and(|s| s.jobs > 0 || s.cpus_alloc > 0),
        });
        let by_group = self.lent.sample(now, nodes);
        (by_group, self.lent.take_due(now, force))
    }

    /// A DHCP client that is no network boot asked from `mac`: if its node is not running
    /// our OS (gone, lost, released), the PC's own OS is up.
    pub fn note_own_os(&mut self, mac: Mac, ip: Option<std::net::Ipv4Addr>) {
        let Some(live) = self.live.get_mut(&mac) else {
            return;
        };
        let ours = live
            .state
            .is_none_or(|s| s.is_alive() || s.is_booting() || s == NodeState::Leaving);
        if !ours {
            live.own_os = Some((Instant::now(), ip));
        }
    }

    /// Forget what has expired: tokens, approval candidates, old boot addresses.
    pub fn prune(&mut self, now: Instant) {
        self.tokens.prune(now);
        self.candidates
            .retain(|_, c| now.saturating_duration_since(c.seen) < CANDIDATE_TTL);
        self.boot_ips
            .retain(|_, (_, t)| now.saturating_duration_since(*t) < Duration::from_secs(3600));
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
