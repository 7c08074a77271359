//! `enlist nodes` and `enlist node ...`: talk to a running head's admin API over its admin
//! socket (readable by root only).

use std::path::Path;

use clap::{Args, Subcommand};
use std::collections::HashMap;

use anyhow::Context;
use enlist_api::admin::{
    Enrollment, EnrollmentRequest, Forgotten, GroupLent, ImportAnswer, NameList, NamedPc,
    NodeAction, NodeDetail, NodeList, NodeLogText, NodeView, PowerAnswer, PowerRequest, Rotation,
    MAX_IMPORT,
};
use enlist_api::Mac;

use super::client::{head, Head};

/// The nodes an action is for.
#[derive(Args)]
pub struct Target {
    /// Node names or MACs, a host list (`node-[01-40],lab-pc-7`) or groups (`@room-101`).
    nodes: String,
    /// Leave these out (a host list, `@group` too).
    #[arg(long, short = 'x')]
    exclude: Option<String>,
}

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Hand the PCs back to their own disks (their agents reboot them).
    Release(Target),
    /// Reboot the nodes into the node OS again.
    Reboot(Target),
    /// Let pending nodes join.
    Approve(Target),
    /// Enlist released nodes again.
    Enlist(Target),
    /// Power the PCs off.
    PowerOff(Target),
    /// Wake the PCs (Wake-on-LAN magic packet; their BIOS must allow it).
    Wake(Target),
    /// Forget nodes that are not up, for PCs gone for good: Slurm forgets them (one that
    /// joined once stays known, asleep, to be woken for work) and the registry deletes them
    /// (their history stays under their MACs; a PC that boots again is a new PC).
    Forget(Target),
    /// Put the nodes in a group (`enlist exec -g`, `enlist wake --group`).
    Group {
        #[command(flatten)]
        target: Target,
        group: String,
    },
    /// Give one node another name (a host label; the dashboard's rename). Its Slurm name
    /// follows at its next join: rename PCs before they join, or forget the old name.
    Rename { node: String, name: String },
    /// Show one node and its event history.
    Show { node: String },
    /// The node's log as the head keeps it across reboots: its kernel's messages, its
    /// agent's, slurmd's and munged's, a line per boot.
    Logs {
        node: String,
        /// Keep printing lines as they come (Ctrl-C ends).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Bytes from the end to show first.
        #[arg(long, default_value_t = 64 * 1024)]
        bytes: u64,
    },
    /// Name PCs by MAC from a CSV file of `MAC,name[,group]` lines (`#` comments; a header
    /// line `mac,name,group` is skipped): nodes are renamed now, PCs not seen yet get the
    /// name when they first boot. All or nothing.
    Import { file: std::path::PathBuf },
}

/// An optional value as the table shows it.
fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A node's part in the jobs: the scheduler's state and running jobs (`allocated/2`), else
/// what its agent reports (`starting`, `failed: ...`), else `-` (jobs off).
fn sched(n: &NodeView) -> String {
    if let Some(st) = &n.sched {
        // Slurm's own mark for a node asleep (power saving): `idle~`.
        let asleep = if st.asleep { "~" } else { "" };
        return match st.jobs {
            0 => format!("{}{asleep}", st.state),
            j => format!("{}{asleep}/{j}", st.state),
        };
    }
    or_dash(n.jobs.as_deref()).chars().take(18).collect()
}

pub fn list(config: &Path, json: bool, long: bool) -> anyhow::Result<()> {
    let h = head(config)?;
    let NodeList { nodes, groups } = h.get("/api/v1/nodes")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&nodes)?);
        return Ok(());
    }
    print_table(&nodes, long);
    let problems = problems(&nodes);
    if !problems.is_empty() {
        println!("\nNot joined, and why:\n{problems}");
    }
    let held = held_out(&nodes);
    if !held.is_empty() {
        println!("\nHeld out of the jobs, and why:\n{held}");
    }
    if long {
        println!("\nLent, by group:\n{}", lent_by_group(&groups));
    }
    Ok(())
}

/// A time lent, as the tables show it: hours and minutes (`125:07`).
fn hours(secs: u64) -> String {
    format!("{}:{:02}", secs / 3600, secs % 3600 / 60)
}

