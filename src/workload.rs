//! The seam between a node's life (the registry, the admin's release, the timetable) and the
//! workload manager that runs jobs on the nodes. Slurm (`jobs::slurm::Slurm`) is the one real
//! [`Workload`]; [`NoWorkload`] stands in when jobs are off, so releasing a node is one
//! procedure ([`release`]) whatever runs on it.
//!
//! What the lifecycle asks of a workload manager: the nodes it knows and how busy they are,
//! to stop giving a node work (drain), the jobs on a node, to put jobs back in the queue
//! (requeue), and to forget a node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enlist_api::admin::SchedInfo;
use enlist_api::Mac;
use futures_util::future::BoxFuture;

use crate::registry::{Registry, RegistryError};

/// What went wrong asking the workload manager.
#[derive(Debug, thiserror::Error)]
#[error("{manager}: {message}")]
pub struct WorkloadError {
    /// The manager's name ([`Workload::name`]).
    pub manager: &'static str,
    pub message: String,
}

/// A workload manager, as the node lifecycle uses it.
pub trait Workload: Send + Sync {
    /// `slurm`, `none`: for logs and errors.
    fn name(&self) -> &'static str;

    /// Whether a node may have jobs to drain before it is released; without, a release is
    /// done at once.
    fn holds_jobs(&self) -> bool;

    /// Every node the manager knows, by name, with its state and load.
    fn nodes(&self) -> BoxFuture<'_, Result<HashMap<String, SchedInfo>, WorkloadError>>;

    /// Whether the manager knows the node now.
    fn knows<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, WorkloadError>>;

    /// Give the node no more work; what runs there goes on.
    fn drain<'a>(
        &'a self,
        node: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkloadError>>;

    /// The ids of the jobs running on the node.
    fn jobs_on<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<String>, WorkloadError>>;

    /// Put jobs back in the queue (they start again elsewhere).
    fn requeue<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<(), WorkloadError>>;

    /// Forget the node (it may refuse while it still counts jobs there).
    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>>;

    /// Keep the node known but asleep (powered down): the manager asks the head to wake it
    /// when work needs it ([`crate::timetable`]'s on-demand groups).
    fn put_to_sleep<'a>(
        &'a self,
        node: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkloadError>>;

    /// Hold the node out of service, with why (did not wake, in use); what waited for it
    /// goes back to the queue.
    fn hold_out<'a>(
        &'a self,
        node: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkloadError>>;

    /// Put a held-out node back in service (asleep, if it was).
    fn restore<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>>;

    /// Keep `nodes` from work in `[from, until)` (unix seconds) under the hold `name`, so a
    /// job that would still run at `from` does not start on them; no nodes: drop the hold.
    fn hold_window<'a>(
        &'a self,
        name: &'a str,
        nodes: &'a [String],
        from: i64,
        until: i64,
    ) -> BoxFuture<'a, Result<(), WorkloadError>>;
}

/// No workload manager (jobs off): no node is known, none holds jobs.
pub struct NoWorkload;

impl Workload for NoWorkload {
    fn name(&self) -> &'static str {
        "none"
    }

    fn holds_jobs(&self) -> bool {
        false
    }

    fn nodes(&self) -> BoxFuture<'_, Result<HashMap<String, SchedInfo>, WorkloadError>> {
        Box::pin(async { Ok(HashMap::new()) })
    }

    fn knows<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<bool, WorkloadError>> {
        Box::pin(async { Ok(false) })
    }

    fn drain<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async { Ok(()) })
    }

    fn jobs_on<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<String>, WorkloadError>> {
        Box::pin(async { Ok(vec![]) })
    }

    fn requeue<'a>(&'a self, _: &'a [String]) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async { Ok(()) })
    }

    fn forget<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async { Ok(()) })
    }

    fn put_to_sleep<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async { Ok(()) })
    }

    fn hold_out<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async { Ok(()) })
    }

    fn restore<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async { Ok(()) })
    }

    fn hold_window<'a>(
        &'a self,
        _: &'a str,
        _: &'a [String],
        _: i64,
        _: i64,
    ) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async { Ok(()) })
    }
}

/// What can go wrong releasing a node.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    #[error("release: a task failed: {0}")]
    Task(String),
}

/// How long a release waits for a node's jobs before requeueing them, and for the manager
/// to let go of the node.
#[derive(Debug, Clone, Copy)]
pub struct ReleaseLimits {
    /// `jobs.release_deadline`.
    pub deadline: Duration,
    /// Three times `jobs.node_timeout`: the manager marks a silent node down (and requeues
    /// its jobs) within its node timeout, and only then lets it be deleted.
    pub forget_for: Duration,
}

impl ReleaseLimits {
    pub fn of(cfg: &crate::config::Config) -> ReleaseLimits {
        ReleaseLimits {
            deadline: cfg.jobs.release_deadline,
            forget_for: cfg.jobs.node_timeout * 3,
        }
    }
}

/// Forget a node in the manager, trying for `limits.forget_for`.
pub async fn forget(workload: &dyn Workload, name: &str, limits: ReleaseLimits) {
    let until = Instant::now() + limits.forget_for;
    loop {
        match workload.forget(name).await {
            Ok(()) => {
                tracing::info!(
                    node = name,
                    manager = workload.name(),
                    "node forgotten by the workload manager"
                );
                return;
            }
            Err(e) if Instant::now() > until => {
                tracing::warn!(
                    node = name,
                    "cannot make the workload manager forget the node: {e}"
                );
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(5)).await,
        }
    }
}

