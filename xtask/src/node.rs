//! Node OS artefacts: Debian packages, the cross-built agent, and the images.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use clap::Subcommand;
use sha2::{Digest, Sha256};

use crate::{build_head, enlist_bin, root, sh};

#[derive(Subcommand, Clone, Copy)]
pub enum NodeTask {
    /// Download the kernel and busybox packages (i386 and amd64) and check their sha256.
    Fetch,
    /// Cross-build the agent for i586 (Pentium II, no SSE2) and x86_64.
    Agent,
    /// Build the i586 and x86_64 images with `enlist image build`.
    Images,
    /// All of the above.
    All,
    /// Show that the i586 agent has no SSE/SSE2 code outside glibc's run-time variants.
    CheckSse,
}

pub fn run(t: NodeTask) -> anyhow::Result<()> {
    match t {
        NodeTask::Fetch => fetch(),
        NodeTask::Agent => agent(),
        NodeTask::Images => images(),
        NodeTask::CheckSse => check_sse(),
        NodeTask::All => {
            fetch()?;
            agent()?;
            images()
        }
    }
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let o = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

/// The concrete package a metapackage depends on (the kernel ABI changes with point releases).
fn resolve_kernel(meta: &str, suffix: &str) -> anyhow::Result<String> {
    let deps = output(Command::new("apt-cache").args(["depends", meta]))?;
    let dep = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|d| d.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache depends {meta}: no linux-image dependency"))?;
    let name = dep.split(':').next().unwrap_or(dep);
    Ok(format!("{name}{suffix}"))
}

/// Version and SHA256 the (signed) apt index gives for `pkg` (name:arch).
fn index_record(pkg: &str) -> anyhow::Result<(String, String)> {
    let show = output(Command::new("apt-cache").args(["show", "--no-all-versions", pkg]))?;
    let field = |k: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(k).map(|v| v.trim().to_string()))
            .with_context(|| format!("apt-cache show {pkg}: no {k}"))
    };
    Ok((field("Version:")?, field("SHA256:")?))
}

fn fetch_into(dir: &Path, arch: &str, pkgs: &[String]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut lock = String::new();
    for pkg in pkgs {
        let full = format!("{pkg}:{arch}");
        let (version, sha) = index_record(&full)?;
        let base = pkg.as_str();
        // Remove other versions so the recipe's pattern matches exactly one file.
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with(&format!("{base}_")) && !name.contains(&version.replace(':', "%3a"))
            {
                std::fs::remove_file(e.path())?;
            }
        }
        let have = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .map(|n| n.to_string_lossy().starts_with(&format!("{base}_")))
                    .unwrap_or(false)
            });
        let file = match have {
            Some(f) => f,
            None => {
                sh(Command::new("apt-get")
                    .current_dir(dir)
                    .args(["download", &format!("{full}={version}")]))?;
                std::fs::read_dir(dir)?
                    .filter_map(|e| e.ok())
                    .map(|e| e.path())
                    .find(|p| {
                        p.file_name()
                            .map(|n| n.to_string_lossy().starts_with(&format!("{base}_")))
                            .unwrap_or(false)
                    })
                    .with_context(|| format!("apt-get download {full} left no file"))?
            }
        };
        let got = hex::encode(Sha256::digest(std::fs::read(&file)?));
        if got != sha {
            std::fs::remove_file(&file)?;
            bail!(
                "{}: sha256 {got} does not match the apt index ({sha}); deleted it, run again",
                file.display()
            );
        }
        eprintln!("xtask: {full} {version} sha256 ok");
        lock.push_str(&format!("{full}={version} sha256:{sha}\n"));
    }
    std::fs::write(dir.join("PINNED"), lock)?;
    Ok(())
}

