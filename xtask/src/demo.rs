//! `cargo xtask demo` and `cargo xtask lab ...`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Subcommand;
use enlist_lab::wol::{PowerButtons, WolWatch};
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
        /// x64-pxe, x64-pxe-e1000e, x64-pxe-pcnet, x64-pxe-virtio, x64-uefi.
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

/// The demo's room is woken on demand: its window is open from now until 12 hours ahead
/// (closed an hour a day), Slurm gives idle PCs back after a minute and wakes them when work
/// waits.
fn on_demand_room() -> String {
    let (enlist, release) = enlist_lab::daily_window(Duration::from_secs(12 * 3600));
    format!(
        "  idle_release: 1m\n  wake_timeout: 5m\nschedules:\n  - group: {ROOM}\n    enlist: \"{enlist}\"\n    release: \"{release}\"\n    wake: on-demand\n"
    )
}

/// The demo's group (its one room).
const ROOM: &str = "room1";

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
        Jobs::WithEnv => format!(
            "  group: {ROOM}\n{JOBS_CONFIG}  env_dir: {}\n{}",
            env_dir().display(),
            on_demand_room()
        ),
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
    let watch_wol = WolWatch::start(&lab.ns).map_err(|e| anyhow!(e))?;
    let mut power = Power {
        buttons: PowerButtons::new(&lab, &watch_wol),
        watch: watch_wol,
        last: vec![],
    };
    print_banner(&lab, name, profiles.len(), mode, port, &password, jobs);
    watch(&mut lab, &mut power, profiles.len(), jobs_mode, &sigs);
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

/// The lab room's power: a magic packet from the head presses its PC's power button, and a
/// PC the head sends to its own disk is switched off (it has none to boot).
struct Power {
    watch: WolWatch,
    buttons: PowerButtons,
    /// The PCs' states last said.
    last: Vec<String>,
}

impl Power {
    /// Press and switch what is due, and say what changed.
    fn tick(&mut self, lab: &mut Lab) {
        match self.buttons.press(lab, &self.watch, &[]) {
            Ok(on) => {
                for i in on {
                    println!(
                        "  ({} {}: magic packet from the head; the lab presses its power button)",
                        lab.pcs[i].name, lab.pcs[i].mac
                    );
                }
            }
            Err(e) => println!("  power: {e}"),
        }
        for i in self.buttons.switch_off_sent_home(lab) {
            println!(
                "  ({} {}: sent to its own disk; the lab, having none, switches it off)",
                lab.pcs[i].name, lab.pcs[i].mac
            );
        }
        self.say_states(lab);
    }

    /// One line of every PC's state, when any changed.
    fn say_states(&mut self, lab: &Lab) {
        let states: Vec<String> = lab
            .pcs
            .iter()
            .map(|pc| {
                let state = lab.node_state(&pc.mac).unwrap_or_else(|| "-".into());
                format!("{} {state}", pc.name)
            })
            .collect();
        if states != self.last {
            println!("  {}", states.join(" | "));
            self.last = states;
        }
    }
}

/// Where the demo's story is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The PCs boot for the first time; then Slurm knows them.
    Joining,
    /// Idle, they go back to their owners and sleep; then the jobs wake them.
    Sleeping,
    Done,
}

/// Report the PCs' states until a signal arrives; with jobs on, run the first jobs (and the
/// renders) once every PC is idle in Slurm; in the demo's on-demand room, once they are
/// asleep again, so that the jobs wake them.
fn watch(lab: &mut Lab, power: &mut Power, pcs: usize, jobs_mode: Jobs, sigs: &SigSet) {
    let mut stage = match jobs_mode {
        Jobs::Off => Stage::Done,
        _ => Stage::Joining,
    };
    loop {
        power.tick(lab);
        stage = next_stage(lab, power, pcs, jobs_mode, stage);
        if let Ok(Some(sig)) = wait_signal(sigs, Duration::from_secs(2)) {
            eprintln!("xtask: {sig:?}: tearing the lab down");
            break;
        }
    }
}

