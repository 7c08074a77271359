//! `wire` -> `Config`, one section at a time. Each conversion checks what its values mean and
//! names the key at fault; the keys are relative to the section and prefixed on the way up.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use enlist_api::Mac;

use super::values::{valid_host_label, ImageName, NamePattern, PciId, PublicUrl};
use super::wire;
use super::*;

type Checked<T> = Result<T, Invalid>;

impl TryFrom<wire::File> for Config {
    type Error = Invalid;

    fn try_from(f: wire::File) -> Checked<Config> {
        let deprecated = deprecated_keys(&f);
        let http = HttpConfig::try_from(f.http).map_err(|e| e.under("http"))?;
        let tftp = TftpConfig::try_from(f.tftp).map_err(|e| e.under("tftp"))?;
        let dhcp = DhcpConfig::try_from(f.dhcp).map_err(|e| e.under("dhcp"))?;
        let images = ImagesConfig::try_from(f.images).map_err(|e| e.under("images"))?;
        let nodes = nodes(f.nodes, f.jobs.enabled).map_err(|e| e.under("nodes"))?;
        let admin = AdminConfig::try_from(f.admin).map_err(|e| e.under("admin"))?;
        let jobs = jobs(f.jobs, &f.state_dir).map_err(|e| e.under("jobs"))?;
        let managed = jobs.enabled && matches!(jobs.controller, Controller::Managed { .. });
        let schedules = schedules(f.schedules, managed).map_err(|e| e.under("schedules"))?;
        let jobs = with_default_time(jobs, &schedules);
        let mut cfg = Config {
            state_dir: f.state_dir,
            http,
            tftp,
            dhcp,
            images,
            nodes,
            admin,
            jobs,
            schedules,
            reservations: HashMap::new(),
            reserved_ips: HashSet::new(),
            deprecated,
            source: Source::default(),
        };
        cfg.index_reservations();
        Ok(cfg)
    }
}

/// Old names the file uses (read as their new ones), with the new way to write them.
fn deprecated_keys(f: &wire::File) -> Vec<(String, String)> {
    let mut old: Vec<(String, String)> = f
        .dhcp
        .subnets
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let r = s.router?;
            Some((
                format!("dhcp.subnets[{i}].router"),
                format!("`router` is the old name: write `routers: [{r}]` (a list, as Kea's)"),
            ))
        })
        .collect();
    if let Some(d) = &f.images.default {
        old.push((
            "images.default".into(),
            format!("`default` is the old name (it never applied to UEFI PCs: efi_x64 does): write `bios: {d}`"),
        ));
    }
    old
}

fn at_least(key: &str, value: usize, min: usize) -> Checked<()> {
    if value < min {
        return Err(Invalid::new(key, format!("must be at least {min}")));
    }
    Ok(())
}

impl TryFrom<wire::Http> for HttpConfig {
    type Error = Invalid;

    fn try_from(h: wire::Http) -> Checked<HttpConfig> {
        let public_url =
            PublicUrl::parse(&h.public_url).map_err(|m| Invalid::new("public_url", m))?;
        at_least("max_connections", h.max_connections, 16)?;
        at_least(
            "max_connections_per_client",
            h.max_connections_per_client,
            2,
        )?;
        at_least("max_streams", h.max_streams, 1)?;
        if h.header_timeout < Duration::from_secs(1) {
            return Err(Invalid::new("header_timeout", "must be at least 1s"));
        }
        Ok(HttpConfig {
            listen: h.listen,
            public_url,
            max_connections: h.max_connections,
            max_connections_per_client: h.max_connections_per_client,
            header_timeout: h.header_timeout,
            max_streams: h.max_streams,
        })
    }
}

impl TryFrom<wire::Tftp> for TftpConfig {
    type Error = Invalid;

