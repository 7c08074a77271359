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
        sh(Command::new("apt-get").args(["update", "-q"]))?;
    }
    if !missing.is_empty() {
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing))?;
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
