//! The head's configuration: one YAML file, read once at start.
//!
//! Two layers, as in dora and Firecracker: [`wire`] is the file as written (serde, unknown keys
//! refused), and [`Config`] the checked, typed configuration built from it section by section
//! with `TryFrom` (MACs, PCI ids, URL, image and node names parsed once). Every error names the
//! file, line and column: serde's own, or the key path of a check, located by [`locate`].

mod locate;
mod reload;
mod sections;
mod values;
pub mod wire;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use enlist_api::Mac;
use ipnet::Ipv4Net;

pub use reload::{Current, Reload};
pub use values::{valid_host_label, ImageName, NamePattern, PciId, PublicUrl};
pub use wire::{DhcpMode, Enrollment, HomeServer};

use locate::Positions;

pub const DEFAULT_PATH: &str = "/etc/enlist/config.yaml";
/// The shared home's default folder (`jobs.home.path`): outside the state folder, which is
/// root's alone, so users on the head reach their part of it.
pub const DEFAULT_HOME: &str = "/srv/enlist/home";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}:{line}:{column}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

/// A check that failed: the key path at fault and why. Sections return these; [`Config`]
/// places them in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl Invalid {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            message: message.into(),
        }
    }

    /// The same error one level down: `subnets[0]` + `.pool`.
    fn under(self, prefix: &str) -> Invalid {
        let key = if self.key.starts_with('[') {
            format!("{prefix}{}", self.key)
        } else {
            format!("{prefix}.{}", self.key)
        };
        Invalid { key, ..self }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub http: HttpConfig,
    pub tftp: TftpConfig,
    pub dhcp: DhcpConfig,
    pub images: ImagesConfig,
    pub nodes: NodesConfig,
    pub admin: AdminConfig,
    pub jobs: JobsConfig,
    /// Per group, when it is enlisted and released (at most one schedule per group).
    pub schedules: Vec<ScheduleConfig>,
    /// Every reservation of every subnet, by MAC (an index of `dhcp.subnets[].reservations`).
    reservations: HashMap<Mac, Reservation>,
    /// Every reserved address, kept out of the dynamic pools (the same index).
    reserved_ips: HashSet<Ipv4Addr>,
    /// Old key names still read, with what to write instead (key path, advice): shown by
    /// `check-config` and logged at start as warnings.
    deprecated: Vec<(String, String)>,
    /// Where the config came from, to place later errors (e.g. an image not yet built).
    source: Source,
}

#[derive(Debug, Clone, Default)]
struct Source {
    path: PathBuf,
    positions: Positions,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub public_url: PublicUrl,
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_timeout: Duration,
    pub max_streams: usize,
}

#[derive(Debug, Clone)]
pub struct TftpConfig {
    pub enabled: bool,
    pub listen: SocketAddr,
    pub ipxe_dir: PathBuf,
    /// Largest block size granted; also clamped to the interface MTU.
    pub max_blksize: u16,
    pub max_windowsize: u16,
    pub max_transfers: usize,
    pub max_transfers_per_client: usize,
    pub max_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub interfaces: Vec<InterfaceConfig>,
    pub subnets: Vec<SubnetConfig>,
    pub boot_files: BootFiles,
}

#[derive(Debug, Clone)]
pub struct InterfaceConfig {
    pub name: String,
    pub mode: DhcpMode,
}

#[derive(Debug, Clone)]
pub struct SubnetConfig {
    pub subnet: Ipv4Net,
    /// First and last address handed out, inclusive; none: reservations only.
    pub pool: Option<[Ipv4Addr; 2]>,
    /// Option 3 (`routers`, or the old `router`).
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_time: Duration,
    /// Relays (giaddr) whose requests are served from this subnet; others are dropped.
    pub relays: Vec<Ipv4Addr>,
    pub reservations: Vec<Reservation>,
    /// The group new nodes of this subnet (a room) join.
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub mac: Mac,
    /// Its address; none: from the pool (mode dhcp) or the campus server (proxy mode).
    pub ip: Option<Ipv4Addr>,
    pub name: Option<String>,
    /// Image to boot instead of `images.bios`.
    pub image: Option<ImageName>,
    /// The group it joins, instead of its subnet's or `nodes.group`.
    pub group: Option<String>,
}

#[derive(Debug, Clone)]
pub struct BootFiles {
    pub bios: String,
    pub efi_x64: String,
}

#[derive(Debug, Clone)]
pub struct ImagesConfig {
    pub dir: PathBuf,
    /// Image for BIOS clients (`images.bios`, once `images.default`).
    pub bios: ImageName,
    /// Image for UEFI x86_64 clients (`bios` if unset).
    pub efi_x64: ImageName,
    /// Image for BIOS clients with a 64-bit CPU (`efi_x64` if unset): the boot script picks it
    /// when iPXE's `cpuid --ext 29` finds long mode; where iPXE lacks the command the first
    /// boot is on `bios` and the next ones, once the node OS reported the CPU, on this.
    pub bios_x64: ImageName,
    pub cmdline: String,
    /// Cards whose iPXE uses TFTP only (script, kernel, initrd).
    pub tftp_nics: Vec<PciId>,
    /// Per group, an HTTP cache its PCs fetch image files through (`images.mirrors`).
    pub mirrors: std::collections::BTreeMap<String, PublicUrl>,
}

