//! What the API and dashboard show of a node: its row, what its agent last said and what the
//! head saw of its boot. Built here, so the API never shows a database row as is.

use std::net::Ipv4Addr;

use enlist_api::{Heartbeat, Mac, NodeInfo};
use serde::Serialize;

use crate::lifecycle::NodeState;
use crate::store::{now, NodeRow};

use super::live::{BootStep, Live};

#[derive(Debug, Clone, Serialize)]
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
    pub created: i64,
    /// What the scheduler says of it (jobs on).
    pub sched: Option<SchedInfo>,
    /// What its agent says of its part in the jobs: `starting`, `ready`, `failed: ...`.
    pub jobs: Option<String>,
}

/// A node as the scheduler (Slurm) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SchedInfo {
    /// `idle`, `mixed`, `allocated`, `draining`, `drained`, `down`, ...
    pub state: String,
    pub cpus: u32,
    pub cpus_alloc: u32,
    pub mem_mb: u64,
    pub mem_alloc_mb: u64,
    /// Jobs running on it.
    pub jobs: u32,
}

/// The cluster as the scheduler sees it: the nodes in service (idle, mixed, allocated) and
/// what they offer to jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SchedTotals {
    pub nodes: u32,
    pub cpus: u32,
    pub cpus_free: u32,
    pub mem_mb: u64,
    pub mem_free_mb: u64,
    /// Jobs running.
    pub jobs: u32,
}

impl NodeView {
    pub(super) fn new(
        row: &NodeRow,
        live: Option<&Live>,
        candidate: bool,
        sched: Option<SchedInfo>,
    ) -> NodeView {
        let info = live.and_then(|l| l.info.clone()).or_else(|| {
            row.info
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
        });
        let heartbeat = live.and_then(|l| l.heartbeat.clone()).or_else(|| {
            row.heartbeat
                .as_deref()
                .and_then(|s| serde_json::from_str(s).ok())
        });
        let silent_secs = live
            .and_then(|l| l.last_seen)
            .map(|t| t.elapsed().as_secs() as i64)
            .or_else(|| row.last_seen.map(|t| now() - t));
        let online = row.state.is_alive() && live.is_some_and(|l| l.session.is_some());
        NodeView {
            mac: row.mac,
            name: row.name.clone(),
            group: row.group.clone(),
            state: row.state,
            ip: row.ip,
            released: row.released,
            approved: row.approved,
            candidate,
            info,
            heartbeat,
            silent_secs,
            online,
            boot_seconds: row.boot_seconds,
            boot: live.map(|l| l.trace.clone()).unwrap_or_default(),
            created: row.created,
            sched,
            jobs: live.and_then(|l| l.jobs.clone()),
        }
    }
}
