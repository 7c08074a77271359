//! The admin API's contract: what the head answers and accepts on `/api/v1/...` (other than the
//! agent's paths), used by the head to answer, by the CLI to read, and by
//! [`crate::openapi`] to write the OpenAPI document the dashboard is written against. Each
//! name, status and default here is the one place it is spelt.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{ExecSpec, Heartbeat, Mac, NodeInfo};

/// Seconds an `enlist exec` command may run on a node when the request does not say.
pub const DEFAULT_EXEC_TIMEOUT_SECS: u32 = 60;
/// Nodes running an exec command at once when the request does not say (clush's default).
pub const DEFAULT_FANOUT: usize = 64;

/// Where a node is in its life (the head's state machine is `lifecycle` in the head).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// A network-boot client asked for an address.
    Seen,
    /// It fetched boot files (iPXE, script, kernel, initrd).
    Booting,
    /// It fetched the node OS but its agent did not register in time.
    Stuck,
    /// Waiting for an admin's approval (enrollment `approve`).
    Pending,
    /// Its agent registered.
    Registered,
    /// Heartbeats arrive.
    Healthy,
    /// Released while it runs jobs: the scheduler gives it no more, and it leaves when they end
    /// (or at the deadline, when they are requeued).
    Draining,
    /// The agent said it is going (reboot, power-off, release).
    Leaving,
    /// Left, or handed back to its own disk.
    Gone,
    /// Heartbeats stopped without a word (power cut, cable).
    Lost,
    /// Released by an admin while offline: its next network boot boots the local disk.
    Released,
}

impl NodeState {
    pub const ALL: [NodeState; 11] = [
        NodeState::Seen,
        NodeState::Booting,
        NodeState::Stuck,
        NodeState::Pending,
        NodeState::Registered,
        NodeState::Healthy,
        NodeState::Draining,
        NodeState::Leaving,
        NodeState::Gone,
        NodeState::Lost,
        NodeState::Released,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Seen => "seen",
            NodeState::Booting => "booting",
            NodeState::Stuck => "stuck",
            NodeState::Pending => "pending",
            NodeState::Registered => "registered",
            NodeState::Healthy => "healthy",
            NodeState::Draining => "draining",
            NodeState::Leaving => "leaving",
            NodeState::Gone => "gone",
            NodeState::Lost => "lost",
            NodeState::Released => "released",
        }
    }

    pub fn parse(s: &str) -> Option<NodeState> {
        NodeState::ALL.into_iter().find(|n| n.as_str() == s)
    }

    /// An agent is running on the PC, as far as the head knows: only signed requests change it.
    pub fn is_alive(self) -> bool {
        matches!(
            self,
            NodeState::Pending | NodeState::Registered | NodeState::Healthy | NodeState::Draining
        )
    }

    /// Listed in every node's /etc/hosts (and counted "up" on the dashboard).
    pub fn is_peer(self) -> bool {
        matches!(
            self,
            NodeState::Registered | NodeState::Healthy | NodeState::Draining
        )
    }

    /// On its way up: the dashboard counts these as booting.
    pub fn is_booting(self) -> bool {
        matches!(
            self,
            NodeState::Seen | NodeState::Booting | NodeState::Stuck
        )
    }

    /// The dashboard header's counter it is added to.
    pub fn group(self) -> StateGroup {
        match self {
            s if s.is_peer() => StateGroup::Up,
            s if s.is_booting() => StateGroup::Booting,
            NodeState::Pending => StateGroup::Pending,
            NodeState::Lost => StateGroup::Lost,
            _ => StateGroup::Gone,
        }
    }
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The dashboard header's counters: every state belongs to one ([`NodeState::group`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum StateGroup {
    /// In /etc/hosts and the scheduler's: registered, healthy, draining.
    Up,
    /// Seen, booting, stuck.
    Booting,
    /// Waiting for an admin.
    Pending,
    /// Silent without a word.
    Lost,
    /// Leaving, gone, released.
    Gone,
}