/// A group's schedule: changes at the instants its two cron expressions name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    pub group: String,
    pub enlist: crate::cron::Cron,
    pub release: crate::cron::Cron,
    pub wake: Wake,
}

/// Which of a scheduled group's PCs are woken in its window (`schedules[].wake`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Every PC at the window's start.
    All,
    /// As many as Slurm's waiting jobs need (Slurm's power saving: resume = Wake-on-LAN,
    /// suspend = release), only inside the window.
    OnDemand,
}

#[derive(Debug, Clone)]
pub struct NodesConfig {
    pub enrollment: Enrollment,
    /// A root shell on the node's console instead of its status screen (the lab's bench).
    pub console_shell: bool,
    pub name_prefix: String,
    /// New nodes' names by join order (`lab101-01`); None: prefix + MAC bytes.
    pub name_pattern: Option<NamePattern>,
    pub group: String,
    pub heartbeat: Duration,
    pub lost_after: Duration,
    pub stuck_after: Duration,
    pub boot_token_ttl: Duration,
    pub new_burst: u32,
    pub new_per_minute: u32,
    pub max_nodes: usize,
}

#[derive(Debug, Clone, Default)]
pub struct AdminConfig {
    pub public_read: bool,
    /// A separate listener for the dashboard and admin API, with TLS.
    pub listen: Option<SocketAddr>,
    /// Certificate and key (PEM) for `listen`; `None`: a self-signed pair in the state folder.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// Jobs through Slurm (`jobs:`).
#[derive(Debug, Clone)]
pub struct JobsConfig {
    pub enabled: bool,
    pub controller: Controller,
    pub cluster_name: String,
    pub partition: String,
    pub feature: String,
    pub def_mem_per_cpu: DefMem,
    pub mem_reserve_mb: u64,
    pub release_deadline: Duration,
    pub node_timeout: Duration,
    /// Slurm's SuspendTime for on-demand nodes.
    pub idle_release: Duration,
    /// Slurm's ResumeTimeout: a woken PC not registered by then did not wake.
    pub wake_timeout: Duration,
    /// The partition's DefaultTime (None: unlimited).
    pub default_time: Option<Duration>,
    pub home_server: HomeServer,
    /// The shared home on the head, mounted at the same path on every node.
    pub home: PathBuf,
    /// `None`: the head's own accounts with UID >= 1000, read at start.
    pub users: Option<Vec<JobUser>>,
    /// slurm.conf and munged's socket for users on the head (readable by all).
    pub run_dir: PathBuf,
    /// The head's nftables table keeps the cluster's ports for enlisted nodes.
    pub firewall: bool,
    /// The job environments (`enlist env build`), exported read-only to the nodes.
    pub env_dir: PathBuf,
}

/// Memory a job gets per CPU when it does not ask (`--mem`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefMem {
    /// The smallest per-CPU memory of the nodes up, kept current in slurmctld's partition
    /// (a PC's memory is known only once it joins; a default job then fits any node).
    Auto,
    /// This many MB.
    Fixed(u64),
}

impl DefMem {
    /// What slurm.conf says: the fixed value, or a placeholder until a node has joined.
    pub fn initial_mb(self) -> u64 {
        match self {
            DefMem::Auto => 16,
            DefMem::Fixed(mb) => mb,
        }
    }
}