/// What each group lent: hours enlisted, hours running jobs (and the share), wakes.
fn lent_by_group(groups: &[GroupLent]) -> String {
    let mut out = format!(
        "  {:<16} {:>5} {:>10} {:>10} {:>6} {:>8}\n",
        "GROUP", "NODES", "ENLISTED", "ON JOBS", "USED", "WOKE"
    );
    for g in groups {
        let used = match g.enlisted_secs {
            0 => "-".to_string(),
            e => format!("{:.0}%", 100.0 * g.job_secs as f64 / e as f64),
        };
        let woke = rate(g.wakes_woke, g.wakes_tried);
        out.push_str(&format!(
            "  {:<16} {:>5} {:>10} {:>10} {:>6} {:>8}\n",
            g.group,
            g.nodes,
            hours(g.enlisted_secs),
            hours(g.job_secs),
            used,
            woke
        ));
    }
    out
}

/// One line per node (with `long`, what it lent too).
fn print_table(nodes: &[NodeView], long: bool) {
    let lent_head = if long {
        format!(" {:>10} {:>7}", "ENLISTED", "ON JOBS")
    } else {
        String::new()
    };
    println!(
        "{:<16} {:<18} {:<15} {:<11} {:<18} {:<28} {:>7} {:>6} {:>6}{lent_head}",
        "NAME", "MAC", "IP", "STATE", "JOBS", "CPU", "RAM MB", "LOAD", "WOKE"
    );
    for n in nodes {
        let cpu: String = or_dash(n.info.as_ref().map(|i| &i.cpu_model))
            .chars()
            .take(28)
            .collect();
        let ram = or_dash(n.info.as_ref().map(|i| i.mem_total_kb / 1024));
        let load = or_dash(n.heartbeat.as_ref().map(|h| format!("{:.2}", h.load1)));
        let lent = if long {
            format!(" {:>10} {:>7}", hours(n.enlisted_secs), hours(n.job_secs))
        } else {
            String::new()
        };
        println!(
            "{:<16} {:<18} {:<15} {:<11} {:<18} {:<28} {:>7} {:>6} {:>6}{lent}",
            n.name,
            n.mac.to_string(),
            or_dash(n.ip),
            n.state.as_str(),
            sched(n),
            cpu,
            ram,
            load,
            rate(n.wakes_woke, n.wakes_tried)
        );
    }
}

/// Wake-on-LAN success: `woke/tried` (`-` if never woken for work).
fn rate(woke: u32, tried: u32) -> String {
    match tried {
        0 => "-".into(),
        t => format!("{woke}/{t}"),
    }
}

/// One line per node the scheduler holds out, with its reason (`sinfo -R`).
fn held_out(nodes: &[NodeView]) -> String {
    nodes
        .iter()
        .filter_map(|n| {
            let s = n.sched.as_ref()?;
            let why = s.reason.as_deref()?;
            Some(format!("  {}: {} ({why})\n", n.name, s.state))
        })
        .collect()
}

/// One line per node the head can say why it has not joined (`name: why`).
fn problems(nodes: &[NodeView]) -> String {
    nodes
        .iter()
        .filter_map(|n| Some(format!("  {}: {}\n", n.name, n.problem.as_deref()?)))
        .collect()
}