    fn try_from(t: wire::Tftp) -> Checked<TftpConfig> {
        if !(512..=65464).contains(&t.max_blksize) {
            return Err(Invalid::new("max_blksize", "must be between 512 and 65464"));
        }
        if t.max_windowsize == 0 {
            return Err(Invalid::new("max_windowsize", "must be at least 1"));
        }
        at_least("max_transfers", t.max_transfers, 1)?;
        at_least("max_transfers_per_client", t.max_transfers_per_client, 1)?;
        if !(Duration::from_secs(1)..=Duration::from_secs(255)).contains(&t.max_timeout) {
            return Err(Invalid::new("max_timeout", "must be between 1s and 255s"));
        }
        Ok(TftpConfig {
            enabled: t.enabled,
            listen: t.listen,
            ipxe_dir: t.ipxe_dir,
            max_blksize: t.max_blksize,
            max_windowsize: t.max_windowsize,
            max_transfers: t.max_transfers,
            max_transfers_per_client: t.max_transfers_per_client,
            max_timeout: t.max_timeout,
        })
    }
}

impl TryFrom<wire::Dhcp> for DhcpConfig {
    type Error = Invalid;

    fn try_from(d: wire::Dhcp) -> Checked<DhcpConfig> {
        if d.interfaces.is_empty() {
            return Err(Invalid::new(
                "interfaces",
                "name at least one interface to serve",
            ));
        }
        let mut names = HashSet::new();
        for (i, ifc) in d.interfaces.iter().enumerate() {
            if !names.insert(&ifc.name) {
                return Err(Invalid::new(
                    format!("interfaces[{i}].name"),
                    format!("interface {:?} is listed twice", ifc.name),
                ));
            }
        }
        if d.interfaces.iter().any(|i| i.mode == DhcpMode::Dhcp) && d.subnets.is_empty() {
            return Err(Invalid::new(
                "subnets",
                "an interface in mode dhcp needs at least one subnet with a pool",
            ));
        }
        let mut subnets = Vec::new();
        for (i, s) in d.subnets.into_iter().enumerate() {
            subnets.push(SubnetConfig::try_from(s).map_err(|e| e.under(&format!("subnets[{i}]")))?);
        }
        no_overlaps(&subnets)?;
        unique_reservations(&subnets)?;
        Ok(DhcpConfig {
            interfaces: d
                .interfaces
                .into_iter()
                .map(|i| InterfaceConfig {
                    name: i.name,
                    mode: i.mode,
                })
                .collect(),
            subnets,
            boot_files: BootFiles {
                bios: d.boot_files.bios,
                efi_x64: d.boot_files.efi_x64,
            },
        })
    }
}

fn no_overlaps(subnets: &[SubnetConfig]) -> Checked<()> {
    for (i, a) in subnets.iter().enumerate() {
        for b in subnets.iter().skip(i + 1) {
            if a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network()) {
                return Err(Invalid::new(
                    format!("subnets[{i}].subnet"),
                    format!("{} overlaps {}", a.subnet, b.subnet),
                ));
            }
        }
    }
    Ok(())
}

fn unique_reservations(subnets: &[SubnetConfig]) -> Checked<()> {
    let mut macs: HashMap<Mac, ()> = HashMap::new();
    let mut ips = HashSet::new();
    let mut names = HashSet::new();
    for (i, s) in subnets.iter().enumerate() {
        for (j, r) in s.reservations.iter().enumerate() {
            let key = format!("subnets[{i}].reservations[{j}]");
            if macs.insert(r.mac, ()).is_some() {
                return Err(Invalid::new(
                    format!("{key}.mac"),
                    format!("{} is reserved twice", r.mac),
                ));
            }
            if let Some(ip) = r.ip.filter(|ip| !ips.insert(*ip)) {
                return Err(Invalid::new(
                    format!("{key}.ip"),
                    format!("{ip} is reserved twice"),
                ));
            }
            if let Some(n) = &r.name {
                if !names.insert(n.clone()) {
                    return Err(Invalid::new(
                        format!("{key}.name"),
                        format!("{n:?} is used twice"),
                    ));
                }
            }
        }
    }
    Ok(())
}

impl TryFrom<wire::Subnet> for SubnetConfig {
    type Error = Invalid;

