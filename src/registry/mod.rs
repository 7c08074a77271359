//! The node registry: every PC the head has seen, the state of its boot, its agent session and
//! the commands waiting for it.
//!
//! Durable facts (name, state, addresses, approval, release, events) live in SQLite through
//! [`Store`]; fast-changing ones (agent sessions, sequence numbers, heartbeats, command queues)
//! live in memory, so 10,000 heartbeats do not mean 10,000 fsyncs. A head restart loses only
//! sessions: agents get 401 and register again by themselves.
//!
//! States follow a boot: `seen` (DHCP) → `booting` (boot files fetched) → `registered` (agent)
//! → `healthy` (heartbeats) → `leaving` → `gone`; or `lost` when heartbeats stop, `pending` while
//! waiting for approval, `released` after the PC was handed back to its own disk.

mod agent;
mod keys;
mod observe;
mod overlay;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use enlist_api::{CommandKind, Heartbeat, NodeInfo, Peer};
use serde::Serialize;
use tokio::sync::{broadcast, Notify};

use crate::config::{Config, Enrollment};
use crate::metrics::{labels, Metrics};
use crate::store::{now, EventRow, NodeRow, Store, StoreError};

pub use agent::{AgentError, Signed};
pub use keys::{token as keys_token, Keys};

/// Node states, as stored and shown.
pub mod state {
    pub const SEEN: &str = "seen";
    pub const BOOTING: &str = "booting";
    pub const PENDING: &str = "pending";
    pub const REGISTERED: &str = "registered";
    pub const HEALTHY: &str = "healthy";
    pub const LEAVING: &str = "leaving";
    pub const GONE: &str = "gone";
    pub const LOST: &str = "lost";
    pub const RELEASED: &str = "released";
    pub const ALL: [&str; 9] = [
        SEEN, BOOTING, PENDING, REGISTERED, HEALTHY, LEAVING, GONE, LOST, RELEASED,
    ];
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("no node with name or MAC {0:?}")]
    UnknownNode(String),
    #[error("name {0:?} is taken by another node")]
    NameTaken(String),
    #[error("invalid name {0:?}: use 1-63 letters, digits and '-'")]
    BadName(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the dashboard and API show for a node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub row: NodeRow,
    pub info: Option<NodeInfo>,
    pub heartbeat: Option<Heartbeat>,
    /// Seconds since the last packet or request from this node.
    pub silent_secs: Option<i64>,
    pub online: bool,
}

/// A change pushed to dashboards (server-sent events).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Update {
    Node(Box<NodeView>),
    Event(EventRow),
}

/// What a node's boot script should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDecision {
    Boot { name: String, image: String },
    LocalDisk,
    NotEnlisted,
}

/// In-memory part of a node.
#[derive(Default)]
struct Live {
    session: Option<String>,
    /// Highest request sequence number seen in this session, and a bitmap of the 64 below it
    /// (an anti-replay window, as IPsec's: the agent's threads may overtake each other).
    seq: u64,
    seq_window: u64,
    heartbeat: Option<Heartbeat>,
    last_seen: Option<Instant>,
    /// Commands not yet fetched by the agent (signed when delivered, with the session then current).
    commands: VecDeque<(u64, CommandKind)>,
    /// Cached from the database on every save, so steady heartbeats need no database access:
    /// the node's key epoch, and whether it is `healthy` already.
    epoch: Option<i64>,
    steady: bool,
    /// The node's state as last saved.
    state: Option<String>,
    notify: Arc<Notify>,
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Live>,
    /// Registration nonces: nonce → expiry (unix seconds).
    nonces: HashMap<String, i64>,
    /// Agent session → MAC.
    sessions: HashMap<String, String>,
    /// IP → MAC, so TFTP fetches (which carry no MAC) can be tied to a node.
    ip_to_mac: HashMap<Ipv4Addr, String>,
    next_command: u64,
    /// Enlisted nodes with an address (MAC → peer), kept in step with every save so that
    /// neither registration nor a peers request reads the node table.
    peers: BTreeMap<String, Peer>,
    /// Changes exactly when `peers` does.
    peers_version: u64,
    /// Nodes per state, for the `enlist_nodes` gauge, kept in step with every save.
    counts: HashMap<String, i64>,
    /// The first sweep after start looks at every node.
    swept_once: bool,
}

