//! `cargo xtask fuzz`: run the coverage-guided fuzz targets in `fuzz/` (cargo-fuzz, libFuzzer)
//! for a while each, seeded with the captured DHCP packets and examples of every other input,
//! and print what each did. Installs the nightly toolchain and cargo-fuzz when missing.
//!
//! A crash fails the run and leaves its input under `fuzz/artifacts/<target>/`; each one fixed
//! becomes a regression test (`tests/hostile.rs` or the module's unit tests).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};

use crate::{root, sh};

/// Every target in `fuzz/fuzz_targets`.
pub const TARGETS: [&str; 7] = [
    "dhcp",
    "tftp_packet",
    "http_range",
    "config",
    "agent_bodies",
    "boot_path",
    "text_parsers",
];

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = 600)]
    pub seconds: u64,
    /// Only these targets (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
}

/// What one target's run came to (libFuzzer's `-print_final_stats`).
#[derive(Debug, Default)]
struct Stats {
    execs: u64,
    per_sec: u64,
    corpus: usize,
    peak_rss_mb: u64,
}

fn toolchain() -> anyhow::Result<()> {
    let have = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !have {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !fuzz {
        sh(Command::new("cargo").args(["+nightly", "install", "cargo-fuzz", "--locked"]))?;
    }
    Ok(())
}

/// Seed inputs: the captured DHCP packets, and an example or two of every other input.
fn seed(corpus: &Path, target: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(corpus)?;
    let write = |name: &str, data: &[u8]| std::fs::write(corpus.join(name), data);
    match target {
        "dhcp" => {
            for e in std::fs::read_dir(root().join("tests/fixtures/dhcp"))? {
                let p = e?.path();
                if p.extension().is_some_and(|x| x == "bin") {
                    if let Some(name) = p.file_name() {
                        std::fs::copy(&p, corpus.join(name))?;
                    }
                }
            }
        }
        "tftp_packet" => {
            write(
                "rrq",
                b"\x00\x01undionly.kpxe\x00octet\x00tsize\x000\x00blksize\x001432\x00",
            )?;
            write("rrq-window", b"\x00\x01boot/52-54-00-77-01-01.ipxe\x00octet\x00windowsize\x0064\x00timeout\x001\x00")?;
            write("ack", b"\x00\x04\x00\x01")?;
            write("error", b"\x00\x05\x00\x08tsize probe\x00")?;
        }
        "http_range" => {
            // (&str, u64) from arbitrary: the string's bytes, then the length.
            for (i, r) in ["bytes=0-99", "bytes=-100", "bytes=900-", "bytes=0-1,5-6"]
                .iter()
                .enumerate()
            {
                let mut v = r.as_bytes().to_vec();
                v.extend_from_slice(&1000u64.to_le_bytes());
                write(&format!("range-{i}"), &v)?;
            }
        }
        "config" => {
            std::fs::copy(
                root().join("config.example.yaml"),
                corpus.join("example.yaml"),
            )?;
        }
        "agent_bodies" => {
            write(
                "heartbeat",
                br#"{"load1":0.5,"load5":0.1,"load15":0,"mem_free_kb":1000,"uptime_secs":3}"#,
            )?;
            write("register", br#"{"info":{"cpu_model":"Pentium II","cpu_mhz":300,"cpu_flags":["fpu"],"cores":1,"mem_total_kb":65536,"nics":[{"name":"eth0","mac":"52:54:00:77:01:01","driver":"e100"}],"ip":"10.77.0.101","kernel":"6.1","boot_method":"pxe"}}"#)?;
            write("reply", br#"{"session":"0123456789abcdef0123456789abcdef","name":"node-0a","heartbeat_secs":5,"peers":[{"name":"node-0b","ip":"10.77.0.102"}]}"#)?;
            write("result", br#"{"id":3,"ok":true,"message":"done"}"#)?;
        }
        "boot_path" => {
            write("script", b"boot/52-54-00-77-01-01.ipxe")?;
            write("initrd", b"boot/52-54-00-77-01-01/0123abcd/i586/v1/initrd")?;
            write("image", b"images/i586/20261127-1/vmlinuz")?;
            write("ipxe", b"undionly.kpxe")?;
        }
        "text_parsers" => {
            write("hostlist", b"node-[01-03,07],lab-pc-[8-9]a,x")?;
            write("scontrol", b"NodeName=node-01 Arch=i686 CPUTot=1 CPUAlloc=0 RealMemory=33 AllocMem=0 State=IDLE+DYNAMIC_NORM Partitions=enlist\nNodeName=node-02 CPUTot=4 CPUAlloc=2 RealMemory=480 AllocMem=100 State=MIXED\n")?;
            write("squeue", b"node-01\nnode-[01-02]\n")?;
            write("aliases", b"alias pci:v00008086d00001229sv*sd*bc*sc*i* e100\nalias pci:v000010ECd00008139sv*sd*bc*sc*i* 8139too\n")?;
        }
        _ => bail!("no seeds for target {target:?}"),
    }
    Ok(())
}

fn stat(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("stat::{key}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn run_target(target: &str, seconds: u64) -> anyhow::Result<Stats> {
    let fuzz = root().join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    seed(&corpus, target)?;
    eprintln!("xtask: fuzzing {target} for {seconds} s");
    // -O: the release build the head runs (dhcproto's debug_asserts are not in it), with
    // overflow checks on, so arithmetic that would wrap is found too.
    let out = Command::new("cargo")
        .current_dir(&fuzz)
        .env("CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS", "true")
        .args(["+nightly", "fuzz", "run", "-O", target])
        .arg(&corpus)
        .args([
            "--",
            &format!("-max_total_time={seconds}"),
            "-print_final_stats=1",
            "-rss_limit_mb=2048",
            "-timeout=10",
        ])
        .output()
        .with_context(|| format!("cargo fuzz run {target}"))?;
    let text = String::from_utf8_lossy(&out.stderr).to_string();
    if !out.status.success() {
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "fuzz target {target} found a crash (input in fuzz/artifacts/{target}/):\n{}",
            tail.join("\n")
        );
    }
    Ok(Stats {
        execs: stat(&text, "number_of_executed_units"),
        per_sec: stat(&text, "average_exec_per_sec"),
        corpus: std::fs::read_dir(&corpus).map(|d| d.count()).unwrap_or(0),
        peak_rss_mb: stat(&text, "peak_rss_mb"),
    })
}

pub fn run(args: FuzzArgs) -> anyhow::Result<()> {
    toolchain()?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!("unknown fuzz target {t:?}; targets: {}", TARGETS.join(", "));
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    let mut rows = vec![];
    for t in targets {
        let s = run_target(t, args.seconds)?;
        rows.push((t, s));
    }
    println!();
    println!("| target | seconds | executions | exec/s | corpus | peak RSS MB | crashes |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (t, s) in rows {
        println!(
            "| {t} | {} | {} | {} | {} | {} | 0 |",
            args.seconds, s.execs, s.per_sec, s.corpus, s.peak_rss_mb
        );
    }
    Ok(())
}
