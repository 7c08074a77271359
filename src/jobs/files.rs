//! The files the scheduler and the file server run from, written by the head: slurm.conf,
//! cgroup.conf and job_container.conf for slurmctld (served to the nodes by configless Slurm),
//! and ganesha.conf for the shared home. Pure: text from settings, tested here.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use ipnet::Ipv4Net;

/// What slurm.conf is made of.
#[derive(Debug, Clone)]
pub struct SlurmSettings<'a> {
    pub cluster: &'a str,
    /// The head's host name (slurmctld checks it is its own) and the address nodes reach.
    pub host: &'a str,
    pub addr: Ipv4Addr,
    /// slurmctld's and the nodes' slurmd's.
    pub port: u16,
    pub slurmd_port: u16,
    pub munge_socket: &'a Path,
    /// slurmctld's state, pid and log, on the head.
    pub state_dir: &'a Path,
    /// Enlisted nodes carry this feature; the default partition is every node with it.
    pub feature: &'a str,
    pub partition: &'a str,
    pub def_mem_per_cpu_mb: u64,
    /// A node silent this long is down for Slurm (its jobs are requeued).
    pub node_timeout: Duration,
    pub max_nodes: usize,
    /// A job's time limit when it gives none (None: unlimited).
    pub default_time: Option<Duration>,
    /// Slurm's power saving, for the on-demand groups' nodes (None: no group is).
    pub power: Option<PowerSaving<'a>>,
}

/// Slurm's power saving as enlist runs it: resume = Wake-on-LAN through the head, suspend =
/// release. Only the nodes of on-demand groups take part: they join with the feature
/// [`on_demand_feature`], which puts them in a hidden partition that carries the
/// SuspendTime (Slurm 22.05 has no SuspendExcStates, and reads SuspendExcParts once, before
/// any dynamic node exists; a partition's SuspendTime is applied to each node as it joins).
#[derive(Debug, Clone)]
pub struct PowerSaving<'a> {
    pub resume_program: &'a Path,
    pub suspend_program: &'a Path,
    /// SuspendTime of the on-demand nodes.
    pub idle_release: Duration,
    /// ResumeTimeout: power-on to slurmd.
    pub wake_timeout: Duration,
}

/// The Slurm feature the nodes of on-demand groups join with instead of `feature`.
pub fn on_demand_feature(feature: &str) -> String {
    format!("{feature}-ondemand")
}

/// The hidden partition that gives on-demand nodes their SuspendTime.
pub fn on_demand_partition(partition: &str) -> String {
    format!("{partition}-ondemand")
}

/// How long a released node shows `powering down` before Slurm counts it asleep (`idle~`)
/// and may wake it again: the PC's reboot to its own disk.
const SUSPEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Slurm's job credential lifetime (`AuthInfo=cred_expire`), which is also how long a requeued
/// job waits before it may start again (its old credentials must have expired). Slurm's 120 s
/// held a job bumped by a PC that did not wake, was in use, or was taken back in the morning
/// for two minutes while other nodes sat idle. On the lab's LAN a credential is used within
/// seconds of being issued, and the nodes' clocks are the head's (set at registration).
const CRED_EXPIRE: Duration = Duration::from_secs(30);

/// The ports srun listens on (on the head) for the nodes' job steps: a range the head's
/// firewall keeps for enlisted nodes (Slurm's own example range).
pub const SRUN_PORTS: (u16, u16) = (60001, 63000);

/// Where slurmd keeps its files on a node (RAM: the node OS has no disk).
pub const NODE_SPOOL: &str = "/var/spool/slurmd";
pub const NODE_LOG: &str = "/var/log/slurmd.log";