/// Which slurmctld the nodes join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Controller {
    /// enlist starts and supervises munged and slurmctld, on `port`; the nodes' slurmd
    /// listen on `slurmd_port`.
    Managed { port: u16, slurmd_port: u16 },
    /// The site's own.
    External {
        host: String,
        port: u16,
        slurm_conf: PathBuf,
        munge_key: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl Config {
    /// Read, parse and check a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and check config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: wire::File = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = yaml_position(&e);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        let source = Source {
            path: path.to_path_buf(),
            positions: Positions::of(text),
        };
        match Config::try_from(file) {
            Ok(mut cfg) => {
                cfg.source = source;
                Ok(cfg)
            }
            Err(invalid) => Err(source.place(invalid)),
        }
    }

    /// Old key names the file uses, each placed in the file with what to write instead.
    pub fn deprecations(&self) -> Vec<ConfigError> {
        self.deprecated
            .iter()
            .map(|(key, advice)| self.error_at(Invalid::new(key.clone(), advice.clone())))
            .collect()
    }

    /// Place a check that failed after loading (e.g. against the image store) in the file.
    pub fn error_at(&self, invalid: Invalid) -> ConfigError {
        self.source.place(invalid)
    }

    /// The schedule of `group`, if it has one.
    /// The file this config was read from.
    pub fn path(&self) -> &Path {
        &self.source.path
    }

    pub fn schedule_of(&self, group: &str) -> Option<&ScheduleConfig> {
        self.schedules.iter().find(|s| s.group == group)
    }

    /// Whether the group's PCs are woken by Slurm when jobs wait (its schedule's `wake`).
    pub fn on_demand(&self, group: &str) -> bool {
        self.schedule_of(group)
            .is_some_and(|s| s.wake == Wake::OnDemand)
    }

    /// Whether any group is woken on demand (Slurm's power saving is on).
    pub fn any_on_demand(&self) -> bool {
        self.schedules.iter().any(|s| s.wake == Wake::OnDemand)
    }

    pub fn reservation_for(&self, mac: Mac) -> Option<&Reservation> {
        self.reservations.get(&mac)
    }

    /// The PC a reservation gives `name`.
    pub fn reservation_named(&self, name: &str) -> Option<Mac> {
        self.reservations
            .values()
            .find(|r| r.name.as_deref() == Some(name))
            .map(|r| r.mac)
    }

    /// How many PCs are reserved.
    pub fn reservation_count(&self) -> usize {
        self.reservations.len()
    }

    /// Reservations that are new or differ from `before`'s (after a reload).
    pub fn reservations_changed_since(&self, before: &Config) -> Vec<Reservation> {
        self.reservations
            .values()
            .filter(|r| before.reservation_for(r.mac) != Some(*r))
            .cloned()
            .collect()
    }

    /// Whether `ip` is some PC's reserved address (never pooled).
    pub fn reserved_ip(&self, ip: Ipv4Addr) -> bool {
        self.reserved_ips.contains(&ip)
    }

    /// Rebuild the indexes of `dhcp.subnets[].reservations` (after loading or a reload).
    fn index_reservations(&mut self) {
        let all = || self.dhcp.subnets.iter().flat_map(|s| &s.reservations);
        self.reservations = all().map(|r| (r.mac, r.clone())).collect();
        self.reserved_ips = all().filter_map(|r| r.ip).collect();
    }

    /// The group a new node joins: its reservation's, else that of the subnet holding the
    /// address it booted from, else `nodes.group`.
    pub fn group_for(&self, mac: Mac, from: Option<std::net::IpAddr>) -> String {
        let by_subnet = || {
            let std::net::IpAddr::V4(ip) = from? else {
                return None;
            };
            self.dhcp
                .subnets
                .iter()
                .find(|s| s.subnet.contains(&ip))
                .and_then(|s| s.group.clone())
        };
        self.reservation_for(mac)
            .and_then(|r| r.group.clone())
            .or_else(by_subnet)
            .unwrap_or_else(|| self.nodes.group.clone())
    }

    /// The image a node boots on BIOS: its reservation's, else `images.bios_x64` for a PC
    /// known to have a 64-bit CPU, else `images.bios`.
    pub fn bios_image(&self, mac: Mac, cpu_64bit: bool) -> &ImageName {
        let reserved = self.reservation_for(mac).and_then(|r| r.image.as_ref());
        match (reserved, cpu_64bit) {
            (Some(image), _) => image,
            (None, true) => &self.images.bios_x64,
            (None, false) => &self.images.bios,
        }
    }

    /// The subnet this head leases addresses from that holds `ip`, if any (mode `dhcp`).
    pub fn leased_subnet(&self, ip: IpAddr) -> Option<&SubnetConfig> {
        let IpAddr::V4(v4) = ip else { return None };
        self.dhcp.subnets.iter().find(|s| s.subnet.contains(&v4))
    }

    /// Every image name the config refers to, with its key path.
    pub fn image_names(&self) -> Vec<(String, &ImageName)> {
        let mut v = vec![
            ("images.bios".to_string(), &self.images.bios),
            ("images.efi_x64".to_string(), &self.images.efi_x64),
            ("images.bios_x64".to_string(), &self.images.bios_x64),
        ];
        for (i, s) in self.dhcp.subnets.iter().enumerate() {
            for (j, r) in s.reservations.iter().enumerate() {
                if let Some(img) = &r.image {
                    v.push((format!("dhcp.subnets[{i}].reservations[{j}].image"), img));
                }
            }
        }
        v
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("enlist.db")
    }
}

impl Source {
    fn place(&self, invalid: Invalid) -> ConfigError {
        let (line, column) = self.positions.find(&invalid.key).unwrap_or((0, 0));
        ConfigError::Invalid {
            path: self.path.clone(),
            line,
            column,
            key: invalid.key,
            message: invalid.message,
        }
    }
}

/// Line and column of a YAML error (0, 0 when the parser gives none).
pub(crate) fn yaml_position(e: &serde_norway::Error) -> (usize, usize) {
    e.location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0))
}

#[cfg(test)]
mod tests;
