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
        .args(["http://10.77.0.1:8080/", &password, &names[0], &names[1]])
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
}
