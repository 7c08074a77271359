//! On-demand groups (`schedules[].wake: on-demand`): Slurm's power saving, with enlist as its
//! power switch. slurmctld runs `enlist jobs resume HOSTLIST` when a job needs nodes that
//! are asleep and `enlist jobs suspend HOSTLIST` when nodes were idle for
//! `jobs.idle_release`; those come here through the admin API:
//!
//! - resume: a node whose group's window is closed, or whose PC is up on its own OS (its
//!   own OS asked DHCP for an address in the last 15 minutes, or a host answers ARP at its
//!   address), is held out of service with why (Slurm requeues what
//!   waited for it); any other is enlisted and sent its magic packet, paced, and watched: it
//!   woke if it registers within `jobs.wake_timeout`, else it "did not wake" and is held out
//!   until its group's next window;
//! - suspend: the node is released (rebooted to its own disk) and stays known to Slurm,
//!   asleep (`idle~`).
//!
//! The window rules Slurm too: each on-demand group's nodes are held (a maintenance
//! reservation) over the group's next closed time, so Slurm wakes none of them outside the
//! window and starts no job on them that would run past its end.

use std::net::Ipv4Addr;
use std::time::Duration;

use enlist_api::admin::{PowerAnswer, PowerSkip};
use jiff::Timestamp;

use super::{Phase, Timetable, TimetableError};
use crate::registry::RegistryError;
use crate::store::NodeRow;

/// A hold with no window ahead still ends: a year on.
const NO_END: i64 = 365 * 24 * 3600;

/// A PC whose own OS asked DHCP for an address this recently is taken to be up (its owner
/// may be at it), whatever ARP says: a firewall may keep it quiet, or it moved address.
const OWN_OS_UP: Duration = Duration::from_secs(15 * 60);

/// What the workload manager was last told to hold for a group: its nodes, from (0: now,
/// the group is closed) and until.
pub type Hold = (Vec<String>, i64, i64);

/// The name of a group's hold (its Slurm reservation).
pub fn hold_name(group: &str) -> String {
    format!("enlist-{group}-closed")
}

impl Timetable {
    /// Slurm's ResumeProgram: wake the nodes of `hostlist` that may and need to be woken.
    pub async fn resume(&self, hostlist: &str) -> Result<PowerAnswer, TimetableError> {
        self.resume_at(hostlist, Timestamp::now()).await
    }

    /// [`Timetable::resume`] with the clock at `now`.
    pub async fn resume_at(
        &self,
        hostlist: &str,
        now: Timestamp,
    ) -> Result<PowerAnswer, TimetableError> {
        let (rows, mut answer) = self.rows_named(hostlist).await?;
        for row in rows {
            match self.wake_for_work(&row, now).await {
                Ok(()) => answer.done.push(row.name),
                Err(why) => {
                    self.hold_out(&row, &why).await;
                    answer.skipped.push(skip(&row.name, &why));
                }
            }
        }
        Ok(answer)
    }

    /// Wake one node for Slurm, or say why not.
    async fn wake_for_work(&self, row: &NodeRow, now: Timestamp) -> Result<(), String> {
        let group = row.group.clone();
        if let Some(s) = self.cfg.schedule_of(&group) {
            let st = self.status(s, now);
            if st.phase == Phase::Released {
                self.registry.count_wake(&group, "closed");
                return Err(format!("outside group {group}'s window: not woken"));
            }
        }
        if let Some(why) = self.in_use(row).await {
            self.registry.count_wake(&group, "in-use");
            return Err(why);
        }
        let (reg, mac, released) = (self.registry.clone(), row.mac, row.released);
        let r = tokio::task::spawn_blocking(move || -> Result<String, RegistryError> {
            if released {
                reg.enlist(mac)?;
            }
            reg.wake_counted(mac, "Slurm needs it for a job")
        })
        .await;
        tokio::time::sleep(crate::wol::PACE).await;
        match r {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Whether the PC is up on its own OS, and how the head knows: its own OS asked DHCP for
    /// an address lately, or a host answers ARP at its address (the node's, or the one its
    /// own OS asked for).
    async fn in_use(&self, row: &NodeRow) -> Option<String> {
        let own = self.registry.own_os_seen(row.mac);
        if let Some((ago, ip)) = own.filter(|(ago, _)| *ago <= OWN_OS_UP) {
            let ip = ip.map(|i| format!(" ({i})")).unwrap_or_default();
            return Some(format!(
                "in use: its own OS asked DHCP for an address{ip} {} s ago",
                ago.as_secs()
            ));
        }
        let mut ips: Vec<Ipv4Addr> = row.ip.into_iter().collect();
        ips.extend(own.and_then(|(_, ip)| ip).filter(|ip| Some(*ip) != row.ip));
        let cfg = self.cfg.clone();
        tokio::task::spawn_blocking(move || {
            ips.into_iter().find_map(|ip| crate::wol::in_use(&cfg, ip))
        })
        .await
        .ok()
        .flatten()
    }

    /// Hold a node out of the workload manager's service, with why (and in its history).
    async fn hold_out(&self, row: &NodeRow, why: &str) {
        tracing::info!(node = %row.name, "on demand: {why}");
        let (reg, mac, note) = (self.registry.clone(), row.mac, why.to_string());
        let _ = tokio::task::spawn_blocking(move || reg.note(mac, "wake", &note)).await;
        if let Err(e) = self.workload.hold_out(&row.name, why).await {
            tracing::warn!(node = %row.name, "on demand: cannot hold the node out: {e}");
        }
    }

    /// Slurm's SuspendProgram: release the nodes of `hostlist` (Slurm keeps them, asleep).
    pub async fn suspend(&self, hostlist: &str) -> Result<PowerAnswer, TimetableError> {
        let (rows, mut answer) = self.rows_named(hostlist).await?;
        let idle = humantime::format_duration(self.cfg.jobs.idle_release).to_string();
        for row in rows {
            let name = row.name.clone();
            if row.released {
                answer.done.push(name);
                continue;
            }
            let (reg, mac) = (self.registry.clone(), row.mac);
            let why = format!("idle for {idle}: released by Slurm's power saving");
            let r = tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
                reg.note(mac, "jobs", &why)?;
                reg.release(mac)
            })
            .await;
            match r {
                Ok(Ok(())) => answer.done.push(name),
                Ok(Err(e)) => answer.skipped.push(skip(&name, &e.to_string())),
                Err(e) => answer.skipped.push(skip(&name, &e.to_string())),
            }
        }
        Ok(answer)
    }