/// How a boot step travelled (for the node's boot timeline and the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Dhcp,
    Tftp,
    Http,
    Agent,
}

/// One step of a boot, for the node's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct BootStep {
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// `dhcp`, `ipxe`, `script`, `kernel`, `initrd`, `registered`, ...
    pub step: String,
    pub via: Proto,
    pub detail: String,
}

/// What the API and dashboard show of a node: its row, what its agent last said and what the
/// head saw of its boot.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeView {
    pub mac: Mac,
    pub name: String,
    pub group: String,
    pub state: NodeState,
    pub ip: Option<Ipv4Addr>,
    /// Handed back to its own disk: PXE is answered "boot locally".
    pub released: bool,
    pub approved: bool,
    /// Waiting for approval, not yet a node (enrollment `approve`).
    pub candidate: bool,
    /// What the agent reported at registration.
    pub info: Option<NodeInfo>,
    pub heartbeat: Option<Heartbeat>,
    /// Seconds since the last packet or request from this node.
    pub silent_secs: Option<i64>,
    /// An agent session is open.
    pub online: bool,
    /// Seconds from the first DHCP packet of its last boot to its registration.
    pub boot_seconds: Option<f64>,
    /// The steps of its current (or last) boot, oldest first.
    pub boot: Vec<BootStep>,
    /// Unix seconds it was first seen.
    pub created: i64,
    /// What the scheduler says of it (jobs on).
    pub sched: Option<SchedInfo>,
    /// What its agent says of its part in the jobs: `starting`, `ready`, `failed: ...`.
    pub jobs: Option<String>,
    /// Why it has not joined, when the head can tell: it is held back (quarantined) and why,
    /// its card has no driver in its image, or it fetched its node OS and never registered
    /// (stuck), with the last thing the head saw of it.
    pub problem: Option<String>,
    /// Wake-on-LAN packets sent to it for Slurm or a schedule, and how many of those woke
    /// it (it registered in time): the rate tells which BIOS to look at.
    #[serde(default)]
    pub wakes_tried: u32,
    #[serde(default)]
    pub wakes_woke: u32,
    /// What the PC was lent to the cluster: seconds enlisted (its node OS up and serving:
    /// registered, healthy or draining), and of those seconds running jobs.
    #[serde(default)]
    pub enlisted_secs: u64,
    #[serde(default)]
    pub job_secs: u64,
    /// Kernel options the head found this PC needs and adds to its boots (`acpi=off` for an
    /// ISA card whose IRQ its node OS could not find); empty for most.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_args: String,
}

/// A node as the scheduler (Slurm) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SchedInfo {
    /// `idle`, `mixed`, `allocated`, `draining`, `drained`, `down`, ...
    pub state: String,
    pub cpus: u32,
    pub cpus_alloc: u32,
    pub mem_mb: u64,
    pub mem_alloc_mb: u64,
    /// Jobs running on it.
    pub jobs: u32,
    /// Powered down by Slurm's power saving (`idle~`): the PC is its owner's until a job
    /// needs it and the head wakes it.
    #[serde(default)]
    pub asleep: bool,
    /// Why Slurm holds it out (`sinfo -R`): did not wake, in use, released.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The cluster as the scheduler sees it: the nodes in service (idle, mixed, allocated) and
/// what they offer to jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SchedTotals {
    pub nodes: u32,
    pub cpus: u32,
    pub cpus_free: u32,
    pub mem_mb: u64,
    pub mem_free_mb: u64,
    /// Jobs running.
    pub jobs: u32,
}

/// `GET /api/v1/nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
    /// What each group (room) lent, summed over its nodes.
    #[serde(default)]
    pub groups: Vec<GroupLent>,
}

impl NodeList {
    /// The list of `nodes` with their groups' totals.
    pub fn of(nodes: Vec<NodeView>) -> NodeList {
        let groups = GroupLent::totals(&nodes);
        NodeList { nodes, groups }
    }
}

