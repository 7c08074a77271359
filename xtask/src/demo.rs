//! `cargo xtask demo` and `cargo xtask lab ...`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use enlist_lab::{Lab, Profile, JOBS_CONFIG};
use nix::sys::signal::{SigSet, Signal};

use crate::{build_floppy, enlist_bin, node, root, setup};

#[derive(Subcommand)]
pub enum LabTask {
    /// Start a lab (head + PCs) in namespace NAME and keep it running until Ctrl-C.
    Up {
        #[arg(long, default_value = "enlist-lab")]
        name: String,
        /// PCs to boot, by profile: p2-pxe, p2-floppy, x64-pxe, x64-uefi.
        #[arg(long, value_delimiter = ',', default_value = "p2-pxe")]
        pcs: Vec<String>,
        /// `dhcp` (head is the DHCP server) or `proxy` (dnsmasq hands out addresses).
        #[arg(long, default_value = "dhcp")]
        mode: String,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Leave Slurm, munge and the shared home off (the head only boots PCs).
        #[arg(long)]
        no_jobs: bool,
    },
    /// Add a PC to a running lab (`lab up` in another terminal).
    Boot {
        #[arg(long, default_value = "enlist-lab")]
        name: String,
        /// p2-pxe, p2-floppy, p2-floppy-rtl8139, p2-floppy-tulip, p2-usb, p2-pxe-vmxnet3,
        /// x64-pxe, x64-pxe-e1000e, x64-uefi.
        profile: String,
    },
    /// Remove a lab's processes and namespace (also after a crash).
    Down {
        #[arg(long, default_value = "enlist-lab")]
        name: String,
    },
}

fn lab_dir(name: &str) -> PathBuf {
    root().join("lab").join(name)
}

