//! `enlist nodes` and `enlist node ...`: talk to a running head's admin API over its admin
//! socket (readable by root only).

use std::path::Path;

use clap::Subcommand;
use serde_json::Value;

use super::client::{head, Head};

#[derive(Subcommand)]
pub enum NodeCmd {
    /// Hand the PC back to its own disk (its agent reboots it).
    Release { node: String },
    /// Reboot the node into the node OS again.
    Reboot { node: String },
    /// Let a pending node join.
    Approve { node: String },
    /// Enlist a released node again.
    Enlist { node: String },
    /// Power the PC off.
    PowerOff { node: String },
    /// Wake the PC (Wake-on-LAN magic packet; its BIOS must allow it).
    Wake { node: String },
    /// Put the node in a group (`enlist exec -g`, `enlist wake --group`).
    Group { node: String, group: String },
    /// Show one node and its event history.
    Show { node: String },
}

fn call(h: &Head, method: &str, path: &str) -> anyhow::Result<Value> {
    h.call(method, path, None)
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A node's part in the jobs: the scheduler's state and running jobs (`allocated/2`), else
/// what its agent reports (`starting`, `failed: ...`), else `-` (jobs off).
fn sched(n: &Value) -> String {
    let st = &n["sched"];
    if let Some(state) = st["state"].as_str() {
        return match st["jobs"].as_u64().unwrap_or(0) {
            0 => state.to_string(),
            j => format!("{state}/{j}"),
        };
    }
    s(&n["jobs"]).chars().take(18).collect()
}

pub fn list(config: &Path, json: bool) -> anyhow::Result<()> {
    let h = head(config)?;
    let v = call(&h, "GET", "/api/v1/nodes")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v["nodes"])?);
        return Ok(());
    }
    println!(
        "{:<16} {:<18} {:<15} {:<11} {:<18} {:<28} {:>7} {:>6}",
        "NAME", "MAC", "IP", "STATE", "JOBS", "CPU", "RAM MB", "LOAD"
    );
    let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
    for n in &nodes {
        let cpu: String = s(&n["info"]["cpu_model"]).chars().take(28).collect();
        let ram = n["info"]["mem_total_kb"]
            .as_u64()
            .map(|k| (k / 1024).to_string())
            .unwrap_or("-".into());
        let load = n["heartbeat"]["load1"]
            .as_f64()
            .map(|l| format!("{l:.2}"))
            .unwrap_or("-".into());
        println!(
            "{:<16} {:<18} {:<15} {:<11} {:<18} {:<28} {:>7} {:>6}",
            s(&n["name"]),
            s(&n["mac"]),
            s(&n["ip"]),
            s(&n["state"]),
            sched(n),
            cpu,
            ram,
            load
        );
    }
    let problems = problems(&nodes);
    if !problems.is_empty() {
        println!("\nNot joined, and why:\n{problems}");
    }
    Ok(())
}

/// One line per node the head can say why it has not joined (`name: why`).
fn problems(nodes: &[Value]) -> String {
    nodes
        .iter()
        .filter_map(|n| Some(format!("  {}: {}\n", s(&n["name"]), n["problem"].as_str()?)))
        .collect()
}

pub fn act(config: &Path, cmd: NodeCmd) -> anyhow::Result<()> {
    let h = head(config)?;
    let (action, node) = match &cmd {
        NodeCmd::Release { node } => ("release", node),
        NodeCmd::Reboot { node } => ("reboot", node),
        NodeCmd::Approve { node } => ("approve", node),
        NodeCmd::Enlist { node } => ("enlist", node),
        NodeCmd::PowerOff { node } => ("power-off", node),
        NodeCmd::Wake { node } => ("wake", node),
        NodeCmd::Group { node, group } => {
            let body = serde_json::json!({ "group": group });
            let v = h.call("POST", &format!("/api/v1/nodes/{node}/group"), Some(&body))?;
            println!("{}: group {}", s(&v["name"]), s(&v["group"]));
            return Ok(());
        }
        NodeCmd::Show { node } => {
            let v = call(&h, "GET", &format!("/api/v1/nodes/{node}"))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(());
        }
    };
    let v = call(&h, "POST", &format!("/api/v1/nodes/{node}/{action}"))?;
    println!("{}: {action} sent; state {}", s(&v["name"]), s(&v["state"]));
    Ok(())
}

/// `enlist enroll`: open the enrollment window for `length`, close it, or say how it stands.
pub fn enroll(
    config: &Path,
    length: Option<std::time::Duration>,
    close: bool,
) -> anyhow::Result<()> {
    let h = head(config)?;
    let v = match (length, close) {
        (None, false) => call(&h, "GET", "/api/v1/enrollment")?,
        (length, _) => {
            let secs = length.map_or(0, |d| d.as_secs());
            let body = serde_json::json!({ "for_secs": secs });
            h.call("POST", "/api/v1/enrollment", Some(&body))?
        }
    };
    let policy = s(&v["policy"]);
    match v["window_secs"].as_u64() {
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
}

/// `enlist jobs ...`.
pub fn jobs(config: &Path, cmd: JobsCmd) -> anyhow::Result<()> {
    let h = head(config)?;
    match cmd {
        JobsCmd::RotateKey => {
            let v = h.call("POST", "/api/v1/jobs/rotate-key", None)?;
            let names = |k: &str| -> Vec<String> {
                v[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|n| n.as_str().map(str::to_string))
                    .collect()
            };
            let (told, silent) = (names("told"), names("silent"));
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
    }
}

/// `enlist wake NODE` or `enlist wake --group G`: Wake-on-LAN, one PC every [`enlist::wol::PACE`].
pub fn wake(config: &Path, node: Option<String>, group: Option<String>) -> anyhow::Result<()> {
    let h = head(config)?;
    let names: Vec<String> = match (node, group) {
        (Some(n), None) => vec![n],
        (None, Some(g)) => {
            let v = call(&h, "GET", "/api/v1/nodes")?;
            let names: Vec<String> = v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["group"] == g.as_str())
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect();
            anyhow::ensure!(!names.is_empty(), "no node in group {g:?}");
            names
        }
        _ => anyhow::bail!("name a node, or a group with --group"),
    };
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            std::thread::sleep(enlist::wol::PACE);
        }
        call(&h, "POST", &format!("/api/v1/nodes/{name}/wake"))?;
        println!("{name}: magic packet sent");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_nodes_with_a_problem_are_listed_under_the_table() {
        let nodes = serde_json::json!([
            { "name": "node-01", "problem": null },
            { "name": "node-02", "problem": "never registered; last seen: initrd by http, 75 s ago" },
            { "name": "node-03" },
        ]);
        assert_eq!(
            problems(nodes.as_array().expect("array")),
            "  node-02: never registered; last seen: initrd by http, 75 s ago\n"
        );
    }
}
