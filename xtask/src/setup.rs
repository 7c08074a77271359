//! `cargo xtask setup`: install missing apt packages (one list: `enlist_lab::APT_PACKAGES`) and
//! the rustup target for the Pentium II agent.

use std::process::Command;

use anyhow::Context;

use crate::sh;

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn have_command(c: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {c}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// How often `apt-get update` is tried before set-up goes on with the indexes it has.
const APT_UPDATE_TRIES: u32 = 3;

/// `apt-get update`, tried again when an index fails (a mirror re-syncing answers with a file of
/// the wrong size for a few minutes). If it still fails, set-up goes on: the packages may well be
/// installable from the indexes that did download, and the install says so if they are not.
/// Returns the indexes that failed, for the report.
pub fn apt_update() -> Vec<String> {
    apt_update_in(None)
}

/// The same, in the Debian root `chroot` if given (the package install test's clean root).
pub fn apt_update_in(chroot: Option<&std::path::Path>) -> Vec<String> {
    let mut failed = Vec::new();
    for attempt in 1..=APT_UPDATE_TRIES {
        eprintln!("xtask: apt-get update -q (try {attempt} of {APT_UPDATE_TRIES})");
        let mut cmd = match chroot {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg("apt-get");
                c
            }
            None => Command::new("apt-get"),
        };
        let out = cmd
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["update", "-q"])
            .output();
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                failed = vec![format!("apt-get could not run: {e}")];
                break;
            }
        };
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        failed = failed_indexes(&text);
        if out.status.success() && failed.is_empty() {
            return vec![];
        }
        if failed.is_empty() {
            failed.push(format!("apt-get update exited with {}", out.status));
        }
        if attempt < APT_UPDATE_TRIES {
            std::thread::sleep(std::time::Duration::from_secs(5 * u64::from(attempt)));
        }
    }
    eprintln!(
        "xtask: warning: apt-get update failed for {} index(es) after {APT_UPDATE_TRIES} tries; \
         going on with the indexes that did download:",
        failed.len()
    );
    for f in &failed {
        eprintln!("xtask:   skipped: {f}");
    }
    failed
}

/// The `E: Failed to fetch URL ...` / `Err:N URL` lines of `apt-get update`: one per index.
pub fn failed_indexes(output: &str) -> Vec<String> {
    let mut out: Vec<String> = output
        .lines()
        .filter_map(|l| l.strip_prefix("E: Failed to fetch "))
        .map(|l| l.split_whitespace().next().unwrap_or(l).to_string())
        .collect();
    if out.is_empty() {
        out = output
            .lines()
            .filter(|l| l.starts_with("Err:"))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .collect();
    }
    out.dedup();
    out
}

pub fn setup() -> anyhow::Result<()> {
    let mut missing: Vec<&str> = enlist_lab::APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    for (cmd, pkg) in enlist_lab::APT_IF_MISSING {
        if !have_command(cmd) {
            missing.push(pkg);
        }
    }
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .context("dpkg")?;
    let has_i386 = String::from_utf8_lossy(&foreign.stdout).contains("i386");
    if !has_i386 {
        // The node OS's kernel and busybox are i386 packages (downloaded, not installed).
        sh(Command::new("dpkg").args(["--add-architecture", "i386"]))?;
    }
    if !missing.is_empty() || !has_i386 {
        apt_update();
    }
    if !missing.is_empty() {
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))
        .context("installing the packages the project needs (see the apt-get update warnings above, if any)")?;
    }
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("rustup")?;
    if !String::from_utf8_lossy(&targets.stdout).contains("i586-unknown-linux-gnu") {
        sh(Command::new("rustup").args(["target", "add", "i586-unknown-linux-gnu"]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::failed_indexes;

    #[test]
    fn names_the_index_a_resyncing_mirror_broke() {
        let out = "Get:1 http://deb.debian.org/debian bookworm InRelease [151 kB]
Err:8 http://deb.debian.org/debian-security bookworm-security/main i386 Packages
  File has unexpected size (346968 != 368052). Mirror sync in progress? [IP: 203.0.113.80 80]
E: Failed to fetch http://deb.debian.org/debian-security/dists/bookworm-security/main/binary-i386/Packages.xz  File has unexpected size (346968 != 368052). Mirror sync in progress?
E: Some index files failed to download. They have been ignored, or old ones used instead.
";
        assert_eq!(
            failed_indexes(out),
            vec!["http://deb.debian.org/debian-security/dists/bookworm-security/main/binary-i386/Packages.xz"]
        );
        assert!(failed_indexes("Get:1 ok\nReading package lists...\n").is_empty());
    }
}