pub fn act(config: &Path, cmd: NodeCmd) -> anyhow::Result<()> {
    let h = head(config)?;
    let (target, action) = match cmd {
        NodeCmd::Release(t) => (t, NodeAction::Release),
        NodeCmd::Reboot(t) => (t, NodeAction::Reboot),
        NodeCmd::Approve(t) => (t, NodeAction::Approve),
        NodeCmd::Enlist(t) => (t, NodeAction::Enlist),
        NodeCmd::PowerOff(t) => (t, NodeAction::PowerOff),
        NodeCmd::Wake(t) => (t, NodeAction::Wake),
        NodeCmd::Forget(t) => return forget(&h, &t),
        NodeCmd::Group { target, group } => (target, NodeAction::Group(group)),
        NodeCmd::Rename { node, name } => {
            let v = send(&h, &node, &NodeAction::Rename(name))?;
            println!("{node}: now {}", v.name);
            return Ok(());
        }
        NodeCmd::Import { file } => return import(&h, &file),
        NodeCmd::Logs {
            node,
            follow,
            bytes,
        } => return logs(&h, &node, follow, bytes),
        NodeCmd::Show { node } => {
            let d: NodeDetail = h.get(&format!("/api/v1/nodes/{node}"))?;
            println!("{}", serde_json::to_string_pretty(&d)?);
            return Ok(());
        }
    };
    each_node(&h, &target, action.name(), |name| {
        let v = send(&h, name, &action)?;
        Ok(match &action {
            NodeAction::Group(_) => format!("{}: group {}", v.name, v.group),
            a => format!("{}: {} sent; state {}", v.name, a.name(), v.state),
        })
    })
}

/// `enlist node forget NODES`: a DELETE per node.
fn forget(h: &Head, target: &Target) -> anyhow::Result<()> {
    each_node(h, target, "forget", |name| {
        let f: Forgotten = h.delete(&format!("/api/v1/nodes/{name}"))?;
        Ok(format!("{} ({}): forgotten; {}", f.name, f.mac, f.workload))
    })
}

/// `what` done to each selected node by `f` (its line printed, or its error), going on past
/// failures; an error naming how many failed.
fn each_node(
    h: &Head,
    target: &Target,
    what: &str,
    f: impl Fn(&str) -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let names = selected(h, &target.nodes, target.exclude.as_deref())?;
    let mut failed = 0;
    for name in &names {
        match f(name) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("enlist: {name}: {e:#}");
                failed += 1;
            }
        }
    }
    anyhow::ensure!(
        failed == 0,
        "{what} failed on {failed} of {} node(s)",
        names.len()
    );
    Ok(())
}

/// `enlist node logs NODE [-f]`: the log's end, then (following) what is added, every 2 s.
fn logs(h: &Head, node: &str, follow: bool, bytes: u64) -> anyhow::Result<()> {
    use std::io::Write;
    let path = format!("/api/v1/nodes/{node}/logs");
    let mut piece: NodeLogText = h.get(&format!("{path}?tail={bytes}"))?;
    loop {
        let mut out = std::io::stdout().lock();
        out.write_all(piece.text.as_bytes())?;
        out.flush()?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_secs(2));
        piece = h.get(&format!("{path}?file={}&from={}", piece.file, piece.end))?;
    }
}

/// `enlist node import FILE`: the file checked whole first (every bad line named), then sent
/// in parts the API takes.
fn import(h: &Head, file: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let pcs = parse_names(&text).map_err(|errors| {
        let lines: Vec<String> = errors
            .iter()
            .map(|(line, e)| format!("{}:{line}: {e}", file.display()))
            .collect();
        anyhow::anyhow!("{}", lines.join("\n"))
    })?;
    anyhow::ensure!(!pcs.is_empty(), "{}: no PCs listed", file.display());
    let (mut changed, mut waiting, mut unchanged) = (vec![], vec![], 0);
    for part in pcs.chunks(MAX_IMPORT) {
        let a: ImportAnswer = h.post(
            "/api/v1/names",
            Some(&NameList {
                nodes: part.to_vec(),
            }),
        )?;
        changed.extend(a.changed);
        waiting.extend(a.waiting);
        unchanged += a.unchanged;
    }
    for c in &changed {
        println!("{c}");
    }
    if !waiting.is_empty() {
        println!("named when they first boot: {}", waiting.join(", "));
    }
    println!(
        "{} PC(s): {} changed, {} not seen yet, {unchanged} already so",
        pcs.len(),
        changed.len(),
        waiting.len()
    );
    Ok(())
}