impl Inner {
    /// Take in a node row about to be saved: the per-node cache, state counts and peers.
    fn remember(&mut self, row: &NodeRow) {
        let live = self.live.entry(row.mac.clone()).or_default();
        live.epoch = Some(row.key_epoch);
        live.steady = row.state == state::HEALTHY;
        let old = live.state.replace(row.state.clone());
        if old.as_deref() != Some(row.state.as_str()) {
            if let Some(old) = old {
                *self.counts.entry(old).or_default() -= 1;
            }
            *self.counts.entry(row.state.clone()).or_default() += 1;
        }
        let peer = match (&row.ip, row.state.as_str()) {
            (Some(ip), state::REGISTERED | state::HEALTHY) => Some(Peer {
                name: row.name.clone(),
                ip: ip.clone(),
            }),
            _ => None,
        };
        let changed = match peer {
            Some(p) => self.peers.insert(row.mac.clone(), p.clone()) != Some(p),
            None => self.peers.remove(&row.mac).is_some(),
        };
        if changed {
            self.peers_version += 1;
        }
    }
}

pub struct Registry {
    cfg: Arc<Config>,
    store: Store,
    metrics: Arc<Metrics>,
    keys: Keys,
    inner: Mutex<Inner>,
    updates: broadcast::Sender<Update>,
    started: Instant,
}

impl Registry {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Registry>, StoreError> {
        let keys = Keys::load(&store)?;
        let (updates, _) = broadcast::channel(1024);
        let mut inner = Inner {
            next_command: 1,
            peers_version: 1,
            ..Inner::default()
        };
        for row in store.nodes()? {
            inner.remember(&row);
        }
        let reg = Arc::new(Registry {
            cfg,
            store,
            metrics,
            keys,
            inner: Mutex::new(inner),
            updates,
            started: Instant::now(),
        });
        reg.refresh_gauges();
        Ok(reg)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Find a node by MAC (any notation) or name.
    pub fn find(&self, name_or_mac: &str) -> Result<NodeRow, RegistryError> {
        if let Some(mac) = enlist_api::normalize_mac(name_or_mac) {
            if let Some(n) = self.store.node(&mac)? {
                return Ok(n);
            }
        }
        self.store
            .nodes()?
            .into_iter()
            .find(|n| n.name == name_or_mac)
            .ok_or_else(|| RegistryError::UnknownNode(name_or_mac.into()))
    }

    pub fn view(&self, row: NodeRow) -> NodeView {
        let inner = self.inner();
        let live = inner.live.get(&row.mac);
        let info = row
            .info
            .as_deref()
            .and_then(|s| serde_json::from_str(s).ok());
        let heartbeat = live.and_then(|l| l.heartbeat.clone()).or_else(|| {
            row.heartbeat
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
        });
        let silent_secs = live
            .and_then(|l| l.last_seen)
            .map(|t| t.elapsed().as_secs() as i64)
            .or_else(|| row.last_seen.map(|t| now() - t));
        let online = matches!(
            row.state.as_str(),
            state::REGISTERED | state::HEALTHY | state::PENDING
        ) && live.map(|l| l.session.is_some()).unwrap_or(false);
        NodeView {
            row,
            info,
            heartbeat,
            silent_secs,
            online,
        }
    }

    pub fn views(&self) -> Result<Vec<NodeView>, RegistryError> {
        Ok(self
            .store
            .nodes()?
            .into_iter()
            .map(|r| self.view(r))
            .collect())
    }

    /// Persist a node change, publish it and its event to dashboards.
    fn save(&self, row: &NodeRow, event: Option<(&str, &str)>) -> Result<(), StoreError> {
        self.inner().remember(row);
        let ev = self.store.save_node(row, event, now())?;
        if let Some(ev) = ev {
            tracing::info!(node = %row.name, mac = %row.mac, state = %row.state, "{}: {}", ev.kind, ev.detail);
            let _ = self.updates.send(Update::Event(ev));
        }
        let _ = self
            .updates
            .send(Update::Node(Box::new(self.view(row.clone()))));
        self.refresh_gauges();
        Ok(())
    }

    fn set_state(&self, row: &mut NodeRow, new: &str, detail: &str) -> Result<(), StoreError> {
        let changed = row.state != new;
        if changed {
            let old = std::mem::replace(&mut row.state, new.to_string());
            let text = if detail.is_empty() {
                format!("{old} → {new}")
            } else {
                format!("{old} → {new}: {detail}")
            };
            self.save(row, Some(("state", &text)))?;
        } else {
            self.save(row, None)?;
        }
        Ok(())
    }

