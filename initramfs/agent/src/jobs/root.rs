//! Where munged, slurmd and so every job step run: the node OS itself (`/`, with the Slurm
//! runtime bundle linked in: busybox only), or a job root made from the head's job
//! environment, a Debian userland the node mounts read-only over NFS: the `/` of the daemons'
//! own mount namespace ([`JobRoot::command`]).
//!
//! A job root lives in RAM at `/run/enlist/root-<version>`: `/usr` (and `/opt`) are the
//! environment's, bound read-only; `/etc` is a copy (small, and the node writes its accounts
//! there); `/bin`, `/lib`, `/sbin` are the environment's merged-/usr links; `/tmp`, `/var` and
//! `/run` are empty folders in RAM; `/dev`, `/proc` and `/sys` are the node's; the shared home
//! is mounted at its path inside (and `/home` leads there).

use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use enlist_api::{EnvMount, HomeMount};

use crate::say;

/// Where the environment is mounted.
const ENV: &str = "/run/enlist/env";
/// Written last into a finished job root: an agent restarted by init keeps it.
const DONE: &str = ".enlist-root";

/// The folder the Slurm daemons see as `/`.
#[derive(Debug, Clone)]
pub struct JobRoot {
    dir: PathBuf,
}

impl JobRoot {
    /// The node OS itself.
    pub fn node_os() -> JobRoot {
        JobRoot { dir: "/".into() }
    }

    pub fn is_node_os(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// A path as the daemons see it, as the agent reaches it.
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p.trim_start_matches('/'))
    }

    /// A program of the root (an absolute path in it), to be run in it: in a mount namespace
    /// of its own whose `/` is the job root ([`enter`]).
    #[allow(unsafe_code)] // pre_exec: the child's namespace set-up, between fork and exec
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        if self.is_node_os() {
            return c;
        }
        let dir = CString::new(self.dir.as_os_str().as_encoded_bytes()).unwrap_or_default();
        // SAFETY: `enter` makes only system calls (async-signal-safe) on a string made
        // before the fork.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut c, move || enter(&dir));
        }
        c
    }
}