    fn try_from(s: wire::Subnet) -> Checked<SubnetConfig> {
        if let Some([first, last]) = s.pool {
            if !s.subnet.contains(&first) || !s.subnet.contains(&last) {
                return Err(Invalid::new(
                    "pool",
                    format!("{first}-{last} is not inside {}", s.subnet),
                ));
            }
            if u32::from(first) > u32::from(last) {
                return Err(Invalid::new(
                    "pool",
                    format!("first address {first} is after last {last}"),
                ));
            }
        }
        if s.lease_time < Duration::from_secs(60) {
            return Err(Invalid::new("lease_time", "must be at least 1m"));
        }
        for (i, r) in s.relays.iter().enumerate() {
            if !s.subnet.contains(r) {
                return Err(Invalid::new(
                    format!("relays[{i}]"),
                    format!("{r} is not inside {}: a relay forwards with its address on the clients' subnet", s.subnet),
                ));
            }
        }
        group_name(s.group.as_deref()).map_err(|m| Invalid::new("group", m))?;
        let mut reservations = Vec::new();
        for (j, r) in s.reservations.into_iter().enumerate() {
            let r = reservation(r).map_err(|e| e.under(&format!("reservations[{j}]")))?;
            if let Some(ip) = r.ip.filter(|ip| !s.subnet.contains(ip)) {
                return Err(Invalid::new(
                    format!("reservations[{j}].ip"),
                    format!("{ip} is not inside {}", s.subnet),
                ));
            }
            reservations.push(r);
        }
        Ok(SubnetConfig {
            subnet: s.subnet,
            pool: s.pool,
            routers: match (s.router, s.routers.is_empty()) {
                (Some(_), false) => {
                    return Err(Invalid::new(
                        "router",
                        "write routers only (router is its old name)",
                    ))
                }
                (Some(r), true) => vec![r],
                (None, _) => s.routers,
            },
            dns: s.dns,
            domain: s.domain,
            lease_time: s.lease_time,
            relays: s.relays,
            reservations,
            group: s.group,
        })
    }
}

fn reservation(r: wire::Reservation) -> Checked<Reservation> {
    let mac = r
        .mac
        .parse::<Mac>()
        .map_err(|e| Invalid::new("mac", e.to_string()))?;
    if let Some(n) = &r.name {
        if !valid_host_label(n) {
            return Err(Invalid::new(
                "name",
                format!("{n:?} is not a host name: use 1-63 letters, digits and '-'"),
            ));
        }
    }
    let image = r
        .image
        .as_deref()
        .map(image_name)
        .transpose()
        .map_err(|m| Invalid::new("image", m))?;
    group_name(r.group.as_deref()).map_err(|m| Invalid::new("group", m))?;
    Ok(Reservation {
        mac,
        ip: r.ip,
        name: r.name,
        image,
        group: r.group,
    })
}

/// `schedules[].wake`: on demand needs enlist's own slurmctld (its power saving calls the
/// head); the default follows.
fn wake(word: Option<&str>, managed: bool) -> Result<Wake, String> {
    match (word, managed) {
        (None, true) | (Some("on-demand"), true) => Ok(Wake::OnDemand),
        (None, false) | (Some("all"), _) => Ok(Wake::All),
        (Some("on-demand"), false) => Err("on-demand needs jobs.enabled with enlist's own slurmctld (not jobs.external): Slurm wakes the PCs through the head".into()),
        (Some(w), _) => Err(format!("{w:?}: all or on-demand")),
    }
}

/// With an on-demand window a job must say how long it runs (or get this): 1h unless set.
fn with_default_time(mut jobs: JobsConfig, schedules: &[ScheduleConfig]) -> JobsConfig {
    if jobs.default_time.is_none() && schedules.iter().any(|s| s.wake == Wake::OnDemand) {
        jobs.default_time = Some(Duration::from_secs(3600));
    }
    jobs
}