/// What one group's PCs lent to the cluster, summed over the nodes it holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupLent {
    pub group: String,
    pub nodes: u32,
    pub enlisted_secs: u64,
    pub job_secs: u64,
    pub wakes_tried: u32,
    pub wakes_woke: u32,
}

impl GroupLent {
    /// One total per group of `nodes`, by group name.
    pub fn totals(nodes: &[NodeView]) -> Vec<GroupLent> {
        let mut by: std::collections::BTreeMap<&str, GroupLent> = Default::default();
        for n in nodes {
            let g = by.entry(&n.group).or_insert_with(|| GroupLent {
                group: n.group.clone(),
                ..GroupLent::default()
            });
            g.nodes += 1;
            g.enlisted_secs += n.enlisted_secs;
            g.job_secs += n.job_secs;
            g.wakes_tried += n.wakes_tried;
            g.wakes_woke += n.wakes_woke;
        }
        by.into_values().collect()
    }
}

/// Something that happened to a node, from its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Event {
    pub id: i64,
    pub mac: Mac,
    /// Unix seconds.
    pub ts: i64,
    /// `registered`, `state`, `exec`, `wake`, ...
    pub kind: String,
    pub detail: String,
}

/// `GET /api/v1/nodes/{node}`: the node and its latest events, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeDetail {
    pub node: NodeView,
    pub events: Vec<Event>,
}

/// `GET /api/v1/events`: the latest events of all nodes, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct EventList {
    pub events: Vec<Event>,
}

/// `GET /api/v1/summary`: what the dashboard's header shows, to anyone (counts are not secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Summary {
    /// Nodes per state, states with none left out.
    pub nodes: BTreeMap<NodeState, i64>,
    /// Nodes per header counter ([`NodeState::group`]), groups with none left out.
    pub groups: BTreeMap<StateGroup, i64>,
    /// The header counter of every state, so a dashboard that has the node list counts it
    /// the way the head does.
    pub state_groups: BTreeMap<NodeState, StateGroup>,
    /// The cluster as the scheduler sees it (jobs on).
    pub jobs: Option<SchedTotals>,
}

impl Summary {
    pub fn new(
        counts: impl IntoIterator<Item = (NodeState, i64)>,
        jobs: Option<SchedTotals>,
    ) -> Self {
        let nodes: BTreeMap<NodeState, i64> = counts.into_iter().filter(|(_, n)| *n > 0).collect();
        let mut groups = BTreeMap::new();
        for (state, n) in &nodes {
            *groups.entry(state.group()).or_insert(0) += n;
        }
        let state_groups = NodeState::ALL.into_iter().map(|s| (s, s.group())).collect();
        Summary {
            nodes,
            groups,
            state_groups,
            jobs,
        }
    }
}

/// A change an admin makes to one node: `POST /api/v1/nodes/{node}/{action}` with, for
/// `rename` and `group`, a body naming the new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeAction {
    /// Let a pending node join.
    Approve,
    /// Hand the PC back to its own disk (with jobs on, drained first).
    Release,
    /// Enlist a released node again.
    Enlist,
    /// Reboot into the node OS.
    Reboot,
    PowerOff,
    /// Make the node rewrite /etc/hosts.
    RefreshPeers,
    /// Wake-on-LAN.
    Wake,
    Rename(String),
    Group(String),
}

/// What `DELETE /api/v1/nodes/{node}` did (`enlist node forget`): the node's row is gone
/// (its history stays, under its MAC); its next boot is a new PC's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Forgotten {
    pub name: String,
    pub mac: Mac,
    /// What the workload manager did (Slurm deletes its record of the node).
    pub workload: String,
}

/// PCs' names by MAC: the body of `POST /api/v1/names` (`enlist node import names.csv`), and
/// what `GET /api/v1/names` lists. Nodes that exist are renamed (and moved) now; PCs not seen
/// yet get the name when they first boot (and count as known, like a reservation).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NameList {
    /// At most [`MAX_IMPORT`] per request (the CLI sends a longer file in parts).
    pub nodes: Vec<NamedPc>,
}