    fn refresh_gauges(&self) {
        let inner = self.inner();
        for s in state::ALL {
            let n = inner.counts.get(s).copied().unwrap_or(0);
            self.metrics
                .nodes
                .get_or_create(&labels(&[("state", s)]))
                .set(n);
        }
    }

    /// A generated name for a new node: prefix + the last three MAC bytes, unique.
    fn new_name(&self, mac: &str) -> Result<String, StoreError> {
        if let Some(name) = self.cfg.reservation_for(mac).and_then(|r| r.name.clone()) {
            if !self.store.name_taken(&name, mac)? {
                return Ok(name);
            }
        }
        let tail: String = mac.split(':').skip(3).collect();
        let base = format!("{}{}", self.cfg.nodes.name_prefix, tail);
        let mut name = base.clone();
        let mut i = 2;
        while self.store.name_taken(&name, mac)? {
            name = format!("{base}-{i}");
            i += 1;
        }
        Ok(name)
    }

    /// The node with this MAC, created (state `seen`) if new.
    fn node_or_new(&self, mac: &str) -> Result<NodeRow, StoreError> {
        if let Some(n) = self.store.node(mac)? {
            return Ok(n);
        }
        let ts = now();
        let approved = match self.cfg.nodes.enrollment {
            Enrollment::Open => true,
            Enrollment::KnownMacs => self.cfg.reservation_for(mac).is_some(),
            Enrollment::Approve => self.cfg.reservation_for(mac).is_some(),
        };
        let row = NodeRow {
            mac: mac.to_string(),
            name: self.new_name(mac)?,
            group: self.cfg.nodes.group.clone(),
            state: state::SEEN.into(),
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
        };
        self.save(&row, Some(("new", "first seen")))?;
        Ok(row)
    }

    /// Whether a node may be enlisted at all under the enrollment policy.
    fn enrollable(&self, mac: &str) -> bool {
        self.cfg.nodes.enrollment != Enrollment::KnownMacs
            || self.cfg.reservation_for(mac).is_some()
    }

    /// Decide what a node's boot script does, and note the request.
    pub fn boot_decision(
        &self,
        mac: &str,
        ip: Option<Ipv4Addr>,
    ) -> Result<BootDecision, RegistryError> {
        if !self.enrollable(mac) {
            return Ok(BootDecision::NotEnlisted);
        }
        let mut row = self.node_or_new(mac)?;
        if let Some(ip) = ip {
            row.ip = Some(ip.to_string());
            self.inner().ip_to_mac.insert(ip, mac.to_string());
        }
        row.last_seen = Some(now());
        if row.released {
            const WHY: &str = "answered with local disk boot";
            if row.state == state::GONE {
                self.save(&row, Some(("boot", WHY)))?;
            } else {
                self.set_state(&mut row, state::GONE, WHY)?;
            }
            return Ok(BootDecision::LocalDisk);
        }
        self.set_state(&mut row, state::BOOTING, "fetched boot script")?;
        let image = self
            .cfg
            .reservation_for(mac)
            .and_then(|r| r.image.clone())
            .unwrap_or_else(|| self.cfg.images.default.clone());
        Ok(BootDecision::Boot {
            name: row.name,
            image,
        })
    }

    /// Queue a command for a node's agent. Returns its id.
    pub fn command(&self, mac: &str, kind: CommandKind) -> Result<u64, RegistryError> {
        let row = self
            .store
            .node(mac)?
            .ok_or_else(|| RegistryError::UnknownNode(mac.into()))?;
        let mut inner = self.inner();
        let id = inner.next_command;
        inner.next_command += 1;
        let live = inner.live.entry(row.mac.clone()).or_default();
        live.commands.push_back((id, kind));
        live.notify.notify_waiters();
        drop(inner);
        let mut row = row;
        self.save(
            &row,
            Some(("command", &format!("#{id} {} sent", kind.as_str()))),
        )?;
        if kind == CommandKind::Release {
            row.released = true;
            self.save(
                &row,
                Some(("released", "PXE will answer with local disk boot")),
            )?;
        }
        Ok(id)
    }

    /// Hand a PC back to its own disk: mark it released and tell its agent to reboot.
    pub fn release(&self, mac: &str) -> Result<(), RegistryError> {
        let mut row = self
            .store
            .node(mac)?
            .ok_or_else(|| RegistryError::UnknownNode(mac.into()))?;
        let online = self
            .inner()
            .live
            .get(mac)
            .map(|l| l.session.is_some())
            .unwrap_or(false);
        if online
            && matches!(
                row.state.as_str(),
                state::REGISTERED | state::HEALTHY | state::PENDING
            )
        {
            self.command(mac, CommandKind::Release)?;
        } else {
            row.released = true;
            self.set_state(&mut row, state::RELEASED, "released while offline")?;
        }
        Ok(())
    }

