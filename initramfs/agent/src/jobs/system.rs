//! The node's setup for the jobs: its clock (munge refuses credentials from a skewed clock),
//! the kernel modules of a modular kernel, the munge key, the accounts jobs run as, and the
//! shared home over NFSv4.

use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

use enlist_api::{GroupEntry, UserEntry};

use super::root::JobRoot;
use crate::say;

/// The munge key's folder and file (munged checks that only root can read them).
pub const MUNGE_DIR: &str = "/run/munge";
pub const MUNGE_KEY: &str = "/run/munge/munge.key";

/// Set the clock to the head's when it is more than two seconds off. A PC's clock after years
/// in a cupboard may be anything; munge allows five minutes.
#[allow(unsafe_code)] // clock_settime: no wrapper in std
pub fn set_clock(head_now: i64) -> Result<(), String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - head_now).abs() <= 2 {
        return Ok(());
    }
    let ts = libc::timespec {
        tv_sec: head_now as libc::time_t,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec, passed by pointer for the duration of the call.
    let rc = unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) };
    if rc != 0 {
        return Err(format!(
            "cannot set the clock ({} s off the head's): {}",
            now - head_now,
            std::io::Error::last_os_error()
        ));
    }
    say(&format!(
        "jobs: clock set to the head's ({} s off)",
        now - head_now
    ));
    Ok(())
}

/// Load modules by name with their dependencies (a modular kernel's `modules.dep`, in the
/// image builder's format `file: dep-file ...`). A kernel with them built in has no such
/// file, and nothing is done; a failure shows later, when the mount that needs it fails.
pub fn load_modules(names: &[&str]) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = format!("/lib/modules/{}", release.trim());
    let Ok(dep) = std::fs::read_to_string(format!("{dir}/modules.dep")) else {
        return;
    };
    let mut loaded = Vec::new();
    for name in names {
        for file in load_order(&dep, name) {
            if !loaded.contains(&file) {
                let _ = std::process::Command::new("/bin/busybox")
                    .args(["insmod", &format!("{dir}/{file}")])
                    .output();
                loaded.push(file);
            }
        }
    }
}

/// The module files to load for `name`, dependencies first (`-` and `_` are the same in
/// module names).
pub fn load_order(dep: &str, name: &str) -> Vec<String> {
    fn module_name(file: &str) -> String {
        let base = file.rsplit('/').next().unwrap_or(file);
        base.split(".ko").next().unwrap_or(base).replace('-', "_")
    }
    let table: Vec<(&str, Vec<&str>)> = dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(f, d)| (f.trim(), d.split_whitespace().collect()))
        .collect();
    fn visit(table: &[(&str, Vec<&str>)], file: &str, out: &mut Vec<String>, depth: usize) {
        if depth > 32 || out.iter().any(|f| f == file) {
            return;
        }
        if let Some((_, deps)) = table.iter().find(|(f, _)| *f == file) {
            for d in deps {
                visit(table, d, out, depth + 1);
            }
        }
        out.push(file.to_string());
    }
    let want = name.replace('-', "_");
    let mut out = Vec::new();
    if let Some((file, _)) = table.iter().find(|(f, _)| module_name(f) == want) {
        visit(&table, file, &mut out, 0);
    }
    out
}

/// The munge key, readable by root only, in a folder only root can write.
pub fn write_munge_key(root: &JobRoot, key: &[u8]) -> Result<(), String> {
    let (dir, file) = (root.path(MUNGE_DIR), root.path(MUNGE_KEY));
    let err = |e: std::io::Error| format!("{}: {e}", file.display());
    std::fs::create_dir_all(&dir).map_err(err)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    let _ = std::fs::remove_file(&file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o400)
        .open(&file)
        .map_err(err)?;
    std::io::Write::write_all(&mut f, key).map_err(err)
}