    /// The rows of the nodes a host list names, and an answer that already says which
    /// names no node has.
    async fn rows_named(
        &self,
        hostlist: &str,
    ) -> Result<(Vec<NodeRow>, PowerAnswer), TimetableError> {
        let names = crate::hostlist::expand(hostlist)
            .map_err(|e| TimetableError::BadRequest(format!("{hostlist:?}: {e}")))?;
        let rows = self.all_rows().await?;
        let mut answer = PowerAnswer::default();
        let mut found = vec![];
        for n in names {
            match rows.iter().find(|r| r.name == n) {
                Some(r) => found.push(r.clone()),
                None => answer.skipped.push(skip(&n, "no such node on this head")),
            }
        }
        Ok((found, answer))
    }

    /// The PCs woken for work that did not register in time: held out until their group's
    /// next window, with their wake rate.
    pub(super) async fn overdue_wakes(&self) {
        // After slurmctld's own ResumeTimeout, so the reason given here is the one that stays.
        let timeout = self.cfg.jobs.wake_timeout + Duration::from_secs(5);
        let reg = self.registry.clone();
        let late = match tokio::task::spawn_blocking(move || reg.overdue_wakes(timeout)).await {
            Ok(Ok(late)) => late,
            _ => return,
        };
        for (row, said) in late {
            tracing::warn!(node = %row.name, mac = %row.mac, "on demand: {said}");
            let why = format!(
                "did not wake (Wake-on-LAN): woke {} of {} tries",
                row.wakes_woke, row.wakes_tried
            );
            if let Err(e) = self.workload.hold_out(&row.name, &why).await {
                tracing::warn!(node = %row.name, "on demand: {e}");
            }
        }
    }

    /// An on-demand group's window opened: its PCs may be enlisted (a PC switched on boots
    /// the node OS), and the nodes held out in the last window (did not wake, in use) are in
    /// service again. None is woken: Slurm does that for the jobs that wait.
    pub(super) async fn open_on_demand(&self, group: &str) -> Result<(), TimetableError> {
        for row in self.members(group).await? {
            self.enlist_member(&row, &format!("group {group}'s window opened"), false)
                .await;
            let held = self
                .registry
                .sched_of(&row.name)
                .is_some_and(|s| s.state == "down" || s.state == "drained");
            if held {
                if let Err(e) = self.workload.restore(&row.name).await {
                    tracing::warn!(node = %row.name, "on demand: cannot put it back in service: {e}");
                }
            }
        }
        Ok(())
    }

    /// Tell the workload manager to keep each on-demand group's nodes free over the group's
    /// next closed time (when that, or the nodes it knows, changed, and every 10 minutes: a
    /// restarted slurmctld may have lost it).
    pub(super) async fn keep_holds(&self, now: Timestamp) {
        for s in self
            .cfg
            .schedules
            .iter()
            .filter(|s| s.wake == crate::config::Wake::OnDemand)
        {
            let o = self.overrides(&s.group);
            let (from, until) = super::window::closed_period(s, &o, now, &self.tz);
            let from = if from <= now { 0 } else { from.as_second() };
            let until = until.map_or(now.as_second() + NO_END, |t| t.as_second());
            let nodes = self.known_members(&s.group).await;
            let want: Hold = (nodes, from, until);
            let fresh = self
                .state()
                .holds
                .get(&s.group)
                .is_some_and(|(h, at)| *h == want && at.elapsed() < Duration::from_secs(600));
            if fresh {
                continue;
            }
            let name = hold_name(&s.group);
            match self
                .workload
                .hold_window(&name, &want.0, want.1, want.2)
                .await
            {
                Ok(()) => {
                    tracing::debug!(group = %s.group, "on demand: hold {name} over {from}..{until}");
                    self.state()
                        .holds
                        .insert(s.group.clone(), (want, std::time::Instant::now()));
                }
                Err(e) => {
                    tracing::warn!(group = %s.group, "on demand: cannot hold the group's closed time: {e}")
                }
            }
        }
    }

    /// The names of a group's nodes the workload manager knows, sorted.
    async fn known_members(&self, group: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .members(group)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| r.name)
            .filter(|n| self.registry.sched_of(n).is_some())
            .collect();
        names.sort();
        names
    }
}

fn skip(node: &str, why: &str) -> PowerSkip {
    PowerSkip {
        node: node.into(),
        why: why.into(),
    }
}
