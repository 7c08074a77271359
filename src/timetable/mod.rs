//! Schedules: each scheduled group (a room) is enlisted and released at the times its cron
//! expressions name, in the head's local time. [`window`] says, purely, where a schedule stands
//! at an instant; [`Timetable`] keeps the admin's overrides (skip the next change, run it now)
//! in the state folder and acts when a group's phase differs from what it last acted on:
//!
//! - enlisted: the group's released nodes are enlisted again, and every PC of the group that
//!   is not up gets a Wake-on-LAN packet, one every [`crate::wol::PACE`] so a room does not power on
//!   in one surge;
//! - released: every node of the group is released (through Slurm when jobs are on: drained,
//!   its jobs finished or requeued at the deadline, then rebooted to its own disk).
//!
//! Between the two, the registry answers the PXE boot of a released group's PC with its own
//! disk, so a PC a student switches on in the daytime is not enlisted. The head acts on the
//! current phase once when it starts (a missed 20:00 still wakes the room at 20:30).

pub mod on_demand;
pub mod window;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use tokio::sync::watch;

use crate::config::{Config, ScheduleConfig};
use crate::jobs::{workload_of, Jobs};
use crate::registry::{Registry, RegistryError};
use crate::store::NodeRow;
use crate::workload::{release_node, Workload};

pub use window::{Overrides, Phase, Ran, Status};

/// How often the clock is looked at.
const TICK: Duration = Duration::from_secs(5);

/// The file in the state folder that keeps the admin's overrides.
pub const OVERRIDES_FILE: &str = "schedules.json";

#[derive(Debug, thiserror::Error)]
pub enum TimetableError {
    #[error("group {0:?} has no schedule (schedules: in the config)")]
    NoSchedule(String),
    #[error("group {0:?} has no scheduled change ahead")]
    NothingAhead(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("schedule: a task failed: {0}")]
    Task(String),
    #[error("{0}")]
    BadRequest(String),
}

pub use enlist_api::admin::{GroupSchedule, NextChange};

pub struct Timetable {
    cfg: Arc<Config>,
    registry: Arc<Registry>,
    jobs: Option<Arc<Jobs>>,
    /// Releases go through it (Slurm drains first; none releases at once).
    workload: Arc<dyn Workload>,
    /// The head's local time zone (the config's times are in it).
    tz: TimeZone,
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
pub(super) struct State {
    overrides: HashMap<String, Overrides>,
    /// The phase the head last acted on, per group (none yet: it acts at its first look).
    acted: HashMap<String, Phase>,
    /// What the workload manager was last told to hold for each on-demand group, and when.
    holds: HashMap<String, (on_demand::Hold, std::time::Instant)>,
}

impl Timetable {
    /// The head's scheduler, if the config has schedules; the registry learns at once which
    /// groups are released now.
    pub fn new(
        cfg: Arc<Config>,
        registry: Arc<Registry>,
        jobs: Option<Arc<Jobs>>,
        tz: TimeZone,
    ) -> Result<Option<Arc<Timetable>>, TimetableError> {
        if cfg.schedules.is_empty() {
            return Ok(None);
        }
        let path = cfg.state_dir.join(OVERRIDES_FILE);
        let overrides = load_overrides(&path)?;
        let s = Arc::new(Timetable {
            cfg,
            registry,
            workload: workload_of(jobs.as_ref()),
            jobs,
            tz,
            path,
            state: Mutex::new(State {
                overrides,
                acted: HashMap::new(),
                holds: HashMap::new(),
            }),
        });
        s.phases(Timestamp::now());
        Ok(Some(s))
    }

    pub(super) fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn schedule(&self, group: &str) -> Result<&ScheduleConfig, TimetableError> {
        self.cfg
            .schedule_of(group)
            .ok_or_else(|| TimetableError::NoSchedule(group.into()))
    }

    /// The admin's overrides of a group's schedule (none: the schedule as written).
    pub(super) fn overrides(&self, group: &str) -> Overrides {
        self.state()
            .overrides
            .get(group)
            .cloned()
            .unwrap_or_default()
    }

