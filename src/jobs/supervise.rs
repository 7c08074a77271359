//! Daemons the head runs for the jobs (munged, slurmctld, ganesha.nfsd) as its children: each
//! started in the foreground with its output appended to a log file in the state folder,
//! restarted if it dies (waiting longer each time it dies young), and stopped with the head.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// One supervised program.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Its stdout and stderr go here.
    pub log: PathBuf,
}

/// What the head knows of a daemon (metrics, the health check).
#[derive(Debug, Default)]
pub struct DaemonState {
    pub starts: AtomicU64,
    /// Process id while running, 0 otherwise.
    pub pid: AtomicU64,
    /// Stop it and start it again now (munged after the munge key was replaced).
    pub restart: tokio::sync::Notify,
}

/// How one run of a daemon ended.
enum Ended {
    /// It exited by itself.
    Exited,
    /// The head asked for a restart.
    Restart,
    /// The head is stopping.
    Shutdown,
}

/// A run shorter than this counts as dying young: the next start waits longer.
const YOUNG: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// After SIGTERM on shutdown, how long a daemon may take before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

fn spawn(d: &Daemon) -> std::io::Result<tokio::process::Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&d.log)?;
    tokio::process::Command::new(&d.program)
        .args(&d.args)
        .envs(d.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
}

/// Keep `d` running until `shutdown`.
pub async fn supervise(d: Daemon, state: Arc<DaemonState>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = Instant::now();
        let mut child = match spawn(&d) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(daemon = d.name, program = %d.program.display(), "cannot start: {e}");
                if wait_or_stop(&mut shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        state.starts.fetch_add(1, Ordering::Relaxed);
        state
            .pid
            .store(u64::from(child.id().unwrap_or(0)), Ordering::Relaxed);
        tracing::info!(daemon = d.name, pid = child.id().unwrap_or(0), log = %d.log.display(), "started");
        let ended = tokio::select! {
            status = child.wait() => {
                state.pid.store(0, Ordering::Relaxed);
                let lived = started.elapsed();
                if lived > YOUNG {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(daemon = d.name, "exited ({}) after {}s; restarting in {}s (its log: {})",
                    status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                    lived.as_secs(), backoff.as_secs(), d.log.display());
                Ended::Exited
            }
            _ = state.restart.notified() => Ended::Restart,
            _ = shutdown.wait_for(|v| *v) => Ended::Shutdown,
        };
        match ended {
            Ended::Exited => {}
            Ended::Restart => {
                tracing::info!(daemon = d.name, "restarting as asked");
                stop(&mut child, d.name).await;
                state.pid.store(0, Ordering::Relaxed);
                continue;
            }
            Ended::Shutdown => {
                stop(&mut child, d.name).await;
                state.pid.store(0, Ordering::Relaxed);
                return;
            }
        }
        if wait_or_stop(&mut shutdown, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Sleep `d`; true if the head is stopping meanwhile.
async fn wait_or_stop(shutdown: &mut watch::Receiver<bool>, d: Duration) -> bool {
    let slept = tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.wait_for(|v| *v) => false,
    };
    !slept || *shutdown.borrow()
}

/// SIGTERM, then SIGKILL after the grace period.
async fn stop(child: &mut tokio::process::Child, name: &str) {
    if let Some(pid) = child.id() {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(daemon = name, "did not stop on SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_daemon_is_started_again_and_stopped_with_the_head() {
        let dir = tempfile::tempdir().unwrap();
        let d = Daemon {
            name: "test",
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo started; exit 3".into()],
            env: vec![],
            log: dir.path().join("test.log"),
        };
        let state = Arc::new(DaemonState::default());
        let (tx, rx) = watch::channel(false);
        let task = tokio::spawn(supervise(d, state.clone(), rx));
        // Dies at once, restarted after 1 s, then after 2 s.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        tx.send(true).unwrap();
        task.await.unwrap();
        let starts = state.starts.load(Ordering::Relaxed);
        assert!((2..=3).contains(&starts), "{starts} starts");
        let log = std::fs::read_to_string(dir.path().join("test.log")).unwrap();
        assert_eq!(log.matches("started").count() as u64, starts);
    }
}