/// `MAC,name[,group]` lines; blank lines, `#` comments and a `mac,...` header are skipped.
/// Every bad line is returned with its number, and a MAC or name given twice.
fn parse_names(text: &str) -> Result<Vec<NamedPc>, Vec<(usize, String)>> {
    let mut pcs: Vec<NamedPc> = vec![];
    let mut errors = vec![];
    let mut first_line = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() || (pcs.is_empty() && line.to_ascii_lowercase().starts_with("mac,")) {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        let (mac, name, group) = match fields[..] {
            [mac, name] => (mac, name, None),
            [mac, name, group] => (mac, name, Some(group).filter(|g| !g.is_empty())),
            _ => {
                errors.push((n, format!("{line:?}: write MAC,name or MAC,name,group")));
                continue;
            }
        };
        let mac: Mac = match mac.parse() {
            Ok(m) => m,
            Err(e) => {
                errors.push((n, format!("{mac:?}: {e}")));
                continue;
            }
        };
        if !enlist::config::valid_host_label(name) {
            errors.push((
                n,
                format!("{name:?} is not a host name (1-63 letters, digits and '-')"),
            ));
            continue;
        }
        if let Some(g) = group.filter(|g| !enlist::config::valid_host_label(g)) {
            errors.push((n, format!("{g:?} is not a group name")));
            continue;
        }
        for key in [mac.to_string(), name.to_string()] {
            if let Some(before) = first_line.insert(key.clone(), n) {
                errors.push((n, format!("{key} is on line {before} too")));
            }
        }
        pcs.push(NamedPc {
            mac,
            name: name.to_string(),
            group: group.map(str::to_string),
        });
    }
    if errors.is_empty() {
        Ok(pcs)
    } else {
        Err(errors)
    }
}

/// The names a selection (`node-[01-40]`, `@group`, minus `exclude`) stands for; asks the
/// head for its nodes' groups only when a group is named. An empty selection is an error.
pub(super) fn selected(h: &Head, spec: &str, exclude: Option<&str>) -> anyhow::Result<Vec<String>> {
    let needs_groups = spec.contains('@') || exclude.is_some_and(|x| x.contains('@'));
    let nodes: Vec<(String, String)> = if needs_groups {
        let NodeList { nodes, .. } = h.get("/api/v1/nodes")?;
        nodes.into_iter().map(|n| (n.name, n.group)).collect()
    } else {
        vec![]
    };
    let names = enlist::hostlist::select(spec, exclude, &nodes)?;
    anyhow::ensure!(!names.is_empty(), "{spec:?} selects no node");
    Ok(names)
}

/// Send `action` to `node`; the node as it is then.
fn send(h: &Head, node: &str, action: &NodeAction) -> anyhow::Result<NodeView> {
    let (name, body) = action.request();
    h.post(&format!("/api/v1/nodes/{node}/{name}"), body.as_ref())
}