    pub(super) fn status(&self, s: &ScheduleConfig, now: Timestamp) -> Status {
        window::status(s, &self.overrides(&s.group), now, &self.tz)
    }

    /// Every schedule, where it stands at `now`.
    pub fn list(&self, now: Timestamp) -> Vec<GroupSchedule> {
        self.cfg
            .schedules
            .iter()
            .map(|s| self.view(s, now))
            .collect()
    }

    fn view(&self, s: &ScheduleConfig, now: Timestamp) -> GroupSchedule {
        let st = self.status(s, now);
        let local = |t: Timestamp| {
            t.to_zoned_datetime(self.tz.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string()
        };
        GroupSchedule {
            group: s.group.clone(),
            enlist: s.enlist.to_string(),
            release: s.release.to_string(),
            phase: st.phase,
            since: st.since.map(local),
            next: st.next.map(|n| NextChange {
                phase: n.phase,
                at: local(n.at),
                at_unix: n.at.as_second(),
                skipped: n.skipped,
            }),
        }
    }

    /// Skip (or, `skip` false, no longer skip) the group's next scheduled change.
    pub fn skip(
        &self,
        group: &str,
        skip: bool,
        now: Timestamp,
    ) -> Result<GroupSchedule, TimetableError> {
        let s = self.schedule(group)?;
        let next = self
            .status(s, now)
            .next
            .ok_or_else(|| TimetableError::NothingAhead(group.into()))?;
        self.change(group, |o| o.skip = skip.then_some(next.at))?;
        Ok(self.view(s, now))
    }

    /// Make the group's next change now (it holds until the scheduled change after it).
    pub fn run_now(&self, group: &str, now: Timestamp) -> Result<GroupSchedule, TimetableError> {
        let s = self.schedule(group)?;
        let phase = self.status(s, now).phase.other();
        self.change(group, |o| o.ran = Some(Ran { phase, at: now }))?;
        Ok(self.view(s, now))
    }

    /// Change a group's overrides and write them all ([`crate::store::replace_file`]).
    fn change(&self, group: &str, f: impl FnOnce(&mut Overrides)) -> Result<(), TimetableError> {
        let mut state = self.state();
        let mut all = state.overrides.clone();
        f(all.entry(group.to_string()).or_default());
        save_overrides(&self.path, &all)?;
        state.overrides = all;
        Ok(())
    }

    /// Every group's phase at `now`; the registry learns which groups are released.
    fn phases(&self, now: Timestamp) -> Vec<(String, Phase)> {
        let phases: Vec<(String, Phase)> = self
            .cfg
            .schedules
            .iter()
            .map(|s| (s.group.clone(), self.status(s, now).phase))
            .collect();
        let released: HashSet<String> = phases
            .iter()
            .filter(|(_, p)| *p == Phase::Released)
            .map(|(g, _)| g.clone())
            .collect();
        self.registry.set_released_groups(released);
        phases
    }

    /// The groups whose phase at `now` differs from what the head last acted on (taken as
    /// acted on from here).
    pub fn due(&self, now: Timestamp) -> Vec<(String, Phase)> {
        let phases = self.phases(now);
        let mut state = self.state();
        phases
            .into_iter()
            .filter(|(g, p)| state.acted.insert(g.clone(), *p) != Some(*p))
            .collect()
    }

    /// Look at the clock (`now`) and act on every group whose phase changed. A window that
    /// opens (not one the head finds open as it starts) first gets the cluster a new munge
    /// key, so the PCs it wakes join with that one.
    pub async fn tick(self: &Arc<Self>, now: Timestamp) {
        let before = self.state().acted.clone();
        let due = self.due(now);
        let opened = due
            .iter()
            .any(|(g, p)| *p == Phase::Enlisted && before.get(g) == Some(&Phase::Released));
        if let (true, Some(jobs)) = (opened, &self.jobs) {
            if let Err(e) = jobs.rotate_key().await {
                // A site's own controller: its key is not ours to change.
                tracing::debug!("schedule: munge key not rotated: {e}");
            }
        }
        for (group, phase) in due {
            tracing::info!(%group, phase = phase.as_str(), "schedule: group {group} is {}", phase.as_str());
            let r = match phase {
                Phase::Enlisted if self.cfg.on_demand(&group) => self.open_on_demand(&group).await,
                Phase::Enlisted => self.enlist_group(&group).await,
                Phase::Released => self.release_group(&group).await,
            };
            if let Err(e) = r {
                tracing::error!(%group, "schedule: {e}");
            }
        }
        if self.cfg.any_on_demand() {
            self.keep_holds(now).await;
            self.overdue_wakes().await;
        }
    }

    /// The group's nodes (approved ones).
    pub(super) async fn members(&self, group: &str) -> Result<Vec<NodeRow>, TimetableError> {
        let mut rows = self.all_rows().await?;
        rows.retain(|r| r.group == group && r.approved);
        Ok(rows)
    }

    /// Every node's row, read off the async workers.
    pub(super) async fn all_rows(&self) -> Result<Vec<NodeRow>, TimetableError> {
        let reg = self.registry.clone();
        tokio::task::spawn_blocking(move || reg.store().nodes())
            .await
            .map_err(|e| TimetableError::Task(e.to_string()))?
            .map_err(|e| TimetableError::Registry(RegistryError::from(e)))
    }

    /// Enlist the group's released nodes and wake every PC of it that is not up, paced.
    async fn enlist_group(&self, group: &str) -> Result<(), TimetableError> {
        for row in self.members(group).await? {
            let alive = row.state.is_alive();
            self.enlist_member(&row, &format!("group {group} enlisted"), !alive)
                .await;
            if !alive {
                tokio::time::sleep(crate::wol::PACE).await;
            }
        }
        Ok(())
    }

    /// Enlist one node of a group whose window opened (if released), with why in its
    /// history, and send its PC the magic packet if `wake`.
    pub(super) async fn enlist_member(&self, row: &NodeRow, why: &str, wake: bool) {
        let (reg, mac, released, why) = (
            self.registry.clone(),
            row.mac,
            row.released,
            why.to_string(),
        );
        let r = tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
            if released {
                reg.enlist(mac)?;
            }
            reg.note(mac, "schedule", &why)?;
            if wake {
                reg.wake(mac)?;
            }
            Ok(())
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%mac, "schedule: {e}"),
            Err(e) => tracing::warn!(%mac, "schedule: {e}"),
        }
    }

