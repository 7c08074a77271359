//! munged and slurmd on the node: their arguments, starting them (after stopping any a
//! previous agent left), and keeping them running.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use enlist_api::{JobsDescriptor, JobsRequest};

use super::firewall::Filter;
use super::root::JobRoot;
use super::system::{MUNGE_DIR, MUNGE_KEY};
use super::RekeyAnswer;
use crate::client::Client;
use crate::{say, sleep_unless_stopped, STOP};

/// Paths below are as the daemons see them (in their root).
///
/// slurmd's pid file (slurm.conf's SlurmdPidFile, written by the head).
const SLURMD_PID: &str = "/run/slurmd.pid";
const MUNGED_PID: &str = "/run/munge/munged.pid";
/// slurmd's log (slurm.conf's SlurmdLogFile): its last lines explain a failure.
const SLURMD_LOG: &str = "/var/log/slurmd.log";

/// A daemon this agent runs.
struct Daemon {
    name: &'static str,
    program: &'static str,
    args: Vec<String>,
    /// Where its own messages go (with --foreground they are on stderr), in the node OS.
    log: &'static str,
    /// The root it runs in.
    root: JobRoot,
    child: Option<Child>,
    started: Instant,
    /// How long to wait before the next restart; doubles up to a minute.
    backoff: Duration,
    retry_at: Option<Instant>,
}

pub struct Running {
    daemons: Vec<Daemon>,
    ready: bool,
    /// slurmd's filter, following the peer list.
    filter: Filter,
    /// munged's socket (to know it is up again after a restart), as the agent reaches it.
    munge_socket: std::path::PathBuf,
    /// Where the daemons run.
    root: JobRoot,
}

/// slurmd's arguments: a dynamic node (`-Z`) that fetches slurm.conf from slurmctld, with the
/// memory it may give to jobs and the enlisted feature plus its arch.
pub fn slurmd_args(
    node: &str,
    controller: &str,
    real_memory_mb: u64,
    features: &str,
) -> Vec<String> {
    [
        "-D",
        "-Z",
        "-N",
        node,
        "--conf-server",
        controller,
        "--conf",
        &format!("RealMemory={real_memory_mb} Feature={features}"),
    ]
    .map(str::to_string)
    .to_vec()
}

pub fn munged_args(socket: &str) -> Vec<String> {
    [
        "--foreground".to_string(),
        // The node OS has only root; munged runs as root only when told to.
        "--force".into(),
        format!("--socket={socket}"),
        format!("--key-file={MUNGE_KEY}"),
        format!("--pid-file={MUNGED_PID}"),
        format!("--seed-file={MUNGE_DIR}/munged.seed"),
        format!("--log-file={MUNGE_DIR}/munged.log"),
    ]
    .to_vec()
}

/// Memory for jobs, MB: what is available now (the runtime mounted, before the daemons) less
/// what the node keeps for itself.
pub fn job_memory_mb(meminfo: &str, reserve_mb: u64) -> u64 {
    (meminfo_kb(meminfo, "MemAvailable") / 1024)
        .saturating_sub(reserve_mb)
        .max(1)
}

/// One `/proc/meminfo` figure, kB (0 when it is missing).
fn meminfo_kb(meminfo: &str, key: &str) -> u64 {
    meminfo
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// The node's Slurm features, for `--constraint`: the enlisted feature, its arch (`i686`,
/// `x86_64`), `sse2` when the CPU has it (Debian's i386 numpy needs it), and its RAM tier
/// (`ram64m`, `ram4g`: the installed memory rounded up to a power of two).
pub fn features(feature: &str, arch: &str, cpuinfo: &str, meminfo: &str) -> String {
    let mut f = vec![feature.to_string(), arch.to_string()];
    let sse2 = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|w| w == "sse2"));
    if sse2 {
        f.push("sse2".into());
    }
    let total_kb = meminfo_kb(meminfo, "MemTotal");
    if total_kb > 0 {
        let mb = (total_kb / 1024).max(1).next_power_of_two();
        f.push(if mb >= 1024 {
            format!("ram{}g", mb / 1024)
        } else {
            format!("ram{mb}m")
        });
    }
    f.join(",")
}