/// Entries one import request takes at most (well inside the API's body limit).
pub const MAX_IMPORT: usize = 500;

/// One PC of an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NamedPc {
    pub mac: Mac,
    /// A host label: 1-63 letters, digits and '-'.
    pub name: String,
    /// Its group; none: the group stays (or follows the config, for a PC not seen yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ImportAnswer {
    /// Nodes renamed or moved now, as `old → new (group g)`.
    pub changed: Vec<String>,
    /// Names of PCs not seen yet: theirs when they first boot.
    pub waiting: Vec<String>,
    /// Nodes already so named and grouped.
    pub unchanged: usize,
}

/// A piece of a node's log (`GET /api/v1/nodes/{node}/logs`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeLogText {
    /// The log file this piece is of (another number later: it was rotated).
    pub file: u64,
    /// Where the piece ends: ask `from` here for what follows.
    pub end: u64,
    pub text: String,
}

/// The body of `rename` (`name`) and `group` (`group`); the other actions take none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// rename: the new name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// group: the node's new group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What is wrong with an action request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadAction {
    /// The path names no action (a 404).
    Unknown(String),
    /// The body lacks what the action needs (a 400).
    Missing(&'static str),
}

impl std::fmt::Display for BadAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadAction::Unknown(a) => write!(f, "no action {a:?}"),
            BadAction::Missing(what) => write!(f, "body: {what} is required"),
        }
    }
}

impl NodeAction {
    /// Every action's path segment, for the router and the OpenAPI document.
    pub const NAMES: [&'static str; 9] = [
        "approve",
        "release",
        "enlist",
        "reboot",
        "power-off",
        "refresh-peers",
        "wake",
        "rename",
        "group",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            NodeAction::Approve => "approve",
            NodeAction::Release => "release",
            NodeAction::Enlist => "enlist",
            NodeAction::Reboot => "reboot",
            NodeAction::PowerOff => "power-off",
            NodeAction::RefreshPeers => "refresh-peers",
            NodeAction::Wake => "wake",
            NodeAction::Rename(_) => "rename",
            NodeAction::Group(_) => "group",
        }
    }

    /// The action a path segment and body name.
    pub fn parse(name: &str, body: ActionBody) -> Result<NodeAction, BadAction> {
        Ok(match name {
            "approve" => NodeAction::Approve,
            "release" => NodeAction::Release,
            "enlist" => NodeAction::Enlist,
            "reboot" => NodeAction::Reboot,
            "power-off" => NodeAction::PowerOff,
            "refresh-peers" => NodeAction::RefreshPeers,
            "wake" => NodeAction::Wake,
            "rename" => NodeAction::Rename(body.name.ok_or(BadAction::Missing("name"))?),
            "group" => NodeAction::Group(body.group.ok_or(BadAction::Missing("group"))?),
            other => return Err(BadAction::Unknown(other.to_string())),
        })
    }

    /// The path below the node's (`release`) and the body to send, for a client.
    pub fn request(&self) -> (&'static str, Option<ActionBody>) {
        let body = match self {
            NodeAction::Rename(n) => Some(ActionBody {
                name: Some(n.clone()),
                group: None,
            }),
            NodeAction::Group(g) => Some(ActionBody {
                name: None,
                group: Some(g.clone()),
            }),
            _ => None,
        };
        (self.name(), body)
    }
}

/// `POST /api/v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub password: String,
}

/// The answer to a login: the token to send as `x-csrf-token` with every POST.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LoginAnswer {
    pub csrf: String,
}

/// `GET /api/v1/session`: who is looking.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SessionView {
    pub logged_in: bool,
    /// The CSRF token of this browser's session, if logged in.
    pub csrf: Option<String>,
    /// Whether the node views are readable without logging in (`admin.public_read`).
    pub public_read: bool,
}

/// `GET /api/v1/enrollment`: the enrollment policy, and the window open now.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Enrollment {
    /// `open`, `known-macs` or `approve` (`nodes.enrollment`).
    pub policy: String,
    /// Seconds the window stays open, if one is.
    pub window_secs: Option<u64>,
}

