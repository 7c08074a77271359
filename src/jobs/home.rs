//! The shared home: a folder on the head that every node mounts at the same path over NFSv4,
//! so a job's input and output are where its user submitted it. Served by the kernel's NFS
//! server where the head's kernel has one, else by NFS-Ganesha (userspace); and each job
//! user's folder in it.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use crate::config::{Config, HomeServer};

use super::supervise::Daemon;
use super::{files, find, io, JobsError};

/// Which NFS server serves the home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NfsServer {
    /// The kernel's (nfs-kernel-server, run by the site; enlist writes the export).
    Kernel,
    /// NFS-Ganesha with its VFS backend, a child of the head.
    Ganesha,
}

/// Whether the kernel's NFS server is running (nfs-server.service started its threads).
fn kernel_nfsd_running() -> bool {
    std::fs::read_to_string("/proc/fs/nfsd/threads")
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|n| n > 0)
}

/// The server for `wanted`, checking what it needs is installed. `None`: no shared home.
/// `auto` is NFS-Ganesha, which the head runs itself; the kernel's server is the site's
/// service (`systemctl enable --now nfs-server`), used when asked for or when Ganesha is not
/// installed.
pub fn choose(wanted: HomeServer) -> Result<Option<NfsServer>, JobsError> {
    let ganesha = || find("ganesha.nfsd", "nfs-ganesha nfs-ganesha-vfs");
    match wanted {
        HomeServer::None => Ok(None),
        HomeServer::Kernel => {
            find("exportfs", "nfs-kernel-server")?;
            Ok(Some(NfsServer::Kernel))
        }
        HomeServer::Ganesha => {
            ganesha()?;
            Ok(Some(NfsServer::Ganesha))
        }
        HomeServer::Auto if ganesha().is_ok() => Ok(Some(NfsServer::Ganesha)),
        HomeServer::Auto => {
            find("exportfs", "nfs-kernel-server").map_err(|_| JobsError::Missing {
                program: "an NFS server for the shared home (ganesha.nfsd or exportfs)",
                package: "nfs-ganesha nfs-ganesha-vfs",
            })?;
            Ok(Some(NfsServer::Kernel))
        }
    }
}

/// The networks the home is exported to: the DHCP subnets, else the served interfaces' own.
fn clients(cfg: &Config) -> Vec<Ipv4Net> {
    let nets: Vec<Ipv4Net> = cfg.dhcp.subnets.iter().map(|s| s.subnet).collect();
    if nets.is_empty() {
        return super::served_links(cfg);
    }
    nets
}

/// Make the home folder and start serving it: Ganesha as a supervised child (returned), or
/// the kernel's server configured now.
pub fn serve(
    server: NfsServer,
    cfg: &Config,
    ganesha_dir: &Path,
    bind: Ipv4Addr,
) -> Result<Vec<Daemon>, JobsError> {
    use std::os::unix::fs::PermissionsExt;
    let home = &cfg.jobs.home;
    std::fs::create_dir_all(home).map_err(io(home))?;
    let envs = &cfg.jobs.env_dir;
    std::fs::create_dir_all(envs).map_err(io(envs))?;
    // Nodes walk into it as nobody (root is squashed).
    std::fs::set_permissions(envs, std::fs::Permissions::from_mode(0o755)).map_err(io(envs))?;
    let nets = clients(cfg);
    match server {
        NfsServer::Ganesha => Ok(vec![ganesha(home, envs, &nets, ganesha_dir, bind)?]),
        NfsServer::Kernel => {
            kernel_exports(home, envs, &nets)?;
            Ok(vec![])
        }
    }
}

/// Ganesha, configured to export the home and the job environments.
fn ganesha(
    home: &Path,
    envs: &Path,
    nets: &[Ipv4Net],
    ganesha_dir: &Path,
    bind: Ipv4Addr,
) -> Result<Daemon, JobsError> {
    let recovery = ganesha_dir.join("recovery");
    std::fs::create_dir_all(&recovery).map_err(io(&recovery))?;
    let conf_path = ganesha_dir.join("ganesha.conf");
    let conf = files::ganesha_conf(&files::HomeExport {
        path: home,
        envs,
        bind,
        clients: nets,
        recovery: &recovery,
    });
    std::fs::write(&conf_path, conf).map_err(io(&conf_path))?;
    let p = |x: &Path| x.display().to_string();
    Ok(Daemon {
        name: "ganesha.nfsd",
        program: find("ganesha.nfsd", "nfs-ganesha nfs-ganesha-vfs")?,
        args: vec![
            "-F".into(),
            "-f".into(),
            p(&conf_path),
            "-L".into(),
            p(&ganesha_dir.join("ganesha.log")),
            "-p".into(),
            p(&ganesha_dir.join("ganesha.pid")),
        ],
        env: vec![],
        log: ganesha_dir.join("ganesha.out"),
    })
}

/// The kernel's NFS server: the home read-write, the job environments read-only.
fn kernel_exports(home: &Path, envs: &Path, nets: &[Ipv4Net]) -> Result<(), JobsError> {
    let exports = Path::new("/etc/exports.d/enlist.exports");
    let opts: Vec<String> = nets
        .iter()
        // root_squash: uid 0 from a node is nobody here.
        .map(|n| format!("{n}(rw,sync,no_subtree_check,root_squash)"))
        .collect();
    if let Some(dir) = exports.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let ro: Vec<String> = nets
        .iter()
        .map(|n| format!("{n}(ro,sync,no_subtree_check,root_squash)"))
        .collect();
    let text = format!(
        "# Written by enlist at every start\n{} {}\n{} {}\n",
        home.display(),
        opts.join(" "),
        envs.display(),
        ro.join(" ")
    );
    std::fs::write(exports, text).map_err(io(exports))?;
    let exportfs = find("exportfs", "nfs-kernel-server")?;
    let st = std::process::Command::new(&exportfs)
        .arg("-ra")
        .status()
        .map_err(io(&exportfs))?;
    if !st.success() {
        tracing::warn!(
            "jobs: exportfs -ra exited with {st}; check {}",
            exports.display()
        );
    }
    if !kernel_nfsd_running() {
        tracing::warn!("jobs: the kernel's NFS server is not running, so nodes cannot mount the shared home: systemctl enable --now nfs-server");
    }
    Ok(())
}

/// Each job user's folder in the home (`<home>/<name>`, theirs, 0700), made if missing: a
/// node's root is nobody on the home (root_squash), so only the head can make them.
pub fn user_homes(home: &Path, users: &[enlist_api::UserEntry]) -> Result<(), JobsError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::create_dir_all(home).map_err(io(home))?;
    std::fs::set_permissions(home, std::fs::Permissions::from_mode(0o755)).map_err(io(home))?;
    for u in users {
        let dir = home.join(&u.name);
        if dir.exists() {
            continue;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        nix::unistd::chown(
            &dir,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .map_err(|e| io(&dir)(e.into()))?;
        tracing::info!(user = %u.name, dir = %dir.display(), "jobs: made the user's home");
    }
    Ok(())
}