fn arch() -> String {
    std::fs::read_to_string("/proc/sys/kernel/arch")
        .map(|a| a.trim().to_string())
        .ok()
        .filter(|a| !a.is_empty() && a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'))
        .unwrap_or_else(|| "x86".into())
}

pub fn start(
    d: &JobsDescriptor,
    node: &str,
    filter: Filter,
    root: JobRoot,
) -> Result<Running, String> {
    stop_previous("munged", &root.path(MUNGED_PID));
    stop_previous("slurmd", &root.path(SLURMD_PID));
    for dir in ["/var/spool/slurmd", "/var/log", "/run/enlist"] {
        let dir = root.path(dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let socket = root.path(&d.munge_socket);
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = job_memory_mb(&meminfo, d.mem_reserve_mb);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let features = features(&d.feature, &arch(), &cpuinfo, &meminfo);
    let mut r = Running {
        daemons: vec![
            Daemon::new(
                "munged",
                "/usr/sbin/munged",
                munged_args(&d.munge_socket),
                "/run/enlist/munged.out",
                root.clone(),
            ),
            Daemon::new(
                "slurmd",
                "/usr/sbin/slurmd",
                slurmd_args(node, &d.controller, memory, &features),
                "/run/enlist/slurmd.out",
                root.clone(),
            ),
        ],
        ready: false,
        filter,
        munge_socket: socket.clone(),
        root: root.clone(),
    };
    // Their log files go to the head (their stderr repeats them; a crash's last words
    // come with the agent's own line about it).
    crate::logs::follow("munged", root.path(&format!("{MUNGE_DIR}/munged.log")));
    crate::logs::follow("slurmd", root.path(SLURMD_LOG));
    r.daemons[0].spawn()?;
    wait_for(&socket, Duration::from_secs(15)).map_err(|()| {
        format!(
            "munged did not open its socket: {}",
            last_line(r.daemons[0].log)
        )
    })?;
    link_default_socket(&root, &d.munge_socket)?;
    r.daemons[1].spawn()?;
    say(&format!(
        "jobs: munged and slurmd started ({memory} MB for jobs, features {features})"
    ));
    Ok(r)
}

impl Daemon {
    fn new(
        name: &'static str,
        program: &'static str,
        args: Vec<String>,
        log: &'static str,
        root: JobRoot,
    ) -> Daemon {
        Daemon {
            name,
            program,
            args,
            log,
            root,
            child: None,
            started: Instant::now(),
            backoff: Duration::from_secs(5),
            retry_at: None,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::File::create(self.log).map_err(|e| format!("{}: {e}", self.log))?;
        let err = log.try_clone().map_err(|e| format!("{}: {e}", self.log))?;
        let child = self
            .root
            .command(self.program)
            .args(&self.args)
            // The agent's oom_score_adj (-1000) is inherited: no daemon is the OOM killer's
            // choice. slurmstepd sets its tasks' to 0 (they may be killed), then its own to this.
            .env("SLURMSTEPD_OOM_ADJ", "-1000")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.program))?;
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }

    /// Why it stopped, if it did.
    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok()??;
        self.child = None;
        // Its own output first (an error before it opened its log), then slurmd's log file.
        let mut last = last_line(self.log);
        if last == NO_LOG && self.name == "slurmd" {
            last = last_line(&self.root.path(SLURMD_LOG).display().to_string());
        }
        Some(format!("{} exited ({status}): {last}", self.name))
    }
}

impl Running {
    /// Keep the daemons running until the agent stops: a daemon that exits is started again
    /// after a pause that doubles (to a minute) while it keeps failing within a minute.
    /// Meanwhile slurmd's filter follows the peer list, and munge key refreshes the head asks
    /// for (through `rekey`) are done.
    pub fn supervise(
        &mut self,
        client: &Client,
        rekey: &std::sync::mpsc::Receiver<RekeyAnswer>,
        request: &JobsRequest,
    ) {
        while !STOP.load(Ordering::SeqCst) {
            for i in 0..self.daemons.len() {
                self.check(client, i);
            }
            if let Err(e) = self.filter.follow(client) {
                say(&format!("jobs: {e}"));
                super::report(client, "failed", &e);
            }
            while let Ok(answer) = rekey.try_recv() {
                let _ = answer.send(self.rekey(client, request));
            }
            if let Err(e) = super::refresh_accounts(client, request, &self.root) {
                say(&format!("jobs: cannot update the accounts: {e}"));
            }
            let slurmd = &self.daemons[1];
            if !self.ready
                && slurmd.child.is_some()
                && slurmd.started.elapsed() > Duration::from_secs(5)
            {
                self.ready = true;
                super::report(client, "ready", "");
            }
            sleep_unless_stopped(Duration::from_secs(2));
        }
    }

    /// The head's new munge key in place, and munged restarted with it (slurmd keeps running:
    /// it asks munged for each credential).
    fn rekey(&mut self, client: &Client, request: &JobsRequest) -> Result<String, String> {
        super::fetch_new_key(client, request, &self.root)?;
        let munged = &mut self.daemons[0];
        if let Some(mut child) = munged.child.take() {
            let _ = Command::new("/bin/busybox")
                .args(["kill", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.munge_socket);
        munged.spawn()?;
        wait_for(&self.munge_socket, Duration::from_secs(15))
            .map_err(|()| format!("munged did not come back: {}", last_line(munged.log)))?;
        say("jobs: munged restarted with the head's new munge key");
        Ok("munge key replaced, munged restarted".into())
    }

    fn check(&mut self, client: &Client, i: usize) {
        let d = &mut self.daemons[i];
        if let Some(why) = d.exited() {
            say(&format!("jobs: {why}"));
            super::report(client, "failed", &why);
            self.ready = false;
            if d.started.elapsed() > Duration::from_secs(60) {
                d.backoff = Duration::from_secs(5);
            }
            d.retry_at = Some(Instant::now() + d.backoff);
            d.backoff = (d.backoff * 2).min(Duration::from_secs(60));
        }
        if d.retry_at.is_some_and(|t| Instant::now() >= t) {
            d.retry_at = None;
            if let Err(e) = d.spawn() {
                say(&format!("jobs: {e}"));
                d.retry_at = Some(Instant::now() + d.backoff);
            }
        }
    }
}

/// munge's default socket path, linked to the one slurm.conf names: slurmd fetches slurm.conf
/// from slurmctld (configless) before it knows that path, authenticating through the default.
fn link_default_socket(root: &JobRoot, socket: &str) -> Result<(), String> {
    const DEFAULT: &str = "/run/munge/munge.socket.2";
    if socket == DEFAULT {
        return Ok(());
    }
    let link = root.path(DEFAULT);
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(socket, &link).map_err(|e| format!("{}: {e}", link.display()))
}

/// Stop a daemon an earlier agent started (init restarts the agent; the daemons outlive it).
fn stop_previous(name: &str, pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    else {
        return;
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if !comm.trim().starts_with(name) {
        return;
    }
    let _ = Command::new("/bin/busybox")
        .args(["kill", &pid.to_string()])
        .status();
    for _ in 0..50 {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("/bin/busybox")
        .args(["kill", "-9", &pid.to_string()])
        .status();
}

fn wait_for(path: &Path, limit: Duration) -> Result<(), ()> {
    let until = Instant::now() + limit;
    while Instant::now() < until {
        if path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(())
}

const NO_LOG: &str = "(no log)";

/// The last lines of a log that say something (errors last), for a one-line report.
fn last_line(path: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return NO_LOG.into();
    }
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    tail.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurmd_joins_as_a_dynamic_node_with_its_memory_and_features() {
        let a = slurmd_args("node-770101", "10.77.0.1:6817", 40, "enlist,i686");
        assert_eq!(
            a.join(" "),
            "-D -Z -N node-770101 --conf-server 10.77.0.1:6817 --conf RealMemory=40 Feature=enlist,i686"
        );
    }

    #[test]
    fn features_say_the_arch_sse2_and_the_ram_tier() {
        let p2 = "flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov mmx\n";
        assert_eq!(
            features("enlisted", "i686", p2, "MemTotal:   60216 kB\n"),
            "enlisted,i686,ram64m"
        );
        let x64 = "flags\t\t: fpu mmx fxsr sse sse2 ht syscall nx lm\n";
        assert_eq!(
            features("enlisted", "x86_64", x64, "MemTotal: 3987512 kB\n"),
            "enlisted,x86_64,sse2,ram4g"
        );
        assert_eq!(
            features("enlisted", "x86", "", ""),
            "enlisted,x86",
            "nothing guessed"
        );
    }

    #[test]
    fn job_memory_is_what_is_available_less_the_reserve() {
        let m = "MemTotal:  61000 kB\nMemFree: 50000 kB\nMemAvailable:   51200 kB\n";
        assert_eq!(job_memory_mb(m, 16), 34);
        assert_eq!(
            job_memory_mb(m, 100),
            1,
            "never zero: slurmd refuses RealMemory=0"
        );
        assert_eq!(job_memory_mb("", 16), 1);
    }
}