    /// Release every node of the group: through Slurm when jobs are on (each drains on its
    /// own: a long job does not hold up the room).
    async fn release_group(&self, group: &str) -> Result<(), TimetableError> {
        for row in self.members(group).await? {
            if row.released {
                continue;
            }
            let mac = row.mac;
            let why = format!("group {group} released");
            let (reg, workload) = (self.registry.clone(), self.workload.clone());
            let rt = tokio::runtime::Handle::current();
            let r = tokio::task::spawn_blocking(move || -> Result<(), RegistryError> {
                reg.note(mac, "schedule", &why)?;
                release_node(&rt, &reg, &workload, mac)
            })
            .await;
            if let Ok(Err(e)) = r {
                tracing::warn!(%mac, "schedule: release: {e}");
            }
        }
        Ok(())
    }

    /// Look at the clock every few seconds until shutdown.
    pub fn spawn(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
        shutdown: &watch::Receiver<bool>,
    ) {
        let me = self.clone();
        let mut shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|v| *v) => return,
                }
                me.tick(Timestamp::now()).await;
            }
        });
    }
}

fn load_overrides(path: &std::path::Path) -> Result<HashMap<String, Overrides>, TimetableError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => {
            return Err(TimetableError::File {
                path: path.into(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_str(&text).map_err(|e| TimetableError::File {
        path: path.into(),
        message: format!(
            "line {}: {e} (remove the file to drop every skip and run-now)",
            e.line()
        ),
    })
}

fn save_overrides(
    path: &std::path::Path,
    all: &HashMap<String, Overrides>,
) -> Result<(), TimetableError> {
    let err = |message: String| TimetableError::File {
        path: path.into(),
        message,
    };
    let text = serde_json::to_vec_pretty(all).map_err(|e| err(e.to_string()))?;
    crate::store::replace_file(path, &text).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests;