/// A registry call that reaches the database, run off the async workers.
async fn on_registry<T: Send + 'static>(
    registry: &Arc<Registry>,
    f: impl FnOnce(&Registry) -> Result<T, RegistryError> + Send + 'static,
) -> Result<T, ReleaseError> {
    let registry = registry.clone();
    tokio::task::spawn_blocking(move || f(&registry))
        .await
        .map_err(|e| ReleaseError::Task(e.to_string()))?
        .map_err(ReleaseError::from)
}

/// Release a node: drain it in the manager, wait for its jobs (requeue them at the
/// deadline), make the manager forget it, then hand the PC back (the agent reboots it to its
/// own disk). A node the manager does not know is released at once.
pub async fn release(
    registry: Arc<Registry>,
    workload: Arc<dyn Workload>,
    limits: ReleaseLimits,
    mac: Mac,
) -> Result<(), ReleaseError> {
    let row = on_registry(&registry, move |r| r.node(mac)).await?;
    // Asked now: a node that joined since the last poll may already run a job.
    let known = match workload.knows(&row.name).await {
        Ok(k) => k,
        Err(_) => registry.sched_of(&row.name).is_some(),
    };
    // A node of an on-demand group stays known, asleep, for the manager to wake it.
    let keep = registry.config().on_demand(&row.group);
    if !known || !row.state.is_alive() {
        on_registry(&registry, move |r| r.release(mac)).await?;
        // Its manager's daemon may be registering this very moment: make sure it does not
        // stay (a node to keep that the manager does not know has nothing to put to sleep).
        if known || !keep {
            let_go(workload.as_ref(), &row.name, keep, limits).await;
        }
        return Ok(());
    }
    let deadline = limits.deadline;
    on_registry(&registry, move |r| r.drain_started(mac, deadline)).await?;
    workload.drain(&row.name, "released by enlist").await?;
    let until = Instant::now() + deadline;
    loop {
        let jobs = workload.jobs_on(&row.name).await?;
        if jobs.is_empty() {
            break;
        }
        if Instant::now() >= until {
            let why = format!("deadline reached: requeueing {}", jobs.join(","));
            on_registry(&registry, move |r| r.note(mac, "jobs", &why)).await?;
            workload.requeue(&jobs).await?;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    if keep {
        // Handed back first: the manager's suspend (the head's release again) finds it done.
        on_registry(&registry, move |r| r.release(mac)).await?;
        sleep_node(workload.as_ref(), &row.name).await;
        return Ok(());
    }
    forget(workload.as_ref(), &row.name, limits).await;
    on_registry(&registry, move |r| r.release(mac)).await
}

/// The manager lets go of a node that left: it keeps one of an on-demand group asleep
/// (`keep`), else forgets it.
pub async fn let_go(workload: &dyn Workload, name: &str, keep: bool, limits: ReleaseLimits) {
    if keep {
        sleep_node(workload, name).await;
    } else {
        forget(workload, name, limits).await;
    }
}

/// Put a released node of an on-demand group to sleep in the manager (logged, not fatal: the
/// manager marks a silent node down anyway).
pub async fn sleep_node(workload: &dyn Workload, name: &str) {
    match workload.put_to_sleep(name, "released by enlist").await {
        Ok(()) => tracing::info!(node = name, "node asleep in the workload manager"),
        Err(e) => tracing::warn!(node = name, "cannot put the node to sleep: {e}"),
    }
}

/// Release a node the way this head is set up to: through the workload manager when one may
/// hold jobs on it (in the background on `rt`, since draining may wait for the node's jobs;
/// the node shows `draining` meanwhile), else at once. The admin API's release and the
/// timetable's morning release both come here, so the two cannot disagree. Call it from a
/// blocking thread.
pub fn release_node(
    rt: &tokio::runtime::Handle,
    registry: &Arc<Registry>,
    workload: &Arc<dyn Workload>,
    mac: Mac,
) -> Result<(), RegistryError> {
    if !workload.holds_jobs() {
        return registry.release(mac);
    }
    let (registry, workload) = (registry.clone(), workload.clone());
    let limits = ReleaseLimits::of(&registry.config());
    rt.spawn(async move {
        if let Err(e) = release(registry, workload, limits, mac).await {
            tracing::error!(%mac, "release: {e}");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::tests::{boot, ip, registry, A};

    #[tokio::test(flavor = "multi_thread")]
    async fn without_a_workload_manager_a_release_is_done_at_once() {
        let r = registry();
        boot(&r, A, ip(100));
        let none: Arc<dyn Workload> = Arc::new(NoWorkload);
        let rt = tokio::runtime::Handle::current();
        let (r2, w) = (r.clone(), none.clone());
        tokio::task::spawn_blocking(move || release_node(&rt, &r2, &w, A))
            .await
            .unwrap()
            .unwrap();
        assert!(
            r.node(A).unwrap().released,
            "released before the call returned"
        );

        // The whole procedure through the seam: nothing to drain, the PC handed back.
        boot(&r, crate::registry::tests::B, ip(101));
        let limits = ReleaseLimits {
            deadline: Duration::from_secs(1),
            forget_for: Duration::from_secs(1),
        };
        release(r.clone(), none, limits, crate::registry::tests::B)
            .await
            .unwrap();
        assert!(r.node(crate::registry::tests::B).unwrap().released);
    }
}