/// slurm.conf for a cluster of dynamic nodes (slurmd -Z) fetched configless.
pub fn slurm_conf(s: &SlurmSettings) -> String {
    let mut c = String::from("# Written by enlist at every start; edits are lost.\n");
    let mut line = |k: &str, v: &dyn std::fmt::Display| {
        let _ = writeln!(c, "{k}={v}");
    };
    line("ClusterName", &s.cluster);
    line("SlurmctldHost", &format!("{}({})", s.host, s.addr));
    line("SlurmctldPort", &s.port);
    line("SlurmdPort", &s.slurmd_port);
    // srun on the head listens here for the nodes (the head's firewall keeps it for them).
    line(
        "SrunPortRange",
        &format!("{}-{}", SRUN_PORTS.0, SRUN_PORTS.1),
    );
    line("AuthType", &"auth/munge");
    line(
        "AuthInfo",
        &format!(
            "socket={},cred_expire={}",
            s.munge_socket.display(),
            CRED_EXPIRE.as_secs()
        ),
    );
    line("CredType", &"cred/munge");
    line("SlurmUser", &"root");
    line("SlurmdUser", &"root");
    line("StateSaveLocation", &s.state_dir.join("state").display());
    line(
        "SlurmctldPidFile",
        &s.state_dir.join("slurmctld.pid").display(),
    );
    line(
        "SlurmctldLogFile",
        &s.state_dir.join("slurmctld.log").display(),
    );
    line("SlurmdSpoolDir", &NODE_SPOOL);
    line("SlurmdLogFile", &NODE_LOG);
    line("SlurmdPidFile", &"/run/slurmd.pid");
    // Nodes fetch this file from slurmctld; they add and remove themselves (slurmd -Z).
    line("SlurmctldParameters", &"enable_configless");
    line("MaxNodeCount", &s.max_nodes);
    // 22.05 asks for a tree width above the node count with dynamic nodes: no forwarding
    // through nodes slurmctld does not know in advance.
    line("TreeWidth", &65533);
    line("SelectType", &"select/cons_tres");
    line("SelectTypeParameters", &"CR_Core_Memory");
    // Without a default, one job takes all of a node's memory.
    line("DefMemPerCPU", &s.def_mem_per_cpu_mb);
    // A node that was down (a PC rebooted) is back in service when it registers.
    line("ReturnToService", &2);
    line("SlurmdTimeout", &s.node_timeout.as_secs().max(10));
    line("JobRequeue", &1);
    // Each job is held to the memory it asked for (--mem, else DefMemPerCPU) by its memory
    // cgroup on the node (cgroup v1, mounted by the node OS; cgroup.conf): a job over it is
    // killed by the kernel within its cgroup and ends OUT_OF_MEMORY, and the node goes on.
    // Its processes are tracked by cgroup too (proctrack/cgroup: none escapes by forking
    // twice). Outside a job's cgroup the agent, munged, slurmd and slurmstepd are never the
    // OOM killer's choice (oom_score_adj -1000; tasks get 0).
    line("ProctrackType", &"proctrack/cgroup");
    line("TaskPlugin", &"task/cgroup");
    line("JobAcctGatherType", &"jobacct_gather/linux");
    line("JobAcctGatherFrequency", &"task=2");
    // A private /tmp (and /dev/shm) for each job, in RAM, removed when the job ends: files a
    // job leaves would otherwise take a RAM-only node's memory until it reboots. Slurm makes
    // a mount namespace per job (job_container.conf); Contain makes it at allocation, for
    // every step of the job to join.
    line("JobContainerType", &"job_container/tmpfs");
    line("PrologFlags", &"Contain");
    line("MpiDefault", &"none");
    line("SwitchType", &"switch/none");
    line("SchedulerType", &"sched/backfill");
    line("MailProg", &"/bin/true");
    partitions(&mut line, s);
    c
}

/// The partition of enlisted nodes (and, with power saving, its lines and the on-demand
/// nodes' hidden partition that carries their SuspendTime).
fn partitions(line: &mut dyn FnMut(&str, &dyn std::fmt::Display), s: &SlurmSettings) {
    line("Nodeset", &format!("enlisted Feature={}", s.feature));
    let default_time = s
        .default_time
        .map(|t| format!(" DefaultTime={}", t.as_secs().div_ceil(60)))
        .unwrap_or_default();
    let Some(p) = &s.power else {
        line(
            "PartitionName",
            &format!(
                "{} Nodes=enlisted Default=YES MaxTime=INFINITE{default_time} State=UP",
                s.partition
            ),
        );
        return;
    };
    power_saving(line, p);
    line(
        "Nodeset",
        &format!("ondemand Feature={}", on_demand_feature(s.feature)),
    );
    line(
        "PartitionName",
        &format!(
            "{} Nodes=enlisted,ondemand Default=YES MaxTime=INFINITE{default_time} State=UP",
            s.partition
        ),
    );
    line(
        "PartitionName",
        &format!(
            "{} Nodes=ondemand Hidden=YES MaxTime=INFINITE{default_time} SuspendTime={} State=UP",
            on_demand_partition(s.partition),
            p.idle_release.as_secs().max(1)
        ),
    );
}