    /// Enlist a released node again: its next network boot boots the node OS.
    pub fn enlist(&self, mac: &str) -> Result<(), RegistryError> {
        let mut row = self
            .store
            .node(mac)?
            .ok_or_else(|| RegistryError::UnknownNode(mac.into()))?;
        row.released = false;
        self.save(
            &row,
            Some(("enlisted", "next network boot starts the node OS")),
        )?;
        Ok(())
    }

    pub fn approve(&self, mac: &str) -> Result<(), RegistryError> {
        let mut row = self
            .store
            .node(mac)?
            .ok_or_else(|| RegistryError::UnknownNode(mac.into()))?;
        row.approved = true;
        if row.state == state::PENDING {
            self.set_state(&mut row, state::REGISTERED, "approved")?;
        } else {
            self.save(&row, Some(("approved", "by admin")))?;
        }
        Ok(())
    }

    pub fn rename(&self, mac: &str, name: &str) -> Result<(), RegistryError> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !name.starts_with('-');
        if !valid {
            return Err(RegistryError::BadName(name.into()));
        }
        let mut row = self
            .store
            .node(mac)?
            .ok_or_else(|| RegistryError::UnknownNode(mac.into()))?;
        if self.store.name_taken(name, mac)? {
            return Err(RegistryError::NameTaken(name.into()));
        }
        let old = std::mem::replace(&mut row.name, name.to_string());
        self.save(&row, Some(("renamed", &format!("{old} → {name}"))))?;
        Ok(())
    }

    /// Enlisted nodes with an address, for /etc/hosts on every node.
    pub fn peers(&self) -> (u64, Vec<Peer>) {
        let inner = self.inner();
        (inner.peers_version, inner.peers.values().cloned().collect())
    }

    /// Mark nodes whose heartbeats stopped as lost, and nodes that left as gone. Run every second.
    pub fn sweep(&self) -> Result<(), StoreError> {
        let lost_after = self.cfg.nodes.lost_after;
        let gone_after = self.cfg.nodes.heartbeat * 2;
        if self.started.elapsed() < lost_after {
            return Ok(());
        }
        // Once after start, every node (nothing is in memory yet); then only nodes whose cached
        // state and silence call for a change, so a large registry costs no scan per second.
        let macs: Vec<String> = {
            let mut inner = self.inner();
            if !inner.swept_once {
                inner.swept_once = true;
                drop(inner);
                self.store.nodes()?.into_iter().map(|r| r.mac).collect()
            } else {
                inner
                    .live
                    .iter()
                    .filter(|(_, l)| {
                        let silent = l.last_seen.map(|t| t.elapsed()).unwrap_or(lost_after);
                        match l.state.as_deref() {
                            Some(state::REGISTERED | state::HEALTHY | state::PENDING) => {
                                silent > lost_after
                            }
                            Some(state::LEAVING) => silent > gone_after,
                            _ => false,
                        }
                    })
                    .map(|(m, _)| m.clone())
                    .collect()
            }
        };
        for mac in macs {
            let Some(mut row) = self.store.node(&mac)? else {
                continue;
            };
            let silent = {
                let inner = self.inner();
                match inner.live.get(&row.mac).and_then(|l| l.last_seen) {
                    Some(t) => t.elapsed(),
                    // Nothing heard since the head started: count from start.
                    None => self.started.elapsed(),
                }
            };
            match row.state.as_str() {
                state::REGISTERED | state::HEALTHY | state::PENDING if silent > lost_after => {
                    self.inner()
                        .live
                        .entry(row.mac.clone())
                        .or_default()
                        .session = None;
                    self.set_state(
                        &mut row,
                        state::LOST,
                        &format!("no heartbeat for {}s", silent.as_secs()),
                    )?;
                }
                state::LEAVING if silent > gone_after => {
                    self.inner()
                        .live
                        .entry(row.mac.clone())
                        .or_default()
                        .session = None;
                    self.set_state(&mut row, state::GONE, "")?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    fn touch(&self, mac: &str) {
        self.inner()
            .live
            .entry(mac.to_string())
            .or_default()
            .last_seen = Some(Instant::now());
    }
}
