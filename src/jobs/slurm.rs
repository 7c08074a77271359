//! Talking to slurmctld with Slurm's own tools (scontrol, squeue), as an admin would: read the
//! nodes' scheduler state, drain, requeue, delete. Parsing is pure and tested; each command has
//! a timeout, and a failure says which command and what Slurm answered.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

pub use crate::registry::SchedInfo as SchedNode;
use crate::workload::{Workload, WorkloadError};
use futures_util::future::BoxFuture;

/// How long one Slurm command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error("{command}: {message}")]
    Failed { command: String, message: String },
    #[error("{command}: no answer within {}s", COMMAND_TIMEOUT.as_secs())]
    Timeout { command: String },
}

/// Slurm's state word (`IDLE+DRAIN`, `ALLOCATED+DYNAMIC_NORM`, `DOWN*`) as one plain word.
pub fn plain_state(s: &str) -> String {
    let mut parts = s.split('+');
    let base = parts
        .next()
        .unwrap_or("")
        .trim_end_matches(['*', '~', '#', '!', '%', '$', '@', '^', '-'])
        .to_lowercase();
    let flags: Vec<&str> = parts.collect();
    if flags.contains(&"DRAIN") {
        return if base == "idle" || base == "down" {
            "drained".into()
        } else {
            "draining".into()
        };
    }
    if s.contains('*') || flags.contains(&"NOT_RESPONDING") {
        return "down".into();
    }
    base
}

/// `Key=value` of one `scontrol show node -o` line (values with spaces, like OS=, are cut at the
/// first space; none of the keys read here has one).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `Reason=` of a `scontrol show node -o` line (it has spaces: it runs to the ` [who@when]`
/// Slurm appends, or to the end).
fn reason(line: &str) -> Option<String> {
    let (_, r) = line.split_once(" Reason=")?;
    let r = r.split(" [").next().unwrap_or(r).trim();
    (!r.is_empty() && r != "(null)").then(|| r.to_string())
}