/// slurm.conf's power-saving lines (the SuspendTime is the on-demand partition's).
fn power_saving(line: &mut dyn FnMut(&str, &dyn std::fmt::Display), p: &PowerSaving) {
    line("ResumeProgram", &p.resume_program.display());
    line("SuspendProgram", &p.suspend_program.display());
    line("ResumeTimeout", &p.wake_timeout.as_secs());
    line("SuspendTimeout", &SUSPEND_TIMEOUT.as_secs());
    // Powered-down nodes are shown to everyone in sinfo.
    line("PrivateData", &"cloud");
}

/// The values of `key` in a slurm.conf's `Key=Value` lines (comments left out, keys in any
/// case), in file order: Slurm takes the last.
fn values<'a>(slurm_conf: &'a str, key: &'a str) -> impl DoubleEndedIterator<Item = &'a str> + 'a {
    slurm_conf
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter_map(|l| l.split_once('='))
        .filter(move |(k, _)| k.trim().eq_ignore_ascii_case(key))
        .map(|(_, v)| v.trim())
}

/// Where munged listens, per a slurm.conf (`AuthInfo=...socket=<path>...`); munge's own
/// default when it does not say.
pub fn munge_socket_in(slurm_conf: &str) -> String {
    values(slurm_conf, "AuthInfo")
        .flat_map(|v| v.split(','))
        .filter_map(|opt| opt.trim().strip_prefix("socket="))
        .next_back()
        .unwrap_or("/run/munge/munge.socket.2")
        .to_string()
}

/// slurmd's port per a slurm.conf (`SlurmdPort=`), Slurm's default 6818 when it does not say.
pub fn slurmd_port_in(slurm_conf: &str) -> u16 {
    values(slurm_conf, "SlurmdPort")
        .filter_map(|v| v.parse().ok())
        .next_back()
        .unwrap_or(6818)
}

/// cgroup.conf: cgroup v1, whose memory, freezer and cpuset hierarchies the node OS mounts
/// at boot (no systemd to ask, which Slurm 22.05's cgroup/v2 wants); each job's RAM limited to
/// what it asked for, no swap (the nodes have none), cores and devices left alone.
pub fn cgroup_conf() -> String {
    "# Written by enlist\nCgroupPlugin=cgroup/v1\nCgroupMountpoint=/sys/fs/cgroup\nCgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=yes\nConstrainSwapSpace=no\nConstrainDevices=no\n".into()
}

/// Where each node keeps its jobs' private /tmp (in its RAM, under slurmd's spool).
pub const JOB_TMP_BASE: &str = "/var/spool/slurmd/job-tmp";

/// job_container.conf (served to the nodes by configless Slurm): each job's /tmp is a folder
/// of [`JOB_TMP_BASE`], made at the job's start and removed at its end.
pub fn job_container_conf() -> String {
    format!("# Written by enlist\nAutoBasePath=true\nBasePath={JOB_TMP_BASE}\n")
}

/// What ganesha.conf is made of.
#[derive(Debug, Clone)]
pub struct HomeExport<'a> {
    pub path: &'a Path,
    /// The job environments, exported read-only.
    pub envs: &'a Path,
    /// The address Ganesha listens on (the head's on the lab network).
    pub bind: Ipv4Addr,
    pub clients: &'a [Ipv4Net],
    /// Ganesha's NFSv4 client state (recovery) folder.
    pub recovery: &'a Path,
}

/// ganesha.conf: NFSv4 over TCP only (no portmapper, no lock manager), the home folder at
/// its own path in the pseudo file system, and the job environments read-only at theirs, for
/// the lab subnets.
pub fn ganesha_conf(h: &HomeExport) -> String {
    let clients: Vec<String> = h.clients.iter().map(|n| n.to_string()).collect();
    let clients = clients.join(", ");
    format!(
        r#"# Written by enlist at every start; edits are lost.
NFS_CORE_PARAM {{
    Protocols = 4;
    NFS_Port = 2049;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Bind_addr = {bind};
}}
NFSV4 {{
    # No grace period: the only clients are nodes, which mount again when they boot.
    Graceless = true;
    Lease_Lifetime = 20;
    RecoveryBackend = fs;
    RecoveryRoot = {recovery};
    Only_Numeric_Owners = true;
}}
EXPORT_DEFAULTS {{ Access_Type = NONE; }}
{home}{envs}LOG {{ Default_Log_Level = WARN; }}
"#,
        bind = h.bind,
        recovery = h.recovery.display(),
        home = export(1, h.path, &clients, "RW"),
        envs = export(2, h.envs, &clients, "RO"),
    )
}