/// `POST /api/v1/enrollment`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    /// Seconds the window stays open (0 closes it); at most a day.
    pub for_secs: u64,
}

/// `POST /api/v1/exec` as it comes: checked into an [`ExecOrder`] by `TryFrom`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// Run by /bin/sh -c on each node, as root.
    pub command: String,
    /// Default [`DEFAULT_EXEC_TIMEOUT_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u32>,
    /// A host list (`node-[01-03],lab-7`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    /// The nodes of a group that are up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Every node that is up.
    #[serde(default)]
    pub all: bool,
    /// Nodes running it at once at most; default [`DEFAULT_FANOUT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<usize>,
}

/// Which nodes an exec order goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// A host list, not yet expanded.
    Nodes(String),
    Group(String),
    All,
}

/// A checked exec request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOrder {
    pub spec: ExecSpec,
    pub targets: Targets,
    pub fanout: usize,
}

/// The nodes a run (exec, copy) goes to, and how many run it at once, as a request names
/// them: exactly one of a host list, a group, every node.
fn run_targets(
    nodes: Option<String>,
    group: Option<String>,
    all: bool,
    fanout: Option<usize>,
) -> Result<(Targets, usize), String> {
    let targets = match (nodes, group, all) {
        (Some(n), None, false) => Targets::Nodes(n),
        (None, Some(g), false) => Targets::Group(g),
        (None, None, true) => Targets::All,
        _ => return Err("name the nodes: exactly one of nodes, group, all".into()),
    };
    let fanout = fanout.unwrap_or(DEFAULT_FANOUT);
    if fanout == 0 {
        return Err("fanout: at least 1".into());
    }
    Ok((targets, fanout))
}

impl TryFrom<ExecRequest> for ExecOrder {
    type Error = String;

    fn try_from(r: ExecRequest) -> Result<ExecOrder, String> {
        let (targets, fanout) = run_targets(r.nodes, r.group, r.all, r.fanout)?;
        let spec = ExecSpec::new(
            r.command,
            r.timeout_secs.unwrap_or(DEFAULT_EXEC_TIMEOUT_SECS),
        )?;
        Ok(ExecOrder {
            spec,
            targets,
            fanout,
        })
    }
}

/// `POST /api/v1/copy` (`enlist copy`): a file for the nodes, as exec names them; checked
/// into a [`CopyOrder`] by `TryFrom`. Its run is read as an exec run's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CopyRequest {
    /// Where it goes on each node: an absolute path (written beside it, then renamed over it).
    pub path: String,
    /// Permission bits; default 0o644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// The file, base64 (standard alphabet, padded): at most [`crate::MAX_COPY_BYTES`].
    pub content_base64: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default)]
    pub all: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fanout: Option<usize>,
}

/// A checked copy request: the signed part of the order, the bytes, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOrder {
    pub spec: crate::CopySpec,
    pub bytes: Vec<u8>,
    pub targets: Targets,
    pub fanout: usize,
}

impl TryFrom<CopyRequest> for CopyOrder {
    type Error = String;

    fn try_from(r: CopyRequest) -> Result<CopyOrder, String> {
        use base64::Engine;
        use sha2::Digest;
        let (targets, fanout) = run_targets(r.nodes, r.group, r.all, r.fanout)?;
        // Its decoded size is known before decoding: a body cannot make the head decode more.
        if r.content_base64.len() > crate::MAX_COPY_BYTES.div_ceil(3) * 4 {
            return Err(format!("file larger than {} bytes", crate::MAX_COPY_BYTES));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(r.content_base64.as_bytes())
            .map_err(|e| format!("content_base64: {e}"))?;
        let spec = crate::CopySpec {
            path: r.path,
            mode: r.mode.unwrap_or(0o644),
            size: bytes.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        };
        spec.check()?;
        Ok(CopyOrder {
            spec,
            bytes,
            targets,
            fanout,
        })
    }
}

/// The answer to `POST /api/v1/exec` (202): the run to poll and the nodes it goes to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExecStarted {
    pub id: u64,
    pub nodes: Vec<String>,
}

