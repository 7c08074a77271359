//! The head's configuration: one YAML file, read once at start.
//!
//! Every struct denies unknown keys, so a typo is an error that names its line instead of a
//! setting silently ignored. Semantic checks (pools inside their subnet, reservations unique, ...)
//! run in [`Config::validate`] after parsing and name the offending key path.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::Deserialize;

pub const DEFAULT_PATH: &str = "/etc/enlist/config.yaml";

/// Line and column of a YAML error (0, 0 when the parser gives none), for messages that point
/// at the spot in the file.
pub(crate) fn yaml_position(e: &serde_norway::Error) -> (usize, usize) {
    e.location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0))
}

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
    #[error("{path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the head keeps its database (leases, nodes, events) and its secret.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub http: HttpConfig,
    #[serde(default)]
    pub tftp: TftpConfig,
    pub dhcp: DhcpConfig,
    pub images: ImagesConfig,
    #[serde(default)]
    pub nodes: NodesConfig,
    #[serde(default)]
    pub admin: AdminConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address the HTTP server binds (boot scripts, images, agent API, dashboard).
    pub listen: SocketAddr,
    /// Base URL nodes use to reach this head, e.g. `http://10.77.0.1:8080`. Nodes resolve no
    /// host names before their network is up, so this should be an IP address.
    pub public_url: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpConfig {
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Address the TFTP server binds.
    #[serde(default = "default_tftp_listen")]
    pub listen: SocketAddr,
    /// Directory holding the iPXE binaries (Debian package `ipxe`).
    #[serde(default = "default_ipxe_dir")]
    pub ipxe_dir: PathBuf,
    /// Largest block size granted; also clamped to the interface MTU.
    #[serde(default = "default_max_blksize")]
    pub max_blksize: u16,
    /// Largest window granted (RFC 7440).
    #[serde(default = "default_max_windowsize")]
    pub max_windowsize: u16,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            enabled: true,
            listen: default_tftp_listen(),
            ipxe_dir: default_ipxe_dir(),
            max_blksize: default_max_blksize(),
            max_windowsize: default_max_windowsize(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// Interfaces the DHCP service answers on; it answers on no other.
    pub interfaces: Vec<InterfaceConfig>,
    /// Subnets with address pools (mode `dhcp`). A request is served from the subnet holding
    /// the relay address (giaddr) or, without relay, the address of the receiving interface.
    #[serde(default)]
    pub subnets: Vec<SubnetConfig>,
    /// Boot file names per client kind, relative to the TFTP root.
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
pub struct InterfaceConfig {
    pub name: String,
    pub mode: DhcpMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    pub subnet: Ipv4Net,
    /// First and last address handed out, inclusive.
    pub pool: [Ipv4Addr; 2],
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(with = "humantime_serde", default = "default_lease_time")]
    pub lease_time: Duration,
    #[serde(default)]
    pub reservations: Vec<Reservation>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reservation {
    pub mac: String,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub name: Option<String>,
    /// Image to boot, overriding `images.default`.
    #[serde(default)]
    pub image: Option<String>,
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
pub struct ImagesConfig {
    /// Folder `enlist image build` writes to: `<dir>/<name>/<version>/{vmlinuz,initrd,manifest.json}`.
    pub dir: PathBuf,
    /// Image for BIOS clients (and any client without a more specific rule).
    pub default: String,
    /// Image for UEFI x86_64 clients; defaults to `default`.
    #[serde(default)]
    pub efi_x64: Option<String>,
    /// Extra kernel command line for every node.
    #[serde(default)]
    pub cmdline: String,
    /// PCI ids (`vendor:device`) of network cards whose iPXE fetches its script, kernel and
    /// initrd by TFTP (lockstep) instead of HTTP: iPXE's drivers for some period cards lose
    /// their receive ring to TCP. Default: the Intel EtherExpress Pro/100 (8086:1229).
    #[serde(default = "default_tftp_nics")]
    pub tftp_nics: Vec<String>,
}

fn default_tftp_nics() -> Vec<String> {
    vec!["8086:1229".into()]
}

/// `8086:1229` -> the iPXE `busid` setting of that PCI card, `01:80:86:12:29`.
pub fn pci_busid(id: &str) -> Option<String> {
    let (v, d) = id.split_once(':')?;
    if v.len() != 4 || d.len() != 4 || !v.chars().chain(d.chars()).all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let v = v.to_ascii_lowercase();
    let d = d.to_ascii_lowercase();
    Some(format!(
        "01:{}:{}:{}:{}",
        &v[..2],
        &v[2..],
        &d[..2],
        &d[2..]
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Enrollment {
    /// Any PC that boots is enlisted.
    #[default]
    Open,
    /// Only MACs with a reservation are enlisted.
    KnownMacs,
    /// New nodes wait as `pending` until an admin approves them.
    Approve,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesConfig {
    #[serde(default)]
    pub enrollment: Enrollment,
    /// Prefix of generated node names (`node-` gives `node-0a1b2c`).
    #[serde(default = "default_name_prefix")]
    pub name_prefix: String,
    #[serde(default = "default_group")]
    pub group: String,
    /// How often agents send a heartbeat.
    #[serde(with = "humantime_serde", default = "default_heartbeat")]
    pub heartbeat: Duration,
    /// A node silent for this long is marked lost.
    #[serde(with = "humantime_serde", default = "default_lost_after")]
    pub lost_after: Duration,
}

impl Default for NodesConfig {
    fn default() -> Self {
        NodesConfig {
            enrollment: Enrollment::default(),
            name_prefix: default_name_prefix(),
            group: default_group(),
            heartbeat: default_heartbeat(),
            lost_after: default_lost_after(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Allow viewing the dashboard and read-only API without login.
    #[serde(default)]
    pub public_read: bool,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/enlist")
}
fn default_true() -> bool {
    true
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
fn default_lease_time() -> Duration {
    Duration::from_secs(3600)
}
fn default_bios_file() -> String {
    "undionly.kpxe".into()
}
fn default_efi_file() -> String {
    "snponly.efi".into()
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

impl Config {
    /// Read, parse and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = serde_norway::from_str(text).map_err(|e| {
            let (line, column) = crate::config::yaml_position(&e);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                message: e.to_string(),
            }
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        if !self.http.public_url.starts_with("http://") {
            return Err(invalid(
                "http.public_url".into(),
                format!(
                    "{:?} must start with http:// (nodes speak plain HTTP)",
                    self.http.public_url
                ),
            ));
        }
        if self.dhcp.interfaces.is_empty() {
            return Err(invalid(
                "dhcp.interfaces".into(),
                "name at least one interface to serve".into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, ifc) in self.dhcp.interfaces.iter().enumerate() {
            if !names.insert(&ifc.name) {
                return Err(invalid(
                    format!("dhcp.interfaces[{i}].name"),
                    format!("interface {:?} is listed twice", ifc.name),
                ));
            }
        }
        if self
            .dhcp
            .interfaces
            .iter()
            .any(|i| i.mode == DhcpMode::Dhcp)
            && self.dhcp.subnets.is_empty()
        {
            return Err(invalid(
                "dhcp.subnets".into(),
                "an interface in mode dhcp needs at least one subnet with a pool".into(),
            ));
        }
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        for (i, s) in self.dhcp.subnets.iter().enumerate() {
            let key = format!("dhcp.subnets[{i}]");
            let [first, last] = s.pool;
            if !s.subnet.contains(&first) || !s.subnet.contains(&last) {
                return Err(invalid(
                    format!("{key}.pool"),
                    format!("{first}-{last} is not inside {}", s.subnet),
                ));
            }
            if u32::from(first) > u32::from(last) {
                return Err(invalid(
                    format!("{key}.pool"),
                    format!("first address {first} is after last {last}"),
                ));
            }
            if s.lease_time < Duration::from_secs(60) {
                return Err(invalid(
                    format!("{key}.lease_time"),
                    "must be at least 1m".into(),
                ));
            }
            for (j, r) in s.reservations.iter().enumerate() {
                let rkey = format!("{key}.reservations[{j}]");
                let Some(mac) = enlist_api::normalize_mac(&r.mac) else {
                    return Err(invalid(
                        format!("{rkey}.mac"),
                        format!("{:?} is not a MAC address", r.mac),
                    ));
                };
                if !macs.insert(mac.clone()) {
                    return Err(invalid(
                        format!("{rkey}.mac"),
                        format!("{mac} is reserved twice"),
                    ));
                }
                if !s.subnet.contains(&r.ip) {
                    return Err(invalid(
                        format!("{rkey}.ip"),
                        format!("{} is not inside {}", r.ip, s.subnet),
                    ));
                }
                if !ips.insert(r.ip) {
                    return Err(invalid(
                        format!("{rkey}.ip"),
                        format!("{} is reserved twice", r.ip),
                    ));
                }
            }
        }
        for (i, a) in self.dhcp.subnets.iter().enumerate() {
            for b in self.dhcp.subnets.iter().skip(i + 1) {
                if a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network())
                {
                    return Err(invalid(
                        format!("dhcp.subnets[{i}].subnet"),
                        format!("{} overlaps {}", a.subnet, b.subnet),
                    ));
                }
            }
        }
        if self.tftp.max_blksize < 512 || self.tftp.max_blksize > 65464 {
            return Err(invalid(
                "tftp.max_blksize".into(),
                "must be between 512 and 65464".into(),
            ));
        }
        if self.tftp.max_windowsize == 0 {
            return Err(invalid(
                "tftp.max_windowsize".into(),
                "must be at least 1".into(),
            ));
        }
        for (i, id) in self.images.tftp_nics.iter().enumerate() {
            if pci_busid(id).is_none() {
                return Err(invalid(
                    format!("images.tftp_nics[{i}]"),
                    format!("{id:?} is not a PCI id like 8086:1229"),
                ));
            }
        }
        Ok(())
    }

    /// All reservations of all subnets, with normalised MACs.
    pub fn reservation_for(&self, mac: &str) -> Option<&Reservation> {
        self.dhcp
            .subnets
            .iter()
            .flat_map(|s| s.reservations.iter())
            .find(|r| enlist_api::normalize_mac(&r.mac).as_deref() == Some(mac))
    }

    pub fn database_path(&self) -> PathBuf {
        self.state_dir.join("enlist.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../config.example.yaml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("test.yaml"))
    }

    #[test]
    fn example_config_is_valid() {
        let cfg = parse(GOOD).expect("config.example.yaml must be valid");
        assert_eq!(cfg.dhcp.interfaces[0].mode, DhcpMode::Dhcp);
        assert_eq!(cfg.dhcp.subnets[0].lease_time, Duration::from_secs(3600));
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let text = GOOD.replace("state_dir:", "stat_dir:");
        let err = parse(&text).unwrap_err().to_string();
        let line = GOOD
            .lines()
            .position(|l| l.starts_with("state_dir:"))
            .unwrap()
            + 1;
        assert!(err.starts_with(&format!("test.yaml:{line}:1:")), "{err}");
        assert!(err.contains("stat_dir"), "{err}");
    }

    #[test]
    fn bad_value_is_named() {
        let text = GOOD.replace("subnet: 10.77.0.0/24", "subnet: 10.77.0.0/33");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("test.yaml:"), "{err}");
        assert!(matches!(
            parse(&text).unwrap_err(),
            ConfigError::Parse { line, .. } if line > 0
        ));
    }

    #[test]
    fn pool_outside_subnet_is_rejected() {
        let text = GOOD.replace("10.77.0.199", "10.78.0.199");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("dhcp.subnets[0].pool"), "{err}");
    }
}