/// One EXPORT block: `path` at its own path in the pseudo file system, for `clients`. uid 0
/// from a node is nobody here: root on a PC is no root of the home, nor of an environment.
fn export(id: u16, path: &Path, clients: &str, access: &str) -> String {
    format!(
        r#"EXPORT {{
    Export_Id = {id};
    Path = {path};
    Pseudo = {path};
    Protocols = 4;
    Transports = TCP;
    SecType = sys;
    Squash = Root_Squash;
    CLIENT {{ Clients = {clients}; Access_Type = {access}; }}
    FSAL {{ Name = VFS; }}
}}
"#,
        path = path.display(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    /// slurm.conf from [`settings`] with the state folder `/s`.
    fn test_slurm_conf() -> String {
        let (state, munge) = (
            PathBuf::from("/s"),
            PathBuf::from("/s/munge/munge.socket.2"),
        );
        slurm_conf(&settings(&state, &munge))
    }

    fn settings<'a>(state: &'a Path, munge: &'a Path) -> SlurmSettings<'a> {
        SlurmSettings {
            cluster: "enlist",
            host: "vm",
            addr: Ipv4Addr::new(10, 77, 0, 1),
            port: 6817,
            slurmd_port: 6818,
            munge_socket: munge,
            state_dir: state,
            feature: "enlist",
            partition: "enlist",
            def_mem_per_cpu_mb: 128,
            node_timeout: Duration::from_secs(30),
            max_nodes: 1024,
            default_time: None,
            power: None,
        }
    }

    /// `Key=Value` lines of a generated file.
    fn value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
    }

    #[test]
    fn on_demand_nodes_alone_sleep_when_idle_and_wake_through_the_head() {
        let (state, munge) = (PathBuf::from("/s"), PathBuf::from("/s/munge.socket.2"));
        let (resume, suspend) = (
            PathBuf::from("/s/slurm/resume"),
            PathBuf::from("/s/slurm/suspend"),
        );
        let mut s = settings(&state, &munge);
        s.default_time = Some(Duration::from_secs(3600));
        s.power = Some(PowerSaving {
            resume_program: &resume,
            suspend_program: &suspend,
            idle_release: Duration::from_secs(600),
            wake_timeout: Duration::from_secs(300),
        });
        let c = slurm_conf(&s);
        assert_eq!(value(&c, "ResumeProgram"), Some("/s/slurm/resume"));
        assert_eq!(value(&c, "SuspendProgram"), Some("/s/slurm/suspend"));
        assert_eq!(value(&c, "ResumeTimeout"), Some("300"));
        assert_eq!(value(&c, "SuspendTime"), None, "not for every node");
        let lines = |key: &str| -> Vec<&str> {
            c.lines()
                .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
                .collect()
        };
        assert_eq!(
            lines("Nodeset"),
            [
                "enlisted Feature=enlist",
                "ondemand Feature=enlist-ondemand"
            ]
        );
        assert_eq!(
            lines("PartitionName"),
            [
                "enlist Nodes=enlisted,ondemand Default=YES MaxTime=INFINITE DefaultTime=60 State=UP",
                "enlist-ondemand Nodes=ondemand Hidden=YES MaxTime=INFINITE DefaultTime=60 SuspendTime=600 State=UP",
            ]
        );
    }

    #[test]
    fn jobs_are_held_to_their_memory_by_cgroup() {
        let c = test_slurm_conf();
        assert_eq!(value(&c, "TaskPlugin"), Some("task/cgroup"));
        assert_eq!(value(&c, "ProctrackType"), Some("proctrack/cgroup"));
        let g = cgroup_conf();
        assert_eq!(value(&g, "CgroupPlugin"), Some("cgroup/v1"));
        assert_eq!(value(&g, "ConstrainRAMSpace"), Some("yes"));
        assert_eq!(
            value(&g, "CgroupAutomount"),
            Some("no"),
            "the node OS mounts them"
        );
    }

    #[test]
    fn every_job_has_a_private_tmp_made_at_allocation() {
        let c = test_slurm_conf();
        assert_eq!(value(&c, "JobContainerType"), Some("job_container/tmpfs"));
        assert_eq!(value(&c, "PrologFlags"), Some("Contain"));
        let j = job_container_conf();
        assert_eq!(value(&j, "BasePath"), Some(JOB_TMP_BASE));
        assert_eq!(value(&j, "AutoBasePath"), Some("true"));
        assert!(
            JOB_TMP_BASE.starts_with(NODE_SPOOL),
            "in the node's RAM, not its /tmp"
        );
    }

    #[test]
    fn slurm_conf_is_configless_dynamic_and_accounts_memory() {
        let c = test_slurm_conf();
        assert_eq!(value(&c, "SlurmctldHost"), Some("vm(10.77.0.1)"));
        assert_eq!(value(&c, "SlurmctldParameters"), Some("enable_configless"));
        assert_eq!(value(&c, "SelectTypeParameters"), Some("CR_Core_Memory"));
        assert_eq!(value(&c, "DefMemPerCPU"), Some("128"));
        assert_eq!(value(&c, "ReturnToService"), Some("2"));
        assert_eq!(value(&c, "TreeWidth"), Some("65533"));
        assert_eq!(value(&c, "Nodeset"), Some("enlisted Feature=enlist"));
        assert!(
            value(&c, "PartitionName").is_some_and(|p| p.contains("Nodes=enlisted Default=YES"))
        );
        assert_eq!(
            value(&c, "AuthInfo"),
            Some("socket=/s/munge/munge.socket.2,cred_expire=30")
        );
        assert_eq!(munge_socket_in(&c), "/s/munge/munge.socket.2");
        assert_eq!(value(&c, "StateSaveLocation"), Some("/s/state"));
        // No key twice (Slurm would take the last, silently).
        let mut keys: Vec<&str> = c
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split('=').next())
            .collect();
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n);
    }

    #[test]
    fn the_munge_socket_is_read_from_a_sites_slurm_conf() {
        let conf = "ClusterName=x\n# AuthInfo=socket=/commented\nAuthInfo=cred_expire=30,socket=/var/run/m/s.2\n";
        assert_eq!(munge_socket_in(conf), "/var/run/m/s.2");
        assert_eq!(
            munge_socket_in("ClusterName=x\n"),
            "/run/munge/munge.socket.2"
        );
    }

    #[test]
    fn ganesha_exports_the_home_to_the_lab_subnets_only() {
        let nets: Vec<Ipv4Net> = vec!["10.77.0.0/24".parse().unwrap()];
        let c = ganesha_conf(&HomeExport {
            path: Path::new("/var/lib/enlist/home"),
            envs: Path::new("/var/lib/enlist/envs"),
            bind: Ipv4Addr::new(10, 77, 0, 1),
            clients: &nets,
            recovery: Path::new("/var/lib/enlist/ganesha"),
        });
        assert!(c.contains("Clients = 10.77.0.0/24;"), "{c}");
        assert!(c.contains("Path = /var/lib/enlist/home;"));
        assert!(c.contains("Access_Type = NONE"), "nobody else");
        assert!(c.contains("Protocols = 4;"));
        assert!(c.contains("Squash = Root_Squash;"), "no root from a node");
        assert!(!c.contains("No_Root_Squash"));
        let envs = c.split("Export_Id = 2;").nth(1).unwrap_or_default();
        assert!(envs.contains("Path = /var/lib/enlist/envs;"), "{c}");
        assert!(
            envs.contains("Access_Type = RO;"),
            "the environments are read-only"
        );
        assert!(envs.contains("Squash = Root_Squash;"));
    }

    #[test]
    fn slurmds_port_is_read_from_a_sites_slurm_conf() {
        assert_eq!(slurmd_port_in("SlurmdPort=7000 # ours\n"), 7000);
        assert_eq!(slurmd_port_in("# SlurmdPort=1\nClusterName=x\n"), 6818);
    }
}
