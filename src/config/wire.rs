//! The config file as written: serde structs that deny unknown keys (a typo is an error that
//! names its line, not a setting silently ignored). Plain values only; [`super::Config`] is
//! built from this by `TryFrom`, which checks what the values mean.
//!
//! Each field's comment is what `config.example.yaml` says of it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Database (leases, nodes, events), the head's secret and its generated files.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub http: Http,
    #[serde(default)]
    pub tftp: Tftp,
    pub dhcp: Dhcp,
    pub images: Images,
    #[serde(default)]
    pub nodes: Nodes,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub jobs: Jobs,
    /// When each group (room) is enlisted and released, in the head's local time.
    #[serde(default)]
    pub schedules: Vec<Schedule>,
}

/// One group's nights: woken and enlisted at `enlist`, drained and handed back at `release`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// The group (see nodes.group, subnets[].group, reservations[].group).
    pub group: String,
    /// Cron expression (minute hour day-of-month month day-of-week), e.g. "0 20 * * mon-fri".
    pub enlist: String,
    /// Cron expression, e.g. "0 7 * * mon-fri" (no release on weekends: enlisted all weekend).
    pub release: String,
    /// `on-demand`: between `enlist` and `release` the group's PCs may be enlisted, and
    /// Slurm wakes as many as waiting jobs need (idle ones are released after
    /// `jobs.idle_release`); `all`: every PC of the group is woken at `enlist`. Default:
    /// `on-demand` when jobs run on enlist's own slurmctld, else `all`.
    #[serde(default)]
    pub wake: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Boot scripts, kernel and initrd, the agent API (and the dashboard, unless admin.listen).
    pub listen: SocketAddr,
    /// How nodes reach this head: `http://<IP>[:port]`.
    pub public_url: String,
    /// Open connections at most (boot downloads, agents, dashboards).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections at most from one address.
    #[serde(default = "default_max_connections_per_client")]
    pub max_connections_per_client: usize,
    /// A client must send its request headers within this time.
    #[serde(with = "humantime_serde", default = "default_header_timeout")]
    pub header_timeout: Duration,
    /// Live dashboard streams at most.
    #[serde(default = "default_max_streams")]
    pub max_streams: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tftp {
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_tftp_listen")]
    pub listen: SocketAddr,
    /// The iPXE binaries (Debian package `ipxe`).
    #[serde(default = "default_ipxe_dir")]
    pub ipxe_dir: PathBuf,
    #[serde(default = "default_max_blksize")]
    pub max_blksize: u16,
    #[serde(default = "default_max_windowsize")]
    pub max_windowsize: u16,
    /// Transfers at once at most, and from one address.
    #[serde(default = "default_max_transfers")]
    pub max_transfers: usize,
    #[serde(default = "default_max_transfers_per_client")]
    pub max_transfers_per_client: usize,
    /// Largest retransmission timeout a client may ask for (RFC 2349 allows 255 s).
    #[serde(with = "humantime_serde", default = "default_max_timeout")]
    pub max_timeout: Duration,
}