/// How a node's part of a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum ExecStatus {
    /// Waiting for a place in the fan-out.
    Queued,
    Running,
    Exited,
    /// Killed by a signal.
    Signal,
    /// Killed at its timeout.
    Timeout,
    /// Down, dead meanwhile, or silent past the timeout and a grace.
    Unreachable,
}

impl ExecStatus {
    /// Still going.
    pub fn pending(self) -> bool {
        matches!(self, ExecStatus::Queued | ExecStatus::Running)
    }
}

/// `GET /api/v1/exec/{id}`: a run as far as it went.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RunView {
    pub id: u64,
    pub command: String,
    pub timeout_secs: u64,
    /// Every node has answered or is unreachable.
    pub done: bool,
    pub results: Vec<NodeOutcome>,
}

/// One node's part of a run.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NodeOutcome {
    pub node: String,
    pub status: ExecStatus,
    pub exit: Option<i32>,
    pub signal: Option<i32>,
    /// At most 8 KiB.
    pub output: String,
    /// Bytes of output not kept.
    pub cut_bytes: u64,
    /// Why a node is unreachable.
    pub reason: Option<String>,
}

impl NodeOutcome {
    /// Its exit code as clush's `-S` counts it: a signal N is 128+N, a timeout 124, an
    /// unreachable node 255.
    pub fn code(&self) -> i32 {
        match self.status {
            ExecStatus::Exited => self.exit.unwrap_or(0),
            ExecStatus::Signal => 128 + self.signal.unwrap_or(0),
            ExecStatus::Timeout => 124,
            _ => 255,
        }
    }
}

/// What a scheduled group is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Its PCs boot the node OS (and are woken).
    Enlisted,
    /// Its PCs boot their own disks.
    Released,
}

impl Phase {
    pub fn other(self) -> Phase {
        match self {
            Phase::Enlisted => Phase::Released,
            Phase::Released => Phase::Enlisted,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Enlisted => "enlisted",
            Phase::Released => "released",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scheduled group as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct GroupSchedule {
    pub group: String,
    /// The config's cron expression for enlisting.
    pub enlist: String,
    /// The config's cron expression for releasing.
    pub release: String,
    pub phase: Phase,
    /// Local time (RFC 3339 with offset) it took this phase, if known.
    pub since: Option<String>,
    pub next: Option<NextChange>,
}

/// A scheduled group's next change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct NextChange {
    pub phase: Phase,
    /// Local time, RFC 3339 with offset.
    pub at: String,
    /// Unix seconds.
    pub at_unix: i64,
    pub skipped: bool,
}

/// `GET /api/v1/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ScheduleList {
    pub schedules: Vec<GroupSchedule>,
}

/// A change an admin makes to a group's schedule:
/// `POST /api/v1/schedules/{group}/{action}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    /// The group's next scheduled change does not happen.
    Skip,
    /// Undo a skip.
    Unskip,
    /// Make the next change now; it holds until the scheduled change after it.
    RunNow,
}

impl ScheduleAction {
    pub const ALL: [ScheduleAction; 3] = [
        ScheduleAction::Skip,
        ScheduleAction::Unskip,
        ScheduleAction::RunNow,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ScheduleAction::Skip => "skip",
            ScheduleAction::Unskip => "unskip",
            ScheduleAction::RunNow => "run-now",
        }
    }

    pub fn parse(s: &str) -> Option<ScheduleAction> {
        ScheduleAction::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// `POST /api/v1/jobs/rotate-key`: who was told to take the new munge key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Rotation {
    /// Nodes told to take the new key.
    pub told: Vec<String>,
    /// Of those, the ones that did not say they have it within a minute (they get it when
    /// they next join: a reboot).
    pub silent: Vec<String>,
}