/// Nodes from `scontrol show node -o` (one line each).
pub fn parse_nodes(text: &str) -> HashMap<String, SchedNode> {
    text.lines()
        .filter_map(|l| {
            let name = field(l, "NodeName")?.to_string();
            let num = |k: &str| field(l, k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            Some((
                name,
                SchedNode {
                    state: plain_state(field(l, "State").unwrap_or("")),
                    cpus: num("CPUTot") as u32,
                    cpus_alloc: num("CPUAlloc") as u32,
                    mem_mb: num("RealMemory"),
                    mem_alloc_mb: num("AllocMem"),
                    jobs: 0,
                    asleep: field(l, "State").is_some_and(|s| s.contains("POWERED_DOWN")),
                    reason: reason(l),
                },
            ))
        })
        .collect()
}

/// A default memory per CPU every node up can give: the smallest of their memory per CPU
/// (MB; `None` while no node is up).
pub fn smallest_mem_per_cpu(nodes: &HashMap<String, SchedNode>) -> Option<u64> {
    nodes
        .values()
        .filter(|n| n.cpus > 0 && n.mem_mb > 0)
        .filter(|n| !matches!(n.state.as_str(), "down" | "drained" | "unknown" | "future"))
        .map(|n| (n.mem_mb / u64::from(n.cpus)).max(1))
        .min()
}

/// A default memory per CPU every node can give, counting the nodes joining (asked to join,
/// not yet in the scheduler's list: `joining`, name to an estimate from [`joining_estimate`])
/// as well as those up, so a job submitted the moment a small node appears is not given
/// more than it has (Slurm refuses such a job outright). A joining node's estimate counts
/// until the scheduler lists it; then its own figure does.
pub fn default_mem_per_cpu(
    nodes: &HashMap<String, SchedNode>,
    joining: &HashMap<String, u64>,
) -> Option<u64> {
    let waiting = joining
        .iter()
        .filter(|(name, _)| !nodes.contains_key(*name))
        .map(|(_, mb)| *mb);
    smallest_mem_per_cpu(nodes).into_iter().chain(waiting).min()
}

/// Memory per CPU a node that asks to join will surely have for jobs: a third of its memory,
/// less `jobs.mem_reserve`. Its agent gives slurmd what is available when it starts, less
/// the reserve, and a node OS with its daemons takes well under two thirds (a 64 MB Pentium
/// II, 54 MiB for Linux: 18 here, 35 given).
pub fn joining_estimate(mem_total_kb: u64, cores: u32, reserve_mb: u64) -> u64 {
    ((mem_total_kb / 1024 / 3).saturating_sub(reserve_mb) / u64::from(cores.max(1))).max(1)
}

/// scontrol's answer for a node it has no record of (22.05: "Invalid node name specified").
fn unknown_node(message: &str) -> bool {
    message.contains("Invalid node name")
}

/// Running jobs per node, from `squeue -h -t R -o %N` (one host list per job).
pub fn jobs_per_node(text: &str) -> HashMap<String, u32> {
    let mut out = HashMap::new();
    for line in text.lines() {
        for n in crate::hostlist::expand(line.trim()).unwrap_or_default() {
            *out.entry(n).or_default() += 1;
        }
    }
    out
}

/// The Slurm tools of one cluster (the one `slurm_conf` describes).
#[derive(Debug, Clone)]
pub struct Slurm {
    pub slurm_conf: PathBuf,
}

impl Slurm {
    async fn run(&self, program: &str, args: &[&str]) -> Result<String, SlurmError> {
        let command = format!("{program} {}", args.join(" "));
        let out = tokio::process::Command::new(program)
            .args(args)
            .env("SLURM_CONF", &self.slurm_conf)
            .kill_on_drop(true)
            .output();
        let out = match tokio::time::timeout(COMMAND_TIMEOUT, out).await {
            Err(_) => return Err(SlurmError::Timeout { command }),
            Ok(Err(e)) => {
                return Err(SlurmError::Failed {
                    command,
                    message: e.to_string(),
                })
            }
            Ok(Ok(o)) => o,
        };
        if !out.status.success() {
            let message = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(SlurmError::Failed { command, message });
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Every node slurmctld knows, with its running jobs counted.
    pub async fn nodes(&self) -> Result<HashMap<String, SchedNode>, SlurmError> {
        let mut nodes = parse_nodes(&self.run("scontrol", &["show", "node", "-o"]).await?);
        let jobs = jobs_per_node(&self.run("squeue", &["-h", "-t", "R", "-o", "%N"]).await?);
        for (name, n) in &mut nodes {
            n.jobs = jobs.get(name).copied().unwrap_or(0);
        }
        Ok(nodes)
    }

    /// A partition's default memory per CPU, MB (for jobs submitted from now on).
    pub async fn set_def_mem_per_cpu(&self, partition: &str, mb: u64) -> Result<(), SlurmError> {
        let (p, m) = (
            format!("PartitionName={partition}"),
            format!("DefMemPerCPU={mb}"),
        );
        self.run("scontrol", &["update", &p, &m]).await.map(|_| ())
    }

    pub async fn drain(&self, node: &str, reason: &str) -> Result<(), SlurmError> {
        let (n, r) = (format!("nodename={node}"), format!("reason={reason}"));
        self.run("scontrol", &["update", &n, "state=drain", &r])
            .await
            .map(|_| ())
    }

    /// Ids of the jobs running on `node`.
    pub async fn jobs_on(&self, node: &str) -> Result<Vec<String>, SlurmError> {
        let out = self.run("squeue", &["-h", "-w", node, "-o", "%i"]).await?;
        Ok(out.split_whitespace().map(str::to_string).collect())
    }

    /// The users whose jobs are in the queue (pending or running), by name.
    pub async fn queued_users(&self) -> Result<Vec<String>, SlurmError> {
        let out = self.run("squeue", &["-h", "-o", "%u"]).await?;
        let mut users: Vec<String> = out.split_whitespace().map(str::to_string).collect();
        users.sort();
        users.dedup();
        Ok(users)
    }

    pub async fn requeue(&self, jobs: &[String]) -> Result<(), SlurmError> {
        if jobs.is_empty() {
            return Ok(());
        }
        self.run("scontrol", &["requeue", &jobs.join(",")])
            .await
            .map(|_| ())
    }

    /// Whether slurmctld has `node` now (the polled view may be a few seconds old).
    pub async fn knows(&self, node: &str) -> Result<bool, SlurmError> {
        match self.run("scontrol", &["show", "node", node, "-o"]).await {
            Ok(text) => Ok(parse_nodes(&text).contains_key(node)),
            // 22.05: "Node X not found"; older: "Invalid node name specified".
            Err(SlurmError::Failed { message, .. })
                if unknown_node(&message) || message.contains("not found") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Delete a node; one the scheduler does not know (deleted already) is done.
    pub async fn delete(&self, node: &str) -> Result<(), SlurmError> {
        let n = format!("nodename={node}");
        match self.run("scontrol", &["delete", &n]).await {
            Err(SlurmError::Failed { message, .. }) if unknown_node(&message) => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// A unix time as slurmctld reads it: local time, to the second (it runs on this host, in
/// its time zone).
fn slurm_time(unix: i64) -> String {
    jiff::Timestamp::from_second(unix)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned_datetime(jiff::tz::TimeZone::system())
        .strftime("%Y-%m-%dT%H:%M:%S")
        .to_string()
}

impl Slurm {
    /// Set a node's state (`power_down_force`, `down`, `resume`), with a reason if given.
    async fn set_state(
        &self,
        node: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), SlurmError> {
        let n = format!("nodename={node}");
        let st = format!("state={state}");
        let mut args = vec!["update", n.as_str(), st.as_str()];
        let r = reason.map(|r| format!("reason={r}"));
        if let Some(r) = &r {
            args.push(r);
        }
        self.run("scontrol", &args).await.map(|_| ())
    }

    /// A maintenance reservation of `nodes` over `[from, until)`: Slurm starts no job on them
    /// that would still run at `from` ("ReqNodeNotAvail, Reserved for maintenance"). Made
    /// anew each time (an active reservation's start cannot move).
    async fn reserve(
        &self,
        name: &str,
        nodes: &[String],
        from: i64,
        until: i64,
    ) -> Result<(), SlurmError> {
        let n = format!("reservationname={name}");
        // Not there yet is fine.
        let _ = self.run("scontrol", &["delete", &n]).await;
        if nodes.is_empty() {
            return Ok(());
        }
        let start = if from <= crate::store::now() {
            "now".to_string()
        } else {
            slurm_time(from)
        };
        let (s, e) = (
            format!("starttime={start}"),
            format!("endtime={}", slurm_time(until)),
        );
        let list = format!("nodes={}", nodes.join(","));
        self.run(
            "scontrol",
            &[
                "create",
                "reservation",
                &n,
                &s,
                &e,
                &list,
                "users=root",
                "flags=MAINT,IGNORE_JOBS",
            ],
        )
        .await
        .map(|_| ())
    }
}

impl From<SlurmError> for WorkloadError {
    fn from(e: SlurmError) -> WorkloadError {
        WorkloadError {
            manager: "slurm",
            message: e.to_string(),
        }
    }
}

/// Slurm as the node lifecycle sees it: dynamic nodes drained, their jobs requeued, deleted.
impl Workload for Slurm {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn holds_jobs(&self) -> bool {
        true
    }

    fn nodes(&self) -> BoxFuture<'_, Result<HashMap<String, SchedNode>, WorkloadError>> {
        Box::pin(async { Ok(Slurm::nodes(self).await?) })
    }

    fn knows<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<bool, WorkloadError>> {
        Box::pin(async move { Ok(Slurm::knows(self, node).await?) })
    }

    fn drain<'a>(
        &'a self,
        node: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move { Ok(Slurm::drain(self, node, reason).await?) })
    }

    fn jobs_on<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<Vec<String>, WorkloadError>> {
        Box::pin(async move { Ok(Slurm::jobs_on(self, node).await?) })
    }

    fn requeue<'a>(&'a self, jobs: &'a [String]) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move { Ok(Slurm::requeue(self, jobs).await?) })
    }

    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move { Ok(Slurm::delete(self, node).await?) })
    }

    /// `power_down_force`: slurmctld runs the SuspendProgram (the head: released already)
    /// and shows the node `idle~` after SuspendTimeout.
    fn put_to_sleep<'a>(
        &'a self,
        node: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move {
            Ok(self
                .set_state(node, "power_down_force", Some(reason))
                .await?)
        })
    }

    /// `down` with the reason `sinfo -R` shows (jobs waiting for the node are requeued), then
    /// `power_down_force`: a DOWN node's power-up is aborted, so its ResumeTimeout does not
    /// come to overwrite the reason, and it ends asleep and down (`down~`).
    fn hold_out<'a>(
        &'a self,
        node: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move {
            self.set_state(node, "down", Some(reason)).await?;
            Ok(self
                .set_state(node, "power_down_force", Some(reason))
                .await?)
        })
    }

    fn restore<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move { Ok(self.set_state(node, "resume", None).await?) })
    }

    fn hold_window<'a>(
        &'a self,
        name: &'a str,
        nodes: &'a [String],
        from: i64,
        until: i64,
    ) -> BoxFuture<'a, Result<(), WorkloadError>> {
        Box::pin(async move { Ok(self.reserve(name, nodes, from, until).await?) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_memory_per_cpu_fits_the_smallest_node_up() {
        let node = |state: &str, cpus, mem_mb| SchedNode {
            state: state.into(),
            cpus,
            cpus_alloc: 0,
            mem_mb,
            mem_alloc_mb: 0,
            jobs: 0,
            asleep: false,
            reason: None,
        };
        let mut nodes = HashMap::new();
        assert_eq!(smallest_mem_per_cpu(&nodes), None, "no node yet");
        nodes.insert("p2".to_string(), node("idle", 1, 35));
        nodes.insert("x64".to_string(), node("allocated", 4, 3800));
        nodes.insert("gone".to_string(), node("down", 1, 10));
        assert_eq!(
            smallest_mem_per_cpu(&nodes),
            Some(35),
            "the down one does not count"
        );
        nodes.remove("p2");
        assert_eq!(smallest_mem_per_cpu(&nodes), Some(950));

        // A Pentium II asking to join (the lab's: 54 MiB for Linux, 8 MB reserve, 35 MB
        // given to slurmd) lowers the default before its slurmd is listed; then its own
        // figure counts.
        let estimate = joining_estimate(55_900, 1, 8);
        assert!((1..=35).contains(&estimate), "{estimate}");
        let joining = HashMap::from([("p2".to_string(), estimate)]);
        assert_eq!(default_mem_per_cpu(&nodes, &joining), Some(estimate));
        nodes.insert("p2".to_string(), node("idle", 1, 35));
        assert_eq!(default_mem_per_cpu(&nodes, &joining), Some(35));
        assert_eq!(default_mem_per_cpu(&HashMap::new(), &HashMap::new()), None);
        assert_eq!(joining_estimate(0, 0, 8), 1, "never zero");
    }

    #[test]
    fn deleting_a_node_slurm_no_longer_knows_is_done_but_a_busy_one_is_not() {
        // scontrol 22.05's stderr, captured in the lab.
        let gone = "scontrol: error: failed to delete nodes node-770199\ndelete_node nodename=node-770199: Invalid node name specified";
        assert!(unknown_node(gone));
        let busy = "scontrol: error: failed to delete nodes node-770101\ndelete_node nodename=node-770101: Requested nodes are busy";
        assert!(!unknown_node(busy));
    }

    const SHOW: &str = "NodeName=node-770101 Arch=i686 CoresPerSocket=1 CPUAlloc=1 CPUEfctv=1 CPUTot=1 CPULoad=0.00 AvailableFeatures=enlist,i686 ActiveFeatures=enlist,i686 Gres=(null) NodeAddr=10.77.0.100 NodeHostName=node-770101 Version=22.05.8 OS=Linux 6.1.0 #1 SMP RealMemory=36 AllocMem=32 FreeMem=30 Sockets=1 Boards=1 State=ALLOCATED+DYNAMIC_NORM ThreadsPerCore=1
NodeName=node-770102 Arch=x86_64 CoresPerSocket=2 CPUAlloc=0 CPUTot=2 RealMemory=480 AllocMem=0 State=IDLE+DRAIN+DYNAMIC_NORM ThreadsPerCore=1
";

    #[test]
    fn reads_nodes_and_their_jobs() {
        let mut n = parse_nodes(SHOW);
        let jobs = jobs_per_node("node-770101\nnode-[770101-770102]\n");
        for (name, node) in &mut n {
            node.jobs = jobs.get(name).copied().unwrap_or(0);
        }
        let a = &n["node-770101"];
        assert_eq!(
            (
                a.state.as_str(),
                a.cpus,
                a.cpus_alloc,
                a.mem_mb,
                a.mem_alloc_mb,
                a.jobs
            ),
            ("allocated", 1, 1, 36, 32, 2)
        );
        assert_eq!(n["node-770102"].state, "drained");
    }

    #[test]
    fn an_asleep_node_and_why_it_is_held_out() {
        let line = "NodeName=node-770102 Arch=i686 CPUTot=1 RealMemory=95 State=DOWN+DYNAMIC_NORM+POWERED_DOWN ThreadsPerCore=1 Reason=did not wake (Wake-on-LAN): woke 1 of 2 tries [root@2026-12-04T03:40:01]";
        let n = &parse_nodes(line)["node-770102"];
        assert!(n.asleep);
        assert_eq!(n.state, "down");
        assert_eq!(
            n.reason.as_deref(),
            Some("did not wake (Wake-on-LAN): woke 1 of 2 tries")
        );
        let awake = &parse_nodes(SHOW)["node-770101"];
        assert!(!awake.asleep);
        assert_eq!(awake.reason, None);
    }

    #[test]
    fn state_words() {
        assert_eq!(plain_state("IDLE+DYNAMIC_NORM"), "idle");
        assert_eq!(plain_state("MIXED"), "mixed");
        assert_eq!(plain_state("ALLOCATED+DRAIN"), "draining");
        assert_eq!(plain_state("IDLE+DRAIN"), "drained");
        assert_eq!(plain_state("DOWN*+DYNAMIC_NORM"), "down");
        assert_eq!(plain_state("IDLE*"), "down");
    }
}
