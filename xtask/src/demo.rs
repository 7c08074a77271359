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
            let jobs = if no_jobs { Jobs::Off } else { Jobs::On };
            run_lab(&name, &profiles, &mode, port, jobs)
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
        Jobs::WithEnv,
    )
}

/// What the lab's head does besides booting PCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Jobs {
    Off,
    /// Slurm and the shared home; jobs see the node OS (busybox).
    On,
    /// Also the job environment of `images/env.yaml` (built once into images/out/envs),
    /// and the demo's POV-Ray animation.
    WithEnv,
}

/// Where the demo keeps its job environments between runs (git-ignored, like the images).
pub(crate) fn env_dir() -> PathBuf {
    root().join("images/out/envs")
}

/// Build the default job environment for both arches unless it is there from a run before.
pub(crate) fn ensure_envs(config: &std::path::Path) -> anyhow::Result<()> {
    let missing = ["i386", "amd64"]
        .iter()
        .any(|a| !env_dir().join(a).join("current").exists());
    if !missing {
        println!(
            "  job environments: {} (from an earlier run; `enlist env build images/env.yaml` rebuilds)",
            env_dir().display()
        );
        return Ok(());
    }
    println!("$ enlist env build images/env.yaml   (Debian for both arches: a few minutes, once)");
    let st = Command::new(enlist_bin())
        .arg("--config")
        .arg(config)
        .args(["env", "build"])
        .arg(root().join("images/env.yaml"))
        .status()
        .context("enlist env build")?;
    anyhow::ensure!(st.success(), "enlist env build images/env.yaml: {st}");
    Ok(())
}

fn run_lab(
    name: &str,
    profiles: &[Profile],
    mode: &str,
    port: u16,
    jobs_mode: Jobs,
) -> anyhow::Result<()> {
    let jobs = jobs_mode != Jobs::Off;
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
    let jobs_config = match jobs_mode {
        Jobs::Off => String::new(),
        Jobs::On => JOBS_CONFIG.to_string(),
        Jobs::WithEnv => format!("{JOBS_CONFIG}  env_dir: {}\n", env_dir().display()),
    };
    let config = lab
        .write_config(mode, &root().join("images/out"), &jobs_config)
        .map_err(|e| anyhow!(e))?;
    if jobs_mode == Jobs::WithEnv {
        ensure_envs(&config)?;
    }
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
    print_banner(&lab, name, profiles.len(), mode, port, &password, jobs);
    watch(&lab, profiles.len(), jobs_mode, &sigs);
    drop(lab);
    Ok(())
}

/// Where to look: the dashboard, the login, the logs, Slurm and the home.
fn print_banner(
    lab: &Lab,
    name: &str,
    pcs: usize,
    mode: &str,
    port: u16,
    password: &str,
    jobs: bool,
) {
    println!();
    println!(
        "  enlist lab {name} is running ({} PCs booting; mode {mode})",
        pcs
    );
    println!("  dashboard:  http://127.0.0.1:{port}/");
    println!("  login:      password {password}");
    println!("  head log:   {}", lab.dir.join("head.log").display());
    println!("  consoles:   {}/*.serial.log", lab.dir.display());
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
}

/// Report the PCs' states until a signal arrives; with jobs on, run the first jobs (and the
/// renders) once every PC is idle in Slurm.
fn watch(lab: &Lab, pcs: usize, jobs_mode: Jobs, sigs: &SigSet) {
    let mut shown = jobs_mode == Jobs::Off;
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
        if !shown && lab.slurm_idle() >= pcs {
            shown = true;
            if let Err(e) = first_jobs(lab, pcs) {
                println!("  jobs: {e:#}");
            } else if jobs_mode == Jobs::WithEnv {
                if let Err(e) = render(lab, pcs) {
                    println!("  render: {e:#}");
                }
            }
        }
        if let Ok(Some(sig)) = wait_signal(sigs, Duration::from_secs(2)) {
            eprintln!("xtask: {sig:?}: tearing the lab down");
            break;
        }
    }
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

/// The 2004 cluster's other workload: an animation rendered with POV-Ray, one frame per task
/// of a job array over the PCs, into the shared home.
fn render(lab: &Lab, nodes: usize) -> anyhow::Result<()> {
    let home = lab.user_home();
    let frames = nodes * 3;
    write_render_job(&home, frames)?;
    let array = format!("--array=1-{frames}");
    let chdir = format!("--chdir={}", home.display());
    let started = std::time::Instant::now();
    let id = as_user(
        lab,
        "sbatch",
        &[
            "--parsable",
            &array,
            &chdir,
            "-o",
            "render-%a.log",
            "render.sh",
        ],
    )?;
    println!(
        "  $ sbatch {array} render.sh   (POV-Ray, {frames} frames; job {}, as {})",
        id.trim(),
        enlist_lab::JOB_USER
    );
    let until = started + Duration::from_secs(1200);
    while !slurm(lab, "squeue", &["-h"])?.trim().is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "the frames were not done in 20 min"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let mut done: Vec<(String, u64)> = std::fs::read_dir(&home)?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("frame") && n.ends_with(".png"))
        .map(|n| {
            let len = std::fs::metadata(home.join(&n))
                .map(|m| m.len())
                .unwrap_or(0);
            (n, len)
        })
        .collect();
    done.sort();
    println!(
        "    {} of {frames} frames in {:.0} s: {}",
        done.len(),
        started.elapsed().as_secs_f64(),
        done.iter()
            .map(|(n, len)| format!("{n} ({len} B)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  (the frames are in {} on the head)", home.display());
    println!();
    Ok(())
}

/// The scene and the array task's script in `dir`: `frames` frames of 160x120 (the frame
/// is the array task's id, or the script's argument).
pub(crate) fn write_render_job(dir: &std::path::Path, frames: usize) -> anyhow::Result<()> {
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    write("scene.pov", SCENE.to_string())?;
    write(
        "render.sh",
        format!(
            "#!/bin/sh\n# One frame of scene.pov per array task (povray's own animation options).\n\
             f=${{SLURM_ARRAY_TASK_ID:-$1}}\n\
             exec povray +Iscene.pov +Oframe.png +W160 +H120 -D +KFI1 +KFF{frames} +SF$f +EF$f\n"
        ),
    )
}

/// A ball rolling over a checkered floor: each frame's `clock` turns and moves it.
const SCENE: &str = "#version 3.7;\n\
global_settings { assumed_gamma 1.0 }\n\
camera { location <0, 2, -6> look_at <0, 1, 0> }\n\
light_source { <4, 8, -6> color rgb 1 }\n\
plane { y, 0 pigment { checker color rgb 1 color rgb 0.2 } }\n\
sphere { 0, 1 pigment { checker color rgb <1, 0.3, 0.2> color rgb 1 scale 0.5 }\n\
  finish { phong 0.8 } rotate z*-clock*229 translate <-2 + 4*clock, 1, 0> }\n";

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
