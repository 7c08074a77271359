//! The Slurm runtime bundle: a squashfs the head built beside the node's image. It is
//! downloaded into RAM, checked against the sha256 in the head's signed descriptor, mounted
//! read-only through a loop device (it stays compressed), and linked into `/` where its
//! programs expect to be (`/usr/sbin/slurmd`, `/lib/ld-linux.so.2`, Slurm's plugin folder).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use enlist_api::BundleRef;
use sha2::{Digest, Sha256};

use crate::client::Client;
use crate::say;

/// Where the bundle file and its mount live (tmpfs: RAM).
const FILE: &str = "/run/enlist/jobs-runtime.sqfs";
const MOUNT: &str = "/run/enlist/runtime";
/// The bundle may be at most this big: a node has little RAM, and a bigger one is a mistake.
const MAX_BYTES: u64 = 64 << 20;

pub fn install(client: &Client, b: &BundleRef) -> Result<(), String> {
    if !mounted(MOUNT) {
        if b.bytes > MAX_BYTES {
            return Err(format!(
                "the Slurm runtime is {} bytes, over {MAX_BYTES}",
                b.bytes
            ));
        }
        if !matches!(file_sha256(Path::new(FILE)), Some(s) if s == b.sha256) {
            say(&format!(
                "jobs: downloading the Slurm runtime ({} KiB)",
                b.bytes / 1024
            ));
            download(client, b)?;
        }
        mount_loop(FILE, MOUNT)?;
    }
    let links = plan_links(Path::new(MOUNT), Path::new("/"))
        .map_err(|e| format!("reading the Slurm runtime: {e}"))?;
    for (link, target) in &links {
        match std::os::unix::fs::symlink(target, link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("linking {}: {e}", link.display())),
        }
    }
    Ok(())
}

fn download(client: &Client, b: &BundleRef) -> Result<(), String> {
    let mut reader = client.get(&b.url).map_err(|f| f.to_string())?;
    let part = format!("{FILE}.part");
    let mut out = std::fs::File::create(&part).map_err(|e| format!("{part}: {e}"))?;
    let mut hash = Sha256::new();
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader
            .read(&mut buf)
            .map_err(|e| format!("downloading {}: {e}", b.url))?;
        if n == 0 {
            break;
        }
        got += n as u64;
        if got > b.bytes {
            return Err(format!(
                "{}: longer than the {} bytes announced",
                b.url, b.bytes
            ));
        }
        hash.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("{part}: {e}"))?;
    }
    let sha = hex::encode(hash.finalize());
    if got != b.bytes || sha != b.sha256 {
        let _ = std::fs::remove_file(&part);
        return Err(format!(
            "{}: got {got} bytes with sha256 {sha}, expected {} bytes with {}",
            b.url, b.bytes, b.sha256
        ));
    }
    std::fs::rename(&part, FILE).map_err(|e| format!("{FILE}: {e}"))
}

fn file_sha256(path: &Path) -> Option<String> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            return Some(hex::encode(hash.finalize()));
        }
        hash.update(&buf[..n]);
    }
}

/// Whether something is mounted at `path` (per /proc/mounts).
pub fn mounted(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(path))
}

/// Mount a squashfs file read-only through a loop device (busybox sets the loop device up).
fn mount_loop(file: &str, dir: &str) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir}: {e}"))?;
    let out = Command::new("/bin/busybox")
        .args(["mount", "-t", "squashfs", "-o", "loop,ro", file, dir])
        .output()
        .map_err(|e| format!("mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cannot mount the Slurm runtime (kernel without loop or squashfs?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The symlinks that make the tree at `from` appear under `to`: a path missing under `to` is
/// linked to its counterpart (and not looked into further); a folder present in both is
/// merged entry by entry; a file already present under `to` is left alone.
pub fn plan_links(from: &Path, to: &Path) -> std::io::Result<Vec<(PathBuf, PathBuf)>> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let (src, dest) = (e.path(), to.join(e.file_name()));
        match std::fs::symlink_metadata(&dest) {
            Err(_) => out.push((dest, src)),
            Ok(m) if m.is_dir() && e.file_type()?.is_dir() => {
                out.extend(plan_links(&src, &dest)?);
            }
            Ok(_) => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("enlist-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn links_fill_what_is_missing_and_merge_folders() {
        let d = scratch("links");
        let (bundle, root) = (d.join("bundle"), d.join("root"));
        for p in [
            "usr/sbin",
            "usr/lib/i386-linux-gnu/slurm-wlm",
            "lib/i386-linux-gnu",
        ] {
            std::fs::create_dir_all(bundle.join(p)).unwrap();
        }
        std::fs::write(bundle.join("usr/sbin/slurmd"), "x").unwrap();
        std::fs::write(bundle.join("usr/sbin/udhcpc"), "bundle's").unwrap();
        std::fs::create_dir_all(root.join("usr/sbin")).unwrap();
        std::fs::write(root.join("usr/sbin/udhcpc"), "the node's").unwrap();
        let got = plan_links(&bundle, &root).unwrap();
        let want = vec![
            (root.join("lib"), bundle.join("lib")),
            (root.join("usr/lib"), bundle.join("usr/lib")),
            (root.join("usr/sbin/slurmd"), bundle.join("usr/sbin/slurmd")),
        ];
        assert_eq!(got, want, "the node's own udhcpc stays");
        for (link, target) in &got {
            std::os::unix::fs::symlink(target, link).unwrap();
        }
        assert!(
            plan_links(&bundle, &root).unwrap().is_empty(),
            "done twice is a no-op"
        );
        assert!(root.join("usr/lib/i386-linux-gnu/slurm-wlm").is_dir());
        let _ = std::fs::remove_dir_all(&d);
    }
}