/// /etc/passwd and /etc/group: root, nobody, the job users and their groups (the same names
/// and ids as on the head, so files in the shared home belong to the same people everywhere,
/// and a job has its user's supplementary groups), in the node OS and the job root. Each
/// replaced in one rename.
pub fn write_accounts(
    root: &JobRoot,
    users: &[UserEntry],
    groups: &[GroupEntry],
    home: &str,
) -> Result<(), String> {
    let (passwd, group) = accounts(users, groups, home);
    let mut roots = vec![JobRoot::node_os()];
    if !root.is_node_os() {
        roots.push(root.clone());
    }
    for r in roots {
        for (file, text) in [
            ("/etc/passwd", &passwd),
            ("/etc/group", &group),
            ("/etc/nsswitch.conf", &NSSWITCH.to_string()),
        ] {
            let path = r.path(file);
            let tmp = path.with_extension("enlist-new");
            std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Accounts from the files the agent writes, nothing else (no LDAP client on a node).
const NSSWITCH: &str = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n";

/// The text of /etc/passwd and /etc/group for these users and groups (a user's primary group
/// that is not among `groups` gets one named after the user); each user's home is
/// `<home>/<name>` in the shared home.
pub fn accounts(users: &[UserEntry], groups: &[GroupEntry], home: &str) -> (String, String) {
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    );
    let mut group = String::from("root:x:0:\nnogroup:x:65534:\n");
    let mut gids = vec![0, 65534];
    for g in groups {
        if gids.contains(&g.gid) {
            continue;
        }
        gids.push(g.gid);
        group.push_str(&format!("{}:x:{}:{}\n", g.name, g.gid, g.members.join(",")));
    }
    for u in users {
        if u.uid == 0 || u.uid == 65534 {
            continue;
        }
        passwd.push_str(&format!(
            "{n}:x:{uid}:{gid}:{n}:{home}/{n}:/bin/sh\n",
            n = u.name,
            home = home.trim_end_matches('/'),
            uid = u.uid,
            gid = u.gid
        ));
        if !gids.contains(&u.gid) {
            gids.push(u.gid);
            group.push_str(&format!("{}:x:{}:\n", u.name, u.gid));
        }
    }
    (passwd, group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_once() {
        let dep = "kernel/fs/nfs/nfsv4.ko: kernel/fs/nfs/nfs.ko kernel/net/sunrpc/sunrpc.ko\n\
                   kernel/fs/nfs/nfs.ko: kernel/net/sunrpc/sunrpc.ko kernel/fs/lockd/lockd.ko\n\
                   kernel/net/sunrpc/sunrpc.ko:\nkernel/fs/lockd/lockd.ko: kernel/net/sunrpc/sunrpc.ko\n\
                   kernel/drivers/net/ethernet/8390/ne2k-pci.ko:\n";
        assert_eq!(
            load_order(dep, "nfsv4"),
            [
                "kernel/net/sunrpc/sunrpc.ko",
                "kernel/fs/lockd/lockd.ko",
                "kernel/fs/nfs/nfs.ko",
                "kernel/fs/nfs/nfsv4.ko"
            ]
        );
        assert_eq!(
            load_order(dep, "ne2k_pci"),
            ["kernel/drivers/net/ethernet/8390/ne2k-pci.ko"]
        );
        assert!(
            load_order(dep, "squashfs").is_empty(),
            "built in, or absent"
        );
    }

    #[test]
    fn accounts_have_root_each_user_once_and_their_groups() {
        let u = |name: &str, uid, gid| UserEntry {
            name: name.into(),
            uid,
            gid,
        };
        let groups = [GroupEntry {
            name: "render".into(),
            gid: 2000,
            members: vec!["alice".into(), "bob".into()],
        }];
        let (p, g) = accounts(
            &[
                u("alice", 1000, 1000),
                u("bob", 1001, 1000),
                u("root", 0, 0),
            ],
            &groups,
            "/srv/enlist/home/",
        );
        assert!(p.starts_with("root:x:0:0:"));
        assert!(p.contains("alice:x:1000:1000:alice:/srv/enlist/home/alice:/bin/sh\n"));
        assert!(p.contains("bob:x:1001:1000:"));
        assert_eq!(p.lines().filter(|l| l.starts_with("root:")).count(), 1);
        assert_eq!(g.matches(":1000:").count(), 1, "{g}");
        assert!(g.contains("render:x:2000:alice,bob\n"), "{g}");
    }
}
