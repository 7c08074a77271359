//! `enlist exec`: a command on many nodes at once, as clush prints it. Each node's lines as it
//! finishes (`node-01: ...`), or with `-b` identical answers folded under one header with the
//! node set (`node-[01-03,07] (4)`). A node that fails, is killed, times out or cannot be
//! reached says so on stderr; `-S` exits with the largest code (a signal N counts 128+N, a
//! timeout 124, an unreachable node 255).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use super::nodes::{call_with, head};

#[derive(Args)]
pub struct ExecArgs {
    /// Nodes by name or host list: `node-[01-20],lab-pc-7`.
    #[arg(long, short = 'w', conflicts_with_all = ["group", "all"])]
    nodes: Option<String>,
    /// The nodes of a group.
    #[arg(long, short = 'g', conflicts_with = "all")]
    group: Option<String>,
    /// Every node that is up.
    #[arg(long, short = 'a')]
    all: bool,
    /// Nodes running the command at once at most.
    #[arg(long, short = 'f', default_value_t = 64)]
    fanout: usize,
    /// Seconds a node may take before its command is killed.
    #[arg(long, short = 'u', default_value_t = 60)]
    timeout: u32,
    /// Fold identical answers of several nodes under one header.
    #[arg(short = 'b')]
    fold: bool,
    /// Exit with the largest of the nodes' exit codes.
    #[arg(short = 'S')]
    maxrc: bool,
    /// The command (run by /bin/sh -c on each node, as root).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// One node's answer as the API gives it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Answer {
    status: String,
    exit: Option<i64>,
    signal: Option<i64>,
    reason: String,
    output: String,
    cut_bytes: u64,
}

impl Answer {
    fn from(v: &Value) -> Answer {
        Answer {
            status: v["status"].as_str().unwrap_or("").to_string(),
            exit: v["exit"].as_i64(),
            signal: v["signal"].as_i64(),
            reason: v["reason"].as_str().unwrap_or("").to_string(),
            output: v["output"].as_str().unwrap_or("").to_string(),
            cut_bytes: v["cut_bytes"].as_u64().unwrap_or(0),
        }
    }

    /// Its code for `-S`.
    fn code(&self) -> i64 {
        match self.status.as_str() {
            "exited" => self.exit.unwrap_or(0),
            "signal" => 128 + self.signal.unwrap_or(0),
            "timeout" => 124,
            _ => 255,
        }
    }

    /// What goes to stderr besides the output, if anything.
    fn complaint(&self) -> Option<String> {
        match self.status.as_str() {
            "exited" if self.exit == Some(0) => None,
            "exited" => Some(format!("exited with exit code {}", self.exit.unwrap_or(0))),
            "signal" => Some(format!("killed by signal {}", self.signal.unwrap_or(0))),
            "timeout" => Some("command timeout".into()),
            _ => Some(format!("unreachable: {}", self.reason)),
        }
    }
}

pub fn run(config: &Path, a: ExecArgs) -> anyhow::Result<i32> {
    let h = head(config)?;
    let body = json!({
        "command": a.command.join(" "),
        "timeout_secs": a.timeout,
        "fanout": a.fanout,
        "nodes": a.nodes,
        "group": a.group,
        "all": a.all,
    });
    let started = call_with(&h, "POST", "/api/v1/exec", Some(&body))?;
    let id = started["id"].as_u64().context("the head gave no run id")?;
    let mut shown = BTreeMap::new();
    let view = loop {
        let v = call_with(&h, "GET", &format!("/api/v1/exec/{id}"), None)?;
        if !a.fold {
            for r in v["results"].as_array().into_iter().flatten() {
                let answer = Answer::from(r);
                let node = r["node"].as_str().unwrap_or("?").to_string();
                let pending = matches!(answer.status.as_str(), "running" | "queued");
                if !pending && !shown.contains_key(&node) {
                    print_one(&node, &answer);
                    shown.insert(node, ());
                }
            }
        }
        if v["done"].as_bool().unwrap_or(true) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let answers: Vec<(String, Answer)> = view["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["node"].as_str().unwrap_or("?").to_string(),
                Answer::from(r),
            )
        })
        .collect();
    if a.fold {
        print_folded(&answers);
    }
    let rc = answers.iter().map(|(_, a)| a.code()).max().unwrap_or(0);
    Ok(if a.maxrc { rc.clamp(0, 255) as i32 } else { 0 })
}

fn print_one(node: &str, a: &Answer) {
    for line in a.output.lines() {
        println!("{node}: {line}");
    }
    if a.cut_bytes > 0 {
        eprintln!("{node}: [output cut: {} more bytes not shown]", a.cut_bytes);
    }
    if let Some(c) = a.complaint() {
        eprintln!("enlist: {node}: {c}");
    }
}

/// Nodes with the same answer under one header, as `clush -b` does.
fn print_folded(answers: &[(String, Answer)]) {
    let mut groups: BTreeMap<&Answer, Vec<&str>> = BTreeMap::new();
    for (node, a) in answers {
        groups.entry(a).or_default().push(node);
    }
    for (a, nodes) in &groups {
        if !a.output.is_empty() || a.cut_bytes > 0 {
            println!("---------------");
            println!("{} ({})", enlist::hostlist::fold(nodes), nodes.len());
            println!("---------------");
            print!("{}", a.output);
            if !a.output.ends_with('\n') {
                println!();
            }
            if a.cut_bytes > 0 {
                println!("[output cut: {} more bytes not shown]", a.cut_bytes);
            }
        }
    }
    for (a, nodes) in &groups {
        if let Some(c) = a.complaint() {
            eprintln!("enlist: {}: {c}", enlist::hostlist::fold(nodes));
        }
    }
}