/// Schedules: a valid group each, at most one per group, two cron expressions.
fn schedules(list: Vec<wire::Schedule>, managed: bool) -> Checked<Vec<ScheduleConfig>> {
    let mut seen = HashSet::new();
    let mut out = vec![];
    for (i, s) in list.into_iter().enumerate() {
        let at = |key: &str, m: String| Invalid::new(format!("[{i}].{key}"), m);
        group_name(Some(&s.group)).map_err(|m| at("group", m))?;
        if !seen.insert(s.group.clone()) {
            return Err(at(
                "group",
                format!("group {:?} has a schedule already", s.group),
            ));
        }
        out.push(ScheduleConfig {
            enlist: s.enlist.parse().map_err(|m| at("enlist", m))?,
            release: s.release.parse().map_err(|m| at("release", m))?,
            wake: wake(s.wake.as_deref(), managed).map_err(|m| at("wake", m))?,
            group: s.group,
        });
    }
    Ok(out)
}

/// A group name, if given: a host label (it is shown, typed in `enlist exec -g`, and matched).
fn group_name(g: Option<&str>) -> Result<(), String> {
    match g {
        Some(g) if !valid_host_label(g) => Err(format!(
            "{g:?} is not a group name: use 1-63 letters, digits and '-'"
        )),
        _ => Ok(()),
    }
}

fn image_name(s: &str) -> Result<ImageName, String> {
    ImageName::parse(s)
        .ok_or_else(|| format!("{s:?} is not an image name: use letters, digits, '.', '_' and '-'"))
}

impl TryFrom<wire::Images> for ImagesConfig {
    type Error = Invalid;

    fn try_from(i: wire::Images) -> Checked<ImagesConfig> {
        let bios = match (i.bios.as_deref(), i.default.as_deref()) {
            (Some(b), None) => image_name(b).map_err(|m| Invalid::new("bios", m))?,
            (None, Some(d)) => image_name(d).map_err(|m| Invalid::new("default", m))?,
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    "default",
                    "write bios only (default is its old name)",
                ))
            }
            (None, None) => {
                return Err(Invalid::new(
                    "bios",
                    "required: the image BIOS PCs boot (i586)",
                ))
            }
        };
        let efi_x64 = match i.efi_x64.as_deref() {
            Some(e) => image_name(e).map_err(|m| Invalid::new("efi_x64", m))?,
            None => bios.clone(),
        };
        let bios_x64 = match i.bios_x64.as_deref() {
            Some(e) => image_name(e).map_err(|m| Invalid::new("bios_x64", m))?,
            None => efi_x64.clone(),
        };
        let mut tftp_nics = Vec::new();
        for (n, id) in i.tftp_nics.iter().enumerate() {
            tftp_nics.push(PciId::parse(id).ok_or_else(|| {
                Invalid::new(
                    format!("tftp_nics[{n}]"),
                    format!("{id:?} is not a PCI id like 8086:1229"),
                )
            })?);
        }
        if i.cmdline.contains(['\n', '\r']) {
            return Err(Invalid::new("cmdline", "must be one line"));
        }
        let mut mirrors = std::collections::BTreeMap::new();
        for (n, m) in i.mirrors.into_iter().enumerate() {
            group_name(Some(&m.group))
                .map_err(|e| Invalid::new(format!("mirrors[{n}].group"), e))?;
            let url = PublicUrl::parse(&m.url)
                .map_err(|e| Invalid::new(format!("mirrors[{n}].url"), e))?;
            if mirrors.insert(m.group.clone(), url).is_some() {
                return Err(Invalid::new(
                    format!("mirrors[{n}].group"),
                    format!("{} has a mirror already (one per group)", m.group),
                ));
            }
        }
        Ok(ImagesConfig {
            dir: i.dir,
            bios,
            efi_x64,
            bios_x64,
            cmdline: i.cmdline,
            tftp_nics,
            mirrors,
        })
    }
}