/// `enlist enroll`: open the enrollment window for `length`, close it, or say how it stands.
pub fn enroll(
    config: &Path,
    length: Option<std::time::Duration>,
    close: bool,
) -> anyhow::Result<()> {
    let h = head(config)?;
    let v: Enrollment = match (length, close) {
        (None, false) => h.get("/api/v1/enrollment")?,
        (length, _) => {
            let for_secs = length.map_or(0, |d| d.as_secs());
            h.post("/api/v1/enrollment", Some(&EnrollmentRequest { for_secs }))?
        }
    };
    let policy = v.policy;
    match v.window_secs {
        Some(left) => println!(
            "enrollment window open for {}: new PCs that boot now join with no approval (policy otherwise: {policy})",
            humantime::format_duration(std::time::Duration::from_secs(left))
        ),
        None => println!("no enrollment window open; new PCs: {policy}"),
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum JobsCmd {
    /// Replace the cluster's munge key: the nodes that are up take the new one, then the
    /// head's munged (a key copied from a node before is worthless after).
    RotateKey,
    /// Slurm's ResumeProgram (slurmctld runs it): wake the nodes of a host list.
    #[command(hide = true)]
    Resume { nodes: String },
    /// Slurm's SuspendProgram (slurmctld runs it): release the nodes of a host list.
    #[command(hide = true)]
    Suspend { nodes: String },
}

/// `enlist jobs ...`.
pub fn jobs(config: &Path, cmd: JobsCmd) -> anyhow::Result<()> {
    let h = head(config)?;
    match cmd {
        JobsCmd::RotateKey => {
            let Rotation { told, silent } = h.post("/api/v1/jobs/rotate-key", None::<&()>)?;
            println!(
                "munge key replaced; {} node(s) told, the head's munged restarted",
                told.len()
            );
            if !silent.is_empty() {
                println!(
                    "not confirmed (they take the key when they join again): {}",
                    enlist::hostlist::fold(&silent.iter().map(String::as_str).collect::<Vec<_>>())
                );
            }
            Ok(())
        }
        JobsCmd::Resume { nodes } => power(&h, "resume", nodes),
        JobsCmd::Suspend { nodes } => power(&h, "suspend", nodes),
    }
}

/// `enlist jobs resume|suspend HOSTLIST`: what the head did, one line per node (slurmctld
/// does not keep a program's output; the head's log and the nodes' histories do). Fails
/// when nothing was done.
fn power(h: &Head, what: &str, nodes: String) -> anyhow::Result<()> {
    let PowerAnswer { done, skipped } = h.post(
        &format!("/api/v1/jobs/{what}"),
        Some(&PowerRequest { nodes }),
    )?;
    for n in &done {
        println!("{n}: {what}d");
    }
    for s in &skipped {
        println!("{}: not {what}d: {}", s.node, s.why);
    }
    anyhow::ensure!(!done.is_empty() || skipped.is_empty(), "no node {what}d");
    Ok(())
}

/// `enlist wake NODE` or `enlist wake --group G`: Wake-on-LAN, one PC every [`enlist::wol::PACE`].
pub fn wake(config: &Path, node: Option<String>, group: Option<String>) -> anyhow::Result<()> {
    let h = head(config)?;
    let names: Vec<String> = match (node, group) {
        (Some(n), None) => vec![n],
        (None, Some(g)) => selected(&h, &format!("@{g}"), None)?,
        _ => anyhow::bail!("name a node, or a group with --group"),
    };
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(enlist::wol::PACE);
        }
        send(&h, name, &NodeAction::Wake)?;
        println!("{name}: magic packet sent");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_names_file_is_read_with_comments_and_a_header_and_every_bad_line_is_named() {
        let ok = "mac,name,group\n# room 101\n52:54:00:00:00:01, lab101-01, lab101\n\n52-54-00-00-00-02,lab101-02 # by the door\n";
        let pcs = parse_names(ok).expect("parses");
        assert_eq!(pcs.len(), 2);
        assert_eq!(
            (pcs[0].name.as_str(), pcs[0].group.as_deref()),
            ("lab101-01", Some("lab101"))
        );
        assert_eq!(
            (pcs[1].mac.to_string().as_str(), pcs[1].group.as_deref()),
            ("52:54:00:00:00:02", None)
        );
        let bad = "52:54:00:00:00:01,lab101-01\nnot-a-mac,x\n52:54:00:00:00:03,lab_3\n52:54:00:00:00:01,lab101-04\n52:54:00:00:00:05\n";
        let errors = parse_names(bad).expect_err("bad lines");
        let lines: Vec<usize> = errors.iter().map(|(n, _)| *n).collect();
        assert_eq!(lines, [2, 3, 4, 5], "{errors:?}");
        assert!(errors[2].1.contains("line 1"), "{errors:?}");
    }

    #[test]
    fn only_nodes_with_a_problem_are_listed_under_the_table() {
        let nodes: Vec<NodeView> = serde_json::from_value(serde_json::json!([
            view("52:54:00:00:00:01", "node-01", None),
            view(
                "52:54:00:00:00:02",
                "node-02",
                Some("never registered; last seen: initrd by http, 75 s ago")
            ),
            view("52:54:00:00:00:03", "node-03", None),
        ]))
        .expect("views");
        assert_eq!(
            problems(&nodes),
            "  node-02: never registered; last seen: initrd by http, 75 s ago\n"
        );
    }

    fn view(mac: &str, name: &str, problem: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "mac": mac, "name": name, "group": "default", "state": "stuck", "ip": null,
            "released": false, "approved": true, "candidate": false, "info": null,
            "heartbeat": null, "silent_secs": null, "online": false, "boot_seconds": null,
            "boot": [], "created": 0, "sched": null, "jobs": null, "problem": problem,
        })
    }
}