pub fn lab(t: LabTask) -> anyhow::Result<()> {
    match t {
        LabTask::Up {
            name,
            pcs,
            mode,
            port,
            no_jobs,
        } => {
            let profiles = pcs
                .iter()
                .map(|p| Profile::parse(p).ok_or_else(|| anyhow!("unknown profile {p:?}")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            run_lab(&name, &profiles, &mode, port, !no_jobs)
        }
        LabTask::Boot { name, profile } => {
            let p =
                Profile::parse(&profile).ok_or_else(|| anyhow!("unknown profile {profile:?}"))?;
            let mut lab = Lab::attach(&name, &lab_dir(&name))
                .map_err(|e| anyhow!("lab {name} is not running? {e}"))?;
            let i = lab.boot(p, Some(&disk_for(p))).map_err(|e| anyhow!(e))?;
            println!(
                "{} ({}) booting; console: {}",
                lab.pcs[i].name,
                lab.pcs[i].mac,
                lab.pcs[i].serial.display()
            );
            // The PC keeps running with the lab; `lab down` (or Ctrl-C on `lab up`) removes it.
            std::mem::forget(lab);
            Ok(())
        }
        LabTask::Down { name } => {
            Lab::cleanup(&name);
            eprintln!("xtask: lab {name} removed");
            Ok(())
        }
    }
}

pub fn demo(port: u16) -> anyhow::Result<()> {
    setup::setup()?;
    node::run(node::NodeTask::All)?;
    build_floppy()?;
    run_lab(
        "enlist-demo",
        &[Profile::P2Pxe, Profile::P2Floppy, Profile::X64Pxe],
        "dhcp",
        port,
        true,
    )
}

fn run_lab(
    name: &str,
    profiles: &[Profile],
    mode: &str,
    port: u16,
    jobs: bool,
) -> anyhow::Result<()> {
    // Block SIGINT/SIGTERM here and wait for them below, so Ctrl-C ends in an orderly teardown
    // (Lab's Drop). Children get a clean signal mask from std::process.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGINT);
    sigs.add(Signal::SIGTERM);
    sigs.thread_block().context("blocking signals")?;

    let dir = lab_dir(name);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(name, &dir).map_err(|e| anyhow!(e))?;
    if mode == "proxy" {
        lab.spawn(lab.campus_dhcp()).map_err(|e| anyhow!(e))?;
    }
    let config = lab
        .write_config(
            mode,
            &root().join("images/out"),
            if jobs { JOBS_CONFIG } else { "" },
        )
        .map_err(|e| anyhow!(e))?;
    let password = Command::new(enlist_bin())
        .args(["admin", "set-password", "--random", "--config"])
        .arg(&config)
        .output()
        .context("setting the admin password")?;
    let password = String::from_utf8_lossy(&password.stdout).trim().to_string();
    if jobs {
        enlist_lab::ensure_job_user().map_err(|e| anyhow!("the lab's job user: {e}"))?;
    }
    lab.start_head(&enlist_bin(), &config)
        .map_err(|e| anyhow!("{e}\n{}", lab.head_log()))?;
    if jobs {
        // With jobs on, a new PC joins (and gets the cluster's munge key) only when an
        // admin lets it in: here, an enrollment window while the lab's PCs boot.
        let said = lab.enroll(&enlist_bin(), "30m").map_err(|e| anyhow!(e))?;
        println!("$ enlist enroll --for 30m\n{}", said.trim());
    }
    crate::proxy::start(name, port, "10.77.0.1:8080")?;
    for p in profiles {
        lab.boot(*p, Some(&disk_for(*p))).map_err(|e| anyhow!(e))?;
    }
    println!();
    println!(
        "  enlist lab {name} is running ({} PCs booting; mode {mode})",
        profiles.len()
    );
    println!("  dashboard:  http://127.0.0.1:{port}/");
    println!("  login:      password {password}");
    println!("  head log:   {}", dir.join("head.log").display());
    println!("  consoles:   {}/*.serial.log", dir.display());
    if jobs {
        println!(
            "  slurm:      sudo ip netns exec {name} runuser -u {} -- env SLURM_CONF={} sinfo",
            enlist_lab::JOB_USER,
            lab.slurm_conf().display()
        );
        println!("  home:       {}", lab.user_home().display());
    }
    println!("  Ctrl-C stops everything and cleans up.");
    println!();
    let mut shown = !jobs;
    // Report state changes until a signal arrives.
    let mut last = Vec::new();
    loop {
        let states: Vec<String> = lab
            .pcs
            .iter()
            .map(|pc| {
                format!(
                    "{} {}",
                    pc.name,
                    lab.node_state(&pc.mac).unwrap_or_else(|| "-".into())
                )
            })
            .collect();
        if states != last {
            println!("  {}", states.join(" | "));
            last = states;
        }
        if !shown && lab.slurm_idle() >= profiles.len() {
            shown = true;
            if let Err(e) = first_jobs(&lab, profiles.len()) {
                println!("  jobs: {e:#}");
            }
        }
        if let Ok(Some(sig)) = wait_signal(&sigs, Duration::from_secs(2)) {
            eprintln!("xtask: {sig:?}: tearing the lab down");
            break;
        }
    }
    drop(lab);
    Ok(())
}

/// A Slurm tool on the head, as its admin runs it (in the lab's namespace).
fn slurm(lab: &Lab, program: &str, args: &[&str]) -> anyhow::Result<String> {
    lab.slurm_out(program, args).map_err(|e| anyhow!(e))
}

/// A Slurm tool on the head, as the lab's job user runs it (jobs write into its home).
fn as_user(lab: &Lab, program: &str, args: &[&str]) -> anyhow::Result<String> {
    lab.slurm_user_out(program, args).map_err(|e| anyhow!(e))
}

/// Once the PCs are in Slurm: what an admin sees, one step on every node, and the 2004
/// cluster's calibration job as an array over them, its results read from the shared home.
fn first_jobs(lab: &Lab, nodes: usize) -> anyhow::Result<()> {
    let show = |title: &str, text: &str| {
        println!("  $ {title}");
        for l in text.lines() {
            println!("    {l}");
        }
    };
    show("sinfo -N -l", &slurm(lab, "sinfo", &["-N", "-l"])?);
    let n = format!("-N{nodes}");
    show(
        &format!("srun {n} hostname"),
        &as_user(lab, "srun", &[&n, "hostname"])?,
    );
    let home = lab.user_home();
    let script = home.join("calibrate.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n# The calibration job: a busy loop, then where it ran.\n\
         awk 'BEGIN { for (i = 0; i < 300000; i++) s += i; print s }' > calib-$SLURM_ARRAY_TASK_ID.out\n\
         hostname >> calib-$SLURM_ARRAY_TASK_ID.out\n",
    )
    .with_context(|| format!("writing {}", script.display()))?;
    let tasks = nodes * 2;
    let array = format!("--array=1-{tasks}");
    let chdir = format!("--chdir={}", home.display());
    let script_arg = script.display().to_string();
    let sbatch = ["--parsable", &array, &chdir, "-o", "/dev/null", &script_arg];
    let id = as_user(lab, "sbatch", &sbatch)?;
    println!(
        "  $ sbatch {array} calibrate.sh   (job {}, as {})",
        id.trim(),
        enlist_lab::JOB_USER
    );
    let until = std::time::Instant::now() + Duration::from_secs(600);
    while !slurm(lab, "squeue", &["-h"])?.trim().is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "the array did not finish in 10 min"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    for t in 1..=tasks {
        let text = std::fs::read_to_string(home.join(format!("calib-{t}.out"))).unwrap_or_default();
        println!(
            "    task {t}: {}",
            text.split_whitespace().collect::<Vec<_>>().join(" on ")
        );
    }
    println!("  (the results are in {} on the head)", home.display());
    println!();
    Ok(())
}

/// The boot disk a profile needs (built by `cargo xtask floppy`).
fn disk_for(p: Profile) -> PathBuf {
    match p {
        Profile::P2Usb => root().join("images/out/enlist-usb.iso"),
        _ => root().join("images/out/enlist-floppy.img"),
    }
}

/// Wait up to `timeout` for one of `sigs`.
#[allow(unsafe_code)] // sigtimedwait: nix 0.29 has no safe wrapper
fn wait_signal(sigs: &SigSet, timeout: Duration) -> nix::Result<Option<Signal>> {
    let ts = nix::sys::time::TimeSpec::from_duration(timeout);
    // SAFETY: sigtimedwait with valid pointers; siginfo is written by the kernel.
    let rc = unsafe {
        let mut info: nix::libc::siginfo_t = std::mem::zeroed();
        nix::libc::sigtimedwait(sigs.as_ref(), &mut info, ts.as_ref())
    };
    if rc < 0 {
        return Ok(None);
    }
    Ok(Signal::try_from(rc).ok())
}
