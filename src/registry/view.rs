//! What the API and dashboard show of a node: its row, what its agent last said and what the
//! head saw of its boot. Built here, so the API never shows a database row as is.

use crate::lifecycle::NodeState;
use crate::store::{now, NodeRow};

use enlist_api::admin::BootStep;

use super::live::{now_ms, Inner, Live};

pub use enlist_api::admin::{NodeView, SchedInfo, SchedTotals};

impl Inner {
    /// What the API shows of the node in `row`.
    pub fn view(&self, row: &NodeRow) -> NodeView {
        node_view(
            row,
            self.live.get(&row.mac),
            self.candidates.contains_key(&row.mac),
            self.sched.get(&row.name).cloned(),
            self.lent.pending(row.mac),
        )
    }
}

/// A node's view from its row, its live part and what the scheduler says of it.
fn node_view(
    row: &NodeRow,
    live: Option<&Live>,
    candidate: bool,
    sched: Option<SchedInfo>,
    lent: super::lent::Lent,
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
    let boot = live.map(|l| l.trace.clone()).unwrap_or_default();
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
        problem: row
            .quarantine
            .as_ref()
            .map(|q| held_back(q, &row.name))
            .or_else(|| problem(row.state, &boot, now_ms())),
        boot,
        created: row.created,
        sched,
        jobs: live.and_then(|l| l.jobs.clone()),
        wakes_tried: row.wakes_tried,
        wakes_woke: row.wakes_woke,
        enlisted_secs: row.enlisted_secs + lent.enlisted_ms / 1000,
        job_secs: row.job_secs + lent.jobs_ms / 1000,
        kernel_args: row.kernel_args.clone(),
    }
}

/// What a held-back node's problem says: why, and what the admin does about it.
fn held_back(why: &str, name: &str) -> String {
    format!("held back: {why}; if this is the same PC, approve it (enlist node approve {name})")
}

/// Why a node has not joined, from its state and its boot's steps (see [`NodeView::problem`]).
fn problem(state: NodeState, boot: &[BootStep], now_ms: i64) -> Option<String> {
    let booting = matches!(state, NodeState::Booting | NodeState::Stuck);
    let nic = boot
        .iter()
        .rev()
        .find(|s| s.step == "nic")
        .filter(|_| booting)
        .map(|s| s.detail.clone());
    let stuck = (state == NodeState::Stuck).then(|| match last_seen(boot, now_ms) {
        Some(seen) => format!("never registered; last seen: {seen}"),
        None => "never registered after fetching its node OS".to_string(),
    });
    match (nic, stuck) {
        (Some(n), Some(s)) => Some(format!("{n}; {s}")),
        (n, s) => n.or(s),
    }
}

/// The last step of a boot the PC itself made (`initrd by http, 75 s ago (detail)`).
pub(super) fn last_seen(boot: &[BootStep], now_ms: i64) -> Option<String> {
    let s = boot.iter().rev().find(|s| s.step != "nic")?;
    let via = serde_json::to_value(s.via)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let ago = (now_ms - s.at_ms).max(0) / 1000;
    let detail = if s.detail.is_empty() {
        String::new()
    } else {
        format!(" ({})", s.detail)
    };
    Some(format!("{} by {via}, {ago} s ago{detail}", s.step))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootpath::Proto;

    fn step(at_ms: i64, step: &str, via: Proto, detail: &str) -> BootStep {
        BootStep {
            at_ms,
            step: step.into(),
            via,
            detail: detail.into(),
        }
    }

    #[test]
    fn a_stuck_node_says_what_was_last_seen_and_its_cards_missing_driver() {
        let boot = [
            step(1_000, "dhcp", Proto::Dhcp, ""),
            step(
                1_500,
                "nic",
                Proto::Dhcp,
                "network card PCI 15ad:07b0: no driver for it in image i586 (v1)",
            ),
            step(2_000, "kernel", Proto::Http, "vmlinuz"),
            step(4_000, "initrd", Proto::Http, "initrd"),
        ];
        assert_eq!(
            problem(NodeState::Stuck, &boot, 79_000).as_deref(),
            Some(
                "network card PCI 15ad:07b0: no driver for it in image i586 (v1); \
                 never registered; last seen: initrd by http, 75 s ago (initrd)"
            )
        );
        assert_eq!(
            problem(NodeState::Booting, &boot, 5_000).as_deref(),
            Some("network card PCI 15ad:07b0: no driver for it in image i586 (v1)"),
            "the card is named while it boots"
        );
        assert_eq!(
            problem(NodeState::Stuck, &boot[..1], 31_000).as_deref(),
            Some("never registered; last seen: dhcp by dhcp, 30 s ago")
        );
        assert_eq!(
            problem(NodeState::Stuck, &[], 0).as_deref(),
            Some("never registered after fetching its node OS"),
            "a head restarted since has no trace"
        );
    }

    #[test]
    fn a_node_that_joined_has_no_problem() {
        let boot = [
            step(
                1_500,
                "nic",
                Proto::Dhcp,
                "network card PCI 15ad:07b0: no driver",
            ),
            step(9_000, "registered", Proto::Agent, ""),
        ];
        for state in [NodeState::Registered, NodeState::Healthy, NodeState::Gone] {
            assert_eq!(problem(state, &boot, 10_000), None, "{state}");
        }
    }
}
