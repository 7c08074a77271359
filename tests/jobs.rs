//! Jobs end to end: emulated PCs boot, join the head's Slurm cluster by themselves, run jobs
//! submitted with Slurm's own tools on the head, share the head's home folder over NFSv4, and
//! leave the scheduler when released (their jobs finished or requeued) or lost.
//!
//! The head runs the real slurmctld, munged and NFS-Ganesha from Debian's packages; the nodes
//! run Debian's slurmd and munged from the image's runtime bundle. Root, QEMU and the built
//! images are needed, so these are `#[ignore]`d for a plain `cargo test`; `cargo xtask test`
//! runs them.

#![allow(clippy::unwrap_used)] // tests unwrap what they set up

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use enlist_lab::{Lab, JOBS_CONFIG};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const BOOT_LIMIT: Duration = Duration::from_secs(400);

/// A lab whose head runs jobs.
fn jobs_lab(test: &str) -> Lab {
    jobs_lab_with(test, JOBS_CONFIG)
}

/// A lab whose head runs jobs and holds a released node's jobs for 20 s at most.
fn short_deadline_lab(test: &str) -> Lab {
    let config = JOBS_CONFIG.replace("release_deadline: 60s", "release_deadline: 20s");
    assert_ne!(
        config, JOBS_CONFIG,
        "the lab's jobs config names a release deadline"
    );
    jobs_lab_with(test, &config)
}

fn jobs_lab_with(test: &str, config: &str) -> Lab {
    jobs_lab_from(test, config, &root().join("images/out"))
}

/// Copy the current version of each built image into `to` (a lab's own images to spoil).
fn copy_images(to: &std::path::Path) {
    for image in ["i586", "x86_64"] {
        let from = root().join("images/out").join(image);
        let version = std::fs::read_to_string(from.join("current")).unwrap();
        let dest = to.join(image).join(version.trim());
        std::fs::create_dir_all(&dest).unwrap();
        std::fs::copy(from.join("current"), to.join(image).join("current")).unwrap();
        for f in std::fs::read_dir(from.join(version.trim())).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dest.join(f.file_name())).unwrap();
        }
    }
}