fn fetch() -> anyhow::Result<()> {
    let cache = root().join("images/cache");
    let k686 = resolve_kernel("linux-image-686:i386", "-unsigned")?;
    fetch_into(
        &cache.join("i386"),
        "i386",
        &[k686, "busybox-static".into()],
    )?;
    let k64 = resolve_kernel("linux-image-amd64", "")?;
    fetch_into(
        &cache.join("amd64"),
        "amd64",
        &[k64, "busybox-static".into()],
    )?;
    Ok(())
}

pub fn agent_path(target: &str) -> PathBuf {
    root().join(format!("target/node/{target}/node/enlist-agent"))
}

/// `cargo build` of the agent for `target` with the size-tuned `node` profile, static so it
/// needs no libc on the node. The i586 build targets the Pentium II (MMX, no SSE/SSE2).
fn agent_build(target: &str, target_dir: &str) -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(root())
        .args([
            "build",
            "--profile",
            "node",
            "--target",
            target,
            "-p",
            "enlist-agent",
        ])
        .args(["--target-dir", target_dir]);
    if target.starts_with("i586") {
        c.env("CARGO_TARGET_I586_UNKNOWN_LINUX_GNU_LINKER", "gcc")
            .env(
                "RUSTFLAGS",
                "-C target-cpu=pentium2 -C target-feature=+crt-static -C link-arg=-m32",
            );
    } else {
        c.env("RUSTFLAGS", "-C target-feature=+crt-static");
    }
    c
}

fn agent() -> anyhow::Result<()> {
    sh(&mut agent_build("i586-unknown-linux-gnu", "target/node"))?;
    sh(&mut agent_build("x86_64-unknown-linux-gnu", "target/node"))?;
    let i586 = agent_path("i586-unknown-linux-gnu");
    let v = output(
        Command::new("qemu-i386")
            .args(["-cpu", "pentium2"])
            .arg(&i586)
            .arg("--version"),
    )?;
    eprintln!(
        "xtask: {} on qemu-i386 -cpu pentium2: {}",
        i586.display(),
        v.trim()
    );
    Ok(())
}

fn images() -> anyhow::Result<()> {
    build_head()?;
    for r in ["images/i586.yaml", "images/x86_64.yaml"] {
        sh(Command::new(enlist_bin())
            .current_dir(root())
            .args(["image", "build", r]))?;
    }
    Ok(())
}

/// Disassemble an unstripped i586 build of the agent and list every function that touches an
/// SSE register. glibc's string functions have SSE2 variants that it only selects at run time on
/// CPUs that have SSE2 (IFUNC); everything else, our code included, must have none.
pub fn check_sse() -> anyhow::Result<()> {
    let dir = "target/node-check";
    sh(agent_build("i586-unknown-linux-gnu", dir).env("CARGO_PROFILE_NODE_STRIP", "false"))?;
    let bin = root()
        .join(dir)
        .join("i586-unknown-linux-gnu/node/enlist-agent");
    let asm = output(
        Command::new("objdump")
            .args(["-d", "--no-show-raw-insn"])
            .arg(&bin),
    )?;
    let mut func = String::new();
    let mut ours = std::collections::BTreeSet::new();
    let mut glibc_variants = std::collections::BTreeSet::new();
    for line in asm.lines() {
        if let Some(name) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .map(|(_, n)| n)
        {
            func = name.to_string();
        } else if line.contains("%xmm") {
            let variant = ["sse2", "ssse3", "sse4", "avx", "evex"]
                .iter()
                .any(|v| func.contains(v));
            if variant {
                glibc_variants.insert(func.clone());
            } else {
                ours.insert(func.clone());
            }
        }
    }
    println!("SSE register use in {}:", bin.display());
    println!(
        "  glibc run-time-selected variants (never run on a Pentium II): {}",
        glibc_variants.len()
    );
    println!("  other functions: {}", ours.len());
    for f in &ours {
        println!("    {f}");
    }
    if !ours.is_empty() {
        bail!(
            "{} functions outside glibc's SSE variants use SSE registers",
            ours.len()
        );
    }
    Ok(())
}