/// The `nodes:` section; its enrollment default depends on whether jobs are on (`approve`:
/// the munge key goes only to PCs an admin let in, by approval, reservation or an enrollment
/// window; `open` for a boot-only head).
fn nodes(n: wire::Nodes, jobs_on: bool) -> Checked<NodesConfig> {
    // Generated names are the prefix and six hex digits (plus "-N" if taken).
    let sample = format!("{}0a1b2c-99", n.name_prefix);
    if !valid_host_label(&sample) {
        return Err(Invalid::new(
            "name_prefix",
            format!(
                "{:?} does not make host names: use up to 50 letters, digits and '-'",
                n.name_prefix
            ),
        ));
    }
    let name_pattern = n
        .name_pattern
        .as_deref()
        .map(str::parse::<NamePattern>)
        .transpose()
        .map_err(|m| Invalid::new("name_pattern", m))?;
    if n.group.is_empty()
        || !n
            .group
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    {
        return Err(Invalid::new(
            "group",
            format!("{:?}: use letters, digits, '-' and '_'", n.group),
        ));
    }
    if n.heartbeat < Duration::from_secs(1) || n.heartbeat > Duration::from_secs(300) {
        return Err(Invalid::new("heartbeat", "must be between 1s and 5m"));
    }
    if n.lost_after <= n.heartbeat * 2 {
        return Err(Invalid::new(
            "lost_after",
            "must be more than two heartbeats",
        ));
    }
    if n.boot_token_ttl < Duration::from_secs(30) {
        return Err(Invalid::new(
            "boot_token_ttl",
            "must be at least 30s (a slow PC downloads for a while)",
        ));
    }
    at_least("max_nodes", n.max_nodes, 1)?;
    at_least("new_burst", n.new_burst as usize, 1)?;
    let enrollment = n.enrollment.unwrap_or(if jobs_on {
        Enrollment::Approve
    } else {
        Enrollment::Open
    });
    Ok(NodesConfig {
        enrollment,
        console_shell: n.console_shell,
        name_prefix: n.name_prefix,
        name_pattern,
        group: n.group,
        heartbeat: n.heartbeat,
        lost_after: n.lost_after,
        stuck_after: n.stuck_after,
        boot_token_ttl: n.boot_token_ttl,
        new_burst: n.new_burst,
        new_per_minute: n.new_per_minute,
        max_nodes: n.max_nodes,
    })
}

impl TryFrom<wire::Admin> for AdminConfig {
    type Error = Invalid;

    fn try_from(a: wire::Admin) -> Checked<AdminConfig> {
        let tls = match (a.tls_cert, a.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => return Err(Invalid::new("tls_cert", "tls_key is needed too")),
            (None, Some(_)) => return Err(Invalid::new("tls_key", "tls_cert is needed too")),
        };
        if tls.is_some() && a.listen.is_none() {
            return Err(Invalid::new("tls_cert", "only used with admin.listen"));
        }
        Ok(AdminConfig {
            public_read: a.public_read,
            listen: a.listen,
            tls,
        })
    }
}

fn jobs(j: wire::Jobs, state_dir: &std::path::Path) -> Checked<JobsConfig> {
    jobs_names(&j)?;
    if j.port == 0 || (j.port == u16::MAX && j.slurmd_port.is_none()) {
        return Err(Invalid::new(
            "port",
            "must be a port with the next one free for slurmd (or set slurmd_port)",
        ));
    }
    let def_mem_per_cpu = match &j.def_mem_per_cpu {
        wire::MemPerCpu::Mb(0) => {
            return Err(Invalid::new(
                "def_mem_per_cpu",
                "must be at least 1 (MB), or auto",
            ))
        }
        wire::MemPerCpu::Mb(n) => DefMem::Fixed(*n),
        wire::MemPerCpu::Word(w) if w == "auto" => DefMem::Auto,
        wire::MemPerCpu::Word(w) => {
            return Err(Invalid::new(
                "def_mem_per_cpu",
                format!("{w:?}: a number of MB, or auto"),
            ))
        }
    };
    jobs_durations(&j)?;
    let controller = controller(j.port, j.slurmd_port, j.external)?;
    // Not under the state folder, which is root's alone: users on the head cd into their part.
    let home = j.home.path.unwrap_or_else(|| PathBuf::from(DEFAULT_HOME));
    if !home.is_absolute() {
        return Err(Invalid::new(
            "home.path",
            "must be an absolute path (nodes mount it there)",
        ));
    }
    let users = j.users.map(job_users).transpose()?;
    if !j.run_dir.is_absolute() {
        return Err(Invalid::new("run_dir", "must be an absolute path"));
    }
    let env_dir = j.env_dir.unwrap_or_else(|| state_dir.join("envs"));
    if !env_dir.is_absolute() {
        return Err(Invalid::new("env_dir", "must be an absolute path"));
    }
    Ok(JobsConfig {
        enabled: j.enabled,
        controller,
        cluster_name: j.cluster_name,
        partition: j.partition,
        feature: j.feature,
        def_mem_per_cpu,
        mem_reserve_mb: j.mem_reserve,
        release_deadline: j.release_deadline,
        node_timeout: j.node_timeout,
        idle_release: j.idle_release,
        wake_timeout: j.wake_timeout,
        default_time: j.default_time,
        home_server: j.home.server,
        home,
        users,
        run_dir: j.run_dir,
        firewall: j.firewall,
        env_dir,
    })
}