/// Run what `stage` waits for, if it is time, and say which stage follows.
fn next_stage(
    lab: &mut Lab,
    power: &mut Power,
    pcs: usize,
    jobs_mode: Jobs,
    stage: Stage,
) -> Stage {
    let report = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            println!("  jobs: {e:#}");
        }
    };
    match stage {
        Stage::Joining if lab.slurm_idle() >= pcs => {
            report(first_steps(lab, pcs));
            if jobs_mode == Jobs::WithEnv {
                println!("  Room {ROOM} is woken on demand: its PCs, idle for jobs.idle_release (1 min),");
                println!(
                    "  go back to their own disks and sleep; Slurm keeps them (idle~) and wakes"
                );
                println!("  them by Wake-on-LAN when work waits.");
                println!();
                return Stage::Sleeping;
            }
            report(calibrate(lab, power, pcs));
            Stage::Done
        }
        Stage::Sleeping if lab.slurm_asleep().len() >= pcs => {
            report(slurm(lab, "sinfo", &[]).map(|t| show("sinfo   (every PC off: idle~)", &t)));
            report(calibrate(lab, power, pcs).and_then(|()| render(lab, power, pcs)));
            Stage::Done
        }
        s => s,
    }
}

/// A command's output, as the demo shows it.
fn show(title: &str, text: &str) {
    println!("  $ {title}");
    for l in text.lines() {
        println!("    {l}");
    }
}

/// Wait until Slurm's queue is empty, pressing the room's power buttons meanwhile.
fn wait_queue_empty(
    lab: &mut Lab,
    power: &mut Power,
    limit: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let until = std::time::Instant::now() + limit;
    while !slurm(lab, "squeue", &["-h"])?.trim().is_empty() {
        anyhow::ensure!(
            std::time::Instant::now() < until,
            "{what} not done in {limit:?}"
        );
        power.tick(lab);
        std::thread::sleep(Duration::from_secs(2));
    }
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

/// Once the PCs are in Slurm: what an admin sees, and one step on every node.
fn first_steps(lab: &Lab, nodes: usize) -> anyhow::Result<()> {
    show("sinfo", &slurm(lab, "sinfo", &[])?);
    let n = format!("-N{nodes}");
    show(
        &format!("srun {n} hostname"),
        &as_user(lab, "srun", &[&n, "hostname"])?,
    );
    Ok(())
}

/// The 2004 cluster's calibration job as an array over the PCs, its results read from the
/// shared home (in the on-demand room, submitted while every PC is off: it wakes them).
fn calibrate(lab: &mut Lab, power: &mut Power, nodes: usize) -> anyhow::Result<()> {
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
    wait_queue_empty(lab, power, Duration::from_secs(900), "the array")?;
    for t in 1..=tasks {
        let text = std::fs::read_to_string(home.join(format!("calib-{t}.out"))).unwrap_or_default();
        println!(
            "    task {t}: {}",
            text.split_whitespace().collect::<Vec<_>>().join(" on ")
        );
    }
    let woken = power.watch.macs();
    if !woken.is_empty() {
        println!(
            "  (woken by the head's magic packets: {})",
            woken.join(", ")
        );
    }
    println!("  (the results are in {} on the head)", home.display());
    println!();
    Ok(())
}

/// The 2004 cluster's other workload: an animation rendered with POV-Ray, one frame per task
/// of a job array over the PCs, into the shared home.
fn render(lab: &mut Lab, power: &mut Power, nodes: usize) -> anyhow::Result<()> {
    let home = lab.user_home();
    let frames = nodes * 3;
    write_render_job(&home, frames, DEMO_FRAME)?;
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
    wait_queue_empty(lab, power, Duration::from_secs(1200), "the frames")?;
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

/// The demo's frame: small, so a Pentium II renders one in seconds.
pub(crate) const DEMO_FRAME: &str = "+W160 +H120";

/// The scene and the array task's script in `dir`: `frames` frames of `quality` (povray's size
/// and antialiasing options; the frame is the array task's id, or the script's argument).
pub(crate) fn write_render_job(
    dir: &std::path::Path,
    frames: usize,
    quality: &str,
) -> anyhow::Result<()> {
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
             exec povray +Iscene.pov +Oframe.png {quality} -D +KFI1 +KFF{frames} +SF$f +EF$f\n"
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