/// Make `dir` the calling process's `/` in a new mount namespace, so that what Slurm does
/// with namespaces stays in the job root: a job's private /tmp (job_container/tmpfs) is a
/// namespace every step of the job joins by setns(2), which puts a process at its
/// namespace's root. In a chroot that root is the node OS's, and the job would run there;
/// here it is the job root. The node OS runs from its initramfs, which pivot_root(2)
/// refuses, so this is switch_root's way: the job root, bound onto itself with what is
/// mounted in it, is moved onto `/`, and the process chroots into it.
#[allow(unsafe_code)] // unshare, mount, chroot: no wrapper in std
fn enter(dir: &CString) -> std::io::Result<()> {
    let none = std::ptr::null::<libc::c_char>();
    let (root, dot) = (c"/".as_ptr(), c".".as_ptr());
    let ok = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: system calls on NUL-terminated strings that outlive them.
    unsafe {
        ok(libc::unshare(libc::CLONE_NEWNS))?;
        ok(libc::mount(
            none,
            root,
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        let bind = libc::MS_BIND | libc::MS_REC;
        ok(libc::mount(
            dir.as_ptr(),
            dir.as_ptr(),
            none,
            bind,
            std::ptr::null(),
        ))?;
        ok(libc::chdir(dir.as_ptr()))?;
        ok(libc::mount(
            dot,
            root,
            none,
            libc::MS_MOVE,
            std::ptr::null(),
        ))?;
        ok(libc::chroot(dot))?;
        ok(libc::chdir(root))
    }
}

/// Mount the environment and make the job root from it (or keep the one made before).
pub fn prepare(env: &EnvMount) -> Result<JobRoot, String> {
    let root = JobRoot {
        dir: PathBuf::from(format!("/run/enlist/root-{}", env.version)),
    };
    if root.path(DONE).exists() {
        return Ok(root);
    }
    if !super::runtime::mounted(ENV) {
        mount(
            Some(&format!("{}:{}", env.server, env.path)),
            ENV,
            Some("nfs4"),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            &nfs_options(&env.server),
        )
        .map_err(|e| {
            format!(
                "cannot mount the job environment {}:{}: {e}",
                env.server, env.path
            )
        })?;
    }
    build(Path::new(ENV), &root)?;
    let done = root.path(DONE);
    std::fs::write(&done, &env.version).map_err(|e| format!("{}: {e}", done.display()))?;
    say(&format!("jobs: job environment {} ready", env.version));
    Ok(root)
}

/// What the environment's top-level entries become in the job root.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// The same symbolic link (merged /usr: bin -> usr/bin).
    Link(PathBuf),
    /// Bound read-only from the environment.
    Bind,
    /// Copied into RAM.
    Copy,
    /// An empty folder in RAM, with this mode.
    Empty(u32),
    /// The node's own, bound.
    Node,
}

/// How each top-level entry of the environment is made.
pub fn plan(name: &str, link: Option<PathBuf>) -> Entry {
    if let Some(target) = link {
        return Entry::Link(target);
    }
    match name {
        "usr" | "opt" => Entry::Bind,
        "etc" => Entry::Copy,
        "tmp" => Entry::Empty(0o1777),
        "dev" | "proc" | "sys" => Entry::Node,
        "root" => Entry::Empty(0o700),
        _ => Entry::Empty(0o755),
    }
}

fn build(env: &Path, root: &JobRoot) -> Result<(), String> {
    let e = |p: &Path| {
        let p = p.to_path_buf();
        move |err: std::io::Error| format!("{}: {err}", p.display())
    };
    std::fs::create_dir_all(&root.dir).map_err(e(&root.dir))?;
    let entries = std::fs::read_dir(env).map_err(e(env))?;
    for entry in entries {
        let entry = entry.map_err(e(env))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (from, to) = (entry.path(), root.dir.join(&name));
        let link = std::fs::read_link(&from).ok();
        match plan(&name, link) {
            Entry::Link(target) => {
                if std::fs::symlink_metadata(&to).is_err() {
                    std::os::unix::fs::symlink(&target, &to).map_err(e(&to))?;
                }
            }
            Entry::Bind => {
                std::fs::create_dir_all(&to).map_err(e(&to))?;
                bind(&from, &to)?;
            }
            Entry::Copy => copy_tree(&from, &to)?,
            Entry::Empty(mode) => {
                std::fs::create_dir_all(&to).map_err(e(&to))?;
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                    .map_err(e(&to))?;
            }
            Entry::Node => {
                std::fs::create_dir_all(&to).map_err(e(&to))?;
                bind(Path::new("/").join(&name).as_path(), &to)?;
            }
        }
    }
    for (dir, mode) in [
        ("var/spool/slurmd", 0o755),
        ("var/log", 0o755),
        ("var/lib", 0o755),
        ("var/tmp", 0o1777),
        ("run/lock", 0o1777),
    ] {
        let p = root.path(dir);
        std::fs::create_dir_all(&p).map_err(e(&p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).map_err(e(&p))?;
    }
    // The node's name and resolver, as the node OS has them.
    for f in ["etc/hosts", "etc/resolv.conf", "etc/hostname"] {
        let _ = std::fs::copy(Path::new("/").join(f), root.path(f));
    }
    Ok(())
}

/// The shared home inside the job root (at its path, and `/home` leading there when the
/// path is another).
pub fn link_home(root: &JobRoot, home: &str) -> Result<(), String> {
    if root.is_node_os() || home == "/home" {
        return Ok(());
    }
    let link = root.path("/home");
    if std::fs::read_link(&link).is_ok() {
        return Ok(());
    }
    let _ = std::fs::remove_dir(&link);
    std::os::unix::fs::symlink(home, &link).map_err(|e| format!("{}: {e}", link.display()))
}

/// Copy a folder (files, links, folders with their modes); what the node cannot read (the
/// export squashes root) is left out and counted.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let mut skipped = 0;
    copy_dir(from, to, &mut skipped)?;
    if skipped > 0 {
        say(&format!(
            "jobs: {skipped} files of the environment's {} are not readable by a node; left out",
            from.display()
        ));
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path, skipped: &mut usize) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(from).map_err(|e| format!("{}: {e}", from.display()))?;
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    let _ = std::fs::set_permissions(
        to,
        std::fs::Permissions::from_mode(meta.permissions().mode()),
    );
    let Ok(entries) = std::fs::read_dir(from) else {
        *skipped += 1;
        return Ok(());
    };
    for entry in entries.flatten() {
        let (src, dest) = (entry.path(), to.join(entry.file_name()));
        let Ok(ft) = entry.file_type() else { continue };
        if ft.is_symlink() {
            if let Ok(target) = std::fs::read_link(&src) {
                let _ = std::fs::remove_file(&dest);
                let _ = std::os::unix::fs::symlink(target, &dest);
            }
        } else if ft.is_dir() {
            copy_dir(&src, &dest, skipped)?;
        } else if ft.is_file() && std::fs::copy(&src, &dest).is_err() {
            *skipped += 1;
        }
    }
    Ok(())
}

fn bind(from: &Path, to: &Path) -> Result<(), String> {
    if super::runtime::mounted(&to.display().to_string()) {
        return Ok(());
    }
    let from_s = from.display().to_string();
    mount(
        Some(&from_s),
        &to.display().to_string(),
        None,
        libc::MS_BIND | libc::MS_REC,
        "",
    )
    .map_err(|e| format!("cannot bind {} to {}: {e}", from.display(), to.display()))
}

/// mount(2).
#[allow(unsafe_code)] // no wrapper in std; busybox's mount would take nfs4 for NFSv3
pub fn mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), std::io::Error> {
    let c = |s: &str| {
        CString::new(s).map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL"))
    };
    std::fs::create_dir_all(target)?;
    let source = c(source.unwrap_or("none"))?;
    let target = c(target)?;
    let fstype = fstype.map(c).transpose()?;
    let data = c(data)?;
    // SAFETY: NUL-terminated strings that live across the call (a null fstype for binds).
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's NFS options for a mount from `server` (the kernel's own parser: the
/// server's address must be given, mount.nfs would resolve it): NFSv4.0 over TCP (no
/// portmapper, no lock daemon), hard with short retries, so a job waits out a head restart.
pub fn nfs_options(server: &str) -> String {
    format!("vers=4.0,addr={server},clientaddr=0.0.0.0,proto=tcp,hard,timeo=50,retrans=4")
}

/// Mount the shared home at its path in the job root, nosuid and nodev.
pub fn mount_home(root: &JobRoot, h: &HomeMount) -> Result<(), String> {
    let target = root.path(&h.path).display().to_string();
    if !super::runtime::mounted(&target) {
        // No set-user-ID programs and no device files from a file server every user writes to.
        mount(
            Some(&format!("{}:{}", h.server, h.path)),
            &target,
            Some("nfs4"),
            libc::MS_NOSUID | libc::MS_NODEV,
            &nfs_options(&h.server),
        )
        .map_err(|e| format!("cannot mount the shared home {}:{}: {e}", h.server, h.path))?;
        say(&format!("jobs: shared home {} mounted", h.path));
    }
    link_home(root, &h.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_bound_copied_or_left_empty_by_entry() {
        assert_eq!(
            plan("bin", Some("usr/bin".into())),
            Entry::Link("usr/bin".into())
        );
        assert_eq!(plan("usr", None), Entry::Bind, "read-only, not in RAM");
        assert_eq!(
            plan("etc", None),
            Entry::Copy,
            "the node writes its accounts"
        );
        assert_eq!(plan("tmp", None), Entry::Empty(0o1777));
        assert_eq!(
            plan("var", None),
            Entry::Empty(0o755),
            "no dpkg database in RAM"
        );
        assert_eq!(plan("proc", None), Entry::Node);
    }

    #[test]
    fn paths_are_seen_through_the_root() {
        let r = JobRoot {
            dir: "/run/enlist/root-v1".into(),
        };
        assert_eq!(
            r.path("/run/munge/munge.key"),
            Path::new("/run/enlist/root-v1/run/munge/munge.key")
        );
        assert_eq!(
            JobRoot::node_os().path("/run/slurmd.pid"),
            Path::new("/run/slurmd.pid")
        );
        // The program is the root's: found once the process is in it.
        assert_eq!(
            r.command("/usr/sbin/slurmd").get_program(),
            "/usr/sbin/slurmd"
        );
    }
}
