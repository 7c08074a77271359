//! `enlist exec` end to end: a Pentium II and an x86_64 PC boot, and the admin runs commands on
//! both at once with the installed CLI, as with clush: folded output, the largest exit code,
//! timeouts, a flood of output cut on the node, and a PC that dies mid-command reported
//! unreachable while the other answers. Needs root, QEMU and the built images (`#[ignore]`d
//! for a plain `cargo test`; `cargo xtask test` runs it).

#![allow(clippy::unwrap_used)] // tests unwrap what they set up

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use enlist_lab::Lab;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `enlist exec ARGS` run in the head's namespace, as an admin on the head would.
fn exec(lab: &Lab, args: &[&str]) -> Output {
    let mut c = lab.exec(&root().join("target/release/enlist").display().to_string());
    c.arg("exec")
        .arg("--config")
        .arg(lab.dir.join("config.yaml"))
        .args(args);
    c.output().unwrap()
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

fn events(lab: &Lab, mac: &str) -> String {
    lab.curl(&format!("/api/v1/nodes/{mac}"))
        .map(|v| v["events"].to_string())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root, QEMU and built images: run `cargo xtask test`"]
fn exec_runs_on_every_node_folds_times_out_cuts_and_reports_a_dead_pc() {
    let ns = format!("exec-all-{}", std::process::id() % 10000);
    let dir = root().join("lab").join(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    let mut lab = Lab::new(&ns, &dir).unwrap();
    let images = root().join("images/out");
    let cfg = lab.write_config("dhcp", &images, "").unwrap();
    lab.start_head(&root().join("target/release/enlist"), &cfg)
        .unwrap_or_else(|e| panic!("{e}\n{}", lab.head_log()));
    let p2 = lab
        .boot_image_direct(&images, "i586", "qemu-system-i386", 64)
        .unwrap();
    let x64 = lab
        .boot_image_direct(&images, "x86_64", "qemu-system-x86_64", 256)
        .unwrap();
    let macs = [lab.pcs[p2].mac.clone(), lab.pcs[x64].mac.clone()];
    for mac in &macs {
        if let Err(e) = lab.wait_state(mac, "healthy", Duration::from_secs(300)) {
            panic!("{e}\n{}", lab.report());
        }
    }

    // Two kinds of PC, two folded answers.
    let o = exec(&lab, &["--all", "-b", "--", "uname", "-m"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    let text = out(&o);
    assert_eq!(
        text.matches("---------------").count(),
        4,
        "two headers: {text}"
    );
    assert!(text.contains("x86_64"), "{text}");
    assert!(text.contains("i586") || text.contains("i686"), "{text}");
    assert_eq!(text.matches(" (1)").count(), 2, "{text}");
    let identical = exec(&lab, &["--all", "-b", "--", "echo", "same"]);
    assert!(
        out(&identical).contains("] (2)"),
        "one folded group of both: {}",
        out(&identical)
    );

    // Host lists as clush and scontrol take them: both put in a group by one host list,
    // then that group less one node.
    let names: Vec<String> = macs.iter().map(|m| lab.node_name(m)).collect();
    let both = names.join(",");
    let o = lab.enlist(
        &root().join("target/release/enlist"),
        &["node", "group", &both, "room7"],
    );
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o).matches(": group room7").count(), 2, "{}", out(&o));
    let o = exec(
        &lab,
        &["-w", "@room7", "-x", &names[0], "--", "echo", "here"],
    );
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert!(
        out(&o).contains(&names[1]) && !out(&o).contains(&names[0]),
        "only {}: {}",
        names[1],
        out(&o)
    );
    let o = exec(&lab, &["--json", "-w", &names[1], "--", "echo", "here"]);
    let v: serde_json::Value = serde_json::from_str(&out(&o)).unwrap_or_default();
    assert_eq!(v["results"][0]["node"], names[1].as_str(), "{}", out(&o));
    assert_eq!(v["results"][0]["output"], "here\n", "{}", out(&o));
    assert_eq!(v["results"][0]["exit"], 0, "{}", out(&o));
    // Renamed, a node answers to its new name.
    let o = lab.enlist(
        &root().join("target/release/enlist"),
        &["node", "rename", &names[1], "pc-renamed"],
    );
    assert!(
        o.status.success() && out(&o).contains("now pc-renamed"),
        "{}{}",
        out(&o),
        err(&o)
    );
    let o = exec(&lab, &["-w", "pc-renamed", "--", "echo", "renamed"]);
    assert!(
        out(&o).contains("pc-renamed: renamed"),
        "{}{}",
        out(&o),
        err(&o)
    );
    let o = exec(&lab, &["-a", "-x", "@room7", "--", "true"]);
    assert!(
        !o.status.success() && err(&o).contains("selects no node"),
        "{}",
        err(&o)
    );

    // -S: the largest exit code; without it, success.
    let o = exec(&lab, &["--all", "-S", "--", "sh -c 'exit 3'"]);
    assert_eq!(o.status.code(), Some(3), "{}", err(&o));
    assert!(err(&o).contains("exited with exit code 3"), "{}", err(&o));
    assert_eq!(exec(&lab, &["--all", "--", "false"]).status.code(), Some(0));

    // A timeout for each node, in about the timeout.
    let t0 = Instant::now();
    let o = exec(&lab, &["--all", "--timeout", "5", "--", "sleep", "100"]);
    let took = t0.elapsed();
    assert_eq!(err(&o).matches("command timeout").count(), 2, "{}", err(&o));
    assert!(took < Duration::from_secs(20), "timeouts took {took:?}");

    // 20 MB of output: cut on the node, the head does not grow.
    let before = lab.head_rss_kb();
    let o = exec(&lab, &["--all", "-b", "--", "yes | head -c 20000000"]);
    let after = lab.head_rss_kb();
    assert!(o.status.success(), "{}", err(&o));
    assert!(
        out(&o).contains("[output cut: 19991808 more bytes not shown]"),
        "{}",
        &out(&o)[out(&o).len().saturating_sub(300)..]
    );
    assert!(after < before + 4096, "head RSS {before} -> {after} KiB");

    // Who ran what, in each node's history.
    for mac in &macs {
        let h = events(&lab, mac);
        assert!(h.contains("by admin from") && h.contains("uname -m"), "{h}");
        assert!(h.contains("exit 3") && h.contains("timeout"), "{h}");
    }

    // The dashboard: tick both nodes, run a command, one folded answer (Debian's chromium).
    let pw = std::process::Command::new(root().join("target/release/enlist"))
        .args(["admin", "set-password", "--random", "--config"])
        .arg(lab.dir.join("config.yaml"))
        .output()
        .unwrap();
    let password = out(&pw).trim().to_string();
    let names: Vec<String> = macs.iter().map(|m| lab.node_name(m)).collect();
    let b = lab
        .exec("node")
        .arg(root().join("tests/browser/exec.mjs"))
        .args([
            "http://10.77.0.1:8080/",
            &password,
            "room7",
            &names[0],
            &names[1],
        ])
        .output()
        .unwrap();
    assert!(b.status.success(), "browser: {}{}", out(&b), err(&b));

    // A long command's lines show as they come, before it ends.
    let mut cmd = lab.exec(&root().join("target/release/enlist").display().to_string());
    cmd.arg("exec")
        .arg("--config")
        .arg(lab.dir.join("config.yaml"))
        .args(["-w", &names[1], "--", "echo first; sleep 8; echo second"])
        .stdout(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let t0 = Instant::now();
    let first = std::thread::spawn(move || {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let line = lines.next().and_then(Result::ok).unwrap_or_default();
        let at = Instant::now();
        lines.for_each(drop);
        (line, at)
    });
    let (line, at) = first.join().unwrap();
    let finished = child.wait().unwrap();
    assert!(finished.success());
    assert_eq!(line.trim(), format!("{}: first", names[1]));
    assert!(
        at.duration_since(t0) < Duration::from_secs(7),
        "the first line came after {:?}: not before the command ended",
        at.duration_since(t0)
    );

    // Every node reaches every other by name (their /etc/hosts follow the head).
    let ping = format!("ping -c1 -W3 {} && ping -c1 -W3 {}", names[0], names[1]);
    let o = exec(&lab, &["--all", "-S", "--timeout", "20", "--", &ping]);
    assert_eq!(o.status.code(), Some(0), "{}{}", out(&o), err(&o));

    // Forty PCs as one: both PCs and a third MAC named from a list (`enlist node import`),
    // the third a PC that has not booted yet (its node made when its initrd is fetched). A
    // group less one node, as clush takes it.
    let enlist_bin = root().join("target/release/enlist");
    let third = "52:54:00:77:0f:03";
    let csv = lab.dir.join("names.csv");
    std::fs::write(
        &csv,
        format!(
            "mac,name,group\n{},lab101-01,lab101\n{},lab101-02,lab101  # by the door\n{third},lab101-03,lab101\n",
            macs[0], macs[1]
        ),
    )
    .unwrap();
    let o = lab.enlist(&enlist_bin, &["node", "import", csv.to_str().unwrap()]);
    assert!(
        o.status.success() && out(&o).contains("named when they first boot: lab101-03"),
        "{}{}",
        out(&o),
        err(&o)
    );
    lab.direct_boot_files(&images, "i586", third).unwrap();
    assert_eq!(
        lab.node_name(third),
        "lab101-03",
        "named at its first sight"
    );
    let o = exec(
        &lab,
        &["-w", "@lab101", "-x", "lab101-03", "--", "hostname"],
    );
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert!(
        out(&o).contains("lab101-01: ") && out(&o).contains("lab101-02: "),
        "{}",
        out(&o)
    );
    assert!(
        !out(&o).contains("lab101-03") && !err(&o).contains("lab101-03"),
        "{}{}",
        out(&o),
        err(&o)
    );

    // A file to the group less one node, as pdcp copies it: written with its mode, and the
    // same bytes on both (checked by their SHA-256 on the nodes).
    let file = lab.dir.join("motd");
    let text: String = (0..3000)
        .map(|i| format!("line {i} of the room's motd\n"))
        .collect();
    std::fs::write(&file, &text).unwrap();
    let o = lab.enlist(
        &enlist_bin,
        &[
            "copy",
            "-w",
            "@lab101",
            "-x",
            "lab101-03",
            "--mode",
            "0600",
            file.to_str().unwrap(),
            "/etc/",
        ],
    );
    assert!(
        o.status.success()
            && out(&o).contains(&format!(
                "/etc/motd ({} bytes): written on lab101-[01-02] (2)",
                text.len()
            )),
        "{}{}",
        out(&o),
        err(&o)
    );
    let want = sha256_hex(text.as_bytes());
    let o = exec(
        &lab,
        &[
            "-w",
            "lab101-[01-02]",
            "-b",
            "-S",
            "--",
            "sha256sum /etc/motd; stat -c %a /etc/motd",
        ],
    );
    assert!(
        o.status.success()
            && out(&o).contains(&format!("{want}  /etc/motd\n600\n"))
            && out(&o).contains("lab101-[01-02] (2)"),
        "{}{}",
        out(&o),
        err(&o)
    );
    // A path a node cannot write: its failure named, the exit code 1.
    let o = lab.enlist(
        &enlist_bin,
        &[
            "copy",
            "-w",
            "lab101-01",
            file.to_str().unwrap(),
            "/proc/motd",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}{}", out(&o), err(&o));
    assert!(
        err(&o).contains("lab101-01: exited with exit code 1"),
        "{}",
        err(&o)
    );

    // A reservation added to the file, then `kill -HUP`: taken at once by the same process,
    // no lease dropped, no agent made to register again.
    let leases = || {
        let db = lab.dir.join("state/enlist.db");
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let mut st = c
            .prepare("SELECT ip, mac, state FROM leases ORDER BY ip")
            .unwrap();
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        });
        rows.unwrap().map(Result::unwrap).collect::<Vec<_>>()
    };
    let before = leases();
    assert!(before.len() >= 2, "both PCs lease: {before:?}");
    let registered = count(&events(&lab, &macs[1]), "agent registered");
    let pid = lab.head_pid().unwrap();
    let config = lab.dir.join("config.yaml");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "      lease_time: 10m\n",
        &format!("      lease_time: 10m\n      reservations: [{{ mac: \"{third}\", name: teacher, group: front }}]\n"),
    );
    std::fs::write(&config, text).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let renamed = lab.wait_for(Duration::from_secs(20), "the rename", || {
        lab.node_name(third) == "teacher"
    });
    assert!(
        renamed.is_ok(),
        "the reservation's name: {}\n{}",
        lab.node_name(third),
        lab.head_log()
    );
    assert!(
        lab.head_log()
            .contains("config reloaded: dhcp.subnets[].reservations"),
        "{}",
        lab.head_log()
    );
    assert_eq!(lab.head_pid(), Some(pid), "the same head");
    assert_eq!(leases(), before, "no lease dropped or moved");
    let o = exec(&lab, &["-w", "lab101-[01-02]", "-S", "--", "true"]);
    assert!(o.status.success(), "sessions kept: {}{}", out(&o), err(&o));
    assert_eq!(
        count(&events(&lab, &macs[1]), "agent registered"),
        registered,
        "no new registration"
    );
    let names: Vec<String> = macs.iter().map(|m| lab.node_name(m)).collect();

    // The Pentium II dies mid-command: unreachable; the other answers.
    let mut cmd = lab.exec(&root().join("target/release/enlist").display().to_string());
    cmd.arg("exec")
        .arg("--config")
        .arg(lab.dir.join("config.yaml"))
        .args([
            "--all",
            "-S",
            "--timeout",
            "60",
            "--",
            "sleep 10; echo survived",
        ]);
    let running = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    lab.pcs[p2].kill();
    let o = running.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(255), "{}{}", out(&o), err(&o));
    assert!(out(&o).contains(": survived"), "{}", out(&o));
    assert!(err(&o).contains("unreachable"), "{}", err(&o));

    // Lost, it leaves the other's /etc/hosts within a heartbeat or two.
    let gone = format!("! grep -qw {} /etc/hosts", names[0]);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let o = exec(&lab, &["-w", &names[1], "-S", "--", &gone]);
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < until,
            "{} still in {}'s /etc/hosts",
            names[0],
            names[1]
        );
        std::thread::sleep(Duration::from_secs(2));
    }

    // A host list of node actions, as scontrol takes it: the lost Pentium II is marked
    // released (its next network boot is of its own disk), the x86_64 PC is sent home.
    let o = lab.enlist(&enlist_bin, &["node", "release", "lab101-[01-02]"]);
    assert!(o.status.success(), "{}{}", out(&o), err(&o));
    assert_eq!(out(&o).matches("release sent").count(), 2, "{}", out(&o));
    let left = lab.wait_for(Duration::from_secs(60), "both released", || {
        lab.node_state(&macs[0]).as_deref() == Some("released")
            && matches!(
                lab.node_state(&macs[1]).as_deref(),
                Some("leaving" | "gone")
            )
    });
    if let Err(e) = left {
        panic!("{e}\n{}", lab.report());
    }

    // A PC gone for good is forgotten: its row deleted (`node show` finds none), its history
    // kept under its MAC, and its next boot is a new PC's.
    let state = lab.node_state(third).unwrap();
    let gauge = format!("enlist_nodes{{state=\"{state}\"}}");
    let in_state = lab.metric(&gauge);
    assert!(in_state >= 1.0, "{gauge}: {in_state}");
    let o = lab.enlist(&enlist_bin, &["node", "forget", "teacher"]);
    assert!(
        o.status.success() && out(&o).contains(&format!("teacher ({third}): forgotten")),
        "{}{}",
        out(&o),
        err(&o)
    );
    assert!(!lab
        .enlist(&enlist_bin, &["node", "show", third])
        .status
        .success());
    let history = lab.curl("/api/v1/events?limit=50").unwrap().to_string();
    assert!(history.contains("teacher forgotten"), "{history}");
    assert_eq!(lab.metric(&gauge), in_state - 1.0, "{gauge}");
    lab.direct_boot_files(&images, "i586", third).unwrap();
    assert_eq!(
        lab.node_name(third),
        "teacher",
        "a node again, named by its reservation"
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