fn jobs_lab_from(test: &str, config: &str, images: &std::path::Path) -> Lab {
    let ns = format!("jobs-{test}-{}", std::process::id() % 10000);
    let dir = root().join("lab").join(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(&ns, &dir).unwrap_or_else(|e| panic!("lab: {e}"));
    let cfg = lab
        .write_config("dhcp", images, config)
        .unwrap_or_else(|e| panic!("{e}"));
    let enlist = root().join("target/release/enlist");
    enlist_lab::ensure_job_user().unwrap_or_else(|e| panic!("the lab's job user: {e}"));
    lab.start_head(&enlist, &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    // With jobs on, new PCs need an admin's word: the window the lab tech boots them in.
    lab.enroll(&enlist, "1h")
        .unwrap_or_else(|e| panic!("enlist enroll: {e}\n{}", lab.head_log()));
    lab
}

/// A Slurm tool run on the head, as its admin would (in the head's network namespace).
fn slurm(lab: &Lab, program: &str, args: &[&str]) -> Output {
    lab.slurm(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A Slurm tool run on the head by the lab's job user (jobs write into their home: a job of
/// root's could not, the home's NFS server maps a node's root to nobody).
fn as_user(lab: &Lab, program: &str, args: &[&str]) -> Output {
    lab.slurm_as_user(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

/// The same; fail the test with the logs if it fails.
fn must_as_user(lab: &Lab, program: &str, args: &[&str]) -> String {
    let o = as_user(lab, program, args);
    if !o.status.success() {
        fail(lab, &format!("{program} {}: {}", args.join(" "), text(&o)));
    }
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Fail with the lab's logs and the head's Slurm logs.
fn fail(lab: &Lab, what: &str) -> ! {
    let read = |p: &str| std::fs::read_to_string(lab.dir.join(p)).unwrap_or_default();
    let tail = |s: String| {
        let l: Vec<&str> = s.lines().collect();
        l[l.len().saturating_sub(30)..].join("\n")
    };
    panic!(
        "{what}\n==== slurmctld.log ====\n{}\n==== sinfo ====\n{}\n{}",
        tail(read("state/slurm/slurmctld.log")),
        text(&slurm(lab, "sinfo", &["-N", "-l"])),
        lab.report()
    );
}

/// Wait until `sinfo` lists `n` idle enlisted nodes.
fn wait_idle(lab: &Lab, n: usize, limit: Duration) {
    let until = Instant::now() + limit;
    loop {
        let idle = lab.slurm_idle();
        if idle >= n {
            return;
        }
        if Instant::now() > until {
            fail(
                lab,
                &format!("{idle} of {n} nodes idle in Slurm after {limit:?}"),
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Boot `image` straight into a new PC of the lab (no firmware: the quickest boot).
fn boot(lab: &mut Lab, image: &str, qemu: &str, mem_mb: u32) -> String {
    let i = lab
        .boot_image_direct(&root().join("images/out"), image, qemu, mem_mb)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.pcs[i].mac.clone()
}

fn wait_healthy(lab: &Lab, macs: &[String]) {
    for mac in macs {
        if let Err(e) = lab.wait_state(mac, "healthy", BOOT_LIMIT) {
            fail(lab, &e);
        }
    }
}

/// Run a Slurm tool; fail the test with the logs if it fails.
fn must(lab: &Lab, program: &str, args: &[&str]) -> String {
    let o = slurm(lab, program, args);
    if !o.status.success() {
        fail(lab, &format!("{program} {}: {}", args.join(" "), text(&o)));
    }
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// Nodes `sinfo` lists (any state).
fn sinfo_nodes(lab: &Lab) -> Vec<String> {
    let o = must(lab, "sinfo", &["-h", "-N", "-o", "%N"]);
    o.lines().map(|l| l.trim().to_string()).collect()
}

/// Wait until `sinfo` no longer lists `name`.
fn wait_gone_from_slurm(lab: &Lab, name: &str, limit: Duration) {
    let until = Instant::now() + limit;
    while sinfo_nodes(lab).iter().any(|n| n == name) {
        if Instant::now() > until {
            fail(lab, &format!("{name} still in sinfo after {limit:?}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `squeue` field `format` of job `id` ("" once the job has left the queue).
fn job_field(lab: &Lab, id: &str, format: &str) -> String {
    must(lab, "squeue", &["-h", "-j", id, "-o", format])
        .trim()
        .to_string()
}

/// Wait until job `id` runs; the node it runs on.
fn wait_running(lab: &Lab, id: &str, limit: Duration) -> String {
    let until = Instant::now() + limit;
    loop {
        if job_field(lab, id, "%T") == "RUNNING" {
            return job_field(lab, id, "%N");
        }
        if Instant::now() > until {
            fail(lab, &format!("job {id} not running after {limit:?}"));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Submit a one-line batch job as the lab's job user, in its home; its id.
fn submit(lab: &Lab, extra: &[&str], command: &str) -> String {
    let chdir = format!("--chdir={}", lab.user_home().display());
    let mut args = vec!["--parsable", chdir.as_str(), "-o", "/dev/null"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--wrap", command]);
    must_as_user(lab, "sbatch", &args).trim().to_string()
}

fn home_file(lab: &Lab, name: &str) -> String {
    std::fs::read_to_string(lab.user_home().join(name))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn events(lab: &Lab, mac: &str) -> String {
    lab.curl(&format!("/api/v1/nodes/{mac}"))
        .map(|v| v["events"].to_string())
        .unwrap_or_default()
}

/// Wait until slurmctld has written its job state after `since`.
fn wait_saved(lab: &Lab, since: std::time::SystemTime) {
    let file = lab.dir.join("state/slurm/state/job_state");
    let until = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .map_or(true, |t| t <= since)
    {
        if Instant::now() > until {
            fail(lab, "slurmctld did not save its job state within 30 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Wait until `squeue` shows no job left.
fn wait_queue_empty(lab: &Lab, limit: Duration) {
    let until = Instant::now() + limit;
    while !must(lab, "squeue", &["-h"]).trim().is_empty() {
        if Instant::now() > until {
            fail(lab, &format!("jobs still queued after {limit:?}"));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
fn three_pcs_join_slurm_run_an_array_in_the_shared_home_and_survive_a_slurmctld_crash() {
    let mut lab = jobs_lab("three");
    let macs = vec![
        boot(&mut lab, "i586", "qemu-system-i386", 64),
        boot(&mut lab, "x86_64", "qemu-system-x86_64", 256),
        boot(&mut lab, "i586", "qemu-system-i386", 128),
    ];
    wait_healthy(&lab, &macs);
    wait_idle(&lab, 3, Duration::from_secs(240));
    let names: Vec<String> = macs.iter().map(|m| lab.node_name(m)).collect();

    // One step on each node.
    let out = must_as_user(&lab, "srun", &["-N3", "hostname"]);
    let mut got: Vec<&str> = out.lines().map(str::trim).collect();
    got.sort();
    let mut want: Vec<&str> = names.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(got, want, "srun -N3 hostname");

    // The original cluster's calibration job as an array; each task writes into the home.
    let home = lab.user_home();
    let script = home.join("calibrate.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\nawk 'BEGIN { for (i = 0; i < 200000; i++) s += i; print s }' > calib-$SLURM_ARRAY_TASK_ID.out\nhostname >> calib-$SLURM_ARRAY_TASK_ID.out\n",
    )
    .unwrap();
    let chdir = format!("--chdir={}", home.display());
    must_as_user(
        &lab,
        "sbatch",
        &[
            "--array=1-6",
            &chdir,
            "-o",
            "/dev/null",
            &script.display().to_string(),
        ],
    );
    wait_queue_empty(&lab, Duration::from_secs(300));
    let mut ran_on = std::collections::BTreeSet::new();
    for t in 1..=6 {
        let f = home.join(format!("calib-{t}.out"));
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("19999900000"),
            "{}: {text:?}",
            f.display()
        );
        ran_on.insert(lines.next().unwrap_or("").to_string());
    }
    assert!(
        ran_on.len() >= 2,
        "the array spread over the nodes: {ran_on:?}"
    );

    // The dashboard's view: each node's scheduler state, the cluster's totals.
    let summary = lab.curl("/api/v1/summary").unwrap_or_default();
    assert_eq!(summary["jobs"]["nodes"], 3, "{summary}");

    // slurmctld dies: the head starts it again; the nodes stay; a queued job survives.
    // (once slurmctld has saved it: Slurm saves its state a moment after a change, and a job
    // submitted in that moment is lost by any crash, which is Slurm's contract, not ours.)
    let submitted = std::time::SystemTime::now();
    must_as_user(
        &lab,
        "sbatch",
        &[
            "--begin=now+20",
            &chdir,
            "-o",
            "/dev/null",
            "--wrap",
            "hostname > after-crash.out",
        ],
    );
    wait_saved(&lab, submitted);
    let pid =
        std::fs::read_to_string(lab.dir.join("state/slurm/slurmctld.pid")).unwrap_or_default();
    let killed = std::process::Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "kill slurmctld {pid:?}");
    wait_idle(&lab, 3, Duration::from_secs(120));
    wait_queue_empty(&lab, Duration::from_secs(180));
    let after = std::fs::read_to_string(home.join("after-crash.out")).unwrap_or_default();
    assert!(
        names.contains(&after.trim().to_string()),
        "the queued job ran: {after:?}"
    );
}
#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
fn an_x64_pc_joins_slurm_and_runs_a_job_in_the_shared_home() {
    let mut lab = jobs_lab("x64");
    let mac = "52:54:00:77:01:01".to_string();
    let (kernel, initrd) = lab
        .direct_boot_files(&root().join("images/out"), "x86_64", &mac)
        .unwrap_or_else(|e| panic!("{e}"));
    lab.boot_direct("qemu-system-x86_64", 256, &kernel, &initrd)
        .unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = lab.wait_state(&mac, "healthy", BOOT_LIMIT) {
        fail(&lab, &e);
    }
    wait_idle(&lab, 1, Duration::from_secs(180));
    // The head shows the node's part in the jobs (the dashboard's and `enlist nodes`' column).
    let r = lab.wait_for(
        Duration::from_secs(30),
        "scheduler state on the node",
        || {
            let v = lab
                .curl(&format!("/api/v1/nodes/{mac}"))
                .unwrap_or_default();
            v["node"]["sched"]["state"] == "idle" && v["node"]["jobs"] == "ready"
        },
    );
    if let Err(e) = r {
        fail(&lab, &e);
    }
    let home = lab.user_home();
    let out = as_user(
        &lab,
        "srun",
        &[
            "-N1",
            "--chdir",
            &home.display().to_string(),
            "sh",
            "-c",
            "hostname > from-the-node.txt && cat /proc/sys/kernel/arch",
        ],
    );
    if !out.status.success() {
        fail(&lab, &format!("srun: {}", text(&out)));
    }
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "x86_64");
    let written = std::fs::read_to_string(home.join("from-the-node.txt")).unwrap_or_default();
    assert_eq!(written.trim(), lab.node_name(&mac));
    // The node OS's Slurm (no job environment): its jobs' /tmp too.
    a_job_has_a_private_tmp_gone_at_its_end(&lab, &lab.node_name(&mac), "");

    // The node's log at the head: its kernel's boot messages, its agent's and slurmd's lines;
    // it survives the node's reboot (node RAM does not).
    let name = lab.node_name(&mac);
    let node_log = || {
        text(&enlist_cli(
            &lab,
            &["node", "logs", "--bytes", "262144", &name],
        ))
    };
    let has_all = |log: &str| {
        log.contains("---- boot ----")
            && log.contains("kernel: [    0.000000] Linux version")
            && log.contains("agent: registered with")
            && log.contains("slurmd: ")
    };
    if let Err(e) = lab.wait_for(Duration::from_secs(30), "the node's log", || {
        has_all(&node_log())
    }) {
        fail(&lab, &format!("{e}\n{}", node_log()));
    }
    let o = enlist_cli(&lab, &["node", "reboot", &name]);
    assert!(o.status.success(), "{}", text(&o));
    let rebooted = lab.wait_for(BOOT_LIMIT, "a second boot in the log", || {
        let log = node_log();
        log.matches("---- boot ----").count() == 2
            && log.matches("] Linux version").count() == 2
            && log
                .rsplit("---- boot ----")
                .next()
                .is_some_and(|last| last.contains("agent: registered with"))
    });
    if let Err(e) = rebooted {
        fail(&lab, &format!("{e}\n{}", node_log()));
    }
}

#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
fn a_released_pc_finishes_its_job_leaves_slurm_and_boots_its_own_disk() {
    let mut lab = short_deadline_lab("release");
    let i = lab
        .boot(enlist_lab::Profile::X64Pxe, None)
        .unwrap_or_else(|e| panic!("{e}"));
    let mac = lab.pcs[i].mac.clone();
    wait_healthy(&lab, std::slice::from_ref(&mac));
    wait_idle(&lab, 1, Duration::from_secs(240));
    let name = lab.node_name(&mac);

    let job = submit(&lab, &[], "sleep 8; hostname > released.out");
    assert_eq!(wait_running(&lab, &job, Duration::from_secs(60)), name);
    lab.curl_method("POST", &format!("/api/v1/nodes/{mac}/release"))
        .unwrap_or_else(|e| fail(&lab, &e));
    // Drained, not killed: the node shows it and takes no new job.
    if let Err(e) = lab.wait_state(&mac, "draining", Duration::from_secs(10)) {
        fail(&lab, &e);
    }
    let next = submit(&lab, &[], "hostname > not-here.out");
    wait_gone_from_slurm(&lab, &name, Duration::from_secs(60));
    assert_eq!(
        home_file(&lab, "released.out"),
        name,
        "the running job finished"
    );
    assert!(
        !events(&lab, &mac).contains("deadline reached"),
        "{}",
        events(&lab, &mac)
    );
    assert_eq!(
        job_field(&lab, &next, "%T"),
        "PENDING",
        "a job submitted while draining waits"
    );
    // Then the PC goes back to its own disk.
    let r = lab.wait_for(BOOT_LIMIT, "local disk boot answer", || {
        events(&lab, &mac).contains("answered with local disk boot")
    });
    if let Err(e) = r {
        fail(&lab, &e);
    }
}

#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
fn a_killed_pcs_job_runs_elsewhere_and_a_released_pcs_job_is_requeued_at_the_deadline() {
    let mut lab = short_deadline_lab("kill");
    let macs = vec![
        boot(&mut lab, "x86_64", "qemu-system-x86_64", 256),
        boot(&mut lab, "x86_64", "qemu-system-x86_64", 256),
    ];
    wait_healthy(&lab, &macs);
    wait_idle(&lab, 2, Duration::from_secs(240));
    let names: Vec<String> = macs.iter().map(|m| lab.node_name(m)).collect();

    // Power cut mid-job: Slurm marks the node down and requeues the job, which runs on the other
    // node; enlist deletes the node from Slurm once it is lost.
    // Its first run waits to be cut off; its second, requeued, says where it ran.
    let job = submit(
        &lab,
        &["--requeue"],
        "if [ -e cut.mark ]; then hostname > moved.out; else touch cut.mark; sleep 600; fi",
    );
    let first = wait_running(&lab, &job, Duration::from_secs(60));
    let victim = names.iter().position(|n| *n == first).unwrap_or_else(|| {
        fail(
            &lab,
            &format!("job {job} runs on {first:?}, not on {names:?}"),
        )
    });
    let other = 1 - victim;
    let r = lab.wait_for(Duration::from_secs(60), "the job's first run", || {
        lab.user_home().join("cut.mark").exists()
    });
    if let Err(e) = r {
        fail(&lab, &e);
    }
    lab.pcs[victim].kill();
    wait_queue_empty(&lab, Duration::from_secs(240));
    assert_eq!(
        home_file(&lab, "moved.out"),
        names[other],
        "the requeued job ran elsewhere"
    );
    if let Err(e) = lab.wait_state(&macs[victim], "lost", Duration::from_secs(60)) {
        fail(&lab, &e);
    }
    wait_gone_from_slurm(&lab, &names[victim], Duration::from_secs(120));

    // Release while a long job runs: at the deadline the job is requeued and the node leaves.
    let long = submit(&lab, &["--requeue"], "sleep 600");
    wait_running(&lab, &long, Duration::from_secs(60));
    lab.curl_method("POST", &format!("/api/v1/nodes/{}/release", macs[other]))
        .unwrap_or_else(|e| fail(&lab, &e));
    wait_gone_from_slurm(&lab, &names[other], Duration::from_secs(90));
    assert!(
        events(&lab, &macs[other]).contains("deadline reached"),
        "{}",
        events(&lab, &macs[other])
    );
    let restarts = must(&lab, "scontrol", &["show", "job", &long]);
    assert!(restarts.contains("Restarts=1"), "{restarts}");
    assert_eq!(
        job_field(&lab, &long, "%T"),
        "PENDING",
        "the requeued job waits for a node"
    );
}

#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
fn a_node_given_a_corrupt_runtime_says_so_stays_registered_and_joins_once_it_is_repaired() {
    let images = root().join("lab/jobs-corrupt-images");
    let _ = std::fs::remove_dir_all(&images);
    copy_images(&images);
    let version = std::fs::read_to_string(images.join("x86_64/current")).unwrap();
    let bundle = images
        .join("x86_64")
        .join(version.trim())
        .join("jobs-runtime.sqfs");
    let good = std::fs::read(&bundle).unwrap();
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0xff;
    std::fs::write(&bundle, &bad).unwrap();

    let mut lab = jobs_lab_from("corrupt", JOBS_CONFIG, &images);
    let mac = boot(&mut lab, "x86_64", "qemu-system-x86_64", 256);
    wait_healthy(&lab, std::slice::from_ref(&mac));
    let r = lab.wait_for(
        Duration::from_secs(120),
        "the failure in the node's history",
        || events(&lab, &mac).contains("expected"),
    );
    if let Err(e) = r {
        fail(&lab, &e);
    }
    let history = events(&lab, &mac);
    assert!(
        history.contains("jobs") && history.contains("sha256"),
        "{history}"
    );
    let node = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default();
    assert!(
        node["node"]["jobs"]
            .as_str()
            .unwrap_or("")
            .starts_with("failed"),
        "the dashboard's jobs column: {node}"
    );
    assert_eq!(node["node"]["state"], "healthy", "still registered: {node}");
    assert!(sinfo_nodes(&lab).is_empty(), "not in the scheduler");

    // Repaired on the head: the node's next attempt joins.
    std::fs::write(&bundle, &good).unwrap();
    wait_idle(&lab, 1, Duration::from_secs(240));
    let _ = std::fs::remove_dir_all(&images);
}

/// `enlist <args>` against the lab's head (the CLI, through its admin socket).
fn enlist_cli(lab: &Lab, args: &[&str]) -> Output {
    lab.enlist(&root().join("target/release/enlist"), args)
}

#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
/// A PC on the segment that is no node, root on itself: slurmctld, srun's ports and the NFS
/// home on the head, and slurmd on a node, give it no answer, and its NFSv4 mount of the home
/// as uid 0 is refused; the enlisted node still mounts the home (nosuid, nodev) and runs jobs.
/// A node's root is nobody on the home, and the node's screen shows no shell. (Before the
/// head's firewall and the node's filter, every one of these ports answered the stranger, and
/// the home was exported rw, no_root_squash, to the whole subnet.)
fn a_stranger_on_the_segment_reaches_neither_slurm_nor_the_home_and_nodes_still_run_jobs() {
    let mut lab = jobs_lab("stranger");
    let mac = boot(&mut lab, "x86_64", "qemu-system-x86_64", 256);
    wait_healthy(&lab, std::slice::from_ref(&mac));
    wait_idle(&lab, 1, Duration::from_secs(240));
    let name = lab.node_name(&mac);
    let node_ip = lab
        .curl(&format!("/api/v1/nodes/{mac}"))
        .unwrap_or_default()["node"]["ip"]
        .as_str()
        .unwrap_or("")
        .to_string();

    let x = enlist_lab::host::Host::new(&lab, "x", "02:00:00:00:0e:01").unwrap();
    x.address("10.77.0.250/24").unwrap();
    for addr in [
        "10.77.0.1:6817".to_string(),
        "10.77.0.1:2049".into(),
        "10.77.0.1:60001".into(),
        format!("{node_ip}:6818"),
    ] {
        assert!(x.tcp_unanswered(&addr), "{addr} answered a stranger");
    }
    let home = lab.dir.join("home");
    // Neither the home nor the job environments' export (read-only, but every node runs it).
    for export in [home.clone(), lab.dir.join("state/envs")] {
        let nfs = x
            .exec("timeout")
            .args(["10", "nfs-ls"])
            .arg(format!(
                "nfs://10.77.0.1{}?version=4&uid=0&gid=0",
                export.display()
            ))
            .output()
            .unwrap();
        assert!(
            !nfs.status.success(),
            "a stranger's NFSv4 listing of {}: {}",
            export.display(),
            text(&nfs)
        );
    }
    let r = lab.wait_for(Duration::from_secs(20), "refused packets counted", || {
        lab.metric("enlist_cluster_refused_packets") > 0.0
    });
    if let Err(e) = r {
        fail(&lab, &e);
    }

    // The node: slurmd answers the head; the home is mounted nosuid,nodev; a job writes there.
    let slurmd: std::net::SocketAddr = format!("{node_ip}:6818").parse().unwrap();
    let from_head = enlist_lab::host::in_netns(&lab.ns, move || {
        std::net::TcpStream::connect_timeout(&slurmd, Duration::from_secs(2)).is_ok()
    });
    assert!(from_head, "slurmd answers the head");
    let mounts = must_as_user(&lab, "srun", &["-N1", "grep", " nfs4 ", "/proc/mounts"]);
    assert!(
        mounts.contains("nosuid") && mounts.contains("nodev"),
        "{mounts}"
    );
    let chdir = lab.user_home().display().to_string();
    must_as_user(
        &lab,
        "srun",
        &["-N1", "--chdir", &chdir, "sh", "-c", "hostname > ok.txt"],
    );
    assert_eq!(home_file(&lab, "ok.txt"), name);
    // A job of root's is nobody on the home (root_squash).
    let root_job = slurm(
        &lab,
        "srun",
        &["-N1", "touch", &home.join("by-root").display().to_string()],
    );
    assert!(
        !root_job.status.success() && !home.join("by-root").exists(),
        "root wrote into the home from a node: {}",
        text(&root_job)
    );

    // The PC's screen: the status screen, no shell (enlist exec, through the admin socket).
    let ps = enlist_cli(&lab, &["exec", "-w", &name, "--", "ps"]);
    let ps_text = text(&ps);
    assert!(ps.status.success(), "{ps_text}");
    assert!(ps_text.contains("enlist-console"), "{ps_text}");
    assert!(
        !ps_text.lines().any(|l| l.trim_end().ends_with("-/bin/sh")),
        "a shell on the console: {ps_text}"
    );
}

#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
/// `enlist jobs rotate-key` while a job runs: the job finishes, a new job runs, and the old key
/// is refused by slurmctld (a munged holding it cannot get `sinfo` an answer).
fn a_rotated_munge_key_keeps_running_jobs_and_locks_the_old_key_out() {
    let mut lab = jobs_lab("rotate");
    let mac = boot(&mut lab, "x86_64", "qemu-system-x86_64", 256);
    wait_healthy(&lab, std::slice::from_ref(&mac));
    wait_idle(&lab, 1, Duration::from_secs(240));
    let name = lab.node_name(&mac);
    let old_key = lab.dir.join("old-munge.key");
    std::fs::copy(lab.dir.join("state/munge/munge.key"), &old_key).unwrap();

    let job = submit(&lab, &[], "sleep 15; hostname > rotated.out");
    wait_running(&lab, &job, Duration::from_secs(60));
    let out = enlist_cli(&lab, &["jobs", "rotate-key"]);
    assert!(
        out.status.success() && text(&out).contains("1 node(s) told"),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("not confirmed"), "{}", text(&out));
    assert_ne!(
        std::fs::read(lab.dir.join("state/munge/munge.key")).unwrap(),
        std::fs::read(&old_key).unwrap(),
        "a new key on the head"
    );
    wait_queue_empty(&lab, Duration::from_secs(120));
    assert_eq!(home_file(&lab, "rotated.out"), name, "the job finished");
    wait_idle(&lab, 1, Duration::from_secs(60));
    let next = submit(&lab, &[], "hostname > after-rotation.out");
    wait_queue_empty(&lab, Duration::from_secs(120));
    assert_eq!(
        home_file(&lab, "after-rotation.out"),
        name,
        "job {next} ran with the new key"
    );
    assert!(
        events(&lab, &mac).contains("munge key replaced"),
        "{}",
        events(&lab, &mac)
    );

    // The old key: a munged holding it speaks for nobody slurmctld knows.
    let old = lab.dir.join("old-munge");
    std::fs::create_dir_all(&old).unwrap();
    let socket = old.join("munge.socket.2");
    let mut munged = lab.exec("munged");
    munged
        .args(["--foreground", "--force"])
        .arg(format!("--socket={}", socket.display()))
        .arg(format!("--key-file={}", old_key.display()))
        .arg(format!("--pid-file={}", old.join("pid").display()))
        .arg(format!("--seed-file={}", old.join("seed").display()))
        .arg(format!("--log-file={}", old.join("log").display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    lab.spawn(munged).unwrap();
    let r = lab.wait_for(Duration::from_secs(10), "the old key's munged", || {
        socket.exists()
    });
    if let Err(e) = r {
        fail(&lab, &e);
    }
    let conf = std::fs::read_to_string(lab.slurm_conf()).unwrap();
    let old_conf = old.join("slurm.conf");
    let auth = conf
        .lines()
        .find(|l| l.starts_with("AuthInfo="))
        .unwrap()
        .to_string();
    std::fs::write(
        &old_conf,
        conf.replace(&auth, &format!("AuthInfo=socket={}", socket.display())),
    )
    .unwrap();
    let refused = lab
        .exec("sinfo")
        .env("SLURM_CONF", &old_conf)
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "slurmctld answered the old key: {}",
        text(&refused)
    );
    assert!(!sinfo_nodes(&lab).is_empty(), "the current key still works");
}

/// A user and a group made on this machine for one test, removed when it ends.
struct NewUser(&'static str, &'static str);

impl NewUser {
    fn make(user: &'static str, uid: u32, group: &'static str, gid: u32) -> NewUser {
        NewUser(user, group).remove();
        let ok = |c: &mut std::process::Command| assert!(c.status().unwrap().success(), "{c:?}");
        ok(std::process::Command::new("groupadd").args(["-g", &gid.to_string(), group]));
        ok(std::process::Command::new("useradd").args([
            "-u",
            &uid.to_string(),
            "-U",
            "-G",
            group,
            "-M",
            "-s",
            "/bin/sh",
            user,
        ]));
        NewUser(user, group)
    }
}

impl NewUser {
    fn remove(&self) {
        for (program, name) in [("userdel", self.0), ("groupdel", self.1)] {
            let _ = std::process::Command::new(program)
                .arg(name)
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for NewUser {
    fn drop(&mut self) {
        self.remove();
    }
}

#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
/// A user made on the head after the head started runs a job as themselves within a minute:
/// the job writes into `<home>/<user>` (made for them, theirs on the head), and reads a file
/// only their supplementary group may read. (Accounts were read once, at start, from
/// /etc/passwd, with no supplementary group.)
fn a_user_added_on_the_head_runs_a_job_within_a_minute_with_their_groups() {
    let mut lab = jobs_lab("accounts");
    let mac = boot(&mut lab, "x86_64", "qemu-system-x86_64", 256);
    wait_healthy(&lab, std::slice::from_ref(&mac));
    wait_idle(&lab, 1, Duration::from_secs(240));

    let _user = NewUser::make("enlistnew", 4343, "enlistgrp", 4444);
    let added = Instant::now();
    let home = lab.dir.join("home");
    let secret = home.join("for-the-group.txt");
    std::fs::write(&secret, "render farm\n").unwrap();
    let chgrp = std::process::Command::new("chgrp")
        .args(["enlistgrp", &secret.display().to_string()])
        .status()
        .unwrap();
    assert!(chgrp.success());
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640)).unwrap();

    let mine = home.join("enlistnew");
    let r = lab.wait_for(Duration::from_secs(60), "the new user's folder", || {
        mine.is_dir()
    });
    if let Err(e) = r {
        fail(&lab, &e);
    }
    // Within a minute of the account, the user's job runs on the node as them, by name (the
    // node has their account), with their supplementary group.
    let command = "id -un > who.txt; cat ../for-the-group.txt > seen.txt";
    let read = |f: &str| std::fs::read_to_string(mine.join(f)).unwrap_or_default();
    let until = added + Duration::from_secs(60);
    loop {
        let out = lab
            .exec("runuser")
            .args(["-u", "enlistnew", "--", "srun", "-N1", "--chdir"])
            .arg(&mine)
            .args(["sh", "-c", command])
            .env("SLURM_CONF", lab.slurm_conf())
            .output()
            .unwrap();
        if out.status.success() && read("who.txt").trim() == "enlistnew" {
            break;
        }
        if Instant::now() > until {
            fail(
                &lab,
                &format!(
                    "the new user's job, a minute on: {} (who.txt: {:?})",
                    text(&out),
                    read("who.txt")
                ),
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    eprintln!(
        "the new user's job ran by name {:?} after the account",
        added.elapsed()
    );
    assert_eq!(
        read("seen.txt").trim(),
        "render farm",
        "the supplementary group"
    );
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(mine.join("who.txt")).unwrap().uid();
    assert_eq!(owner, 4343, "the job's file is the user's on the head");
}

#[test]
#[ignore = "needs root, QEMU, Slurm, built images and Debian's mirror: run `cargo xtask test`"]
/// The admin builds job environments (Debian userlands: Python and MPICH, numpy for the
/// x86_64s) with `enlist env build`; two 64 MB Pentium IIs and three x86_64 PCs that join
/// mount their arch's and run their jobs in it. A user's `python3` job prints 42 on each
/// and writes into their home, seeing Debian's /usr, not the node OS's busybox (numpy works on
/// the x86_64); root on a node cannot change the environment; a job over its memory is
/// killed and the node runs the next; an MPI program compiled on a node of each kind runs
/// with `srun --mpi=pmi2` over the two Pentium IIs, and over the three x86_64s. (Jobs saw
/// busybox and the Slurm daemons only, and nothing limited their memory.)
fn job_environments_give_jobs_debians_python_and_mpi_with_memory_limits() {
    let mut lab = jobs_lab("env");
    for recipe in ["i386-mpi.yaml", "amd64-mpi.yaml"] {
        let path = root().join("tests/fixtures/env").join(recipe);
        let out = enlist_cli(&lab, &["env", "build", &path.display().to_string()]);
        assert!(
            out.status.success(),
            "enlist env build {recipe}: {}",
            text(&out)
        );
    }
    let list = text(&enlist_cli(&lab, &["env", "list"]));
    for want in ["i386", "amd64", "current", "python3-minimal", "mpich"] {
        assert!(list.contains(want), "{want}: {list}");
    }
    let macs = [
        boot(&mut lab, "i586", "qemu-system-i386", 64),
        boot(&mut lab, "i586", "qemu-system-i386", 64),
        boot(&mut lab, "x86_64", "qemu-system-x86_64", 256),
        boot(&mut lab, "x86_64", "qemu-system-x86_64", 256),
        boot(&mut lab, "x86_64", "qemu-system-x86_64", 256),
    ];
    wait_healthy(&lab, &macs);
    wait_idle(&lab, 5, Duration::from_secs(300));
    let home = lab.user_home();
    let out = as_user(
        &lab,
        "srun",
        &[
            "-N5",
            "--chdir",
            &home.display().to_string(),
            "sh",
            "-c",
            "echo $(python3 -c 'print(6*7)') $(readlink -f /bin/sh) $(uname -m) $(test -e /bin/busybox && echo busybox) | tee answer-$(hostname).txt",
        ],
    );
    if !out.status.success() {
        fail(&lab, &format!("srun: {}", text(&out)));
    }
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let mut lines: Vec<&str> = said.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "42 /usr/bin/dash i686",
            "42 /usr/bin/dash i686",
            "42 /usr/bin/dash x86_64",
            "42 /usr/bin/dash x86_64",
            "42 /usr/bin/dash x86_64"
        ],
        "Debian's Python and sh on each, no busybox: {said}"
    );
    use std::os::unix::fs::MetadataExt;
    for mac in &macs {
        let answer = home.join(format!("answer-{}.txt", lab.node_name(mac)));
        let written = std::fs::read_to_string(&answer).unwrap_or_default();
        assert!(
            written.starts_with("42 "),
            "{}: {written:?}",
            answer.display()
        );
        assert_eq!(
            std::fs::metadata(&answer).map(|m| m.uid()).unwrap_or(0),
            enlist_lab::JOB_UID,
            "the job ran as the user"
        );
    }

    // numpy on the x86_64 (Debian's i386 numpy needs SSE2: README).
    let x64 = lab.node_name(&macs[2]);
    let out = as_user(
        &lab,
        "srun",
        &[
            "-N1",
            "-w",
            &x64,
            "python3",
            "-c",
            "import numpy; print(numpy.arange(7).sum() * 2)",
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "42",
        "{}",
        text(&out)
    );

    // Root on a node cannot change the environment every node runs (read-only, root squashed).
    let p2 = lab.node_name(&macs[0]);
    let out = enlist_cli(
        &lab,
        &[
            "exec",
            "-w",
            &p2,
            "--",
            "touch /run/enlist/env/usr/bin/python3 /run/enlist/env/planted",
        ],
    );
    let said = text(&out);
    assert!(said.contains("Read-only file system"), "{said}");
    assert!(
        !list_env_files(&lab).iter().any(|f| f.ends_with("/planted")),
        "nothing planted in the environment"
    );
    a_job_has_a_private_tmp_gone_at_its_end(&lab, &p2, "/run/enlist/root-*");

    // Memory: on a 64 MB Pentium II and on the x86_64, a job that asked for 20 MB and takes
    // more (40 MB on the Pentium II, whose kernel refuses a single 60 MB allocation outright:
    // more than its RAM; 60 MB on the x86_64) is killed by the kernel within its memory cgroup
    // and ends OUT_OF_MEMORY; the node stays up and runs the next job.
    for (mac, node, mb) in [(&macs[0], &p2, 40), (&macs[2], &x64, 60)] {
        let out = home.join(format!("greedy-{node}.out"));
        let id = submit(
            &lab,
            &["-w", node, "--mem=20M", "-o", &out.display().to_string()],
            &format!("python3 -c 'import time; b = bytearray({mb} << 20); time.sleep(60)'"),
        );
        let state = wait_job_ended(&lab, &id, Duration::from_secs(120));
        let said = std::fs::read_to_string(&out).unwrap_or_default();
        assert_eq!(state, "OUT_OF_MEMORY", "job {id} on {node}: {said}");
        assert!(said.contains("oom"), "job {id} on {node}: {said:?}");
        let out = as_user(
            &lab,
            "srun",
            &["-N1", "-w", node, "python3", "-c", "print('next')"],
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "next",
            "{}",
            text(&out)
        );
        if let Err(e) = lab.wait_state(mac, "healthy", Duration::from_secs(5)) {
            fail(&lab, &e);
        }
    }

    // MPI, over nodes of one arch (a program is built for one): the user compiles on a node of
    // each kind and runs over the two Pentium IIs and over the three x86_64s.
    std::fs::copy(
        root().join("tests/fixtures/env/hello-mpi.c"),
        home.join("hello-mpi.c"),
    )
    .unwrap();
    mpi_hello_runs_a_rank_on_each(&lab, "i686", &macs[..2]);
    mpi_hello_runs_a_rank_on_each(&lab, "x86_64", &macs[2..]);
}

/// A user compiles the MPI hello on a node with the feature `arch` and runs it with
/// `srun --mpi=pmi2` over the nodes `macs` (all of that arch): one rank on each node, each
/// saying where it runs, and their Allreduce's sum right (the ranks talk to each other).
fn mpi_hello_runs_a_rank_on_each(lab: &Lab, arch: &str, macs: &[String]) {
    let home = lab.user_home();
    let chdir = format!("--chdir={}", home.display());
    let constraint = format!("--constraint={arch}");
    let program = format!("hello-mpi-{arch}");
    must_as_user(
        lab,
        "srun",
        &[
            "-N1",
            &constraint,
            &chdir,
            "mpicc",
            "-o",
            &program,
            "hello-mpi.c",
        ],
    );
    let n = macs.len();
    let said = must_as_user(
        lab,
        "srun",
        &[
            "--mpi=pmi2",
            &format!("-N{n}"),
            &constraint,
            &chdir,
            &format!("./{program}"),
        ],
    );
    let mut ranks: Vec<&str> = said.lines().filter(|l| l.starts_with("rank ")).collect();
    ranks.sort();
    assert_eq!(ranks.len(), n, "{arch}: {said}");
    let sum = n * (n - 1) / 2;
    for (i, rank) in ranks.iter().enumerate() {
        assert!(
            rank.starts_with(&format!("rank {i} of {n} on "))
                && rank.ends_with(&format!(", sum {sum}")),
            "{arch}: {said}"
        );
    }
    for mac in macs {
        assert!(
            said.contains(&format!("on {},", lab.node_name(mac))),
            "{arch}: a rank on each node: {said}"
        );
    }
}

/// Each job has a /tmp and a /dev/shm of its own, removed when it ends (a RAM-only node keeps
/// no job's leftovers): what root left in the node's /tmp is not in the job's, and what the
/// job wrote is gone from the node afterwards. `root` is where the node's job root is: the
/// node OS (`""`) or the job environment's (`/run/enlist/root-*`).
fn a_job_has_a_private_tmp_gone_at_its_end(lab: &Lab, node: &str, root: &str) {
    let exec = |command: &str| text(&enlist_cli(lab, &["exec", "-w", node, "--", command]));
    let planted = exec(&format!(
        "R=$(echo {root}/) && touch ${{R}}tmp/left-by-root && echo planted"
    ));
    assert!(planted.contains("planted"), "{planted}");
    let said = must_as_user(
        lab,
        "srun",
        &[
            "-N1",
            "-w",
            node,
            "sh",
            "-c",
            "touch /tmp/mine /dev/shm/mine && ls -A /tmp /dev/shm",
        ],
    );
    assert!(
        said.matches("mine").count() == 2 && !said.contains("left-by-root"),
        "the job's own /tmp and /dev/shm: {said}"
    );
    // Removed as the job ends, just after its last step.
    let after = || {
        exec(&format!(
            "ls -A {root}/tmp {root}/dev/shm; find {root}/var/spool/slurmd/job-tmp -mindepth 2"
        ))
    };
    let gone = lab.wait_for(Duration::from_secs(30), "the job's /tmp removed", || {
        let after = after();
        after.contains("left-by-root") && !after.contains("mine")
    });
    if let Err(e) = gone {
        fail(lab, &format!("{e}: {}", after()));
    }
}

/// The top-level entries of every published job environment version on the head.
fn list_env_files(lab: &Lab) -> Vec<String> {
    let envs = lab.dir.join("state/envs");
    let mut out = Vec::new();
    for arch in std::fs::read_dir(&envs).into_iter().flatten().flatten() {
        for version in std::fs::read_dir(arch.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let root = version.path().join("root");
            for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
                out.push(e.path().display().to_string());
            }
        }
    }
    assert!(!out.is_empty(), "no environment under {}", envs.display());
    out
}

/// Wait until job `id` has ended; its state (`scontrol show job`: kept for MinJobAge).
fn wait_job_ended(lab: &Lab, id: &str, limit: Duration) -> String {
    let until = Instant::now() + limit;
    loop {
        let shown = text(&slurm(lab, "scontrol", &["show", "job", id]));
        let state = shown
            .split_whitespace()
            .find_map(|w| w.strip_prefix("JobState="))
            .unwrap_or("")
            .to_string();
        if !state.is_empty()
            && !["PENDING", "RUNNING", "CONFIGURING", "COMPLETING"].contains(&state.as_str())
        {
            return state;
        }
        if Instant::now() > until {
            fail(
                lab,
                &format!("job {id} still {state:?} after {limit:?}: {shown}"),
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// `sinfo`'s compact state of each node (`idle~`: asleep, `down~`: held out and asleep).
fn sinfo_states(lab: &Lab) -> std::collections::HashMap<String, String> {
    must(lab, "sinfo", &["-h", "-N", "-o", "%N %t"])
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(n, s)| (n.to_string(), s.trim().to_string()))
        .collect()
}

/// Wait until every node of `names` is asleep in Slurm (powered down; `sinfo` shows `idle~`,
/// or `maint` inside the closed time's reservation).
fn wait_asleep(lab: &Lab, names: &[String], limit: Duration) {
    let r = lab.wait_for(limit, "all asleep", || {
        let asleep = lab.slurm_asleep();
        names.iter().all(|n| asleep.contains(n))
    });
    if let Err(e) = r {
        let show = must(lab, "scontrol", &["show", "node", "-o"]);
        fail(lab, &format!("{e}: {show}"));
    }
}

/// A released PC boots its own disk: once the head has answered it so, its owner switches it
/// off (the lab's PC has no disk to boot).
fn wait_own_disk_then_off(lab: &mut Lab, i: usize) {
    let r = lab.wait_for(BOOT_LIMIT, "local disk boot answer", || lab.sent_home(i));
    if let Err(e) = r {
        fail(lab, &e);
    }
    lab.pcs[i].kill();
}

/// Power on each PC whose magic packet has come (once per packet), until `done` holds.
fn power_buttons(
    lab: &mut Lab,
    watch: &enlist_lab::wol::WolWatch,
    ignore: &[usize],
    limit: Duration,
    what: &str,
    done: impl Fn(&Lab) -> bool,
) {
    let mut buttons = enlist_lab::wol::PowerButtons::new(lab, watch);
    let until = Instant::now() + limit;
    while !done(lab) {
        if let Err(e) = buttons.press(lab, watch, ignore) {
            fail(lab, &e);
        }
        if Instant::now() > until {
            fail(lab, &format!("{what}: not within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The room's timetable and the queue rule Slurm (issue 24). Three PCs of an on-demand group
/// join once; closing the window releases them to their own disks, and Slurm keeps them
/// asleep. A job submitted while the window is closed waits, saying why, and no PC is woken;
/// once it opens Slurm wakes exactly the two the job needs (the lab's power button is pressed
/// only when the head's magic packet for that MAC is on the wire), they join under their
/// names, the job runs, and after `jobs.idle_release` they are released and asleep again. A
/// job longer than what is left of the window does not start. Then a PC up on another OS (a
/// host answering ARP with its MAC and address) is never sent a packet, and a PC that does
/// not wake is held out "did not wake" with its rate while the job runs on the third.
#[test]
#[ignore = "needs root, QEMU, Slurm and built images: run `cargo xtask test`"]
fn slurm_wakes_asleep_pcs_for_work_inside_the_window_and_releases_them_when_idle() {
    // Open now; closes 40-41 minutes ahead (then an hour closed, daily).
    let (enlist_at, release_at) = enlist_lab::daily_window(Duration::from_secs(40 * 60));
    let config = format!(
        "  group: night\n{}  idle_release: 30s\n  wake_timeout: 40s\nschedules:\n  - group: night\n    enlist: \"{enlist_at}\"\n    release: \"{release_at}\"\n",
        JOBS_CONFIG,
    );
    let mut lab = jobs_lab_with("wake", &config);
    let enlist = root().join("target/release/enlist");
    let watch = enlist_lab::wol::WolWatch::start(&lab.ns).unwrap_or_else(|e| fail(&lab, &e));
    for _ in 0..3 {
        lab.boot(enlist_lab::Profile::P2Pxe, None)
            .unwrap_or_else(|e| fail(&lab, &e));
    }
    let macs: Vec<String> = lab.pcs.iter().map(|p| p.mac.clone()).collect();
    wait_healthy(&lab, &macs);
    wait_idle(&lab, 3, Duration::from_secs(240));
    let names: Vec<String> = macs.iter().map(|m| lab.node_name(m)).collect();

    // Open until 40 minutes from now: an hour's job does not start. The head holds the
    // group's nodes over the closed time once Slurm knows them (within seconds).
    let r = lab.wait_for(Duration::from_secs(60), "the closed time held", || {
        let res = text(&slurm(&lab, "scontrol", &["show", "res", "-o"]));
        names.iter().all(|n| res.contains(n.as_str())) || res.contains("node-[770101-770103]")
    });
    if let Err(e) = r {
        fail(&lab, &e);
    }
    let long = submit(&lab, &["--time=60"], "true");
    std::thread::sleep(Duration::from_secs(15));
    assert_eq!(job_field(&lab, &long, "%T"), "PENDING");
    let reason = job_field(&lab, &long, "%R");
    assert!(reason.contains("Reserved for maintenance"), "{reason}");
    must(&lab, "scancel", &[&long]);

    // Closed: the nodes are released to their own disks and stay in Slurm, asleep.
    let out = lab.enlist(&enlist, &["schedule", "run-now", "night"]);
    assert!(out.status.success(), "{}", text(&out));
    for i in 0..3 {
        wait_own_disk_then_off(&mut lab, i);
    }
    wait_asleep(&lab, &names, Duration::from_secs(120));
    let job = submit(
        &lab,
        &["-N2", "--time=2"],
        "sleep 15; echo $SLURM_JOB_NODELIST > woken.out",
    );
    std::thread::sleep(Duration::from_secs(15));
    let reason = job_field(&lab, &job, "%R");
    assert!(reason.contains("Reserved for maintenance"), "{reason}");
    assert!(
        watch.macs().is_empty(),
        "woken while closed: {:?}",
        watch.macs()
    );
    // The dashboard shows the group closed and its next opening; skip and unskip it there.
    let password = lab
        .admin_password(&enlist)
        .unwrap_or_else(|e| fail(&lab, &e));
    lab.browser(
        &root().join("tests/browser/schedules.mjs"),
        &["http://10.77.0.1:8080/", &password, "night"],
    )
    .unwrap_or_else(|e| fail(&lab, &e));

    // Open: exactly two PCs are woken, join, run the job, and sleep again when idle.
    let out = lab.enlist(&enlist, &["schedule", "run-now", "night"]);
    assert!(out.status.success(), "{}", text(&out));
    power_buttons(
        &mut lab,
        &watch,
        &[],
        Duration::from_secs(300),
        "the job ran",
        |l| job_field(l, &job, "%T").is_empty(),
    );
    let woken: Vec<usize> = (0..3)
        .filter(|&i| watch.packets_for(&macs[i]) > 0)
        .collect();
    assert_eq!(woken.len(), 2, "magic packets for {:?}", watch.macs());
    let ran: Vec<String> = woken.iter().map(|&i| names[i].clone()).collect();
    let mut out = enlist::hostlist::expand(&home_file(&lab, "woken.out")).unwrap_or_default();
    out.sort();
    assert_eq!(out, ran, "the job ran on the two woken nodes");
    // What they lent: time enlisted, of it time running the job; by node and by group.
    for &i in &woken {
        let v = lab
            .curl(&format!("/api/v1/nodes/{}", macs[i]))
            .unwrap_or_default();
        let (enlisted, jobs) = (&v["node"]["enlisted_secs"], &v["node"]["job_secs"]);
        assert!(
            jobs.as_u64() >= Some(5) && enlisted.as_u64() > jobs.as_u64(),
            "{v}"
        );
    }
    let groups = lab.curl("/api/v1/nodes").unwrap_or_default()["groups"].clone();
    assert_eq!(groups[0]["group"], "night", "{groups}");
    assert!(groups[0]["job_secs"].as_u64() >= Some(10), "{groups}");
    assert!(lab.metric("enlist_lent_seconds_total{group=\"night\",what=\"jobs\"}") >= 10.0);
    let long = text(&lab.enlist(&enlist, &["nodes", "--long"]));
    assert!(
        long.contains("Lent, by group") && long.contains("ON JOBS"),
        "{long}"
    );
    for &i in &woken {
        wait_own_disk_then_off(&mut lab, i);
    }
    wait_asleep(&lab, &names, Duration::from_secs(120));
    let st = sinfo_states(&lab);
    assert!(names.iter().all(|n| st[n] == "idle~"), "{st:?}");

    // Three one-node jobs at once take all three PCs: the first is up on another OS, the
    // second does not wake, the third runs all three jobs (each held-out node's job is
    // requeued, and Slurm starts a requeued job again after its credential lifetime, 30 s).
    let ip = lab
        .curl(&format!("/api/v1/nodes/{}", macs[0]))
        .unwrap_or_default()["node"]["ip"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let owner = enlist_lab::host::Host::new(&lab, "owner", &macs[0]).unwrap();
    owner.address(&format!("{ip}/24")).unwrap();
    let before: Vec<usize> = macs.iter().map(|m| watch.packets_for(m)).collect();
    let array = submit(
        &lab,
        &["--time=2", "--array=1-3"],
        "hostname > task-$SLURM_ARRAY_TASK_ID.out",
    );
    power_buttons(
        &mut lab,
        &watch,
        &[1],
        Duration::from_secs(480),
        "the array ran",
        |l| job_field(l, &array, "%T").is_empty(),
    );
    for t in 1..=3 {
        assert_eq!(
            home_file(&lab, &format!("task-{t}.out")),
            names[2],
            "task {t}"
        );
    }
    assert_eq!(
        watch.packets_for(&macs[0]),
        before[0],
        "the PC in use was woken"
    );
    assert!(watch.packets_for(&macs[1]) > before[1]);
    assert!(
        events(&lab, &macs[1]).contains("did not wake"),
        "{}",
        events(&lab, &macs[1])
    );
    let v = lab
        .curl(&format!("/api/v1/nodes/{}", macs[1]))
        .unwrap_or_default();
    assert!(
        v["node"]["wakes_tried"].as_u64() > v["node"]["wakes_woke"].as_u64(),
        "{v}"
    );
    let held = must(&lab, "sinfo", &["-h", "-R", "-o", "%n %E"]);
    assert!(
        held.contains(&format!("{} did not wake", names[1])),
        "{held}"
    );
    assert!(held.contains(&format!("{} in use", names[0])), "{held}");
    for (outcome, least) in [("woke", 3.0), ("in-use", 1.0), ("did-not-wake", 1.0)] {
        let n = lab.metric(&format!(
            "enlist_wakes_total{{group=\"night\",outcome=\"{outcome}\"}}"
        ));
        assert!(n >= least, "{outcome}: {n}");
    }

    // The window closes and opens again: the held-out nodes are back in service, asleep
    // until work comes.
    drop(owner);
    for _ in 0..2 {
        let out = lab.enlist(&enlist, &["schedule", "run-now", "night"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let r = lab.wait_for(Duration::from_secs(180), "held-out nodes restored", || {
        let held = must(&lab, "sinfo", &["-h", "-R", "-o", "%n %E"]);
        let st = sinfo_states(&lab);
        held.trim().is_empty()
            && names
                .iter()
                .all(|n| st.get(n).is_some_and(|s| s == "idle~"))
    });
    if let Err(e) = r {
        let held = must(&lab, "sinfo", &["-h", "-R", "-o", "%n %E"]);
        fail(&lab, &format!("{e}: {held} {:?}", sinfo_states(&lab)));
    }
}