/// Who runs slurmctld: enlist (on `port`, the nodes' slurmd on `slurmd_port`, default the
/// next port) or the site.
fn controller(
    port: u16,
    slurmd_port: Option<u16>,
    external: Option<wire::ExternalSlurm>,
) -> Checked<Controller> {
    let Some(e) = external else {
        let slurmd_port = slurmd_port.unwrap_or(port.saturating_add(1));
        if slurmd_port == port || slurmd_port == 0 {
            return Err(Invalid::new(
                "slurmd_port",
                "must be a port other than port (slurmctld's)",
            ));
        }
        return Ok(Controller::Managed { port, slurmd_port });
    };
    if e.host.is_empty() {
        return Err(Invalid::new("external.host", "name slurmctld's host"));
    }
    Ok(Controller::External {
        host: e.host,
        port: e.port,
        slurm_conf: e.slurm_conf,
        munge_key: e.munge_key,
    })
}

/// The jobs' durations, within what Slurm takes.
fn jobs_durations(j: &wire::Jobs) -> Checked<()> {
    if j.node_timeout < Duration::from_secs(10) {
        return Err(Invalid::new("node_timeout", "must be at least 10s"));
    }
    for (key, d, min) in [
        ("idle_release", j.idle_release, 10),
        ("wake_timeout", j.wake_timeout, 30),
    ] {
        if d < Duration::from_secs(min) || d > Duration::from_secs(65_000) {
            return Err(Invalid::new(key, format!("must be {min}s to 18h")));
        }
    }
    if j.default_time.is_some_and(|d| d < Duration::from_secs(60)) {
        return Err(Invalid::new(
            "default_time",
            "must be at least 1m (Slurm counts minutes)",
        ));
    }
    Ok(())
}

/// The Slurm names enlist writes into slurm.conf: plain words.
fn jobs_names(j: &wire::Jobs) -> Checked<()> {
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 40
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    };
    for (key, v) in [
        ("cluster_name", &j.cluster_name),
        ("partition", &j.partition),
        ("feature", &j.feature),
    ] {
        if !name_ok(v) {
            return Err(Invalid::new(
                key,
                format!("{v:?}: use letters, digits, '-' and '_'"),
            ));
        }
    }
    Ok(())
}

/// The configured job users: names a node's /etc/passwd takes, never root.
fn job_users(list: Vec<wire::JobUser>) -> Checked<Vec<JobUser>> {
    let mut out = vec![];
    for (i, u) in list.into_iter().enumerate() {
        let ok = !u.name.is_empty()
            && u.name.len() <= 32
            && u.name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
            && !u.name.starts_with('-');
        if !ok {
            return Err(Invalid::new(
                format!("users[{i}].name"),
                format!("{:?} is not a user name", u.name),
            ));
        }
        if u.uid == 0 {
            return Err(Invalid::new(
                format!("users[{i}].uid"),
                "root is always known; list the other users",
            ));
        }
        out.push(JobUser {
            name: u.name,
            uid: u.uid,
            gid: u.gid,
        });
    }
    Ok(out)
}