/// `POST /api/v1/jobs/resume` and `/api/v1/jobs/suspend`: the nodes Slurm's power saving
/// names (its ResumeProgram and SuspendProgram, `enlist jobs resume|suspend`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PowerRequest {
    /// A Slurm host list: `node-[525400770101-525400770103]`.
    pub nodes: String,
}

/// What the head did with each node of a [`PowerRequest`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PowerAnswer {
    /// Woken (magic packet sent) or released.
    pub done: Vec<String>,
    /// Left alone, each with why (in use, outside its window, unknown).
    pub skipped: Vec<PowerSkip>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PowerSkip {
    pub node: String,
    pub why: String,
}

/// Every error answer: `{"error": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ErrorBody {
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_EXEC_COMMAND;

    #[test]
    fn every_action_name_parses_back_to_itself() {
        let body = || ActionBody {
            name: Some("n".into()),
            group: Some("g".into()),
        };
        for name in NodeAction::NAMES {
            let a = NodeAction::parse(name, body()).unwrap();
            assert_eq!(a.name(), name);
        }
        assert_eq!(
            NodeAction::parse("rename", ActionBody::default()),
            Err(BadAction::Missing("name"))
        );
        assert!(matches!(
            NodeAction::parse("explode", body()),
            Err(BadAction::Unknown(_))
        ));
        for a in ScheduleAction::ALL {
            assert_eq!(ScheduleAction::parse(a.name()), Some(a));
        }
    }

    #[test]
    fn an_exec_request_names_exactly_one_target_and_gets_the_defaults() {
        let r = |nodes: Option<&str>, group: Option<&str>, all| ExecRequest {
            command: "uptime".into(),
            nodes: nodes.map(Into::into),
            group: group.map(Into::into),
            all,
            ..ExecRequest::default()
        };
        let o = ExecOrder::try_from(r(Some("n[1-2]"), None, false)).unwrap();
        assert_eq!(o.targets, Targets::Nodes("n[1-2]".into()));
        assert_eq!(o.fanout, DEFAULT_FANOUT);
        assert_eq!(o.spec.timeout_secs, DEFAULT_EXEC_TIMEOUT_SECS);
        for bad in [
            r(None, None, false),
            r(Some("a"), Some("g"), false),
            r(None, Some("g"), true),
        ] {
            assert!(ExecOrder::try_from(bad).is_err());
        }
        let long = ExecRequest {
            command: "x".repeat(MAX_EXEC_COMMAND + 1),
            all: true,
            ..ExecRequest::default()
        };
        assert!(
            ExecOrder::try_from(long).is_err(),
            "the spec is checked too"
        );
    }

    #[test]
    fn the_summary_counts_each_state_in_its_header_group() {
        let s = Summary::new(
            [
                (NodeState::Healthy, 2),
                (NodeState::Draining, 1),
                (NodeState::Stuck, 1),
                (NodeState::Gone, 0),
            ],
            None,
        );
        assert_eq!(s.groups.get(&StateGroup::Up), Some(&3));
        assert_eq!(s.groups.get(&StateGroup::Booting), Some(&1));
        assert!(!s.nodes.contains_key(&NodeState::Gone));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["nodes"]["healthy"], 2);
        assert_eq!(json["groups"]["up"], 3);
        assert_eq!(json["state_groups"]["draining"], "up");
        assert_eq!(json["state_groups"]["released"], "gone");
    }

    #[test]
    fn outcomes_count_as_clush_does() {
        let o = |status, exit, signal| NodeOutcome {
            node: "n".into(),
            status,
            exit,
            signal,
            output: String::new(),
            cut_bytes: 0,
            reason: None,
        };
        assert_eq!(o(ExecStatus::Exited, Some(3), None).code(), 3);
        assert_eq!(o(ExecStatus::Signal, None, Some(9)).code(), 137);
        assert_eq!(o(ExecStatus::Timeout, None, None).code(), 124);
        assert_eq!(o(ExecStatus::Unreachable, None, None).code(), 255);
    }
}