impl Default for Tftp {
    fn default() -> Self {
        Tftp {
            enabled: true,
            listen: default_tftp_listen(),
            ipxe_dir: default_ipxe_dir(),
            max_blksize: default_max_blksize(),
            max_windowsize: default_max_windowsize(),
            max_transfers: default_max_transfers(),
            max_transfers_per_client: default_max_transfers_per_client(),
            max_timeout: default_max_timeout(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dhcp {
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub subnets: Vec<Subnet>,
    #[serde(default)]
    pub boot_files: BootFiles,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpMode {
    /// Full DHCP server for an isolated cluster network.
    Dhcp,
    /// proxyDHCP beside an existing DHCP server: boot information for PXE clients only.
    Proxy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub mode: DhcpMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subnet {
    pub subnet: Ipv4Net,
    /// Addresses handed out (mode dhcp). Without one only reservations get an address; a
    /// subnet of proxy-mode rooms (a group, relays) needs none.
    #[serde(default)]
    pub pool: Option<[Ipv4Addr; 2]>,
    /// Option 3, a list as Kea's `routers` (and `dns`).
    #[serde(default)]
    pub routers: Vec<Ipv4Addr>,
    /// The old name of `routers` (one address): still read, with a warning.
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(with = "humantime_serde", default = "default_lease_time")]
    pub lease_time: Duration,
    /// DHCP relays (their giaddr) allowed to forward requests for this subnet.
    #[serde(default)]
    pub relays: Vec<Ipv4Addr>,
    #[serde(default)]
    pub reservations: Vec<Reservation>,
    /// The group new nodes of this subnet (a room) join, instead of `nodes.group`.
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub mac: String,
    /// Its address (mode dhcp); none: a pool address, or the campus server's (proxy mode).
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    /// The group this PC joins.
    #[serde(default)]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootFiles {
    #[serde(default = "default_bios_file")]
    pub bios: String,
    #[serde(default = "default_efi_file")]
    pub efi_x64: String,
}

impl Default for BootFiles {
    fn default() -> Self {
        BootFiles {
            bios: default_bios_file(),
            efi_x64: default_efi_file(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Images {
    pub dir: PathBuf,
    /// The image of BIOS PCs (of those with a 64-bit CPU too, unless `bios_x64`).
    #[serde(default)]
    pub bios: Option<String>,
    /// `bios`'s old name (it never applied to UEFI PCs): read, with a warning.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub efi_x64: Option<String>,
    #[serde(default)]
    pub bios_x64: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_tftp_nics")]
    pub tftp_nics: Vec<String>,
    /// HTTP caches near a room: its PCs fetch the image files (versioned, never changed)
    /// through them, and only their own initrd part from the head.
    #[serde(default)]
    pub mirrors: Vec<Mirror>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mirror {
    /// The group whose PCs use it (a room: `subnets[].group`).
    pub group: String,
    /// `http://cache.room101:8081`: serves the head's `/images/...` under the same paths.
    pub url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Enrollment {
    /// Any PC that boots is enlisted.
    Open,
    /// Only MACs with a reservation are enlisted.
    KnownMacs,
    /// New PCs wait as `pending` until an admin approves them.
    Approve,
}

impl Enrollment {
    pub fn as_str(self) -> &'static str {
        match self {
            Enrollment::Open => "open",
            Enrollment::KnownMacs => "known-macs",
            Enrollment::Approve => "approve",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nodes {
    /// Unset: `approve` with jobs on (the munge key only to PCs an admin let in), else `open`.
    #[serde(default)]
    pub enrollment: Option<Enrollment>,
    /// A root shell on the node's console (tty1) instead of its status screen: for a lab's
    /// own bench, never for PCs others sit at (whoever has it reads the node's keys).
    #[serde(default)]
    pub console_shell: bool,
    #[serde(default = "default_name_prefix")]
    pub name_prefix: String,
    /// New nodes numbered in join order (`lab101-{index:02}`) instead of prefix + MAC bytes.
    #[serde(default)]
    pub name_pattern: Option<String>,
    #[serde(default = "default_group")]
    pub group: String,
    #[serde(with = "humantime_serde", default = "default_heartbeat")]
    pub heartbeat: Duration,
    #[serde(with = "humantime_serde", default = "default_lost_after")]
    pub lost_after: Duration,
    /// A PC that fetched the node OS and has not registered after this long is `stuck`.
    #[serde(with = "humantime_serde", default = "default_stuck_after")]
    pub stuck_after: Duration,
    /// How long the initrd link in a boot script works.
    #[serde(with = "humantime_serde", default = "default_boot_token_ttl")]
    pub boot_token_ttl: Duration,
    /// New nodes from one address: this many at once, then `new_per_minute`.
    #[serde(default = "default_new_burst")]
    pub new_burst: u32,
    #[serde(default = "default_new_per_minute")]
    pub new_per_minute: u32,
    /// Nodes in the registry at most.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
}

impl Default for Nodes {
    fn default() -> Self {
        Nodes {
            enrollment: None,
            console_shell: false,
            name_prefix: default_name_prefix(),
            name_pattern: None,
            group: default_group(),
            heartbeat: default_heartbeat(),
            lost_after: default_lost_after(),
            stuck_after: default_stuck_after(),
            boot_token_ttl: default_boot_token_ttl(),
            new_burst: default_new_burst(),
            new_per_minute: default_new_per_minute(),
            max_nodes: default_max_nodes(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Anyone may view the dashboard and the read-only API without logging in.
    #[serde(default)]
    pub public_read: bool,
    /// Serve the dashboard and admin API here (with TLS) instead of on http.listen.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// PEM certificate and key for admin.listen; without them a self-signed pair is made.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jobs {
    /// Run jobs on the nodes through Slurm.
    #[serde(default)]
    pub enabled: bool,
    /// Use an existing slurmctld instead of starting one (enlist then only adds and removes
    /// nodes).
    #[serde(default)]
    pub external: Option<ExternalSlurm>,
    #[serde(default = "default_cluster_name")]
    pub cluster_name: String,
    #[serde(default = "default_partition")]
    pub partition: String,
    /// Every enlisted node has this Slurm feature; the partition is the nodes with it.
    #[serde(default = "default_feature")]
    pub feature: String,
    /// slurmctld's port.
    #[serde(default = "default_slurm_port")]
    pub port: u16,
    /// The nodes' slurmd port; default `port + 1` (6818, Slurm's own default).
    #[serde(default)]
    pub slurmd_port: Option<u16>,
    /// Memory a job gets per CPU unless it asks, MB; `auto`: the smallest node's memory per
    /// CPU among those up (a default job fits any node).
    #[serde(default = "default_mem_per_cpu")]
    pub def_mem_per_cpu: MemPerCpu,
    /// Memory kept back from what a node has available with munged and slurmd running, MB
    /// (each job's slurmstepd): the rest is offered to jobs.
    #[serde(default = "default_mem_reserve")]
    pub mem_reserve: u64,
    /// How long releasing a node waits for its jobs before requeueing them.
    #[serde(with = "humantime_serde", default = "default_release_deadline")]
    pub release_deadline: Duration,
    /// A node silent this long is down for Slurm, and its jobs requeued.
    #[serde(with = "humantime_serde", default = "default_node_timeout")]
    pub node_timeout: Duration,
    /// A node of an on-demand group (`schedules[].wake`) idle this long is released (Slurm's
    /// SuspendTime); it stays known to Slurm, powered down, until a job wakes it.
    #[serde(with = "humantime_serde", default = "default_idle_release")]
    pub idle_release: Duration,
    /// How long a woken PC may take from the magic packet to a running slurmd (power-on,
    /// POST, PXE, node OS: Slurm's ResumeTimeout); one that takes longer "did not wake".
    #[serde(with = "humantime_serde", default = "default_wake_timeout")]
    pub wake_timeout: Duration,
    /// The time limit of a job that gives none (`--time`): with on-demand windows a job
    /// starts only if it ends before its room is given back, so it needs one. Default: 1h
    /// with an on-demand schedule, else unlimited.
    #[serde(with = "humantime_serde", default)]
    pub default_time: Option<Duration>,
    #[serde(default)]
    pub home: Home,
    /// The users jobs run as: known to every node. Default: the head's NSS accounts (UIDs
    /// 1000-59999) with their groups, read again every 10 s.
    #[serde(default)]
    pub users: Option<Vec<JobUser>>,
    /// Where users on the head find slurm.conf and munged's socket (the state folder is
    /// root's alone): readable by all, remade at every start.
    #[serde(default = "default_run_dir")]
    pub run_dir: PathBuf,
    /// An nftables table of the head's own lets only enlisted nodes reach slurmctld, the
    /// shared home and srun's ports. Off only where the site's firewall does the same.
    #[serde(default = "default_true")]
    pub firewall: bool,
    /// Where `enlist env build` publishes the job environments (exported read-only to the
    /// nodes). Default: `<state_dir>/envs`.
    #[serde(default)]
    pub env_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalSlurm {
    /// Where nodes reach slurmctld (`--conf-server`).
    pub host: String,
    #[serde(default = "default_slurm_port")]
    pub port: u16,
    /// The site's slurm.conf, for scontrol (drain, delete).
    pub slurm_conf: PathBuf,
    /// The site's munge key, handed to enlisted nodes.
    pub munge_key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HomeServer {
    /// The kernel's NFS server where the head's kernel has one, else NFS-Ganesha.
    #[default]
    Auto,
    Kernel,
    Ganesha,
    /// No shared home.
    None,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Home {
    #[serde(default)]
    pub server: HomeServer,
    /// The shared folder on the head; nodes mount it at the same path. Default:
    /// `<state_dir>/home`.
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            enabled: false,
            external: None,
            cluster_name: default_cluster_name(),
            partition: default_partition(),
            feature: default_feature(),
            port: default_slurm_port(),
            slurmd_port: None,
            def_mem_per_cpu: default_mem_per_cpu(),
            mem_reserve: default_mem_reserve(),
            release_deadline: default_release_deadline(),
            node_timeout: default_node_timeout(),
            idle_release: default_idle_release(),
            wake_timeout: default_wake_timeout(),
            default_time: None,
            home: Home::default(),
            users: None,
            run_dir: default_run_dir(),
            firewall: true,
            env_dir: None,
        }
    }
}

fn default_idle_release() -> Duration {
    Duration::from_secs(600)
}
fn default_wake_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_cluster_name() -> String {
    "enlist".into()
}
fn default_partition() -> String {
    "enlist".into()
}
fn default_feature() -> String {
    "enlist".into()
}
fn default_slurm_port() -> u16 {
    6817
}
/// `def_mem_per_cpu`: a number of MB, or `auto`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum MemPerCpu {
    Mb(u64),
    Word(String),
}

fn default_mem_per_cpu() -> MemPerCpu {
    MemPerCpu::Word("auto".into())
}

fn default_mem_reserve() -> u64 {
    // MemAvailable is read with munged and slurmd running; what a job adds besides its own
    // memory is its slurmstepd (about 6 MB measured on i386).
    6
}
fn default_release_deadline() -> Duration {
    Duration::from_secs(600)
}
fn default_run_dir() -> PathBuf {
    PathBuf::from("/run/enlist")
}

fn default_node_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/enlist")
}
fn default_true() -> bool {
    true
}
fn default_max_connections() -> usize {
    1024
}
fn default_max_connections_per_client() -> usize {
    32
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_streams() -> usize {
    64
}
fn default_tftp_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 69))
}
fn default_ipxe_dir() -> PathBuf {
    PathBuf::from("/usr/lib/ipxe")
}
fn default_max_blksize() -> u16 {
    1468
}
fn default_max_windowsize() -> u16 {
    64
}
fn default_max_transfers() -> usize {
    512
}
fn default_max_transfers_per_client() -> usize {
    8
}
fn default_max_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_lease_time() -> Duration {
    Duration::from_secs(3600)
}
fn default_bios_file() -> String {
    "undionly.kpxe".into()
}
fn default_efi_file() -> String {
    "snponly.efi".into()
}
fn default_tftp_nics() -> Vec<String> {
    vec!["8086:1229".into()]
}
fn default_name_prefix() -> String {
    "node-".into()
}
fn default_group() -> String {
    "default".into()
}
fn default_heartbeat() -> Duration {
    Duration::from_secs(5)
}
fn default_lost_after() -> Duration {
    Duration::from_secs(30)
}
fn default_stuck_after() -> Duration {
    Duration::from_secs(120)
}
fn default_boot_token_ttl() -> Duration {
    Duration::from_secs(300)
}
fn default_new_burst() -> u32 {
    256
}
fn default_new_per_minute() -> u32 {
    120
}
fn default_max_nodes() -> usize {
    10_000
}
