//! Jobs: what a Pentium II with 64 MB has left for jobs once munged and slurmd run, the time from
//! power-on to the first job step, and the speedup of 3 nodes over 1 for the same job array
//! (the 2004 cluster's calibration loop). The reference is the same array on one node, in the
//! same run. The PCs boot straight into the image (QEMU `-kernel`), the lab's quickest boot;
//! under TCG each PC needs a host core, so the speedup's ceiling is the host's core count.
//! With `--env`, also POV-Ray frames on the PCs against the head alone, with each side's trace
//! time from povray's statistics: what a frame's work costs apart from start and dispatch.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use enlist_lab::{Lab, JOBS_CONFIG};

use crate::{enlist_bin, root};

/// The memory a 64 MB Pentium II must keep free for jobs (issue 12).
const JOBS_MIB_GOAL: f64 = 32.0;

pub fn run(tasks: usize, loops: u64, env: bool) -> anyhow::Result<()> {
    let images = root().join("images/out");
    let ns = "bench-jobs";
    let dir = root().join("lab").join(ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(ns, &dir).map_err(|e| anyhow!(e))?;
    let jobs_config = if env {
        format!(
            "{JOBS_CONFIG}  env_dir: {}\n",
            crate::demo::env_dir().display()
        )
    } else {
        JOBS_CONFIG.to_string()
    };
    let config = lab
        .write_config("dhcp", &images, &jobs_config)
        .map_err(|e| anyhow!(e))?;
    if env {
        crate::demo::ensure_envs(&config)?;
    }
    enlist_lab::ensure_job_user().map_err(|e| anyhow!("the lab's job user: {e}"))?;
    lab.start_head(&enlist_bin(), &config)
        .map_err(|e| anyhow!("{e}\n{}", lab.head_log()))?;
    lab.enroll(&enlist_bin(), "1h").map_err(|e| anyhow!(e))?;
    let home = lab.user_home();

    // Power-on to first job step: a job waits in the queue before any PC exists.
    let t0 = Instant::now();
    let first = submit(&lab, &home, &[], "hostname > first.out")?;
    let macs = boot_pcs(&mut lab, &images)?;
    wait(Duration::from_secs(400), "the first job", || {
        Ok(lab
            .slurm_out("squeue", &["-h", "-j", &first])?
            .trim()
            .is_empty())
    })?;
    let to_first = t0.elapsed();
    wait(Duration::from_secs(300), "3 idle nodes", || {
        Ok(lab.slurm_idle() >= 3)
    })?;

    let p2 = memory(&lab, &macs[0])?;
    let names: Vec<String> = macs.iter().map(|m| lab.node_name(m)).collect();
    // The same array on one node (the reference), then on all three.
    let x64 = &names[1];
    let one = array(&lab, &home, tasks, loops, &["-w", x64.as_str()])?;
    // (-w would ask for both nodes in every task; excluding the Pentium II leaves the two.)
    let two = array(&lab, &home, tasks, loops, &["-x", names[0].as_str()])?;
    let all = array(&lab, &home, tasks, loops, &[])?;
    let mut frames = Vec::new();
    if env {
        for set in &FRAME_SETS {
            frames.push((set, render(&lab, &home, tasks, set)?));
        }
    }

    let times = Times {
        to_first,
        one,
        two,
        all,
        frames,
    };
    print_table(tasks, loops, &p2, &times);
    Ok(())
}

/// A 64 MB Pentium II and two x86_64 PCs, booted straight into their images; their MACs.
fn boot_pcs(lab: &mut Lab, images: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let pcs = [
        ("i586", "qemu-system-i386", 64),
        ("x86_64", "qemu-system-x86_64", 256),
        ("x86_64", "qemu-system-x86_64", 256),
    ];
    let mut macs = Vec::new();
    for (image, qemu, mem) in pcs {
        let i = lab
            .boot_image_direct(images, image, qemu, mem)
            .map_err(|e| anyhow!(e))?;
        macs.push(lab.pcs[i].mac.clone());
    }
    Ok(macs)
}

/// What the run measured.
struct Times {
    to_first: Duration,
    one: Duration,
    two: Duration,
    all: Duration,
    /// POV-Ray frames on the PCs and on the head, per set of frames (with `--env`).
    frames: Vec<(&'static FrameSet, Render)>,
}

/// A set of frames to render: the scene at one quality.
struct FrameSet {
    /// What the table calls it.
    label: &'static str,
    /// Where its frames go, under the user's home.
    dir: &'static str,
    /// povray's size and antialiasing options.
    quality: &'static str,
}

/// The demo's frames, whose trace takes milliseconds (their time is povray's start, its 50 ms
/// polling between its threads, and Slurm's dispatch: latency, which PCs hide by running
/// side by side); then frames whose trace is the work, as a renderer's user brings (a PC's
/// speed against the head's core shows there).
const FRAME_SETS: [FrameSet; 2] = [
    FrameSet {
        label: "160x120, the demo's",
        dir: "render-demo",
        quality: crate::demo::DEMO_FRAME,
    },
    FrameSet {
        label: "640x480, antialiased",
        dir: "render-aa",
        quality: "+W640 +H480 +A0.1",
    },
];

/// One set's frames on the PCs and on the head alone: wall time, and povray's own trace time
/// (CPU-seconds, summed over the frames) from each frame's statistics.
struct Render {
    cluster: Duration,
    head: Duration,
    cluster_trace: f64,
    head_trace: f64,
}

fn print_table(tasks: usize, loops: u64, p2: &Memory, t: &Times) {
    println!();
    println!(
        "Jobs (QEMU TCG on {} host cores; PCs boot with -kernel):",
        cores()
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| power-on of 3 PCs to the first job step done | {:.1} s |",
        t.to_first.as_secs_f64()
    );
    println!(
        "| Pentium II 64 MB: MemAvailable with munged + slurmd running | {:.1} MiB (goal >= {JOBS_MIB_GOAL} MiB: {}) |",
        p2.available_mib,
        if p2.available_mib >= JOBS_MIB_GOAL { "met" } else { "NOT met" }
    );
    println!(
        "| Pentium II 64 MB: RealMemory offered to Slurm | {} MB |",
        p2.real_mb
    );
    println!(
        "| array of {tasks} x {loops} awk loops on 1 x86_64 node | {:.1} s |",
        t.one.as_secs_f64()
    );
    println!(
        "| same array on 2 x86_64 nodes | {:.1} s (speedup {:.2}) |",
        t.two.as_secs_f64(),
        t.one.as_secs_f64() / t.two.as_secs_f64()
    );
    println!(
        "| same array on all 3 nodes (incl. the Pentium II) | {:.1} s (speedup {:.2} over 1 node) |",
        t.all.as_secs_f64(),
        t.one.as_secs_f64() / t.all.as_secs_f64()
    );
    for (set, r) in &t.frames {
        println!(
            "| {tasks} POV-Ray frames ({}) as an array on the 3 PCs | {:.1} s; povray's trace {:.3} CPU-s a frame |",
            set.label,
            r.cluster.as_secs_f64(),
            r.cluster_trace / tasks as f64
        );
        println!(
            "| the same frames on the head alone (native, one after another) | {:.1} s (the PCs: {:.2}x the head's time); povray's trace {:.3} CPU-s a frame (a PC's: {:.1}x the head's) |",
            r.head.as_secs_f64(),
            r.cluster.as_secs_f64() / r.head.as_secs_f64(),
            r.head_trace / tasks as f64,
            r.cluster_trace / r.head_trace.max(0.001)
        );
    }
}

/// `set`'s frames as an array over the PCs into the user's home, and the same frames rendered
/// on the head alone.
fn render(
    lab: &Lab,
    home: &std::path::Path,
    frames: usize,
    set: &FrameSet,
) -> anyhow::Result<Render> {
    let (cluster, cluster_trace) = render_on_pcs(lab, &home.join(set.dir), frames, set)?;
    let (head, head_trace) = render_on_head(frames, set)?;
    Ok(Render {
        cluster,
        head,
        cluster_trace,
        head_trace,
    })
}

/// The frames as a job array of the user's in `dir` (made afresh, theirs): the wall time from
/// submission to the array's end, and the frames' trace CPU-seconds summed.
fn render_on_pcs(
    lab: &Lab,
    dir: &std::path::Path,
    frames: usize,
    set: &FrameSet,
) -> anyhow::Result<(Duration, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    std::os::unix::fs::chown(dir, Some(enlist_lab::JOB_UID), None)
        .with_context(|| dir.display().to_string())?;
    crate::demo::write_render_job(dir, frames, set.quality)?;
    let t = Instant::now();
    let id = lab
        .slurm_user_out(
            "sbatch",
            &[
                "--parsable",
                &format!("--array=1-{frames}"),
                &format!("--chdir={}", dir.display()),
                "-o",
                "render-%a.out",
                "render.sh",
            ],
        )
        .map_err(|e| anyhow!(e))?;
    wait(Duration::from_secs(1800), "the frames", || {
        Ok(lab
            .slurm_out("squeue", &["-h", "-j", id.trim()])?
            .trim()
            .is_empty())
    })?;
    let elapsed = t.elapsed();
    let made = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("frame"))
        .filter(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
        .count();
    if made < frames {
        bail!("{made} of {frames} frames were rendered on the PCs");
    }
    let mut trace = 0.0;
    for f in 1..=frames {
        let out = dir.join(format!("render-{f}.out"));
        let said = std::fs::read_to_string(&out).with_context(|| out.display().to_string())?;
        trace += trace_cpu_seconds(&said)
            .with_context(|| format!("{}: no trace time in povray's statistics", out.display()))?;
    }
    Ok((elapsed, trace))
}

/// The frames on the head alone, in the amd64 job environment, chrooted (the head's own CPU,
/// one frame after another): the wall time, and the frames' trace CPU-seconds summed.
fn render_on_head(frames: usize, set: &FrameSet) -> anyhow::Result<(Duration, f64)> {
    let env = crate::demo::env_dir().join("amd64");
    let version = std::fs::read_to_string(env.join("current"))?;
    let root = env.join(version.trim()).join("root");
    let work = root.join("tmp/enlist-bench-render");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    crate::demo::write_render_job(&work, frames, set.quality)?;
    let t = Instant::now();
    let mut trace = 0.0;
    for f in 1..=frames {
        let out = std::process::Command::new("chroot")
            .arg(&root)
            .args(["sh", "-c"])
            .arg(format!(
                "cd /tmp/enlist-bench-render && sh render.sh {f} 2>&1"
            ))
            .output()?;
        if !out.status.success() {
            bail!("frame {f} on the head: {}", out.status);
        }
        trace += trace_cpu_seconds(&String::from_utf8_lossy(&out.stdout))
            .with_context(|| format!("frame {f} on the head: no trace time"))?;
    }
    let elapsed = t.elapsed();
    let _ = std::fs::remove_dir_all(&work);
    Ok((elapsed, trace))
}

/// The CPU time povray's statistics give its trace (the line under "Trace Time:", "using 2
/// thread(s) with 0.183 CPU-seconds total"; its parse and bounding have lines of their own):
/// the render's own work, without its start, its parsing and its polling.
fn trace_cpu_seconds(statistics: &str) -> Option<f64> {
    let mut lines = statistics.lines();
    lines.find(|l| l.trim_start().starts_with("Trace Time:"))?;
    let line = lines.next()?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "CPU-seconds")?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn wait(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> Result<bool, String>,
) -> anyhow::Result<()> {
    let until = Instant::now() + limit;
    while !done().map_err(|e| anyhow!(e))? {
        if Instant::now() > until {
            bail!("{what}: not within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Ok(())
}

fn submit(lab: &Lab, home: &std::path::Path, extra: &[&str], cmd: &str) -> anyhow::Result<String> {
    let chdir = format!("--chdir={}", home.display());
    let mut args = vec!["--parsable", chdir.as_str(), "-o", "/dev/null"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--wrap", cmd]);
    Ok(lab
        .slurm_user_out("sbatch", &args)
        .map_err(|e| anyhow!(e))?
        .trim()
        .to_string())
}

/// Run the calibration array (`tasks` tasks of `loops` awk iterations) on the nodes `extra`
/// allows; the time from submission to the last task's end.
fn array(
    lab: &Lab,
    home: &std::path::Path,
    tasks: usize,
    loops: u64,
    extra: &[&str],
) -> anyhow::Result<Duration> {
    let spec = format!("--array=1-{tasks}");
    let mut args = vec![spec.as_str()];
    args.extend_from_slice(extra);
    let cmd =
        format!("awk 'BEGIN {{ for (i = 0; i < {loops}; i++) s += i; print s }}' > /dev/null");
    let t0 = Instant::now();
    let id = submit(lab, home, &args, &cmd)?;
    wait(Duration::from_secs(1800), &format!("array {id}"), || {
        Ok(lab
            .slurm_out("squeue", &["-h", "-j", &id])?
            .trim()
            .is_empty())
    })?;
    Ok(t0.elapsed())
}

struct Memory {
    available_mib: f64,
    real_mb: u64,
}

/// A node's available memory with munged and slurmd up (from its heartbeats, after a settle)
/// and what it offers Slurm.
fn memory(lab: &Lab, mac: &str) -> anyhow::Result<Memory> {
    wait(
        Duration::from_secs(60),
        "the Pentium II ready for jobs",
        || {
            let v = lab.curl(&format!("/api/v1/nodes/{mac}"))?;
            Ok(v["node"]["jobs"] == "ready" && v["node"]["sched"]["state"] == "idle")
        },
    )?;
    // Two heartbeats later, so the figure is from a settled system.
    std::thread::sleep(Duration::from_secs(5));
    let v = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .map_err(|e| anyhow!(e))
        .context("reading the Pentium II")?;
    Ok(Memory {
        available_mib: v["node"]["heartbeat"]["mem_free_kb"].as_u64().unwrap_or(0) as f64 / 1024.0,
        real_mb: v["node"]["sched"]["mem_mb"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::trace_cpu_seconds;

    #[test]
    fn the_trace_time_is_read_from_povrays_statistics() {
        let stats = "Parser Time\n  Parse Time:       0 hours  0 minutes  0 seconds (0.019 seconds)\n  \
                     using 1 thread(s) with 0.014 CPU-seconds total\n  \
                     Bounding Time:    0 hours  0 minutes  0 seconds (0.002 seconds)\n  \
                     using 1 thread(s) with 0.001 CPU-seconds total\n\
                     Render Time:\n  Photon Time:      No photons\n  Radiosity Time:   No radiosity\n  \
                     Trace Time:       0 hours  0 minutes  0 seconds (0.104 seconds)\n              \
                     using 2 thread(s) with 0.183 CPU-seconds total\nPOV-Ray finished\n";
        assert_eq!(trace_cpu_seconds(stats), Some(0.183));
        assert_eq!(trace_cpu_seconds("POV-Ray finished\n"), None);
        assert_eq!(
            trace_cpu_seconds("Trace Time: 0\n with x CPU-seconds total\n"),
            None
        );
        assert_eq!(
            trace_cpu_seconds("Trace Time: 0\nCPU-seconds total\n"),
            None
        );
        assert_eq!(trace_cpu_seconds("Trace Time: 0\n"), None);
    }
}
